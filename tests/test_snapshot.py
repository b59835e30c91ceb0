"""Snapshots (docs/state.md): restore and continue gives exactly what the original gives.

The oracle is the original engine itself, run on without a break: a restored engine (same or
other implementation) fed the same rest of the stream must return the same aggregates, late
readings and stats() (state_bytes aside). The original engines are held to the plain model by
tests/test_engine_props.py and tests/test_engine_event.py; here the model also checks the
restored arrival-mode engine end to end. Bad files: every truncation, every single flipped
byte, and damaged fields under a valid checksum are refused with SnapshotError, never a crash.
"""

from __future__ import annotations

import random
import struct

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.framing import reseal
from support.model import Model, close_enough
from telemetry_cy.engine import snapshot_format as snap
from telemetry_cy.engine.snapshot_errors import SNAPSHOT_REASONS, SnapshotError

CONFIGS = [
    dict(window=10.0, emit_every=1.0, max_keys=60, key_ttl=12.0, max_payload_bytes=200),
    dict(window=20.0, emit_every=5.0, max_keys=25, key_ttl=30.0, max_payload_bytes=200),
    dict(window=10.0, emit_every=1.0, max_keys=60, key_ttl=15.0, max_payload_bytes=200,
         time="event", allowed_lateness=3.0, idle_timeout=5.0, max_future=4.0,
         late_capacity=20),
    dict(window=6.0, emit_every=2.0, max_keys=60, key_ttl=20.0, max_payload_bytes=200,
         time="event", allowed_lateness=0.0, idle_timeout=5.0, late_capacity=0),
    dict(window=6.0, emit_every=2.0, max_keys=30, key_ttl=20.0, max_payload_bytes=200,
         time="event", allowed_lateness=5.0, idle_timeout=3.0, late_capacity=3),
    # quantiles: every pane carries its sketch
    dict(window=10.0, emit_every=1.0, max_keys=60, key_ttl=12.0, max_payload_bytes=200,
         quantiles=[0.05, 0.5, 0.999]),
    dict(window=10.0, emit_every=1.0, max_keys=60, key_ttl=15.0, max_payload_bytes=200,
         time="event", allowed_lateness=3.0, idle_timeout=5.0, late_capacity=20,
         quantiles=[0.5, 0.99], quantile_accuracy=0.02),
]


def _payload(rng, t: float, event: bool) -> bytes:
    """Mostly good single readings, with arrays, bad payloads, units, sequence numbers, event
    times around t (late and future ones included) mixed in."""
    def reading():
        d = {"d": f"dev{rng.randrange(30)}", "s": f"s{rng.randrange(3)}",
             "v": rng.uniform(-5, 5)}
        if rng.random() < 0.5:
            d["u"] = rng.choice(["C", "K", "", "°C"])
        if rng.random() < 0.4:
            d["n"] = rng.randrange(60)
        if event and rng.random() < 0.9:
            d["t"] = t - rng.choice([0.0, 0.0, 0.5, 1.5, 3.0, 8.0, -6.0]) * rng.random()
        return d
    r = rng.random()
    if r < 0.85:
        return cbor2.dumps(reading())
    if r < 0.90:
        return cbor2.dumps([reading(), reading()])
    if r < 0.92:
        return b"\xff\x00"
    if r < 0.94:
        return b"x" * 300
    if r < 0.96:
        return cbor2.dumps({**reading(), "v": float("inf")})
    return cbor2.dumps({**reading(), "v": "str"})


def _stream(seed: int, event: bool, steps: int = 40):
    """[(kind, ...)]: ("push", payloads, ts) and ("tick", now)."""
    rng = random.Random(seed)
    t = 1000.0
    out = []
    for _ in range(steps):
        t += rng.choice([0.0, 0.3, 0.7, 1.0, 2.5, -1.5])
        out.append(("push", [_payload(rng, t, event) for _ in range(rng.randrange(1, 30))], t))
        if rng.random() < 0.3:
            out.append(("tick", t + rng.choice([0.0, 0.5, 7.0])))
    out.append(("tick", t + 100.0))
    return out


def _step(engine, ev) -> list[dict]:
    if ev[0] == "push":
        engine.push_many(ev[1], ev[2])
        return []
    return [a.as_dict() for a in engine.tick(ev[1])] + [
        {"late": tuple(r)} for r in engine.take_late()]


