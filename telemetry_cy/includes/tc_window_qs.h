/* Quantiles in the window table: one sketch per pane (tc_sketch.h) in the key's record, merged at
 * the tick like the other pane statistics. docs/windows.md ("Quantiles") states what the engine
 * reports and guarantees; docs/quantiles.md proves the sketch's bound.
 *
 * Where the counts live: the sketch block at the end of the record (tc_qs_head, tc_window.h).
 * Pane p's header is hdr[p] (t->ring of them); the counts of the panes holding data follow one
 * another in the order of their intervals. In arrival time only the newest pane is ever written
 * (tc_window.h's invariant), so its counts are the last `buckets(hdr[newest])` of `used`, and a
 * new extreme in it (a wider shape, rare) only grows the block at its end. In event time a
 * reading may also land in one of the few open panes just below the newest: its counts end where
 * the newer panes' begin (a short walk down from the newest), and a wider shape there moves the
 * newer panes' counts up. When the key moves to a newer interval, the
 * panes it reuses are the oldest ones stored, a prefix of the counts: they are cut off with one
 * memmove, and the new pane starts empty at the end. So a pane's shape is always tight and its
 * counts depend only on its values: the compiled engine and the pure twin (one sketch_py sketch
 * per pane) hold the same counts and report the same quantiles, bit for bit.
 *
 * Memory: the block grows (realloc of the record) to the sum of the panes' bucket ranges plus
 * TC_QS_SLACK counts, and never shrinks while the key lives. No proportional slack: a roll frees
 * the oldest pane's counts and the new pane refills about as many, so once a key's first window
 * is full its block holds steady and reallocs stop (a quarter of slack cost ~130 bytes per key of
 * sensor-like data, past the 2 KiB budget). Hard cap: R * 2 * TC_SKETCH_CAP counts, slack included (docs/windows.md).
 *
 * No Python, no locks: the engine thread owns the table, and the tick's merge runs here in C.
 */
#ifndef TC_WINDOW_QS_H
#define TC_WINDOW_QS_H

#include "tc_sketch.h"
#include "tc_window.h"

/* Counts a growing block gets beyond what it needs: a new pane's range widens a bucket or two at
 * a time, so this saves most reallocs while the first window fills. */
#define TC_QS_SLACK 4

/* tc_qs_quantiles reads at most this many q (rules.MAX_QUANTILES) */
#define TC_QS_MAX_QUANTILES 8

enum {
    TC_QS_OK = 0,
    TC_QS_FULL = 1,    /* the pane already holds 2^32 - 1 values: the reading is a counted drop */
    TC_QS_NOMEM = -1,  /* the record could not grow: nothing changed but the roll */
};

static inline tc_sketch_hdr *tc_qs_hdrs(tc_qs_head *b) {
    return (tc_sketch_hdr *)(b + 1);
}
static inline uint32_t *tc_qs_counts(tc_qs_head *b, uint32_t ring) {
    return (uint32_t *)(tc_qs_hdrs(b) + ring);
}

/* The panes the key reuses to reach `interval` (> k->newest), exactly those tc_key_add empties,
 * lose their sketches. Stored intervals are [newest - R + 1, newest] (R = the ring) in order and
 * the reused panes held the oldest of them, so their counts are a prefix. */
static inline void tc_qs_roll(const tc_key *k, tc_qs_head *b, uint32_t ring, int64_t interval) {
    int64_t from = k->newest == INT64_MIN ? interval : k->newest + 1;
    if (interval - from >= (int64_t)ring) from = interval - (int64_t)ring + 1;
    tc_sketch_hdr *hd = tc_qs_hdrs(b);
    uint32_t drop = 0;
    for (int64_t j = from; j <= interval; j++) {
        tc_sketch_hdr *h = &hd[tc_pane_of(j, ring)];
        drop += tc_sketch_buckets(h);
        tc_sketch_hdr_clear(h);
    }
    if (drop) {
        uint32_t *c = tc_qs_counts(b, ring);
        memmove(c, c + drop, (size_t)(b->used - drop) * sizeof *c);
        b->used -= drop;
    }
}

/* Where the counts of stored interval j end: `used` less the counts of the newer panes. */
static inline uint32_t tc_qs_end_of(const tc_key *k, const tc_qs_head *b, uint32_t ring,
                                    int64_t j) {
    const tc_sketch_hdr *hd = (const tc_sketch_hdr *)(b + 1);
    uint32_t end = b->used;
    for (int64_t i = k->newest; i > j; i--) end -= tc_sketch_buckets(&hd[tc_pane_of(i, ring)]);
    return end;
}

