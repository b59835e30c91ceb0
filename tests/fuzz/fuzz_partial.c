/* Fuzz target for the partial format's reader (includes/tc_partial.h): the messages a merge
 * worker takes from NATS, written by other processes (docs/scale-out.md, "The partial format").
 *
 * Input: one mode byte, then the message.
 *   bit 0 of the mode: reseal: the harness writes the message's length into its header and its
 *         crc32 into its last 4 bytes before reading it, so that mutants reach the field checks
 *         (a raw mutant almost always stops at the checksum); clear: the bytes as they are.
 * Built like the other targets by scripts/sanitize.sh (libFuzzer, or fuzz_driver.c with any
 * compiler) and replayed by tests/fuzz/test_fuzz_corpus.py; the seeds are
 * tests/fuzz/make_partial_corpus.py's. Besides what the sanitizers catch, the target abort()s
 * when:
 *   1. the step-by-step read (tc_partial_open, tc_partial_next per pane, tc_partial_end) and
 *      tc_partial_check disagree, or a refusal has no reason or no words;
 *   2. a resealed message with the right magic and version is refused for its length or
 *      checksum (the frame checks look at nothing else);
 *   3. an accepted message, written back from the fields the reader gave (header values,
 *      quantiles, instance id, every pane's key, statistics, times and sketch), is not the same
 *      bytes: every byte was read for what it means;
 *   4. an accepted header or pane breaks the format's rules, stated again here: kind, flags,
 *      quantiles ascending in (0, 1), window and times, partition, an instance id of 1 to 255
 *      bytes of UTF-8; names UTF-8, min <= first, last <= max, lo <= first_ts <= last_ts < hi, a
 *      sketch holding exactly the pane's count.
 * Then every accepted sketch goes through what a merge worker does with it: merged into one
 * window sketch, and the message's quantiles of each pane and of the merge.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tc_partial.h"

#define CHECK(cond, what)                                                                     \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "fuzz_partial: invariant violated: %s (%s:%d)\n", what, __FILE__, \
                    __LINE__);                                                                \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

#define PUT(o, v)                                                                             \
    do {                                                                                      \
        memcpy((o), &(v), sizeof(v));                                                         \
        (o) += sizeof(v);                                                                     \
    } while (0)

/* The header as the fields say (partial_format.HEADER). */
static uint8_t *put_header(uint8_t *o, const tc_partial *m, uint64_t length) {
    uint32_t version = TC_PARTIAL_VERSION;
    memcpy(o, "TCYPARTL", 8);
    o += 8;
    PUT(o, version);
    PUT(o, m->kind);
    PUT(o, m->flags);
    PUT(o, length);
    PUT(o, m->window);
    PUT(o, m->emit_every);
    PUT(o, m->panes);
    PUT(o, m->lead);
    PUT(o, m->allowed_lateness);
    PUT(o, m->quantile_accuracy);
    PUT(o, m->n_quantiles);
    PUT(o, m->instance_len);
    PUT(o, m->interval);
    PUT(o, m->seq);
    PUT(o, m->partition);
    PUT(o, m->partitions);
    return o;
}

/* One pane as partial_format.write lays it out. */
static uint8_t *put_pane(uint8_t *o, const tc_partial_pane *p, const uint32_t *counts) {
    uint16_t dlen = (uint16_t)p->dlen, slen = (uint16_t)p->slen, ulen = (uint16_t)p->ulen,
             age = 0;
    uint8_t has_unit = p->unit != NULL;
    PUT(o, dlen);
    PUT(o, slen);
    PUT(o, ulen);
    PUT(o, has_unit);
    memcpy(o, p->dev, dlen);
    o += dlen;
    memcpy(o, p->sen, slen);
    o += slen;
    if (has_unit) {
        memcpy(o, p->unit, ulen);
        o += ulen;
    }
    PUT(o, age);
    PUT(o, p->count);
    PUT(o, p->sum);
    PUT(o, p->m2);
    PUT(o, p->min);
    PUT(o, p->max);
    PUT(o, p->first);
    PUT(o, p->first_ts);
    PUT(o, p->last);
    PUT(o, p->last_ts);
    if (p->counts) {
        PUT(o, p->sketch.pos_min);
        PUT(o, p->sketch.neg_min);
        PUT(o, p->sketch.pos_len);
        PUT(o, p->sketch.neg_len);
        PUT(o, p->sketch.n);
        size_t nb = tc_sketch_buckets(&p->sketch);
        memcpy(o, counts, 4 * nb);
        o += 4 * nb;
    }
    return o;
}

