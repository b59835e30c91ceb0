"""The emitter's bounded hand-off from the engine thread to its loop (sink/handoff.py), on real
asyncio loops: what is refused and why, what a closed loop leaves, and that the counts a reader
sees never run backwards while both threads work."""

from __future__ import annotations

import asyncio
import threading
import time

from telemetry_cy.sink.handoff import HandoffLane, LaneCounts


def _run_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Runs the callbacks scheduled on a loop that is not running."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_refused_when_too_many_in_flight_then_accepted_once_taken():
    lane, got = HandoffLane(), []

    def take(items):
        lane.took(len(items))
        got.append(items)

    loop = asyncio.new_event_loop()
    try:
        assert lane.offer(loop, take, [1, 2], 2, True)
        assert lane.offer(loop, take, [3], 2, True)
        assert not lane.offer(loop, take, [4, 5, 6], 2, True)   # two not taken yet: the bound
        assert lane.counts() == LaneCounts(offered=6, refused=3, waiting_batches=2,
                                           waiting_items=3)
        _run_pending(loop)
        assert got == [[1, 2], [3]]
        assert lane.counts() == LaneCounts(6, 3, 0, 0)
        assert lane.offer(loop, take, [7], 2, True)               # room again
        _run_pending(loop)
    finally:
        loop.close()
    assert got[-1] == [7] and lane.counts() == LaneCounts(7, 3, 0, 0)
    assert lane.handoff == (3, 4, 3, 0, 0) and lane.taken == (3, 4, 0)


def test_refused_when_not_accepting_or_without_a_loop_and_empty_ones_not_counted():
    lane = HandoffLane()
    loop = asyncio.new_event_loop()
    try:
        assert not lane.offer(loop, lane.took, [1, 2], 64, False)
        assert not lane.offer(None, lane.took, [3], 64, True)
        assert not lane.offer(loop, lane.took, [], 64, True)
        _run_pending(loop)
    finally:
        loop.close()
    assert lane.counts() == LaneCounts(offered=3, refused=3, waiting_batches=0, waiting_items=0)
    assert lane.taken == (0, 0, 0)


def test_a_closed_loop_refuses_and_counts():
    lane = HandoffLane()
    loop = asyncio.new_event_loop()
    loop.close()
    assert not lane.offer(loop, lane.took, [1, 2, 3], 64, True)   # call_soon_threadsafe raised
    assert lane.handoff == (0, 0, 3, 0, 0)   # the hand-off is undone, the batch counted as refused
    assert lane.counts() == LaneCounts(3, 3, 0, 0)
    assert lane.lost_on_stop() == (0, 0)


def test_what_a_loop_closed_before_taking_is_lost_once():
    lane = HandoffLane()
    loop = asyncio.new_event_loop()
    assert lane.offer(loop, lane.took, [1, 2], 64, True)
    assert lane.offer(loop, lane.took, [3], 64, True)
    loop.close()   # scheduled, never run
    assert lane.counts() == LaneCounts(3, 0, 2, 3)
    assert lane.lost_on_stop() == (3, 0)
    assert lane.counts() == LaneCounts(3, 0, 0, 0)   # no longer waiting: dropped by the owner
    assert lane.lost_on_stop() == (0, 0)             # and counted once
    assert not lane.offer(loop, lane.took, [4], 64, True)
    assert lane.counts() == LaneCounts(4, 1, 0, 0)


def test_a_batch_weight_is_refused_waits_and_is_lost_with_its_items():
    """The owner's second count of a batch (the partials emitter: its panes) follows the items
    through every outcome: taken, refused at the bound or at a closed loop, lost at stop."""
    lane = HandoffLane()

    def take(items):
        lane.took(len(items), sum(items))

    loop = asyncio.new_event_loop()
    assert lane.offer(loop, take, [5, 6], 2, True, weight=11)
    assert lane.offer(loop, take, [7], 2, True, weight=7)
    assert not lane.offer(loop, take, [1, 2, 3], 2, True, weight=6)   # the bound
    assert lane.counts() == LaneCounts(6, 3, 2, 3, refused_weight=6, waiting_weight=18)
    _run_pending(loop)
    assert lane.counts() == LaneCounts(6, 3, 0, 0, 6, 0)
    assert lane.offer(loop, take, [4], 2, True, weight=4)
    loop.close()   # scheduled, never run
    assert not lane.offer(loop, take, [9, 9], 2, True, weight=18)   # closed under the offer
    assert lane.counts() == LaneCounts(9, 5, 1, 1, 24, 4)
    assert lane.lost_on_stop() == (1, 4)
    assert lane.counts() == LaneCounts(9, 5, 0, 0, 24, 0)
    assert lane.taken == (3, 4, 22) and lane.handoff == (3, 4, 5, 22, 24)


def test_counts_stay_consistent_while_both_threads_work():
    """A producer offers against a loop thread that takes under a lock, a reader reads under
    that lock: the waiting counts are never negative and, at the end, every item offered was
    taken or refused."""
    lane, lock = HandoffLane(), threading.Lock()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def take(items):
        with lock:
            lane.took(len(items))

    def run():
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10.0)
    readings: list[LaneCounts] = []
    done = threading.Event()

    def read():
        while not done.is_set():
            with lock:
                readings.append(lane.counts())
            time.sleep(0)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    handed = 0
    try:
        for i in range(1000):
            handed += lane.offer(loop, take, [i] * (1 + i % 3), 4, True)
            time.sleep(0)   # lets the loop thread in, so both sides of the bound are reached
    finally:
        done.set()
        reader.join(10.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
    loop.close()
    assert not thread.is_alive() and not reader.is_alive()
    assert readings and all(r.waiting_batches >= 0 and r.waiting_items >= 0 for r in readings)
    assert all(a.offered <= b.offered for a, b in zip(readings, readings[1:]))
    final = lane.counts()
    assert final.offered == sum(1 + i % 3 for i in range(1000))
    assert lane.handoff[0] == handed
    assert final.waiting_items == lane.lost_on_stop().items
    assert lane.taken[1] + final.refused == final.offered
