/* A mergeable quantile sketch with a relative-error guarantee (DDSketch: Masson, Rim, Lee,
 * "DDSketch: a fast and fully-mergeable quantile sketch with relative-error guarantees",
 * VLDB 2019).
 *
 * docs/quantiles.md has the guarantee, its proof and its limits; this header is the code. The
 * pure-Python twin is telemetry_cy/engine/sketch_py.py: same arithmetic on the same doubles (libm
 * log and pow, no fused multiply-add: the build uses -ffp-contract=off), so both put every value in
 * the same bucket, report bit-identical quantiles and write the same bytes.
 *
 * Mapping (tc_sketch_map). For the accuracy alpha in [0.005, 0.05] the mapping is built for
 * a' = alpha * (1 - 2^-20), a hair tighter, so that rounding in log/pow cannot push an error past
 * alpha: gamma = (1 + a') / (1 - a'). A value v with |v| >= 1e-9 goes to bucket
 *     I(|v|) = the i with B(i-1) < |v| <= B(i),   B(k) = pow(gamma, k) as libm rounds it,
 * computed as ceil(log(|v|) * (1 / log(gamma))), checked against B only when that product is
 * within 2^-20 of a whole number (tc_sketch_index says why that is exact). Bucket i reports
 * pow(gamma, i - 1) * (1 + a') (= 2 gamma^i / (gamma + 1)), capped at DBL_MAX: within alpha of
 * every value of the bucket. |v| < 1e-9 counts as zero and is reported as 0.
 *
 * Stores. A sketch has a zero count, a positive store (buckets of v > 0) and a negative store
 * (buckets of |v| for v < 0). A store is a dense range of uint32 counts, indexes
 * [min, min + len), kept tight (first and last counts nonzero) so equal contents have one form.
 * A store holds at most TC_SKETCH_CAP buckets; beyond, the end that holds the LOWEST values is
 * folded into the lowest bucket kept: the positive store keeps its highest indexes, the negative
 * store its lowest magnitudes. Collapse only ever moves values up: a quantile above the folded
 * end stays within alpha (docs/quantiles.md, "Stores, rank rule, collapse"). The result depends
 * only on the multiset of values, not on the order of adds and merges, so merging sketches equals
 * adding all their values to one.
 *
 * Memory. The counts live where the owner puts them: tc_sketch_hdr (16 bytes) describes the shape,
 * and every function takes the counts as a pointer, [positive store | negative store] contiguous.
 * tc_sketch is the self-owned form (one malloc'd buffer, grown in steps that fill glibc chunks
 * exactly, kept on clear); an engine may instead keep the counts in its own records. No function
 * here calls Python or takes a lock; a sketch belongs to one thread at a time.
 *
 * Counts. A sketch holds at most 2^32 - 1 values in all (zero count included), so no bucket and no
 * fold can overflow: an add to a full sketch and a merge past the limit are refused
 * (TC_SKETCH_E_FULL) and change nothing.
 *
 * Byte layout (version 1, little-endian, 32-byte header then the counts; tc_sketch_write):
 *   0   4  magic "TCQS"            16  4  zero count (u32)       28  2  positive length (u16)
 *   4   1  version = 1             20  4  positive min (i32)     30  2  negative length (u16)
 *   5   1  flags = 0 (reserved)    24  4  negative min (i32)     32     positive counts (u32),
 *   6   2  reserved = 0                                                 then negative counts
 *   8   8  alpha (IEEE binary64, as given, not a')
 * tc_sketch_read accepts exactly the bytes tc_sketch_write can produce (canonical form) and says
 * why it refuses anything else.
 */
#ifndef TC_SKETCH_H
#define TC_SKETCH_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TC_SKETCH_MIN_ALPHA 0.005
#define TC_SKETCH_MAX_ALPHA 0.05
#define TC_SKETCH_ZERO_BELOW 1e-9   /* |v| below this counts as zero */
/* Buckets per store: >= log(1000) / log(gamma) + 2 = 692 at alpha = 0.005, so values of one sign
 * spanning 1,000x never collapse, whatever alpha. */
