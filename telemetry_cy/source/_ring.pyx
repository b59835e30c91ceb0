"""Compiled SPSC byte ring (see includes/spsc_ring.h for the memory-ordering contract).

``ByteRing`` wraps one C ring. Its Python methods are for tests and tooling; the hot paths (the MQTT
frame reader producing, the engine consuming) cimport the class and call the C functions on
``ring._ring`` without the GIL. ``stress`` runs a real producer pthread against a consumer on the
calling thread and checks every byte.

Thread rules for the Python methods mirror the C ones: ``try_push`` belongs to the producer thread,
``pop``/``pop_many`` to the consumer thread; the properties may be read from anywhere.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

import time as _time

HEADER_SIZE = TC_RING_HEADER_SIZE
ALIGN = TC_RING_ALIGN
MIN_CAPACITY = TC_RING_MIN_CAPACITY
MAX_CAPACITY = <size_t>TC_RING_MAX_CAPACITY


def record_size(topic_len: int, payload_len: int) -> int:
    """Bytes one record occupies in the ring: 24-byte header + topic + payload, rounded up to 8."""
    if topic_len < 0 or payload_len < 0:
        raise ValueError("lengths must be >= 0")
    return (HEADER_SIZE + topic_len + payload_len + ALIGN - 1) & ~(ALIGN - 1)


from telemetry_cy.source._ring_py import _check_capacity, _check_flags


# polls of the ring in wait() before parking (each one acquire load of the producer's index;
# 2000 of them take ~15 us on the AMD guest of docs/performance.md)
cdef int WAIT_SPINS = 2000
# ... but only when the last wait ended within this long: records then come back to back (the
# producer is behind and reads without napping) and the spin saves a park. When the producer
# naps between reads (coalesced wake-ups), the next records are a nap away and the spin would be
# pure cost, once per nap.
cdef long long WAIT_SPIN_WORTH_NS = 50000

# why ByteRing.park ended (the twin's values: _ring_py.PARK_*)
PARK_TIMEOUT = TC_PARK_TIMEOUT
PARK_RECORDS = TC_PARK_RECORDS
PARK_KICKED = TC_PARK_KICKED


cdef class ByteRing:
    """Fixed-size SPSC ring of ``(ts, topic, payload)`` records. See ``_ring.pyi``."""

    def __cinit__(self, capacity_bytes):
        self._ring = NULL
        self.bell_ready = False
        self.last_wait_ns = 0
        tc_store_relaxed_u64(&self.parks_n, 0)
        _check_capacity(capacity_bytes)  # the twin's check: same errors, same words
        if tc_doorbell_init(&self.bell) != 0:
            raise MemoryError("cannot initialise the ring's doorbell")
        self.bell_ready = True
        cdef int rc = tc_ring_create(&self._ring, <size_t>capacity_bytes)
        if rc == TC_RING_ENOMEM:
            raise MemoryError(f"cannot allocate a ring of {capacity_bytes} bytes")
        if rc != TC_RING_OK:  # _check_capacity already rejects what tc_ring_create would
            raise ValueError(f"tc_ring_create failed with {rc}")

    def __dealloc__(self):
        # Safe only because every thread that touches the ring holds a reference to this object:
        # when the last reference goes, no thread can be inside a tc_ring_* call.
        if self._ring is not NULL:
            tc_ring_destroy(self._ring)
            self._ring = NULL
        if self.bell_ready:
            tc_doorbell_destroy(&self.bell)
            self.bell_ready = False

    def wait(self, double timeout) -> bool:
        """Consumer: sleep (without the GIL) until a producer rings or `timeout` seconds pass.
        Returns at once when a record is already there. True when there may be records."""
        cdef long long timeout_ns = <long long>(max(timeout, 0.0) * 1e9)
        cdef int why
        with nogil:
            why = self.park_ns(timeout_ns, NULL)
        return why != TC_PARK_TIMEOUT

    def park(self, double timeout) -> int:
        """Consumer: wait() that says why it ended: PARK_TIMEOUT, PARK_RECORDS (a producer rang,
        or records were there) or PARK_KICKED (wake(); the kick is spent)."""
        cdef long long timeout_ns = <long long>(max(timeout, 0.0) * 1e9)
        cdef int why
        with nogil:
            why = self.park_ns(timeout_ns, NULL)
        return why

    cdef int park_ns(self, long long timeout_ns, tc_lender *lender) noexcept nogil:
        # One park of the consumer, shared by wait()/park() and the engine's run_ring (which
        # parks between its drains without coming back to Python, lent to the network thread).
        # tc_park arms the doorbell before it looks at the ring and the kick flag (tc_doorbell.h:
        # no lost wake-up) and offers the lender only after that last look.
        cdef int64_t slept = 0
        cdef int spins = WAIT_SPINS if self.last_wait_ns < WAIT_SPIN_WORTH_NS else 0
        cdef int why
        tc_store_relaxed_u64(&self.parks_n, tc_load_relaxed_u64(&self.parks_n) + 1)
        why = tc_park(self._ring, &self.bell, spins, timeout_ns, lender, &slept)
        # a park that did not sleep (records or a kick were there) counts as a short wait
        self.last_wait_ns = slept
        return why

    def wake(self) -> None:
        """Any thread: the consumer's current ``wait()`` returns now, or its next one at once
        (once), records or not. For a consumer asked to stop (see tc_doorbell.h: kick)."""
        tc_doorbell_kick(&self.bell)

    @property
    def lends(self) -> int:
        """Drains a producer ran on its own thread while the consumer was parked and lent
        (tc_park.h), each one a wake-up saved (any thread may read it)."""
        return tc_doorbell_lends(&self.bell)

    @property
    def lent(self) -> bool:
        """The consumer is parked and lent to the producer right now (a gauge, any thread)."""
        return tc_doorbell_lent(&self.bell) != 0

    @property
    def parks(self) -> int:
        """The consumer's wait()/park() calls so far (any thread may read it)."""
        return tc_load_relaxed_u64(&self.parks_n)

    @property
    def capacity(self) -> int:
        return tc_ring_capacity(self._ring)

    @property
    def max_record_bytes(self) -> int:
        """The largest record_size(len(topic), len(payload)) the ring accepts (capacity/2 - 8)."""
        return tc_ring_max_record(self._ring)

    @property
    def used_bytes(self) -> int:
        """Bytes in use, wrap padding included. Exact when neither side is running."""
        return tc_ring_used_bytes(self._ring)

    @property
    def drops_full(self) -> int:
        """Records refused because the ring was full (the "ingest_full" drop reason)."""
        return tc_ring_drops_full(self._ring)

    def try_push(self, double ts, bytes topic not None, bytes payload not None, flags=0) -> bool:
        """Producer: append a record. False (and drops_full += 1) when full; never blocks.

        ``flags``: a 32-bit word carried with the record (the MQTT source stores the PUBLISH
        header's DUP/QoS/RETAIN bits there). Raises ValueError when the record can never fit
        (record_size > max_record_bytes).
        """
        cdef uint32_t f = 0
        if flags:   # 0 (the common case) needs no check
            _check_flags(flags)   # the twin's check: same errors, same words
            f = <uint32_t>flags
        cdef Py_ssize_t tlen = PyBytes_GET_SIZE(topic)
        cdef Py_ssize_t plen = PyBytes_GET_SIZE(payload)
        cdef int rc = tc_ring_try_write_flags(self._ring, ts, f, PyBytes_AS_STRING(topic),
                                              <size_t>tlen, PyBytes_AS_STRING(payload),
                                              <size_t>plen)
        if rc == TC_RING_OK:
            tc_doorbell_ring(&self.bell)
            return True
        if rc == TC_RING_FULL:
            return False
        raise ValueError(
            f"record of {record_size(tlen, plen)} bytes (topic {tlen}, payload {plen}) exceeds "
            f"max_record_bytes={tc_ring_max_record(self._ring)}"
        )

    def pop(self):
        """Consumer: the oldest record as ``(ts, topic, payload)``, or None when empty."""
        cdef tc_ring_view v
        if not tc_ring_peek(self._ring, &v):
            return None
        # Copy out before consume+release: after the release the producer may overwrite the bytes.
        rec = (
            v.ts,
            PyBytes_FromStringAndSize(<const char *>v.topic, <Py_ssize_t>v.topic_len),
            PyBytes_FromStringAndSize(<const char *>v.payload, <Py_ssize_t>v.payload_len),
        )
        tc_ring_consume(self._ring, &v)
        tc_ring_release(self._ring)
        return rec

    def pop_many(self, Py_ssize_t max_records) -> list:
        """Consumer: up to ``max_records`` records, oldest first, released to the producer at once."""
        return _pop_records(self, max_records, False)

    def pop_many_flagged(self, Py_ssize_t max_records) -> list:
        """Consumer: like ``pop_many``, each record as ``(ts, topic, payload, flags)``."""
        return _pop_records(self, max_records, True)

    def __repr__(self):
        return (
            f"<ByteRing capacity={self.capacity} used_bytes={self.used_bytes} "
            f"drops_full={self.drops_full}>"
        )


