"""The paho-mqtt client with the compiled receive path.

paho-mqtt keeps what it is good at -- CONNECT and its properties, SUBSCRIBE, keepalive/PINGREQ,
the handling of every packet that is not a PUBLISH QoS 0/1, TLS -- and ``FastClient`` replaces
paho's ``loop_read`` (one ``recv`` per byte of header, one ``MQTTMessage`` per packet) with one big
``recv_into`` per readable event and ``FrameReader.feed``, which writes every PUBLISH QoS 0/1
straight into the ring without the GIL and without a Python object per message. On plain TCP,
``tc_pump`` goes further: whole read turns (poll, read, parse, doorbell, coalescing nap) run in
``FrameReader.pump`` without the GIL, and come back here only for what needs paho.

Ownership: a FastClient, its FrameReader and the reader's receive buffer belong to the one network
thread of ``MqttSource`` (see mqtt_source.py); every method here runs on that thread.

Acknowledgements: the PUBACKs for the QoS 1 PUBLISH frames of one socket read go out as one blob
through paho's out-queue (``_packet_queue``), after ``feed`` returned, i.e. after the records were
committed to the ring. A record dropped for ``ingest_full`` or ``oversize`` is acknowledged too (and
counted): the broker cannot keep it for us without stalling the subscription (mosquitto stops
delivering once its inflight window is full) and would redeliver it into the same full ring.

Private paho members relied upon are listed in ``PAHO_PRIVATE_MEMBERS`` and checked by
``tests/test_mqtt.py::test_paho_internals_we_rely_on``; the supported range is pinned in
pyproject.toml (``paho-mqtt>=2.1,<2.3``; 2.1 names the last-receive time ``_last_msg_in``, 2.2
``_last_bytes_received``, both handled).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from telemetry_cy.backend import available, load

__all__ = ["FastClient", "PAHO_PRIVATE_MEMBERS", "PAHO_LAST_IN_NAMES"]

#: paho internals the fast client uses (names on a ``paho.mqtt.client.Client`` instance or class).
PAHO_PRIVATE_MEMBERS: tuple[str, ...] = (
    "_sock",                 # the connected socket (plain or SSL) we recv_into
    "_in_packet",            # the "current incoming packet" dict _packet_handle reads
    "_packet_handle",        # dispatch of one complete incoming packet (CONNACK, SUBACK, ...)
    "_packet_queue",         # the ordered out-queue: our PUBACK blobs go through it
    "_loop_rc_handle",       # close + on_disconnect on an error code
    "_msgtime_mutex",        # guards the last-receive time below
    "_call_socket_register_write",  # SSL wants a write during a read
    "_sock_close",           # drop the socket (CONNACK timeout)
    "_state",                # connection state, for the CONNACK/keepalive logic
)
#: One of these holds the time of the last received bytes, read by loop_misc's keepalive check.
PAHO_LAST_IN_NAMES: tuple[str, ...] = ("_last_bytes_received", "_last_msg_in")

#: Either twin's protocol error.
_FRAME_ERRORS: tuple[type[Exception], ...] = tuple(load(n).FrameError for n in available())
#: FrameReader.pump's results, numbered alike by both twins
_PUMP_CLOSED: int = load("pure").frames.PUMP_CLOSED
_PUMP_ERROR: int = load("pure").frames.PUMP_ERROR

_PUBACK = 0x40
_IPPROTO_TCP = socket.IPPROTO_TCP
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)   # Linux's value; elsewhere setsockopt fails
_Malformed: type[Exception]
try:  # paho 2.2 raises MalformedPacket from its decoders, 2.1 struct.error / IndexError
    from paho.mqtt.exception import MalformedPacket as _Malformed
except ImportError:  # pragma: no cover - paho 2.1
    _Malformed = ValueError
_DECODE_ERRORS = (_Malformed, struct.error, IndexError, ValueError, UnicodeDecodeError)


def _empty_in_packet() -> Any:
    # paho types it as a TypedDict of its own; this is the value paho itself resets it to
    return {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}


class FastClient(paho.Client):
    """paho Client whose ``loop_read`` reads big chunks into a FrameReader.

    ``on_error(text)`` hears why a read or a packet failed (the connection then ends through
    paho's own ``_loop_rc_handle``); ``on_protocol_error()`` counts a packet paho rejected.
    """

    def __init__(self, reader: Any, on_error: Callable[[str], None],
                 on_protocol_error: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tc_reader = reader
        self._tc_on_error = on_error
        self._tc_on_protocol_error = on_protocol_error
        # paho 2.2 calls it _last_bytes_received, 2.1 _last_msg_in.
        self._tc_last_in = next(n for n in PAHO_LAST_IN_NAMES if hasattr(self, n))
        #: What the last loop_read brought: bytes received, and whether it owed PUBACKs (QoS 1).
        #: The network thread's nap (mqtt_source.py) reads them; both belong to that thread.
        self.tc_read_bytes = 0
        self.tc_read_acks = False
        #: Set by the network thread before loop_read: this read follows a coalescing nap.
        self.tc_after_nap = False
        #: False: feed leaves the doorbell to the network thread (FrameReader.notify()).
        self.tc_notify = True

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        sock: Any = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        is_ssl = isinstance(sock, ssl.SSLSocket)
        self.tc_read_bytes = 0
        self.tc_read_acks = False
        # TLS hands out at most one record (16 KiB) per call: drain what is already decrypted and
        # readable, up to a buffer's worth, so a TLS connection also costs one feed per ~1 MiB.
        # Plain TCP: one recv_into per readable event (two after a coalescing nap: _tc_reread).
        for _ in range(64 if is_ssl else 1):
            reader = self._tc_reader
            try:
                buf = reader.writable()
                n = sock.recv_into(buf)
                if n and self.tc_after_nap and not is_ssl and n < len(buf):
                    n += self._tc_reread(sock, buf[n:])
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except ssl.SSLWantWriteError:
                self._call_socket_register_write()
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except OSError as err:
                self._tc_on_error(f"receive failed: {err}")
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            if n == 0:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            self.tc_read_bytes += n
            with self._msgtime_mutex:
                # loop_misc's keepalive reads this: bytes arrived, the connection is alive.
                setattr(self, self._tc_last_in, paho.time_func())
            rc = self._tc_feed(n)
            if rc or self._sock is None:
                return rc
            if not is_ssl or not sock.pending():
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    @staticmethod
    def _tc_reread(sock: Any, buf: Any) -> int:
        """The read after a nap, again: mosquitto (like most brokers) leaves Nagle on, so while
        the bytes it sent before the nap are unacknowledged it holds the rest back; the first
        read's ACK releases them, on loopback usually before that read returns. This second read
        takes them now instead of one nap later, and TCP_QUICKACK sends the ACK for what it
        read at once rather than on the 40 ms delayed-ACK timer, during which the broker would
        hold everything back again."""
        try:
            m = sock.recv_into(buf)   # 0 (EOF): the next poll sees it again
        except (BlockingIOError, InterruptedError):
            m = 0
        try:
            sock.setsockopt(_IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:   # not TCP (a test's socketpair), or not Linux
            pass
        return m

    def tc_pump(self, wake: Any, ceiling: float, until: float) -> tuple[MQTTErrorCode, int, int]:
        """Plain TCP only: read turns in the frame reader without the GIL (FrameReader.pump:
        poll, read, parse into the ring, ring the doorbell, nap) until ``until``
        (time.monotonic()), a read that owes PUBACKs or brings other packets (handled here as
        loop_read does), ``wake`` readable, or the connection's end. Returns ``(rc, why,
        naps)``; ``why`` is the pump's reason (FrameReader's PUMP_* numbers)."""
        sock: Any = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN, _PUMP_CLOSED, 0
        error = None
        try:
            why, err, acks, packets, nbytes, naps = self._tc_reader.pump(sock, wake, ceiling, until)
        except _FRAME_ERRORS as exc:
            why, err, nbytes, naps = _PUMP_ERROR, 0, 0, 0
            acks, packets, error = getattr(exc, "acks"), getattr(exc, "packets"), exc
        if nbytes:
            with self._msgtime_mutex:
                # loop_misc's keepalive reads this: bytes arrived, the connection is alive.
                setattr(self, self._tc_last_in, paho.time_func())
        if error is None and why == _PUMP_CLOSED:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST), why, naps
        if error is None and why == _PUMP_ERROR:
            self._tc_on_error(f"receive failed: {os.strerror(err)}")
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST), why, naps
        return self._tc_handle(acks, packets, error), why, naps

    def _tc_feed(self, n: int) -> MQTTErrorCode:
        error = None
        try:
            acks, packets = self._tc_reader.feed(n, time.time(), self.tc_notify)
        except _FRAME_ERRORS as exc:
            acks, packets, error = getattr(exc, "acks"), getattr(exc, "packets"), exc
        return self._tc_handle(acks, packets, error)

    def _tc_handle(self, acks: bytes | None, packets: list[tuple[int, bytes]],
                   error: Exception | None) -> MQTTErrorCode:
        """After a read's records are in the ring: the other packets to paho, then the PUBACKs,
        then the protocol error, if any."""
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        for cmd, body in packets:
            # paho's own handling: CONNACK, SUBACK, PINGRESP, DISCONNECT, PUBLISH QoS 2, ...
            in_packet = _empty_in_packet()
            in_packet.update(command=cmd, have_remaining=1, remaining_length=len(body),
                             packet=bytearray(body))
            self._in_packet = in_packet
            try:
                rc = self._packet_handle()
            except _DECODE_ERRORS as exc:
                self._tc_on_error(f"malformed packet 0x{cmd:02x} from the broker: {exc}")
                rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
            finally:
                self._in_packet = _empty_in_packet()
            if rc == MQTTErrorCode.MQTT_ERR_PROTOCOL:
                self._tc_on_protocol_error()
            if rc or self._sock is None:
                break
        if acks:
            self.tc_read_acks = True
        if acks and self._sock is not None:
            # After the commit (feed returned) and through paho's queue: never interleaved with
            # paho's own writes. Sent even when a protocol error follows: those records are in.
            self._packet_queue(_PUBACK, acks, 0, 0)
        if error is not None and not rc:
            self._tc_on_error(str(error))
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
        if rc:
            return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