#define TC_SKETCH_CAP 1024
#define TC_SKETCH_MAX_COUNT UINT32_MAX
#define TC_SKETCH_VERSION 1
#define TC_SKETCH_HEADER_BYTES 32
/* Half-width, in units of log(gamma), of the zone around a bucket edge where the fast index is
 * checked against B: the fast index's error is below 1e-10 of a unit (tc_sketch_index). */
#define TC_SKETCH_EDGE 0x1p-20

/* Results: 0 is success. The reasons for the read errors, in words, are sketch_py.REASONS. */
enum {
    TC_SKETCH_OK = 0,
    TC_SKETCH_E_NONFINITE = 1,    /* add: NaN or infinity */
    TC_SKETCH_E_FULL = 2,         /* add/merge: the sketch would hold more than 2^32 - 1 values */
    TC_SKETCH_E_NOMEM = 3,        /* malloc/realloc failed; the sketch is unchanged */
    TC_SKETCH_E_NOT_CONTAINED = 4,/* subtract: the other sketch's values are not all in this one */
    TC_SKETCH_E_TRUNCATED = 5,    /* read: shorter than the header */
    TC_SKETCH_E_MAGIC = 6,        /* read: not "TCQS" */
    TC_SKETCH_E_VERSION = 7,      /* read: a layout version this build does not know */
    TC_SKETCH_E_RESERVED = 8,     /* read: flags or reserved bytes not zero */
    TC_SKETCH_E_ALPHA = 9,        /* read: alpha out of [0.005, 0.05], or not the expected one */
    TC_SKETCH_E_STORE_LEN = 10,   /* read: a store longer than TC_SKETCH_CAP */
    TC_SKETCH_E_LENGTH = 11,      /* read: byte length is not 32 + 4 * (the two store lengths) */
    TC_SKETCH_E_INDEX = 12,       /* read: a bucket index no value in [1e-9, DBL_MAX] maps to */
    TC_SKETCH_E_NONCANONICAL = 13,/* read: a zero count at a store's edge, or an empty store's
                                   * min is not 0 */
    TC_SKETCH_E_TOTAL = 14,       /* read: more than 2^32 - 1 values in all */
    TC_SKETCH_NEEDS_SHAPE = 15,   /* tc_sketch_hdr_add: lay the counts out in *nh, then again */
};

#if defined(__GNUC__)
#define TC_SKETCH_COLD __attribute__((noinline, cold))
#else
#define TC_SKETCH_COLD
#endif

/* ---- mapping -------------------------------------------------------------------------------- */

typedef struct {
    double alpha;      /* as given: what the guarantee and the byte layout speak of */
    double gamma;      /* (1 + a') / (1 - a'), a' = alpha * (1 - 2^-20) */
    double mult;       /* 1 / log(gamma) */
    double rep_factor; /* 1 + a': bucket i reports B(i - 1) * rep_factor */
    int32_t min_index; /* I(1e-9) */
    int32_t max_index; /* I(DBL_MAX) */
} tc_sketch_map;

/* pow(gamma, k) as libm rounds it: the bucket edges B(k). */
static inline double tc_sketch_edge(const tc_sketch_map *m, int32_t k) {
    return pow(m->gamma, (double)k);
}

/* I(av) for finite av >= 1e-9. t = log(av) * mult approximates log(av) / log(gamma) with an
 * absolute error below 1e-10 (|t| < 71,000 and a few roundings of 2^-53 each, libm's log within
 * a few ulps: docs/quantiles.md), far below TC_SKETCH_EDGE. So when t is farther than the edge
 * zone from every whole number, ceil(t) is the bucket exactly; inside the zone the one edge that
 * can be in doubt is compared with B. Either way the result is the i with B(i-1) < av <= B(i):
 * monotone in av by construction, whatever the rounding. */
static inline int32_t tc_sketch_index(const tc_sketch_map *m, double av) {
    double t = log(av) * m->mult;
    double c = ceil(t);
    int32_t i = (int32_t)c;
    if (c - t < TC_SKETCH_EDGE) {
        if (av > tc_sketch_edge(m, i)) i++;   /* pow overflows to inf near DBL_MAX: no change */
    } else if (t - (c - 1.0) < TC_SKETCH_EDGE) {
        if (av <= tc_sketch_edge(m, i - 1)) i--;
    }
    return i;
}

