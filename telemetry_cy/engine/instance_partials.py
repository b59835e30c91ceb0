"""The instance side of scale-out (docs/scale-out.md): an engine's closed panes as the messages of
the partial format, partition by partition. Works over either engine (``backend.ACTIVE.Engine``),
made with ``time="event", partials=True``.

The engine takes each pane as its event-time clock closes it (the closing hook,
includes/tc_window_partials.h and its twin in _engine_py.py): only then are a pane's first and
last times still in the record, and before the reading that moved the clock can reuse its slot.
``InstancePartials.collect`` then drains what was taken whenever the caller likes (the daemon:
after each tick) and wraps it into messages; the panes arrive already encoded, so a message is a
header, the records and a checksum.
"""

from __future__ import annotations

from telemetry_cy.engine.partial_format import (
    KIND_HEARTBEAT,
    KIND_LEAVE,
    KIND_PANES,
    KIND_PROGRESS,
    NO_DATA,
    WindowSettings,
    write_records,
)


class InstancePartials:
    """One instance's outgoing partials: ``collect()`` after each batch pushed or tick, gives
    (partition, message bytes) to publish, in order; panes of an interval before the progress
    that covers it, per partition.

    A pane the engine could not keep (its buffer full: ``partials_max_bytes``) is counted in
    ``lost_panes`` and leaves a gap in every partition's sequence numbers, so the merge workers
    count it (``gaps``) as they count a message the emitter dropped."""

    def __init__(self, engine, settings: WindowSettings, instance: str, partitions: int) -> None:
        if not getattr(engine, "partials", False):
            raise ValueError("InstancePartials needs an engine made with time='event', "
                             "partials=True")
        self.engine = engine
        self.settings = settings
        self.instance = instance
        self.partitions = partitions
        self._sent: int | None = None      # every interval below this has been sent
        self._seq = [0] * partitions
        self.lost_panes = 0

    def _message(self, kind: int, partition: int, interval: int, n: int = 0,
                 records: bytes = b"") -> tuple[int, bytes]:
        data = write_records(kind, self.settings, self.instance, self._seq[partition], interval,
                             partition, self.partitions, n, records)
        self._seq[partition] += 1
        return partition, data

    def collect(self) -> list[tuple[int, bytes]]:
        closed, groups, lost = self.engine.take_closed_panes(self.partitions)
        if closed is None:
            return []
        if lost:
            self.lost_panes += lost
            self._seq = [s + 1 for s in self._seq]   # a gap where the lost panes would be
        if self._sent is not None and closed <= self._sent and not groups:
            return []
        out = [self._message(KIND_PANES, part, interval, n, records)
               for interval, part, n, records in groups]
        # the first progress says where this instance's clock started (nothing below it was
        # ever accepted): the merge's join
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
