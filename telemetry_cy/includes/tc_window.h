/* The window table: (device, sensor) -> per-key pane ring, owned by the engine thread alone.
 *
 * Time is cut into intervals of emit_every seconds; interval k = floor(ts / emit_every) (IEEE
 * double). A window of P = window / emit_every intervals is a ring of P panes per key, one pane per
 * interval, each holding count, sum, second moment (Welford), min, max and the first value. The tick
 * that closes interval k-1 (tick k, at time k * emit_every) covers intervals [k-P, k-1].
 *
 * Invariant the engine keeps (and everything here relies on): a reading is only applied when its
 * interval is >= every interval already closed, and a tick k is only closed once no key holds data
 * in interval >= k. So a key only ever writes its newest pane (or a newer one), panes older than the
 * newest are frozen, and per-key memory is constant whatever the key's rate. (In event time a key
 * may also write the few open panes between the closed tick and its newest: see "event time".)
 *
 * Each key also keeps its sequence baseline (the optional `n` field, tc_key_seq): 8 bytes of header.
 *
 * Storage: each key is one malloc'd record (header, P panes, name bytes, unit bytes, and with
 * quantiles on the sketch block of tc_window_qs.h at the 8-byte aligned end); a dense array
 * of record pointers gives O(live keys) scans with swap-remove; an open-addressing table (linear
 * probing, backward-shift deletion, no tombstones) maps hash -> dense index. No locks: one thread.
 */
#ifndef TC_WINDOW_H
#define TC_WINDOW_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tc_sketch.h"

/* TC_SCALAR_DIV: the scalar divisions of tc_div2 even where the CPU has two-lane ones (for
 * tests/test_merge_lanes.py, which holds the two paths to the same bits) */
#if defined(__SSE2__) && !defined(TC_SCALAR_DIV)
#define TC_DIV2_SSE2 1
#include <emmintrin.h>
#elif defined(__aarch64__) && !defined(TC_SCALAR_DIV)
#define TC_DIV2_NEON 1
#include <arm_neon.h>
#endif

typedef struct {
    uint32_t count;
    uint32_t _pad;
    double sum;
    double m2;    /* sum of squared deviations from this pane's mean (Welford) */
    double min;
    double max;
    double first; /* value of the earliest reading in the pane (by ts, ties by arrival) */
} tc_pane;

#define TC_NO_UNIT UINT32_MAX

/* Fields read for every reading come first (the first 64 bytes), the rarely used ones last. */
typedef struct {
    uint64_t hash;
    int64_t newest;         /* interval of the newest pane holding data */
    double last;            /* the key's latest reading (by ts, ties by arrival) ... */
    double last_ts;         /* ... and its ts; also drives TTL eviction */
    double newest_first_ts; /* ts of `first` in the newest pane: only that pane is still open */
    uint64_t last_seq;      /* the sequence baseline (see tc_key_seq) ... */
    uint32_t device_len;
    uint32_t sensor_len;
    uint32_t unit_len;      /* TC_NO_UNIT when the latest reading had no unit */
    uint32_t has_seq;       /* ... set by the key's first accepted reading with `n` */
    uint32_t dense_index;
    uint32_t unit_cap;
    tc_pane panes[];        /* P panes, then device bytes, sensor bytes, unit_cap unit bytes */
} tc_key;

typedef struct {
    uint64_t count;
    double sum, mean, min, max, m2, first, last;
    double var;   /* m2 / count: the stddev is its square root */
} tc_agg;

typedef struct {
    uint64_t *slots;   /* 0 = empty; else (hash high 32 bits << 32) | (dense index + 1) */
    size_t slot_mask;
    tc_key **keys;     /* dense array of live keys */
    size_t n_keys;
    size_t keys_cap;
    size_t max_keys;
    uint32_t panes;    /* pane-sized units before the names: P, or in event time the ring + tail */
    uint32_t ring;     /* panes that hold data, and sketch headers: P, or P + lead in event time */
    uint64_t seed;     /* random per table: keeps a hostile publisher from choosing collisions */
    size_t record_bytes; /* sum of record sizes, for state_bytes */
    uint32_t quantiles;  /* records carry a sketch block (tc_window_qs.h); set once, before keys */
} tc_table;

/* ---- hashing --------------------------------------------------------------------------------- */

