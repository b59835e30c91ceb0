"""JetStream publishing for the NATS emitter: a batch's HPUB chunks through a bounded window of
messages awaiting their ack, the acks read in C straight off the connection.

Why this shape (docs/jetstream.md has the figures): nats-py's ``js.publish_async`` costs a future,
a reply token and a JSON parse per message, and its client delivers every ack as a ``Msg`` object
through its Python parser -- tens of microseconds per aggregate in all, ~35k aggregates/s. Here a
tick batch becomes HPUB chunks (nats_batches.py: reply subject ``<inbox>.<serial>.<index>``,
header ``Nats-Msg-Id``), encoded in C a slice at a time as the window takes them, so the server
starts storing while the rest is encoded; the chunks go through nats-py's write queue like the
core path's, and the answers are matched to messages by parsing their subject, with no Python
object per message:

- `AckTap` replaces nats-py's protocol parser object (``Client._ps``; pinned by
  tests/test_emitter.py). Each read from the socket first goes through the backend's
  `AckWindow.feed` (tc_wire.h), which consumes the answers of our one wildcard subscription
  (``<inbox>.>``) in bulk; every other frame (PING, PONG, INFO, -ERR, other subscriptions) is
  handed, whole and in order, to nats-py's own parser. nats-py stays the owner of the connection:
  connect, TLS, auth, pings, reconnects and resubscribing are all its own.
- The subscription also has an ordinary callback: answers that reach nats-py's parser anyway (it
  holds a partial frame after something the tap could not read) are applied from the ``Msg``.
- `JetStreamPublisher.publish` sends a batch's chunks while the window allows: at most
  `max_msgs` messages without an answer and `max_bytes` bytes of chunks not fully answered (a
  chunk counts whole until its last message is answered). Waiting for room is the back-pressure:
  new ticks meanwhile wait in the emitter's bounded backlog.

Each message has a state in the batch's `acks` array (UNSENT, SENT, FAILED, ACKED; tc_wire.h). An
attempt ends when every sent message is answered, or when no answer came for `ack_timeout`
seconds, or when the connection is lost. Then the batch is done if every message is ACKED, else
the emitter retries it: only the chunks that still hold a message without its ack are sent again,
with the same bytes. The stream deduplicates on Nats-Msg-Id within its duplicate window, so a
message stored before its ack was lost is not stored twice, and the ack says "duplicate".
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from telemetry_cy.sink.backlog import Batch

#: answer kinds that are errors (the rest: "ok", "duplicate"), as counted by AckWindow
ERROR_KINDS = ("no_responders", "stream_full", "wrong_stream", "too_many_requests",
               "other_error", "bad")


class AckTap(Parser):
    """nats-py's protocol parser with the acks of one subscription read in bulk (module doc).

    The tap only works between frames: nats-py's parser must hold nothing (``buf`` empty) and
    wait for a control line. An incomplete frame at the end of a read stays here (``_tail``)
    until the rest arrives, so nats-py only ever gets whole frames, and its state is the same
    as if it had read everything itself."""

    def __init__(self, nc: Any, window: Any, on_answers: Callable[[], None]) -> None:
        super().__init__(nc)
        self._window = window
        self._on_answers = on_answers
        self._tail = b""

    def reset(self) -> None:
        super().reset()
        self._tail = b""   # a new connection: what the old one left is meaningless

    async def parse(self, data: bytes = b"") -> None:
        if self.buf or self.state != AWAITING_CONTROL_LINE:
            await super().parse(data)   # nats-py is inside a frame: let it finish
            return
        if self._tail:
            data = self._tail + data
            self._tail = b""
        feed = self._window.feed
        pos, n, answered = 0, len(data), False
        while pos < n:
            used, nxt = feed(data, pos)
            pos += used
            answered = answered or used > 0
            if nxt > 0:   # one whole frame that is not ours: nats-py's, in order
                await super().parse(data[pos:pos + nxt])
                pos += nxt
                if self.buf or self.state != AWAITING_CONTROL_LINE:   # cannot happen; be safe
                    await super().parse(data[pos:])
                    break
            elif nxt == 0:   # the rest is an incomplete frame: wait for more bytes
                self._tail = data[pos:]
                break
            else:            # not readable here: nats-py decides (and raises if it is garbage)
                await super().parse(data[pos:])
                break
        if answered:
            self._on_answers()


class JetStreamPublisher:
    """Publishes batches through one `AckWindow`. The emitter's loop thread only."""

    def __init__(self, window: Any, max_msgs: int, max_bytes: int, ack_timeout: float) -> None:
        if max_msgs < 1 or max_bytes < 1:
            raise ValueError("max_in_flight and max_in_flight_bytes must be at least 1")
        self.window = window
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.ack_timeout = ack_timeout
        self.ack_timeouts = 0      # messages without an answer when an attempt gave up waiting
        self.high_water = 0        # most messages ever in flight at once
        self.high_water_bytes = 0  # most chunk bytes ever in flight at once
        self.in_flight_bytes = 0   # chunk bytes in flight now (0 between attempts)
        self.resent = 0            # messages sent again by a retry (whole chunks; the stream
        #                            answers those it had stored before "duplicate")
        self._answered: asyncio.Event | None = None  # made on the loop (see attach)
        self._subscription: Any = None

    # ---- wiring into nats-py

    def attach(self, nc: Any) -> None:
        """Before connecting: install the tap on the client (nats-py resets, never replaces,
        its parser object on reconnects)."""
        self._answered = asyncio.Event()
        nc._ps = AckTap(nc, self.window, self.wake)

    def wake(self) -> None:
        """Something happened that a waiting publisher must look at (answers, a lost
        connection)."""
        if self._answered is not None:
            self._answered.set()

    @property
    def ready(self) -> bool:
        return self._subscription is not None

    async def subscribe(self, nc: Any) -> None:
        """Once connected: the wildcard subscription for every answer (nats-py sends it again
        after each reconnect, with the same sid)."""
        if self._subscription is None:
            self._subscription = await nc.subscribe(self.window.inbox + ".>", cb=self._on_msg)
            self.window.sid = self._subscription._id

    async def _on_msg(self, msg: Any) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        header = (f"NATS/1.0 {status}\r\n\r\n".encode() if status
                  else b"NATS/1.0\r\n\r\n" if msg.headers else b"")
        self.window.answer(msg.subject.encode(), header, msg.data)
        self.wake()

    # ---- one attempt

    async def publish(self, nc: Any, batch: Batch, alive: Callable[[], bool],
                      acked: Callable[[Batch, int], None],
                      more: Callable[[Batch], None]) -> bool:
        """One attempt at the batch (module doc). True when every message is acked; False when
        some were refused; raises when the connection went away or answers stopped coming.
        Either way `batch.acks` keeps what was acked, for the next attempt. `acked(batch, k)`
        is told the number of acked messages as they come (after each wait and at the end),
        so `published` grows while a large batch is still going out. `more(batch)` encodes the
        next part of a batch that is not all encoded yet (nats_batches.TickEncoder.more)."""
        w = self.window
        retry = batch.acks is not None
        if batch.acks is None:   # one state per message; some aggregates may not become one
            batch.acks = bytearray(batch.n if batch.pending is None else len(batch.pending))
        starts = batch.starts
        assert starts is not None and len(starts) == len(batch.parts) + 1
        w.begin(batch.serial, batch.acks)
        # chunks sent and not fully answered yet, oldest first: (first, last, bytes)
        pending: collections.deque[tuple[int, int, int]] = collections.deque()
        in_bytes = 0
        i = 0
        try:
            while True:
                if i == len(batch.parts):
                    if batch.pending is None:
                        break
                    more(batch)   # a few milliseconds: the window's acks keep coming meanwhile
                    continue
                chunk = batch.parts[i]
                first, last = starts[i], starts[i + 1]
                i += 1
                if w.acked_range(first, last):
                    continue   # a retry: this chunk got through before
                while pending:
                    while pending and not w.sent_in(pending[0][0], pending[0][1]):
                        in_bytes -= pending.popleft()[2]   # every message of it answered
                    self.in_flight_bytes = in_bytes
                    if not pending or (w.in_flight + (last - first) <= self.max_msgs
                                       and in_bytes + len(chunk) <= self.max_bytes):
                        break
                    await self._wait(alive)
                    acked(batch, w.acked)
                if not alive():
                    raise ConnectionError("disconnected while publishing")
                w.send(first, last)
                pending.append((first, last, len(chunk)))
                in_bytes += len(chunk)
                self.in_flight_bytes = in_bytes
                if retry:
                    self.resent += last - first
                self.high_water = max(self.high_water, w.in_flight)
                self.high_water_bytes = max(self.high_water_bytes, in_bytes)
                await nc._send_command(chunk)
                if nc._flush_queue.empty():   # as nats-py's publish() does: wake its writer
                    await nc._flush_pending()
            while w.in_flight:
                await self._wait(alive)
                acked(batch, w.acked)
            return w.acked == batch.n
        finally:
            acked(batch, w.acked)
            w.end()
            self.in_flight_bytes = 0

    async def _wait(self, alive: Callable[[], bool]) -> None:
        """Until some answer arrives; raises when none comes for ack_timeout seconds or the
        connection is lost."""
        answered = self._answered
        assert answered is not None
        before = self.window.answers
        answered.clear()
        try:
            await asyncio.wait_for(answered.wait(), self.ack_timeout)
        except asyncio.TimeoutError:
            if self.window.answers == before:
                self.ack_timeouts += self.window.in_flight
                raise TimeoutError(f"{self.window.in_flight} JetStream acks missing after "
                                   f"{self.ack_timeout:g} s") from None
        if not alive():
            raise ConnectionError("connection lost with JetStream acks pending")

    # ---- counters

    def stats(self) -> dict[str, Any]:
        w = self.window
        counts = w.counts()
        errors = {k: counts[k] for k in ERROR_KINDS}
        errors["ack_timeout"] = self.ack_timeouts
        return {"acks": counts["ok"], "duplicates": counts["duplicate"],
                "publish_errors": errors, "stale_answers": w.stale,
                "repeated_acks": w.repeats, "resent": self.resent,
                "in_flight": w.in_flight, "in_flight_bytes": self.in_flight_bytes,
                "in_flight_high_water": self.high_water,
                "in_flight_bytes_high_water": self.high_water_bytes,
                "last_publish_error": w.last_error()}