/* A wider shape nh for the pane whose counts end at `end`: grow the record if need be, move the
 * newer panes' counts up, lay the pane's counts out in nh, add x again. May move the record (*kp,
 * t->keys updated). */
static TC_SKETCH_COLD int tc_qs_add_reshaped(tc_table *t, tc_key **kp, const tc_sketch_map *m,
                                             uint32_t pane, uint32_t end, double x,
                                             tc_sketch_hdr *nh) {
    uint32_t ring = t->ring;
    tc_key *k = *kp;
    tc_qs_head *b = tc_key_qs(k, t->panes);
    uint32_t old_len = tc_sketch_buckets(&tc_qs_hdrs(b)[pane]);
    uint32_t new_len = tc_sketch_buckets(nh);
    uint32_t need = b->used - old_len + new_len;
    if (need > b->cap) {
        uint32_t cap = need + TC_QS_SLACK;
        uint32_t most = ring * 2 * TC_SKETCH_CAP;   /* every pane at both stores' cap */
        if (cap > most) cap = most;
        size_t old_size = tc_key_bytes(t, k);
        size_t new_size = old_size + 4 * (size_t)(cap - b->cap);
        tc_key *moved = (tc_key *)realloc(k, new_size);
        if (!moved) return TC_QS_NOMEM;
        k = *kp = moved;
        t->keys[k->dense_index] = k;
        t->record_bytes += new_size - old_size;
        b = tc_key_qs(k, t->panes);
        b->cap = cap;
    }
    tc_sketch_hdr *h = &tc_qs_hdrs(b)[pane];
    uint32_t *c = tc_qs_counts(b, ring) + (end - old_len);
    uint32_t old[2 * TC_SKETCH_CAP];
    memcpy(old, c, (size_t)old_len * sizeof *old);
    if (end < b->used)   /* an open pane below the newest (event time): the newer counts move */
        memmove(c + new_len, c + old_len, (size_t)(b->used - end) * sizeof *c);
    tc_sketch_relayout(h, old, nh, c);
    *h = *nh;
    b->used = need;
    tc_sketch_hdr again;
    /* in the shape now: counted (the pane is not full, or hdr_add had said so) */
    return tc_sketch_hdr_add(h, c, m, x, &again) == TC_SKETCH_OK ? TC_QS_OK : TC_QS_NOMEM;
}

/* Adds the reading x of `interval` (pane = its pane in the ring) to the key's sketches: the newest
 * or a newer interval, or in event time an open one below the newest (still in the ring). Called
 * before tc_key_add / tc_key_add_event, which it leaves to move k->newest. x is finite (the decoder
 * counts NaN and infinities as non_finite). May move the record (*kp). */
static inline int tc_key_qs_add(tc_table *t, tc_key **kp, const tc_sketch_map *m,
                                int64_t interval, uint32_t pane, double x) {
    uint32_t ring = t->ring;
    tc_key *k = *kp;
    tc_qs_head *b = tc_key_qs(k, t->panes);
    if (interval > k->newest) tc_qs_roll(k, b, ring, interval);
    uint32_t end = interval >= k->newest ? b->used : tc_qs_end_of(k, b, ring, interval);
    tc_sketch_hdr *h = &tc_qs_hdrs(b)[pane];
    uint32_t *c = tc_qs_counts(b, ring) + (end - tc_sketch_buckets(h));
    tc_sketch_hdr nh;
    int r = tc_sketch_hdr_add(h, c, m, x, &nh);
    if (r == TC_SKETCH_OK) return TC_QS_OK;
    if (r == TC_SKETCH_NEEDS_SHAPE) return tc_qs_add_reshaped(t, kp, m, pane, end, x, &nh);
    return TC_QS_FULL;   /* TC_SKETCH_E_FULL (E_NONFINITE cannot come: see above) */
}

/* tc_sketch_store_fold with a fast path: a source range inside the destination (no collapse,
 * the common case) is a plain add the compiler vectorizes; anything else folds as the sketch
 * does. Same counts either way. */
static inline void tc_qs_store_add(int32_t smin, uint32_t slen, const uint32_t *sc, int32_t dmin,
                                   uint32_t dlen, uint32_t *dc) {
    if (slen == 0) return;
    if (smin >= dmin && (int64_t)smin + slen <= (int64_t)dmin + dlen) {
        uint32_t *d = dc + (smin - dmin);
        for (uint32_t k = 0; k < slen; k++) d[k] += sc[k];
    } else {
        tc_sketch_store_fold(smin, slen, sc, dmin, dlen, dc);
    }
}

