/* Fuzz target for the quantile sketch's byte-layout reader (includes/tc_sketch.h, tc_sketch_read):
 * the checkpoint and scale-out paths will read sketches that came from another process.
 *
 * Built like the other targets by scripts/sanitize.sh (libFuzzer, or fuzz_driver.c with any
 * compiler) and replayed by tests/test_sketch.py. Each input is one candidate byte string, copied
 * into a buffer of exactly its size (ASan sees a read one byte past the end). Besides what the
 * sanitizers catch, the target abort()s when:
 *   1. tc_sketch_read's verdict (the error code, or success) differs from an independent checker
 *      written here from the layout in tc_sketch.h's comment;
 *   2. a refused input left anything in the output sketch (it must stay empty, nothing leaked);
 *   3. an accepted input does not write back to exactly the same bytes (canonical form), or the
 *      same bytes one byte shorter or longer are accepted;
 *   4. an accepted sketch breaks an invariant: tight stores within the cap and the mapping's
 *      index range, counts summing to n, quantiles finite and non-decreasing in q, q = 0 and
 *      q = 1 the values of the first and last non-empty buckets;
 *   5. merging the sketch into an empty one does not give the same bytes, merging it with itself
 *      does not double every count (when the total allows) or subtracting it back does not give
 *      the original bytes;
 *   6. the bytes are accepted with any other expected alpha than their own.
 * The same input is also read as values (a byte choosing alpha, then raw doubles, NaN and
 * infinity included): built into sketches A (even positions), B (odd) and AB (all), the target
 * checks that non-finite values are refused and change nothing, that merge(A, B) gives the bytes
 * of AB, that subtracting B gives back A's bytes when nothing collapsed, that AB's bytes are read
 * back, and the invariants of 4; and AB once more in caller-owned memory (tc_sketch_hdr_add with
 * an exactly sized buffer per shape, tc_sketch_relayout), which must give AB's bytes. So the
 * writer and the collapse run under the sanitizers too, with the inputs that libFuzzer finds.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tc_sketch.h"

#define CHECK(cond, what)                                                                  \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_sketch: invariant violated: %s (%s:%d)\n", what, __FILE__, \
                    __LINE__);                                                             \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* ---- an independent checker: the layout read field by field, little-endian by arithmetic ---- */

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v * 256 + p[i];
    return v;
}

static int ref_verdict(const uint8_t *b, size_t len)
{
    if (len < 32) return TC_SKETCH_E_TRUNCATED;
    if (b[0] != 'T' || b[1] != 'C' || b[2] != 'Q' || b[3] != 'S') return TC_SKETCH_E_MAGIC;
    if (b[4] != 1) return TC_SKETCH_E_VERSION;
    if (b[5] || b[6] || b[7]) return TC_SKETCH_E_RESERVED;
    uint64_t bits = le(b + 8, 8);
    double alpha;
    memcpy(&alpha, &bits, 8);
    if (!(alpha >= 0.005 && alpha <= 0.05)) return TC_SKETCH_E_ALPHA;
    uint64_t pl = le(b + 28, 2), nl = le(b + 30, 2);
    if (pl > 1024 || nl > 1024) return TC_SKETCH_E_STORE_LEN;
    if ((uint64_t)len != 32 + 4 * (pl + nl)) return TC_SKETCH_E_LENGTH;
    /* the index range of [1e-9, DBL_MAX] under this alpha: tc_sketch_map computes it, and the
     * mapping itself is checked by the Python tests; what is independent here is the parsing */
    tc_sketch_map m;
    CHECK(tc_sketch_map_init(&m, alpha) == 0, "map of an allowed alpha");
    int64_t mins[2] = {(int32_t)(uint32_t)le(b + 20, 4), (int32_t)(uint32_t)le(b + 24, 4)};
    uint64_t lens[2] = {pl, nl};
    const uint8_t *c[2] = {b + 32, b + 32 + 4 * pl};
    for (int s = 0; s < 2; s++) {
        if (lens[s] == 0) {
            if (mins[s] != 0) return TC_SKETCH_E_NONCANONICAL;
            continue;
        }
        if (mins[s] < m.min_index || mins[s] + (int64_t)lens[s] - 1 > m.max_index)
            return TC_SKETCH_E_INDEX;
        if (le(c[s], 4) == 0 || le(c[s] + 4 * (lens[s] - 1), 4) == 0)
            return TC_SKETCH_E_NONCANONICAL;
    }
    uint64_t total = le(b + 16, 4);
    for (uint64_t k = 0; k < pl + nl; k++) total += le(b + 32 + 4 * k, 4);
    if (total > UINT32_MAX) return TC_SKETCH_E_TOTAL;
    return TC_SKETCH_OK;
}

/* ---- the target ------------------------------------------------------------------------------ */