static inline uint64_t tc_mix(uint64_t a, uint64_t b) {
#ifdef __SIZEOF_INT128__
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t r = a * b;
    return r ^ (r >> 29) ^ (b * (a >> 32));
#endif
}

/* The last n < 8 bytes as one word, every byte in it (so for a given n, distinct tails give
 * distinct words), from at most two fixed-size loads: a memcpy of a variable n into a word is a
 * libc call, and reloading the word as 8 bytes right after its narrower stores defeats
 * store-to-load forwarding (~3 ns per reading on the AMD EPYC, docs/performance.md). */
static inline uint64_t tc_tail_word(const char *p, size_t n) {
    if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + n - 4, 4);
        return (uint64_t)lo | ((uint64_t)hi << 32);
    }
    if (n == 0) return 0;
    return (uint64_t)(uint8_t)p[0] | ((uint64_t)(uint8_t)p[n >> 1] << 8) |
           ((uint64_t)(uint8_t)p[n - 1] << 16);
}

static inline uint64_t tc_hash_bytes(uint64_t h, const char *p, size_t n) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = tc_mix(h ^ w, 0x9E3779B97F4A7C15ULL);
        p += 8;
        n -= 8;
    }
    uint64_t w = tc_tail_word(p, n);
    /* the length goes in too, so ("ab", "c") and ("a", "bc") differ */
    return tc_mix(h ^ w ^ ((uint64_t)(n + 1) << 56), 0xBF58476D1CE4E5B9ULL);
}

static inline uint64_t tc_key_hash(uint64_t seed, const char *dev, size_t dlen, const char *sen,
                                   size_t slen) {
    uint64_t h = tc_hash_bytes(seed ^ ((uint64_t)dlen * 0x94D049BB133111EBULL), dev, dlen);
    h = tc_hash_bytes(h, sen, slen);
    h ^= h >> 31;
    return h;
}

/* ---- record layout ---------------------------------------------------------------------------- */

static inline char *tc_key_device(const tc_key *k, uint32_t panes) {
    return (char *)&k->panes[panes];
}
static inline char *tc_key_sensor(const tc_key *k, uint32_t panes) {
    return tc_key_device(k, panes) + k->device_len;
}
static inline char *tc_key_unit(const tc_key *k, uint32_t panes) {
    return tc_key_sensor(k, panes) + k->sensor_len;
}
static inline size_t tc_record_size(uint32_t panes, size_t dlen, size_t slen, size_t ucap) {
    return sizeof(tc_key) + (size_t)panes * sizeof(tc_pane) + dlen + slen + ucap;
}

/* ---- the sketch block: the one per-key addition of quantiles (logic in tc_window_qs.h) ------ */

/* With quantiles on, a record ends, at an 8-byte boundary after the unit bytes, with a block of
 * the pane sketches (layout B of docs/quantiles.md): this head, t->ring sketch headers (one per pane,
 * indexed like the panes), then `cap` counts of which the first `used` hold the panes' counts,
 * pane after pane in the order of their intervals, so the newest pane's counts are the last
 * ones. With quantiles off the block does not exist: the record is as small as before. */
typedef struct {
    uint32_t cap;   /* counts the block has room for */
    uint32_t used;  /* counts in use: the sum of the P headers' tc_sketch_buckets */
} tc_qs_head;

static inline size_t tc_qs_offset(uint32_t panes, const tc_key *k) {
    return (tc_record_size(panes, k->device_len, k->sensor_len, k->unit_cap) + 7) & ~(size_t)7;
}
static inline tc_qs_head *tc_key_qs(const tc_key *k, uint32_t panes) {
    return (tc_qs_head *)((char *)k + tc_qs_offset(panes, k));
}
static inline size_t tc_qs_bytes(uint32_t ring, uint32_t cap) {
    return sizeof(tc_qs_head) + (size_t)ring * sizeof(tc_sketch_hdr) + 4 * (size_t)cap;
}
/* The whole record of k, its sketch block included. */
static inline size_t tc_key_bytes(const tc_table *t, const tc_key *k) {
    if (!t->quantiles) return tc_record_size(t->panes, k->device_len, k->sensor_len, k->unit_cap);
    return tc_qs_offset(t->panes, k) + tc_qs_bytes(t->ring, tc_key_qs(k, t->panes)->cap);
}

