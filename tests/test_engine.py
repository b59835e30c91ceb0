"""Engine behaviour, run against the compiled engine and its pure twin, checked against the
plain model in tests/support/model.py."""

from __future__ import annotations

import math

import cbor2
import pytest

from support.model import Model, close_enough
from telemetry_cy.reasons import ENGINE_REASONS


def reading(d="dev1", s="temp", v=1.0, u=None, n=None, **extra) -> bytes:
    obj = {"d": d, "s": s, "v": v}
    if u is not None:
        obj["u"] = u
    if n is not None:
        obj["n"] = n
    obj.update(extra)
    return cbor2.dumps(obj)


def as_dicts(aggs) -> list[dict]:
    return sorted((a.as_dict() for a in aggs), key=lambda a: (a["window_end"], a["device"],
                                                              a["sensor"]))


def balanced(stats: dict) -> bool:
    drops = stats["drops"]
    return stats["received"] == stats["payloads"] + drops["oversize"] + drops["decode_error"]


# ---- construction -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"window": 60.0, "emit_every": 7.0}, "whole multiple"),
    ({"window": 0.0}, "window must be a positive"),
    ({"emit_every": -5.0}, "emit_every must be a positive"),
    ({"window": float("nan")}, "window must be a positive"),
    ({"key_ttl": 30.0}, "key_ttl"),
    ({"max_keys": 0}, "max_keys"),
    ({"max_payload_bytes": 0}, "max_payload_bytes"),
    ({"max_name_bytes": 0}, "max_name_bytes"),
])
def test_bad_config_is_a_clear_error(backend, kwargs, words):
    with pytest.raises(ValueError, match=words):
        backend.Engine(**kwargs)


def test_config_type_errors(backend):
    with pytest.raises(TypeError):
        backend.Engine(window="60")
    with pytest.raises(TypeError):
        backend.Engine(max_keys=1.5)


def test_non_finite_ts_raises(backend):
    eng = backend.Engine()
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            eng.push(reading(), bad)
        with pytest.raises(ValueError, match="finite"):
            eng.tick(bad)
    assert eng.stats()["received"] == 0


# ---- ticks ----------------------------------------------------------------------------------

def test_first_tick_is_first_boundary_after_first_reading(backend):
    eng = backend.Engine(window=10.0, emit_every=5.0)
    assert eng.push(reading(v=2.0), 1003.0) == 1
    assert eng.tick(1004.9) == []
    [agg] = eng.tick(1005.0)
    assert (agg.window_start, agg.window_end) == (995.0, 1005.0)
    assert (agg.count, agg.sum, agg.mean, agg.min, agg.max, agg.stddev) == (1, 2.0, 2.0, 2.0, 2.0,
                                                                            0.0)
    assert (agg.device, agg.sensor, agg.unit, agg.first, agg.last) == ("dev1", "temp", None, 2.0,
                                                                       2.0)


def test_window_covers_half_open_span(backend):
    eng = backend.Engine(window=10.0, emit_every=5.0)
    eng.push(reading(v=1.0), 1000.0)   # interval [1000, 1005): in the windows ending 1005, 1010
    eng.push(reading(v=2.0), 1004.5)
    eng.push(reading(v=4.0), 1005.0)   # closes tick 1005; in windows ending 1010, 1015
    aggs = eng.tick(1015.0)
    by_end = {a.window_end: a for a in aggs}
    assert sorted(by_end) == [1005.0, 1010.0, 1015.0]
    assert (by_end[1005.0].count, by_end[1005.0].sum) == (2, 3.0)
    assert (by_end[1010.0].count, by_end[1010.0].sum) == (3, 7.0)
    assert (by_end[1015.0].count, by_end[1015.0].sum) == (1, 4.0)
    assert eng.tick(1100.0) == []  # nothing left in any window


def test_ticks_close_as_data_passes_them(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0)
    eng.push(reading(v=1.0), 100.0)
    eng.push(reading(v=2.0), 106.0)
    eng.push(reading(v=3.0), 111.0)
    # no tick() call yet: both closed windows wait, and come back in order
    aggs = eng.tick(111.0)
    assert [(a.window_end, a.sum) for a in aggs] == [(105.0, 1.0), (110.0, 2.0)]
    assert eng.stats()["pending"] == 0


