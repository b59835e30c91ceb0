"""Columnar aggregates: ``Engine.tick_columns`` gives the rows ``Engine.tick`` gives.

- Random streams (hypothesis) through two engines of one backend, one ticked with ``tick``, the
  other with ``tick_columns`` (and now and then ``tick``, so the hand-over between the two outputs
  is exercised): the same aggregates, in the same order, tick by tick; both twins, arrival and
  event time, quantiles off or any set of them. The compiled and pure columns hold the same values
  in buffers of the same types.
- The quantile columns are the quantiles the engine computes, after the statistics, in the
  engine's order; none when it computes none (as ``Aggregate.as_dict()`` leaves them out).
- The buffers follow the layout of engine/column_buffers.py (offsets, validity bits); Arrow reads
  them without a copy; pandas gets ``string[pyarrow]`` strings and numpy numbers; polars too.
- ``replay(FILE, engine)`` of a capture gives the rows of the same stream ticked by hand.
"""

from __future__ import annotations

import math
import random
import struct

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_cy.capture import replay
from telemetry_cy.capture._encode_py import record_bytes
from telemetry_cy.capture.replay_engine import closing_tick
from telemetry_cy.capture.writer import CaptureWriter
from telemetry_cy.engine.column_buffers import COLUMNS, FLOAT64, STRING, Columns, column_layout
from telemetry_cy.engine.rules import AGGREGATE_FIELDS, MAX_QUANTILES

#: The statistics' columns: every field but the quantiles.
STATISTICS = AGGREGATE_FIELDS

DEVICES = ["a", "gw-01", "ü", "设备"]
SENSORS = ["t", "rh", ""]
UNITS = [None, "C", "", "µS/cm"]

finite = dict(allow_nan=False, allow_infinity=False)
# the last item: how far the reading's own time t trails its arrival (None: no t)
readings = st.tuples(st.sampled_from(DEVICES), st.sampled_from(SENSORS),
                     st.floats(-1e9, 1e9, **finite), st.sampled_from(UNITS),
                     st.one_of(st.none(), st.floats(-1.0, 12.0, **finite)))


@st.composite
def streams(draw):
    emit_every = draw(st.sampled_from([1.0, 2.5, 5.0]))
    panes = draw(st.integers(1, 5))
    config = dict(window=emit_every * panes, emit_every=emit_every,
                  key_ttl=emit_every * panes * draw(st.sampled_from([1.0, 3.0])),
                  max_keys=draw(st.integers(1, 12)))
    if draw(st.booleans()):
        config.update(time="event", allowed_lateness=emit_every * draw(st.sampled_from([0, 1, 2])),
                      idle_timeout=draw(st.sampled_from([3.0, 30.0])), max_future=5.0)
    quantiles = draw(st.sets(st.sampled_from([0.05, 0.5, 0.9, 0.99, 0.999])
                             | st.floats(1e-6, 1 - 1e-6), max_size=MAX_QUANTILES))
    if quantiles:
        config["quantiles"] = sorted(quantiles)
    t = draw(st.sampled_from([0.0, 1_700_000_000.0]))
    events = []
    for _ in range(draw(st.integers(1, 50))):
        t += draw(st.one_of(st.just(0.0), st.floats(0.0, emit_every),
                            st.floats(0.0, 3 * config["window"]), st.floats(-emit_every, 0.0)))
        if draw(st.integers(0, 4)) == 0:
            # which output the columnar engine asks for at this tick
            events.append(("tick", t, draw(st.sampled_from(["columns", "columns", "rows"]))))
        else:
            events.append(("push", t, draw(st.lists(readings, min_size=1, max_size=5))))
    return config, events


def _payload(d, s, v, u, lag=None, arrival=0.0) -> bytes:
    m = {"d": d, "s": s, "v": v}
    if u is not None:
        m["u"] = u
    if lag is not None:
        m["t"] = arrival - lag
    return cbor2.dumps(m)


def _run(backend, config, events):
    """(rows per tick from tick, the same from tick_columns, the last Columns, both stats)."""
    by_rows, by_cols = backend.Engine(**config), backend.Engine(**config)
    rows_out, cols_out, last_cols = [], [], None
    for event in events:
        if event[0] == "push":
            _, t, group = event
            payloads = [_payload(*r, arrival=t) for r in group]
            by_rows.push_many(payloads, t)
            by_cols.push_many(payloads, t)
            continue
        _, t, which = event
        rows_out.append([a.as_dict() for a in by_rows.tick(t)])
        if which == "rows":
            cols_out.append([a.as_dict() for a in by_cols.tick(t)])
        else:
            last_cols = by_cols.tick_columns(t)
            cols_out.append(last_cols.to_dicts())
    end = max(e[1] for e in events) + config["key_ttl"] + config["window"] + config["emit_every"]
    rows_out.append([a.as_dict() for a in by_rows.tick(end)])
    final = by_cols.tick_columns(end)
    cols_out.append(final.to_dicts())
    return rows_out, cols_out, final, by_rows.stats(), by_cols.stats()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_columns_are_the_row_aggregates(backend, stream):
    config, events = stream
    rows, cols, final, row_stats, col_stats = _run(backend, config, events)
    assert cols == rows
    assert len(final) == len(rows[-1])
    for name in ("aggregates", "readings", "drops", "evicted", "live_keys"):
        assert col_stats[name] == row_stats[name], name
    assert col_stats["pending"] == 0


