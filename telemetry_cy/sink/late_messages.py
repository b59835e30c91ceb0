"""Late readings (event time, docs/windows.md) as one backlog `Batch` of core NATS PUB messages.

A late reading leaves as JSON -- ``device``, ``sensor``, ``value``, ``unit``, ``t``, ``n``,
``arrival`` (times in seconds since the Unix epoch) -- on ``<late_subject>.<device>.<sensor>``,
the names escaped as in aggregate subjects (sink/subjects.py). They are few (a reading is late
once, an aggregate is emitted every tick), so they are encoded in Python on the emitter's loop
thread, like a tick batch, and wait in a backlog of the same kind, bounded the same way.
"""

from __future__ import annotations

import json

from telemetry_cy.sink.backlog import Backlog, Batch
from telemetry_cy.sink.subjects import subject_for

#: The fields of a late message body, in order.
LATE_FIELDS: tuple[str, ...] = ("device", "sensor", "value", "unit", "t", "n", "arrival")


def late_body(reading) -> bytes:
    """The JSON body of one late reading (an engine ``LateReading``)."""
    return json.dumps({"device": reading.device, "sensor": reading.sensor,
                       "value": reading.value, "unit": reading.unit, "t": reading.t,
                       "n": reading.n, "arrival": reading.arrival},
                      ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


#: PUB commands are joined into chunks of about this many bytes (one write each)
CHUNK_BYTES = 256 << 10


def encode_late(readings: list, prefix: str, max_subject_bytes: int,
                max_body: int) -> tuple[Batch | None, int]:
    """(the batch, or None if none could be encoded; readings left out because their subject
    is longer than max_subject_bytes or their body than max_body, the server's max_payload)."""
    chunks: list[bytes] = []
    part: list[bytes] = []
    part_bytes = n = nbytes = too_large = 0
    for r in readings:
        subject = subject_for(prefix, r.device, r.sensor).encode("utf-8")
        body = late_body(r)
        if len(subject) > max_subject_bytes or (max_body and len(body) > max_body):
            too_large += 1
            continue
        command = b"PUB %s %d\r\n%s\r\n" % (subject, len(body), body)
        part.append(command)
        part_bytes += len(command)
        if part_bytes >= CHUNK_BYTES:
            chunks.append(b"".join(part))
            part, part_bytes = [], 0
        n += 1
        nbytes += len(subject) + len(body)
    if part:
        chunks.append(b"".join(part))
    if not n:
        return None, too_large
    return Batch(chunks, n, nbytes, 0.0), too_large


class LateQueue:
    """The emitter's late messages: their own backlog (bounded like the aggregates', the oldest
    batch dropped first) and counters, so the aggregates' balance stays as it is and this one
    holds beside it: routed == published + dropped + backlog.

    Ownership as in the emitter: the producer (engine) thread writes only `handoff`; the loop
    thread writes the rest under the emitter's stats lock."""

    def __init__(self, prefix: str, max_batches: int, max_bytes: int) -> None:
        self.prefix = prefix
        self.backlog = Backlog(max_batches, max_bytes)
        self.handoff = (0, 0, 0)        # (batches handed over, messages, messages refused)
        self.taken = (0, 0)             # (batches, messages) the loop took
        self.published = 0
        self.dropped_here = 0           # too large, or handed over and never taken

    def stats(self) -> dict[str, int]:
        """Under the emitter's lock; the hand-off is read last (handed >= taken)."""
        backlog = self.backlog
        taken = self.taken[1]
        out = {"published": self.published,
               "dropped": self.dropped_here + backlog.dropped,
               "backlog": backlog.aggregates}
        _, handed, refused = self.handoff
        out["routed"] = handed + refused
        out["dropped"] += refused
        out["backlog"] += handed - taken
        return out
