"""Late readings (event time, docs/windows.md) as one backlog `Batch` of NATS messages: core
NATS PUBs, or in JetStream mode HPUBs that go through the aggregates' acked path.

A late reading leaves as JSON -- ``device``, ``sensor``, ``value``, ``unit``, ``t``, ``n``,
``arrival`` (times in seconds since the Unix epoch) -- on ``<late_subject>.<device>.<sensor>``,
the names escaped as in aggregate subjects (sink/subjects.py). They are few (a reading is late
once, an aggregate is emitted every tick), so they are encoded in Python on the emitter's loop
thread, like a tick batch, and wait in a backlog of the same kind, bounded the same way.

In JetStream mode a late reading is as precious as an aggregate (it is the one record of a
reading that is in no aggregate), so it is published the same way: acked by the stream, refusals
counted by reason, retried with the same bytes, and deduplicated by its `late_msg_id`.
"""

from __future__ import annotations

import json
import sys

from telemetry_cy.sink.backlog import Backlog, Batch
from telemetry_cy.sink.handoff import HandoffLane
from telemetry_cy.sink.subjects import late_msg_id, subject_for

#: The fields of a late message body, in order.
LATE_FIELDS: tuple[str, ...] = ("device", "sensor", "value", "unit", "t", "n", "arrival")


def late_body(reading) -> bytes:
    """The JSON body of one late reading (an engine ``LateReading``)."""
    return json.dumps({"device": reading.device, "sensor": reading.sensor,
                       "value": reading.value, "unit": reading.unit, "t": reading.t,
                       "n": reading.n, "arrival": reading.arrival},
                      ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


#: core NATS: PUB commands are joined into chunks of at most this many bytes (one write each;
#: a larger message goes alone)
CHUNK_BYTES = 256 << 10


class JetStreamLate:
    """How late messages are encoded in JetStream mode: as the aggregates' HPUB messages, with
    a reply subject ``<reply>.<index>`` (``reply`` = ``<inbox>.<serial>``, the serial drawn from
    the aggregates' encoder, so an ack is matched to its message the same way) and a
    `late_msg_id` header; chunks bounded like the aggregates' so one always fits the in-flight
    window."""

    __slots__ = ("reply", "serial", "expected_stream", "chunk_bytes", "chunk_messages")

    def __init__(self, reply: str, serial: int, expected_stream: str | None,
                 chunk_bytes: int, chunk_messages: int) -> None:
        self.reply = reply.encode("ascii")
        self.serial = serial
        self.expected_stream = expected_stream
        self.chunk_bytes = chunk_bytes
        self.chunk_messages = chunk_messages


def encode_late(readings: list, prefix: str, max_subject_bytes: int, max_body: int,
                jetstream: JetStreamLate | None = None) -> tuple[Batch | None, int]:
    """(the batch, or None if none could be encoded; readings left out because their subject
    is longer than max_subject_bytes or their body (with its headers) than max_body, the
    server's max_payload). Core NATS PUBs, or with `jetstream` HPUBs whose acks the emitter
    waits for (the batch then has the `starts` and `serial` the JetStream publisher needs)."""
    chunks: list[bytes] = []
    starts = [0]
    part: list[bytes] = []
    part_bytes = n = nbytes = too_large = 0
    chunk_bytes, chunk_messages = CHUNK_BYTES, sys.maxsize
    if jetstream is not None:
        chunk_bytes, chunk_messages = jetstream.chunk_bytes, jetstream.chunk_messages
        stream_line = (b"Nats-Expected-Stream: %s\r\n" % jetstream.expected_stream.encode()
                       if jetstream.expected_stream else b"")
    for r in readings:
        subject = subject_for(prefix, r.device, r.sensor).encode("utf-8")
        body = late_body(r)
        header = b""
        if jetstream is not None:
            header = (b"NATS/1.0\r\nNats-Msg-Id: %s\r\n%s\r\n" % (
                late_msg_id(r.device, r.sensor, r.n, r.t, r.value).encode("ascii"), stream_line))
        if len(subject) > max_subject_bytes or (max_body and len(header) + len(body) > max_body):
            too_large += 1
            continue
        if jetstream is None:
            command = b"PUB %s %d\r\n%s\r\n" % (subject, len(body), body)
        else:
            command = b"HPUB %s %s.%d %d %d\r\n%s%s\r\n" % (
                subject, jetstream.reply, n, len(header), len(header) + len(body), header, body)
        if part and (part_bytes + len(command) > chunk_bytes or len(part) == chunk_messages):
            chunks.append(b"".join(part))
            starts.append(n)
            part, part_bytes = [], 0
        part.append(command)
        part_bytes += len(command)
        n += 1
        nbytes += len(subject) + len(header) + len(body)
    if part:
        chunks.append(b"".join(part))
        starts.append(n)
    if not n:
        return None, too_large
    if jetstream is None:
        return Batch(chunks, n, nbytes, 0.0), too_large
    return Batch(chunks, n, nbytes, 0.0, starts=starts, serial=jetstream.serial), too_large


class LateQueue:
    """The emitter's late messages: their own backlog (bounded like the aggregates', the oldest
    batch dropped first) and counters, so the aggregates' balance stays as it is and this one
    holds beside it: routed == published + dropped + backlog.

    Ownership as in the emitter: the producer (engine) thread writes only its side of `lane`
    (the late readings' own hand-off to the loop, handoff.HandoffLane); the loop thread writes
    the rest under the emitter's stats lock."""

    def __init__(self, prefix: str, max_batches: int, max_bytes: int) -> None:
        self.prefix = prefix
        self.backlog = Backlog(max_batches, max_bytes)
        self.lane = HandoffLane()       # late readings handed over / refused / taken
        self.published = 0
        self.dropped_here = 0           # too large, or handed over and never taken

    def stats(self) -> dict[str, int]:
        """Under the emitter's lock."""
        backlog = self.backlog
        lane = self.lane.counts()
        return {"published": self.published,
                "dropped": self.dropped_here + backlog.dropped + lane.refused,
                "backlog": backlog.aggregates + lane.waiting_items,
                "routed": lane.offered}