def test_late_readings_are_counted(backend):
    eng = backend.Engine(window=10.0, emit_every=5.0)
    eng.push(reading(v=1.0), 100.0)
    eng.tick(110.0)
    assert eng.push(reading(v=5.0), 109.9) == 0
    assert eng.push(cbor2.dumps([{"d": "a", "s": "b", "v": 1}, {"d": "a", "s": "c", "v": 2}]),
                    104.0) == 0
    stats = eng.stats()
    assert stats["drops"]["late"] == 3
    assert eng.push(reading(v=5.0), 110.0) == 1  # exactly on the closed tick: the next window


def test_gap_longer_than_window_emits_nothing_stale(backend):
    eng = backend.Engine(window=10.0, emit_every=5.0, key_ttl=1000.0)
    eng.push(reading(v=1.0), 100.0)
    eng.push(reading(v=9.0), 500.0)
    aggs = eng.tick(505.0)
    assert [(a.window_end, a.count, a.sum) for a in aggs] == [(105.0, 1, 1.0), (110.0, 1, 1.0),
                                                              (505.0, 1, 9.0)]


def test_huge_clock_jump_does_not_walk_every_tick(backend):
    eng = backend.Engine(window=10.0, emit_every=1.0, key_ttl=10.0)
    eng.push(reading(v=1.0), 10.0)
    aggs = eng.tick(1.0e15)  # 1e15 ticks: must skip the empty ones
    assert len(aggs) == 10
    assert eng.stats()["live_keys"] == 0
    assert eng.stats()["evicted"] == 1


def test_first_and_last_by_ts_ties_by_arrival(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0)
    eng.push(reading(v=1.0), 101.0)
    eng.push(reading(v=2.0), 100.5)   # earlier ts: becomes first
    eng.push(reading(v=3.0), 100.5)   # same ts, later arrival: not first
    eng.push(reading(v=4.0), 103.0)
    eng.push(reading(v=5.0), 103.0)   # same ts as the latest, later arrival: last
    eng.push(reading(v=6.0), 102.0)   # out of order: neither
    [agg] = eng.tick(105.0)
    assert (agg.first, agg.last, agg.count) == (2.0, 5.0, 6)


def test_unit_is_the_latest_readings_unit(backend):
    eng = backend.Engine(window=10.0, emit_every=5.0)
    eng.push(reading(v=1.0, u="C"), 100.0)
    eng.push(reading(v=1.0, u="F"), 99.0 + 2)
    eng.push(reading(v=1.0, u="K"), 100.5)  # older than the latest: unit stays F
    [agg] = eng.tick(105.0)
    assert agg.unit == "F"
    eng.push(reading(v=1.0), 106.0)         # latest has no unit
    [agg] = eng.tick(110.0)
    assert agg.unit is None
    eng.push(reading(v=1.0, u="a much longer unit name than before"), 111.0)
    [agg] = eng.tick(115.0)
    assert agg.unit == "a much longer unit name than before"


# ---- keys ------------------------------------------------------------------------------------

def test_key_ttl_evicts_at_first_tick_past_ttl(backend):
    eng = backend.Engine(window=10.0, emit_every=5.0, key_ttl=20.0)
    eng.push(reading(d="a"), 101.0)
    eng.push(reading(d="b"), 104.0)
    eng.tick(120.0)
    assert eng.stats()["live_keys"] == 2          # 120 - 104 < 20 and 120 - 101 < 20
    eng.tick(125.0)
    stats = eng.stats()
    assert (stats["live_keys"], stats["evicted"]) == (0, 2)


def test_key_limit_drops_new_keys_and_keeps_old_ones(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0, max_keys=2, key_ttl=5.0)
    assert eng.push(reading(d="a", v=1.0), 100.0) == 1
    assert eng.push(reading(d="b", v=2.0), 100.0) == 1
    assert eng.push(reading(d="c", v=3.0), 100.0) == 0
    assert eng.push(reading(d="a", v=3.0), 100.0) == 1
    stats = eng.stats()
    assert stats["drops"]["key_limit"] == 1
    assert stats["live_keys"] == 2
    aggs = {a.device: a for a in eng.tick(105.0)}
    assert set(aggs) == {"a", "b"} and aggs["a"].count == 2
    # eviction frees room: after the ttl, new keys are welcome again
    eng.tick(110.0)
    assert eng.push(reading(d="c", v=3.0), 110.0) == 1


