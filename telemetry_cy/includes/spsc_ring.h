/* Single-producer single-consumer byte ring: MQTT PUBLISH records from the network thread [1] to the
 * engine thread [2] (docs/design.md §1). Header-only, all `static inline`.
 *
 * Exactly one thread may call the producer functions (tc_ring_reserve*, tc_ring_commit,
 * tc_ring_try_write*) and exactly one thread the consumer functions (tc_ring_peek, tc_ring_consume,
 * tc_ring_release). The two may be different threads and neither ever waits for the other: a full
 * ring makes the producer drop (and count) the record, an empty ring makes the consumer return.
 * tc_ring_used_bytes, tc_ring_drops_full and the immutable getters may be called from any thread.
 *
 * Model: rigtorp/SPSCQueue and DPDK rte_ring, specialised to variable-size byte records.
 *
 * -- Indices ---------------------------------------------------------------------------------------
 * `head` and `tail` are free-running byte counters (never masked when stored); the byte offset in
 * the buffer is `index & mask`. head - tail is the number of bytes in use, so "empty" (head == tail)
 * and "full" (head - tail == capacity) are never ambiguous and no byte is sacrificed. All distances
 * are computed as unsigned differences, which stay correct if a counter wraps around SIZE_MAX (only
 * conceivable on 32-bit targets) because no distance exceeds 2 * capacity <= 2^32.
 *
 * -- Who owns what (one cache line each, TC_RING_CACHELINE = 128 bytes) ---------------------------
 *   line 0  buf, capacity, mask, max_record   written once by tc_ring_create, then read-only, so
 *                                             it sits Shared in both cores' caches forever.
 *   line 1  head                              written by the producer (once per commit), read by
 *                                             the consumer only when its cached copy says "empty".
 *   line 2  p_cached_tail, p_pending,         producer-private (drops_full is also read, relaxed,
 *           drops_full                        by gauges; rarely).
 *   line 3  tail                              written by the consumer (once per batch), read by
 *                                             the producer only when its cached copy says "full".
 *   line 4  c_cached_head, c_next             consumer-private.
 * Each side keeps a private copy of the other side's index (p_cached_tail, c_cached_head, the
 * rigtorp trick). The copy is always a conservative bound — the real tail can only be ahead of
 * p_cached_tail, so "fits with the cached tail" implies "fits"; the real head can only be ahead of
 * c_cached_head, so "non-empty with the cached head" implies "non-empty". Only when the cached value
 * says no does a side read the other side's index line, so with a backlog each side works in its
 * own lines and the coherence traffic is about one line transfer per batch.
 * Unlike rigtorp/SPSCQueue, the private state is not on the same line as the published index: when
 * the ring is full the producer polls `tail` on every attempt (it drops, it never waits, and the
 * next record comes right away), and the consumer's per-record cursor update would then bounce that
 * line between the cores once per record; here the consumer pays the transfer once per release.
 * The same holds for the empty ring, a polling consumer and the producer's private fields. The cost
 * is 256 bytes of padding per ring.
 * 128 rather than 64: Apple M-series and some aarch64 cores use 128-byte lines, and Intel's adjacent
 * line prefetcher pulls lines in 128-byte pairs, so 64-byte padding would still false-share there.
 *
 * -- Acquire/release pairing -------------------------------------------------------------------------
 *   (P1) producer writes record bytes (and a wrap marker) into [head, p_pending) with plain stores,
 *   (P2) producer: store_release(head, p_pending)                        [tc_ring_commit]
 *   (C1) consumer: load_acquire(head)                                    [tc_ring_peek]
 *        pairs with P2: every byte written in P1 is visible to the consumer's plain loads.
 *   (C2) consumer reads records in [tail, c_next) with plain loads,
 *   (C3) consumer: store_release(tail, c_next)                           [tc_ring_release]
 *   (P0) producer: load_acquire(tail)                                    [tc_ring_reserve]
 *        pairs with C3: the consumer's reads in C2 happen-before the producer's next overwrite of
 *        those bytes, so the producer can never change a record the consumer is still reading.
 * No other ordering is needed; there is no seq_cst and no read-modify-write anywhere.
 *
 * -- Records ---------------------------------------------------------------------------------------
 * Every record starts at an 8-aligned offset: tc_ring_hdr (24 bytes) + topic + payload, padded up to
 * a multiple of 8 (tc_ring_record_size). The header's `flags` word is opaque to the ring: the MQTT
 * source stores the PUBLISH fixed-header flags there (DUP, QoS, RETAIN; mqtt_frames.h), which the
 * engine ignores and the capture recorder keeps (docs/capture.md). A record never wraps, so the consumer gets contiguous
 * pointers and never copies. When a record does not fit between the producer's offset and the end of
 * the buffer, the producer writes a wrap marker there (only the first 4 bytes: total_len =
 * TC_RING_WRAP_MARK; there are always at least 8 bytes left because everything is 8-aligned) and puts
 * the record at offset 0. The skipped tail bytes count as used until the consumer passes them, so the
 * fullness check uses pad + total_len. Marker and record are published by the same commit, so a
 * consumer that sees a marker always finds a record at offset 0.
 *
 * Largest record: max_record = capacity/2 - 8, the largest multiple of 8 below capacity/2. Any record
 * of at most that size fits into an EMPTY ring wherever head is (worst-case wrap padding is
 * total_len - 8, and 2 * total_len - 8 < capacity), so "full" always means "the consumer is behind",
 * never "this record can never be written".
 */