def _canon(rows: list[dict]) -> list:
    return sorted(rows, key=repr)


def _stats(engine) -> dict:
    s = engine.stats()
    s.pop("state_bytes")
    return s


def _backends(compiled_backend, pure_backend, src: str, dst: str):
    by = {"compiled": compiled_backend, "pure": pure_backend}
    return by[src].Engine, by[dst].Engine


PAIRS = [("compiled", "compiled"), ("compiled", "pure"), ("pure", "compiled"), ("pure", "pure")]


@pytest.mark.parametrize("src,dst", PAIRS)
@pytest.mark.parametrize("config_i", range(len(CONFIGS)))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), cut=st.floats(0.0, 1.0))
def test_restore_and_continue_gives_the_original_results(compiled_backend, pure_backend, src,
                                                         dst, seed, config_i, cut):
    config = CONFIGS[config_i]
    src_cls, dst_cls = _backends(compiled_backend, pure_backend, src, dst)
    events = _stream(seed, config.get("time") == "event")
    at = int(cut * len(events))
    original = src_cls(**config)
    for ev in events[:at]:
        _step(original, ev)
    data = original.snapshot()
    restored = dst_cls.from_snapshot(data, **config)
    assert restored.snapshot() == data  # byte-identical round trip, either direction
    assert _stats(restored) == _stats(original)
    for ev in events[at:]:
        want, got = _step(original, ev), _step(restored, ev)
        if src == dst:
            assert got == want  # same order too
        else:
            assert _canon(got) == _canon(want)
    assert _stats(restored) == _stats(original)
    assert restored.open_readings() == original.open_readings()


@pytest.mark.parametrize("backend", ["compiled", "pure"])
def test_restored_arrival_engine_matches_the_model(compiled_backend, pure_backend, backend):
    """Readings one by one, a snapshot every 50, each restored into a fresh engine that takes
    over: the aggregates still equal the model's."""
    cls = {"compiled": compiled_backend, "pure": pure_backend}[backend].Engine
    config = dict(window=20.0, emit_every=5.0, max_keys=50, key_ttl=40.0)
    rng = random.Random(3)
    engine, model = cls(**config), Model(**config)
    got, want = [], []
    ts = 100.0
    for i in range(600):
        ts += rng.choice([0.0, 0.4, 1.1, 3.0])
        dev, sen, v, unit = f"d{rng.randrange(12)}", "s", rng.uniform(-9, 9), "C"
        engine.push_reading(dev, sen, v, ts, unit)
        model.offer(dev, sen, v, ts, unit)
        if i % 50 == 49:
            engine = cls.from_snapshot(engine.snapshot(), **config)
        if i % 13 == 0:
            got += [a.as_dict() for a in engine.tick(ts)]
            want += model.tick(ts)
    got += [a.as_dict() for a in engine.tick(ts + 60)]
    want += model.tick(ts + 60)
    key = lambda d: (d["window_end"], d["device"], d["sensor"])  # noqa: E731
    got.sort(key=key)
    want.sort(key=key)
    assert len(got) == len(want) and got
    for g, w in zip(got, want):
        assert close_enough(g, w, w["magnitude"]) == [], (g, w)


def _sample(cls, config=None) -> bytes:
    config = config or CONFIGS[2]
    engine = cls(**config)
    for ev in _stream(11, config.get("time") == "event", steps=12):
        if ev[0] == "push":
            engine.push_many(ev[1], ev[2])
    engine.tick(1004.0)
    # more data closes more ticks: their aggregates stay pending; a late reading is kept
    engine.push_many([cbor2.dumps({"d": "x", "s": "y", "v": 1.0, "t": 1030.0})], 1030.0)
    engine.push_reading("late-dev", "s", 1.0, 1030.0, t=900.0)
    assert engine.stats()["pending"] > 0
    return engine.snapshot()


