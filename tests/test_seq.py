"""Sequence-number accounting (the optional `n` field): gaps, duplicates, reorders, restarts.

The rules are in docs/windows.md ("Sequence numbers and offenders"). `reference` below is a plain
restatement of them that shares no code with either engine; every stream goes through both twins
(the `backend` fixture) and through each way in: push, push_many, push_reading, the cbor2
fallback and drain from the ingest ring.
"""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ZERO = {"gaps": 0, "duplicates": 0, "reorders": 0, "restarts": 0}


def reference(streams: dict) -> dict:
    """The rules, read straight off the docs. `streams`: (device, sensor) -> list of n in arrival
    order (accepted readings only). Returns the four counters and the gap sizes per key."""
    out = dict(ZERO)
    gap_by_key: dict = {}
    for key, ns in streams.items():
        last = None
        for n in ns:
            if last is None:
                last = n                       # the first n of a stream is its baseline
            elif n == last + 1:
                last = n
            elif n > last + 1:
                if n - last - 1 > 2**20:       # a jump that far is a new counter, not loss
                    out["restarts"] += 1
                else:
                    out["gaps"] += n - last - 1
                    gap_by_key[key] = gap_by_key.get(key, 0) + n - last - 1
                last = n
            elif n == last:
                out["duplicates"] += 1
            elif n <= 1 or last - n > 1024:
                out["restarts"] += 1
                last = n
            else:
                out["reorders"] += 1
    return {"counts": out, "gaps": gap_by_key}


def reading(n=None, d="dev", s="temp", v=1.0, **extra) -> bytes:
    m = {"d": d, "s": s, "v": v, **extra}
    if n is not None:
        m["n"] = n
    return cbor2.dumps(m)


def seq_of(eng) -> dict:
    return eng.stats()["seq"]


# ---- exact counts on known streams -----------------------------------------------------------

KNOWN = [
    # (stream of n, expected counters)
    ([1, 2, 3, 4, 5], ZERO),
    ([10, 11, 15, 16], dict(ZERO, gaps=3)),                        # 12, 13, 14 lost
    ([10, 13, 20, 21], dict(ZERO, gaps=2 + 6)),
    ([7, 7, 8, 8, 8, 9], dict(ZERO, duplicates=3)),
    ([10, 12, 11, 13], dict(ZERO, gaps=1, reorders=1)),             # 11 came late: still a gap
    ([100, 101, 1, 2, 3], dict(ZERO, restarts=1)),                  # back to 1: a restart
    ([100, 101, 0, 1, 2], dict(ZERO, restarts=1)),                  # back to 0: a restart
    ([100, 101, 102, 2, 3], dict(ZERO, reorders=2)),                # 2 and 3 look like old ones
    ([5000, 5001, 3000, 3001], dict(ZERO, restarts=1)),             # 2,001 back: a restart
    ([5000, 5001, 3977, 5002], dict(ZERO, reorders=1)),             # 1,024 back: a reorder
    ([5000, 5001, 3976, 3977, 5002], dict(ZERO, restarts=1, gaps=1024)),  # 1,025 back
    ([5, 5 + 2**20 + 1, 5 + 2**20 + 2], dict(ZERO, gaps=2**20)),    # the largest gap
    ([5, 5 + 2**20 + 2, 5 + 2**20 + 3], dict(ZERO, restarts=1)),    # one more: a restart
    ([2**64 - 3, 2**64 - 1, 0, 1], dict(ZERO, gaps=1, restarts=1)),  # no overflow at the top
    ([0, 2**64 - 1, 3], dict(ZERO, restarts=2)),
    ([2, 1], dict(ZERO, restarts=1)),                               # n <= 1 wins over distance
    ([50], ZERO),
]


@pytest.mark.parametrize("ns,want", KNOWN)
def test_known_streams_via_push(backend, ns, want):
    eng = backend.Engine()
    for n in ns:
        eng.push(reading(n), 100.0)
    assert seq_of(eng) == want
    assert seq_of(eng) == reference({("dev", "temp"): ns})["counts"]
    assert eng.stats()["readings"] == len(ns)      # counted, never dropped


@pytest.mark.parametrize("ns,want", KNOWN)
def test_known_streams_via_push_many_and_batches(backend, ns, want):
    eng = backend.Engine()
    eng.push_many([reading(n) for n in ns], 100.0)
    assert seq_of(eng) == want
    batch = backend.Engine()   # one CBOR array payload holding the whole stream, in order
    batch.push(cbor2.dumps([{"d": "dev", "s": "temp", "v": 1.0, "n": n} for n in ns]), 100.0)
    assert seq_of(batch) == want