#ifndef TC_SPSC_RING_H
#define TC_SPSC_RING_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tc_atomic.h"

#define TC_RING_CACHELINE 128
#define TC_RING_ALIGN 8
#define TC_RING_HEADER_SIZE 24
#define TC_RING_WRAP_MARK 0xFFFFFFFFu
#define TC_RING_MIN_CAPACITY 64
/* 2^31 keeps every record length (< 2^30) and the wrap marker apart in a uint32. */
#define TC_RING_MAX_CAPACITY ((size_t)1 << 31)

enum tc_ring_rc {
    TC_RING_OK = 0,
    TC_RING_FULL = -1,    /* the consumer is behind; the record was dropped and counted */
    TC_RING_TOO_BIG = -2, /* record_size > max_record; nothing counted: the caller's "oversize" */
    TC_RING_EINVAL = -3,  /* tc_ring_create: capacity not a power of two in [MIN, MAX] */
    TC_RING_ENOMEM = -4   /* tc_ring_create: allocation failed */
};

/* On-ring record header. Native byte order: producer and consumer are the same process. */
typedef struct tc_ring_hdr {
    uint32_t total_len;   /* header + topic + payload + padding (multiple of 8), or WRAP_MARK */
    uint32_t topic_len;
    double ts;            /* arrival time (one clock read per socket read, docs/design.md §1) */
    uint32_t payload_len; /* a record is at most max_record < 2^30 bytes, so 32 bits always hold it */
    uint32_t flags;       /* the producer's, carried verbatim (see "Records" above) */
} tc_ring_hdr;

_Static_assert(sizeof(tc_ring_hdr) == TC_RING_HEADER_SIZE, "tc_ring_hdr must be 24 bytes");
_Static_assert(TC_RING_HEADER_SIZE % TC_RING_ALIGN == 0, "header keeps records 8-aligned");

/* What the consumer sees: pointers into the ring, valid until its next tc_ring_release(). */
typedef struct tc_ring_view {
    double ts;
    const unsigned char *topic;
    size_t topic_len;
    const unsigned char *payload;
    size_t payload_len;
    size_t size;          /* bytes this record occupies (tc_ring_record_size) */
    uint32_t flags;       /* the header's flags word */
} tc_ring_view;

/* What the producer fills between tc_ring_reserve_record() and tc_ring_commit(). */
typedef struct tc_ring_wview {
    unsigned char *topic;
    unsigned char *payload;
    size_t size;
} tc_ring_wview;