cdef list _pop_records(ByteRing ring, Py_ssize_t max_records, bint with_flags):
    """pop_many / pop_many_flagged: up to max_records copied out, then one release."""
    if max_records < 0:
        raise ValueError("max_records must be >= 0")
    cdef tc_ring_view v
    cdef list out = []
    try:
        while len(out) < max_records and tc_ring_peek(ring._ring, &v):
            rec = (
                v.ts,
                PyBytes_FromStringAndSize(<const char *>v.topic, <Py_ssize_t>v.topic_len),
                PyBytes_FromStringAndSize(<const char *>v.payload, <Py_ssize_t>v.payload_len),
            )
            out.append(rec + (v.flags,) if with_flags else rec)
            # Consume only once the copy exists: a MemoryError above leaves the record unread.
            tc_ring_consume(ring._ring, &v)
    finally:
        # One release for the whole batch: one store to the shared line instead of N. In a
        # `finally` so that consumed records are handed back even if building the list raised.
        tc_ring_release(ring._ring)
    return out


# ---- stress: a real producer pthread against the consumer on the calling thread ----------------------

cdef extern from "<pthread.h>" nogil:
    # Only the name reaches the C compiler; the real type comes from <pthread.h>.
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                       void *(*start_routine)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int nanosleep(const timespec *req, timespec *rem)

