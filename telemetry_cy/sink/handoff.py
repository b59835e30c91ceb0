"""One bounded hand-off of one kind of batch from the producer (engine) thread to the emitter's
asyncio loop, and its counters. The NATS emitter has one lane for the aggregates' tick batches
and one for late readings (held by `late_messages.LateQueue`); the partials emitter has one for
its partial messages.

A batch crosses with one `call_soon_threadsafe` -- never a lock, never a wait on the producer's
side. It is refused, and counted as refused, when the emitter is not accepting, has no loop, or
the loop has not taken `max_in_flight` earlier batches (it is stuck or starved: the bound keeps
memory bounded even then), and when the loop closed under the offer (stop raced with it).

Besides its items, a batch may carry a weight: a second count the owner gives it and wants
accounted the same way (the partials emitter: the panes its messages hold), so what is refused,
waiting or lost is known in that count too without the owner opening the batches again. It is
0 for an owner that gives none.

Ownership: the producer thread writes only `handoff`; the loop thread writes only `taken` (in
`took`, under the owner's stats lock), and after the loop thread is gone the stopping thread
does, once (`lost_on_stop`, under the same lock). Each is a tuple replaced whole, so a reader on
any thread sees one consistent (batches, items, ...) and never half of an update. `handoff` is
bumped before the batch is scheduled, so the loop can never have taken more than was handed
over: read `taken` first and `handoff` after, and handed - taken is never negative.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["HandoffLane", "LaneCounts", "Lost"]


class LaneCounts(NamedTuple):
    """One reading of a lane (`HandoffLane.counts`)."""
    offered: int          # items offered: handed over + refused
    refused: int          # items refused at the door (dropped, with the owner's reason)
    waiting_batches: int  # batches handed over that the loop has not taken yet
    waiting_items: int    # ... and their items
    refused_weight: int = 0   # the weight of the refused batches
    waiting_weight: int = 0   # ... and of the waiting ones


class Lost(NamedTuple):
    """What the loop never took of what was handed over (`HandoffLane.lost_on_stop`)."""
    items: int
    weight: int


class HandoffLane:
    __slots__ = ("handoff", "taken")

    def __init__(self) -> None:
        # producer thread only: (batches handed over, their items, items refused,
        #                        the weight handed over, the weight refused)
        self.handoff = (0, 0, 0, 0, 0)
        # loop thread only, under the owner's lock: (batches, items, weight) the loop took
        self.taken = (0, 0, 0)

    def offer(self, loop: asyncio.AbstractEventLoop | None, callback: Callable[[list], object],
              items: list, max_in_flight: int, accepting: bool, weight: int = 0) -> bool:
        """Producer thread: schedules `callback(items)` on `loop`; never blocks. Returns whether
        the batch was handed over (an empty one is neither handed over nor counted)."""
        n = len(items)
        if not n:
            return False
        batches, handed, refused, handed_w, refused_w = self.handoff
        # a stale `taken` (the loop took more since) only makes the bound stricter, never looser
        if not accepting or loop is None or batches - self.taken[0] >= max_in_flight:
            self.handoff = (batches, handed, refused + n, handed_w, refused_w + weight)
            return False
        # counted before the call so the loop can never have taken more than was handed
        self.handoff = (batches + 1, handed + n, refused, handed_w + weight, refused_w)
        try:
            loop.call_soon_threadsafe(callback, items)
        except RuntimeError:  # the loop closed under a late offer (stop() raced with us)
            self.handoff = (batches, handed, refused + n, handed_w, refused_w + weight)
            return False
        return True

    def took(self, n: int, weight: int = 0) -> None:
        """Loop thread, under the owner's lock: the callback took a batch of n items (and the
        weight it was offered with)."""
        batches, items, taken_w = self.taken
        self.taken = (batches + 1, items + n, taken_w + weight)

    def lost_on_stop(self) -> Lost:
        """Once the loop thread is gone, under the owner's lock: the items (and weight) handed
        over that the loop never took (scheduled before it closed). They count as taken from
        now on, so the owner counts them as dropped once and the waiting counts go back to
        zero."""
        batches, handed, _, handed_w, _ = self.handoff
        _, taken, taken_w = self.taken
        if handed - taken <= 0:
            return Lost(0, 0)
        self.taken = (batches, handed, handed_w)
        return Lost(handed - taken, handed_w - taken_w)

    def counts(self) -> LaneCounts:
        """Under the owner's lock (so `taken` matches the owner's other loop-side counters);
        `handoff` is read last, so the waiting counts are never negative."""
        taken_batches, taken_items, taken_w = self.taken
        batches, handed, refused, handed_w, refused_w = self.handoff
        return LaneCounts(handed + refused, refused, batches - taken_batches,
                          handed - taken_items, refused_w, handed_w - taken_w)