typedef struct tc_ring {
    /* line 0: immutable after tc_ring_create */
    unsigned char *buf;
    size_t capacity;
    size_t mask;
    size_t max_record;

    /* line 1: written by the producer, read by the consumer (C1) */
    _Alignas(TC_RING_CACHELINE) tc_atomic_size head;

    /* line 2: producer-private, except drops_full, which gauges may read (relaxed) from anywhere */
    _Alignas(TC_RING_CACHELINE) size_t p_cached_tail; /* last tail acquired; never ahead of tail */
    size_t p_pending;       /* head after the outstanding reservation (== head when none) */
    tc_atomic_u64 drops_full;

    /* line 3: written by the consumer, read by the producer (P0) */
    _Alignas(TC_RING_CACHELINE) tc_atomic_size tail;

    /* line 4: consumer-private */
    _Alignas(TC_RING_CACHELINE) size_t c_cached_head; /* last head acquired; never ahead of head */
    size_t c_next;          /* read cursor: records in [tail, c_next) are consumed, not released */
} tc_ring;
/* _Alignas on the members rounds sizeof(tc_ring) up to a multiple of 128, so the buffer that follows
 * the struct in the same allocation starts on its own line and the last line holds no record bytes. */
_Static_assert(sizeof(tc_ring) == 5 * TC_RING_CACHELINE, "one line per role");

/* Bytes a record with these lengths occupies, or SIZE_MAX when it cannot be represented (which is
 * always > max_record, so callers only need one comparison). */
static inline size_t tc_ring_record_size(size_t topic_len, size_t payload_len)
{
    if (topic_len > TC_RING_MAX_CAPACITY || payload_len > TC_RING_MAX_CAPACITY)
        return SIZE_MAX;
    return (TC_RING_HEADER_SIZE + topic_len + payload_len + (TC_RING_ALIGN - 1))
           & ~(size_t)(TC_RING_ALIGN - 1);
}

static inline size_t tc_ring_max_record_for(size_t capacity)
{
    return capacity / 2 - TC_RING_ALIGN;
}

/* One aligned allocation holds the struct and the buffer. Not thread-safe (nothing is shared yet). */
static inline int tc_ring_create(tc_ring **out, size_t capacity)
{
    *out = NULL;
    if (capacity < TC_RING_MIN_CAPACITY || capacity > TC_RING_MAX_CAPACITY
        || (capacity & (capacity - 1)) != 0)
        return TC_RING_EINVAL;
    /* Whole lines: the buffer's last line is not shared with whatever the allocator places next,
     * and C11 aligned_alloc wants a size that is a multiple of the alignment. (aligned_alloc rather
     * than posix_memalign: plain C11, no feature-test macro needed by includers.) */
    size_t bytes = sizeof(tc_ring) + capacity;
    bytes = (bytes + TC_RING_CACHELINE - 1) & ~(size_t)(TC_RING_CACHELINE - 1);
    void *mem = aligned_alloc(TC_RING_CACHELINE, bytes);
    if (mem == NULL)
        return TC_RING_ENOMEM;
    tc_ring *r = (tc_ring *)mem;
    memset(r, 0, sizeof(tc_ring));
    r->buf = (unsigned char *)mem + sizeof(tc_ring);
    r->capacity = capacity;
    r->mask = capacity - 1;
    r->max_record = tc_ring_max_record_for(capacity);
    /* Touch every page now, so the network thread never takes a first-touch page fault mid-burst. */
    memset(r->buf, 0, capacity);
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->drops_full, 0);
    /* Publication of the struct itself to the two threads is the caller's job (thread creation or
     * a queue hand-off both synchronise). */
    *out = r;
    return TC_RING_OK;
}

/* Only once both threads are done with the ring (joined, or holding no reference any more). */
static inline void tc_ring_destroy(tc_ring *r)
{
    free(r);
}

static inline size_t tc_ring_capacity(const tc_ring *r) { return r->capacity; }
static inline size_t tc_ring_max_record(const tc_ring *r) { return r->max_record; }

/* ---- producer side ------------------------------------------------------------------------------ */

static inline void tc_ring__count_full(tc_ring *r)
{
    /* Single writer (the producer), so load+store is an exact increment; relaxed because the value
     * guards no data, it is only a gauge. */
    tc_store_relaxed_u64(&r->drops_full, tc_load_relaxed_u64(&r->drops_full) + 1);
}