/* ---- table ------------------------------------------------------------------------------------ */

static inline int tc_table_init(tc_table *t, uint32_t panes, size_t max_keys, uint64_t seed) {
    memset(t, 0, sizeof(*t));
    t->panes = panes;
    t->ring = panes;   /* the event-time engine sets its own before any key exists */
    t->max_keys = max_keys;
    t->seed = seed;
    size_t cap = 1024;
    t->slots = (uint64_t *)calloc(cap, sizeof(uint64_t));
    t->keys = (tc_key **)malloc(cap * sizeof(tc_key *));
    if (!t->slots || !t->keys) {
        free(t->slots);
        free(t->keys);
        t->slots = NULL;
        t->keys = NULL;
        return -1;
    }
    t->slot_mask = cap - 1;
    t->keys_cap = cap;
    return 0;
}

static inline void tc_table_free(tc_table *t) {
    if (t->keys) {
        for (size_t i = 0; i < t->n_keys; i++) free(t->keys[i]);
    }
    free(t->keys);
    free(t->slots);
    t->keys = NULL;
    t->slots = NULL;
    t->n_keys = 0;
}

static inline size_t tc_table_state_bytes(const tc_table *t) {
    return sizeof(*t) + (t->slot_mask + 1) * sizeof(uint64_t) + t->keys_cap * sizeof(tc_key *) +
           t->record_bytes;
}

/* Names are short (a few to a few dozen bytes) and, on the hot path, equal: compare whole words
 * (the last one overlapping), no per-byte branch and no call to memcmp. */
static inline int tc_bytes_equal(const char *a, const char *b, size_t n) {
    if (n >= 8) {
        uint64_t x, y, diff = 0;
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            diff |= x ^ y;
        }
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return (diff | (x ^ y)) == 0;
    }
    if (n >= 4) {
        uint32_t a0, a1, b0, b1;
        memcpy(&a0, a, 4);
        memcpy(&a1, a + n - 4, 4);
        memcpy(&b0, b, 4);
        memcpy(&b1, b + n - 4, 4);
        return ((a0 ^ b0) | (a1 ^ b1)) == 0;
    }
    if (n == 0) return 1;
    return a[0] == b[0] && a[n >> 1] == b[n >> 1] && a[n - 1] == b[n - 1];
}

static inline int tc_key_equals(const tc_key *k, uint32_t panes, const char *dev, size_t dlen,
                                const char *sen, size_t slen) {
    return k->device_len == dlen && k->sensor_len == slen &&
           tc_bytes_equal(tc_key_device(k, panes), dev, dlen) &&
           tc_bytes_equal(tc_key_sensor(k, panes), sen, slen);
}

/* Slot index holding `dense_index`, or of the first empty slot on the probe path. */
static inline size_t tc_find_slot_of_index(const tc_table *t, uint64_t hash, size_t dense_index) {
    size_t i = (size_t)hash & t->slot_mask;
    for (;;) {
        uint64_t s = t->slots[i];
        if (s == 0 || (s & 0xFFFFFFFFu) == dense_index + 1) return i;
        i = (i + 1) & t->slot_mask;
    }
}

static inline tc_key *tc_table_find(const tc_table *t, uint64_t hash, const char *dev, size_t dlen,
                                    const char *sen, size_t slen, size_t *slot_out) {
    size_t i = (size_t)hash & t->slot_mask;
    uint64_t tag = hash >> 32;
    for (;;) {
        uint64_t s = t->slots[i];
        if (s == 0) {
            *slot_out = i;
            return NULL;
        }
        if ((s >> 32) == tag) {
            tc_key *k = t->keys[(s & 0xFFFFFFFFu) - 1];
            if (tc_key_equals(k, t->panes, dev, dlen, sen, slen)) {
                *slot_out = i;
                return k;
            }
        }
        i = (i + 1) & t->slot_mask;
    }
}

/* The slot a lookup of `hash` reads first. At 1M keys a lookup is a chain of dependent cache misses
 * (slot -> keys[dense] -> record); the engine's batch loop hashes each reading a few readings
 * before it applies it and prefetches its slot, which takes the first, serial, miss off the chain
 * (docs/performance.md). A hint only: a table grown since costs a useless prefetch, nothing more. */
