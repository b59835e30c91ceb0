"""Engine.run_ring, the engine thread's loop between two Python turns (drain, park, drain ...),
and ByteRing.park, the park it is made of: each reason to return, and nothing left behind.

run_ring must process exactly what drain() would (the oracle: the same records pushed into a
twin engine with push()), return at its deadline or when the ring is woken, and never strand a
record behind a park (the doorbell's argument, tc_doorbell.h).
"""

from __future__ import annotations

import threading
import time

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def reading(d="dev1", s="temp", v=1.0, **extra) -> bytes:
    return cbor2.dumps({"d": d, "s": s, "v": v, **extra})


def as_dicts(aggs) -> list[dict]:
    return sorted((a.as_dict() for a in aggs), key=lambda a: (a["window_end"], a["device"],
                                                              a["sensor"]))


COUNTERS = ("received", "payloads", "readings", "drops", "live_keys", "evicted", "ticks")


def wait_for(predicate, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def same_counters(a: dict, b: dict) -> list[str]:
    return [k for k in COUNTERS if a[k] != b[k]]


# ---- ByteRing.park: why a park ended ---------------------------------------------------------

def test_park_says_timeout_records_or_kicked(backend):
    ring = backend.ByteRing(1 << 12)
    assert ring.park(0.001) == backend.ring.PARK_TIMEOUT
    assert ring.try_push(1.0, b"t", b"x")
    assert ring.park(3600.0) == backend.ring.PARK_RECORDS
    ring.wake()   # a kick wins over records that are there: the consumer is wanted back
    assert ring.park(3600.0) == backend.ring.PARK_KICKED
    assert ring.park(3600.0) == backend.ring.PARK_RECORDS   # the kick was spent
    assert ring.pop() is not None
    assert ring.park(0.001) == backend.ring.PARK_TIMEOUT


def test_a_kick_ends_a_park_in_progress(backend):
    ring = backend.ByteRing(1 << 12)
    why = []
    t = threading.Thread(target=lambda: why.append(ring.park(3600.0)))
    t.start()
    threading.Event().wait(0.05)
    ring.wake()
    t.join(30.0)
    assert not t.is_alive() and why == [backend.ring.PARK_KICKED]


# ---- Engine.run_ring: the reasons to return ------------------------------------------------------

def test_run_ring_returns_at_its_deadline_after_draining(backend):
    ring = backend.ByteRing(1 << 16)
    eng = backend.Engine(window=10.0, emit_every=5.0)
    for i in range(10):
        assert ring.try_push(100.0, b"t", reading(d=f"d{i}"))
    assert eng.run_ring(ring, 0.0, 4) is False   # no time at all: still one drain, no park
    assert ring.parks == 0
    assert eng.stats()["received"] == 4
    assert eng.run_ring(ring, 0.02, 4) is False  # drains the rest, parks on the empty ring
    assert ring.parks >= 1
    assert eng.stats()["readings"] == 10 and ring.used_bytes == 0


def test_run_ring_returns_when_woken_while_parked(backend):
    ring = backend.ByteRing(1 << 16)
    eng = backend.Engine(window=10.0, emit_every=5.0)
    out = []
    t = threading.Thread(target=lambda: out.append(eng.run_ring(ring, 3600.0, 64)))
    t.start()
    threading.Event().wait(0.05)
    assert ring.try_push(100.0, b"t", reading())   # a producer's records do not end it ...
    threading.Event().wait(0.05)
    ring.wake()                                     # ... a wake does
    t.join(30.0)
    assert not t.is_alive()
    assert out == [True] and ring.parks >= 2
    assert eng.stats()["readings"] == 1


def test_a_wake_before_the_call_returns_after_one_drain(backend):
    ring = backend.ByteRing(1 << 16)
    eng = backend.Engine(window=10.0, emit_every=5.0)
    for i in range(3):
        assert ring.try_push(100.0, b"t", reading(d=f"d{i}"))
    ring.wake()
    assert eng.run_ring(ring, 3600.0, 64) is True and ring.parks == 1
    assert eng.stats()["readings"] == 3 and ring.used_bytes == 0
    assert eng.run_ring(ring, 0.001, 64) is False   # the kick counted once


def test_a_wake_while_busy_returns_and_leaves_the_rest_for_the_next_call(backend):
    """Full batches never park; the wake still ends the call (the compiled loop looks for it
    after each full batch, the twin at its first park), and what is left stays in the ring."""
    ring = backend.ByteRing(1 << 20)
    eng = backend.Engine(window=10.0, emit_every=5.0)
    for i in range(500):
        assert ring.try_push(100.0, b"t", reading(d=f"d{i % 50}", v=float(i)))
    ring.wake()
    assert eng.run_ring(ring, 3600.0, 16) is True
    while eng.drain(ring, 64):
        pass
    assert eng.stats()["readings"] == 500


# ---- Engine.run_ring processes what drain() would ------------------------------------------------

PAYLOADS = st.one_of(
    st.builds(lambda d, v: reading(d=f"d{d}", v=v), st.integers(0, 5),
              st.floats(-1e6, 1e6, allow_nan=False)),
    st.just(b"\xff"),                                                      # decode_error
    st.just(cbor2.dumps({"d": "x", "s": "y", "v": 1, "z": cbor2.CBORTag(99, 1)})),  # cbor2
    st.just(reading(v=float("nan"))),                                      # non_finite
)
RECORDS = st.lists(st.tuples(st.floats(100.0, 130.0), PAYLOADS), min_size=0, max_size=120)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=RECORDS, batch=st.integers(1, 40))
def test_run_ring_matches_push_of_the_same_records(backend, records, batch):
    """Data that closes ticks, payloads cbor2 must read, late readings and bad payloads: all
    handled inside the call, counted as push() counts them, nothing left in the ring."""
    ring = backend.ByteRing(1 << 20)
    eng = backend.Engine(window=10.0, emit_every=5.0)
    ref = backend.Engine(window=10.0, emit_every=5.0)
    for ts, payload in sorted(records, key=lambda r: r[0]):
        assert ring.try_push(ts, b"site/1/sensor/t", payload)
        ref.push(payload, ts)
    # a call returns once its 2 ms are up: on a loaded machine the pure twin may need more
    # than one call for 120 records (its cbor2 fallback is Python), never more than a few
    for _ in range(1000):
        assert eng.run_ring(ring, 0.002, batch) is False
        if ring.used_bytes == 0:
            break
    assert ring.used_bytes == 0
    assert same_counters(eng.stats(), ref.stats()) == []
    assert as_dicts(eng.tick(200.0)) == as_dicts(ref.tick(200.0))


