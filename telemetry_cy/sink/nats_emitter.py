"""Thread [3] of the pipeline: publishes tick batches of aggregates to NATS.

nats-py is asyncio-only and not thread-safe, so the emitter owns a thread running its own event
loop with one client, and nothing else touches that client. The engine thread calls `submit`,
which only hands the batch (a list reference) to the loop with one `call_soon_threadsafe` -- never
a task per message, never a lock the loop thread could hold, never a wait.

Encoding happens on the loop thread, not in `submit`: the engine thread drains the ingest ring
with the GIL released, so Python work on this thread runs beside it on the other core, while
encoding on the engine thread (a few microseconds per aggregate, seconds for a million keys)
would stall the drain and overflow the ring (`ingest_full`).

Backlog (loop thread): a deque of encoded batches, bounded by `max_backlog_batches` and
`max_backlog_bytes`. Over either bound the OLDEST waiting batches are dropped and each aggregate
in them counts as `emit_backlog`; the newest batch is always kept, and the one batch being
published right now (in flight) is not counted against the bounds. A batch is published when the
server has read it (core NATS: a PING/PONG after it) and, in JetStream mode, all its acks came
back. If the connection drops first, or a JetStream ack fails, the batch goes back to the front
for a retry. Core NATS delivery is therefore at-least-once: a batch cut by a disconnect after some
of it reached the server is sent again. A flush that merely times out on a live connection does
not end the attempt (see `_delivered`): those bytes are already on their way and cannot be
recalled, so the batch stays in flight and is never also counted as dropped.
JetStream mode sets `Nats-Msg-Id`, so the stream stores a retried aggregate once (within the
stream's duplicate window, 2 minutes by default).

Counters: the engine thread writes only `_handoff` (one tuple, replaced whole), the loop thread
writes the rest under `_lock`, which only the loop thread and `stats()` readers take. Balance, at
any snapshot: submitted == published + drops[emit_backlog] + backlog_aggregates, where
backlog_aggregates includes batches handed over but not yet taken by the loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.errors import FlushTimeoutError

from telemetry_cy.backend import ACTIVE
from telemetry_cy.service.logs import redact_url
from telemetry_cy.sink.bodies import encoder_for
from telemetry_cy.sink.subjects import escape_token, subject_for, validate_prefix

log = logging.getLogger("telemetry_cy.sink.nats_emitter")

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
#: nats-py's limit of JetStream acks in flight, set beyond any batch (see `_run`).
JS_MAX_PENDING = 1 << 30
#: The same NATS error is logged at most once per this many seconds.
ERROR_LOG_EVERY_S = 60.0
#: Hand-offs the loop has not picked up yet, at most. Normally 0 or 1 (one per tick); this is a
#: net for a stuck or starved NATS thread, so memory stays bounded even then.
MIN_IN_FLIGHT_BATCHES = 64


class _Batch:
    __slots__ = ("parts", "n", "nbytes", "window_end")

    def __init__(self, parts: list, n: int, nbytes: int, window_end: float) -> None:
        # core NATS: PUB protocol chunks; JetStream: [(subject, body, msg_id)]
        self.parts = parts
        self.n = n                    # aggregates
        self.nbytes = nbytes          # subjects + bodies, what the byte bound counts
        self.window_end = window_end  # the oldest tick in the batch


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


_CREDS_SECTIONS = ((b"BEGIN NATS USER JWT", "user JWT"), (b"BEGIN USER NKEY SEED", "nkey seed"))


def check_creds_file(path: str) -> None:
    """ValueError, naming the path but never the contents, unless `path` is a readable NATS
    credentials file with a user JWT and a seed section, and nkeys (which nats-py signs with)
    is installed. Checked before connecting because nats-py 2.16 spins its event loop forever
    on a file without the JWT section and gives up for good on one without a seed."""
    try:
        import nkeys  # noqa: F401
    except ImportError:
        raise ValueError("a NATS credentials file needs the 'nkeys' package: "
                         "pip install 'telemetry-cy[creds]' (or pip install nkeys)") from None
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    for marker, what in _CREDS_SECTIONS:
        # nats-py reads the line after the marker as the value
        if not any(marker in line and i + 1 < len(lines) and lines[i + 1].strip()
                   for i, line in enumerate(lines)):
            raise ValueError(f"{path} is not a NATS credentials file: no {what} section "
                             f"('-----{marker.decode()}-----' and the line after it)")


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
                 on_published: Callable[[int, float], None] | None = None) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if not self.servers:
            raise ValueError("at least one NATS server URL is needed")
        self.prefix = validate_prefix(subject_prefix)
        self.format = format
        self._encode = encoder_for(format)
        if max_backlog_batches < 1 or max_backlog_bytes < 1:
            raise ValueError("max_backlog_batches and max_backlog_bytes must be at least 1")
        if token and (user or password):
            raise ValueError("NATS auth: give either a token or user/password, not both")
        if creds_file:
            check_creds_file(creds_file)
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
        secrets = {password, token}
        for url in self.servers:
            parts = urlsplit(url if "://" in url else "nats://" + url)
            secrets.update((parts.username, parts.password))  # nats://TOKEN@host puts it here
        self._secrets = sorted((s for s in secrets if s), key=len, reverse=True)
        self._safe_servers = ",".join(redact_url(u) for u in self.servers)

        tls = None
        if tls_key_file and not tls_cert_file:
            raise ValueError("NATS TLS: tls_key_file needs tls_cert_file")
        if (tls_ca_file or tls_cert_file
                or any(u.startswith("tls://") for u in self.servers)):
            # verification stays on (CERT_REQUIRED, hostname checked); a private CA is added,
            # never trusted instead of checking
            tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls_ca_file)
            if tls_cert_file:
                tls.load_cert_chain(tls_cert_file, tls_key_file)
        self._connect_opts = dict(
            servers=self.servers, name=name, connect_timeout=connect_timeout,
            allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=reconnect_time_wait,
            reconnect_to_server_handler=self._next_server, user=user, password=password,
            token=token, user_credentials=creds_file, tls=tls, flush_timeout=flush_timeout,
            error_cb=self._on_error, disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected, closed_cb=self._on_closed)

        # written by the producer (engine) thread only: (batches, aggregates) handed to the
        # loop, aggregates refused at the door (emitter not running, or loop not keeping up)
        self._handoff = (0, 0, 0)
        # written by the loop thread only, under _lock
        self._lock = threading.Lock()
        self._taken = (0, 0)
        self._backlog: collections.deque[_Batch] = collections.deque()
        self._waiting_bytes = 0
        self._current: _Batch | None = None
        self._published = self._batches_published = self._flushes = 0
        self._drops = {"emit_backlog": 0}
        self._too_large = 0
        self._stalled_flushes = 0
        # loop thread only: bumped on every disconnect and reconnect, so a batch written on one
        # connection is never confirmed by a PONG of the next
        self._generation = 0
        self._connected = False
        self._reconnects = 0
        self._down_since: float | None = time.monotonic()
        self._down_total = 0.0
        self._last_error = ""

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._closing = False
        self._connected_event = threading.Event()
        self._attempt = 0
        self._ever_connected = False
        self._logged_errors: dict[str, float] = {}  # error text -> when it was last logged

    # ---------------------------------------------------------------- producer side

    def submit(self, aggregates: list, now: float | None = None) -> None:
        """Hands one tick batch to the NATS thread. Called by the engine thread; never blocks.

        The list is taken over as is (the engine builds a fresh list per tick). If the emitter is
        not running, or the loop has not picked up max(max_backlog_batches, 64) earlier
        hand-offs (it is stuck), the batch is dropped here and counted as `emit_backlog`."""
        n = len(aggregates)
        if not n:
            return
        batches, aggs, refused = self._handoff
        loop = self._loop
        if (not self._accepting or loop is None
                or batches - self._taken[0] >= self._max_in_flight):
            self._handoff = (batches, aggs, refused + n)
            return
        # counted before the call so the loop can never have taken more than was handed
        self._handoff = (batches + 1, aggs + n, refused)
        try:
            loop.call_soon_threadsafe(self._take, aggregates)
        except RuntimeError:  # the loop closed under a late submit (stop() raced with us)
            self._handoff = (batches, aggs, refused + n)

    # ---------------------------------------------------------------- loop side

    def _encode_core(self, aggregates: list) -> tuple[list, int, int]:
        parts, n, nbytes = [], 0, 0
        max_body = self._nc.max_payload  # from the server's INFO; nats-py's default before
        for i in range(0, len(aggregates), ENCODE_SLICE):
            chunks, encoded, _, size = encode_batch(aggregates[i:i + ENCODE_SLICE], self.prefix,
                                                    self.format, MAX_SUBJECT_BYTES,
                                                    max_body_bytes=max_body)
            parts += chunks
            n += encoded
            nbytes += size
        return parts, n, nbytes

    def _encode_jetstream(self, aggregates: list) -> tuple[list, int, int]:
        encode, prefix, max_body = self._encode, self.prefix, self._nc.max_payload
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

    def _take(self, aggregates: list) -> None:
        """Loop thread: encode a handed-over batch, add it to the backlog, enforce the bounds."""
        encode = self._encode_jetstream if self.jetstream else self._encode_core
        parts, n, nbytes = encode(aggregates)
        too_long = len(aggregates) - n
        dropped = 0
        with self._lock:
            self._taken = (self._taken[0] + 1, self._taken[1] + len(aggregates))
            self._drops["emit_backlog"] += too_long
            self._too_large += too_long
            if n:
                window_end = min(a.window_end for a in aggregates)
                self._backlog.append(_Batch(parts, n, nbytes, window_end))
                self._waiting_bytes += nbytes
                dropped = self._trim()
        if too_long:
            log.warning("aggregates dropped: subject longer than %d bytes or body longer than "
                        "the server's max_payload", MAX_SUBJECT_BYTES,
                        extra={"fields": {"reason": "emit_backlog", "aggregates": too_long}})
        if dropped:
            log.warning("NATS backlog full: oldest batches dropped",
                        extra={"fields": {"reason": "emit_backlog", "aggregates": dropped}})
        self._wake.set()

    def _trim(self) -> int:
        """Under _lock: drop the oldest waiting batches until within both bounds (the newest
        always stays). Returns the aggregates dropped."""
        dropped = 0
        while len(self._backlog) > 1 and (len(self._backlog) > self.max_backlog_batches
                                          or self._waiting_bytes > self.max_backlog_bytes):
            old = self._backlog.popleft()
            self._waiting_bytes -= old.nbytes
            dropped += old.n
        self._drops["emit_backlog"] += dropped
        return dropped

    async def _publisher(self) -> None:
        """The only code that publishes: oldest batch first, one at a time, only when connected
        (while disconnected nats-py would buffer out of our sight and bounds)."""
        nc = self._nc
        while True:
            if not self._backlog or not nc.is_connected:
                self._wake.clear()
                await self._wake.wait()  # set by _take, by (re)connection, by stop
                continue
            with self._lock:
                batch = self._current = self._backlog.popleft()
                self._waiting_bytes -= batch.nbytes
            ok = await self._publish(batch)
            dropped = 0
            with self._lock:
                self._current = None
                if ok:
                    self._published += batch.n
                    self._batches_published += 1
                else:  # back to the front: it is still the oldest
                    self._backlog.appendleft(batch)
                    self._waiting_bytes += batch.nbytes
                    dropped = self._trim()
            if dropped:
                log.warning("NATS backlog full: oldest batches dropped",
                            extra={"fields": {"reason": "emit_backlog", "aggregates": dropped}})
            if ok and self.on_published is not None:
                try:
                    self.on_published(batch.n, batch.window_end)
                except Exception:  # an observer's failure is not a failed publication
                    log.exception("on_published callback failed")
            if not ok:
                await asyncio.sleep(self.reconnect_time_wait)

    async def _publish(self, batch: _Batch) -> bool:
        nc = self._nc
        generation = self._generation
        futures: list[asyncio.Future] = []
        try:
            if self.jetstream:
                js = self._js
                for subject, body, mid in batch.parts:
                    futures.append(await js.publish_async(
                        subject, body, wait_stall=None,
                        headers={"Nats-Msg-Id": mid}))
                await self._delivered(generation)
                done, pending = await asyncio.wait(futures, timeout=self.flush_timeout)
                if pending:
                    raise TimeoutError(f"{len(pending)} of {batch.n} JetStream acks missing "
                                       f"after {self.flush_timeout} s")
                for f in done:
                    f.result()  # raises the stream's error (no stream, ...)
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
        finally:
            for f in futures:  # frees nats-py's pending-ack slots of an abandoned attempt
                if not f.done():
                    f.cancel()

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
                await nc.flush(self.flush_timeout)
                await nc.flush(self.flush_timeout)
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
        """nats-py reconnect hook: exponential backoff with jitter (nats-py itself only waits a
        fixed reconnect_time_wait, so many clients restarting together would retry in step)."""
        server = min(servers, key=lambda s: s.reconnects)  # round-robin over the pool
        return server, self._backoff()

    def _backoff(self) -> float:
        delay = min(self.max_reconnect_wait, self.reconnect_time_wait * 2 ** min(self._attempt, 16))
        self._attempt += 1
        return delay * random.uniform(0.5, 1.0)

    # ---------------------------------------------------------------- connection callbacks

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

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
        with self._lock:
            self._last_error = text

    def _set_connected(self, up: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if up and self._down_since is not None:
                self._down_total += now - self._down_since
                self._down_since = None
            elif not up and self._down_since is None:
                self._down_since = now
            self._connected = up
        if up:
            self._attempt = 0
            self._ever_connected = True
            self._connected_event.set()
            self._wake.set()
        else:
            self._connected_event.clear()

    async def _on_error(self, exc: Exception) -> None:
        self._note_error("NATS error", exc)
        if not self._ever_connected and not self._closing:
            # nats-py's first-connect loop retries every reconnect_time_wait, without the
            # backoff `_next_server` gives reconnects; it awaits this callback after each
            # failed attempt, so the same jittered backoff is applied here
            await asyncio.sleep(self._backoff())

    async def _on_disconnected(self) -> None:
        self._generation += 1
        if self._closing:
            return
        if self._connected:
            log.warning("NATS disconnected; backlog holds until it is back")
        self._set_connected(False)

    async def _on_reconnected(self) -> None:
        self._generation += 1
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
        self._set_connected(True)
        log.info("NATS connected", extra={"fields": {"url": self._connected_url()}})

    # ---------------------------------------------------------------- lifecycle

    def _run(self, started: threading.Event) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        self._nc = Client()
        # Acks in flight are bounded by our own flow (one batch at a time, its futures cancelled
        # when the attempt ends), so nats-py's pending-ack limit is moved out of the way and
        # publish_async gets wait_stall=None: with a timeout, every publish_async goes through
        # asyncio.wait_for, which yields to the loop and so costs one socket write per message
        # (perf/emit_rate.py: 10k -> 32k aggregates/s).
        self._js = (self._nc.jetstream(timeout=self.flush_timeout,
                                       publish_async_max_pending=JS_MAX_PENDING)
                    if self.jetstream else None)
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
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,),
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

    def stop(self, deadline_s: float = 5.0) -> None:
        """Publishes what is in the backlog within deadline_s, counts the rest as
        `emit_backlog`, closes the connection and joins the thread. Call it after the producer
        has stopped: later submissions are counted as `emit_backlog` too."""
        self._accepting = False
        thread, loop = self._thread, self._loop
        if thread is None or not thread.is_alive():
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
            batches, aggs, _ = self._handoff
            lost = aggs - self._taken[1]
            if lost > 0:
                self._drops["emit_backlog"] += lost
                self._taken = (batches, aggs)

    async def _shutdown(self, deadline_s: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, deadline_s)
        # let the publisher work through the backlog while connected (polled: cheap, bounded)
        while (self._backlog or self._current) and loop.time() < end:
            await asyncio.sleep(min(0.01, max(0.0, end - loop.time())))
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        dropped = 0
        with self._lock:
            for batch in ([self._current] if self._current else []) + list(self._backlog):
                dropped += batch.n
            self._backlog.clear()
            self._current = None
            self._waiting_bytes = 0
            self._drops["emit_backlog"] += dropped
        if dropped:
            log.warning("stop: backlog not published within the deadline",
                        extra={"fields": {"reason": "emit_backlog", "aggregates": dropped}})
        try:
            await asyncio.wait_for(self._nc.close(), timeout=max(1.0, end - loop.time()))
        except Exception as exc:
            self._note_error("close", exc)
        with self._lock:  # stopped: no longer connected, and no longer "down" either
            self._connected = False
            if self._down_since is not None:
                self._down_total += time.monotonic() - self._down_since
                self._down_since = None
        loop.stop()

    # ---------------------------------------------------------------- counters

    def stats(self) -> dict:
        """A consistent snapshot, safe from any thread."""
        with self._lock:
            taken_batches, taken_aggs = self._taken
            current = [self._current] if self._current else []
            backlog_batches = len(self._backlog) + len(current)
            backlog_aggs = sum(b.n for b in self._backlog) + sum(b.n for b in current)
            backlog_bytes = self._waiting_bytes + sum(b.nbytes for b in current)
            down = self._down_total + (time.monotonic() - self._down_since
                                       if self._down_since is not None else 0.0)
            out = {
                "published": self._published,
                "batches_published": self._batches_published,
                "flushes": self._flushes,
                "drops": dict(self._drops),
                "too_large": self._too_large,
                "stalled_flushes": self._stalled_flushes,
                "connected": self._connected,
                "reconnects": self._reconnects,
                "disconnected_seconds": round(down, 3),
                "last_error": self._last_error,
            }
        # read after the loop-side snapshot: handed >= taken, so in-flight is never negative
        batches, aggs, refused = self._handoff
        out["drops"]["emit_backlog"] += refused
        out["submitted"] = aggs + refused
        out["backlog_batches"] = backlog_batches + batches - taken_batches
        out["backlog_aggregates"] = backlog_aggs + aggs - taken_aggs
        out["backlog_bytes"] = backlog_bytes
        return out