@pytest.mark.parametrize("backend", ["compiled", "pure"])
@pytest.mark.parametrize("config_i", [2, 6])
def test_every_truncation_and_every_flipped_byte_is_refused(compiled_backend, pure_backend,
                                                            backend, config_i):
    cls = {"compiled": compiled_backend, "pure": pure_backend}[backend].Engine
    config = CONFIGS[config_i]
    data = _sample(cls, config)
    assert len(data) > 500
    for n in range(len(data)):
        with pytest.raises(SnapshotError) as info:
            cls.from_snapshot(data[:n], **config)
        assert info.value.reason in ("empty", "foreign", "truncated")
    rng = random.Random(5)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 1 << rng.randrange(8)
        with pytest.raises(SnapshotError) as info:
            cls.from_snapshot(bytes(bad), **config)
        assert info.value.reason in ("foreign", "version", "truncated", "checksum")
    with pytest.raises(SnapshotError, match="truncated"):
        cls.from_snapshot(data + b"\0", **config)


def _resealed(data: bytes, i: int, value: int) -> bytes:
    """data with byte i set to value and the checksum made to match."""
    bad = bytearray(data)
    bad[i] = value
    return reseal(bad)


@pytest.mark.parametrize("backend", ["compiled", "pure"])
@pytest.mark.parametrize("config_i", [2, 6])
def test_damaged_fields_under_a_valid_checksum_never_crash(compiled_backend, pure_backend,
                                                           backend, config_i):
    """The reader does not trust the checksum: any byte changed (and resealed) is refused with
    SnapshotError or restores an engine that runs on. The compiled and pure readers agree."""
    cls = {"compiled": compiled_backend, "pure": pure_backend}[backend].Engine
    other = pure_backend.Engine if backend == "compiled" else compiled_backend.Engine
    config = CONFIGS[config_i]
    data = _sample(cls, config)
    rng = random.Random(9)
    refused = 0
    for _ in range(500):
        i = rng.randrange(snap.HEADER.size, len(data) - 4)
        bad = _resealed(data, i, rng.choice([0, 0xFF, rng.randrange(256), data[i] ^ 0x80]))
        try:
            engine = cls.from_snapshot(bad, **config)
        except SnapshotError as err:
            refused += 1
            with pytest.raises(SnapshotError) as info:
                other.from_snapshot(bad, **config)
            assert info.value.reason == err.reason
            continue
        twin = other.from_snapshot(bad, **config)
        assert twin.snapshot() == engine.snapshot()
        engine.push_reading("x", "y", 1.0, 2000.0, t=1999.0)
        engine.tick(5000.0)
    assert refused > 30


@pytest.mark.parametrize("backend", ["compiled", "pure"])
def test_empty_foreign_and_future_files(compiled_backend, pure_backend, backend):
    cls = {"compiled": compiled_backend, "pure": pure_backend}[backend].Engine
    data = _sample(cls)
    cases = {
        "empty": b"",
        "foreign": b"\x89PNG\r\n\x1a\n" + data[8:],
        "version": data[:8] + struct.pack("<I", 2) + data[12:],
    }
    for reason, bad in cases.items():
        with pytest.raises(SnapshotError) as info:
            cls.from_snapshot(bad, **CONFIGS[2])
        assert info.value.reason == reason
        assert isinstance(info.value, ValueError)
    assert set(SNAPSHOT_REASONS) >= set(cases)


@pytest.mark.parametrize("backend", ["compiled", "pure"])
@pytest.mark.parametrize("change", [dict(window=20.0, key_ttl=30.0),
                                    dict(emit_every=2.0, window=10.0),
                                    dict(time="arrival"), dict(allowed_lateness=4.0),
                                    dict(quantiles=[0.5]),
                                    dict(quantiles=[0.5, 0.99], quantile_accuracy=0.01)])
def test_other_window_settings_are_refused(compiled_backend, pure_backend, backend, change):
    cls = {"compiled": compiled_backend, "pure": pure_backend}[backend].Engine
    data = _sample(cls, CONFIGS[6])
    with pytest.raises(SnapshotError, match="settings: made with window=10s") as info:
        cls.from_snapshot(data, **{**CONFIGS[6], **change})
    assert info.value.reason == "settings"


