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
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

from telemetry_cy.source._ring cimport ByteRing, tc_doorbell_ring, tc_hand_off, \
    tc_load_acquire_u64, tc_load_relaxed_u64, tc_ring, tc_store_relaxed_u64, tc_store_release_u64


cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    ctypedef unsigned long nfds_t
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    const short POLLIN
    const short POLLHUP
    const short POLLERR

cdef extern from "<time.h>" nogil:
    int clock_nanosleep(int clock_id, int flags, const timespec *request, timespec *remain)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    int setsockopt(int fd, int level, int name, const void *value, unsigned int length)
    const int MSG_DONTWAIT

cdef extern from "<netinet/in.h>" nogil:
    const int IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    const int TCP_QUICKACK

MIN_BUFFER_BYTES = 64
MAX_BUFFER_BYTES = 1 << 30

# pump()'s results as C constants for the loop without the GIL; the twin names them (PUMP_*)
cdef enum:
    P_DEADLINE, P_PACKETS, P_WAKE, P_CLOSED, P_ERROR
cdef int P_MAX_POLL_MS = 1000

from telemetry_cy.source._frames_py import (  # the twin's numbers: one policy, two twins
    LEND_MAX_RECORDS, NAP_FLOOR_S, NAP_SKIP_FILL, NAP_TARGET_RECORDS, PUMP_CLOSED, PUMP_DEADLINE,
    PUMP_ERROR, PUMP_PACKETS, PUMP_WAKE, RATE_GAIN)

if (PUMP_DEADLINE, PUMP_PACKETS, PUMP_WAKE, PUMP_CLOSED, PUMP_ERROR) != (
        P_DEADLINE, P_PACKETS, P_WAKE, P_CLOSED, P_ERROR):
    raise ImportError("_frames.pyx and _frames_py.py number pump()'s results differently")

cdef double _NAP_FLOOR = NAP_FLOOR_S
cdef double _NAP_SKIP_FILL = NAP_SKIP_FILL
cdef double _NAP_TARGET = NAP_TARGET_RECORDS
cdef double _RATE_GAIN = RATE_GAIN
cdef uint64_t _LEND_MAX = LEND_MAX_RECORDS


cdef inline double _clock(int which) noexcept nogil:
    cdef timespec t
    clock_gettime(which, &t)
    return <double>t.tv_sec + <double>t.tv_nsec * 1e-9