static void check_sketch(const tc_sketch_map *m, const tc_sketch *s)
{
    const tc_sketch_hdr *h = &s->h;
    CHECK(h->pos_len <= TC_SKETCH_CAP && h->neg_len <= TC_SKETCH_CAP, "store length");
    CHECK(tc_sketch_buckets(h) <= s->cap, "buffer smaller than the stores");
    CHECK(tc_sketch_stores_sum(h, s->counts) <= h->n, "stores hold more than n");
    const int32_t mins[2] = {h->pos_min, h->neg_min};
    const uint32_t lens[2] = {h->pos_len, h->neg_len};
    const uint32_t *c[2] = {s->counts, s->counts + h->pos_len};
    for (int k = 0; k < 2; k++) {
        if (lens[k] == 0) {
            CHECK(mins[k] == 0, "empty store's min");
            continue;
        }
        CHECK(mins[k] >= m->min_index && mins[k] + (int64_t)lens[k] - 1 <= m->max_index,
              "store outside the index range");
        CHECK(c[k][0] != 0 && c[k][lens[k] - 1] != 0, "store not tight");
    }
    if (h->n == 0) {
        CHECK(isnan(tc_sketch_quantile(m, h, s->counts, 0.5)), "quantile of an empty sketch");
        return;
    }
    double prev = -INFINITY;
    for (int i = 0; i <= 16; i++) {
        double v = tc_sketch_quantile(m, h, s->counts, i / 16.0);
        CHECK(isfinite(v), "quantile not finite");
        CHECK(v >= prev, "quantiles decrease in q");
        prev = v;
    }
    uint64_t zero = h->n - tc_sketch_stores_sum(h, s->counts);
    double lowest = h->neg_len ? -tc_sketch_value(m, h->neg_min + h->neg_len - 1)
                    : zero    ? 0.0
                              : tc_sketch_value(m, h->pos_min);
    double highest = h->pos_len ? tc_sketch_value(m, h->pos_min + h->pos_len - 1)
                     : zero     ? 0.0
                                : -tc_sketch_value(m, h->neg_min);
    CHECK(tc_sketch_quantile(m, h, s->counts, 0.0) == lowest, "q = 0 is not the lowest bucket");
    CHECK(tc_sketch_quantile(m, h, s->counts, 1.0) == highest, "q = 1 is not the highest bucket");
}

static uint8_t *written(const tc_sketch_map *m, const tc_sketch *s, size_t *len)
{
    *len = tc_sketch_bytes(&s->h);
    uint8_t *out = (uint8_t *)malloc(*len);
    CHECK(out != NULL, "malloc");
    tc_sketch_write(m, &s->h, s->counts, out);
    return out;
}

static int bytes_equal(const tc_sketch_map *m, const tc_sketch *a, const tc_sketch *b)
{
    size_t na, nb;
    uint8_t *pa = written(m, a, &na), *pb = written(m, b, &nb);
    int eq = na == nb && memcmp(pa, pb, na) == 0;
    free(pa);
    free(pb);
    return eq;
}

/* counts kept by the caller, as an engine may keep them: exactly sized, moved on each new shape */
static void external_add(tc_sketch_hdr *h, uint32_t **c, const tc_sketch_map *m, double v, int want)
{
    tc_sketch_hdr nh;
    int r = tc_sketch_hdr_add(h, *c, m, v, &nh);
    if (r == TC_SKETCH_NEEDS_SHAPE) {
        uint32_t *nc = (uint32_t *)malloc((size_t)tc_sketch_buckets(&nh) * sizeof *nc);
        CHECK(nc != NULL, "malloc");
        tc_sketch_relayout(h, *c, &nh, nc);
        free(*c);
        *c = nc;
        *h = nh;
        r = tc_sketch_hdr_add(h, *c, m, v, &nh);
    }
    CHECK(r == want, "external add result");
}