/* The value bucket i reports for |v|: B(i - 1) * (1 + a'), at most DBL_MAX. */
static inline double tc_sketch_value(const tc_sketch_map *m, int32_t i) {
    double r = tc_sketch_edge(m, i - 1) * m->rep_factor;
    return r > DBL_MAX ? DBL_MAX : r;
}

/* 0, or -1 when alpha is not in [0.005, 0.05]. */
static inline int tc_sketch_map_init(tc_sketch_map *m, double alpha) {
    if (!(alpha >= TC_SKETCH_MIN_ALPHA && alpha <= TC_SKETCH_MAX_ALPHA)) return -1;
    double a = alpha * (1.0 - 0x1p-20);
    m->alpha = alpha;
    m->gamma = (1.0 + a) / (1.0 - a);
    m->mult = 1.0 / log(m->gamma);
    m->rep_factor = 1.0 + a;
    m->min_index = tc_sketch_index(m, TC_SKETCH_ZERO_BELOW);
    m->max_index = tc_sketch_index(m, DBL_MAX);
    return 0;
}

/* ---- shape: where the counts are ------------------------------------------------------------- */

/* Counts of one sketch, wherever they live: counts[0, pos_len) are the positive store (index
 * pos_min + k), counts[pos_len, pos_len + neg_len) the negative store (|v| index neg_min + k).
 * The zero count is n minus the stores' sum. An empty store has min 0. */
typedef struct {
    int32_t pos_min;
    int32_t neg_min;
    uint16_t pos_len;
    uint16_t neg_len;
    uint32_t n;        /* values in all, zero count included */
} tc_sketch_hdr;

/* docs/quantiles.md counts memory with these sizes */
_Static_assert(sizeof(tc_sketch_hdr) == 16, "tc_sketch_hdr is 16 bytes");

static inline void tc_sketch_hdr_clear(tc_sketch_hdr *h) {
    memset(h, 0, sizeof *h);
}

static inline uint32_t tc_sketch_buckets(const tc_sketch_hdr *h) {
    return (uint32_t)h->pos_len + h->neg_len;
}

static inline int tc_sketch_same_shape(const tc_sketch_hdr *a, const tc_sketch_hdr *b) {
    return a->pos_min == b->pos_min && a->pos_len == b->pos_len && a->neg_min == b->neg_min &&
           a->neg_len == b->neg_len;
}

/* The store covering [lo, hi], cut to TC_SKETCH_CAP buckets at the end that holds the lowest
 * values: low indexes for the positive store (keep_high), high magnitudes for the negative one. */
static inline void tc_sketch_span(int32_t lo, int32_t hi, int keep_high, int32_t *min,
                                  uint16_t *len) {
    if (hi - lo + 1 > TC_SKETCH_CAP) {
        if (keep_high) lo = hi - (TC_SKETCH_CAP - 1);
        else hi = lo + (TC_SKETCH_CAP - 1);
    }
    *min = lo;
    *len = (uint16_t)(hi - lo + 1);
}

/* The store (min, len) widened to hold the store (omin, olen): the union, then the cap. */
static inline void tc_sketch_store_union(int32_t *min, uint16_t *len, int32_t omin, uint16_t olen,
                                         int keep_high) {
    if (olen == 0) return;
    if (*len == 0) {
        *min = omin;
        *len = olen;
        return;
    }
    int32_t lo = *min < omin ? *min : omin;
    int32_t hi = *min + *len - 1;
    int32_t ohi = omin + olen - 1;
    if (ohi > hi) hi = ohi;
    tc_sketch_span(lo, hi, keep_high, min, len);
}

/* The shape that holds both a and b (n is not touched). */
static inline void tc_sketch_shape_union(tc_sketch_hdr *a, const tc_sketch_hdr *b) {
    tc_sketch_store_union(&a->pos_min, &a->pos_len, b->pos_min, b->pos_len, 1);
    tc_sketch_store_union(&a->neg_min, &a->neg_len, b->neg_min, b->neg_len, 0);
}

/* Adds the counts of store (smin, slen, sc) into store (dmin, dlen, dc), an index outside
 * [dmin, dmin + dlen) going to the nearest end: the fold of a collapse. dlen > 0 when slen > 0. */
