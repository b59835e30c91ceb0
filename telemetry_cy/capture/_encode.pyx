"""Compiled capture block encoder: ring records -> one block's two columns, without the GIL.

The recorder's writer thread is the ring's consumer. ``fill`` walks the ring with ``tc_ring_peek``
and encodes each record straight from the ring's memory into the block's columns (float64 arrival
times, and the record as an MQTT PUBLISH packet without packet identifier; docs/capture.md), so
recording costs no Python object per message. ``_encode_py.py`` is the pure-Python twin (same
blocks, byte for byte) and the API is in ``_encode.pyi``.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

from telemetry_cy.source._ring cimport (ByteRing, tc_ring_consume, tc_ring_peek, tc_ring_release,
                                        tc_ring_view)

from telemetry_cy.capture._encode_py import _check_block_bytes  # same errors, same words

import sys

if sys.byteorder != "little":  # pragma: no cover - x86_64 and aarch64 are little-endian
    # fill() copies the ring's doubles as they are, and the format is little-endian
    raise ImportError("the compiled capture encoder needs a little-endian machine")

cdef enum:
    MAX_TOPIC = 0xFFFF
    MAX_REMAINING = 268435455


cdef inline size_t _varint_len(size_t n) noexcept nogil:
    if n < 128:
        return 1
    if n < 16384:
        return 2
    if n < 2097152:
        return 3
    return 4


cdef class BlockEncoder:
    """Moves ring records into one block until it holds about ``block_bytes``. See _encode.pyi."""

    def __cinit__(self, block_bytes=1 << 18):
        self.ts = NULL
        self.frames = NULL
        _check_block_bytes(block_bytes)
        self.block_bytes = block_bytes
        self.n = 0
        self.ts_cap = 0
        self.frames_len = 0
        self.frames_cap = 0
        self.plain = True
        self.is_full = False
        self.skipped = 0

    def __dealloc__(self):
        free(self.ts)
        free(self.frames)

    cdef bint _reserve(self, size_t frame) noexcept nogil:
        """Room for one more record of `frame` bytes; False when out of memory."""
        cdef size_t cap
        cdef void *p
        if self.n == self.ts_cap:
            cap = self.ts_cap * 2 if self.ts_cap else 1024
            p = realloc(self.ts, cap * sizeof(double))
            if p == NULL:
                return False
            self.ts = <double *>p
            self.ts_cap = cap
        if self.frames_len + frame > self.frames_cap:
            cap = self.frames_cap * 2 if self.frames_cap else 1 << 16
            while cap < self.frames_len + frame:
                cap *= 2
            p = realloc(self.frames, cap)
            if p == NULL:
                return False
            self.frames = <unsigned char *>p
            self.frames_cap = cap
        return True

    @property
    def n_records(self):
        return self.n

    @property
    def nbytes(self):
        """Bytes of the block's body so far (8 per arrival time + the records)."""
        return 8 * self.n + self.frames_len

    @property
    def full(self):
        """The last fill() stopped at a record that does not fit: take() the block."""
        return self.is_full

    def fill(self, ByteRing ring not None, Py_ssize_t max_records=1 << 16):
        """Moves up to ``max_records`` ring records into the block, in order; stops early when
        the next one would take the block past ``block_bytes`` (it stays in the ring for the
        next block). Returns the records moved (skipped ones included)."""
        if max_records < 0:
            raise ValueError("max_records must be >= 0")
        cdef tc_ring_view v
        cdef Py_ssize_t moved = 0
        cdef size_t rl, frame, limit = self.block_bytes
        cdef unsigned char *p
        cdef bint oom = False
        with nogil:
            while moved < max_records and tc_ring_peek(ring._ring, &v):
                rl = 2 + v.topic_len + v.payload_len
                if v.topic_len > MAX_TOPIC or rl > MAX_REMAINING or v.flags & 0x06 == 0x06:
                    # not a PUBLISH MQTT could carry (QoS 3 included): cannot come from a broker
                    self.skipped += 1
                    tc_ring_consume(ring._ring, &v)
                    moved += 1
                    continue
                frame = 1 + _varint_len(rl) + rl
                if self.n and 8 * self.n + self.frames_len + 8 + frame > limit:
                    self.is_full = True
                    break
                if not self._reserve(frame):
                    oom = True
                    break
                memcpy(&self.ts[self.n], &v.ts, 8)   # the format is little-endian, so are we
                p = self.frames + self.frames_len
                p[0] = <unsigned char>(0x30 | (v.flags & 0x0F))
                p += 1
                while True:
                    p[0] = <unsigned char>((rl & 0x7F) | (0x80 if rl >= 128 else 0))
                    p += 1
                    rl >>= 7
                    if rl == 0:
                        break
                p[0] = <unsigned char>(v.topic_len >> 8)
                p[1] = <unsigned char>v.topic_len
                p += 2
                if v.topic_len:
                    memcpy(p, v.topic, v.topic_len)
                if v.payload_len:
                    memcpy(p + v.topic_len, v.payload, v.payload_len)
                self.frames_len += frame
                self.n += 1
                if v.flags & 0x0F:
                    self.plain = False
                tc_ring_consume(ring._ring, &v)
                moved += 1
            # one release for everything moved: the ring's bytes are copied by now
            tc_ring_release(ring._ring)
        if oom:
            raise MemoryError("cannot grow the capture block")
        return moved

    def discard(self):
        """Drops the block and the records popped for the next one; returns how many."""
        n = self.n   # nothing is popped ahead here: a record that did not fit is still in the ring
        self.take()
        return n

    def take(self):
        """The block so far as ``(n_records, ts_column, records_column, plain)`` and a fresh
        block; None when empty."""
        if self.n == 0:
            return None
        out = (self.n,
               PyBytes_FromStringAndSize(<char *>self.ts, <Py_ssize_t>(8 * self.n)),
               PyBytes_FromStringAndSize(<char *>self.frames, <Py_ssize_t>self.frames_len),
               bool(self.plain))
        self.n = 0
        self.frames_len = 0
        self.plain = True
        self.is_full = False
        return out
