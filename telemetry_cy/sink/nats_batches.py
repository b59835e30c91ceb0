"""One tick of aggregates as one backlog `Batch`: PUB protocol chunks for core NATS, or
(subject, body, Nats-Msg-Id) messages for JetStream.

Runs on the emitter's loop thread, not the engine thread: the engine thread drains the ingest
ring with the GIL released, so Python work here runs beside it on the other core, while encoding
on the engine thread (a few microseconds per aggregate, seconds for a million keys) would stall
the drain and overflow the ring (`ingest_full`).
"""

from __future__ import annotations

from telemetry_cy.backend import ACTIVE
from telemetry_cy.sink.backlog import Batch
from telemetry_cy.sink.bodies import encoder_for
from telemetry_cy.sink.subjects import escape_token, subject_for

#: core NATS: a tick batch becomes ready PUB protocol chunks (one write each, not one nats-py
#: publish per aggregate), by the active backend's encoder
encode_batch = ACTIVE.encode_batch
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
#: goes for a body longer than the server's max_payload (1 MiB by default; the server closes the
#: connection on a longer one), which only names of tens of kilobytes or a small max_payload in
#: the server's configuration can cause.
MAX_SUBJECT_BYTES = 3072


def _id_token(raw: str) -> str:
    # the subject token, then '|' and non-ASCII characters percent-encoded too: header values stay
    # ASCII, and since '%' is always escaped this is plain percent-encoding, so it is injective
    return "".join(ch if ch.isascii() and ch != "|"
                   else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
                   for ch in escape_token(raw))


def msg_id(device: str, sensor: str, window_end: float) -> str:
    """JetStream deduplication id ``device|sensor|window_end``, unambiguous and ASCII-only:
    names are escaped as subject tokens (so no whitespace or control characters reach the
    header), and ``|`` and non-ASCII characters in them are percent-encoded as well."""
    return f"{_id_token(device)}|{_id_token(sensor)}|{window_end!r}"


class TickEncoder:
    """Encodes tick batches for one subject prefix, body format and NATS mode."""

    def __init__(self, prefix: str, format: str, jetstream: bool) -> None:
        self.prefix = prefix
        self.format = format
        self.jetstream = jetstream
        self._encode_body = encoder_for(format)   # also rejects an unknown format, at construction

    def encode(self, aggregates: list, max_body: int) -> tuple[Batch | None, int]:
        """(the batch, or None if no aggregate could be encoded; the aggregates left out for a
        subject over MAX_SUBJECT_BYTES or a body over `max_body`, the server's max_payload)."""
        encode = self._jetstream if self.jetstream else self._core
        parts, n, nbytes = encode(aggregates, max_body)
        too_large = len(aggregates) - n
        if not n:
            return None, too_large
        return Batch(parts, n, nbytes, min(a.window_end for a in aggregates)), too_large

    def _core(self, aggregates: list, max_body: int) -> tuple[list, int, int]:
        parts: list = []
        n = nbytes = 0
        for i in range(0, len(aggregates), ENCODE_SLICE):
            chunks, encoded, _, size = encode_batch(aggregates[i:i + ENCODE_SLICE], self.prefix,
                                                    self.format, MAX_SUBJECT_BYTES,
                                                    max_body_bytes=max_body)
            parts += chunks
            n += encoded
            nbytes += size
        return parts, n, nbytes

    def _jetstream(self, aggregates: list, max_body: int) -> tuple[list, int, int]:
        encode, prefix = self._encode_body, self.prefix
        msgs, nbytes = [], 0
        for a in aggregates:
            subject = subject_for(prefix, a.device, a.sensor)
            if len(subject) > MAX_SUBJECT_BYTES // 4 and len(subject.encode()) > MAX_SUBJECT_BYTES:
                continue
            body = encode(a)
            if len(body) > max_body:
                continue
            msgs.append((subject, body, msg_id(a.device, a.sensor, a.window_end)))
            nbytes += len(subject) + len(body)
        return msgs, len(msgs), nbytes