static inline void tc_sketch_store_fold(int32_t smin, uint32_t slen, const uint32_t *sc,
                                        int32_t dmin, uint32_t dlen, uint32_t *dc) {
    int32_t dmax = dmin + (int32_t)dlen - 1;
    for (uint32_t k = 0; k < slen; k++) {
        int32_t i = smin + (int32_t)k;
        if (i < dmin) i = dmin;
        else if (i > dmax) i = dmax;
        dc[i - dmin] += sc[k];
    }
}

/* Adds the counts (hs, cs) into the counts (hd, cd) of a shape that holds hs (n untouched). */
static inline void tc_sketch_fold(const tc_sketch_hdr *hs, const uint32_t *cs,
                                  const tc_sketch_hdr *hd, uint32_t *cd) {
    tc_sketch_store_fold(hs->pos_min, hs->pos_len, cs, hd->pos_min, hd->pos_len, cd);
    tc_sketch_store_fold(hs->neg_min, hs->neg_len, cs + hs->pos_len, hd->neg_min, hd->neg_len,
                         cd + hd->pos_len);
}

static inline uint64_t tc_sketch_stores_sum(const tc_sketch_hdr *h, const uint32_t *c) {
    uint64_t s = 0;
    for (uint32_t k = 0; k < tc_sketch_buckets(h); k++) s += c[k];
    return s;
}

/* ---- quantiles ------------------------------------------------------------------------------- */

/* The value of the bucket holding the value of rank floor(q * (n - 1)) (0-based, ascending);
 * NaN when the sketch is empty or q is not in [0, 1]. Values ascend through the negative store
 * from its highest magnitude down, the zero count, then the positive store upwards. */
static inline double tc_sketch_quantile(const tc_sketch_map *m, const tc_sketch_hdr *h,
                                        const uint32_t *c, double q) {
    if (h->n == 0 || !(q >= 0.0 && q <= 1.0)) return NAN;
    uint64_t rank = (uint64_t)floor(q * (double)(h->n - 1));
    const uint32_t *neg = c + h->pos_len;
    uint64_t seen = 0;
    for (int32_t k = (int32_t)h->neg_len - 1; k >= 0; k--) {
        seen += neg[k];
        if (seen > rank) return -tc_sketch_value(m, h->neg_min + k);
    }
    seen += (uint64_t)h->n - tc_sketch_stores_sum(h, c);   /* the zero count */
    if (seen > rank) return 0.0;
    for (uint32_t k = 0; k < h->pos_len; k++) {
        seen += c[k];
        if (seen > rank) return tc_sketch_value(m, h->pos_min + (int32_t)k);
    }
    return NAN;   /* unreachable: the counts sum to n */
}

/* ---- adding to counts kept anywhere ---------------------------------------------------------- */

/* Lays the counts (h, c) out in the shape nh, which holds h up to folds (tc_sketch_shape_union or
 * the *nh of tc_sketch_hdr_add), at nc: tc_sketch_buckets(nh) entries, not overlapping c. Sets
 * nh->n = h->n. */
static inline void tc_sketch_relayout(const tc_sketch_hdr *h, const uint32_t *c, tc_sketch_hdr *nh,
                                      uint32_t *nc) {
    memset(nc, 0, (size_t)tc_sketch_buckets(nh) * sizeof *nc);
    nh->n = h->n;
    tc_sketch_fold(h, c, nh, nc);
}

static TC_SKETCH_COLD int tc_sketch_hdr_add_outside(tc_sketch_hdr *h, uint32_t *c, int negative,
                                                    int32_t i, tc_sketch_hdr *nh) {
    *nh = *h;
    if (negative) tc_sketch_store_union(&nh->neg_min, &nh->neg_len, i, 1, 0);
    else tc_sketch_store_union(&nh->pos_min, &nh->pos_len, i, 1, 1);
    if (!tc_sketch_same_shape(nh, h)) return TC_SKETCH_NEEDS_SHAPE;
    /* beyond a collapsed end: the value counts in that end bucket */
    uint32_t one = 1;
    if (negative) tc_sketch_store_fold(i, 1, &one, h->neg_min, h->neg_len, c + h->pos_len);
    else tc_sketch_store_fold(i, 1, &one, h->pos_min, h->pos_len, c);
    h->n++;
    return TC_SKETCH_OK;
}