cdef inline void _nap(double seconds) noexcept nogil:
    """Sleep ``seconds`` (an EINTR ends it early: the nap is a hint, not a deadline).

    A plain timed sleep, not a poll of the wake-up socket: on the KVM guests of
    docs/performance.md a ppoll on one descriptor costs ~25-33 us of CPU per nap against ~20 us
    for this (the descriptor's lookup, wait-queue entry and removal, all cache-cold after a
    sleep). stop() reaches a napping pump through FrameReader.interrupt() instead."""
    cdef timespec t
    if seconds < 0.0:
        seconds = 0.0
    t.tv_sec = <long>seconds
    t.tv_nsec = <long>((seconds - <double>t.tv_sec) * 1e9)
    clock_nanosleep(CLOCK_MONOTONIC, 0, &t, NULL)


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
        self._unrung = 0
        self._rate = 0.0
        self._last_read = 0.0
        tc_store_relaxed_u64(&self._interrupt, 0)

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
        cdef int rc
        memset(&c, 0, sizeof(c))
        self.rd.n_acks = 0
        tc_mqtt__add(&self.rd.bytes_in, <uint64_t>nbytes)
        with nogil:
            rc = tc_mqtt_parse(&self.rd, self.ring._ring, ts, &pos, end, &c, &o, &err)
        return self._finish(ts, pos, end, rc, &c, &o, err, notify)

    cdef tuple _finish(self, double ts, size_t pos, size_t end, int rc, tc_mqtt_counts *c,
                       tc_mqtt_other *o, const char *err, bint notify):
        """The rest of one read's parse, from a first result ``rc``, with the GIL: the packets
        for paho, the counters, the doorbell, the PUBACK blob, the error, the compaction."""
        cdef tc_mqtt_reader *rd = &self.rd
        cdef tc_ring *ring = self.ring._ring
        cdef list packets = []
        while rc == TC_MQTT_OTHER:
            # Rare (acks, pings, QoS 2): the only Python objects a read creates besides the blob.
            packets.append((o.cmd, PyBytes_FromStringAndSize(<char *>rd.buf + o.body_off,
                                                             <Py_ssize_t>o.body_len)))
            with nogil:
                rc = tc_mqtt_parse(rd, ring, ts, &pos, end, c, o, &err)
        tc_mqtt_publish_counts(rd, c)
        if c.written:
            if notify:
                # One wake-up per socket read, after the last commit (the GIL is held here:
                # no lent drain, see pump for that).
                tc_doorbell_ring(&self.ring.bell)
            else:
                self._unrung += c.written   # the caller hands off with notify() or nap()
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

    def pump(self, sock, wake, double ceiling, double until):
        """Read turns without the GIL until Python is needed. See ``_frames.pyi``."""
        if self._broken:
            raise FrameError("the reader hit a protocol error; reset() it for a new connection")
        cdef int fd = sock.fileno()
        cdef int wake_fd = wake.fileno()
        cdef tc_mqtt_reader *rd = &self.rd
        cdef tc_ring *ring = self.ring._ring
        cdef tc_mqtt_counts c
        cdef tc_mqtt_other o
        cdef const char *err = NULL
        cdef size_t pos = 0, end = 0
        cdef int rc = TC_MQTT_DONE
        cdef int why = -1
        cdef int error = 0
        cdef int one = 1
        cdef int naps = 0
        cdef uint64_t nbytes = 0
        cdef ssize_t n, m
        cdef double ts = 0.0, now, t_poll, waited, nap, inst
        cdef bint after_nap = False, ack_due = False
        cdef uint64_t unrung = self._unrung   # records committed, not handed off yet
        cdef pollfd fds[2]
        cdef int ms
        cdef size_t skip_bytes = <size_t>(<double>rd.cap * _NAP_SKIP_FILL)
        self._unrung = 0
        with nogil:
            while True:
                if not after_nap:
                    # Hand off before every sleep: each commit is followed by a ring, or by a
                    # drain into the lent engine, before this thread sleeps or returns
                    # (tc_doorbell.h, tc_park.h), so no record waits past a turn.
                    if unrung:
                        tc_hand_off(&self.ring.bell, unrung, _LEND_MAX)
                        unrung = 0
                    # And no ACK left delayed over a sleep: mosquitto, like most brokers, keeps
                    # Nagle on, so while a segment it sent is unacknowledged it holds back all
                    # that follows -- past our nap or poll, until the 40 ms delayed-ACK timer.
                    # TCP_QUICKACK sends the ACK for what we read now.
                    if ack_due:
                        setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one))
                        ack_due = False
                    t_poll = _clock(CLOCK_MONOTONIC)
                    if t_poll >= until:
                        why = P_DEADLINE
                        break
                    ms = P_MAX_POLL_MS
                    if until - t_poll < 0.001 * P_MAX_POLL_MS:
                        ms = <int>((until - t_poll) * 1000.0) + 1
                    fds[0].fd = fd
                    fds[0].events = POLLIN
                    fds[0].revents = 0
                    fds[1].fd = wake_fd
                    fds[1].events = POLLIN
                    fds[1].revents = 0
                    if poll(fds, 2, ms) < 0:
                        if errno == EINTR:
                            continue
                        error = errno
                        why = P_ERROR
                        break
                    if fds[1].revents:
                        tc_store_relaxed_u64(&self._interrupt, 0)   # stop() rang both
                        why = P_WAKE
                        break
                    if not (fds[0].revents & (POLLIN | POLLHUP | POLLERR)):
                        continue   # timed out: the deadline check above ends the pump
                    waited = _clock(CLOCK_MONOTONIC) - t_poll
                else:
                    waited = 0.0
                n = recv(fd, rd.buf + rd.fill, rd.cap - rd.fill, MSG_DONTWAIT)
                if n < 0:
                    if errno == EINTR:
                        continue
                    if errno == EAGAIN:   # == EWOULDBLOCK on Linux
                        after_nap = False   # nothing came during the nap: poll
                        continue
                    error = errno
                    why = P_ERROR
                    break
                if n == 0:
                    why = P_CLOSED
                    break
                ack_due = True
                if after_nap and <size_t>n < rd.cap - rd.fill:
                    # The second read after a nap (mqtt_client.py, FastClient._tc_reread):
                    # what the broker's Nagle held back until the first read's ACK. (One ACK
                    # after the nap and one read instead, measured: the data of each nap was
                    # read one nap late, p50 +4 ms; docs/performance.md.)
                    m = recv(fd, rd.buf + rd.fill + n, rd.cap - rd.fill - n, MSG_DONTWAIT)
                    if m > 0:
                        n += m
                now = _clock(CLOCK_MONOTONIC)
                ts = _clock(CLOCK_REALTIME)   # one arrival time per read, as time.time()
                nbytes += <uint64_t>n
                tc_mqtt__add(&rd.bytes_in, <uint64_t>n)
                memset(&c, 0, sizeof(c))
                rd.n_acks = 0
                pos = 0
                end = rd.fill + <size_t>n
                rc = tc_mqtt_parse(rd, ring, ts, &pos, end, &c, &o, &err)
                unrung += c.written
                # The rate the nap adapts to: records per second between reads, smoothed.
                if self._last_read > 0.0 and now > self._last_read:
                    inst = <double>c.received / (now - self._last_read)
                    self._rate += (inst - self._rate) * _RATE_GAIN
                self._last_read = now
                if rc != TC_MQTT_DONE or rd.n_acks:
                    why = P_PACKETS   # _finish below, with the GIL
                    break
                tc_mqtt_publish_counts(rd, &c)
                tc_mqtt_compact(rd, pos, end)
                # Coalescing (docs/ingest.md): dense traffic (the data was there, or came within
                # a nap of the poll) and not behind: ring, nap, then read without polling.
                after_nap = False
                if ceiling > 0.0 and waited < ceiling and <size_t>n < skip_bytes:
                    if now >= until:
                        why = P_DEADLINE
                        break
                    nap = ceiling
                    if self._rate > 0.0 and _NAP_TARGET / self._rate < nap:
                        nap = _NAP_TARGET / self._rate
                        if nap < _NAP_FLOOR:
                            nap = _NAP_FLOOR if _NAP_FLOOR < ceiling else ceiling
                    setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one))   # as above
                    ack_due = False
                    if unrung:
                        # few records (moderate rates): drained here into the parked engine, which
                        # then sleeps on; many: rung, the engine thread takes them in parallel
                        tc_hand_off(&self.ring.bell, unrung, _LEND_MAX)
                        unrung = 0
                    naps += 1
                    _nap(nap)
                    if tc_load_acquire_u64(&self._interrupt):
                        tc_store_relaxed_u64(&self._interrupt, 0)
                        why = P_WAKE
                        break
                    after_nap = True
            if unrung:
                tc_hand_off(&self.ring.bell, unrung, _LEND_MAX)
                unrung = 0
            if ack_due:   # the caller may sleep next (or the next pump polls)
                setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one))
        acks, packets = None, []
        if why == P_PACKETS:
            # rings itself (notify=True) for what the rest of the read commits
            acks, packets = self._finish(ts, pos, end, rc, &c, &o, err, True)
        return why, error, acks, packets, nbytes, naps

    def interrupt(self):
        """Make a napping pump() return PUMP_WAKE after its nap (any thread; stop() calls it
        besides ringing the wake-up socket, which only a poll sees)."""
        tc_store_release_u64(&self._interrupt, 1)

    def notify(self):
        """Hand off the records of earlier ``feed(..., notify=False)`` calls, if any: drained into
        the parked engine when it is lent and they are few, else the doorbell rung (a fence and a
        load when the consumer is not parked)."""
        cdef uint64_t unrung = self._unrung
        self._unrung = 0
        if unrung:
            with nogil:
                tc_hand_off(&self.ring.bell, unrung, _LEND_MAX)

    def nap(self, int fd, double timeout):
        """``notify()``, then sleep up to ``timeout`` seconds (whole milliseconds, rounded up) or
        until ``fd`` is readable; True when it is. Both without the GIL, ring first: the consumer
        woken by the ring finds the GIL free instead of blocking on it and waking twice."""
        cdef pollfd p
        cdef int rc
        cdef int ms = <int>(timeout * 1000.0)
        if ms < timeout * 1000.0:
            ms += 1
        cdef uint64_t unrung = self._unrung
        self._unrung = 0
        p.fd = fd
        p.events = POLLIN
        p.revents = 0
        with nogil:
            if unrung:
                tc_hand_off(&self.ring.bell, unrung, _LEND_MAX)
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
