"""The engine thread: drains the ring as records arrive, parks when idle, ticks on the clock.

It runs the process's backend (telemetry_cy.backend.ACTIVE, as the daemon does): the compiled set,
or the twins under TELEMETRY_CY_PURE=1.
"""

from __future__ import annotations

import threading
import time

import cbor2
import pytest

from telemetry_cy.backend import ACTIVE
from telemetry_cy.engine.engine_thread import TICK_LAG_S, EngineThread

Engine, ByteRing = ACTIVE.Engine, ACTIVE.ByteRing


class FakeClock:
    """A clock the test moves by hand, so ticks happen exactly when the test says."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def set(self, now: float) -> None:
        with self.lock:
            self.now = now


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_engine_thread_drains_ticks_and_stops_cleanly():
    ring = ByteRing(1 << 20)
    clock = FakeClock(1000.0)
    emitted = []
    thread = EngineThread(Engine(window=10.0, emit_every=5.0), ring,
                          lambda aggs, now: emitted.append((now, aggs)), clock=clock)
    thread.start()
    for i in range(1000):
        assert ring.try_push(1000.5, b"t", cbor2.dumps({"d": f"d{i % 10}", "s": "t", "v": i}))
    assert wait_for(lambda: thread.stats().get("readings") == 1000)
    assert emitted == []
    clock.set(1005.0 + TICK_LAG_S)  # the tick at 1005 waits out the stamping lag
    assert wait_for(lambda: emitted)
    [(now, aggs)] = emitted
    assert now == pytest.approx(1005.0) and len(aggs) == 10 and sum(a.count for a in aggs) == 1000
    # records pushed right before stop are still processed
    for i in range(50):
        ring.try_push(1006.0, b"t", cbor2.dumps({"d": "late-comer", "s": "t", "v": i}))
    clock.set(1010.0)
    thread.stop()
    assert not thread.is_alive() and thread.error is None
    assert thread.stats()["readings"] == 1050


def test_engine_thread_parks_when_idle_and_wakes_on_push():
    ring = ByteRing(1 << 16)
    thread = EngineThread(Engine(), ring, lambda aggs, now: None)
    thread.start()
    try:
        assert wait_for(lambda: thread.parks > 0)
        parks = thread.parks
        ring.try_push(time.time(), b"t", cbor2.dumps({"d": "a", "s": "b", "v": 1}))
        assert wait_for(lambda: thread.stats().get("readings") == 1)
        # idle again: it parks rather than spins (a spinning thread would not count parks)
        assert wait_for(lambda: thread.parks > parks)
    finally:
        thread.stop()


def test_stop_wakes_a_parked_thread(monkeypatch):
    """stop() rings the parked thread awake: with the park's timeout and the next tick an hour
    away, the thread is still joined (a stop that waited for the park would time out here)."""
    from telemetry_cy.engine import engine_thread
    monkeypatch.setattr(engine_thread, "MAX_PARK_S", 3600.0)
    ring = ByteRing(1 << 16)
    thread = EngineThread(Engine(window=3600.0, emit_every=3600.0, key_ttl=3600.0), ring,
                          lambda aggs, now: None)
    thread.start()
    assert wait_for(lambda: thread.parks > 0)
    thread.stop(timeout=30.0)
    assert not thread.is_alive() and thread.error is None


def test_engine_thread_error_is_surfaced():
    ring = ByteRing(1 << 16)

    def broken_emit(aggs, now):
        raise RuntimeError("emitter broke")

    clock = FakeClock(1000.0)
    thread = EngineThread(Engine(window=5.0, emit_every=5.0), ring, broken_emit, clock=clock)
    thread.start()
    ring.try_push(1000.0, b"t", cbor2.dumps({"d": "a", "s": "b", "v": 1}))
    assert wait_for(lambda: thread.stats().get("readings") == 1)
    clock.set(1005.0 + TICK_LAG_S)
    thread.join(10.0)
    assert isinstance(thread.error, RuntimeError)


def test_a_due_tick_first_drains_what_the_ring_holds():
    """Records stamped before a tick boundary but still in the ring when the clock passes it are
    processed before the tick, not dropped as late (the ring holds several drain batches)."""
    ring = ByteRing(1 << 22)
    readings = iter([1000.0])

    def clock():  # the thread starts at 1000; from its first drain on, the tick at 1005 is due
        return next(readings, 1005.0 + TICK_LAG_S)

    emitted = []
    thread = EngineThread(Engine(window=5.0, emit_every=5.0), ring,
                          lambda aggs, now: emitted.append(aggs), clock=clock, batch_records=64)
    payload = cbor2.dumps({"d": "a", "s": "t", "v": 1})
    for _ in range(5000):   # stamped before 1005, many batches' worth
        assert ring.try_push(1004.9, b"t", payload)
    thread.start()
    assert wait_for(lambda: emitted)
    thread.stop()
    stats = thread.stats()
    assert stats["drops"]["late"] == 0 and stats["readings"] == 5000
    assert sum(a.count for a in emitted[0]) == 5000