static inline void tc_prefetch_slot(const tc_table *t, uint64_t hash) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(&t->slots[(size_t)hash & t->slot_mask], 0, 3);
#else
    (void)t;
    (void)hash;
#endif
}

/* A tick reads every live key's record whole (header, P panes, names), one key after another in
 * dense order but each record somewhere else on the heap: at 1M keys every record is a run of
 * cache misses the hardware does not see coming. The scan asks for the record a few keys ahead. */
static inline void tc_prefetch_key(const tc_key *k, uint32_t panes) {
#if defined(__GNUC__) || defined(__clang__)
    const char *p = (const char *)k;
    const char *end = tc_key_device(k, panes) + 64;   /* the names' first bytes too */
    for (; p < end; p += 64) __builtin_prefetch(p, 0, 3);
#else
    (void)k;
    (void)panes;
#endif
}

static inline int tc_table_grow(tc_table *t) {
    size_t cap = (t->slot_mask + 1) * 2;
    uint64_t *slots = (uint64_t *)calloc(cap, sizeof(uint64_t));
    tc_key **keys = (tc_key **)realloc(t->keys, cap * sizeof(tc_key *));
    if (!slots || !keys) {
        free(slots);
        if (keys) t->keys = keys;
        return -1;
    }
    t->keys = keys;
    t->keys_cap = cap;
    free(t->slots);
    t->slots = slots;
    t->slot_mask = cap - 1;
    for (size_t d = 0; d < t->n_keys; d++) {
        uint64_t h = t->keys[d]->hash;
        size_t i = (size_t)h & t->slot_mask;
        while (t->slots[i] != 0) i = (i + 1) & t->slot_mask;
        t->slots[i] = ((h >> 32) << 32) | (uint64_t)(d + 1);
    }
    return 0;
}

/* Inserts a new key whose probe ended at `slot` (from tc_table_find). NULL when out of memory. */
static inline tc_key *tc_table_insert(tc_table *t, uint64_t hash, size_t slot, const char *dev,
                                      size_t dlen, const char *sen, size_t slen) {
    /* keep the load factor <= 3/4 so probe sequences stay short */
    if ((t->n_keys + 1) * 4 > (t->slot_mask + 1) * 3) {
        if (tc_table_grow(t) != 0) return NULL;
        tc_table_find(t, hash, dev, dlen, sen, slen, &slot);
    }
    size_t size = tc_record_size(t->panes, dlen, slen, 0);
    if (t->quantiles) size = ((size + 7) & ~(size_t)7) + tc_qs_bytes(t->ring, 0);
    tc_key *k = (tc_key *)malloc(size);
    if (!k) return NULL;
    memset(k, 0, sizeof(tc_key));
    k->hash = hash;
    k->newest = INT64_MIN;
    k->last_ts = -INFINITY;
    k->device_len = (uint32_t)dlen;
    k->sensor_len = (uint32_t)slen;
    k->unit_len = TC_NO_UNIT;
    k->unit_cap = 0;
    memcpy(tc_key_device(k, t->panes), dev, dlen);
    memcpy(tc_key_sensor(k, t->panes), sen, slen);
    for (uint32_t j = 0; j < t->panes; j++) k->panes[j].count = 0;
    if (t->quantiles) {
        tc_qs_head *q = tc_key_qs(k, t->panes);
        q->cap = q->used = 0;
        memset(q + 1, 0, (size_t)t->ring * sizeof(tc_sketch_hdr));
    }
    k->dense_index = (uint32_t)t->n_keys;
    t->keys[t->n_keys++] = k;
    t->slots[slot] = ((hash >> 32) << 32) | (uint64_t)t->n_keys;
    t->record_bytes += size;
    return k;
}

/* Removes the key at dense index d: frees it, swap-removes the dense array, and closes the hole in
 * the probe sequence by shifting later entries back (so lookups never need tombstones). */
