"""Pure-Python twin of ``telemetry_cy.source._ring`` (``ByteRing``, ``record_size``, ``stress``).

Same behaviour and the same byte accounting as the C ring in ``includes/spsc_ring.h``: the same
record size formula (24-byte header + topic + payload, rounded up to 8), the same wrap marker rule
(a record that does not fit before the end of the buffer makes the producer skip to offset 0, and
the skipped bytes count as used until the consumer passes them), the same ``max_record_bytes``
(capacity/2 - 8), the same drops. ``tests/test_ring.py`` checks the two against each other step by
step, so this module is the oracle for the compiled ring, and the ring itself when
``TELEMETRY_CY_PURE=1``.

It even lays the records out in a ``bytearray`` exactly as the C ring does (native-endian header
``uint32 total_len, uint32 topic_len, double ts, uint32 payload_len, uint32 flags``), so a layout
change in one that is not made in the other shows up as a behaviour difference in the tests.

Threads: like the C ring, one producer thread (``try_push``) and one consumer thread (``pop``,
``pop_many``). Under the GIL every attribute store is atomic and ordered, so publishing ``_head``
after writing the bytes (and ``_tail`` after reading them) plays the role of the C release stores.
"""

from __future__ import annotations

import struct
import threading
import time

HEADER_SIZE = 24
ALIGN = 8
MIN_CAPACITY = 64
MAX_CAPACITY = 1 << 31
WRAP_MARK = 0xFFFFFFFF
# why ByteRing.park ended
PARK_TIMEOUT = 0   # the timeout passed, nobody rang
PARK_RECORDS = 1   # a producer rang, or records were already there
PARK_KICKED = 2    # wake(): someone wants the consumer back, records or not

_HDR = struct.Struct("=IIdII")
_MARK = struct.Struct("=I")
assert _HDR.size == HEADER_SIZE


def record_size(topic_len: int, payload_len: int) -> int:
    """Bytes one record occupies in the ring: 24-byte header + topic + payload, rounded up to 8."""
    if topic_len < 0 or payload_len < 0:
        raise ValueError("lengths must be >= 0")
    return (HEADER_SIZE + topic_len + payload_len + ALIGN - 1) & ~(ALIGN - 1)


def _check_flags(flags: object) -> None:
    if not isinstance(flags, int) or isinstance(flags, bool):
        raise TypeError(f"flags must be an int, not {type(flags).__name__}")
    if not 0 <= flags <= 0xFFFFFFFF:
        raise ValueError(f"flags must fit in 32 bits (0 .. 0xFFFFFFFF), got {flags}")


def _check_capacity(capacity_bytes: object) -> None:
    if not isinstance(capacity_bytes, int) or isinstance(capacity_bytes, bool):
        raise TypeError(f"capacity_bytes must be an int, not {type(capacity_bytes).__name__}")
    power_of_two = (capacity_bytes & (capacity_bytes - 1)) == 0
    if not (MIN_CAPACITY <= capacity_bytes <= MAX_CAPACITY and power_of_two):
        raise ValueError(
            f"capacity_bytes must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}], "
            f"got {capacity_bytes}"
        )