cdef enum:
    # Topic lengths in the stress run: 0 .. _STRESS_MAX_TOPIC (empty topics included on purpose).
    _STRESS_MAX_TOPIC = 48
    # Records the stress consumer reads before it releases them to the producer in one store.
    _STRESS_BATCH = 64


cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    # splitmix64 finaliser: every record's sizes and bytes are a pure function of (seed, seq), so the
    # consumer can recompute what the producer wrote without sharing anything but the ring.
    x += 0x9E3779B97F4A7C15ULL
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline void _fill(unsigned char *dst, size_t n, uint64_t h) noexcept nogil:
    cdef size_t i
    for i in range(n):
        dst[i] = <unsigned char>((h >> ((i & 7) << 3)) ^ (i * 0x9D))


cdef inline bint _check(const unsigned char *src, size_t n, uint64_t h) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if src[i] != <unsigned char>((h >> ((i & 7) << 3)) ^ (i * 0x9D)):
            return False
    return True


cdef struct _StressCtx:
    tc_ring *ring
    uint64_t n
    uint64_t seed
    size_t max_payload
    unsigned char *scratch        # producer-private staging buffer for the try_write path
    # dropped[seq] = 1 is written by the producer before it commits any later record, so the
    # consumer may read dropped[k] for every k below a seq it has received (the commit's release /
    # peek's acquire orders it), and all of it after pthread_join. One byte per seq, not one bit:
    # bits would make the producer's writes and the consumer's reads race on shared bytes.
    unsigned char *dropped
    uint64_t producer_drops       # producer-private until pthread_join
    bint yield_on_full            # producer calls sched_yield() after each drop
    tc_atomic_size done           # 0 -> 1 by release after the producer's last commit


cdef inline void _sizes(uint64_t seed, uint64_t seq, size_t max_payload,
                        uint64_t *h, size_t *tlen, size_t *plen) noexcept nogil:
    h[0] = _mix64(seed ^ _mix64(seq))
    tlen[0] = <size_t>((h[0] & 0xFFFF) % (_STRESS_MAX_TOPIC + 1))
    plen[0] = <size_t>((h[0] >> 16) % (max_payload + 1))


cdef inline uint32_t _flags_of(uint64_t h) noexcept nogil:
    # every bit of the flags word takes both values across records
    return <uint32_t>(_mix64(h ^ 0xF1A65) >> 32)