static inline void tc_table_remove(tc_table *t, size_t d) {
    tc_key *k = t->keys[d];
    size_t hole = tc_find_slot_of_index(t, k->hash, d);
    size_t j = hole;
    for (;;) {
        j = (j + 1) & t->slot_mask;
        uint64_t s = t->slots[j];
        if (s == 0) break;
        size_t home = (size_t)t->keys[(s & 0xFFFFFFFFu) - 1]->hash & t->slot_mask;
        /* the entry at j may move into the hole unless its home lies cyclically in (hole, j] */
        int stays = (hole <= j) ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            t->slots[hole] = s;
            hole = j;
        }
    }
    t->slots[hole] = 0;
    t->record_bytes -= tc_key_bytes(t, k);
    free(k);

    size_t last = t->n_keys - 1;
    if (d != last) {
        tc_key *moved = t->keys[last];
        size_t s = tc_find_slot_of_index(t, moved->hash, last);
        t->slots[s] = (t->slots[s] & 0xFFFFFFFF00000000ULL) | (uint64_t)(d + 1);
        t->keys[d] = moved;
        moved->dense_index = (uint32_t)d;
    }
    t->n_keys = last;
}

/* ---- readings and aggregates ------------------------------------------------------------------ */

/* The pane of interval j: floor modulo, since intervals before the epoch are negative. */
static inline uint32_t tc_pane_of(int64_t j, uint32_t panes) {
    int64_t m = j % (int64_t)panes;
    return (uint32_t)(m < 0 ? m + (int64_t)panes : m);
}

/* Records the unit of the key's latest reading. May move the record (realloc): returns the key's
 * new address, or NULL when out of memory (the old record is then unchanged). */
static inline tc_key *tc_key_set_unit(tc_table *t, tc_key *k, const char *unit, uint32_t ulen) {
    if (unit == NULL) {
        k->unit_len = TC_NO_UNIT;
        return k;
    }
    if (k->unit_len == ulen && tc_bytes_equal(tc_key_unit(k, t->panes), unit, ulen)) {
        return k; /* the common case: a key's unit never changes */
    }
    if (ulen > k->unit_cap) {
        size_t old_size = tc_key_bytes(t, k);
        size_t qs_from = tc_qs_offset(t->panes, k);
        size_t qs_to = (tc_record_size(t->panes, k->device_len, k->sensor_len, ulen) + 7) &
                       ~(size_t)7;
        size_t new_size = t->quantiles ? qs_to + (old_size - qs_from)
                                       : tc_record_size(t->panes, k->device_len, k->sensor_len,
                                                        ulen);
        tc_key *moved = (tc_key *)realloc(k, new_size);
        if (!moved) return NULL;
        k = moved;
        /* the sketch block sits after the unit bytes: it moves up with them */
        if (t->quantiles) memmove((char *)k + qs_to, (char *)k + qs_from, old_size - qs_from);
        t->keys[k->dense_index] = k;
        k->unit_cap = ulen;
        t->record_bytes += new_size - old_size;
    }
    memcpy(tc_key_unit(k, t->panes), unit, ulen);
    k->unit_len = ulen;
    return k;
}

/* One reading x at time t into pane p. The times that decide `first` and `last`, and `last`
 * itself, live outside the pane (first_ts, last, last_ts): in the key's header for the newest pane,
 * in an open-pane slot for an older one (event time); last_ts may span panes (the key's latest). */
static inline void tc_pane_put(tc_pane *p, double x, double t, double *first_ts, double *last,
                               double *last_ts) {
    if (p->count == 0) {
        p->count = 1;
        p->sum = x;
        p->m2 = 0.0;
        p->min = x;
        p->max = x;
        p->first = x;
        *first_ts = t;
    } else {
        /* Welford: the pane keeps sum rather than mean so that sums stay as exact as a plain sum */
        double n = (double)p->count;
        double mean_old = p->sum / n;
        double delta = x - mean_old;
        p->sum += x;
        p->count += 1;
        p->m2 += delta * (x - p->sum / (n + 1.0));
        if (x < p->min) p->min = x;
        if (x > p->max) p->max = x;
        if (t < *first_ts) {
            p->first = x;
            *first_ts = t;
        }
    }
    if (t >= *last_ts) {
        *last = x;
        *last_ts = t;
    }
}

/* Adds one reading in interval `interval` (>= k->newest, see the invariant at the top) whose pane
 * is `pane` = tc_pane_of(interval, panes): the caller works it out once per run of readings that
 * share an interval, which keeps a 64-bit division off the per-reading path. */