/* One value into the counts (h, c), wherever the owner keeps them; never allocates. When the
 * value's bucket is outside the shape, nothing changes and TC_SKETCH_NEEDS_SHAPE says that *nh is
 * the shape that holds it: the owner provides tc_sketch_buckets(nh) counts, lays the old ones out
 * there (tc_sketch_relayout) and adds the value again. The common case (a bucket inside the
 * range) is a log, a multiply, a ceil and an increment. */
static inline int tc_sketch_hdr_add(tc_sketch_hdr *h, uint32_t *c, const tc_sketch_map *m,
                                    double v, tc_sketch_hdr *nh) {
    if (!isfinite(v)) return TC_SKETCH_E_NONFINITE;
    if (h->n == TC_SKETCH_MAX_COUNT) return TC_SKETCH_E_FULL;
    double av = fabs(v);
    if (av < TC_SKETCH_ZERO_BELOW) {
        h->n++;
        return TC_SKETCH_OK;
    }
    int32_t i = tc_sketch_index(m, av);
    int negative = v < 0;
    uint32_t off = (uint32_t)(i - (negative ? h->neg_min : h->pos_min));
    if (off < (negative ? h->neg_len : h->pos_len)) {
        (negative ? c + h->pos_len : c)[off]++;
        h->n++;
        return TC_SKETCH_OK;
    }
    return tc_sketch_hdr_add_outside(h, c, negative, i, nh);
}

/* ---- the self-owned sketch ------------------------------------------------------------------- */

typedef struct {
    uint32_t *counts;   /* malloc'd, cap entries (NULL when cap == 0); the first buckets() used */
    tc_sketch_hdr h;
    uint32_t cap;
} tc_sketch;

_Static_assert(sizeof(tc_sketch) <= 32, "tc_sketch fits 32 bytes");

static inline void tc_sketch_init(tc_sketch *s) {
    s->counts = NULL;
    s->cap = 0;
    tc_sketch_hdr_clear(&s->h);
}

static inline void tc_sketch_free(tc_sketch *s) {
    free(s->counts);
    tc_sketch_init(s);
}

/* Empty, keeping the buffer: a pane reused for a new interval allocates nothing. */
static inline void tc_sketch_clear(tc_sketch *s) {
    tc_sketch_hdr_clear(&s->h);
}

/* Buffer sizes of 2, 6, 10, ... buckets: 4 * cap + 8 (glibc's chunk header) is a multiple of 16,
 * so a chunk has no slack. */
static inline uint32_t tc_sketch_cap_class(uint32_t n) {
    uint32_t c = (n + 1) / 4 * 4 + 2;
    return c > 2 * TC_SKETCH_CAP ? 2 * TC_SKETCH_CAP : c;
}

static inline int tc_sketch_reserve(tc_sketch *s, uint32_t need) {
    if (need <= s->cap) return TC_SKETCH_OK;
    uint32_t want = s->cap + s->cap / 4;   /* 1.25x: few reallocs, little slack */
    uint32_t cap = tc_sketch_cap_class(need > want ? need : want);
    uint32_t *p = (uint32_t *)realloc(s->counts, (size_t)cap * sizeof *p);
    if (p == NULL) return TC_SKETCH_E_NOMEM;
    s->counts = p;
    s->cap = cap;
    return TC_SKETCH_OK;
}

/* The buffer cut down to the class of what is used (an engine calls it on a pane that will not
 * grow any more). Failure to shrink changes nothing. */
static inline void tc_sketch_trim(tc_sketch *s) {
    uint32_t used = tc_sketch_buckets(&s->h);
    if (used == 0) {
        free(s->counts);
        s->counts = NULL;
        s->cap = 0;
        return;
    }
    uint32_t cap = tc_sketch_cap_class(used);
    if (cap >= s->cap) return;
    uint32_t *p = (uint32_t *)realloc(s->counts, (size_t)cap * sizeof *p);
    if (p == NULL) return;
    s->counts = p;
    s->cap = cap;
}

