"""``telemetry-cy replay``: a capture republished into a broker, with its original spacing
(divided by ``speed``) or as fast as the broker takes it.

The publisher is the load tool's raw-socket MQTT 3.1.1 client (tools/mqtt_loadgen.py), plus what a
faithful replay needs on top: QoS 1 and 2 acknowledgements (PUBREC is answered with PUBREL), packet
identifiers of our own with a bounded number in flight, and the retain flag. Order: mosquitto
forwards a QoS 2 message when it receives our PUBREL, so after a QoS 2 message nothing more is
sent until its PUBREL is out; QoS 0 and 1 messages are forwarded on receipt, in order.

At ``speed`` max, a block whose records are all QoS 0 is sent as it is stored: the format keeps
records as MQTT PUBLISH packets (docs/capture.md), so such a block is one ``sendall``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from telemetry_cy.capture.format import Message
from telemetry_cy.capture.reader import Capture
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, publish_frame

_PUBACK, _PUBREC, _PUBCOMP = 0x40, 0x50, 0x70
_PUBREL = 0x62
#: QoS 1/2 messages awaiting their acknowledgement at most (then the sender waits).
MAX_IN_FLIGHT = 1000
#: Frames per write when nothing forces an earlier one.
BATCH = 1000
#: How long to wait for the last acknowledgements before disconnecting.
ACK_TIMEOUT = 10.0


class AckingPublisher(RawPublisher):
    """RawPublisher that completes QoS 1 and 2 flows and hands out packet identifiers.

    Threads: the caller sends; the acknowledgement reader thread (started by RawPublisher) answers
    PUBREC with PUBREL. Both write to the socket, so every write holds ``_write_lock``.
    """

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self._write_lock = threading.Lock()
        self._state = threading.Condition()
        self._in_flight: dict[int, int] = {}   # packet id -> QoS, until PUBACK / PUBCOMP
        self._released: set[int] = set()        # QoS 2 ids whose PUBREL is out
        self._next_id = 0
        self.closed_error: str | None = None
        super().__init__(host, port, client_id)

    def send(self, frames) -> None:
        with self._write_lock:
            super().send(frames)

    def _read_acks(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self._fail("the broker closed the connection")
                    return
                buf += data
                # every packet a broker sends a publisher here is 4 bytes: type, 2, packet id
                while len(buf) >= 4:
                    kind, pid = buf[0] & 0xF0, (buf[2] << 8) | buf[3]
                    buf = buf[4:]
                    self._on_ack(kind, pid)
        except OSError as exc:
            self._fail(f"connection lost: {exc}")

    def _on_ack(self, kind: int, pid: int) -> None:
        if kind == _PUBREC:
            with self._write_lock:
                self.sock.sendall(bytes((_PUBREL, 2, pid >> 8, pid & 0xFF)))
        with self._state:
            if kind == _PUBREC:
                self._released.add(pid)
            elif kind in (_PUBACK, _PUBCOMP):
                self._in_flight.pop(pid, None)
                self._released.discard(pid)
                self.acks += 1
            self._state.notify_all()

    def _fail(self, why: str) -> None:
        with self._state:
            self.closed_error = self.closed_error or why
            self._state.notify_all()

    def _check(self) -> None:
        if self.closed_error:
            raise ConnectionError(self.closed_error)

    def take_id(self, qos: int) -> int:
        """A free packet identifier, waiting while MAX_IN_FLIGHT are outstanding."""
        with self._state:
            while len(self._in_flight) >= MAX_IN_FLIGHT and not self.closed_error:
                self._state.wait(1.0)
            self._check()
            while True:
                self._next_id = self._next_id % 0xFFFF + 1
                if self._next_id not in self._in_flight:
                    self._in_flight[self._next_id] = qos
                    return self._next_id

    def wait_released(self, pid: int) -> None:
        """Until the QoS 2 message ``pid`` has had its PUBREL sent (or is complete)."""
        with self._state:
            while pid in self._in_flight and pid not in self._released:
                self._check()
                self._state.wait(1.0)

    @property
    def in_flight(self) -> int:
        with self._state:
            return len(self._in_flight)

    def wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._state:
            while self._in_flight and not self.closed_error:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state.wait(left)
            return not self._in_flight


def frame_of(msg: Message, pid: int = 0) -> bytes:
    frame = publish_frame(msg.topic, msg.payload, msg.qos, pid)
    return bytes((frame[0] | 0x01,)) + frame[1:] if msg.retain else frame


@dataclass
class ReplayResult:
    sent: int = 0
    by_qos: list[int] = field(default_factory=lambda: [0, 0, 0])
    retained: int = 0
    seconds: float = 0.0
    torn: list[str] = field(default_factory=list)
    unacked: int = 0

    def as_dict(self) -> dict:
        return {"sent": self.sent, "qos0": self.by_qos[0], "qos1": self.by_qos[1],
                "qos2": self.by_qos[2], "retained": self.retained,
                "seconds": round(self.seconds, 3),
                "rate": round(self.sent / self.seconds, 1) if self.seconds > 0 else None,
                "unacked": self.unacked, "torn": self.torn}


class Replayer:
    """Sends one capture through ``publisher``; ``speed`` None is as fast as possible."""

    def __init__(self, publisher: AckingPublisher, speed: float | None,
                 stop: threading.Event | None = None) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None (as fast as possible), got {speed!r}")
        self.pub, self.speed, self.stop = publisher, speed, stop or threading.Event()
        self.result = ReplayResult()
        self._batch: list[bytes] = []
        self._origin: tuple[float, float] | None = None   # (capture ts, monotonic) of the first

    def _flush(self) -> None:
        if self._batch:
            self.pub.send(self._batch)
            self._batch = []

    def _pace(self, ts: float) -> None:
        if self.speed is None:
            return
        if self._origin is None:
            self._origin = (ts, time.monotonic())
            return
        due = self._origin[1] + (ts - self._origin[0]) / self.speed
        wait = due - time.monotonic()
        if wait > 0.001:
            self._flush()
            self.stop.wait(wait)

    def _message(self, msg: Message) -> None:
        self._pace(msg.ts)
        r = self.result
        r.sent += 1
        r.by_qos[msg.qos] += 1
        r.retained += msg.retain
        if msg.qos == 0:
            self._batch.append(frame_of(msg))
        else:
            pid = self.pub.take_id(msg.qos)
            self._batch.append(frame_of(msg, pid))
            if msg.qos == 2:
                # mosquitto forwards it on our PUBREL: nothing after it may overtake it
                self._flush()
                self.pub.wait_released(pid)
        if len(self._batch) >= BATCH:
            self._flush()

    def run(self, capture: Capture) -> ReplayResult:
        started = time.monotonic()
        for chunk in capture.chunks():
            if self.stop.is_set():
                break
            stream = chunk.publish_stream() if self.speed is None else None
            if stream is not None:
                self._flush()
                self.pub.send([stream])
                self.result.sent += len(chunk)
                self.result.by_qos[0] += len(chunk)
                continue
            for msg in chunk.messages():
                if self.stop.is_set():
                    break
                self._message(msg)
        self._flush()
        if not self.pub.wait_all(ACK_TIMEOUT):
            self.result.unacked = self.pub.in_flight
        self.result.seconds = time.monotonic() - started
        self.result.torn = [str(t) for t in capture.torn]
        return self.result