static inline void tc_key_add(tc_key *k, uint32_t panes, int64_t interval, uint32_t pane, double ts,
                              double x) {
    if (interval > k->newest) {
        /* panes between the old newest and this interval had no data: empty them (at most P) */
        int64_t from = k->newest == INT64_MIN ? interval : k->newest + 1;
        if (interval - from >= (int64_t)panes) from = interval - (int64_t)panes + 1;
        for (int64_t j = from; j <= interval; j++) {
            k->panes[tc_pane_of(j, panes)].count = 0;
        }
        k->newest = interval;
    }
    tc_pane_put(&k->panes[pane], x, ts, &k->newest_first_ts, &k->last, &k->last_ts);
}

/* ---- sequence numbers ------------------------------------------------------------------------- */

/* A backward step of at most this much is a reorder; more (or back to 0 or 1) is a restart. */
#define TC_SEQ_MAX_REORDER 1024u
/* A forward step that skips more than this many numbers is a restart, not a gap. */
#define TC_SEQ_MAX_GAP ((uint64_t)1 << 20)

enum {
    TC_SEQ_FIRST = 0,     /* no baseline yet: this reading sets it */
    TC_SEQ_NEXT = 1,      /* n == last + 1 */
    TC_SEQ_GAP = 2,       /* last + 1 < n <= last + 1 + MAX_GAP: n - last - 1 numbers missing */
    TC_SEQ_DUPLICATE = 3, /* n == last */
    TC_SEQ_REORDER = 4,   /* last - MAX_REORDER <= n < last and n > 1: baseline kept */
    TC_SEQ_RESTART = 5,   /* n < last with n <= 1 or last - n > MAX_REORDER, or a forward step
                           * over more than MAX_GAP: the baseline becomes n */
    TC_SEQ_N_CLASSES = 6
};

/* Classifies an accepted reading's sequence number `n` against the key's baseline and moves the
 * baseline (docs/windows.md, "Sequence numbers and offenders"). For TC_SEQ_GAP, *gap is the count of
 * numbers skipped. Unsigned differences only, so nothing wraps. */
static inline int tc_key_seq(tc_key *k, uint64_t n, uint64_t *gap) {
    uint64_t last = k->last_seq;
    if (!k->has_seq) {
        k->has_seq = 1;
        k->last_seq = n;
        return TC_SEQ_FIRST;
    }
    if (n > last) {
        uint64_t skipped = n - last - 1;
        k->last_seq = n;
        if (skipped == 0) return TC_SEQ_NEXT;
        if (skipped > TC_SEQ_MAX_GAP) return TC_SEQ_RESTART;
        *gap = skipped;
        return TC_SEQ_GAP;
    }
    if (n == last) return TC_SEQ_DUPLICATE;
    if (n <= 1 || last - n > TC_SEQ_MAX_REORDER) {
        k->last_seq = n;
        return TC_SEQ_RESTART;
    }
    return TC_SEQ_REORDER;
}

/* Readings of interval `interval` (the one still open: no tick has covered it yet). */
static inline uint64_t tc_key_open_count(const tc_key *k, uint32_t panes, int64_t interval) {
    if (k->newest != interval) return 0;
    return k->panes[tc_pane_of(interval, panes)].count;
}

/* a / b and c / d, each rounded as the scalar IEEE division rounds it (so the results are the
 * pure twin's bit for bit), in one two-lane division where the CPU has one. A tick's scan is bound
 * by the divider, not by memory: the pairwise update below divides three times per pane, twelve
 * panes a key at the default window, and a scalar division issues every few cycles only
 * (docs/performance.md, "Columnar tick"). */
static inline void tc_div2(double a, double b, double c, double d, double *ab, double *cd) {
#if defined(TC_DIV2_SSE2)
    __m128d q = _mm_div_pd(_mm_set_pd(c, a), _mm_set_pd(d, b));
    *ab = _mm_cvtsd_f64(q);
    *cd = _mm_cvtsd_f64(_mm_unpackhi_pd(q, q));
#elif defined(TC_DIV2_NEON)
    float64x2_t q = vdivq_f64(vcombine_f64(vdup_n_f64(a), vdup_n_f64(c)),
                              vcombine_f64(vdup_n_f64(b), vdup_n_f64(d)));
    *ab = vgetq_lane_f64(q, 0);
    *cd = vgetq_lane_f64(q, 1);
#else
    *ab = a / b;
    *cd = c / d;
#endif
}