def test_run_ring_in_event_time_keeps_the_late_readings_for_the_tick(backend):
    ring = backend.ByteRing(1 << 16)
    kw = dict(window=10.0, emit_every=5.0, time="event", allowed_lateness=0.0, late_capacity=8)
    eng, ref = backend.Engine(**kw), backend.Engine(**kw)
    for ts, t in ((100.0, 100.0), (112.0, 112.0), (112.5, 101.0), (113.0, 102.0)):
        payload = reading(t=t)
        assert ring.try_push(ts, b"t", payload)
        ref.push(payload, ts)
    assert eng.run_ring(ring, 0.002, 2) is False
    assert len(ref.take_late()) == 2
    assert [r.t for r in eng.take_late()] == [101.0, 102.0]
    assert same_counters(eng.stats(), ref.stats()) == []


def test_run_ring_raises_what_drain_raises_and_strands_nothing(backend):
    ring = backend.ByteRing(1 << 16)
    eng = backend.Engine(window=10.0, emit_every=5.0)
    assert ring.try_push(100.0, b"t", reading())
    assert ring.try_push(float("inf"), b"t", reading())   # only a buggy producer stamps this
    assert ring.try_push(101.0, b"t", reading())
    with pytest.raises(ValueError, match="finite"):
        eng.run_ring(ring, 3600.0, 64)
    assert ring.used_bytes == 0   # the batch was released, not left half-consumed


# ---- nothing is stranded behind a park -------------------------------------------------------

BURSTS = st.lists(st.tuples(st.integers(1, 50), st.sampled_from([0.0, 0.0005, 0.003])),
                  min_size=1, max_size=20)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bursts=BURSTS, batch=st.sampled_from([1, 7, 64]))
def test_a_producer_in_bursts_never_strands_a_record(backend, bursts, batch):
    """The consumer calls run_ring with an hour-long deadline, so only the doorbell wakes it;
    the producer pushes in bursts with pauses, then wakes the ring once after its last push.
    Every record must be processed by the call that the wake ends (or an earlier one)."""
    ring = backend.ByteRing(1 << 20)
    eng = backend.Engine(window=3600.0, emit_every=3600.0, key_ttl=3600.0)
    calls = []

    def consume():
        while True:
            woken = eng.run_ring(ring, 3600.0, batch)
            calls.append(woken)
            if woken:
                return

    t = threading.Thread(target=consume)
    t.start()
    n = 0
    for size, pause in bursts:
        for _ in range(size):
            assert ring.try_push(1000.0, b"t", reading(d=f"d{n % 5}", v=float(n)))
            n += 1
        if pause:
            threading.Event().wait(pause)
    # only the doorbell can have woken the consumer for the last burst: a record it parked on
    # instead would stay in the ring for the hour of its deadline
    assert wait_for(lambda: ring.used_bytes == 0)
    ring.wake()
    t.join(60.0)
    assert not t.is_alive() and calls == [True]
    assert eng.stats()["readings"] == n


# ---- the engine thread's Python turns around run_ring -------------------------------------------

class CountingCheckpoints:
    """What EngineThread needs of service/checkpoints.py: due whenever asked, counting submits."""

    def __init__(self) -> None:
        self.submitted = 0

    def due(self, mono: float) -> bool:
        return True

    def submit(self, data: bytes, seconds: float) -> None:
        self.submitted += 1


def test_an_idle_engine_thread_still_returns_for_stats_and_checkpoints(backend):
    """With the next tick an hour away and an empty ring, run_ring returns at MAX_PARK_S: the
    heartbeat moves and due checkpoints are taken while the thread parks in between."""
    from telemetry_cy.engine.engine_thread import EngineThread

    ring = backend.ByteRing(1 << 16)
    ckpt = CountingCheckpoints()
    thread = EngineThread(backend.Engine(window=3600.0, emit_every=3600.0, key_ttl=3600.0), ring,
                          lambda aggs, now: None, checkpoints=ckpt)
    thread.start()
    try:
        assert wait_for(lambda: "heartbeat" in thread.stats())
        beat = thread.stats()["heartbeat"]
        assert wait_for(lambda: ckpt.submitted >= 3 and thread.stats()["heartbeat"] > beat)
        assert thread.parks >= 1
    finally:
        thread.stop(timeout=30.0)
    assert not thread.is_alive() and thread.error is None
