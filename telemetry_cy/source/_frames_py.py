"""Pure-Python twin of ``telemetry_cy.source._frames`` (``FrameReader``, ``FrameError``).

Same behaviour, step for step, as ``includes/mqtt_frames.h``: the same packets become records, the
same PUBACK blobs and other packets come back, the same counters move, and the same byte streams
are protocol errors (``tests/test_frames.py`` runs one suite against both and compares them on
arbitrary bytes). It is the oracle for the compiled reader and the reader itself when
``TELEMETRY_CY_PURE=1``. It writes through ``ring.try_push``, so it works with either ring.

Thread rule: like the compiled one, a reader belongs to the network thread; ``counters()`` may be
called from anywhere (under the GIL every counter is a plain int).
"""

from __future__ import annotations

import errno as _errno
import math
import select
import socket
import time
from typing import Any, Literal

MIN_BUFFER_BYTES = 64
MAX_BUFFER_BYTES = 1 << 30

# pump() results (why it returned)
PUMP_DEADLINE = 0   # `until` passed: the caller's own turn is due (keepalive, stop flag)
PUMP_PACKETS = 1    # a read owes PUBACKs or brought packets for paho: they come with it
PUMP_WAKE = 2       # the wake-up descriptor became readable (stop())
PUMP_CLOSED = 3     # the peer closed the connection (recv returned 0)
PUMP_ERROR = 4      # recv failed; the errno comes with it

# The coalescing nap of pump() (docs/ingest.md, "Coalesced wake-ups"); both twins read these.
#: A read that fills this share of the receive buffer means we are behind: no nap after it.
NAP_SKIP_FILL = 0.25
#: A nap long enough for this many records at the measured rate, never longer than the
#: caller's ceiling: one nap's fixed cost (two sleeps and wake-ups, one per thread, the reads,
#: the doorbell: ~60 us of CPU on the AMD guest of docs/performance.md) spread over enough
#: records to cost ~0.25 us each, and no longer a wait than that needs. Below ~64k msg/s (with
#: the 4 ms default ceiling) the nap is the ceiling; above, it shortens with the rate.
NAP_TARGET_RECORDS = 256
#: The shortest nap (at the highest rates): below it a nap saves less than it costs.
NAP_FLOOR_S = 0.0005
#: Weight of the newest read in the smoothed rate (records between two reads over their time).
RATE_GAIN = 0.25
#: The compiled reader's hand-off (includes/tc_park.h): a turn that committed at most this many
#: records drains them into the parked engine itself (no wake-up of the engine thread) when the
#: engine is lent; a bigger turn rings the doorbell, so that at high rates both threads work. With
#: the 4 ms nap ceiling: lent below ~32k msg/s. This twin never lends (its ring's ``try_push``
#: notifies on every record; the pure engine parks in Python): the compiled pump is tested against
#: the pure engine as oracle instead (tests/test_lend.py).
LEND_MAX_RECORDS = 128
_IPPROTO_TCP = socket.IPPROTO_TCP
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


def _quickack(sock: Any) -> None:
    try:
        sock.setsockopt(_IPPROTO_TCP, _TCP_QUICKACK, 1)
    except OSError:   # not TCP (a test's socketpair), or not Linux
        pass


def nap_length(ceiling: float, rate: float) -> float:
    """The nap pump() takes at ``rate`` records/s under a ``ceiling`` (seconds)."""
    nap = ceiling
    if rate > 0.0 and NAP_TARGET_RECORDS / rate < nap:
        nap = max(NAP_TARGET_RECORDS / rate, min(NAP_FLOOR_S, ceiling))
    return nap

_PUBLISH = 3
_MIN_QOS1_PUBLISH = 6


class FrameError(ValueError):
    """The byte stream is not valid MQTT: drop the connection (and reconnect).

    ``acks`` (PUBACK blob or None) and ``packets`` (non-PUBLISH packets) are what the read produced
    before the error; the records before it are already in the ring.
    """

    def __init__(self, message: str, acks: bytes | None = None,
                 packets: list[tuple[int, bytes]] | None = None) -> None:
        super().__init__(message)
        self.acks = acks
        self.packets = packets if packets is not None else []


