"""MQTT source: one network thread that keeps a broker connection and writes every PUBLISH into
the ingest ring, through the compiled receive path of ``FastClient`` (mqtt_client.py).

Thread [1] of docs/design.md §1. Ownership, who touches what:
  - the network thread (``_run``) alone calls paho (connect, loop_read/loop_write/loop_misc,
    subscribe, disconnect), owns the FrameReader and its receive buffer, and is the ring's single
    producer: the frame reader writes records, and the rare PUBLISH QoS 2 that paho itself
    handles is pushed from paho's on_message callback, which runs on that same thread;
  - any thread may call ``stats()``, ``wait_connected()`` and ``stop()``; ``stop()`` only sets a
    flag and wakes the network thread, which sends DISCONNECT itself, so that writes to the socket
    never come from two threads.
The network thread never waits for the ring: a full ring drops the record and counts
``ingest_full``.

Reconnects wait by the process's one policy (``connection.Backoff``), the up/down time is kept by
its one clock (``connection.ConnectionClock``, read by ``stats()`` and the health check).
"""

from __future__ import annotations

import logging
import math
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from telemetry_cy.backend import backend_of
from telemetry_cy.connection import Backoff, ConnectionClock
from telemetry_cy.service.logs import redact_url
from telemetry_cy.source.mqtt_client import FastClient
from telemetry_cy.source.mqtt_url import parse_url

__all__ = ["MqttSource"]

# the name the source has always logged under (operators filter on it)
log = logging.getLogger("telemetry_cy.source.mqtt")

_PROTOCOLS = {5: paho.MQTTv5, 4: paho.MQTTv311, 3: paho.MQTTv31, "5": paho.MQTTv5,
              "3.1.1": paho.MQTTv311, "311": paho.MQTTv311}
#: a connection up this long was a working one: the next reconnect starts the backoff over
STABLE_AFTER_S = 1.0
#: paho's loop_misc (keepalive, PINGRESP timeout) runs on this timer rather than every turn:
#: at most this long, and at most a quarter of the keepalive, between two runs.
MISC_EVERY_S = 1.0