def test_data_closed_ticks_move_between_the_outputs_in_order(backend):
    """Ticks closed by data (before any tick call) go to whichever output comes next, oldest
    first, and a switch hands over what the other output holds."""
    config = dict(window=2.0, emit_every=1.0)
    a, b = backend.Engine(**config), backend.Engine(**config)
    want = []
    for step in range(12):
        t = 100.0 + step * 0.75
        for e in (a, b):
            e.push(_payload("d", "s", float(step), "C"), t)
        if step in (4, 9):
            want += [x.as_dict() for x in a.tick(t)]
            got = (b.tick_columns(t).to_dicts() if step == 4 else
                   [x.as_dict() for x in b.tick(t)])
            assert got == want[-len(got):] and len(got) > 1
            assert b.stats()["pending"] == 0
    assert b.stats()["pending"] > 0          # closed by data, not yet taken
    assert b.tick_columns(200.0).to_dicts() == [x.as_dict() for x in a.tick(200.0)]


def _order(a: dict):
    return a["window_end"], a["device"], a["sensor"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_compiled_and_pure_columns_agree(compiled_backend, pure_backend, stream):
    """The same values bit for bit and the same buffer types; the row order within a tick is
    each table's own (the compiled one swap-removes evicted keys), as for ``tick``."""
    config, events = stream
    events = [e if e[0] == "push" else (e[0], e[1], "columns") for e in events]
    compiled = _run(compiled_backend, config, events)[2]
    pure = _run(pure_backend, config, events)[2]
    assert sorted(compiled.to_dicts(), key=_order) == sorted(pure.to_dicts(), key=_order)
    assert compiled.layout == pure.layout
    for name in compiled.names:
        assert compiled.null_count(name) == pure.null_count(name), name
        for got, want in zip(compiled.buffers(name), pure.buffers(name), strict=True):
            assert (got is None) == (want is None), name
            if got is not None:
                assert (got.format, got.itemsize, got.nbytes) == (
                    want.format, want.itemsize, want.nbytes), name


def _sample_columns(backend, keys: int = 50, every: float = 5.0) -> Columns:
    """One tick of ``keys`` keys (a quarter without a unit)."""
    rng = random.Random(3)
    e = backend.Engine(window=4 * every, emit_every=every)
    n = keys * 4
    for i in range(n):
        k = i % keys
        unit = None if k % 4 == 0 else ["C", "µS", ""][k % 3]
        e.push(_payload(f"dev-{k}", ["temp", "🌡"][k % 2], rng.uniform(-5, 5), unit),
               1000.0 + i * every / (n + 1))
    return e.tick_columns(1000.0 + every)


def test_buffer_layout(backend):
    cols = _sample_columns(backend)
    n = len(cols)
    assert n == 50 and cols.names == STATISTICS and cols.layout == COLUMNS
    for name, kind, _ in COLUMNS:
        bufs = cols.buffers(name)
        if kind == STRING:
            validity, offsets, data = bufs
            assert offsets.format == "q" and len(offsets) == n + 1 and offsets[0] == 0
            assert offsets[n] == len(data) and all(
                offsets[i] <= offsets[i + 1] for i in range(n))
        else:
            validity, values = bufs
            assert values.format == ("d" if kind == FLOAT64 else "q") and len(values) == n
            assert kind == FLOAT64 or name == "count"
        if cols.null_count(name) == 0:
            assert validity is None, name
        else:
            assert len(validity) == (n + 7) // 8
            present = [bool(validity[i >> 3] >> (i & 7) & 1) for i in range(n)]
            assert present.count(False) == cols.null_count(name)
    units = cols.column("unit")
    assert cols.null_count("unit") == units.count(None) > 0
    _, offsets, _ = cols.buffers("unit")
    assert all(offsets[i] == offsets[i + 1] for i, u in enumerate(units) if u is None)
    assert set(cols.column("sensor")) == {"temp", "🌡"}


@pytest.mark.parametrize("time", ["arrival", "event"])
def test_quantile_columns_are_the_engines_quantiles(backend, time):
    """One float64 column per quantile the engine computes, named as the Aggregate field, after
    the statistics, in the engine's order; the values are the row tick's."""
    config = dict(window=10.0, emit_every=5.0, time=time, quantiles=[0.99, 0.5])
    rows_engine, cols_engine = backend.Engine(**config), backend.Engine(**config)
    rng = random.Random(5)
    for i in range(400):
        payload = _payload(f"d{i % 7}", "s", rng.lognormvariate(0, 2), "C", rng.uniform(0, 3),
                           1000.0 + i / 40)
        for e in (rows_engine, cols_engine):
            e.push(payload, 1000.0 + i / 40)
    want = [a.as_dict() for a in rows_engine.tick(1100.0)]
    cols = cols_engine.tick_columns(1100.0)
    assert cols.names == STATISTICS + ("p50", "p99")
    assert cols.layout == column_layout(("p50", "p99"))
    assert cols.to_dicts() == want and len(want) > 7
    assert {"p50", "p99"} <= set(want[0]) and "p90" not in want[0]
    for name in ("p50", "p99"):
        validity, values = cols.buffers(name)
        assert validity is None and values.format == "d" and cols.null_count(name) == 0
    assert all(r["p50"] <= r["p99"] for r in cols.to_dicts())


def test_quantile_columns_to_arrow_and_pandas(backend):
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    e = backend.Engine(window=10.0, emit_every=5.0, quantiles=[0.5, 0.9, 0.99])
    for i in range(300):
        e.push(_payload(f"d{i % 3}", "s", float(i), None), 100.0 + i / 100)
    cols = e.tick_columns(110.0)
    table = cols.to_arrow()
    assert table.column_names == list(STATISTICS) + ["p50", "p90", "p99"]
    assert table.schema.field("p99").type == pa.float64()
    assert table.to_pylist() == cols.to_dicts()
    df = cols.to_pandas()
    assert df["p99"].dtype == "float64" and list(df["p99"]) == cols.column("p99")


def test_empty_columns(backend):
    e = backend.Engine()
    cols = e.tick_columns(10.0)
    assert len(cols) == 0 and cols.to_dicts() == []
    assert list(cols.buffers("device")[1]) == [0]
    assert len(Columns.concat([cols, e.tick_columns(20.0)])) == 0


def test_concat_keeps_the_rows_and_the_nulls(backend):
    parts = [_sample_columns(backend, keys, every) for keys, every in ((9, 5.0), (0, 5.0),
                                                                      (21, 2.0), (5, 1.0))]
    joined = Columns.concat(parts)
    assert joined.to_dicts() == [row for p in parts for row in p.to_dicts()]
    assert joined.null_count("unit") == sum(p.null_count("unit") for p in parts)


def test_to_arrow_shares_the_engine_buffers(backend):
    pa = pytest.importorskip("pyarrow")
    cols = _sample_columns(backend)
    table = cols.to_arrow()
    assert table.column_names == list(STATISTICS)
    assert table.schema.field("device").type == pa.large_string()
    assert table.schema.field("count").type == pa.int64()
    assert table.schema.field("mean").type == pa.float64()
    assert table.to_pylist() == cols.to_dicts()
    table.validate(full=True)
    for name in ("mean", "device"):
        arrow_values = table.column(name).chunk(0).buffers()[1]
        assert arrow_values.address == pa.py_buffer(cols.buffers(name)[1]).address  # no copy


def test_to_pandas_string_dtype_and_values(backend):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    cols = _sample_columns(backend)
    df = cols.to_pandas()
    assert list(df.columns) == list(STATISTICS) and len(df) == len(cols)
    for name in ("device", "sensor", "unit"):
        assert df[name].dtype == pd.StringDtype("pyarrow"), name
    assert df["count"].dtype == "int64" and df["mean"].dtype == "float64"
    assert df["unit"].isna().sum() == cols.null_count("unit")
    records = df.astype(object).where(df.notna(), None).to_dict("records")
    assert records == cols.to_dicts()
    empty = backend.Engine().tick_columns(5.0).to_pandas()
    assert list(empty.columns) == list(STATISTICS) and len(empty) == 0


def test_to_polars(backend):
    pytest.importorskip("polars")
    pytest.importorskip("pyarrow")
    cols = _sample_columns(backend)
    assert cols.to_polars().to_dicts() == cols.to_dicts()


# ---- replay ------------------------------------------------------------------------------------


def _write_capture(path, messages, per_block: int = 100) -> None:
    """(ts, topic, payload) messages as a binary capture (QoS 0 records, as recorded)."""
    w = CaptureWriter(path)
    for i in range(0, len(messages), per_block):
        part = messages[i:i + per_block]
        w.write_block(len(part), struct.pack(f"<{len(part)}d", *(m[0] for m in part)),
                      b"".join(record_bytes(topic, payload, 0) for _, topic, payload in part),
                      True)
    w.close()


def test_replay_gives_the_row_aggregates_of_the_stream(backend, tmp_path):
    rng = random.Random(11)
    t, msgs = 1_700_000_000.2, []
    for _ in range(600):
        t += rng.choice([0.0, 0.01, 0.3, 2.0, 25.0])
        d, s = f"dev-{rng.randrange(12)}", rng.choice(SENSORS)
        payload = (_payload(d, s, rng.uniform(0, 9), rng.choice(UNITS)) if rng.random() < 0.97
                   else b"\xff")
        msgs.append((t, f"site/{d}/sensor/{s}".encode(), payload))
    _write_capture(tmp_path / "a.cap", msgs)
    config = dict(window=10.0, emit_every=2.0)
    engine = backend.Engine(**config)
    cols = replay(tmp_path / "a.cap", engine)
    # the same stream by hand, ticking with the row tick at every aligned time
    by_hand = backend.Engine(**config)
    rows, k = [], None
    for ts, _, payload in msgs:
        if k is None:
            k = math.floor(ts / 2.0) + 1
        while k * 2.0 <= ts:
            rows += by_hand.tick(k * 2.0)
            k += 1
        by_hand.push(payload, ts)
    rows += by_hand.tick(closing_tick(msgs[-1][0], by_hand) * 2.0)
    # within a tick the order follows the key table, which evicts on the ticks it is given
    # (replay jumps over quiet stretches as the daemon does): compare tick by tick, as sets
    assert sorted(cols.to_dicts(), key=_order) == sorted((a.as_dict() for a in rows), key=_order)
    assert len(cols) > 100
    assert engine.stats()["drops"] == by_hand.stats()["drops"]
    assert engine.stats()["drops"]["decode_error"] > 0


def test_columns_outlive_the_ticks_after_them(backend):
    """Buffers handed out stay as they were however many ticks follow, while anything holds
    them (a memoryview, a pyarrow buffer, the Columns); the compiled engine reuses the memory of
    columns nobody holds any more."""
    config = dict(window=10.0, emit_every=5.0)
    e = backend.Engine(**config)

    def tick(k: int) -> Columns:
        for i in range(3000):
            e.push(_payload(f"d{i}", "s", float(k * 10_000 + i), "C"), 100.0 + 5 * k + i / 1000)
        return e.tick_columns(100.0 + 5 * (k + 1))

    first = tick(0)
    kept_mean = first.buffers("mean")[1]
    kept_device = first.buffers("device")[2]
    want_mean, want_device = kept_mean.tobytes(), kept_device.tobytes()
    whole = tick(1)
    want_whole = whole.to_dicts()
    del first
    for k in range(2, 6):
        tick(k)       # dropped at once: its memory may serve the next tick
        assert kept_mean.tobytes() == want_mean and kept_device.tobytes() == want_device
        assert whole.to_dicts() == want_whole


def test_released_column_memory_is_reused(compiled_backend):
    pa = pytest.importorskip("pyarrow")
    e = compiled_backend.Engine(window=10.0, emit_every=5.0)

    def tick(k: int) -> Columns:
        for i in range(2000):
            e.push(_payload(f"d{i}", "s", 1.0, None), 100.0 + 5 * k + i / 1000)
        return e.tick_columns(100.0 + 5 * (k + 1))

    cols = tick(0)
    address = pa.py_buffer(cols.buffers("mean")[1]).address
    del cols
    again = tick(1)
    assert pa.py_buffer(again.buffers("mean")[1]).address == address
    held = again.buffers("mean")[1]
    del again
    third = tick(2)
    assert pa.py_buffer(third.buffers("mean")[1]).address != address   # still held
    assert held.nbytes == 2000 * 8


def test_the_engine_and_replay_import_no_arrow_pandas_or_numpy(tmp_path):
    """A daemon on a Pi has none of them: columns and replay work without importing any."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    code = (
        "import sys, cbor2, telemetry_cy\n"
        "from telemetry_cy.backend import available, load\n"
        "for name in available():\n"
        "    e = load(name).Engine(window=2.0, emit_every=1.0)\n"
        "    e.push(cbor2.dumps({'d': 'a', 's': 'b', 'v': 1.0}), 10.0)\n"
        "    assert len(e.tick_columns(20.0)) == 2\n"
        "bad = [m for m in ('pyarrow', 'pandas', 'numpy', 'polars') if m in sys.modules]\n"
        "assert not bad, bad\n")
    # the environment as it is (a sanitizer job preloads its runtime), this checkout importable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(repo)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
