"""The instance side of scale-out on the pure engine (docs/scale-out.md): the closed panes of an
``_engine_py.Engine`` as partials, and an ``InstancePartials`` that turns an engine's progress
into the messages of the partial format, partition by partition.

Event time only: a pane's partial carries the times of its first and last readings, and the
twin keeps them per pane in event time alone (in arrival time the window's ``last`` is the key's,
not a pane's, so arrival-time windows are not mergeable from panes).

Panes are read when the clock closes them (no reading can land there any more), from a hook
around the twin's ``_advance``: that runs before the reading that moved the clock is added, so
before it can reuse the slot of a pane in the ring. ``InstancePartials.collect`` then turns
them into messages whenever the caller likes (after each batch, at each tick).
"""

from __future__ import annotations

from telemetry_cy.engine import _engine_py
from telemetry_cy.engine.partial_format import (
    KIND_HEARTBEAT,
    KIND_LEAVE,
    KIND_PANES,
    KIND_PROGRESS,
    NO_DATA,
    PanePartial,
    WindowSettings,
    partition_of,
    write,
)


def closed_panes(engine: _engine_py.Engine, lo: int, hi: int) -> dict[int, list[PanePartial]]:
    """interval -> the panes holding data in intervals [lo, hi) (hi <= the closed tick)."""
    if not engine._event:
        raise ValueError("partials need time='event' (docs/scale-out.md)")
    if engine._started and hi > engine._closed:
        raise ValueError(f"interval {hi - 1} is not closed yet")
    return _panes_of(engine, lo, hi)


def _panes_of(engine: _engine_py.Engine, lo: int, hi: int) -> dict[int, list[PanePartial]]:
    out: dict[int, list[PanePartial]] = {}
    for key in engine._keys.values():
        if key.newest is None:
            continue
        ring = len(key.panes)
        for j in range(max(lo, key.newest - ring + 1), min(hi, key.newest + 1)):
            p = key.panes[j % ring]
            if not p.count:
                continue
            sketch = None if key.sketches is None else key.sketches[j % ring].copy()
            out.setdefault(j, []).append(PanePartial(
                key.device, key.sensor, key.unit, p.count, p.sum, p.m2, p.min, p.max, p.first,
                p.first_ts, p.last, p.last_ts, sketch))
    return out


class InstancePartials:
    """One instance's outgoing partials: ``collect()`` after each batch pushed or tick, gives
    (partition, message bytes) to publish, in order; panes of an interval before the progress
    that covers it, per partition."""

    def __init__(self, engine: _engine_py.Engine, settings: WindowSettings, instance: str,
                 partitions: int) -> None:
        self.engine = engine
        self.settings = settings
        self.instance = instance
        self.partitions = partitions
        self._sent: int | None = None      # every interval below this has been sent
        self._seq = [0] * partitions
        # Panes are taken when the clock closes them, inside the push that closes them: after
        # it, a reading far ahead may already have reused their slot of the ring.
        self._closed_panes: dict[int, list[PanePartial]] = {}
        advance = engine._advance

        def closing(interval: int) -> None:
            if engine._started and interval > engine._closed:
                if self._sent is None:
                    # where the clock started: nothing below it was ever accepted
                    self._sent = engine._closed
                self._closed_panes.update(
                    _panes_of(engine, max(self._sent, engine._closed), interval))
            advance(interval)
        engine._advance = closing   # type: ignore[method-assign]

    def _message(self, kind: int, partition: int, interval: int, panes=()) -> tuple[int, bytes]:
        data = write(kind, self.settings, self.instance, self._seq[partition], interval,
                     partition, self.partitions, panes)
        self._seq[partition] += 1
        return partition, data

    def collect(self) -> list[tuple[int, bytes]]:
        e = self.engine
        if not e._started:
            return []
        closed = e._closed
        if self._sent is None:
            self._sent = closed
            return [self._message(KIND_PROGRESS, part, closed) for part in range(self.partitions)]
        if closed <= self._sent:
            return []
        out = []
        taken, self._closed_panes = self._closed_panes, {}
        for interval, panes in sorted(taken.items()):
            if interval < self._sent:
                continue
            by_part: dict[int, list[PanePartial]] = {}
            for p in panes:
                by_part.setdefault(partition_of(p.device, p.sensor, self.partitions),
                                   []).append(p)
            for part, ps in sorted(by_part.items()):
                out.append(self._message(KIND_PANES, part, interval, ps))
        self._sent = closed
        out += [self._message(KIND_PROGRESS, part, closed) for part in range(self.partitions)]
        return out

    def heartbeat(self) -> list[tuple[int, bytes]]:
        interval = self._sent if self._sent is not None else NO_DATA
        return [self._message(KIND_HEARTBEAT, part, interval) for part in range(self.partitions)]

    def leave(self) -> list[tuple[int, bytes]]:
        """After the clock was closed past every reading (tick far ahead, then collect()): the
        last messages, saying nothing more comes."""
        interval = self._sent if self._sent is not None else NO_DATA
        return [self._message(KIND_LEAVE, part, interval) for part in range(self.partitions)]