/* Re-lays the counts out in the shape nh (which holds the current one, up to folds); the buffer
 * must already hold tc_sketch_buckets(nh). Rare: only when a store's range changes. */
static TC_SKETCH_COLD void tc_sketch_reshape(tc_sketch *s, tc_sketch_hdr *nh) {
    uint32_t old[2 * TC_SKETCH_CAP];
    uint32_t used = tc_sketch_buckets(&s->h);
    if (used) memcpy(old, s->counts, (size_t)used * sizeof *old);
    tc_sketch_relayout(&s->h, old, nh, s->counts);
    s->h = *nh;
}

static TC_SKETCH_COLD int tc_sketch_add_reshaped(tc_sketch *s, const tc_sketch_map *m, double v,
                                                 tc_sketch_hdr *nh) {
    if (tc_sketch_reserve(s, tc_sketch_buckets(nh)) != TC_SKETCH_OK) return TC_SKETCH_E_NOMEM;
    tc_sketch_reshape(s, nh);
    return tc_sketch_hdr_add(&s->h, s->counts, m, v, nh);   /* in the shape now: counted */
}

/* One value: tc_sketch_hdr_add, and a new shape (rare) in the sketch's own buffer. */
static inline int tc_sketch_add(tc_sketch *s, const tc_sketch_map *m, double v) {
    tc_sketch_hdr nh;
    int r = tc_sketch_hdr_add(&s->h, s->counts, m, v, &nh);
    if (r == TC_SKETCH_NEEDS_SHAPE) r = tc_sketch_add_reshaped(s, m, v, &nh);
    return r;
}

/* Adds the sketch (sh, sc) of the same mapping: afterwards s is what adding all of its values one
 * by one would have made. sc may be s's own counts (a sketch merged with itself). */
static inline int tc_sketch_merge(tc_sketch *s, const tc_sketch_hdr *sh, const uint32_t *sc) {
    if ((uint64_t)s->h.n + sh->n > TC_SKETCH_MAX_COUNT) return TC_SKETCH_E_FULL;
    tc_sketch_hdr nh = s->h;
    tc_sketch_shape_union(&nh, sh);
    if (!tc_sketch_same_shape(&nh, &s->h)) {
        /* a new shape never comes from s itself: sc is not s->counts here */
        if (tc_sketch_reserve(s, tc_sketch_buckets(&nh)) != TC_SKETCH_OK) return TC_SKETCH_E_NOMEM;
        tc_sketch_reshape(s, &nh);
    }
    tc_sketch_fold(sh, sc, &s->h, s->counts);
    s->h.n += sh->n;
    return TC_SKETCH_OK;
}

/* The store after dropping zero counts at both ends (in place, moving the counts to `to`). */
static inline void tc_sketch_store_tighten(const uint32_t *from, int32_t *min, uint16_t *len,
                                           uint32_t *to) {
    uint32_t lo = 0, hi = *len;
    while (lo < hi && from[lo] == 0) lo++;
    while (hi > lo && from[hi - 1] == 0) hi--;
    if (lo == hi) {
        *min = 0;
        *len = 0;
        return;
    }
    memmove(to, from + lo, (size_t)(hi - lo) * sizeof *to);
    *min += (int32_t)lo;
    *len = (uint16_t)(hi - lo);
}

/* Subtracts one store from another; 0, or -1 (nothing written) when a count would go negative or
 * a bucket of the other store has no place here. Only a full store (len == TC_SKETCH_CAP) may have
 * folded values: there, buckets beyond its collapsed end are taken from that end bucket, as a merge
 * would have put them. */
static inline int tc_sketch_store_subtract(int32_t smin, uint32_t slen, const uint32_t *sc,
                                           int32_t dmin, uint32_t dlen, uint32_t *dc,
                                           int keep_high) {
    if (slen == 0) return 0;
    if (dlen == 0) return -1;
    int32_t dmax = dmin + (int32_t)dlen - 1;
    int full = dlen == TC_SKETCH_CAP;
    for (uint32_t k = 0; k < slen; k++) {
        int32_t i = smin + (int32_t)k;
        if (sc[k] == 0) continue;
        if (i < dmin) {
            if (!(full && keep_high)) return -1;
            i = dmin;
        } else if (i > dmax) {
            if (!(full && !keep_high)) return -1;
            i = dmax;
        }
        if (dc[i - dmin] < sc[k]) return -1;
        dc[i - dmin] -= sc[k];
    }
    return 0;
}