/* Merge panes [lo, hi] of a key (ring of `ring` panes) into out: every field but `last`. Returns
 * the count, 0 when no pane holds a reading. Panes are merged oldest first with Chan et al.'s
 * pairwise update, so the second moment never comes from a raw sum of squares. */
static inline uint64_t tc_merge_panes(const tc_key *k, uint32_t ring, int64_t lo, int64_t hi,
                                      tc_agg *out) {
    uint64_t n = 0;
    double sum = 0.0, m2 = 0.0, mn = 0.0, mx = 0.0, first = 0.0;
    /* one 64-bit modulo for the first pane, then the ring index steps and wraps */
    uint32_t x = tc_pane_of(lo, ring);
    for (int64_t j = lo; j <= hi; j++, x = x + 1 == ring ? 0 : x + 1) {
        const tc_pane *p = &k->panes[x];
        if (p->count == 0) continue;
        if (n == 0) {
            n = p->count;
            sum = p->sum;
            m2 = p->m2;
            mn = p->min;
            mx = p->max;
            first = p->first;
            continue;
        }
        double na = (double)n, nb = (double)p->count;
        double mean_b, mean_a, w;
        if (p->count == 1) {
            /* a pane of one reading (a sensor that reports once an interval): its mean is its sum
             * exactly (x / 1.0 == x), which leaves two divisions, one two-lane one */
            mean_b = p->sum;
            tc_div2(sum, na, na * nb, na + nb, &mean_a, &w);
        } else {
            tc_div2(p->sum, nb, sum, na, &mean_b, &mean_a);
            w = na * nb / (na + nb);
        }
        double delta = mean_b - mean_a;
        m2 += p->m2 + delta * delta * w;
        sum += p->sum;
        n += p->count;
        if (p->min < mn) mn = p->min;
        if (p->max > mx) mx = p->max;
    }
    if (n == 0) return 0;
    out->count = n;
    out->sum = sum;
    tc_div2(sum, (double)n, m2, (double)n, &out->mean, &out->var);
    out->min = mn;
    out->max = mx;
    out->m2 = m2;
    out->first = first;
    return n;
}

/* Aggregate for the tick closing interval tick-1 (covering [tick-P, tick-1]). Returns 0 when the
 * key has no reading in that span. Panes are merged oldest first with Chan et al.'s pairwise
 * update, so the second moment never comes from a raw sum of squares. */
static inline int tc_key_aggregate(const tc_key *k, uint32_t panes, int64_t tick, tc_agg *out) {
    if (k->newest == INT64_MIN || k->newest < tick - (int64_t)panes) return 0;
    int64_t lo = tick - (int64_t)panes;
    int64_t oldest_kept = k->newest - (int64_t)panes + 1;
    if (lo < oldest_kept) lo = oldest_kept;
    if (!tc_merge_panes(k, panes, lo, k->newest, out)) return 0;
    out->last = k->last;
    return 1;
}

/* ---- event time (docs/windows.md, "Event time") --------------------------------------------------
 *
 * In event mode a reading's interval is floor(t / emit_every) of its own time t, and the clock (the
 * closed tick) follows the watermark. With allowed lateness L, a key may hold data up to D =
 * ceil(L / emit_every) intervals ahead of the closed tick, and every interval from the closed tick
 * on is still open. The engine keeps the invariant newest <= closed + D for every key; so:
 *
 * - the ring has R = P + D panes: it must hold the next window's P panes [closed+1-P, closed] and
 *   the D open intervals ahead of it;
 * - `first` and `last` are by event time in every open pane, not only the newest: the newest pane's
 *   times stay in the header (newest_first_ts, last, last_ts, as in arrival mode), those of the at
 *   most D older open panes [closed, newest-1] in D slots after the ring (distinct modulo D);
 * - a window's `last` is the last of its newest non-empty pane: pane tick-1 while it closes, or else
 *   the last of the newest pane closed before (frozen_last, set when that pane closed).
 *
 * Record tail in event mode, after the R panes: frozen_last, then D slots (tc_event_units() pane-sized
 * units in all). With L = 0, D = 0 and there is no tail: the record is the arrival-mode record. */

typedef struct {
    double first_ts; /* t of the pane's `first` */
    double last;     /* value of the pane's latest reading (by t, ties by arrival) ... */
    double last_ts;  /* ... and its t */
} tc_open_pane;