/* The sketch of the key's window at tick `tick` (intervals [tick - P, tick - 1]; P = `panes`, the
 * window's panes, at most the ring; in event time newer open panes are left out) into s: exactly
 * what merging its panes one by one (tc_sketch_merge) would hold, built in two passes so that s is
 * reshaped once, not once per pane: the union of the panes' shapes (a union of ranges cut at the
 * cap is the same whatever the order), then every pane folded in. TC_SKETCH_OK, E_FULL (the
 * window holds more than 2^32 - 1 values; s is then empty) or E_NOMEM (s could not grow). */
static inline int tc_key_qs_window(const tc_table *t, const tc_key *k, uint32_t panes,
                                   int64_t tick, tc_sketch *s) {
    uint32_t ring = t->ring;
    tc_qs_head *b = tc_key_qs(k, t->panes);
    const tc_sketch_hdr *hd = tc_qs_hdrs(b);
    const uint32_t *c = tc_qs_counts(b, ring);
    int64_t first = k->newest - (int64_t)ring + 1, lo = tick - (int64_t)panes, hi = tick - 1;
    /* pane indexes step through the ring: one division here, not one per pane */
    uint32_t p0 = tc_pane_of(first, ring), p;
    tc_sketch_hdr shape;
    uint64_t n = 0;
    tc_sketch_clear(s);
    tc_sketch_hdr_clear(&shape);
    p = p0;
    for (int64_t j = first; j <= k->newest; j++, p = p + 1 == ring ? 0 : p + 1) {
        if (j < lo || j > hi) continue;
        n += hd[p].n;
        tc_sketch_shape_union(&shape, &hd[p]);
    }
    if (n > TC_SKETCH_MAX_COUNT) return TC_SKETCH_E_FULL;
    uint32_t used = tc_sketch_buckets(&shape);
    if (tc_sketch_reserve(s, used) != TC_SKETCH_OK) return TC_SKETCH_E_NOMEM;
    if (used) memset(s->counts, 0, (size_t)used * sizeof *s->counts);   /* NULL when cap == 0 */
    uint32_t off = 0;
    p = p0;
    for (int64_t j = first; j <= k->newest; j++, p = p + 1 == ring ? 0 : p + 1) {
        const tc_sketch_hdr *h = &hd[p];
        if (j >= lo && j <= hi && h->n) {
            tc_qs_store_add(h->pos_min, h->pos_len, c + off, shape.pos_min, shape.pos_len,
                            s->counts);
            tc_qs_store_add(h->neg_min, h->neg_len, c + off + h->pos_len, shape.neg_min,
                            shape.neg_len, s->counts + shape.pos_len);
        }
        off += tc_sketch_buckets(h);
    }
    s->h = shape;
    s->h.n = (uint32_t)n;
    return TC_SKETCH_OK;
}

/* tc_sketch_quantile for nq values of q in ascending order, in one walk: out[i] is bit for bit
 * what tc_sketch_quantile(m, h, c, qs[i]) returns (same rank formula, same bucket values, each
 * computed once). */
static inline void tc_qs_quantiles(const tc_sketch_map *m, const tc_sketch_hdr *h,
                                   const uint32_t *c, const double *qs, int nq, double *out) {
    uint64_t rank[TC_QS_MAX_QUANTILES];
    int i = 0;
    if (nq > TC_QS_MAX_QUANTILES) nq = TC_QS_MAX_QUANTILES;
    for (int x = 0; x < nq; x++) {
        out[x] = NAN;
        if (h->n && qs[x] >= 0.0 && qs[x] <= 1.0)
            rank[x] = (uint64_t)floor(qs[x] * (double)(h->n - 1));
        else
            rank[x] = UINT64_MAX;   /* out of reach: stays NaN */
    }
    const uint32_t *neg = c + h->pos_len;
    uint64_t seen = 0;
    for (int32_t k = (int32_t)h->neg_len - 1; k >= 0 && i < nq; k--) {
        seen += neg[k];
        if (seen > rank[i]) {
            double v = -tc_sketch_value(m, h->neg_min + k);
            while (i < nq && seen > rank[i]) out[i++] = v;
        }
    }
    seen += (uint64_t)h->n - tc_sketch_stores_sum(h, c);   /* the zero count */
    while (i < nq && seen > rank[i]) out[i++] = 0.0;
    for (uint32_t k = 0; k < h->pos_len && i < nq; k++) {
        seen += c[k];
        if (seen > rank[i]) {
            double v = tc_sketch_value(m, h->pos_min + (int32_t)k);
            while (i < nq && seen > rank[i]) out[i++] = v;
        }
    }
}

#endif /* TC_WINDOW_QS_H */