/* The header's rules (docs/scale-out.md), stated again here from the format, not the reader. */
static void check_header(const tc_partial *m, const uint8_t *msg, size_t n) {
    CHECK(m->kind >= 1 && m->kind <= 4 && (m->flags & ~3u) == 0, "kind and flags");
    CHECK(m->n_quantiles <= 8 && (m->n_quantiles > 0) == ((m->flags & 2u) != 0), "quantiles");
    for (uint32_t i = 0; i < m->n_quantiles; i++) {
        double q = tc_partial_f64(m->quantiles + 8 * (size_t)i);
        CHECK(q > 0.0 && q < 1.0, "a quantile in (0, 1)");
        if (i) CHECK(q > tc_partial_f64(m->quantiles + 8 * (size_t)(i - 1)), "ascending");
    }
    CHECK(m->n_quantiles ? m->quantile_accuracy > 0.0 && m->quantile_accuracy < 1.0
                         : m->quantile_accuracy == 0.0,
          "an accuracy with quantiles only");
    CHECK(m->emit_every > 0.0 && isfinite(m->emit_every) && isfinite(m->window) && m->panes >= 1,
          "window and emit_every");
    CHECK(isfinite(m->allowed_lateness) && m->allowed_lateness >= 0.0, "allowed_lateness");
    CHECK((m->flags & 1u) || (m->lead == 0 && m->allowed_lateness == 0.0), "arrival time");
    CHECK(m->partition < m->partitions, "partition");
    CHECK(m->interval <= 4000000000000000000LL && m->interval >= -4000000000000000000LL,
          "interval");
    CHECK(m->instance_len >= 1 && m->instance_len <= 255 &&
              m->instance + m->instance_len <= msg + n - TC_PARTIAL_CRC &&
              tc_utf8_valid(m->instance, m->instance_len),
          "instance id");
}

static void check_pane(const tc_partial *m, const tc_partial_pane *p, const uint8_t *msg,
                       size_t n, uint32_t *counts) {
    const uint8_t *body = msg + TC_PARTIAL_HEADER, *end = msg + n - TC_PARTIAL_CRC;
    CHECK(p->dev >= body && p->dev + p->dlen <= end && p->sen + p->slen <= end, "names inside");
    CHECK(tc_utf8_valid(p->dev, p->dlen) && tc_utf8_valid(p->sen, p->slen) && p->dlen && p->slen,
          "names UTF-8, not empty");
    CHECK(!p->unit || (p->unit + p->ulen <= end && tc_utf8_valid(p->unit, p->ulen)), "unit");
    CHECK(p->unit || p->ulen == 0, "no unit, no unit bytes");
    CHECK(p->count > 0 && p->m2 >= 0.0 && p->min <= p->first && p->first <= p->max &&
              p->min <= p->last && p->last <= p->max,
          "statistics in order");
    CHECK(m->lo <= p->first_ts && p->first_ts <= p->last_ts && p->last_ts < m->hi,
          "times in the interval");
    if (!m->n_quantiles) {
        CHECK(p->counts == NULL, "no sketch without quantiles");
        return;
    }
    CHECK(p->counts != NULL && m->qmap != NULL, "a sketch with quantiles");
    size_t nb = tc_sketch_buckets(&p->sketch);
    CHECK(nb <= 2 * TC_SKETCH_CAP && p->counts + 4 * nb <= end, "counts inside");
    /* the counts are unaligned in the message: the sketch functions take them aligned */
    for (size_t k = 0; k < nb; k++) counts[k] = tc_partial_u32(p->counts + 4 * k);
    CHECK(p->sketch.n == p->count && tc_sketch_stores_sum(&p->sketch, counts) <= p->sketch.n,
          "the sketch holds the pane's readings");
}