/* Phase 1 of a write: room for one record of `total_len` bytes (from tc_ring_record_size, so a
 * multiple of 8, header included). Returns where the record starts, or NULL when the ring is full
 * (counted in drops_full: the caller must drop, never retry in a loop) or when total_len is
 * malformed or > max_record (NOT counted; check sizes first and count "oversize" yourself, or use
 * tc_ring_reserve_record, which tells the two apart). The caller writes the tc_ring_hdr and the
 * bytes, possibly across several socket reads, then calls tc_ring_commit(). Nothing is visible to the
 * consumer before the commit; a second reserve without a commit abandons the first. */
static inline unsigned char *tc_ring_reserve(tc_ring *r, size_t total_len)
{
    /* Our own index: only this thread writes it, so relaxed is exact. */
    size_t head = tc_load_relaxed_size(&r->head);
    /* Any earlier uncommitted reservation is abandoned here, also when this one fails, so that a
     * stray tc_ring_commit() after a NULL can never publish a half-written record. */
    r->p_pending = head;
    if (total_len > r->max_record || total_len < TC_RING_HEADER_SIZE
        || (total_len & (TC_RING_ALIGN - 1)) != 0)
        return NULL;
    size_t off = head & r->mask;
    size_t contig = r->capacity - off;
    size_t pad = contig < total_len ? contig : 0;
    size_t end = head + pad + total_len;
    if (end - r->p_cached_tail > r->capacity) {
        /* (P0) pairs with the consumer's release in tc_ring_release (C3): once we see its tail,
         * its reads of the bytes below that tail are finished and we may overwrite them. */
        r->p_cached_tail = tc_load_acquire_size(&r->tail);
        if (end - r->p_cached_tail > r->capacity) {
            tc_ring__count_full(r);
            return NULL;
        }
    }
    if (pad) {
        /* Only after the space check: with a full ring these bytes are still unread data. */
        const uint32_t mark = TC_RING_WRAP_MARK;
        memcpy(r->buf + off, &mark, sizeof mark);
        off = 0;
    }
    r->p_pending = end;
    return r->buf + off;
}

/* Phase 1 with the header written for you: returns TC_RING_OK (fill out->topic / out->payload, then
 * tc_ring_commit), TC_RING_FULL (counted in drops_full) or TC_RING_TOO_BIG (not counted). */
static inline int tc_ring_reserve_record_flags(tc_ring *r, double ts, uint32_t flags,
                                               size_t topic_len, size_t payload_len,
                                               tc_ring_wview *out)
{
    size_t total = tc_ring_record_size(topic_len, payload_len);
    if (total > r->max_record)
        return TC_RING_TOO_BIG;
    unsigned char *p = tc_ring_reserve(r, total);
    if (p == NULL)
        return TC_RING_FULL;
    tc_ring_hdr h;
    h.total_len = (uint32_t)total;
    h.topic_len = (uint32_t)topic_len;
    h.ts = ts;
    h.payload_len = (uint32_t)payload_len;  /* total <= max_record < 2^30: no truncation */
    h.flags = flags;
    memcpy(p, &h, sizeof h);  /* memcpy: the buffer is raw bytes; no aliasing assumptions */
    out->topic = p + TC_RING_HEADER_SIZE;
    out->payload = p + TC_RING_HEADER_SIZE + topic_len;
    out->size = total;
    return TC_RING_OK;
}

/* The same with flags 0, for producers that have none to carry. */
static inline int tc_ring_reserve_record(tc_ring *r, double ts, size_t topic_len, size_t payload_len,
                                         tc_ring_wview *out)
{
    return tc_ring_reserve_record_flags(r, ts, 0, topic_len, payload_len, out);
}

/* Phase 2: publish the reserved record. (P2) The release store makes every byte written since the
 * reserve (header, topic, payload, wrap marker) visible to the consumer's acquire (C1). After a
 * failed reserve (or a second commit) this stores the current head again, which is harmless. */
static inline void tc_ring_commit(tc_ring *r)
{
    tc_store_release_size(&r->head, r->p_pending);
}

/* One-shot copy: 0 ok, TC_RING_FULL (-1, counted in drops_full), TC_RING_TOO_BIG (-2, not counted). */
static inline int tc_ring_try_write_flags(tc_ring *r, double ts, uint32_t flags, const void *topic,
                                          size_t topic_len, const void *payload, size_t payload_len)
{
    tc_ring_wview w;
    int rc = tc_ring_reserve_record_flags(r, ts, flags, topic_len, payload_len, &w);
    if (rc != TC_RING_OK)
        return rc;
    /* Guards: memcpy from NULL is undefined even for 0 bytes. */
    if (topic_len)
        memcpy(w.topic, topic, topic_len);
    if (payload_len)
        memcpy(w.payload, payload, payload_len);
    tc_ring_commit(r);
    return TC_RING_OK;
}

