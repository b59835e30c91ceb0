"""Where a takeover's replay of a partition may start (docs/scale-out.md, "Ownership and
failover"): the lowest stream sequence of ``partials.<p>`` still needed, which the owner commits
with its last emitted tick in the ``TCY_MERGE_EMITTED`` entry after each turn.

Below that sequence every message is one of:

* a panes message of an interval no window to come spans (interval < emitted + 1 - P): its
  windows are all published or counted, a replay would only count it ``stale``;
* a message of an instance that has sent a later one at or above it (each live instance's last
  message is kept): the instance is seen again in the replay, with its newest progress, so it
  holds the frontier back exactly as it does for the owner now;
* a message of an instance gone (left, or dead with no loss spanning a window to come).

A dead instance whose loss still spans a window to come is not visible that way (nothing of it
comes any more): while one exists the floor stays where it was (it was valid when the instance
was alive, so it is below all its messages). Nor is a gap in an instance's sequence (a message
missing, its loss open or bounded, pane_merge.py): a replay from past the message before the gap
would see the instance join after it and lose nothing, so the floor stays too (it was below that
message). The floor never moves back.

A new owner reads from the floor and emits nothing in the partition until it has caught up with
the stream (``num_pending`` 0): the merge state it then holds is the old owner's for every window
after the emitted tick. Before that, an instance whose first message after the floor is yet to
come would not hold the windows back, so a window could go out without its panes.
"""

from __future__ import annotations

import collections


class ReplayFloor:
    """One partition's floor. ``note`` every message taken, in stream order; ``floor`` after a
    turn's windows are out."""

    def __init__(self, start: int | None = None) -> None:
        self._last: dict[str, int] = {}        # instance -> stream sequence of its last message
        # (sequence, interval) of the panes messages, in stream order; the head is dropped once
        # no window to come spans its interval (the bound only rises, so order suffices)
        self._panes: collections.deque[tuple[int, int]] = collections.deque()
        self._seen = 0                         # the highest sequence noted
        self._floor = start

    def note(self, instance: str, panes_interval: int | None, seq: int) -> None:
        """A message taken: its instance, the interval of its panes (None: no panes), its stream
        sequence."""
        self._last[instance] = seq
        if panes_interval is not None:
            self._panes.append((seq, panes_interval))
        self._seen = max(self._seen, seq)

    def floor(self, emitted: int | None, panes: int, live: frozenset[str],
              loss_pending: bool) -> int | None:
        """The sequence to replay from, or None (from the stream's start: nothing emitted yet,
        or a loss pending since before the first floor)."""
        if emitted is None or loss_pending:
            return self._floor
        needed_from = emitted + 1 - panes      # the oldest interval a window to come spans
        while self._panes and self._panes[0][1] < needed_from:
            self._panes.popleft()
        for name in [n for n in self._last if n not in live]:
            del self._last[name]              # left or dead without a pending loss
        candidates = list(self._last.values())
        if self._panes:
            candidates.append(self._panes[0][0])
        floor = min(candidates) if candidates else self._seen + 1
        if self._floor is None or floor > self._floor:
            self._floor = floor
        return self._floor
