"""Thread [3] in ``run --output partials`` (docs/scale-out.md): publishes partial messages to the
JetStream stream ``PARTIALS`` instead of aggregates to ``agg.>``.

Like the aggregate emitter it owns a thread with its own asyncio loop and one nats-py client.
The engine thread hands lists of (partition, bytes) over through a bounded
``handoff.HandoffLane`` (one ``call_soon_threadsafe`` a batch) and never waits. Messages go out
one at a time, oldest first, each acknowledged by the stream before the next (a partition's
messages must stay in order: the merge reads progress after panes); a refused or unanswered
publish is retried, after the process's backoff, with the same ``Nats-Msg-Id``
(``<instance>|<partition>|<seq>``), so the stream stores it once.

Drops, all under the reason ``backlog``, messages and the panes in them: past ``max_backlog``
queued messages the oldest waiting one is dropped (never the one being published); a batch the
loop cannot take is refused at the door (the emitter not started or stopped, ``max_in_flight``
earlier batches not taken yet -- the loop stuck or starved --, or the loop closed under the
call); once the loop has ended, stop() drops what it never sent (batches never taken, the
queue's rest). Either way the message's sequence number never reaches the stream: the merge
workers see the gap in that instance's sequence and count it (``gaps``), and the windows its
panes may have belonged to are never published (docs/scale-out.md, "Gaps").

Counters (``stats()``): made by kind and panes made are counted by the engine thread as it hands
a batch over (one tuple replaced whole, read last, so a reading never shows more out than in),
as is the lane's producer side; the rest by the loop thread under ``_lock``, which ``stats()``
takes, and ``stop()`` once the loop thread is gone (what was handed over and never taken). They
count partial messages under their own names (``partials``: made by kind, sent, panes sent,
backlog, drops by reason), never as ``published``, which in the daemon means aggregates NATS
confirmed: an instance in partial mode publishes none (docs/metrics.md, "Partial mode").
Balance, at any reading: ``made == sent + drops + backlog`` (a message is counted made as it is
handed over, waits in the lane and then in the queue, both counted in ``backlog``, and leaves as
sent or dropped, or is dropped at the door), and the same for the panes those messages carry:
``panes == panes_sent + pane_drops + panes_backlog`` (the panes the engine could not keep never
reach this emitter: the pipeline snapshot adds them, service/pipeline_snapshot.py).
"""

from __future__ import annotations

import asyncio
import collections
import struct
import threading
import time

import nats

from telemetry_cy.connection import Backoff, ConnectionClock
from telemetry_cy.sink.handoff import HandoffLane
from telemetry_cy.sink.nats_options import Redactor
from telemetry_cy.sink.partials_stream import SUBJECT_PREFIX, ensure_stream

#: the message kinds by their number (header offset 12, docs/scale-out.md "The partial format")
KINDS = {1: "panes", 2: "progress", 3: "heartbeat", 4: "leave"}
#: Batches handed over that the loop has not taken yet, at most. Normally 0 or 1 (one a tick);
#: a net for a stuck or starved loop, so memory stays bounded even then (as the aggregates').
MAX_IN_FLIGHT_BATCHES = 64


def _peek(data: bytes) -> tuple[str, int, int]:
    """(kind, seq, panes) of a message our own writer made: the header's fixed fields (kind at
    12, quantile count at 64, instance id length at 68, seq at 80), and for a panes message the
    body's leading u32 count after the header, the q values and the id. Counting only: the
    bytes go out untouched."""
    kind = KINDS.get(int.from_bytes(data[12:14], "little"), "other")
    nq, id_len = struct.unpack_from("<II", data, 64)
    seq = int.from_bytes(data[80:88], "little")
    panes = 0
    if kind == "panes":
        (panes,) = struct.unpack_from("<I", data, 96 + 8 * nq + id_len)
    return kind, seq, panes