/* Removes the values of the sketch (sh, sc) of the same mapping, which must all be in s (as after
 * a merge of it); else TC_SKETCH_E_NOT_CONTAINED and s is unchanged. Exactly undoes a merge that
 * collapsed nothing; after a collapse the result keeps the collapsed end (docs/quantiles.md).
 * sc may be s's own counts. */
static inline int tc_sketch_subtract(tc_sketch *s, const tc_sketch_hdr *sh, const uint32_t *sc) {
    uint32_t work[2 * TC_SKETCH_CAP];
    uint32_t used = tc_sketch_buckets(&s->h);
    if (sh->n > s->h.n) return TC_SKETCH_E_NOT_CONTAINED;
    uint64_t zero_s = (uint64_t)sh->n - tc_sketch_stores_sum(sh, sc);
    uint64_t zero_d = (uint64_t)s->h.n - tc_sketch_stores_sum(&s->h, s->counts);
    if (zero_s > zero_d) return TC_SKETCH_E_NOT_CONTAINED;
    if (used) memcpy(work, s->counts, (size_t)used * sizeof *work);
    if (tc_sketch_store_subtract(sh->pos_min, sh->pos_len, sc, s->h.pos_min, s->h.pos_len, work,
                                 1) != 0 ||
        tc_sketch_store_subtract(sh->neg_min, sh->neg_len, sc + sh->pos_len, s->h.neg_min,
                                 s->h.neg_len, work + s->h.pos_len, 0) != 0)
        return TC_SKETCH_E_NOT_CONTAINED;
    tc_sketch_hdr nh = s->h;
    tc_sketch_store_tighten(work, &nh.pos_min, &nh.pos_len, s->counts);
    tc_sketch_store_tighten(work + s->h.pos_len, &nh.neg_min, &nh.neg_len,
                            s->counts + nh.pos_len);
    nh.n = s->h.n - sh->n;
    s->h = nh;
    return TC_SKETCH_OK;
}

/* ---- byte layout ----------------------------------------------------------------------------- */

static inline size_t tc_sketch_bytes(const tc_sketch_hdr *h) {
    return TC_SKETCH_HEADER_BYTES + 4 * (size_t)tc_sketch_buckets(h);
}

static inline void tc_sketch_put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void tc_sketch_put_u32(uint8_t *p, uint32_t v) {
    for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k));
}
static inline uint16_t tc_sketch_get_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}
static inline uint32_t tc_sketch_get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) v |= (uint32_t)p[k] << (8 * k);
    return v;
}

/* Writes tc_sketch_bytes(h) bytes at out. */
static inline void tc_sketch_write(const tc_sketch_map *m, const tc_sketch_hdr *h,
                                   const uint32_t *c, uint8_t *out) {
    uint64_t a;
    memcpy(&a, &m->alpha, sizeof a);
    memcpy(out, "TCQS", 4);
    out[4] = TC_SKETCH_VERSION;
    out[5] = 0;
    tc_sketch_put_u16(out + 6, 0);
    tc_sketch_put_u32(out + 8, (uint32_t)a);
    tc_sketch_put_u32(out + 12, (uint32_t)(a >> 32));
    tc_sketch_put_u32(out + 16, (uint32_t)(h->n - tc_sketch_stores_sum(h, c)));
    tc_sketch_put_u32(out + 20, (uint32_t)h->pos_min);
    tc_sketch_put_u32(out + 24, (uint32_t)h->neg_min);
    tc_sketch_put_u16(out + 28, h->pos_len);
    tc_sketch_put_u16(out + 30, h->neg_len);
    for (uint32_t k = 0; k < tc_sketch_buckets(h); k++)
        tc_sketch_put_u32(out + TC_SKETCH_HEADER_BYTES + 4 * (size_t)k, c[k]);
}