class ByteRing:
    """Fixed-size SPSC ring of ``(ts, topic, payload)`` records. See ``_ring.pyi``."""

    __slots__ = ("_buf", "_cap", "_mask", "_max_record", "_head", "_tail", "_drops_full",
                 "_bell", "_kicked", "_parks")

    def __init__(self, capacity_bytes: int) -> None:
        _check_capacity(capacity_bytes)
        self._buf = bytearray(capacity_bytes)
        self._cap = capacity_bytes
        self._mask = capacity_bytes - 1
        self._max_record = capacity_bytes // 2 - ALIGN
        # Free-running byte counters, as in C: head - tail is the number of bytes in use.
        self._head = 0   # written by the producer only
        self._tail = 0   # written by the consumer only
        self._drops_full = 0
        self._bell = threading.Condition()
        self._kicked = False   # wake(): the consumer's next wait must not sleep
        self._parks = 0        # the consumer's wait()/park() calls (an int: any thread reads it)

    def wait(self, timeout: float) -> bool:
        """Consumer: sleep until a producer pushes or `timeout` seconds pass. Returns at once when
        a record is already there. True when there may be records."""
        return self.park(timeout) != PARK_TIMEOUT

    def park(self, timeout: float) -> int:
        """Consumer: wait() that says why it ended: PARK_TIMEOUT, PARK_RECORDS (a producer
        pushed, or records were there) or PARK_KICKED (wake(); the kick is spent)."""
        with self._bell:
            self._parks += 1
            if self._kicked:
                self._kicked = False
                return PARK_KICKED
            if self._head != self._tail:
                return PARK_RECORDS
            rung = self._bell.wait(max(timeout, 0.0))
            if self._kicked:
                self._kicked = False
                return PARK_KICKED
            return PARK_RECORDS if rung else PARK_TIMEOUT

    def wake(self) -> None:
        """Any thread: the consumer's current ``wait()`` returns now, or its next one at once
        (once), records or not."""
        with self._bell:
            self._kicked = True
            self._bell.notify()

    @property
    def parks(self) -> int:
        """The consumer's wait()/park() calls so far (any thread may read it)."""
        return self._parks

    @property
    def lent(self) -> bool:
        """The consumer is parked and lent to the producer: never here (see ``lends``)."""
        return False

    @property
    def lends(self) -> int:
        """Drains a producer ran for the parked consumer: always 0 here. The compiled ring's
        consumer may lend itself (includes/tc_park.h); this one is woken on every push."""
        return 0

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def max_record_bytes(self) -> int:
        """The largest record_size(len(topic), len(payload)) the ring accepts (capacity/2 - 8)."""
        return self._max_record

    @property
    def used_bytes(self) -> int:
        """Bytes in use, wrap padding included. Exact when neither side is running."""
        tail = self._tail
        return min(self._head - tail, self._cap)

    @property
    def drops_full(self) -> int:
        """Records refused because the ring was full (the "ingest_full" drop reason)."""
        return self._drops_full

    def try_push(self, ts: float, topic: bytes, payload: bytes, flags: int = 0) -> bool:
        """Producer: append a record. False (and drops_full += 1) when full; never blocks.

        ``flags``: a 32-bit word carried with the record (the MQTT source stores the PUBLISH
        header's DUP/QoS/RETAIN bits there). Raises ValueError when the record can never fit
        (record_size > max_record_bytes).
        """
        if flags:   # 0 (the common case) needs no check
            _check_flags(flags)
        if not isinstance(topic, bytes) or not isinstance(payload, bytes):
            raise TypeError("topic and payload must be bytes")
        if isinstance(ts, (str, bytes, bytearray)):
            raise TypeError("ts must be a number")
        ts = float(ts)
        tlen, plen = len(topic), len(payload)
        total = record_size(tlen, plen)
        if total > self._max_record:
            raise ValueError(
                f"record of {total} bytes (topic {tlen}, payload {plen}) exceeds "
                f"max_record_bytes={self._max_record}"
            )
        head = self._head
        off = head & self._mask
        contig = self._cap - off
        pad = contig if contig < total else 0
        end = head + pad + total
        if end - self._tail > self._cap:
            self._drops_full += 1
            return False
        buf = self._buf
        if pad:
            _MARK.pack_into(buf, off, WRAP_MARK)
            off = 0
        _HDR.pack_into(buf, off, total, tlen, ts, plen, flags)
        start = off + HEADER_SIZE
        buf[start:start + tlen] = topic
        buf[start + tlen:start + tlen + plen] = payload
        self._head = end   # publish: the bytes above are complete
        with self._bell:
            self._bell.notify()
        return True

    def _read(self, pos: int) -> tuple[int, tuple[float, bytes, bytes, int]] | None:
        """The record at or after read cursor ``pos``: (cursor after it, (ts, topic, payload,
        flags)); None if empty."""
        if pos == self._head:
            return None
        buf = self._buf
        off = pos & self._mask
        if _MARK.unpack_from(buf, off)[0] == WRAP_MARK:
            pos += self._cap - off
            off = 0
        total, tlen, ts, plen, flags = _HDR.unpack_from(buf, off)
        start = off + HEADER_SIZE
        topic = bytes(buf[start:start + tlen])
        payload = bytes(buf[start + tlen:start + tlen + plen])
        return pos + total, (ts, topic, payload, flags)

    def pop(self) -> tuple[float, bytes, bytes] | None:
        """Consumer: the oldest record as ``(ts, topic, payload)``, or None when empty."""
        got = self._read(self._tail)
        if got is None:
            return None
        self._tail, rec = got
        return rec[:3]

    def pop_many(self, max_records: int) -> list[tuple[float, bytes, bytes]]:
        """Consumer: up to ``max_records`` records, oldest first, released to the producer at once.
        """
        return [rec[:3] for rec in self.pop_many_flagged(max_records)]

    def pop_many_flagged(self, max_records: int) -> list[tuple[float, bytes, bytes, int]]:
        """Consumer: like ``pop_many``, each record as ``(ts, topic, payload, flags)``."""
        if max_records < 0:
            raise ValueError("max_records must be >= 0")
        out: list[tuple[float, bytes, bytes, int]] = []
        pos = self._tail
        while len(out) < max_records:
            got = self._read(pos)
            if got is None:
                break
            pos, rec = got
            out.append(rec)
        self._tail = pos   # one release for the batch
        return out

    def __repr__(self) -> str:
        return (
            f"<ByteRing capacity={self.capacity} used_bytes={self.used_bytes} "
            f"drops_full={self.drops_full}>"
        )


