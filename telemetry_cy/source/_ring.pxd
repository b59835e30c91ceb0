# Declarations of the SPSC byte ring (includes/spsc_ring.h) and the ByteRing class layout.
#
# Other compiled modules (the MQTT frame reader on the network thread, the engine's drain loop) do
# `from telemetry_cy.source._ring cimport ByteRing, tc_ring, tc_ring_view, ...` and use `ring._ring`
# directly under `nogil`. Thread rules (see spsc_ring.h): exactly one producer thread calls
# tc_ring_reserve* / tc_ring_commit / tc_ring_try_write, exactly one consumer thread calls
# tc_ring_peek / tc_ring_consume / tc_ring_release.
#
# Lifetime: the C ring lives exactly as long as its ByteRing object. Both threads must hold a
# reference to the ByteRing (not just the raw pointer) for as long as they may touch the ring.

from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "tc_atomic.h" nogil:
    # Opaque to Cython: read and write only through the tc_* functions, never with `=`.
    ctypedef size_t tc_atomic_size
    ctypedef uint64_t tc_atomic_u64
    size_t tc_load_acquire_size(tc_atomic_size *p)
    void tc_store_release_size(tc_atomic_size *p, size_t v)
    size_t tc_load_relaxed_size(tc_atomic_size *p)
    void tc_store_relaxed_size(tc_atomic_size *p, size_t v)
    uint64_t tc_load_relaxed_u64(tc_atomic_u64 *p)
    void tc_store_relaxed_u64(tc_atomic_u64 *p, uint64_t v)
    uint64_t tc_load_acquire_u64(tc_atomic_u64 *p)
    void tc_store_release_u64(tc_atomic_u64 *p, uint64_t v)

cdef extern from "spsc_ring.h" nogil:
    enum:
        TC_RING_CACHELINE
        TC_RING_ALIGN
        TC_RING_HEADER_SIZE
        TC_RING_MIN_CAPACITY

    const size_t TC_RING_MAX_CAPACITY
    const uint32_t TC_RING_WRAP_MARK

    enum tc_ring_rc:
        TC_RING_OK
        TC_RING_FULL
        TC_RING_TOO_BIG
        TC_RING_EINVAL
        TC_RING_ENOMEM

    ctypedef struct tc_ring:
        pass

    ctypedef struct tc_ring_view:
        double ts
        const unsigned char *topic
        size_t topic_len
        const unsigned char *payload
        size_t payload_len
        size_t size
        uint32_t flags

    ctypedef struct tc_ring_wview:
        unsigned char *topic
        unsigned char *payload
        size_t size

    size_t tc_ring_record_size(size_t topic_len, size_t payload_len)
    size_t tc_ring_max_record_for(size_t capacity)
    int tc_ring_create(tc_ring **out, size_t capacity)
    void tc_ring_destroy(tc_ring *r)
    size_t tc_ring_capacity(const tc_ring *r)
    size_t tc_ring_max_record(const tc_ring *r)

    # producer thread only
    unsigned char *tc_ring_reserve(tc_ring *r, size_t total_len)
    int tc_ring_reserve_record(tc_ring *r, double ts, size_t topic_len, size_t payload_len,
                               tc_ring_wview *out)
    int tc_ring_reserve_record_flags(tc_ring *r, double ts, uint32_t flags, size_t topic_len,
                                     size_t payload_len, tc_ring_wview *out)
    void tc_ring_commit(tc_ring *r)
    int tc_ring_try_write(tc_ring *r, double ts, const void *topic, size_t topic_len,
                          const void *payload, size_t payload_len)
    int tc_ring_try_write_flags(tc_ring *r, double ts, uint32_t flags, const void *topic,
                                size_t topic_len, const void *payload, size_t payload_len)

    # consumer thread only
    int tc_ring_peek(tc_ring *r, tc_ring_view *v)
    void tc_ring_consume(tc_ring *r, const tc_ring_view *v)
    void tc_ring_release(tc_ring *r)
    size_t tc_ring_mark(const tc_ring *r)
    void tc_ring_rewind(tc_ring *r, size_t mark)

    # any thread
    uint64_t tc_ring_drops_full(tc_ring *r)
    size_t tc_ring_used_bytes(tc_ring *r)


cdef extern from "tc_doorbell.h" nogil:
    ctypedef struct tc_doorbell:
        pass
    int tc_doorbell_init(tc_doorbell *db)
    void tc_doorbell_destroy(tc_doorbell *db)
    void tc_doorbell_arm(tc_doorbell *db)
    void tc_doorbell_disarm(tc_doorbell *db)
    int tc_doorbell_wait(tc_doorbell *db, long long timeout_ns)
    void tc_doorbell_ring(tc_doorbell *db)
    void tc_doorbell_kick(tc_doorbell *db)
    int tc_doorbell_take_kick(tc_doorbell *db)
    # lending the parked consumer to the producer (see the header's "Lending the consumer")
    ctypedef struct tc_lender:
        int (*drain)(void *ctx) noexcept nogil
        void *ctx
    void tc_doorbell_offer(tc_doorbell *db, tc_lender *lender)
    void tc_doorbell_withdraw(tc_doorbell *db)
    int tc_doorbell_borrow(tc_doorbell *db)
    void tc_doorbell_give_back(tc_doorbell *db)
    uint64_t tc_doorbell_lends(tc_doorbell *db)
    int tc_doorbell_lent(tc_doorbell *db)


cdef extern from "tc_park.h" nogil:
    # why tc_park (ByteRing.park) ended
    enum:
        TC_PARK_TIMEOUT   # the timeout passed, nobody rang
        TC_PARK_RECORDS   # a producer rang, or records were already there
        TC_PARK_KICKED    # wake() (a kick): someone wants the consumer back, records or not
    int tc_park(tc_ring *ring, tc_doorbell *db, int spins, int64_t timeout_ns,
                tc_lender *lender, int64_t *slept_ns)
    int tc_hand_off(tc_doorbell *db, uint64_t records, uint64_t lend_max)


cdef class ByteRing:
    # Owned: allocated in __cinit__, freed in __dealloc__. Never NULL after construction.
    cdef tc_ring *_ring
    # The consumer parks on it when the ring is empty; a producer rings it after its commits
    # (one ring per socket read, not per record). See tc_doorbell.h.
    cdef tc_doorbell bell
    cdef bint bell_ready
    # Consumer's: how long (ns) its last wait() lasted before records came; wait() spins
    # only when that was short (see WAIT_SPIN_WORTH_NS in _ring.pyx).
    cdef long long last_wait_ns
    # Consumer's parks so far (wait/park calls): written by the consumer only, read by any thread
    # (the engine thread's stats), hence relaxed atomics rather than a plain field.
    cdef tc_atomic_u64 parks_n

    # Consumer, without the GIL: spin briefly (only after short waits), arm the doorbell, park
    # up to timeout_ns, lent to the producer while asleep when `lender` is not NULL (tc_park.h).
    # Returns TC_PARK_TIMEOUT, TC_PARK_RECORDS or TC_PARK_KICKED (the kick is spent).
    cdef int park_ns(self, long long timeout_ns, tc_lender *lender) noexcept nogil