class PartialsEmitter:
    def __init__(self, servers: list[str], instance: str, max_backlog: int = 100_000,
                 replicas: int = 1, connect_opts: dict | None = None,
                 max_in_flight: int = MAX_IN_FLIGHT_BATCHES) -> None:
        self.servers, self.instance = servers, instance
        self.max_backlog, self.replicas = max_backlog, replicas
        self.max_in_flight = max_in_flight
        # credentials and TLS: sink/nats_options.connect_options, as every NATS client takes them
        self.connect_opts = connect_opts or {}
        # no secret of those reaches the stats' last_error
        self._redact = Redactor.of(servers, self.connect_opts)
        # (partition, seq, panes in it, bytes)
        self._queue: collections.deque[tuple[int, int, int, bytes]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn = ConnectionClock()
        self._backoff = Backoff(0.05, 2.0)
        # engine thread only, replaced whole: (messages made by kind, the panes in them)
        self._made: tuple[dict[str, int], int] = (dict.fromkeys(KINDS.values(), 0), 0)
        # the batches' way to the loop: the engine thread offers (a batch's weight: its panes),
        # the loop thread takes under _lock
        self._lane = HandoffLane()
        self._accepting = False
        # loop thread only, under _lock (and stop(), once the loop thread is gone)
        self._lock = threading.Lock()
        self._published = self._dropped = self._retries = self._reconnects = 0
        # panes in the messages sent, dropped with their message, waiting in the queue: each
        # kept on its own (not derived from the others) so the balance is a real check
        self._panes_sent = self._panes_dropped = self._panes_queued = 0
        self._closing = False
        # loop thread only: the queue's head is being published (popped once it is acked)
        self._in_flight = False
        self._done: asyncio.Event | None = None

    # ---- the engine thread's side ----

    def submit(self, messages: list[tuple[int, bytes]]) -> None:
        """Hands (partition, message) pairs over; never blocks. A batch refused at the door
        (see the module's docstring) is counted dropped here, with its panes."""
        if not messages:
            return
        made, panes_made = self._made
        made = dict(made)   # a new dict: a reader may hold the one it read
        items, panes = [], 0
        for partition, data in messages:
            kind, seq, n = _peek(data)
            made[kind] = made.get(kind, 0) + 1
            panes += n
            # the seq is the Nats-Msg-Id's last part
            items.append((partition, seq, n, data))
        # counted made before the offer: handed over or refused, it is in `made` by then
        self._made = (made, panes_made + panes)
        self._lane.offer(self._loop, self._take, items, self.max_in_flight, self._accepting,
                         panes)

    def _take(self, items: list[tuple[int, int, int, bytes]]) -> None:
        """Loop thread: a handed-over batch into the queue, the oldest dropped past
        max_backlog."""
        with self._lock:
            panes = sum(item[2] for item in items)   # the weight it was offered with
            self._lane.took(len(items), panes)
            self._queue.extend(items)
            self._panes_queued += panes
            while len(self._queue) > self.max_backlog:
                # the head may be in flight (this runs while the publisher awaits its ack): then
                # the oldest waiting message goes, never the one the stream may be storing
                oldest_at = 1 if self._in_flight else 0
                _, _, oldest, _ = self._queue[oldest_at]
                del self._queue[oldest_at]
                self._dropped += 1
                self._panes_queued -= oldest
                self._panes_dropped += oldest
        assert self._wake is not None
        self._wake.set()

    # ---- the loop ----

    def start(self) -> None:
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,),
                                        name="telemetry-cy-partials", daemon=True)
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        # the runner's end, however the publisher ends, cancels what is left of nats-py's tasks
        # and closes the loop; batches scheduled before that are taken (then dropped by stop()
        # with the rest of the queue), later ones are refused at the door
        with asyncio.Runner() as runner:
            self._loop = runner.get_loop()
            self._wake, self._done = asyncio.Event(), asyncio.Event()
            self._conn.start()
            self._accepting = True
            started.set()
            runner.run(self._publisher())

    async def _connected(self, _=None) -> None:
        self._conn.up()

    async def _disconnected(self, _=None) -> None:
        self._conn.down()
        self._reconnects += 1

    async def _publisher(self) -> None:
        assert self._wake is not None and self._done is not None
        nc = None
        while nc is None:
            try:
                nc = await nats.connect(self.servers, max_reconnect_attempts=-1,
                                        reconnect_time_wait=0.2, connect_timeout=2,
                                        reconnected_cb=self._connected,
                                        disconnected_cb=self._disconnected,
                                        **self.connect_opts)
            except Exception as exc:  # noqa: BLE001  (any failure: wait and try again)
                self._conn.note_error(self._redact(str(exc)))
                if self._closing:
                    self._done.set()
                    return
                await asyncio.sleep(self._backoff.next_delay())
        self._conn.up()
        js = nc.jetstream()
        try:
            await ensure_stream(nc, self.replicas)
        except Exception as exc:  # noqa: BLE001  (a stream made by the operator is fine too)
            self._conn.note_error(self._redact(f"stream: {exc}"))
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            partition, seq, panes, data = self._queue[0]
            self._in_flight = True
            try:
                await js.publish(f"{SUBJECT_PREFIX}.{partition}", data, timeout=2.0, headers={
                    "Nats-Msg-Id": f"{self.instance}|{partition}|{seq}"})
            except Exception as exc:  # noqa: BLE001  (refused, no answer, no connection)
                self._in_flight = False
                self._retries += 1
                self._conn.note_error(self._redact(str(exc)))
                if self._closing and not nc.is_connected:
                    break
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            self._in_flight = False
            with self._lock:
                self._queue.popleft()
                self._published += 1
                self._panes_sent += panes
                self._panes_queued -= panes
        try:
            await nc.close()
        except Exception as exc:  # noqa: BLE001  (the connection was lost already: it is closed)
            self._conn.note_error(self._redact(f"close: {exc}"))
        self._done.set()

    def stop(self, deadline_s: float = 5.0) -> None:
        """Publishes what is queued (within the deadline), then closes. Call it once the
        producer has stopped: later submissions are refused and counted. Once the loop thread
        is gone, what it never sent is counted dropped: the batches handed over and never
        taken, and the messages left in the queue (NATS unreachable at the end)."""
        self._accepting = False
        if self._loop is None or self._thread is None:
            return

        def close() -> None:
            self._closing = True
            assert self._wake is not None
            self._wake.set()
        try:
            self._loop.call_soon_threadsafe(close)
        except RuntimeError:   # the loop closed already: the thread has ended
            pass
        self._thread.join(deadline_s)
        if self._thread.is_alive():
            return   # still sending: what it holds is still counted as backlog
        with self._lock:
            lost = self._lane.lost_on_stop()
            self._dropped += lost.items + len(self._queue)
            self._panes_dropped += lost.weight + self._panes_queued
            self._queue.clear()
            self._panes_queued = 0

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._conn.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._conn.connected

    def stats(self) -> dict:
        """The NATS part of the pipeline snapshot: no aggregates (``published`` 0, no aggregate
        backlog or drops), the partial messages in ``partials``."""
        conn = self._conn.state()
        with self._lock:
            sent, panes_sent, retries = self._published, self._panes_sent, self._retries
            backlog, panes_backlog = len(self._queue), self._panes_queued
            dropped, panes_dropped = self._dropped, self._panes_dropped
            lane = self._lane.counts()
        # read last: everything the lane and the loop counted was counted made before
        made, panes = self._made
        return {
            "published": 0, "drops": {},
            "backlog_aggregates": 0, "backlog_batches": 0, "backlog_bytes": 0,
            "connected": conn.connected, "reconnects": self._reconnects,
            "disconnected_seconds": round(conn.disconnected_seconds, 3),
            "down_seconds": round(conn.down_seconds, 3), "last_error": conn.last_error or "",
            # the lane's part as the aggregate emitter's: refused ones are dropped (same
            # reason as the queue's), waiting ones are in the backlog
            "partials": {
                "made": dict(made), "messages": sum(made.values()), "sent": sent,
                "panes_sent": panes_sent, "backlog": backlog + lane.waiting_items,
                "drops": {"backlog": dropped + lane.refused}, "retries": retries,
                "panes": panes, "panes_backlog": panes_backlog + lane.waiting_weight,
                "pane_drops": {"backlog": panes_dropped + lane.refused_weight},
            },
        }