/* The same with flags 0. */
static inline int tc_ring_try_write(tc_ring *r, double ts, const void *topic, size_t topic_len,
                                    const void *payload, size_t payload_len)
{
    return tc_ring_try_write_flags(r, ts, 0, topic, topic_len, payload, payload_len);
}

/* Records refused because the ring was full, since creation. Any thread; approximate off-producer. */
static inline uint64_t tc_ring_drops_full(tc_ring *r)
{
    return tc_load_relaxed_u64(&r->drops_full);
}

/* ---- consumer side ------------------------------------------------------------------------------ */

/* The next unconsumed record, without copying: 1 and *v filled, or 0 when the ring is empty. The
 * pointers stay valid until the next tc_ring_release(), however many records are consumed before. */
static inline int tc_ring_peek(tc_ring *r, tc_ring_view *v)
{
    size_t pos = r->c_next;
    if (pos == r->c_cached_head) {
        /* (C1) pairs with tc_ring_commit's release (P2): all bytes below this head are written. */
        r->c_cached_head = tc_load_acquire_size(&r->head);
        if (pos == r->c_cached_head)
            return 0;
    }
    size_t off = pos & r->mask;
    uint32_t total;
    memcpy(&total, r->buf + off, sizeof total);
    if (total == TC_RING_WRAP_MARK) {
        /* The producer published marker and record in one commit, so offset 0 holds a record below
         * c_cached_head: no second acquire needed. The skipped bytes are released with the batch. */
        pos += r->capacity - off;
        r->c_next = pos;
        off = 0;
    }
    tc_ring_hdr h;
    memcpy(&h, r->buf + off, sizeof h);
    v->ts = h.ts;
    v->topic = r->buf + off + TC_RING_HEADER_SIZE;
    v->topic_len = h.topic_len;
    v->payload = v->topic + h.topic_len;
    v->payload_len = (size_t)h.payload_len;
    v->size = h.total_len;
    v->flags = h.flags;
    return 1;
}

/* Step past the record last returned by tc_ring_peek. The producer cannot reuse its bytes yet. */
static inline void tc_ring_consume(tc_ring *r, const tc_ring_view *v)
{
    r->c_next += v->size;
}

/* Hand every consumed record (and skipped wrap padding) back to the producer at once. (C3) The
 * release store orders all our reads of those bytes before the producer may see the new tail (P0).
 * Invalidates every view obtained before. */
static inline void tc_ring_release(tc_ring *r)
{
    tc_store_release_size(&r->tail, r->c_next);
}

/* Where the next tc_ring_peek starts, and back to such a mark: a consumer that consumed records it
 * then cannot process (tc_park.h: a lent drain stopping before a record only the consumer's own
 * thread may process) rewinds to the mark taken before that record's peek, then releases. Only
 * between peeks and before the release that would pass the mark: consumer-private state, the
 * producer never sees an unreleased cursor. */
static inline size_t tc_ring_mark(const tc_ring *r)
{
    return r->c_next;
}

static inline void tc_ring_rewind(tc_ring *r, size_t mark)
{
    r->c_next = mark;
}

/* ---- either side -------------------------------------------------------------------------------- */

/* Bytes in use (records, wrap padding, consumed-but-unreleased records), for a depth gauge. Exact when
 * neither side is running; otherwise a snapshot that may be stale by the time it returns. */
static inline size_t tc_ring_used_bytes(tc_ring *r)
{
    /* tail first, with acquire: the consumer released that tail after acquiring a head at least as
     * large, so the head we load next is >= tail and the difference never goes "negative". It can
     * exceed capacity (both sides moved between our two loads), hence the clamp. */
    size_t tail = tc_load_acquire_size(&r->tail);
    size_t head = tc_load_acquire_size(&r->head);
    size_t used = head - tail;
    return used > r->capacity ? r->capacity : used;
}

#endif /* TC_SPSC_RING_H */
