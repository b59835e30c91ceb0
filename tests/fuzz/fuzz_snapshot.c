/* Fuzz target for the snapshot reader's keys section (includes/tc_snapshot.h): the part of a state
 * file read in C, without the GIL, into the window table (docs/state.md). The header and engine
 * section are read in Python (telemetry_cy/engine/snapshot_format.py) and cannot crash the
 * process; the crc32 in front is skipped here on purpose (it would stop almost every mutant).
 *
 * Input: a 12-byte shape, then the keys section.
 *   0  u8   bit 0 event time, bit 1 quantiles (alpha 0.01), bit 2 clock started, bits 3-4 lead
 *           (event time only)
 *   1  u8   P - 1 (P = 1..16 panes per window)
 *   2  u16  keys in the section
 *   4  i64  closed tick
 * Built like the other targets by scripts/sanitize.sh (libFuzzer, or fuzz_driver.c with any
 * compiler) and replayed by tests/fuzz/test_fuzz_corpus.py. Besides what the sanitizers catch,
 * the target abort()s when:
 *   1. tc_snap_load refuses what tc_snap_scan accepted for any reason but a key twice, or the
 *      table then holds another number of keys than the section; the one-pass load (no scan
 *      first, every check made while building) and scan + load disagree;
 *   2. what the loaded table writes back (tc_snap_key_size / tc_snap_write_key) does not scan,
 *      or, loaded into a second table, is not written back to the same bytes (a restore of a
 *      restore changes nothing);
 *   3. a restored key breaks the record's invariants (newest within the clock, panes counted by
 *      the sketches' n, the sketch block's `used` the sum of its headers' buckets).
 * Then every restored key runs through what the engine does with it next: its aggregates at the
 * next ticks (arrival or event time), its window sketch, and one more reading in its newest
 * interval (and, in event time, in an open one below it), so a state that the reader lets through
 * is also one the engine can work on under the sanitizers.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tc_snapshot.h"

#define CHECK(cond, what)                                                                    \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_snapshot: invariant violated: %s (%s:%d)\n", what, __FILE__, \
                    __LINE__);                                                               \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

typedef struct {
    tc_snap_shape s;
    tc_sketch_map map;
    uint32_t panes;
} shape_t;

static int table_for(tc_table *t, const shape_t *sh) {
    if (tc_table_init(t, sh->s.units, 1u << 20, 0x1234567887654321ULL) != 0) return -1;
    t->ring = sh->s.ring;
    t->quantiles = (uint32_t)sh->s.quantiles;
    return 0;
}

/* The table written back: a malloc'd buffer (*len bytes). */
static uint8_t *write_back(const tc_table *t, const tc_snap_shape *s, size_t *len) {
    size_t n = 0;
    for (size_t i = 0; i < t->n_keys; i++) n += tc_snap_key_size(t->keys[i], s);
    uint8_t *buf = (uint8_t *)malloc(n ? n : 1), *o = buf;
    CHECK(buf != NULL, "malloc");
    for (size_t i = 0; i < t->n_keys; i++) o = tc_snap_write_key(o, t->keys[i], s);
    CHECK((size_t)(o - buf) == n, "tc_snap_write_key wrote what tc_snap_key_size said");
    *len = n;
    return buf;
}

static void check_key(const tc_table *t, const shape_t *sh, const tc_key *k) {
    uint32_t ring = sh->s.ring;
    if (k->newest == INT64_MIN) return;
    if (sh->s.started) CHECK(k->newest <= sh->s.closed + (int64_t)sh->s.lead, "newest in range");
    if (!sh->s.quantiles) return;
    tc_qs_head *b = tc_key_qs(k, t->panes);
    uint32_t used = 0;
    for (uint32_t p = 0; p < ring; p++) {
        const tc_sketch_hdr *h = &tc_qs_hdrs(b)[p];
        used += tc_sketch_buckets(h);
        CHECK(h->n == k->panes[p].count, "a pane's sketch holds its count");
    }
    CHECK(used == b->used && used <= b->cap, "the sketch block's used counts");
}