static void values_mode(const uint8_t *data, size_t size)
{
    static const double alphas[4] = {0.005, 0.01, 0.02, 0.05};
    if (size < 1) return;
    tc_sketch_map m;
    CHECK(tc_sketch_map_init(&m, alphas[data[0] & 3]) == 0, "map");
    tc_sketch a, b, ab, ext;
    tc_sketch_init(&a);
    tc_sketch_init(&b);
    tc_sketch_init(&ab);
    tc_sketch_init(&ext);
    size_t n = (size - 1) / 8;
    for (size_t k = 0; k < n; k++) {
        double v;
        memcpy(&v, data + 1 + 8 * k, 8);
        tc_sketch *half = k % 2 ? &b : &a;
        uint32_t before = half->h.n;
        int r = tc_sketch_add(half, &m, v);
        CHECK(r == (isfinite(v) ? TC_SKETCH_OK : TC_SKETCH_E_NONFINITE), "add result");
        CHECK(half->h.n == before + (r == TC_SKETCH_OK), "add count");
        CHECK(tc_sketch_add(&ab, &m, v) == r, "add result differs");
        external_add(&ext.h, &ext.counts, &m, v, r);
    }
    ext.cap = tc_sketch_buckets(&ext.h);
    CHECK(bytes_equal(&m, &ext, &ab), "caller-owned counts differ from the sketch's own");
    check_sketch(&m, &a);
    check_sketch(&m, &b);
    check_sketch(&m, &ab);
    tc_sketch merged;
    tc_sketch_init(&merged);
    CHECK(tc_sketch_merge(&merged, &a.h, a.counts) == TC_SKETCH_OK, "merge A");
    CHECK(tc_sketch_merge(&merged, &b.h, b.counts) == TC_SKETCH_OK, "merge B");
    CHECK(bytes_equal(&m, &merged, &ab), "merge(A, B) is not the sketch of all values");
    CHECK(tc_sketch_subtract(&merged, &b.h, b.counts) == TC_SKETCH_OK, "subtract B");
    if (ab.h.pos_len < TC_SKETCH_CAP && ab.h.neg_len < TC_SKETCH_CAP)
        CHECK(bytes_equal(&m, &merged, &a), "subtract did not give A back");
    size_t len;
    uint8_t *out = written(&m, &ab, &len);
    tc_sketch back;
    tc_sketch_init(&back);
    tc_sketch_map mb;
    CHECK(tc_sketch_read(out, len, m.alpha, &mb, &back) == TC_SKETCH_OK, "written bytes refused");
    CHECK(bytes_equal(&m, &back, &ab), "read back differs");
    free(out);
    tc_sketch_free(&back);
    tc_sketch_free(&merged);
    tc_sketch_free(&a);
    tc_sketch_free(&b);
    tc_sketch_free(&ab);
    tc_sketch_free(&ext);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    values_mode(data, size);
    uint8_t *buf = (uint8_t *)malloc(size ? size : 1);
    if (buf == NULL) return 0;
    if (size) memcpy(buf, data, size);
    else buf[0] = 0;   /* not part of the input: only keeps the compiler's warning quiet */

    tc_sketch_map m;
    tc_sketch s;
    tc_sketch_init(&s);
    int r = tc_sketch_read(buf, size, NAN, &m, &s);
    CHECK(r == ref_verdict(buf, size), "reader and reference checker disagree");
    if (r != TC_SKETCH_OK) {
        CHECK(s.counts == NULL && s.cap == 0 && s.h.n == 0, "refused input left counts");
        free(buf);
        return 0;
    }
    check_sketch(&m, &s);

    size_t n;
    uint8_t *out = written(&m, &s, &n);
    CHECK(n == size && memcmp(out, buf, n) == 0, "not written back to the same bytes");
    free(out);

    tc_sketch_map m2;
    tc_sketch t;
    tc_sketch_init(&t);
    CHECK(tc_sketch_read(buf, size - 1, NAN, &m2, &t) != TC_SKETCH_OK, "one byte short accepted");
    uint8_t *longer = (uint8_t *)malloc(size + 1);
    CHECK(longer != NULL, "malloc");
    memcpy(longer, buf, size);
    longer[size] = 0;
    CHECK(tc_sketch_read(longer, size + 1, NAN, &m2, &t) != TC_SKETCH_OK, "one byte long accepted");
    free(longer);
    CHECK(tc_sketch_read(buf, size, m.alpha, &m2, &t) == TC_SKETCH_OK, "own alpha refused");
    tc_sketch_free(&t);
    double other = m.alpha == 0.05 ? 0.005 : nextafter(m.alpha, 1.0);
    CHECK(tc_sketch_read(buf, size, other, &m2, &t) == TC_SKETCH_E_ALPHA, "other alpha accepted");

    /* merge into an empty sketch: the same bytes */
    tc_sketch e;
    tc_sketch_init(&e);
    CHECK(tc_sketch_merge(&e, &s.h, s.counts) == TC_SKETCH_OK, "merge into empty");
    out = written(&m, &e, &n);
    CHECK(n == size && memcmp(out, buf, n) == 0, "merge into empty changed the sketch");
    free(out);

    /* with itself: every count doubles; subtracting the copy gives the original back */
    if ((uint64_t)s.h.n * 2 <= TC_SKETCH_MAX_COUNT) {
        CHECK(tc_sketch_merge(&e, &e.h, e.counts) == TC_SKETCH_OK, "merge with itself");
        CHECK(e.h.n == 2 * s.h.n && tc_sketch_same_shape(&e.h, &s.h), "self-merge shape");
        for (uint32_t k = 0; k < tc_sketch_buckets(&s.h); k++)
            CHECK(e.counts[k] == 2 * s.counts[k], "self-merge counts");
        check_sketch(&m, &e);
        CHECK(tc_sketch_subtract(&e, &s.h, s.counts) == TC_SKETCH_OK, "subtract the copy");
        out = written(&m, &e, &n);
        CHECK(n == size && memcmp(out, buf, n) == 0, "subtract did not undo the merge");
        free(out);
    } else {
        CHECK(tc_sketch_merge(&e, &e.h, e.counts) == TC_SKETCH_E_FULL, "merge past 2^32 - 1");
    }
    CHECK(tc_sketch_subtract(&e, &s.h, s.counts) == TC_SKETCH_OK, "subtract itself");
    CHECK(e.h.n == 0 && tc_sketch_buckets(&e.h) == 0, "subtracting itself leaves values");
    tc_sketch_free(&e);
    tc_sketch_free(&s);
    free(buf);
    return 0;
}
