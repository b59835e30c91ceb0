"""Thread [3] in ``run --output partials`` (docs/scale-out.md): publishes partial messages to the
JetStream stream ``PARTIALS`` instead of aggregates to ``agg.>``.

Like the aggregate emitter it owns a thread with its own asyncio loop and one nats-py client;
the engine thread hands lists of (partition, bytes) with one ``call_soon_threadsafe`` and never
waits. Messages go out one at a time, oldest first, each acknowledged by the stream before the
next (a partition's messages must stay in order: the merge reads progress after panes); a
refused or unanswered publish is retried, after the process's backoff, with the same
``Nats-Msg-Id`` (``<instance>|<partition>|<seq>``), so the stream stores it once. The queue is
bounded: past ``max_backlog`` messages the oldest is dropped and counted as ``emit_backlog`` —
the merge workers then see the gap in that instance's sequence and count it (``gaps``); the
windows its panes belonged to go out short of them (docs/scale-out.md, "What is left").

Counters (``stats()``): written by the loop thread, each read whole. They count partial
messages under their own names (``partials``: made by kind, sent, panes sent, backlog, drops by
reason), never as ``published``, which in the daemon means aggregates NATS confirmed: an instance
in partial mode publishes none (docs/metrics.md, "Partial mode"). Balance, at any reading:
``made == sent + drops + backlog`` (a message is counted made as it enters the queue, and leaves
it as sent or dropped), and the same for the panes those messages carry: ``panes == panes_sent +
pane_drops + panes_backlog`` (the panes the engine could not keep never reach this queue: the
pipeline snapshot adds them, service/pipeline_snapshot.py).
"""

from __future__ import annotations

import asyncio
import collections
import struct
import threading
import time

import nats

from telemetry_cy.connection import Backoff, ConnectionClock
from telemetry_cy.sink.nats_options import Redactor
from telemetry_cy.sink.partials_stream import SUBJECT_PREFIX, ensure_stream

#: the message kinds by their number (header offset 12, docs/scale-out.md "The partial format")
KINDS = {1: "panes", 2: "progress", 3: "heartbeat", 4: "leave"}


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
                 replicas: int = 1, connect_opts: dict | None = None) -> None:
        self.servers, self.instance = servers, instance
        self.max_backlog, self.replicas = max_backlog, replicas
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
        self._published = self._dropped = self._retries = self._reconnects = 0
        # panes in the messages made, sent, dropped with their message, waiting in the queue:
        # each kept on its own (not derived from the others) so the balance is a real check
        self._panes_made = self._panes_sent = self._panes_dropped = self._panes_queued = 0
        self._made = dict.fromkeys(KINDS.values(), 0)
        self._closing = False
        self._done: asyncio.Event | None = None

    # ---- the engine thread's side ----

    def submit(self, messages: list[tuple[int, bytes]]) -> None:
        """Hands (partition, message) pairs over; never blocks."""
        if messages and self._loop is not None:
            self._loop.call_soon_threadsafe(self._take, messages)

    def _take(self, messages: list[tuple[int, bytes]]) -> None:
        for partition, data in messages:
            kind, seq, panes = _peek(data)
            self._made[kind] = self._made.get(kind, 0) + 1
            self._panes_made += panes
            # the seq is the Nats-Msg-Id's last part
            self._queue.append((partition, seq, panes, data))
            self._panes_queued += panes
        while len(self._queue) > self.max_backlog:
            _, _, panes, _ = self._queue.popleft()
            self._dropped += 1
            self._panes_queued -= panes
            self._panes_dropped += panes
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
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._wake, self._done = asyncio.Event(), asyncio.Event()
        self._conn.start()
        started.set()
        loop.run_until_complete(self._publisher())
        loop.close()

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
            try:
                await js.publish(f"{SUBJECT_PREFIX}.{partition}", data, timeout=2.0, headers={
                    "Nats-Msg-Id": f"{self.instance}|{partition}|{seq}"})
            except Exception as exc:  # noqa: BLE001  (refused, no answer, no connection)
                self._retries += 1
                self._conn.note_error(self._redact(str(exc)))
                if self._closing and not nc.is_connected:
                    break
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            self._queue.popleft()
            self._published += 1
            self._panes_sent += panes
            self._panes_queued -= panes
        await nc.close()
        self._done.set()

    def stop(self, deadline_s: float = 5.0) -> None:
        """Publishes what is queued (within the deadline), then closes."""
        if self._loop is None or self._thread is None:
            return

        def close() -> None:
            self._closing = True
            assert self._wake is not None
            self._wake.set()
        self._loop.call_soon_threadsafe(close)
        self._thread.join(deadline_s)

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._conn.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._conn.connected

    def stats(self) -> dict:
        """The NATS part of the pipeline snapshot: no aggregates (``published`` 0, no aggregate
        backlog or drops), the partial messages in ``partials``."""
        conn = self._conn.state()
        made = dict(self._made)
        return {
            "published": 0, "drops": {},
            "backlog_aggregates": 0, "backlog_batches": 0, "backlog_bytes": 0,
            "connected": conn.connected, "reconnects": self._reconnects,
            "disconnected_seconds": round(conn.disconnected_seconds, 3),
            "down_seconds": round(conn.down_seconds, 3), "last_error": conn.last_error or "",
            "partials": {
                "made": made, "messages": sum(made.values()), "sent": self._published,
                "panes_sent": self._panes_sent, "backlog": len(self._queue),
                "drops": {"backlog": self._dropped}, "retries": self._retries,
                "panes": self._panes_made, "panes_backlog": self._panes_queued,
                "pane_drops": {"backlog": self._panes_dropped},
            },
        }