@pytest.mark.parametrize("ns,want", KNOWN)
def test_known_streams_via_push_reading(backend, ns, want):
    eng = backend.Engine()
    for n in ns:
        eng.push_reading("dev", "temp", 1.0, 100.0, seq=n)
    assert seq_of(eng) == want


def test_push_reading_rejects_a_bad_seq(backend):
    eng = backend.Engine()
    eng.push_reading("dev", "temp", 1.0, 100.0, seq=-1)
    eng.push_reading("dev", "temp", 1.0, 100.0, seq=2**64)
    eng.push_reading("dev", "temp", 1.0, 100.0, seq=1.0)
    eng.push_reading("dev", "temp", 1.0, 100.0, seq=True)
    assert eng.stats()["drops"]["schema_mismatch"] == 4 and eng.stats()["readings"] == 0


def test_fallback_payloads_are_counted_too(backend):
    """A payload the reader hands to cbor2 (a tag on an ignored value) carries its `n` through."""
    assert backend.decode.decode_native(
        cbor2.dumps({1: "x", "d": "dev", "s": "temp", "v": 1.0})) == "fallback"
    eng = backend.Engine()
    for n in (1, 2, 5, 5, 4):
        eng.push(cbor2.dumps({1: "x", "d": "dev", "s": "temp", "v": 1.0, "n": n}), 100.0)
    assert seq_of(eng) == dict(ZERO, gaps=2, duplicates=1, reorders=1)
    assert eng.stats()["readings"] == 5


def test_known_streams_via_drain(backend, ring_backend):
    ring = ring_backend.ByteRing(1 << 16)
    eng = backend.Engine()
    if backend.compiled and not ring_backend.compiled:
        with pytest.raises(TypeError):  # the compiled engine reads the C ring directly
            eng.drain(ring)
        return
    streams = {("a", "t"): [1, 2, 4, 4, 3, 9, 0, 1],
               ("a", "rh"): [30, 31, 32, 40],
               ("b", "t"): [7, 6, 8, 2000, 100]}
    records = []   # round robin over the streams, each in its own order
    for i in range(max(len(ns) for ns in streams.values())):
        records += [(d, s, ns[i]) for (d, s), ns in streams.items() if i < len(ns)]
    records.insert(3, ("x", "y", None))   # and two payload-level drops, to check the topics
    records.insert(8, ("x", "z", None))
    for i, (d, s, n) in enumerate(records):
        if n is None:
            assert ring.try_push(100.0, f"bad/{s}".encode(), b"\xff")
            continue
        assert ring.try_push(100.0 + i * 0.01, f"site/{d}/sensor/{s}".encode(), reading(n, d, s))
    while eng.drain(ring, 5):
        pass
    want = reference(streams)
    assert seq_of(eng) == want["counts"]
    gaps = {name: count for name, count, _err in eng.stats()["offenders"]["gaps"]}
    assert gaps == {f"{d}/{s}": g for (d, s), g in want["gaps"].items()}
    assert eng.stats()["offenders"]["drops"] == [("bad/y", 1, 0), ("bad/z", 1, 0)]


# ---- what a stream is ------------------------------------------------------------------------

def test_streams_are_per_device_and_sensor(backend):
    """One device numbering each sensor on its own: interleaved, no gaps. The same numbers read as
    one per-device stream would be full of duplicates."""
    eng = backend.Engine()
    for n in range(1, 50):
        eng.push_many([reading(n, s="temp"), reading(n, s="rh"), reading(n, d="other")], 100.0)
    assert seq_of(eng) == ZERO


def test_one_counter_per_message_shared_by_a_batch(backend):
    """A gateway numbering its messages, each a batch of all its sensors with the message's n:
    every (device, sensor) stream sees n, n+1, ... and a lost message is one gap per sensor."""
    eng = backend.Engine()
    for n in (1, 2, 3, 5, 6):
        eng.push(cbor2.dumps([{"d": "gw", "s": s, "v": 1.0, "n": n} for s in ("t", "rh", "p")]),
                 100.0)
    assert seq_of(eng) == dict(ZERO, gaps=3)


def test_readings_without_n_leave_the_baseline_alone(backend):
    eng = backend.Engine()
    eng.push_many([reading(10), reading(), reading(11), reading(), reading(13)], 100.0)
    assert seq_of(eng) == dict(ZERO, gaps=1)
    assert eng.stats()["readings"] == 5


def test_dropped_readings_do_not_move_the_baseline(backend):
    """Only accepted readings count: a late or key_limit reading neither sets nor moves the
    baseline, so the number it carried is a gap for the next accepted reading."""
    eng = backend.Engine(window=5.0, emit_every=5.0, max_keys=1)
    eng.push(reading(1), 100.0)
    eng.push(reading(2), 106.0)                     # closes the tick at 105
    eng.push(reading(3), 101.0)                     # late
    eng.push(reading(1, d="new"), 106.0)            # key_limit
    eng.push(reading(4), 106.0)
    assert eng.stats()["drops"]["late"] == 1 and eng.stats()["drops"]["key_limit"] == 1
    assert seq_of(eng) == dict(ZERO, gaps=1)