cdef inline void _init_ctx(_StressCtx *ctx) noexcept nogil:
    ctx.ring = NULL
    ctx.n = 0
    ctx.seed = 0
    ctx.max_payload = 0
    ctx.scratch = NULL
    ctx.dropped = NULL
    ctx.producer_drops = 0
    ctx.yield_on_full = False
    tc_store_relaxed_size(&ctx.done, 0)


cdef void *_stress_producer(void *arg) noexcept nogil:
    cdef _StressCtx *ctx = <_StressCtx *>arg
    cdef uint64_t seq, h
    cdef size_t tlen, plen
    cdef int rc
    cdef tc_ring_wview w
    for seq in range(ctx.n):
        _sizes(ctx.seed, seq, ctx.max_payload, &h, &tlen, &plen)
        if seq & 1:
            # Two-phase path (what the frame reader does): write straight into the ring.
            rc = tc_ring_reserve_record_flags(ctx.ring, <double>seq, _flags_of(h), tlen, plen, &w)
            if rc == TC_RING_OK:
                _fill(w.topic, tlen, h)
                _fill(w.payload, plen, _mix64(h))
                tc_ring_commit(ctx.ring)
        else:
            # Copy path (try_write), from a staging buffer like a socket chunk.
            _fill(ctx.scratch, tlen, h)
            _fill(ctx.scratch + tlen, plen, _mix64(h))
            rc = tc_ring_try_write_flags(ctx.ring, <double>seq, _flags_of(h), ctx.scratch, tlen,
                                         ctx.scratch + tlen, plen)
        if rc != TC_RING_OK:
            # Full (TOO_BIG is excluded by stress()'s argument check): drop and move on, never wait.
            ctx.dropped[seq] = 1
            ctx.producer_drops += 1
            if ctx.yield_on_full:
                # Not a wait for space (the record is gone): it stands for the time the network
                # thread spends on its next socket read, and hands the core to the consumer when
                # both threads share one (a busy CI machine).
                sched_yield()
    # Publishes every commit above (they precede this store in program order) together with "done".
    tc_store_release_size(&ctx.done, 1)
    return NULL


cdef uint64_t _stress_consume(_StressCtx *ctx, uint64_t delay_every,
                              uint64_t *received_out, uint64_t *next_out) noexcept nogil:
    """Drain until the producer is done and the ring empty; returns the number of bad records."""
    cdef tc_ring_view v
    cdef uint64_t errors = 0, received = 0, expect = 0, seq, k, h
    cdef size_t tlen, plen
    cdef int unreleased = 0, idle = 0
    cdef bint finished = False
    cdef timespec nap
    nap.tv_sec = 0
    nap.tv_nsec = 20000
    while True:
        if not tc_ring_peek(ctx.ring, &v):
            if unreleased:
                tc_ring_release(ctx.ring)
                unreleased = 0
            if finished:
                break
            # Acquire pairs with the producer's final release: once we see done == 1, the peek
            # below sees the final head, so "still empty" really means "everything received".
            if tc_load_acquire_size(&ctx.done):
                finished = True
                continue
            idle += 1
            if idle >= 64:
                idle = 0
                sched_yield()   # 2-core CI: let the producer have the core
            continue
        idle = 0
        # Range check first: converting a NaN or out-of-range double to an integer is undefined.
        if not (v.ts >= 0.0 and v.ts < <double>ctx.n):
            errors += 1   # corrupt ts
        elif <double>(<uint64_t>v.ts) != v.ts or <uint64_t>v.ts < expect:
            errors += 1   # corrupt ts, or out of order / duplicated
        else:
            seq = <uint64_t>v.ts
            # Everything skipped since the last record must be a counted drop.
            for k in range(expect, seq):
                if not ctx.dropped[k]:
                    errors += 1
                    break
            _sizes(ctx.seed, seq, ctx.max_payload, &h, &tlen, &plen)
            if (v.topic_len != tlen or v.payload_len != plen or v.flags != _flags_of(h)
                    or v.size != tc_ring_record_size(tlen, plen)
                    or not _check(v.topic, tlen, h) or not _check(v.payload, plen, _mix64(h))):
                errors += 1
            expect = seq + 1
        received += 1
        tc_ring_consume(ctx.ring, &v)
        unreleased += 1
        if unreleased >= _STRESS_BATCH:
            tc_ring_release(ctx.ring)
            unreleased = 0
        if delay_every and received % delay_every == 0:
            tc_ring_release(ctx.ring)
            unreleased = 0
            nanosleep(&nap, NULL)
    received_out[0] = received
    next_out[0] = expect
    return errors