def test_device_and_sensor_are_one_key_together(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0)
    eng.push(reading(d="ab", s="c"), 100.0)
    eng.push(reading(d="a", s="bc"), 100.0)
    assert eng.stats()["live_keys"] == 2


# ---- drops, each with a counter that has to move ------------------------------------------------

@pytest.mark.parametrize("payload, reason", [
    (b"\xa1", "decode_error"),
    (b"\xff", "decode_error"),
    (reading() + b"\x00", "decode_error"),
    (b"\xa2\x61d\x61a\x61d\x61b", "decode_error"),
    (cbor2.dumps({"s": "x", "v": 1}), "schema_mismatch"),
    (cbor2.dumps({"d": "x", "s": "y", "v": "1"}), "schema_mismatch"),
    (cbor2.dumps({"d": "", "s": "y", "v": 1}), "schema_mismatch"),
    (cbor2.dumps({"d": "x", "s": "y", "v": 1, "u": 5}), "schema_mismatch"),
    (cbor2.dumps({"d": "x", "s": "y", "v": 1, "n": -1}), "schema_mismatch"),
    (cbor2.dumps({"d": "x", "s": "y", "v": True}), "schema_mismatch"),
    (cbor2.dumps({"d": "x", "s": "y", "v": math.nan}), "non_finite"),
    (cbor2.dumps({"d": "x", "s": "y", "v": -math.inf}), "non_finite"),
    (cbor2.dumps(7), "schema_mismatch"),
])
def test_each_drop_reason_is_counted(backend, payload, reason):
    eng = backend.Engine()
    assert eng.push(payload, 100.0) == 0
    stats = eng.stats()
    assert stats["drops"][reason] == 1
    assert sum(stats["drops"].values()) == 1
    assert stats["readings"] == 0 and balanced(stats)


def test_oversize_is_counted_per_payload(backend):
    eng = backend.Engine(max_payload_bytes=64)
    assert eng.push(reading(d="x" * 80), 100.0) == 0
    assert eng.push(reading(), 100.0) == 1
    stats = eng.stats()
    assert stats["drops"]["oversize"] == 1 and balanced(stats)


def test_batch_drops_bad_elements_and_keeps_good_ones(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0)
    batch = cbor2.dumps([
        {"d": "a", "s": "t", "v": 1.5},
        {"d": "a", "s": "t"},
        {"d": "a", "s": "t", "v": math.inf},
        "not a map",
        {"d": "b", "s": "t", "v": 2},
    ])
    assert eng.push(batch, 100.0) == 2
    assert eng.push(cbor2.dumps([]), 100.0) == 0
    stats = eng.stats()
    assert stats["drops"]["schema_mismatch"] == 2 and stats["drops"]["non_finite"] == 1
    assert stats["payloads"] == 2 and stats["readings"] == 2


def test_push_many_counts_and_returns_accepted(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0)
    payloads = [reading(d=f"d{i}", v=float(i)) for i in range(50)] + [b"\x00\xff", b""]
    assert eng.push_many(payloads, 100.0) == 50
    assert eng.push_many([bytearray(reading()), memoryview(reading())], 100.0) == 2
    stats = eng.stats()
    assert stats["received"] == 54 and stats["drops"]["decode_error"] == 2 and balanced(stats)
    with pytest.raises(TypeError):
        eng.push_many(["a str is not a payload"], 100.0)


def test_push_reading(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0, max_name_bytes=8)
    eng.push_reading("dev", "temp", 20.5, 100.0, unit="C")
    eng.push_reading("dev", "temp", 21, 101.0, unit="C")
    eng.push_reading("dev", "temp", math.nan, 101.0)
    eng.push_reading("", "temp", 1.0, 101.0)
    eng.push_reading("dev", "x" * 9, 1.0, 101.0)
    with pytest.raises(TypeError):
        eng.push_reading(None, "temp", 1.0, 101.0)
    stats = eng.stats()
    assert stats["readings"] == 2
    assert stats["drops"]["non_finite"] == 1 and stats["drops"]["schema_mismatch"] == 2
    [agg] = eng.tick(105.0)
    assert (agg.sum, agg.unit) == (41.5, "C")


def test_stats_shape(backend):
    stats = backend.Engine().stats()
    assert set(stats["drops"]) == set(ENGINE_REASONS)
    for name in ("received", "payloads", "readings", "live_keys", "evicted", "state_bytes",
                 "partial_buffer_bytes", "ticks", "aggregates", "pending"):
        assert isinstance(stats[name], int), name