/* What the engine does next with a restored key. */
static void exercise(tc_table *t, const shape_t *sh) {
    uint32_t panes = sh->panes, ring = sh->s.ring, lead = sh->s.lead;
    tc_sketch scratch;
    tc_sketch_init(&scratch);
    for (size_t i = 0; i < t->n_keys; i++) {
        tc_key *k = t->keys[i];
        check_key(t, sh, k);
        if (k->newest == INT64_MIN) continue;
        tc_agg agg;
        int64_t from = sh->s.started ? sh->s.closed + 1 : k->newest + 1;
        for (int64_t tick = from; tick <= from + (int64_t)ring + 1; tick++) {
            int got = sh->s.event ? tc_key_aggregate_event(k, panes, ring, lead, tick, &agg)
                                  : tc_key_aggregate(k, panes, tick, &agg);
            if (got) CHECK(agg.count > 0, "an aggregate counts its readings");
            if (sh->s.quantiles && got && tick > k->newest)
                (void)tc_key_qs_window(t, k, panes, tick, &scratch);
        }
        /* one more reading in the newest interval, and below it while it is open */
        int64_t iv = k->newest;
        for (int round = 0; round < 2; round++) {
            if (sh->s.started && (iv < sh->s.closed || iv > sh->s.closed + (int64_t)lead)) break;
            uint32_t pane = tc_pane_of(iv, ring);
            double x = 1.5 + (double)round;
            if (sh->s.quantiles) {
                int r = tc_key_qs_add(t, &k, &sh->map, iv, pane, x);
                if (r != TC_QS_OK) break;
            }
            if (sh->s.event)
                tc_key_add_event(k, ring, lead, iv, pane, (double)iv * 1.0 + 0.25, x);
            else
                tc_key_add(k, ring, iv, pane, (double)iv * 1.0 + 0.25, x);
            check_key(t, sh, k);
            if (!sh->s.event || lead == 0) break;
            iv -= 1;
        }
    }
    tc_sketch_free(&scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 12) return 0;
    shape_t sh;
    memset(&sh, 0, sizeof sh);
    uint16_t n_keys;
    sh.s.event = data[0] & 1;
    sh.s.quantiles = (data[0] >> 1) & 1;
    sh.s.started = (data[0] >> 2) & 1;
    sh.s.lead = sh.s.event ? (uint32_t)((data[0] >> 3) & 3) : 0;
    sh.panes = (uint32_t)(data[1] % 16) + 1;
    memcpy(&n_keys, data + 2, 2);
    memcpy(&sh.s.closed, data + 4, 8);
    if (sh.s.closed > TC_SNAP_MAX_INTERVAL || sh.s.closed < -TC_SNAP_MAX_INTERVAL) return 0;
    sh.s.ring = sh.panes + sh.s.lead;
    sh.s.units = tc_event_units(sh.s.ring, sh.s.lead);
    CHECK(tc_sketch_map_init(&sh.map, 0.01) == 0, "map");
    sh.s.qmap = &sh.map;

    /* the section in a buffer of exactly its size: a read past it is an ASan report */
    size_t len = size - 12;
    uint8_t *sec = (uint8_t *)malloc(len ? len : 1);
    CHECK(sec != NULL, "malloc");
    memcpy(sec, data + 12, len);
    double *last_ts = (double *)malloc(sizeof(double) * (n_keys ? n_keys : 1));
    CHECK(last_ts != NULL, "malloc");
    const char *why = NULL;
    /* the one-pass load (every check made while building) agrees with the scan */
    tc_table direct;
    CHECK(table_for(&direct, &sh) == 0, "table");
    int direct_rc = tc_snap_load(&direct, sec, len, &sh.s, n_keys, NULL, 0, &why);
    CHECK(direct_rc >= 0, "load: out of memory");
    tc_table_free(&direct);
    if (tc_snap_scan(sec, len, &sh.s, n_keys, last_ts, &why) != 0) {
        CHECK(why != NULL, "a refusal says why");
        CHECK(direct_rc == 1, "the one-pass load refuses what the scan refuses");
        free(last_ts);
        free(sec);
        return 0;
    }
    tc_table t;
    CHECK(table_for(&t, &sh) == 0, "table");
    int rc = tc_snap_load(&t, sec, len, &sh.s, n_keys, NULL, 1, &why);
    CHECK(rc == direct_rc, "the one-pass load and scan + load agree");
    CHECK(rc >= 0, "load: out of memory");
    if (rc == 1) {
        CHECK(why && strstr(why, "twice"), "load refuses only a key twice after a clean scan");
    } else {
        CHECK(t.n_keys == n_keys, "every key loaded");
        size_t len1, len2;
        uint8_t *once = write_back(&t, &sh.s, &len1);
        CHECK(tc_snap_scan(once, len1, &sh.s, n_keys, NULL, &why) == 0, "written back scans");
        tc_table t2;
        CHECK(table_for(&t2, &sh) == 0, "table");
        CHECK(tc_snap_load(&t2, once, len1, &sh.s, n_keys, NULL, 0, &why) == 0,
              "written back loads");
        uint8_t *twice = write_back(&t2, &sh.s, &len2);
        CHECK(len1 == len2 && memcmp(once, twice, len1) == 0, "a restore of a restore");
        free(once);
        free(twice);
        tc_table_free(&t2);
        exercise(&t, &sh);
    }
    tc_table_free(&t);
    free(last_ts);
    free(sec);
    return 0;
}