static inline int tc_sketch_check_store(const tc_sketch_map *m, int32_t min, uint32_t len,
                                        const uint8_t *counts) {
    if (len == 0) return min == 0 ? TC_SKETCH_OK : TC_SKETCH_E_NONCANONICAL;
    if (min < m->min_index || min > m->max_index || (int64_t)min + len - 1 > m->max_index)
        return TC_SKETCH_E_INDEX;
    if (tc_sketch_get_u32(counts) == 0 || tc_sketch_get_u32(counts + 4 * (size_t)(len - 1)) == 0)
        return TC_SKETCH_E_NONCANONICAL;
    return TC_SKETCH_OK;
}

/* Reads the layout at buf[0, len): every field is checked, in the order of the error codes, before
 * anything is written. On success *m is the mapping of the alpha in the bytes and *s (initialised,
 * its old contents freed) holds the counts. expect_alpha: NaN to take any allowed alpha, else the
 * bytes must carry exactly this one (a sketch of another mapping cannot be merged: E_ALPHA). On
 * error *m and *s are unchanged. */
static inline int tc_sketch_read(const uint8_t *buf, size_t len, double expect_alpha,
                                 tc_sketch_map *m, tc_sketch *s) {
    if (len < TC_SKETCH_HEADER_BYTES) return TC_SKETCH_E_TRUNCATED;
    if (memcmp(buf, "TCQS", 4) != 0) return TC_SKETCH_E_MAGIC;
    if (buf[4] != TC_SKETCH_VERSION) return TC_SKETCH_E_VERSION;
    if (buf[5] != 0 || tc_sketch_get_u16(buf + 6) != 0) return TC_SKETCH_E_RESERVED;
    uint64_t abits = (uint64_t)tc_sketch_get_u32(buf + 8) |
                     (uint64_t)tc_sketch_get_u32(buf + 12) << 32;
    double alpha;
    memcpy(&alpha, &abits, sizeof alpha);
    tc_sketch_map mm;
    if (tc_sketch_map_init(&mm, alpha) != 0) return TC_SKETCH_E_ALPHA;
    if (!isnan(expect_alpha) && memcmp(&alpha, &expect_alpha, sizeof alpha) != 0)
        return TC_SKETCH_E_ALPHA;
    uint32_t zero = tc_sketch_get_u32(buf + 16);
    int32_t pos_min = (int32_t)tc_sketch_get_u32(buf + 20);
    int32_t neg_min = (int32_t)tc_sketch_get_u32(buf + 24);
    uint32_t pos_len = tc_sketch_get_u16(buf + 28);
    uint32_t neg_len = tc_sketch_get_u16(buf + 30);
    if (pos_len > TC_SKETCH_CAP || neg_len > TC_SKETCH_CAP) return TC_SKETCH_E_STORE_LEN;
    if (len != TC_SKETCH_HEADER_BYTES + 4 * (size_t)(pos_len + neg_len)) return TC_SKETCH_E_LENGTH;
    const uint8_t *pc = buf + TC_SKETCH_HEADER_BYTES;
    const uint8_t *nc = pc + 4 * (size_t)pos_len;
    int r = tc_sketch_check_store(&mm, pos_min, pos_len, pc);
    if (r == TC_SKETCH_OK) r = tc_sketch_check_store(&mm, neg_min, neg_len, nc);
    if (r != TC_SKETCH_OK) return r;
    uint64_t total = zero;
    for (uint32_t k = 0; k < pos_len + neg_len; k++) total += tc_sketch_get_u32(pc + 4 * (size_t)k);
    if (total > TC_SKETCH_MAX_COUNT) return TC_SKETCH_E_TOTAL;
    tc_sketch t;
    tc_sketch_init(&t);
    if (tc_sketch_reserve(&t, pos_len + neg_len) != TC_SKETCH_OK) return TC_SKETCH_E_NOMEM;
    for (uint32_t k = 0; k < pos_len + neg_len; k++)
        t.counts[k] = tc_sketch_get_u32(pc + 4 * (size_t)k);
    t.h.pos_min = pos_min;
    t.h.neg_min = neg_min;
    t.h.pos_len = (uint16_t)pos_len;
    t.h.neg_len = (uint16_t)neg_len;
    t.h.n = (uint32_t)total;
    tc_sketch_free(s);
    *s = t;
    *m = mm;
    return TC_SKETCH_OK;
}

#endif /* TC_SKETCH_H */