def _whole_seconds(name: str, value, limit: int) -> int:
    """A duration in seconds (int or float) as the whole seconds MQTT carries, rounded up."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= limit:
        raise ValueError(f"{name} must be a number of seconds in [0, {limit}], got {value!r}")
    return int(math.ceil(value))


class MqttSource:
    """Subscribes to an MQTT broker and writes every PUBLISH into ``ring`` as (ts, topic, payload).

    ``ts`` is the wall-clock arrival time (``time.time()``), one clock read per socket read.

    Parameters:
        ring: the ByteRing this source is the only producer of.
        url: ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://...`` (TLS).
        topics: topic filters, ``$share/<group>/<filter>`` for shared subscriptions.
        qos: subscription QoS (0 or 1; 2 works but goes through paho's slow path).
        client_id: None -> a random ``telemetry-cy-...`` id (only with a clean session).
        session_expiry: seconds (rounded up) the broker keeps our session (subscriptions and
            queued QoS 1 messages) after a disconnect; 0 = clean session. MQTT 3.1.1 has no
            expiry: any value > 0 means clean_session=False (the broker's own expiry applies).
        username, password: override those in the URL. Passwords are never logged.
        ca_file, cert_file, key_file, insecure: TLS (``mqtts://`` only). Server verification is
            on unless ``insecure=True``; without ``ca_file`` the system CAs are used.
        protocol: 5 (default) or 4 (3.1.1).
        max_payload_bytes: larger payloads are dropped and counted as ``oversize``.
        keepalive: seconds (paho sends PINGREQ, drops a dead connection).
        recv_buffer_bytes: the frame reader's receive buffer.
        backoff_initial, backoff_max: reconnect delay, doubling from initial up to max, with
            full jitter (each wait is uniform in [0, delay]); a connection that stayed up
            STABLE_AFTER_S starts it over.
        connect_timeout: TCP + TLS handshake, and then again the wait for CONNACK.
        retain_as_published: MQTT 5 only (refused with 3.1.1, which has no such option). The
            subscription asks the broker to keep each live message's RETAIN flag as its
            publisher set it; by default the broker clears it on live deliveries and sets it only
            on the retained messages it sends at subscribe time. The daemon does not need it
            (the flag does not change an aggregate); the capture recorder wants it.
        coalesce: the ceiling, in seconds (default 0.004, 0 = off), of the nap the network
            thread takes after a read when traffic is dense, so that one wake-up, one read and
            one doorbell ring (one engine wake-up) carry every message that arrived meanwhile
            instead of one each; it bounds the latency it adds. Below the ceiling the nap
            adapts to the rate (FrameReader.pump: long enough for NAP_TARGET_RECORDS records,
            so high rates nap less). Reads that owe PUBACKs (QoS 1 deliveries) are not
            followed by a nap.
    """

    def __init__(self, ring, url: str = "mqtt://127.0.0.1:1883",
                 topics: Sequence[str] | str = ("site/+/sensor/+",), qos: int = 1,
                 client_id: str | None = None, session_expiry: float = 0,
                 username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, insecure: bool = False, protocol: int | str = 5,
                 max_payload_bytes: int = 65536, keepalive: float = 30,
                 recv_buffer_bytes: int = 1 << 20, *, backoff_initial: float = 0.1,
                 backoff_max: float = 30.0, connect_timeout: float = 5.0,
                 retain_as_published: bool = False, coalesce: float = 0.004) -> None:
        tls, host, port, url_user, url_pass = parse_url(url)
        self._url = redact_url(url)
        self._host, self._port, self._tls = host, port, tls
        self._username = username if username is not None else url_user
        self._password = password if password is not None else url_pass
        if self._password is not None and self._username is None:
            raise ValueError("a password needs a username")
        if isinstance(topics, str):
            topics = [topics]
        self._topics = list(topics)
        if not self._topics:
            raise ValueError("at least one topic filter is needed")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        self._qos = qos
        if protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be 5 or 4 (MQTT 3.1.1), got {protocol!r}")
        self._protocol = _PROTOCOLS[protocol]
        if retain_as_published and self._protocol != paho.MQTTv5:
            raise ValueError("retain_as_published needs MQTT 5 (protocol=5)")
        # what each filter is subscribed with: a bare QoS, or MQTT 5 options carrying it
        self._sub_options: int | SubscribeOptions = (
            SubscribeOptions(qos=qos, retainAsPublished=True) if retain_as_published else qos)
        session_expiry = _whole_seconds("session_expiry", session_expiry, 0xFFFFFFFF)
        self._session_expiry = session_expiry
        if client_id is None:
            if session_expiry:
                raise ValueError(
                    "a persistent session (session_expiry > 0) needs a stable client_id")
            client_id = f"telemetry-cy-{uuid.uuid4().hex[:12]}"
        self._client_id = client_id
        if (ca_file or cert_file or key_file or insecure) and not tls:
            raise ValueError("ca_file, cert_file, key_file and insecure need an mqtts:// URL")
        if key_file and not cert_file:
            raise ValueError("key_file needs cert_file")
        self._ssl_context = (self._make_ssl_context(ca_file, cert_file, key_file, insecure)
                             if tls else None)
        self._insecure = insecure
        self._keepalive = _whole_seconds("keepalive", keepalive, 0xFFFF)
        # the network thread's alone: only it reconnects
        self._backoff = Backoff(backoff_initial, backoff_max, jitter=1.0,
                                stable_after=STABLE_AFTER_S, name="backoff_initial, backoff_max")
        self._connect_timeout = float(connect_timeout)
        if isinstance(coalesce, bool) or not isinstance(coalesce, (int, float)) \
                or not 0 <= coalesce <= 0.1:
            raise ValueError(f"coalesce must be a number of seconds in [0, 0.1], got {coalesce!r}")
        self._coalesce = float(coalesce)
        frames = backend_of(ring).frames
        # the frame reader's rule, for the Python turn's nap: a read that fills this share of
        # the receive buffer means we are behind
        self._nap_skip_bytes = int(recv_buffer_bytes * frames.NAP_SKIP_FILL)
        self._pump_wake = frames.PUMP_WAKE
        self._misc_every = min(MISC_EVERY_S, self._keepalive / 4) if self._keepalive \
            else MISC_EVERY_S
        self._naps = 0
        self._ring = ring
        record = (24 + max_payload_bytes + 7) & ~7
        if record > ring.max_record_bytes:
            raise ValueError(
                f"max_payload_bytes={max_payload_bytes} does not fit the ring (its largest record "
                f"is {ring.max_record_bytes} bytes, header and topic included); use a larger ring "
                f"or a smaller limit")
        self._max_payload = max_payload_bytes
        # the frame reader of the set the ring belongs to: it writes into that ring's memory
        self._reader = backend_of(ring).FrameReader(ring, protocol=int(self._protocol),
                                                    max_payload_bytes=max_payload_bytes,
                                                    buffer_bytes=recv_buffer_bytes)

        self._thread: threading.Thread | None = None
        self._client: FastClient | None = None   # made and used by the network thread only
        self._stop = threading.Event()
        self._ready = threading.Event()        # CONNACK accepted and every filter subscribed
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # up/down time: written by the network thread, read by stats() from any thread; the time
        # before start() is no outage
        self._conn = ConnectionClock(started=False)
        self._lock = threading.Lock()          # the connection counters below
        self._connect_failures = 0
        self._protocol_errors = 0
        self._conn_error: str | None = None   # what ended the current connection, if known
        self._session_present: bool | None = None
        self._sub_mid: int | None = None
        # slow path (PUBLISH QoS 2 through paho): counted here, on the network thread
        self._slow = {"received": 0, "written": 0, "payload_bytes": 0, "oversize": 0,
                      "ingest_full": 0}

    @staticmethod
    def _make_ssl_context(ca_file, cert_file, key_file, insecure) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # ---- public API ------------------------------------------------------------------------------

    def start(self) -> "MqttSource":
        """Start the network thread (it connects, subscribes and reconnects on its own)."""
        if self._thread is not None:
            raise RuntimeError("MqttSource.start() called twice")
        self._conn.start()
        self._thread = threading.Thread(target=self._run, name="telemetry-cy-mqtt", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        """True once connected (CONNACK accepted) and subscribed to every filter (SUBACK granted),
        False if that does not happen within ``timeout`` seconds (see ``stats()['last_error']``)."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop reading, DISCONNECT cleanly, join the network thread. True when it ended in time."""
        self._stop.set()
        self._reader.interrupt()   # a pump napping in dense traffic does not poll the wake-up
        self._wake()
        t = self._thread
        if t is None:
            return True
        t.join(timeout)
        if t.is_alive():
            log.warning("MQTT network thread did not stop within %.1f s", timeout)
            return False
        for s in (self._wake_r, self._wake_w):
            s.close()
        return True

    @property
    def connected(self) -> bool:
        return self._conn.connected

    @property
    def url(self) -> str:
        """The broker URL, password redacted."""
        return self._url

    def stats(self) -> dict:
        """Counters (any thread). ``received`` PUBLISH frames = written + ingest_full + oversize.

        The frame reader publishes its counters once per socket read, after that read's records
        were committed: a consumer may see a record in the ring before ``written`` includes it.
        """
        fr = self._reader.counters()
        slow = dict(self._slow)
        conn = self._conn.state()
        with self._lock:
            out = {
                "connected": conn.connected,
                "connects": conn.connects,
                "disconnects": conn.disconnects,
                "connect_failures": self._connect_failures,
                "protocol_errors": self._protocol_errors + fr["protocol_errors"],
                "disconnected_seconds": conn.disconnected_seconds,
                "down_seconds": conn.down_seconds,
                "session_present": self._session_present,
                "last_error": conn.last_error,
            }
        out.update(
            received=fr["received"] + slow["received"],
            written=fr["written"] + slow["written"],
            bytes=fr["bytes"],
            payload_bytes=fr["payload_bytes"] + slow["payload_bytes"],
            acks=fr["acked"],
            naps=self._naps,   # coalescing naps taken (see coalesce): reads they saved
            drops={"ingest_full": fr["ingest_full"] + slow["ingest_full"],
                   "oversize": fr["oversize"] + slow["oversize"]},
        )
        return out

    def __repr__(self) -> str:
        return (f"<MqttSource {self._url} topics={self._topics} qos={self._qos} "
                f"connected={self._conn.connected}>")

    def __enter__(self) -> "MqttSource":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- network thread --------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # full (already woken) or closed
            pass

    def _note_error(self, msg: str) -> None:
        self._conn.note_error(msg)
        with self._lock:
            self._conn_error = msg
        log.warning("%s: %s", self._url, msg)

    def _count_protocol_error(self) -> None:
        with self._lock:
            self._protocol_errors += 1

    def _make_client(self) -> FastClient:
        kw: dict[str, Any] = dict(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=self._client_id, protocol=self._protocol)
        if self._protocol != paho.MQTTv5:
            kw["clean_session"] = self._session_expiry == 0
        client = FastClient(self._reader, self._note_error, self._count_protocol_error, **kw)
        # the doorbell rings before each sleep of this thread, not inside the read: see _session
        client.tc_notify = False
        client.connect_timeout = self._connect_timeout
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._ssl_context is not None:
            client.tls_set_context(self._ssl_context)
            if self._insecure:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_slow_message
        return client

    def _run(self) -> None:
        client = self._client = self._make_client()
        try:
            while not self._stop.is_set():
                up_for = 0.0
                try:
                    up_for = self._session(client)
                except Exception as exc:  # noqa: BLE001 - the thread must survive and retry
                    log.exception("%s: unexpected error in the MQTT network thread", self._url)
                    self._note_error(f"unexpected error: {exc!r}")
                    try:
                        client._sock_close()
                    except Exception:  # noqa: BLE001
                        pass
                self._connection_ended()
                if self._stop.is_set():
                    break
                # A connection that stayed up a while resets the backoff; one that dies right
                # after CONNACK (or never got one) keeps growing it.
                self._backoff.connected_for(up_for)
                wait = self._backoff.next_delay()
                log.debug("%s: reconnecting in %.2f s", self._url, wait)
                self._stop.wait(wait)
        finally:
            self._connection_ended()
            self._conn.stop()   # stopped: no longer connected, and no longer "down" either

    def _session(self, client: FastClient) -> float:
        """One connection: connect, loop until it ends or stop() is called. Returns its up time."""
        self._reader.reset()   # a new byte stream; a partial packet from the last one is garbage
        self._ready.clear()
        with self._lock:
            self._conn_error = None
        try:
            if self._protocol == paho.MQTTv5:
                props = Properties(PacketTypes.CONNECT)
                if self._session_expiry:
                    props.SessionExpiryInterval = self._session_expiry
                rc = client.connect(self._host, self._port, self._keepalive,
                                    clean_start=self._session_expiry == 0, properties=props)
            else:
                rc = client.connect(self._host, self._port, self._keepalive)
        except (OSError, ValueError) as exc:
            with self._lock:
                self._connect_failures += 1
            self._note_error(f"cannot connect: {type(exc).__name__}: {exc}")
            return 0.0
        if rc:
            with self._lock:
                self._connect_failures += 1
            self._note_error(f"cannot connect: {paho.error_string(rc)}")
            return 0.0
        t_open = time.monotonic()
        t_up: float | None = None
        wake = self._wake_r
        # poll, not select: no FD_SETSIZE limit in a process with many descriptors.
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        napped = False
        polled = None
        misc_due = 0.0   # paho's loop_misc (keepalive, PINGRESP timeout) on a timer, not per turn
        while not self._stop.is_set():
            # Re-read every time: paho itself may replace the socket (its MQTT 3.1 downgrade).
            sock = client.socket()
            if sock is None:
                break
            if t_up is None:
                if self._conn.connected:
                    t_up = time.monotonic()
                elif time.monotonic() - t_open > self._connect_timeout:
                    with self._lock:
                        self._connect_failures += 1
                    self._note_error(f"no CONNACK from {self._url} within "
                                     f"{self._connect_timeout:.1f} s")
                    client._sock_close()
                    break
            if not isinstance(sock, ssl.SSLSocket) and not napped and not client.want_write():
                # Plain TCP with nothing to send: the frame reader's own loop, without the GIL
                # (FrameReader.pump: poll, read, parse into the ring, ring the doorbell, nap),
                # until paho is needed (PUBACKs to queue, packets, keepalive due, stop()).
                rc, why, naps = client.tc_pump(wake, self._coalesce, misc_due)
                self._naps += naps
                if why == self._pump_wake:
                    self._drain_wake()
                if rc:
                    break
            else:
                # TLS (or bytes waiting to go out): this loop polls and reads in Python.
                if sock is not polled:
                    if polled is not None:
                        poller.unregister(polled)
                    poller.register(sock, select.POLLIN)
                    polled = sock
                turn = self._python_turn(client, sock, poller, napped, misc_due)
                if turn is None:
                    break
                napped = turn
            if client.want_write():
                # Non-blocking: whatever the socket does not take stays queued in paho, and the
                # next turn polls for POLLOUT.
                if client.loop_write():
                    break
            now = time.monotonic()
            if now >= misc_due:
                if client.loop_misc():
                    break
                misc_due = now + self._misc_every
        self._reader.notify()   # a turn that ended in `break` after its read
        up_for = (time.monotonic() - t_up) if t_up is not None else 0.0
        if self._stop.is_set() and client.socket() is not None:
            self._disconnect(client)
        return up_for

    def _python_turn(self, client: FastClient, sock: Any, poller: Any, napped: bool,
                     misc_due: float) -> bool | None:
        """One turn of the Python read loop (TLS, or paho has bytes to send): poll, read, nap.
        Returns whether it napped (the next turn reads without polling), None to end the
        session."""
        reader = self._reader
        wake = self._wake_r
        if napped:
            # Straight to the read after a nap: dense traffic left data there (if not, the
            # read finds none, no nap follows and the next turn polls).
            ev, waited = select.POLLIN, 0.0
        else:
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            poller.modify(sock, select.POLLIN | (select.POLLOUT if client.want_write() else 0))
            t_poll = time.monotonic()
            timeout = 0 if pending else max(0, math.ceil((misc_due - t_poll) * 1000.0))
            # the doorbell rings before the poll (see below)
            reader.notify()
            try:
                events = dict(poller.poll(min(timeout, 1000)))
            except (OSError, ValueError):   # the socket was closed under us
                return None
            waited = time.monotonic() - t_poll
            if wake.fileno() in events:
                self._drain_wake()
            ev = events.get(sock.fileno(), 0)
            if pending:
                ev |= select.POLLIN
        n = 0
        # POLLHUP/POLLERR too: the read then sees the EOF or the error and closes properly.
        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
            # after a nap, the broker may hold bytes back until this read's ACK (Nagle):
            # the client reads a second time and ACKs at once (mqtt_client.py)
            client.tc_after_nap = napped
            if client.loop_read():
                return None
            n = client.tc_read_bytes
        # Coalescing: when the data was already there or came within a nap's length (dense
        # traffic), sleep one nap and then read, so that one read takes all that arrived
        # meanwhile: one wake-up, one read, one parse and one doorbell ring (one engine
        # wake-up) per nap instead of per message. Sparse traffic (the poll waited longer)
        # is read as it comes, so a lone message gains no latency; dense traffic gains at
        # most one nap. Not after a big read (we are behind: catch up first), and not after
        # a read that owed PUBACKs: the broker sends at most its inflight window of
        # unacknowledged QoS 1 messages (mosquitto: max_inflight_messages, 20 by default),
        # so napping on them would cap the rate at one window per nap. QoS 0 deliveries
        # (QoS 0 publishers, the usual telemetry case, whatever our subscription's QoS) are
        # coalesced. FrameReader.pump applies the same rule (with a nap that adapts to the
        # rate under the same ceiling); this Python turn naps the ceiling.
        # The doorbell for this turn's records rings just before this thread sleeps (nap or
        # poll) and gives up the GIL: the engine thread then wakes into a free GIL instead of
        # waking once more when the GIL is handed over. Before a nap the ring and the sleep
        # are one call without the GIL (FrameReader.nap). Every commit is followed by a ring
        # before the next sleep (and after the loop), so none is stranded.
        napped = bool(n and waited < self._coalesce and n < self._nap_skip_bytes
                      and not client.tc_read_acks and not client.want_write())
        if napped:
            self._naps += 1
            # the wake-up socket alone: stop() cuts the nap short, data does not
            if reader.nap(wake.fileno(), self._coalesce):
                napped = False   # stop() rang: the next turn polls and drains the wake
        return napped

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass

    def _disconnect(self, client: FastClient) -> None:
        """Clean DISCONNECT (v5: the session expiry from CONNECT applies), bounded in time."""
        try:
            client.disconnect()
            deadline = time.monotonic() + 2.0
            while client.want_write() and time.monotonic() < deadline:
                sock: Any = client.socket()
                if sock is None:
                    break
                select.select([], [sock], [], 0.1)   # one descriptor: select is fine here
                if client.loop_write():
                    break
        except (OSError, ValueError):
            pass
        finally:
            if client.socket() is not None:
                client._sock_close()

    def _connection_ended(self) -> None:
        self._reader.notify()   # also when the session ended in an exception after a read
        was = self._conn.connected
        if self._stop.is_set():
            self._conn.stop()   # a disconnect we asked for is no outage
        else:
            self._conn.down()
        self._ready.clear()
        if was and not self._stop.is_set():
            log.warning("%s: connection lost (%s)", self._url,
                        self._conn_error or "closed by the broker or the network")

    # ---- paho callbacks (network thread, inside loop_read) ---------------------------------------

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            with self._lock:
                self._connect_failures += 1
            self._note_error(f"{self._url} refused the connection: {reason}")
            return
        with self._lock:
            self._session_present = bool(flags.session_present)
        self._conn.up()
        log.info("%s: connected (session present: %s)", self._url, flags.session_present)
        # Resubscribe on every connect: a clean session has no subscriptions, and re-sending them
        # to a resumed session is harmless.
        rc, mid = client.subscribe([(t, self._sub_options) for t in self._topics])
        if rc:
            self._note_error(f"SUBSCRIBE failed: {paho.error_string(rc)}")
        self._sub_mid = mid

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid != self._sub_mid:
            return
        bad = [(t, str(rc)) for t, rc in zip(self._topics, reason_codes) if rc.is_failure]
        if bad:
            self._note_error(f"subscription refused: {bad}")
            return
        self._ready.set()

    def _on_slow_message(self, client, userdata, msg) -> None:
        # PUBLISH QoS 2 only (the frame reader takes QoS 0/1). Same thread as the frame reader, so
        # the ring still has one producer.
        slow = self._slow
        slow["received"] += 1
        payload = msg.payload
        if len(payload) > self._max_payload:
            slow["oversize"] += 1
            return
        topic = getattr(msg, "_topic", None)
        if not isinstance(topic, bytes):
            topic = msg.topic.encode("utf-8")
        # the PUBLISH header's DUP/QoS/RETAIN bits, as the frame reader stores them for QoS 0/1
        flags = (0x08 if msg.dup else 0) | (msg.qos << 1) | (0x01 if msg.retain else 0)
        try:
            ok = self._ring.try_push(time.time(), topic, bytes(payload), flags)
        except ValueError:
            slow["oversize"] += 1
            return
        if ok:
            slow["written"] += 1
            slow["payload_bytes"] += len(payload)
        else:
            slow["ingest_full"] += 1