def test_aggregate_as_dict_and_pickle(backend):
    import pickle
    eng = backend.Engine(window=5.0, emit_every=5.0)
    eng.push(reading(v=3.0, u="V"), 100.0)
    [agg] = eng.tick(105.0)
    d = agg.as_dict()
    assert list(d) == ["device", "sensor", "unit", "window_start", "window_end", "count", "sum",
                       "mean", "min", "max", "stddev", "first", "last"]
    assert pickle.loads(pickle.dumps(agg)) == agg


# ---- exactness at rate ---------------------------------------------------------------------------

def test_ten_thousand_readings_per_second_on_one_key_match_the_model(backend):
    eng = backend.Engine(window=10.0, emit_every=1.0)
    model = Model(window=10.0, emit_every=1.0)
    got, want = [], []
    t0 = 1_700_000_000.0
    for i in range(10_000 * 12):
        ts = t0 + i / 10_000
        v = 20.0 + math.sin(i / 500.0) * 5.0 + (i % 7) * 0.01
        eng.push_reading("dev", "temp", v, ts)
        model.offer("dev", "temp", v, ts)
    got += as_dicts(eng.tick(t0 + 12.0))
    want += model.tick(t0 + 12.0)
    assert [a["count"] for a in got] == [a["count"] for a in want]
    assert got[-1]["count"] == 100_000
    magnitude = 25.1 * 100_000
    for g, w in zip(got, want):
        assert close_enough(g, w, magnitude) == []


def test_state_does_not_grow_with_a_keys_rate(compiled_backend):
    """The compiled engine's per-key state is fixed-size C memory (state_bytes counts it)."""
    eng = compiled_backend.Engine()
    eng.push(reading(v=1.0, u="C"), 100.0)
    before = eng.stats()["state_bytes"]
    eng.push_many([reading(v=float(i), u="C") for i in range(100_000)], 100.5)
    assert eng.stats()["state_bytes"] == before


# ---- draining the ingest ring --------------------------------------------------------------------

def test_drain_processes_ring_records_at_their_own_ts(backend, ring_backend):
    ring = ring_backend.ByteRing(1 << 16)
    eng = backend.Engine(window=10.0, emit_every=5.0)
    if backend.compiled and not ring_backend.compiled:
        with pytest.raises(TypeError):  # the compiled engine reads the C ring directly
            eng.drain(ring)
        return
    ref = backend.Engine(window=10.0, emit_every=5.0)
    records = [(100.0 + i * 0.7, b"site/1/sensor/t", reading(d=f"d{i % 3}", v=float(i)))
               for i in range(40)]
    records.insert(5, (102.0, b"t", b"\xff"))                       # decode_error
    records.insert(9, (104.0, b"t", cbor2.dumps({"d": "x", "s": "y", "v": 1,
                                                   "z": cbor2.CBORTag(99, 1)})))  # fallback
    records.append((100.0, b"t", reading()))                        # late by now
    for ts, topic, payload in records:
        assert ring.try_push(ts, topic, payload)
    consumed = 0
    while True:
        n = eng.drain(ring, 7)
        if n == 0:
            break
        consumed += n
    for ts, _topic, payload in records:
        ref.push(payload, ts)
    assert consumed == len(records) and ring.used_bytes == 0
    assert _same_counters(eng.stats(), ref.stats())
    assert as_dicts(eng.tick(200.0)) == as_dicts(ref.tick(200.0))
    assert eng.stats()["drops"]["late"] == 1 and eng.stats()["drops"]["decode_error"] == 1


def _same_counters(a: dict, b: dict) -> bool:
    keys = ("received", "payloads", "readings", "drops", "live_keys", "evicted", "ticks")
    return all(a[k] == b[k] for k in keys)


def test_open_readings_are_those_no_tick_has_covered(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0)
    assert eng.open_readings() == 0
    eng.push_many([reading(d=f"d{i}") for i in range(4)], 100.0)
    assert eng.open_readings() == 4
    eng.push_many([reading(d="d0"), reading(d="d9")], 106.0)   # closes tick 105
    emitted = sum(a.count for a in eng.tick(106.0))
    assert (emitted, eng.open_readings()) == (4, 2)
    assert emitted + eng.open_readings() == eng.stats()["readings"]
    eng.tick(110.0)
    assert eng.open_readings() == 0