def _check_args(protocol: object, max_payload_bytes: object, buffer_bytes: object) -> None:
    if protocol not in (3, 4, 5):
        raise ValueError(f"protocol must be 3 or 4 (MQTT 3.1/3.1.1) or 5, got {protocol!r}")
    if (not isinstance(buffer_bytes, int)
            or not MIN_BUFFER_BYTES <= buffer_bytes <= MAX_BUFFER_BYTES):
        raise ValueError(f"buffer_bytes must be an int in [{MIN_BUFFER_BYTES}, "
                         f"{MAX_BUFFER_BYTES}], got {buffer_bytes!r}")
    if not isinstance(max_payload_bytes, int) or max_payload_bytes < 0:
        raise ValueError(f"max_payload_bytes must be an int >= 0, got {max_payload_bytes!r}")


def _varint(buf: bytearray, p: int, avail: int) -> tuple[int, int] | None | Literal[False]:
    """(value, bytes used), None when more bytes are needed, False when malformed (5th byte)."""
    v = 0
    for i in range(4):
        if i >= avail:
            return None
        b = buf[p + i]
        v |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return v, i + 1
    return False


class _Error(Exception):
    pass


class FrameReader:
    """MQTT frame reader feeding a ring. See ``_frames.pyi``."""

    def __init__(self, ring, *, protocol: int = 5, max_payload_bytes: int = 65536,
                 buffer_bytes: int = 1 << 20) -> None:
        if ring is None:
            raise TypeError("ring must be a ByteRing, not None")
        _check_args(protocol, max_payload_bytes, buffer_bytes)
        self.ring = ring
        self._protocol = protocol
        self._v5 = protocol == 5
        self._cap = buffer_bytes
        self._max_payload = max_payload_bytes
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        self._fill = 0
        self._skip = 0
        self._broken = False
        self._rate = 0.0        # pump(): records/s between reads, smoothed
        self._last_read = 0.0   # pump(): time.monotonic() of the last read
        self._interrupted = False   # interrupt(): cut the next nap of pump() short
        self._c = dict.fromkeys(("received", "written", "payload_bytes", "oversize", "ingest_full",
                                 "acked", "protocol_errors", "bytes"), 0)

    def writable(self) -> memoryview:
        """The free part of the receive buffer, for ``sock.recv_into``. Never empty."""
        return self._view[self._fill:]

    def feed(self, nbytes: int, ts: float,
             notify: bool = True) -> tuple[bytes | None, list[tuple[int, bytes]]]:
        """Parse the ``nbytes`` just received into ``writable()``. Returns ``(acks, packets)``.

        ``notify`` is accepted for the compiled reader's sake: ``ring.try_push`` wakes the
        consumer for every record here, so there is never a ring left for ``notify()``."""
        if self._broken:
            raise FrameError("the reader hit a protocol error; reset() it for a new connection")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError("nbytes must be an int")
        if nbytes < 0 or nbytes > self._cap - self._fill:
            raise ValueError(
                f"nbytes={nbytes} is outside [0, {self._cap - self._fill}] (the writable() size)")
        ts = float(ts)
        c = self._c
        c["bytes"] += nbytes
        end = self._fill + nbytes
        acks: list[int] = []
        packets: list[tuple[int, bytes]] = []
        err = None
        try:
            pos = self._parse(end, ts, acks, packets)
        except _Error as exc:
            err = str(exc)
            pos = 0
        blob = None
        if acks:
            blob = b"".join(bytes((0x40, 2, pid >> 8, pid & 0xFF)) for pid in acks)
            c["acked"] += len(acks)
        if err is not None:
            self._broken = True
            c["protocol_errors"] += 1
            raise FrameError(f"MQTT protocol error: {err}", blob, packets)
        left = end - pos
        if left and pos:
            self._buf[:left] = self._buf[pos:end]
        self._fill = left
        return blob, packets

    def _parse(self, end: int, ts: float, acks: list[int], packets: list[tuple[int, bytes]]) -> int:
        buf = self._buf
        c = self._c
        p = 0
        if self._skip:
            d = min(self._skip, end)
            p += d
            self._skip -= d
            if self._skip:
                return p
        while p < end:
            avail = end - p
            if avail < 2:
                break
            vr = _varint(buf, p + 1, avail - 1)
            if vr is False:
                raise _Error("malformed remaining length (continuation bit set in its 4th byte)")
            if vr is None:
                break
            rl, vlen = vr
            cmd = buf[p]
            ptype = cmd >> 4
            qos = (cmd >> 1) & 3
            hdr = 1 + vlen
            total = hdr + rl
            if ptype == 0:
                raise _Error("reserved packet type 0")
            if ptype == _PUBLISH and qos == 3:
                raise _Error("PUBLISH with QoS 3")
            if ptype != _PUBLISH or qos == 2:
                if total > avail:
                    if total > self._cap:
                        raise _Error("packet larger than the receive buffer")
                    break
                packets.append((cmd, bytes(buf[p + hdr:p + total])))
                p += total
                continue
            need_id = 4 if qos else 2
            if total > avail:
                if total <= self._cap:
                    break
                if avail < hdr + 2:
                    break
                tlen = (buf[p + hdr] << 8) | buf[p + hdr + 1]
                need = hdr + need_id + tlen
                if need_id + tlen > rl:
                    raise _Error("PUBLISH topic longer than the packet")
                if need > self._cap:
                    raise _Error("PUBLISH header larger than the receive buffer")
                if avail < need:
                    break
                if qos:
                    i = p + hdr + 2 + tlen
                    pid = (buf[i] << 8) | buf[i + 1]
                    if pid == 0:
                        raise _Error("PUBLISH QoS 1 with packet id 0")
                    acks.append(pid)
                c["received"] += 1
                c["oversize"] += 1
                self._skip = total - avail
                p = end
                break
            q = p + hdr
            rem = rl
            if rem < need_id:
                raise _Error("PUBLISH shorter than its variable header")
            tlen = (buf[q] << 8) | buf[q + 1]
            if tlen > rem - need_id:
                raise _Error("PUBLISH topic longer than the packet")
            topic = bytes(buf[q + 2:q + 2 + tlen])
            off = 2 + tlen
            pid = 0
            if qos:
                pid = (buf[q + off] << 8) | buf[q + off + 1]
                off += 2
                if pid == 0:
                    raise _Error("PUBLISH QoS 1 with packet id 0")
            if self._v5:
                pv = _varint(buf, q + off, rem - off)
                if not pv:
                    raise _Error("PUBLISH with a malformed properties length")
                plen, pused = pv
                off += pused
                if plen > rem - off:
                    raise _Error("PUBLISH properties longer than the packet")
                off += plen
            paylen = rem - off
            c["received"] += 1
            if paylen > self._max_payload:
                c["oversize"] += 1
            else:
                try:
                    # the fixed header's DUP/QoS/RETAIN nibble rides along (mqtt_frames.h)
                    ok = self.ring.try_push(ts, topic, bytes(buf[q + off:q + rem]), cmd & 0x0F)
                except ValueError:   # larger than the ring's max record
                    c["oversize"] += 1
                else:
                    if ok:
                        c["written"] += 1
                        c["payload_bytes"] += paylen
                    else:
                        c["ingest_full"] += 1
            if qos:
                acks.append(pid)
            p += total
        return p

    def pump(self, sock: Any, wake: Any, ceiling: float, until: float
             ) -> tuple[int, int, bytes | None, list[tuple[int, bytes]], int, int]:
        """Read turns until Python is needed: the compiled reader's loop, step for step (there
        without the GIL). Returns ``(why, errno, acks, packets, nbytes, naps)``."""
        if self._broken:
            raise FrameError("the reader hit a protocol error; reset() it for a new connection")
        ceiling = float(ceiling)
        until = float(until)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(wake.fileno(), select.POLLIN)
        wake_fd = wake.fileno()
        skip_bytes = int(self._cap * NAP_SKIP_FILL)
        nbytes = naps = 0
        after_nap = ack_due = False
        try:
            while True:
                if not after_nap:
                    if ack_due:   # no ACK left delayed over a sleep (the broker's Nagle)
                        _quickack(sock)
                        ack_due = False
                    t_poll = time.monotonic()
                    if t_poll >= until:
                        return PUMP_DEADLINE, 0, None, [], nbytes, naps
                    try:
                        events = dict(poller.poll(min(1000, int((until - t_poll) * 1000.0) + 1)))
                    except InterruptedError:
                        continue
                    except OSError as exc:
                        return PUMP_ERROR, exc.errno or 0, None, [], nbytes, naps
                    if events.get(wake_fd):
                        self._interrupted = False   # stop() rang both
                        return PUMP_WAKE, 0, None, [], nbytes, naps
                    if not events.get(sock.fileno(), 0) & (select.POLLIN | select.POLLHUP
                                                           | select.POLLERR):
                        continue
                    waited = time.monotonic() - t_poll
                else:
                    waited = 0.0
                buf = self.writable()
                try:
                    n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
                except InterruptedError:
                    continue
                except BlockingIOError:
                    after_nap = False
                    continue
                except OSError as exc:
                    return PUMP_ERROR, exc.errno or _errno.EIO, None, [], nbytes, naps
                if n == 0:
                    return PUMP_CLOSED, 0, None, [], nbytes, naps
                ack_due = True
                if after_nap and n < len(buf):
                    try:
                        n += sock.recv_into(buf[n:], 0, socket.MSG_DONTWAIT)
                    except OSError:
                        pass
                now = time.monotonic()
                nbytes += n
                received = self._c["received"]
                acks, packets = self.feed(n, time.time())   # FrameError: raised to the caller
                if self._last_read > 0.0 and now > self._last_read:
                    inst = (self._c["received"] - received) / (now - self._last_read)
                    self._rate += (inst - self._rate) * RATE_GAIN
                self._last_read = now
                if acks or packets:
                    return PUMP_PACKETS, 0, acks, packets, nbytes, naps
                after_nap = False
                if ceiling > 0.0 and waited < ceiling and n < skip_bytes:
                    if now >= until:
                        return PUMP_DEADLINE, 0, None, [], nbytes, naps
                    _quickack(sock)
                    ack_due = False
                    naps += 1
                    time.sleep(nap_length(ceiling, self._rate))   # a timed sleep: see interrupt()
                    if self._interrupted:
                        self._interrupted = False
                        return PUMP_WAKE, 0, None, [], nbytes, naps
                    after_nap = True
        finally:
            if ack_due:
                _quickack(sock)

    def interrupt(self) -> None:
        """Make a napping pump() return PUMP_WAKE after its nap (any thread)."""
        self._interrupted = True

    def notify(self) -> None:
        """Nothing to ring: every ``try_push`` of ``feed`` already rang."""

    def nap(self, fd: int, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds or until ``fd`` is readable; True when it is."""
        p = select.poll()
        p.register(fd, select.POLLIN)
        try:
            return bool(p.poll(math.ceil(timeout * 1000.0)))
        except InterruptedError:
            return False

    def reset(self) -> None:
        """Start a new byte stream (a new connection): drop any partial packet, clear the error."""
        self._fill = 0
        self._skip = 0
        self._broken = False

    @property
    def protocol(self) -> int:
        return self._protocol

    @property
    def buffer_bytes(self) -> int:
        return self._cap

    @property
    def max_payload_bytes(self) -> int:
        return self._max_payload

    @property
    def fill(self) -> int:
        """Bytes of an incomplete packet kept at the front of the buffer."""
        return self._fill

    @property
    def skip_pending(self) -> int:
        """Bytes of an over-long PUBLISH still to be discarded from the stream."""
        return self._skip

    @property
    def broken(self) -> bool:
        return self._broken

    def counters(self) -> dict[str, int]:
        """Gauges (any thread): see ``_frames.pyi``."""
        return dict(self._c)

    def __repr__(self) -> str:
        return (f"<FrameReader protocol={self._protocol} buffer_bytes={self._cap} "
                f"fill={self._fill} {self.counters()}>")
