"""One tick of aggregates as one backlog `Batch` of protocol chunks: PUB messages for core NATS,
HPUB messages with a `Nats-Msg-Id` for JetStream (encoded while they are sent: TickEncoder).

Runs on the emitter's loop thread, not the engine thread: the engine thread drains the ingest
ring with the GIL released, so Python work here runs beside it on the other core, while encoding
on the engine thread (a few microseconds per aggregate, seconds for a million keys) would stall
the drain and overflow the ring (`ingest_full`).

JetStream messages carry the reply subject ``<inbox>.<serial>.<index>``: `serial` numbers the
batches of this encoder and `index` is the message's place in its batch, so the emitter matches
each ack to its message by parsing the subject (sink/jetstream.py). Both are fixed when the batch
is encoded, so a retry sends the very same bytes: the same Nats-Msg-Id, which the stream
deduplicates, and the same reply subjects, so a late ack of an earlier attempt still lands on
the right message.
"""

from __future__ import annotations

import sys

from telemetry_cy.backend import ACTIVE
from telemetry_cy.sink.backlog import Batch
from telemetry_cy.sink.subjects import msg_id  # noqa: F401  (re-exported: the id rule)

#: core NATS: a tick batch becomes ready PUB protocol chunks (one write each, not one nats-py
#: publish per aggregate), by the active backend's encoder
encode_batch = ACTIVE.encode_batch
#: JetStream: the same with HPUB messages (reply subject, Nats-Msg-Id header), a batch put in
#: subject order first
encode_jetstream = ACTIVE.wire.encode_jetstream
subject_order = ACTIVE.wire.subject_order
#: aggregates encoded per call: the compiled encoder holds the GIL while it runs (~1 us per
#: aggregate), so a tick of a million keys is encoded in slices of a few milliseconds, between
#: which the network thread gets the GIL
ENCODE_SLICE = 4096

#: nats-server's default max_control_line is 4096 bytes and the PUB/HPUB line carries the subject,
#: a reply inbox (JetStream) and sizes. A longer subject would get the connection closed by the
#: server and the batch retried forever, so such an aggregate is dropped instead. It counts as
#: `emit_backlog` (the emit stage's one reason in the closed set, and the daemon's balance
#: `aggregates == published + emit_backlog + backlog` keeps holding) and, to tell why, in the
#: `too_large` stat. Only names of more than ~500 bytes (max_name_bytes) can get here. The same
#: goes for a payload longer than the server's max_payload (1 MiB by default; the server closes
#: the connection on a longer one), which only names of tens of kilobytes or a small max_payload
#: in the server's configuration can cause.
MAX_SUBJECT_BYTES = 3072


#: JetStream batches are encoded while they are sent (`TickEncoder.more`); until then the
#: backlog's byte bound counts each of their aggregates as this many bytes (a typical JSON
#: aggregate with its HPUB line and header is 300-400)
ESTIMATED_MESSAGE_BYTES = 384


class TickEncoder:
    """Encodes tick batches for one subject prefix, body format and NATS mode.

    Core NATS batches are encoded whole when handed over (`encode`). JetStream batches are put
    in subject order then and encoded slice by slice as the publisher sends them (`more`), so
    the first messages reach the server while the rest of a large tick is still being encoded,
    instead of after all of it (for 200,000 aggregates that is ~0.2 s earlier; the server is
    the bottleneck). A JetStream batch needs the reply inbox (``inbox``) and may name the stream
    every message must land in (``expected_stream``: the Nats-Expected-Stream header).
    ``chunk_bytes`` and ``chunk_messages`` bound each chunk, so that one chunk always fits the
    emitter's in-flight window."""

    def __init__(self, prefix: str, format: str, jetstream: bool, inbox: str | None = None,
                 expected_stream: str | None = None, chunk_bytes: int | None = None,
                 chunk_messages: int | None = None) -> None:
        self.prefix = prefix
        self.format = format
        self.jetstream = jetstream
        self.inbox = inbox
        self.expected_stream = expected_stream
        self.chunk_bytes = chunk_bytes or ACTIVE.wire.DEFAULT_CHUNK_BYTES
        self.chunk_messages = chunk_messages or sys.maxsize
        self._serial = 0
        if jetstream and not inbox:
            raise ValueError("JetStream batches need a reply inbox")
        # the format, prefix, inbox and stream name are checked now, not at the first tick
        if jetstream:
            self._encode_jetstream([], f"{inbox}.0", 0, 0)
        else:
            self._core([], 0)

    def encode(self, aggregates: list, max_body: int) -> tuple[Batch | None, int]:
        """(the batch, or None if no aggregate could be encoded; the aggregates left out for a
        subject over MAX_SUBJECT_BYTES or a payload over `max_body`, the server's max_payload).
        A JetStream batch comes back unencoded (nothing left out yet): see `more`."""
        if not aggregates:
            return None, 0
        if self.jetstream:
            # by subject: the stream indexes every message by its subject, and takes a batch in
            # subject order markedly faster than in the engine's hash order (docs/jetstream.md)
            batch = Batch([], len(aggregates), len(aggregates) * ESTIMATED_MESSAGE_BYTES, 0.0,
                          starts=[0], serial=self.next_serial(),
                          pending=subject_order(aggregates))
        else:
            batch = self._core(aggregates, max_body)
        too_large = len(aggregates) - batch.n
        if not batch.n:
            return None, too_large
        batch.window_end = min(a.window_end for a in aggregates)
        return batch, too_large

    def next_serial(self) -> int:
        """A new batch serial: the token of its reply subjects, unique among every JetStream
        batch of this emitter (late messages' too), so no ack lands on another batch."""
        self._serial += 1
        return self._serial

    def more(self, batch: Batch, max_body: int) -> tuple[int, int]:
        """JetStream: encodes the next ENCODE_SLICE of the batch's aggregates onto its chunks.
        Returns (how many of them were left out as too large, the change of the batch's byte
        count: their real size for their estimate); the caller applies both to `batch.n` and
        `batch.nbytes` under its stats lock. The caller owns the batch (it is in flight)."""
        pending = batch.pending
        if not pending:
            return 0, 0
        assert batch.starts is not None
        start = batch.encoded
        part = pending[start:start + ENCODE_SLICE]
        chunks, counts, _, too_large, size = self._encode_jetstream(
            part, f"{self.inbox}.{batch.serial}", batch.starts[-1], max_body)
        for k in counts:
            batch.starts.append(batch.starts[-1] + k)
        batch.parts += chunks
        batch.encoded = start + len(part)
        if batch.encoded >= len(pending):
            batch.pending = None
        return too_large, size - len(part) * ESTIMATED_MESSAGE_BYTES

    def _encode_jetstream(self, aggregates: list, reply: str, first: int, max_body: int):
        return encode_jetstream(aggregates, self.prefix, self.format, MAX_SUBJECT_BYTES, reply,
                                first, self.expected_stream, self.chunk_bytes,
                                max_body, self.chunk_messages)

    def _core(self, aggregates: list, max_body: int) -> Batch:
        parts: list = []
        n = nbytes = 0
        for i in range(0, max(1, len(aggregates)), ENCODE_SLICE):   # [] too: checks
            chunks, encoded, _, size = encode_batch(aggregates[i:i + ENCODE_SLICE], self.prefix,
                                                    self.format, MAX_SUBJECT_BYTES,
                                                    self.chunk_bytes, max_body_bytes=max_body)
            parts += chunks
            n += encoded
            nbytes += size
        return Batch(parts, n, nbytes, 0.0)
