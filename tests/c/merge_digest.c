/* Prints a digest of the bits of many pane merges (tc_key_aggregate: count, sum, mean, m2, var)
 * over a random stream: panes of one reading and of many, values of every magnitude and sign.
 * tests/test_merge_lanes.py builds it with the two-lane division of tc_div2 (SSE2, NEON) and with
 * the scalar one, and the digests must be equal: the lanes round as the scalar division does.
 *
 *     merge_digest [seed]
 */
#include <stdio.h>
#include <stdlib.h>

#include "tc_window.h"

static uint64_t state;

static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

int main(int argc, char **argv) {
    state = argc > 1 ? strtoull(argv[1], NULL, 10) * 2654435761ULL + 1 : 88172645463325252ULL;
    const uint32_t P = 7;
    tc_table t;
    if (tc_table_init(&t, P, 100000, 1) != 0) return 2;
    uint64_t h = 1469598103934665603ULL;
    char dev[16];
    for (int key = 0; key < 20000; key++) {
        int dlen = snprintf(dev, sizeof dev, "d%d", key);
        uint64_t kh = tc_key_hash(t.seed, dev, (size_t)dlen, "s", 1);
        size_t slot;
        tc_table_find(&t, kh, dev, (size_t)dlen, "s", 1, &slot);
        tc_key *k = tc_table_insert(&t, kh, slot, dev, (size_t)dlen, "s", 1);
        if (k == NULL) return 2;
        int64_t iv = (int64_t)(next() % 5) - 2;
        int step = (int)(next() % 4);   /* 0: a new interval per reading, 3: many per pane */
        for (int r = 0; r < 60; r++) {
            if ((int)(next() % 4) >= step) iv++;
            double x = ((double)(int64_t)(next() % 2000001) - 1e6) * 1.37e-3;
            if (next() % 7 == 0) x *= 1e12;
            tc_key_add(k, P, iv, tc_pane_of(iv, P), (double)r, x);
            tc_agg a;
            if (!tc_key_aggregate(k, P, iv + 1 + (int64_t)(next() % 3), &a)) continue;
            uint64_t b[5];
            memcpy(&b[0], &a.sum, 8);
            memcpy(&b[1], &a.mean, 8);
            memcpy(&b[2], &a.m2, 8);
            memcpy(&b[3], &a.var, 8);
            b[4] = a.count;
            for (int j = 0; j < 5; j++) h = (h ^ b[j]) * 1099511628211ULL;
        }
    }
    tc_table_free(&t);
    printf("%016llx\n", (unsigned long long)h);
    return 0;
}
