"""The NATS emitter's backlog: encoded tick batches waiting for the server, oldest first.

Bounded by a number of batches and a number of bytes. Over either bound the OLDEST waiting
batches are dropped, and every aggregate in them not published yet counts in `dropped` (the
emitter reports it as `emit_backlog`); the newest batch always stays, even alone over the byte
bound, so the latest tick is never lost to the bound. A JetStream batch can be published in part
(the stream acked some of its messages, refused others): `Batch.done` counts the part already
counted as published, and only the rest counts here. The one batch being published (in flight)
is not counted against the bounds: it is out of the queue until it is confirmed or given back,
and given back it is again the oldest, so it is the first to go if the backlog is over a bound
by then.

Ownership: no lock of its own. The emitter's loop thread is the only writer and holds the
emitter's stats lock around every call, so a stats snapshot sees the backlog, the published
count and the drops of one instant (submitted == published + emit_backlog + backlog).
"""

from __future__ import annotations

import collections


class Batch:
    """One tick's aggregates, encoded for NATS: protocol chunks, PUB (core NATS) or HPUB
    (JetStream)."""

    __slots__ = ("parts", "n", "nbytes", "window_end", "done", "starts", "serial", "acks",
                 "pending", "encoded")

    def __init__(self, parts: list, n: int, nbytes: int, window_end: float,
                 starts: list[int] | None = None, serial: int = 0,
                 pending: list | None = None) -> None:
        self.parts = parts
        # aggregates; JetStream: those not left out as too large so far. Like `nbytes` (subjects
        # + payloads, what the byte bound counts; an estimate for what is not encoded yet) it
        # changes only while the batch is in flight, when the rest of it is encoded
        self.n = n
        self.nbytes = nbytes
        self.window_end = window_end  # the oldest tick in the batch
        # aggregates counted as published (JetStream: acked); changes only while the batch is
        # in flight, so the backlog's running totals of the waiting ones stay exact
        self.done = 0
        # JetStream: the first message index of each chunk, then n; the batch's serial (its
        # reply subjects' token); one ack state per message (made by the first attempt)
        self.starts = starts
        self.serial = serial
        self.acks: bytearray | None = None
        # JetStream: the aggregates, in subject order, until all are encoded; how many are
        self.pending = pending
        self.encoded = 0

    @property
    def remaining(self) -> int:
        return self.n - self.done


class Backlog:
    def __init__(self, max_batches: int, max_bytes: int) -> None:
        if max_batches < 1 or max_bytes < 1:
            raise ValueError("max_backlog_batches and max_backlog_bytes must be at least 1")
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._waiting: collections.deque[Batch] = collections.deque()
        self._waiting_aggregates = 0
        self._waiting_bytes = 0
        self.in_flight: Batch | None = None
        self.dropped = 0              # aggregates dropped, by the bounds or by drop_all()

    def add(self, batch: Batch) -> int:
        """A new batch, the newest. Returns the aggregates dropped to stay within the bounds."""
        self._push(batch, newest=True)
        return self._trim()

    def take_oldest(self) -> Batch | None:
        """The oldest waiting batch becomes the one in flight (None if nothing waits)."""
        if self.in_flight is not None:
            raise RuntimeError("a batch is already in flight")
        if not self._waiting:
            return None
        batch = self.in_flight = self._waiting.popleft()
        self._waiting_aggregates -= batch.remaining
        self._waiting_bytes -= batch.nbytes
        return batch

    def confirm(self) -> Batch:
        """The batch in flight reached the server (all of it: the caller has counted it done):
        it leaves the backlog."""
        batch = self.in_flight
        if batch is None:
            raise RuntimeError("no batch in flight")
        self.in_flight = None
        return batch

    def give_back(self) -> int:
        """The batch in flight failed (or got only part through): back to the front, still the
        oldest. Returns the aggregates dropped to stay within the bounds (it may be among
        them)."""
        batch = self.confirm()
        self._push(batch, newest=False)
        return self._trim()

    def drop_all(self) -> int:
        """Everything, in flight included, is dropped (the emitter stops). Returns the
        aggregates dropped."""
        n = self.aggregates
        self._waiting.clear()
        self._waiting_aggregates = self._waiting_bytes = 0
        self.in_flight = None
        self.dropped += n
        return n

    @property
    def waiting(self) -> int:
        """Batches waiting to be taken (the one in flight not included)."""
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is in flight."""
        return not self._waiting and self.in_flight is None

    # what the backlog holds, the batch in flight included

    @property
    def batches(self) -> int:
        return len(self._waiting) + (self.in_flight is not None)

    @property
    def aggregates(self) -> int:
        return self._waiting_aggregates + (self.in_flight.remaining if self.in_flight else 0)

    @property
    def nbytes(self) -> int:
        return self._waiting_bytes + (self.in_flight.nbytes if self.in_flight else 0)

    def _push(self, batch: Batch, newest: bool) -> None:
        (self._waiting.append if newest else self._waiting.appendleft)(batch)
        self._waiting_aggregates += batch.remaining
        self._waiting_bytes += batch.nbytes

    def _trim(self) -> int:
        dropped = 0
        while len(self._waiting) > 1 and (len(self._waiting) > self.max_batches
                                          or self._waiting_bytes > self.max_bytes):
            old = self._waiting.popleft()
            self._waiting_aggregates -= old.remaining
            self._waiting_bytes -= old.nbytes
            dropped += old.remaining
        self.dropped += dropped
        return dropped