def test_an_evicted_key_starts_a_new_baseline(backend):
    """Silence longer than key_ttl evicts the key with its baseline: what was lost meanwhile is
    not visible (no gap), and the next reading is a fresh start (no restart either)."""
    eng = backend.Engine(window=10.0, emit_every=5.0, key_ttl=10.0)
    eng.push(reading(1), 100.0)
    eng.push(reading(2), 101.0)
    eng.tick(200.0)
    assert eng.stats()["live_keys"] == 0
    eng.push(reading(50), 201.0)
    eng.push(reading(51), 202.0)
    assert seq_of(eng) == ZERO


def test_the_baseline_lives_in_the_key_record(compiled_backend):
    """8 bytes more per key (uint64 last_seq; the flag uses what was padding), nothing per
    reading: state_bytes stays put however many numbered readings a key gets."""
    eng = compiled_backend.Engine()
    eng.push(reading(1, u="C"), 100.0)
    before = eng.stats()["state_bytes"]
    ns = range(3, 100_000, 3)
    eng.push_many([reading(n, u="C") for n in ns], 100.5)
    assert eng.stats()["state_bytes"] == before
    assert seq_of(eng) == reference({("dev", "temp"): [1, *ns]})["counts"]
    assert seq_of(eng)["gaps"] == 1 + 2 * (len(ns) - 1)


# ---- random streams against the reference ----------------------------------------------------

KEYS = [("a", "t"), ("a", "rh"), ("b", "t"), ("ü", "t")]

steps = st.one_of(
    st.just(1), st.just(1), st.just(1),
    st.integers(2, 6),                  # a gap
    st.just(0),                         # a duplicate
    st.integers(-6, -1),                # a reorder (or a restart near the bottom)
    st.integers(-3000, -1026),          # far back: a restart
    st.sampled_from([-1024, -1025]),    # either side of the reorder limit
    st.just("reset"),                   # back to 0 or 1
    st.just("far"),                     # far forward: the largest gap, or a restart
)


@st.composite
def seq_streams(draw):
    """Streams per key, and an interleaving of them cut into payloads."""
    streams = {}
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True)):
        n = draw(st.sampled_from([0, 1, 2, 1000, 2**40, 2**64 - 20]))
        ns = [n]
        for _ in range(draw(st.integers(0, 40))):
            step = draw(steps)
            if step == "reset":
                n = draw(st.integers(0, 1))
            elif step == "far":
                n = n + 2**20 + draw(st.sampled_from([1, 2, 50]))
            else:
                n = n + step
            n = min(max(n, 0), 2**64 - 1)
            ns.append(n)
        streams[key] = ns
    order = draw(st.permutations([k for k, ns in streams.items() for _ in ns]))
    cursor = {k: 0 for k in streams}
    readings = []
    for key in order:
        readings.append((key, streams[key][cursor[key]]))
        cursor[key] += 1
    cuts = sorted(draw(st.lists(st.integers(0, len(readings)), max_size=6)))
    return streams, readings, cuts


def feed(engine_cls, readings, cuts, how):
    eng = engine_cls()
    bounds = [0, *cuts, len(readings)]
    for lo, hi in zip(bounds, bounds[1:]):
        part = readings[lo:hi]
        if not part:
            continue
        if how == "array":
            eng.push(cbor2.dumps([{"d": d, "s": s, "v": 1.5, "n": n} for (d, s), n in part]),
                     100.0)
        elif how == "push_many":
            eng.push_many([reading(n, d, s) for (d, s), n in part], 100.0)
        else:
            for (d, s), n in part:
                eng.push_reading(d, s, 1.5, 100.0, seq=n)
    return eng


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq_streams(), st.sampled_from(["array", "push_many", "push_reading"]))
def test_random_streams_match_the_reference(compiled_backend, pure_backend, case, how):
    streams, readings, cuts = case
    want = reference(streams)
    compiled = feed(compiled_backend.Engine, readings, cuts, how)
    pure = feed(pure_backend.Engine, readings, cuts, how)
    assert seq_of(compiled) == want["counts"]
    assert seq_of(pure) == want["counts"]
    assert compiled.stats()["offenders"] == pure.stats()["offenders"]
    gaps = {name: count for name, count, err in compiled.stats()["offenders"]["gaps"]}
    assert gaps == {f"{d}/{s}": g for (d, s), g in want["gaps"].items()}
