"""The engine thread: drains the ring as records arrive, parks when idle, ticks on the clock."""

from __future__ import annotations

import threading
import time

import cbor2
import pytest

from telemetry_cy._engine import Engine
from telemetry_cy._ring import ByteRing
from telemetry_cy.engine_thread import EngineThread


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
    clock.set(1005.0)
    assert wait_for(lambda: emitted)
    [(now, aggs)] = emitted
    assert now == 1005.0 and len(aggs) == 10 and sum(a.count for a in aggs) == 1000
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


def test_engine_thread_error_is_surfaced():
    ring = ByteRing(1 << 16)

    def broken_emit(aggs, now):
        raise RuntimeError("emitter broke")

    clock = FakeClock(1000.0)
    thread = EngineThread(Engine(window=5.0, emit_every=5.0), ring, broken_emit, clock=clock)
    thread.start()
    ring.try_push(1000.0, b"t", cbor2.dumps({"d": "a", "s": "b", "v": 1}))
    assert wait_for(lambda: thread.stats().get("readings") == 1)
    clock.set(1005.0)
    thread.join(10.0)
    assert isinstance(thread.error, RuntimeError)