@pytest.mark.parametrize("backend", ["compiled", "pure"])
def test_settings_that_may_change(compiled_backend, pure_backend, backend):
    """key_ttl, idle_timeout, max_future, max_payload_bytes change freely; a smaller max_keys
    keeps the keys seen last and counts the rest as evicted; a smaller late_capacity keeps the
    oldest late readings and counts the rest as late_unrouted."""
    cls = {"compiled": compiled_backend, "pure": pure_backend}[backend].Engine
    config = dict(window=10.0, emit_every=1.0, max_keys=100, key_ttl=50.0, time="event",
                  allowed_lateness=2.0, late_capacity=10)
    engine = cls(**config)
    for i in range(40):
        engine.push_reading(f"d{i}", "s", float(i), 100.0 + i * 0.1, t=100.0 + i * 0.1)
    engine.push_reading("d0", "s", 1.0, 110.0, t=110.0)     # d0 seen last of all
    for i in range(4):
        engine.push_reading("late", "s", 1.0, 110.0, t=50.0 + i)
    engine.tick(110.0)  # returns the aggregates closed so far: those below come from keys
    data = engine.snapshot()
    small = cls.from_snapshot(data, **{**config, "max_keys": 10, "late_capacity": 3,
                                       "key_ttl": 60.0, "idle_timeout": 1.0})
    s = small.stats()
    assert s["live_keys"] == 10 and s["evicted"] == engine.stats()["evicted"] + 30
    assert s["event_time"]["late_unrouted"] == 1 and len(small.take_late()) == 3
    devices = {a.device for a in small.tick(10_000.0)}
    assert devices == {"d0"} | {f"d{i}" for i in range(31, 40)}


@pytest.mark.parametrize("backend", ["compiled", "pure"])
def test_pending_aggregates_and_counters_survive(compiled_backend, pure_backend, backend):
    cls = {"compiled": compiled_backend, "pure": pure_backend}[backend].Engine
    engine = cls(window=10.0, emit_every=5.0)
    engine.push_reading("a", "t", 1.0, 100.0, unit="C", seq=1)
    engine.push_reading("a", "t", 2.0, 101.0, unit="C", seq=4)   # a gap of 2
    engine.push_reading("b", "t", 3.0, 106.0)                    # closes tick 105: pending
    engine.push_many([b"\xff"], 106.0)                           # decode_error
    restored = cls.from_snapshot(engine.snapshot(), window=10.0, emit_every=5.0)
    assert _stats(restored) == _stats(engine)
    assert restored.stats()["pending"] == 1 and restored.stats()["seq"]["gaps"] == 2
    assert [a.as_dict() for a in restored.tick(106.0)] == [a.as_dict() for a in engine.tick(106.0)]


def test_an_empty_engine_round_trips(compiled_backend, pure_backend):
    for cls in (compiled_backend.Engine, pure_backend.Engine):
        data = cls().snapshot()
        assert data[:8] == snap.MAGIC
        assert compiled_backend.Engine.from_snapshot(data).snapshot() == data
        assert pure_backend.Engine.from_snapshot(data).snapshot() == data


@pytest.mark.parametrize("backend", ["compiled", "pure"])
def test_out_of_range_clock_values_are_refused(compiled_backend, pure_backend, backend):
    """A file sealed with a valid checksum but an infinite max_t, an out-of-range closed tick or
    a pending aggregate with a string for its count: refused, never converted."""
    cls = {"compiled": compiled_backend, "pure": pure_backend}[backend].Engine
    config = CONFIGS[2]
    data = _sample(cls, config)
    clock = snap.HEADER.size
    cases = {
        "max_t": (clock + 16, struct.pack("<d", float("inf"))),
        "closed": (clock, struct.pack("<q", 2**62)),
        "max_t_arrival": (clock + 24, struct.pack("<d", float("nan"))),
    }
    for what, (at, raw) in cases.items():
        bad = bytearray(data)
        bad[at:at + len(raw)] = raw
        with pytest.raises(SnapshotError) as info:
            cls.from_snapshot(reseal(bad), **config)
        assert info.value.reason == "malformed", what
    # the count of the first pending aggregate tagged as a string
    opened = snap.open_snapshot(data)
    assert opened.state.pending
    agg, qvalues = opened.state.pending[0]
    state = opened.state._replace(pending=[({**agg, "count": "many"}, qvalues)])
    keys = data[opened.keys_start:opened.keys_end]
    bad = snap.assemble(opened.settings, state, opened.n_keys, keys)
    with pytest.raises(SnapshotError, match="aggregate field count"):
        cls.from_snapshot(bad, **config)
