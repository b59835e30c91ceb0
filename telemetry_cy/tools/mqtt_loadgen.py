"""A fast MQTT 3.1.1 publisher over a raw socket: pre-built PUBLISH frames, batched writes, rate
pacing. It drives the demo's simulated fleet and the load generator in perf/; paho's per-message
Python path would be the bottleneck there, not the system under test.

Loopback use only: it is a load tool, not a general client (no TLS, no reconnect).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def connect_frame(client_id: str, keepalive: int = 0, clean: bool = True) -> bytes:
    variable = _utf8("MQTT") + bytes([4, 0x02 if clean else 0]) + struct.pack("!H", keepalive)
    body = variable + _utf8(client_id)
    return b"\x10" + remaining_length(len(body)) + body


def publish_frame(topic: str | bytes, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = _utf8(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(body)) + body


class RawPublisher:
    """QoS 0 publisher (QoS 1 frames are sent too; their PUBACKs are read and counted)."""

    def __init__(self, host: str, port: int, client_id: str = "telemetry-cy-publisher",
                 timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_frame(client_id))
        ack = self._read_exact(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"broker refused the connection (CONNACK {ack.hex()})")
        self.sock.settimeout(None)
        self.sent = 0
        self.bytes = 0
        self.acks = 0
        self._reader = threading.Thread(target=self._read_acks, daemon=True)
        self._reader.start()

    def _read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    def _read_acks(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                # PUBACKs are 4 bytes each; nothing else arrives on a publish-only connection
                self.acks += len(data) // 4
        except OSError:
            return

    def send(self, frames: Iterable[bytes]) -> None:
        blob = b"".join(frames)
        self.sock.sendall(blob)
        self.bytes += len(blob)

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def paced(publisher: RawPublisher, make_frames: Callable[[float, int], list[bytes]], rate: float,
          duration: float, stop: threading.Event | None = None, tick: float = 0.01) -> int:
    """Sends make_frames(now, n) at `rate` frames per second for `duration` seconds (0: until
    `stop` is set). Returns the number of frames sent."""
    start = time.monotonic()
    asked = 0   # paces the clock; make_frames may return fewer (a silent device, say)
    before = publisher.sent
    while not (stop and stop.is_set()):
        elapsed = time.monotonic() - start
        if duration and elapsed >= duration:
            break
        due = int(elapsed * rate) - asked
        if due > 0:
            frames = make_frames(time.time(), due)
            publisher.send(frames)
            publisher.sent += len(frames)
            asked += due
        time.sleep(tick)
    return publisher.sent - before
