"""Compiled MQTT frame reader: PUBLISH frames from large socket reads straight into the ring.

See ``includes/mqtt_frames.h`` for the parsing rules and ``_frames.pyi`` for the API. The network
thread does, per readable event::

    n = sock.recv_into(reader.writable())
    acks, packets = reader.feed(n, time.time())

``feed`` walks every complete packet without the GIL, writes one ring record per PUBLISH QoS 0/1
(no Python object per message), rings the ring's doorbell once (or, with ``notify=False``, leaves
that to ``notify()`` or ``nap()``, which the MQTT source calls just before it sleeps), returns the
PUBACK blob for the QoS 1 packets of this read (to be sent after the call: the records are
already in the ring) and the other packets as ``(command byte, body)`` for paho. ``_frames_py.py``
is the pure-Python twin.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from telemetry_cy.source._ring cimport ByteRing, tc_doorbell_ring, tc_load_relaxed_u64, tc_ring


cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    ctypedef unsigned long nfds_t
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    const short POLLIN

MIN_BUFFER_BYTES = 64
MAX_BUFFER_BYTES = 1 << 30


class FrameError(ValueError):
    """The byte stream is not valid MQTT: drop the connection (and reconnect).

    ``acks`` (PUBACK blob or None) and ``packets`` (non-PUBLISH packets) are what the read produced
    before the error; the records before it are already in the ring.
    """

    def __init__(self, message, acks=None, packets=None):
        super().__init__(message)
        self.acks = acks
        self.packets = packets if packets is not None else []


from telemetry_cy.source._frames_py import _check_args  # the twin's check: same errors, same words


cdef class FrameReader:
    """MQTT frame reader feeding a ``ByteRing``. See ``_frames.pyi``."""

    def __cinit__(self, ByteRing ring not None, *, protocol=5, max_payload_bytes=65536,
                  buffer_bytes=1 << 20):
        self._acks = NULL
        _check_args(protocol, max_payload_bytes, buffer_bytes)
        self.ring = ring
        self._protocol = protocol
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        cdef size_t cap = <size_t>buffer_bytes
        self._acks = <unsigned char *>malloc(tc_mqtt_ack_capacity(cap) * 4)
        if self._acks == NULL:
            raise MemoryError("cannot allocate the PUBACK buffer")
        tc_mqtt_init(&self.rd, <unsigned char *>PyByteArray_AS_STRING(self._buf), cap,
                     protocol == 5, <size_t>max_payload_bytes, self._acks)
        self._broken = False
        self._unrung = False

    def __dealloc__(self):
        free(self._acks)
        self._acks = NULL

    def writable(self):
        """The free part of the receive buffer, for ``sock.recv_into``. Never empty."""
        return self._view[self.rd.fill:]

    def feed(self, Py_ssize_t nbytes, double ts, bint notify=True):
        """Parse the ``nbytes`` just received into ``writable()``. Returns ``(acks, packets)``."""
        if self._broken:
            raise FrameError("the reader hit a protocol error; reset() it for a new connection")
        if nbytes < 0 or <size_t>nbytes > self.rd.cap - self.rd.fill:
            raise ValueError(
                f"nbytes={nbytes} is outside [0, {self.rd.cap - self.rd.fill}] (the writable() size)")
        cdef tc_mqtt_counts c
        cdef tc_mqtt_other o
        cdef const char *err = NULL
        cdef size_t pos = 0
        cdef size_t end = self.rd.fill + <size_t>nbytes
        cdef tc_mqtt_reader *rd = &self.rd
        cdef tc_ring *ring = self.ring._ring
        cdef int rc
        cdef list packets = []
        memset(&c, 0, sizeof(c))
        rd.n_acks = 0
        tc_mqtt__add(&rd.bytes_in, <uint64_t>nbytes)
        while True:
            with nogil:
                rc = tc_mqtt_parse(rd, ring, ts, &pos, end, &c, &o, &err)
            if rc != TC_MQTT_OTHER:
                break
            # Rare (acks, pings, QoS 2): the only Python objects a read creates besides the blob.
            packets.append((o.cmd, PyBytes_FromStringAndSize(<char *>rd.buf + o.body_off,
                                                             <Py_ssize_t>o.body_len)))
        tc_mqtt_publish_counts(rd, &c)
        if c.written:
            if notify:
                # One wake-up per socket read, after the last commit.
                tc_doorbell_ring(&self.ring.bell)
            else:
                self._unrung = True   # the caller rings with notify() before it sleeps
        acks = None
        if rd.n_acks:
            acks = PyBytes_FromStringAndSize(<char *>rd.acks, <Py_ssize_t>(4 * rd.n_acks))
            tc_mqtt__add(&rd.acked, rd.n_acks)
            rd.n_acks = 0
        if rc == TC_MQTT_ERROR:
            self._broken = True
            tc_mqtt__add(&rd.protocol_errors, 1)
            raise FrameError(f"MQTT protocol error: {err.decode('ascii')}", acks, packets)
        tc_mqtt_compact(rd, pos, end)
        return acks, packets

    def notify(self):
        """Ring the ring's doorbell for the records of earlier ``feed(..., notify=False)`` calls,
        if any (a fence and a load when the consumer is not parked)."""
        if self._unrung:
            self._unrung = False
            tc_doorbell_ring(&self.ring.bell)

    def nap(self, int fd, double timeout):
        """``notify()``, then sleep up to ``timeout`` seconds (whole milliseconds, rounded up) or
        until ``fd`` is readable; True when it is. Both without the GIL, ring first: the consumer
        woken by the ring finds the GIL free instead of blocking on it and waking twice."""
        cdef pollfd p
        cdef int rc
        cdef int ms = <int>(timeout * 1000.0)
        if ms < timeout * 1000.0:
            ms += 1
        cdef bint ring = self._unrung
        self._unrung = False
        p.fd = fd
        p.events = POLLIN
        p.revents = 0
        with nogil:
            if ring:
                tc_doorbell_ring(&self.ring.bell)
            rc = poll(&p, 1, ms)
        return rc > 0   # -1 (EINTR): as if woken; the caller's loop looks again

    def reset(self):
        """Start a new byte stream (a new connection): drop any partial packet, clear the error."""
        tc_mqtt_reset(&self.rd)
        self._broken = False

    @property
    def protocol(self):
        return self._protocol

    @property
    def buffer_bytes(self):
        return self.rd.cap

    @property
    def max_payload_bytes(self):
        return self.rd.max_payload

    @property
    def fill(self):
        """Bytes of an incomplete packet kept at the front of the buffer."""
        return self.rd.fill

    @property
    def skip_pending(self):
        """Bytes of an over-long PUBLISH still to be discarded from the stream."""
        return self.rd.skip

    @property
    def broken(self):
        return self._broken

    def counters(self):
        """Gauges (any thread): see ``_frames.pyi``."""
        return {
            "received": tc_load_relaxed_u64(&self.rd.received),
            "written": tc_load_relaxed_u64(&self.rd.written),
            "payload_bytes": tc_load_relaxed_u64(&self.rd.payload_bytes),
            "oversize": tc_load_relaxed_u64(&self.rd.oversize),
            "ingest_full": tc_load_relaxed_u64(&self.rd.ingest_full),
            "acked": tc_load_relaxed_u64(&self.rd.acked),
            "protocol_errors": tc_load_relaxed_u64(&self.rd.protocol_errors),
            "bytes": tc_load_relaxed_u64(&self.rd.bytes_in),
        }

    def __repr__(self):
        return (f"<FrameReader protocol={self._protocol} buffer_bytes={self.rd.cap} "
                f"fill={self.rd.fill} {self.counters()}>")