# ---- stress: the compiled one's contract, with Python threads (a logic check, not a race test)

_STRESS_MAX_TOPIC = 48
_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _content(n: int, h: int) -> bytes:
    return bytes((((h >> ((i & 7) << 3)) ^ (i * 0x9D)) & 0xFF) for i in range(n))


def _expected(seed: int, seq: int, max_payload: int) -> tuple[bytes, bytes, int]:
    h = _mix64((seed & _M64) ^ _mix64(seq))
    tlen = (h & 0xFFFF) % (_STRESS_MAX_TOPIC + 1)
    plen = (h >> 16) % (max_payload + 1)
    return _content(tlen, h), _content(plen, _mix64(h)), _mix64(h ^ 0xF1A65) >> 32


def stress(n_records: int, seed: int, capacity_bytes: int, max_payload: int,
           consumer_delay_every: int = 0, *, yield_on_full: bool = False) -> dict:
    """Producer thread vs. consumer on this thread: the records and checks of the compiled one."""
    if n_records < 0 or consumer_delay_every < 0 or max_payload < 0:
        raise ValueError("n_records, max_payload and consumer_delay_every must be >= 0")
    _check_capacity(capacity_bytes)
    limit = capacity_bytes // 2 - ALIGN
    if record_size(_STRESS_MAX_TOPIC, max_payload) > limit:
        raise ValueError(
            f"max_payload={max_payload} gives records of up to "
            f"{record_size(_STRESS_MAX_TOPIC, max_payload)} bytes; the ring takes at most {limit}"
        )
    ring = ByteRing(capacity_bytes)
    dropped = bytearray(n_records + 1)
    done = threading.Event()
    producer_drops = 0

    def produce() -> None:
        nonlocal producer_drops
        for seq in range(n_records):
            topic, payload, flags = _expected(seed, seq, max_payload)
            if not ring.try_push(float(seq), topic, payload, flags):
                dropped[seq] = 1
                producer_drops += 1
                if yield_on_full:
                    time.sleep(0)
        done.set()

    errors = received = expect = 0
    t0 = time.perf_counter()
    th = threading.Thread(target=produce, name="ring-stress-producer")
    th.start()
    finished = False
    while True:
        batch = ring.pop_many_flagged(64)
        if not batch:
            if finished:
                break
            if done.is_set():
                finished = True
            else:
                time.sleep(0)
            continue
        for ts, topic, payload, flags in batch:
            seq = int(ts)
            if seq != ts or not (expect <= seq < n_records):
                errors += 1
            else:
                if any(not dropped[k] for k in range(expect, seq)):
                    errors += 1
                if (topic, payload, flags) != _expected(seed, seq, max_payload):
                    errors += 1
                expect = seq + 1
            received += 1
            if consumer_delay_every and received % consumer_delay_every == 0:
                time.sleep(20e-6)
    th.join()
    elapsed = time.perf_counter() - t0
    if any(not dropped[k] for k in range(expect, n_records)):
        errors += 1
    if producer_drops != ring.drops_full or received + producer_drops != n_records:
        errors += 1
    if ring.used_bytes != 0:
        errors += 1
    return {
        "produced": n_records,
        "received": received,
        "dropped": producer_drops,
        "errors": errors,
        "elapsed_s": elapsed,
    }