static void quantiles_of(const tc_partial *m, const tc_sketch_hdr *h, const uint32_t *counts) {
    for (uint32_t i = 0; i < m->n_quantiles; i++) {
        double q = tc_partial_f64(m->quantiles + 8 * (size_t)i);
        double v = tc_sketch_quantile(m->qmap, h, counts, q);
        CHECK(!isnan(v), "a quantile of a sound sketch");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int reseal = data[0] & 1;
    size_t n = size - 1;
    /* the message in a buffer of exactly its size: a read past it is an ASan report */
    uint8_t *msg = (uint8_t *)malloc(n ? n : 1);
    CHECK(msg != NULL, "malloc");
    memcpy(msg, data + 1, n);
    if (reseal && n >= TC_PARTIAL_HEADER + TC_PARTIAL_CRC) {
        uint64_t len = n;
        memcpy(msg + 16, &len, 8);
        uint32_t crc = tc_crc32(0, msg, n - TC_PARTIAL_CRC);
        memcpy(msg + n - TC_PARTIAL_CRC, &crc, 4);
    }
    const char *why = NULL, *why_check = NULL;
    tc_partial_reason whole = tc_partial_check(msg, n, &why_check);

    tc_partial m;
    tc_partial_pane p;
    static uint32_t counts[2 * TC_SKETCH_CAP];
    uint8_t *back = NULL, *o = NULL;
    tc_sketch window;
    tc_sketch_init(&window);
    tc_partial_reason rc = tc_partial_open(&m, msg, n, &why);
    if (rc == TC_PARTIAL_OK) {
        check_header(&m, msg, n);
        back = (uint8_t *)malloc(n);
        CHECK(back != NULL, "malloc");
        o = put_header(back, &m, n);
        memcpy(o, m.quantiles, 8 * (size_t)m.n_quantiles);
        o += 8 * (size_t)m.n_quantiles;
        memcpy(o, m.instance, m.instance_len);
        o += m.instance_len;
        if (m.kind == TC_PARTIAL_PANES) PUT(o, m.n_panes);
        else CHECK(m.n_panes == 0, "panes only in a panes message");
        CHECK(o - back == m.pos - msg, "the header written back is as long as the one read");
        uint32_t total = m.n_panes;
        for (uint32_t i = 0; i < total && rc == TC_PARTIAL_OK; i++) {
            rc = tc_partial_next(&m, &p, &why);
            if (rc != TC_PARTIAL_OK) break;
            check_pane(&m, &p, msg, n, counts);
            o = put_pane(o, &p, counts);
            CHECK(o - back == m.pos - msg, "a pane written back is as long as the pane read");
            if (p.counts) {
                quantiles_of(&m, &p.sketch, counts);
                if (tc_sketch_merge(&window, &p.sketch, counts) == TC_SKETCH_OK)
                    quantiles_of(&m, &window.h, window.counts);
            }
        }
        if (rc == TC_PARTIAL_OK) rc = tc_partial_end(&m, &why);
    }
    CHECK(rc == whole, "the step-by-step read and tc_partial_check agree");
    if (rc == TC_PARTIAL_OK) {
        CHECK((size_t)(o - back) == n - TC_PARTIAL_CRC, "every byte read");
        memcpy(o, msg + n - TC_PARTIAL_CRC, TC_PARTIAL_CRC);
        CHECK(memcmp(back, msg, n) == 0, "an accepted message writes back to its bytes");
    } else {
        CHECK(rc >= TC_PARTIAL_EMPTY && rc <= TC_PARTIAL_MALFORMED, "a known reason");
        CHECK(why != NULL && why_check != NULL && tc_partial_reason_names[rc - 1] != NULL,
              "a refusal says why");
        if (reseal && n >= TC_PARTIAL_HEADER + TC_PARTIAL_CRC && memcmp(msg, "TCYPARTL", 8) == 0 &&
            tc_partial_u32(msg + 8) == TC_PARTIAL_VERSION)
            CHECK(rc == TC_PARTIAL_MALFORMED, "a resealed frame passes the frame checks");
    }
    tc_sketch_free(&window);
    free(back);
    free(msg);
    return 0;
}