/* Pane-sized units the record holds before its names: the ring, then the tail. */
static inline uint32_t tc_event_units(uint32_t ring, uint32_t lead) {
    if (lead == 0) return ring;
    size_t tail = sizeof(double) + (size_t)lead * sizeof(tc_open_pane);
    return ring + (uint32_t)((tail + sizeof(tc_pane) - 1) / sizeof(tc_pane));
}

static inline double *tc_key_frozen_last(tc_key *k, uint32_t ring) {
    return (double *)(void *)&k->panes[ring];
}

static inline tc_open_pane *tc_key_open_slot(tc_key *k, uint32_t ring, uint32_t lead, int64_t j) {
    int64_t m = j % (int64_t)lead;
    if (m < 0) m += (int64_t)lead;
    return (tc_open_pane *)(void *)((char *)&k->panes[ring] + sizeof(double)) + m;
}

/* Adds one reading at event time t in interval `interval` (closed <= interval <= closed + lead, the
 * engine checked it) whose pane is `pane` = tc_pane_of(interval, ring). */
static inline void tc_key_add_event(tc_key *k, uint32_t ring, uint32_t lead, int64_t interval,
                                    uint32_t pane, double t, double x) {
    if (interval > k->newest) {
        if (lead > 0 && k->newest != INT64_MIN) {
            /* the old newest pane may still be open: its times leave the header for its slot (a
             * pane already closed has no use for them, and the slot is no open pane's then) */
            tc_open_pane *o = tc_key_open_slot(k, ring, lead, k->newest);
            o->first_ts = k->newest_first_ts;
            o->last = k->last;
            o->last_ts = k->last_ts;
        }
        tc_key_add(k, ring, interval, pane, t, x); /* empties the skipped panes, header times */
        return;
    }
    if (interval == k->newest) {
        tc_key_add(k, ring, interval, pane, t, x);
        return;
    }
    /* an open pane older than the newest (lead > 0 here): its times are in its slot */
    tc_open_pane *o = tc_key_open_slot(k, ring, lead, interval);
    tc_pane *p = &k->panes[pane];
    if (p->count == 0) o->last_ts = -INFINITY;   /* the slot's times were an older pane's */
    tc_pane_put(p, x, t, &o->first_ts, &o->last, &o->last_ts);
}

/* Aggregate for the tick closing interval tick-1 (covering [tick-P, tick-1]) in event mode: as
 * tc_key_aggregate, but panes after tick-1 (still open) are left out and `last` is the window's
 * own. The engine calls it for every tick in order from the closed one on, so frozen_last is the
 * last of the newest non-empty pane closed so far. */
static inline int tc_key_aggregate_event(tc_key *k, uint32_t panes, uint32_t ring, uint32_t lead,
                                         int64_t tick, tc_agg *out) {
    if (k->newest == INT64_MIN || k->newest < tick - (int64_t)panes) return 0;
    int64_t lo = tick - (int64_t)panes;
    int64_t oldest_kept = k->newest - (int64_t)ring + 1;
    if (lo < oldest_kept) lo = oldest_kept;
    int64_t hi = tick - 1 < k->newest ? tick - 1 : k->newest;
    if (!tc_merge_panes(k, ring, lo, hi, out)) return 0;
    double last;
    if (hi == tick - 1 && k->panes[tc_pane_of(hi, ring)].count > 0) {
        /* pane tick-1 closes now: its last is the window's, and the frozen one from here on */
        last = (hi == k->newest || lead == 0) ? k->last : tc_key_open_slot(k, ring, lead, hi)->last;
        if (lead > 0) *tc_key_frozen_last(k, ring) = last;
    } else {
        last = lead > 0 ? *tc_key_frozen_last(k, ring) : k->last;
    }
    out->last = last;
    return 1;
}

/* Readings in the open intervals [closed, newest] of a key (event mode): in no aggregate yet. */
static inline uint64_t tc_key_open_count_event(const tc_key *k, uint32_t ring, int64_t closed) {
    if (k->newest == INT64_MIN || k->newest < closed) return 0;
    uint64_t n = 0;
    for (int64_t j = closed; j <= k->newest; j++) n += k->panes[tc_pane_of(j, ring)].count;
    return n;
}

#endif
