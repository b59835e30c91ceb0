"""Thread [3] of the pipeline: publishes tick batches of aggregates to NATS.

nats-py is asyncio-only and not thread-safe, so the emitter owns a thread running its own event
loop with one client, and nothing else touches that client. The engine thread calls `submit`,
which only hands the batch (a list reference) to the loop with one `call_soon_threadsafe` -- never
a task per message, never a lock the loop thread could hold, never a wait. The loop thread
encodes it (`nats_batches.TickEncoder`) and adds it to the bounded backlog (`backlog.Backlog`:
drop-oldest, counted as `emit_backlog`).

This module is the publishing and its accounting: one batch in flight at a time, oldest first. A
core NATS batch is published when the server has read it (a PING/PONG after it); if the
connection drops first, the batch goes back to the front of the backlog for a retry. Core NATS
delivery is therefore at-least-once: a batch cut by a disconnect after some of it reached the
server is sent again. A flush that merely times out on a live connection does not end the
attempt (see `_delivered`): those bytes are already on their way and cannot be recalled, so the
batch stays in flight and is never also counted as dropped.

JetStream mode (sink/jetstream.py) publishes a batch through a bounded window of messages awaiting
their ack, and an aggregate counts as published when the stream acked it. Late messages (event
time, sink/late_messages.py) take the same path, a batch at a time between the aggregates'. A
batch that did not get through whole (refused messages, no answer, a lost connection) goes back
to the front of its backlog and only its unacked part is sent again, with the same
`Nats-Msg-Id`, so the stream stores each message once (within the stream's duplicate window, 2
minutes by default). Refusals are counted by reason (`publish_errors`); retries wait by the
reconnect policy, so a full stream is not hammered.

Reconnects wait by the process's one policy (`connection.Backoff`), the up/down time is kept by
its one clock (`connection.ConnectionClock`, read by `stats()` and the health check).

Counters: each kind of batch (aggregates here, late readings in `LateQueue`) crosses to the loop
through its own `handoff.HandoffLane`: the engine thread writes only the lanes' `handoff` tuples
(one per lane, replaced whole; it takes no lock), the loop thread writes their `taken` tuples
and every other counter under `_lock`, which only the loop thread, `stats()` readers and `stop()`
take (`stop()` writes under it once the loop thread is gone: what was handed over and never
taken). Balance, at any snapshot: submitted == published + drops[emit_backlog] +
backlog_aggregates, where backlog_aggregates includes batches handed over but not yet taken by
the loop (and, of a JetStream batch published in part, only the part not acked yet).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.errors import FlushTimeoutError

from telemetry_cy.backend import ACTIVE
from telemetry_cy.connection import Backoff, ConnectionClock
from telemetry_cy.service.logs import redact_url
from telemetry_cy.sink.backlog import Backlog, Batch
from telemetry_cy.sink.handoff import HandoffLane
from telemetry_cy.sink.jetstream import JetStreamPublisher
from telemetry_cy.sink.late_messages import JetStreamLate, LateQueue, encode_late
from telemetry_cy.sink.nats_batches import (
    ENCODE_SLICE,
    MAX_SUBJECT_BYTES,
    TickEncoder,
    encode_batch,
    msg_id,
)
from telemetry_cy.sink.nats_options import Redactor, check_creds_file, connect_options
from telemetry_cy.sink.nats_streams import streams_capturing
from telemetry_cy.sink.subjects import validate_prefix

__all__ = ["NatsEmitter", "check_creds_file", "msg_id", "encode_batch", "ENCODE_SLICE",
           "MAX_SUBJECT_BYTES", "ERROR_LOG_EVERY_S", "MIN_IN_FLIGHT_BATCHES",
           "JS_MAX_IN_FLIGHT", "JS_MAX_IN_FLIGHT_BYTES"]

log = logging.getLogger("telemetry_cy.sink.nats_emitter")

#: JetStream messages awaiting their ack, at most (sink/jetstream.py). Far below nats-server's
#: per-stream ingest queue (100,000 messages, 128 MiB by default; beyond it the server answers
#: 429 "too many requests"), and enough to keep the server busy on loopback (docs/jetstream.md).
JS_MAX_IN_FLIGHT = 16384
#: ... and bytes of chunks awaiting their acks
JS_MAX_IN_FLIGHT_BYTES = 16 << 20
#: The same NATS error is logged at most once per this many seconds.
ERROR_LOG_EVERY_S = 60.0
#: Hand-offs the loop has not picked up yet, at most. Normally 0 or 1 (one per tick); this is a
#: net for a stuck or starved NATS thread, so memory stays bounded even then.
MIN_IN_FLIGHT_BATCHES = 64
#: Reconnect waits are drawn from [(1 - jitter) * d, d]: never much shorter than the policy's d.
RECONNECT_JITTER = 0.5


class NatsEmitter:
    def __init__(self, servers: str | list[str] = "nats://127.0.0.1:4222",
                 subject_prefix: str = "agg", format: str = "json", jetstream: bool = False,
                 max_backlog_batches: int = 64, max_backlog_bytes: int = 64 << 20,
                 user: str | None = None, password: str | None = None,
                 token: str | None = None, creds_file: str | None = None,
                 tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None, connect_timeout: float = 2.0,
                 flush_timeout: float = 5.0, reconnect_time_wait: float = 0.25,
                 max_reconnect_wait: float = 5.0, name: str = "telemetry-cy",
                 on_published: Callable[[int, float], None] | None = None,
                 expected_stream: str | None = None, max_in_flight: int = JS_MAX_IN_FLIGHT,
                 max_in_flight_bytes: int = JS_MAX_IN_FLIGHT_BYTES,
                 late_subject: str | None = None) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if not self.servers:
            raise ValueError("at least one NATS server URL is needed")
        self.prefix = validate_prefix(subject_prefix)
        self.format = format
        # JetStream: one reply inbox per emitter, unguessable like nats-py's own inboxes; the
        # window's chunks are small enough that one always fits it
        self._js: JetStreamPublisher | None = None
        inbox = None
        if jetstream:
            inbox = f"_INBOX.{secrets.token_hex(11)}"
            self._js = JetStreamPublisher(ACTIVE.wire.AckWindow(inbox), max_in_flight,
                                          max_in_flight_bytes, flush_timeout)
        self._encoder = TickEncoder(
            self.prefix, format, jetstream, inbox=inbox, expected_stream=expected_stream,
            chunk_bytes=min(ACTIVE.wire.DEFAULT_CHUNK_BYTES, max(1, max_in_flight_bytes // 8)),
            chunk_messages=max(1, max_in_flight // 8))
        # loop thread only, under _lock
        self._backlog = Backlog(max_backlog_batches, max_backlog_bytes)
        # event time: late readings on <late_subject>.<device>.<sensor> (sink/late_messages.py)
        self._late = (LateQueue(validate_prefix(late_subject), max_backlog_batches,
                                max_backlog_bytes) if late_subject else None)
        auth = connect_options(self.servers, user, password, token, creds_file, tls_ca_file,
                               tls_cert_file, tls_key_file)
        self.jetstream = jetstream
        self.max_backlog_batches = max_backlog_batches
        self.max_backlog_bytes = max_backlog_bytes
        self._max_in_flight = max(max_backlog_batches, MIN_IN_FLIGHT_BATCHES)
        self.connect_timeout = connect_timeout
        self.flush_timeout = flush_timeout
        self.reconnect_time_wait = reconnect_time_wait
        self.max_reconnect_wait = max_reconnect_wait
        self.name = name
        # called on the NATS thread once a batch is confirmed: (aggregates, oldest window_end)
        self.on_published = on_published

        # secrets never leave this object in stats, errors or logs: redact them from any text
        self._redact = Redactor.of(self.servers, auth)
        self._safe_servers = ",".join(redact_url(u) for u in self.servers)
        self._connect_opts: dict[str, Any] = dict(
            servers=self.servers, name=name, connect_timeout=connect_timeout,
            allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=reconnect_time_wait,
            reconnect_to_server_handler=self._next_server, **auth, flush_timeout=flush_timeout,
            error_cb=self._on_error, disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected, closed_cb=self._on_closed)

        # the tick batches' way to the loop: the engine thread offers (aggregates refused at the
        # door: emitter not running, or loop not keeping up), the loop thread takes under _lock
        self._lane = HandoffLane()
        # written by the loop thread only, under _lock
        self._lock = threading.Lock()
        self._published = self._batches_published = self._flushes = 0
        self._dropped_here = 0   # emit_backlog outside the backlog: too large, never taken
        self._too_large = 0
        self._stalled_flushes = 0
        self._reconnects = 0
        # up/down time: written by the loop thread, read by stats() from any thread
        self._conn = ConnectionClock()
        # loop thread only: bumped on every disconnect and reconnect, so a batch written on one
        # connection is never confirmed by a PONG of the next
        self._generation = 0
        # loop thread only: the first connect and every reconnect wait by it (see _next_server)
        self._reconnect = Backoff(reconnect_time_wait, max_reconnect_wait,
                                  jitter=RECONNECT_JITTER,
                                  name="reconnect_time_wait, max_reconnect_wait")
        # loop thread only: the wait before a failed batch is tried again, by the same policy
        # (a stream that refuses everything is asked less and less often)
        self._retry = Backoff(reconnect_time_wait, max_reconnect_wait, jitter=RECONNECT_JITTER,
                              name="reconnect_time_wait, max_reconnect_wait")

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._closing = False
        self._connected_event = threading.Event()
        self._logged_errors: dict[str, float] = {}  # error text -> when it was last logged

    # ---------------------------------------------------------------- producer side

    def submit(self, aggregates: list, now: float | None = None) -> None:
        """Hands one tick batch to the NATS thread. Called by the engine thread; never blocks.

        The list is taken over as is (the engine builds a fresh list per tick). If the emitter is
        not running, or the loop has not picked up max(max_backlog_batches, 64) earlier
        hand-offs (it is stuck), the batch is dropped here and counted as `emit_backlog`."""
        self._lane.offer(self._loop, self._take, aggregates, self._max_in_flight,
                         self._accepting)

    def submit_late(self, readings: list) -> None:
        """Hands late readings (engine ``LateReading``) to the NATS thread, like `submit`; a
        no-op without a late_subject. Refused ones count as dropped late messages."""
        if self._late is not None:
            self._late.lane.offer(self._loop, self._take_late, readings, self._max_in_flight,
                                  self._accepting)

    # ---------------------------------------------------------------- loop side

    def _take_late(self, readings: list) -> None:
        late = self._late
        assert late is not None
        js = None
        if self._js is not None:   # acked like the aggregates, with a serial of their series
            enc = self._encoder
            serial = enc.next_serial()
            js = JetStreamLate(f"{enc.inbox}.{serial}", serial, enc.expected_stream,
                               enc.chunk_bytes, enc.chunk_messages)
        batch, too_large = encode_late(readings, late.prefix, MAX_SUBJECT_BYTES,
                                       self._nc.max_payload, js)
        with self._lock:
            late.lane.took(len(readings))
            late.dropped_here += too_large
            if batch is not None:
                late.backlog.add(batch)
        self._wake.set()

    def _next_batch(self) -> tuple[Batch | None, bool]:
        """Under _lock: the oldest aggregate batch, else the oldest late batch; and whether
        it is a late one. Aggregates first: they are what every consumer reads."""
        batch = self._backlog.take_oldest()
        if batch is not None or self._late is None:
            return batch, False
        return self._late.backlog.take_oldest(), True

    def _waiting(self) -> bool:
        late = self._late
        return bool(self._backlog.waiting or (late is not None and late.backlog.waiting))

    def _take(self, aggregates: list) -> None:
        """Loop thread: encode a handed-over batch, add it to the backlog (within its bounds)."""
        # max_payload comes from the server's INFO; nats-py's default before
        batch, too_large = self._encoder.encode(aggregates, self._nc.max_payload)
        dropped = 0
        with self._lock:
            self._lane.took(len(aggregates))
            self._dropped_here += too_large
            self._too_large += too_large
            if batch is not None:
                dropped = self._backlog.add(batch)
        self._log_too_large(too_large)
        self._log_backlog_full(dropped)
        self._wake.set()

    @staticmethod
    def _log_too_large(too_large: int) -> None:
        if too_large:
            log.warning("aggregates dropped: subject longer than %d bytes or body longer than "
                        "the server's max_payload", MAX_SUBJECT_BYTES,
                        extra={"fields": {"reason": "emit_backlog", "aggregates": too_large}})

    @staticmethod
    def _log_backlog_full(dropped: int) -> None:
        if dropped:
            log.warning("NATS backlog full: oldest batches dropped",
                        extra={"fields": {"reason": "emit_backlog", "aggregates": dropped}})

    async def _publisher(self) -> None:
        """The only code that publishes: oldest batch first, one at a time, only when connected
        (while disconnected nats-py would buffer out of our sight and bounds)."""
        nc = self._nc
        while True:
            if not self._waiting() or not nc.is_connected:
                self._wake.clear()
                await self._wake.wait()  # set by _take, by (re)connection, by stop
                continue
            with self._lock:
                batch, is_late = self._next_batch()
            if batch is None:   # cannot happen: this task is the only taker, and one waited
                continue
            if is_late:
                await self._publish_late(batch)
                continue
            ok = await self._publish(batch)
            dropped = 0
            with self._lock:
                # core NATS: all at once; JetStream: counted as the acks came (_acked)
                self._published += self._newly_done(batch, batch.n if ok else 0)
                if ok:
                    self._backlog.confirm()
                    self._batches_published += 1
                else:  # back to the front: it is still the oldest
                    dropped = self._backlog.give_back()
            self._log_backlog_full(dropped)
            if ok and self.on_published is not None:
                try:
                    self.on_published(batch.n, batch.window_end)
                except Exception:  # an observer's failure is not a failed publication
                    log.exception("on_published callback failed")
            if ok:
                self._retry.reset()
            else:
                await asyncio.sleep(self._retry.next_delay())

    async def _publish_late(self, batch: Batch) -> None:
        """A batch of late messages, published like a tick batch: core NATS PUBs, or in
        JetStream mode acked HPUBs (counted as the acks come, refusals by reason, the unacked
        part retried with the same ids); the same retry on failure, their own counters."""
        late = self._late
        assert late is not None
        ok = await self._publish(batch, self._late_acked)
        dropped = 0
        with self._lock:
            late.published += self._newly_done(batch, batch.n if ok else 0)
            if ok:
                late.backlog.confirm()
            else:
                dropped = late.backlog.give_back()
        if dropped:
            log.warning("late message backlog full: oldest batches dropped",
                        extra={"fields": {"late_messages": dropped}})
        if ok:
            self._retry.reset()
        else:
            await asyncio.sleep(self._retry.next_delay())

    async def _publish(self, batch: Batch,
                       acked: Callable[[Batch, int], None] | None = None) -> bool:
        """One attempt at a batch; `acked` (JetStream) counts its messages as the acks come,
        `_acked` (the aggregates') unless told otherwise."""
        nc = self._nc
        generation = self._generation
        try:
            js = self._js
            if js is not None:   # the JetStream mode
                if not js.ready:
                    raise ConnectionError("the JetStream reply subscription is not set up yet")
                ok = await js.publish(nc, batch, lambda: (generation == self._generation
                                                          and nc.is_connected),
                                      acked or self._acked, self._more)
                if not ok:
                    self._note_error("JetStream refused messages, batch kept for retry",
                                     RuntimeError(js.window.last_error()))
                return ok
            else:
                # Whole chunks of PUB commands, through the queue nats-py's own publish() feeds
                # (pinned by tests/test_emitter.py): ~1 us per aggregate less than a publish()
                # each. The subjects are escaped and the prefix validated, so nats-py's
                # per-message subject check has nothing left to find.
                send = nc._send_command
                for chunk in batch.parts:
                    if not nc.is_connected:  # else nats-py would buffer it for a reconnect
                        raise ConnectionError("disconnected while publishing")
                    await send(chunk)
                await self._delivered(generation)
            return True
        except Exception as exc:
            self._note_error("publish failed, batch kept for retry", exc)
            return False

    def _more(self, batch: Batch) -> None:
        """JetStream: the next part of the batch in flight is encoded (nats_batches); what is
        too large for the server leaves the batch and counts as dropped, in one step."""
        too_large, nbytes = self._encoder.more(batch, self._nc.max_payload)
        with self._lock:
            batch.n -= too_large
            batch.nbytes += nbytes
            self._dropped_here += too_large
            self._too_large += too_large
        self._log_too_large(too_large)

    @staticmethod
    def _newly_done(batch: Batch, done: int) -> int:
        """Under _lock: `done` of the batch's messages are published by now (JetStream: acked;
        core NATS: all of them once the server has read the batch). Returns how many of them
        were not counted yet; they are counted in `batch.done` here."""
        newly = max(0, done - batch.done)
        batch.done += newly
        return newly

    def _acked(self, batch: Batch, acked: int) -> None:
        """JetStream: `acked` of the batch's messages are in the stream by now."""
        with self._lock:
            self._published += self._newly_done(batch, acked)

    def _late_acked(self, batch: Batch, acked: int) -> None:
        """JetStream: `acked` of the late batch's messages are in the stream by now."""
        late = self._late
        assert late is not None
        with self._lock:
            late.published += self._newly_done(batch, acked)

    async def _delivered(self, generation: int) -> None:
        """Returns once the server has read everything written on connection `generation`
        (a PONG arrives after the bytes before its PING); raises if that connection is gone.

        A flush that times out on a connection that is still up does NOT fail the batch: its
        PUBs are already in nats-py's buffer, the transport or the socket, where they cannot be
        taken back and will reach the server in order once it reads again. Failing the batch
        would retry it behind those very bytes (a duplicate), and dropping it from a full
        backlog would count as `emit_backlog` what the server then receives. So the batch
        stays in flight and nothing new is written until the server catches up or the
        connection drops (nats-py's pinger declares a dead server stale); only then is the
        batch retried. What sits outside our bounds is therefore at most this one batch."""
        nc = self._nc
        while True:
            try:
                # Twice: nats-py (2.16) writes flush()'s PING straight to the socket while the
                # batch may still sit in its pending buffer, so the first PONG can confirm only
                # the batches before this one. The second PING goes out after the first flush
                # has pushed the buffer, so its PONG covers the whole batch.
                # (nats-py annotates the timeout as int; it hands it to asyncio.wait_for)
                await nc.flush(self.flush_timeout)  # type: ignore[arg-type]
                await nc.flush(self.flush_timeout)  # type: ignore[arg-type]
            except FlushTimeoutError as exc:
                if generation != self._generation or not nc.is_connected:
                    raise ConnectionError("connection lost with a batch in flight") from exc
                with self._lock:
                    self._stalled_flushes += 1
                self._note_error("flush timed out; the batch stays in flight until the server "
                                 "reads it or the connection drops", exc)
                continue
            if generation != self._generation:
                # a PONG from a newer connection says nothing about bytes the old one lost
                raise ConnectionError("connection replaced with a batch in flight")
            self._flushes += 1
            return

    def _next_server(self, servers, server_info):
        """nats-py reconnect hook: the reconnect policy's wait (nats-py itself only waits a
        fixed reconnect_time_wait, so many clients restarting together would retry in step)."""
        server = min(servers, key=lambda s: s.reconnects)  # round-robin over the pool
        return server, self._reconnect.next_delay()

    # ---------------------------------------------------------------- connection callbacks

    def _note_error(self, what: str, exc: BaseException) -> None:
        text = self._redact(f"{what}: {type(exc).__name__}: {exc}".rstrip(": "))
        now = time.monotonic()
        # one line per error and ERROR_LOG_EVERY_S, not one per retry: a refused connection
        # alternates between the server's error and a reset, so "same as the last" is not enough
        if now - self._logged_errors.get(text, -ERROR_LOG_EVERY_S) >= ERROR_LOG_EVERY_S:
            if len(self._logged_errors) >= 64:
                self._logged_errors.clear()
            self._logged_errors[text] = now
            log.warning(text)
        self._conn.note_error(text)

    def _set_connected(self, up: bool) -> None:
        if up:
            self._conn.up()
            # any connection resets the policy: nats-py has no "stayed up a while" hook, and
            # a server that keeps dropping us right away still gets a fresh, short wait
            self._reconnect.reset()
            self._connected_event.set()
            self._wake.set()
        else:
            self._conn.down()
            self._connected_event.clear()

    async def _on_error(self, exc: Exception) -> None:
        self._note_error("NATS error", exc)
        if not self._conn.ever_connected and not self._closing:
            # nats-py's first-connect loop retries every reconnect_time_wait, without the
            # backoff `_next_server` gives reconnects; it awaits this callback after each
            # failed attempt, so the same policy is applied here
            await asyncio.sleep(self._reconnect.next_delay())

    async def _on_disconnected(self) -> None:
        self._generation += 1
        if self._js is not None:
            self._js.wake()   # a publisher waiting for acks gives up on this connection
        if self._closing:
            return
        if self._conn.connected:
            log.warning("NATS disconnected; backlog holds until it is back")
        self._set_connected(False)

    async def _on_reconnected(self) -> None:
        self._generation += 1
        if self._js is not None:
            self._js.wake()
        with self._lock:
            self._reconnects += 1
        self._set_connected(True)
        log.info("NATS reconnected", extra={"fields": {"url": self._connected_url()}})

    async def _on_closed(self) -> None:
        if not self._closing:
            log.error("NATS connection closed")
            self._set_connected(False)

    def _connected_url(self) -> str:
        url = self._nc.connected_url
        return redact_url(url.geturl()) if url else ""

    async def _connect(self) -> None:
        try:
            # with max_reconnect_attempts=-1 this keeps retrying until the server is there
            await self._nc.connect(**self._connect_opts)
        except Exception as exc:
            self._note_error("NATS connect failed", exc)
            return
        if self._js is not None:
            try:
                await self._js.subscribe(self._nc)
            except Exception as exc:   # the publisher retries: it needs the subscription
                self._note_error("JetStream reply subscription failed", exc)
        self._set_connected(True)
        log.info("NATS connected", extra={"fields": {"url": self._connected_url()}})

    # ---------------------------------------------------------------- lifecycle

    def _run(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        self._nc = Client()
        if self._js is not None:
            self._js.attach(self._nc)
        self._wake = asyncio.Event()
        self._tasks = [loop.create_task(self._publisher()), loop.create_task(self._connect())]
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            # whatever is left (nats-py's reader, pinger, ...) is cancelled before closing
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in leftovers:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.close()

    def start(self, wait_connected: float | None = None, fail_fast: bool = False) -> None:
        """Starts the NATS thread and connects in the background.

        wait_connected: seconds to wait for the first connection (None: do not wait). If NATS is
        not there by then, the emitter keeps retrying in the background (submissions go to the
        backlog) -- unless fail_fast, which stops it and raises ConnectionError. fail_fast
        without wait_connected waits connect_timeout."""
        if self._thread is not None:
            raise RuntimeError("NatsEmitter.start() called twice")
        self._loop = loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(loop, started),
                                        name=f"{self.name}-nats", daemon=True)
        self._thread.start()
        if not started.wait(10.0):
            raise RuntimeError("the NATS thread did not start")
        self._accepting = True
        if fail_fast and wait_connected is None:
            wait_connected = self.connect_timeout
        if not wait_connected or self._connected_event.wait(wait_connected):
            return
        if fail_fast:
            error = self.stats()["last_error"]
            self.stop(0.0)
            raise ConnectionError(f"NATS not reachable at {self._safe_servers} within "
                                  f"{wait_connected:g} s" + (f": {error}" if error else ""))
        log.warning("NATS not connected yet; retrying in the background",
                    extra={"fields": {"servers": self._safe_servers}})

    def wait_connected(self, timeout: float) -> bool:
        return self._connected_event.wait(timeout)

    def check_stream(self) -> None:
        """JetStream mode: once connected, asks which streams capture the subjects and logs it
        in one line (a warning when none does: every publish then waits for one). Returns at
        once; the answer comes on the NATS thread."""
        loop = self._loop
        if self._js is None or loop is None:
            return
        loop.call_soon_threadsafe(lambda: self._tasks.append(
            loop.create_task(self._check_stream())))

    async def _check_stream(self) -> None:
        """One line for the aggregates' subjects, and one for the late messages' (they go
        through the same acked path, so without a stream they wait just the same)."""
        nc = self._nc
        while not nc.is_connected:
            await asyncio.sleep(0.1)
        prefixes = [self.prefix] + ([self._late.prefix] if self._late is not None else [])
        for prefix in prefixes:
            subjects = f"{prefix}.*.*"
            try:
                names = await streams_capturing(nc, prefix, self.flush_timeout)
            except Exception as exc:
                log.warning("cannot list the JetStream streams (is JetStream enabled?)", extra={
                    "fields": {"subjects": subjects, "error": self._redact(
                        f"{type(exc).__name__}: {exc}".rstrip(": "))}})
                return
            if names:
                log.info("JetStream stream captures the subjects",
                         extra={"fields": {"stream": ",".join(names), "subjects": subjects}})
            else:
                log.warning("no JetStream stream captures the subjects: publishes wait for one "
                            "(docs/jetstream.md shows how to create it)",
                            extra={"fields": {"subjects": subjects}})

    def stop(self, deadline_s: float = 5.0) -> None:
        """Publishes what is in the backlog within deadline_s, counts the rest as
        `emit_backlog`, closes the connection and joins the thread. Call it after the producer
        has stopped: later submissions are counted as `emit_backlog` too."""
        self._accepting = False
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        done = asyncio.run_coroutine_threadsafe(self._shutdown(deadline_s), loop)
        try:
            # the coroutine bounds itself; the margin covers closing the connection
            done.result(timeout=deadline_s + self.connect_timeout + 5.0)
        except Exception as exc:
            self._note_error("stop", exc)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        # hand-offs the loop never took (scheduled before it closed) are lost: count them
        with self._lock:
            self._dropped_here += self._lane.lost_on_stop().items
            if self._late is not None:
                self._late.dropped_here += self._late.lane.lost_on_stop().items

    async def _shutdown(self, deadline_s: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, deadline_s)
        # let the publisher work through the backlog while connected (polled: cheap, bounded)
        while (not self._backlog.idle or (self._late is not None and not self._late.backlog.idle)) \
                and loop.time() < end:
            await asyncio.sleep(min(0.01, max(0.0, end - loop.time())))
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with self._lock:
            dropped = self._backlog.drop_all()
            if self._late is not None:
                self._late.backlog.drop_all()
        if dropped:
            log.warning("stop: backlog not published within the deadline",
                        extra={"fields": {"reason": "emit_backlog", "aggregates": dropped}})
        try:
            await asyncio.wait_for(self._nc.close(), timeout=max(1.0, end - loop.time()))
        except Exception as exc:
            self._note_error("close", exc)
        self._conn.stop()  # stopped: no longer connected, and no longer "down" either
        loop.stop()

    # ---------------------------------------------------------------- counters

    def stats(self) -> dict:
        """A consistent snapshot, safe from any thread."""
        conn = self._conn.state()
        with self._lock:
            backlog = self._backlog
            out: dict[str, Any] = {
                "published": self._published,
                "batches_published": self._batches_published,
                "flushes": self._flushes,
                "drops": {"emit_backlog": self._dropped_here + backlog.dropped},
                "too_large": self._too_large,
                "stalled_flushes": self._stalled_flushes,
                "connected": conn.connected,
                "reconnects": self._reconnects,
                "disconnected_seconds": round(conn.disconnected_seconds, 3),
                "down_seconds": round(conn.down_seconds, 3),
                "last_error": conn.last_error or "",
            }
            backlog_batches, backlog_aggs = backlog.batches, backlog.aggregates
            backlog_bytes = backlog.nbytes
            if self._late is not None:
                out["late"] = self._late.stats()
            # with the loop-side counters: what is handed over and not taken is in the backlog
            lane = self._lane.counts()
        out["drops"]["emit_backlog"] += lane.refused
        out["submitted"] = lane.offered
        out["backlog_batches"] = backlog_batches + lane.waiting_batches
        out["backlog_aggregates"] = backlog_aggs + lane.waiting_items
        out["backlog_bytes"] = backlog_bytes
        if self._js is not None:
            # written by the loop thread without a lock: counters only, each read whole
            out["jetstream"] = self._js.stats()
        return out