def stress(n_records: int, seed: int, capacity_bytes: int, max_payload: int,
           consumer_delay_every: int = 0, *, yield_on_full: bool = False) -> dict:
    """Producer pthread vs. consumer on this thread, both without the GIL; verify every byte.

    Record ``seq`` carries ts = seq and sizes/bytes derived from (seed, seq). A full ring makes the
    producer drop and count, so ``received + dropped == produced`` and the received records are
    exactly the non-dropped seqs in order. ``consumer_delay_every=K`` sleeps ~20 µs (in practice the
    timer slack, ~50-80 µs on Linux) after every K records to force drops. ``errors`` counts bad
    records and accounting mismatches; it must be 0.

    A producer that never waits and is as fast as the consumer drops most records once the ring is
    full (a drop costs nanoseconds, a record costs its bytes), and on a machine where the two threads
    share one core the producer may run through all records in one time slice. ``yield_on_full=True``
    makes the producer call sched_yield() after each drop (the record stays dropped), so that most
    records pass through a ring that is full all the time: the case that exercises the index
    hand-off hardest.
    """
    if n_records < 0 or consumer_delay_every < 0 or max_payload < 0:
        raise ValueError("n_records, max_payload and consumer_delay_every must be >= 0")
    if n_records > 2**53:
        raise ValueError("n_records must be <= 2**53 (the seq travels as the double ts)")
    _check_capacity(capacity_bytes)
    if record_size(_STRESS_MAX_TOPIC, max_payload) > tc_ring_max_record_for(capacity_bytes):
        raise ValueError(
            f"max_payload={max_payload} gives records of up to "
            f"{record_size(_STRESS_MAX_TOPIC, max_payload)} bytes; the ring takes at most "
            f"{tc_ring_max_record_for(capacity_bytes)}"
        )
    cdef _StressCtx ctx
    cdef pthread_t th
    cdef uint64_t errors = 0, received = 0, expect = 0, k, delay = consumer_delay_every
    cdef int rc
    _init_ctx(&ctx)
    ctx.n = n_records
    ctx.seed = <uint64_t>(seed & 0xFFFFFFFFFFFFFFFF)
    ctx.max_payload = max_payload
    ctx.yield_on_full = bool(yield_on_full)
    if tc_ring_create(&ctx.ring, <size_t>capacity_bytes) != TC_RING_OK:
        raise MemoryError("cannot allocate the ring")
    ctx.scratch = <unsigned char *>malloc(_STRESS_MAX_TOPIC + max_payload + 1)
    ctx.dropped = <unsigned char *>calloc(n_records + 1, 1)
    try:
        if ctx.scratch == NULL or ctx.dropped == NULL:
            raise MemoryError()
        t0 = _time.perf_counter()
        with nogil:
            # pthread_create synchronises: the producer sees the fully initialised ctx and ring.
            rc = pthread_create(&th, NULL, _stress_producer, &ctx)
            if rc == 0:
                errors = _stress_consume(&ctx, delay, &received, &expect)
                pthread_join(th, NULL)   # after this, ctx.dropped and producer_drops are ours
        elapsed = _time.perf_counter() - t0
        if rc != 0:
            raise OSError(rc, "pthread_create failed")
        for k in range(expect, ctx.n):   # the tail after the last received record: all dropped
            if not ctx.dropped[k]:
                errors += 1
                break
        if ctx.producer_drops != tc_ring_drops_full(ctx.ring):
            errors += 1
        if received + ctx.producer_drops != ctx.n:
            errors += 1
        if tc_ring_used_bytes(ctx.ring) != 0:
            errors += 1
        return {
            "produced": int(ctx.n),
            "received": int(received),
            "dropped": int(ctx.producer_drops),
            "errors": int(errors),
            "elapsed_s": elapsed,
        }
    finally:
        free(ctx.scratch)
        free(ctx.dropped)
        tc_ring_destroy(ctx.ring)


