/* Stress harness for lending the parked consumer (includes/tc_park.h, tc_doorbell.h), meant to run
 * under ThreadSanitizer:
 *
 *   cc -std=gnu11 -fsanitize=thread -O1 -g -pthread -I telemetry_cy/includes \
 *      tests/c/lend_stress.c -o lend_stress
 *   ./lend_stress [n_records [seed [capacity [gil_every [kick_us]]]]]
 *
 * Three threads, as in the pipeline: a producer (the network thread) commits turns of 1..200
 * records and hands each turn off with tc_hand_off (lent drain for at most LEND_MAX records, else
 * the doorbell), sometimes pausing; a consumer (the engine thread) drains, then parks with
 * tc_park, lent, for short random timeouts; a kicker kicks the doorbell every kick_us
 * microseconds (a stop request racing the borrows). The consumer's state ("the engine": the next
 * expected seq, a count, a checksum) is plain memory written by whichever thread owns it: the
 * consumer, or the producer inside a borrowed drain. Every gil_every-th record is one the lent
 * drain must not process (as the engine's records that need the GIL): it rewinds to the mark
 * before it, releases what it processed and reports records left, so the consumer's own drain
 * processes it.
 *
 * Checked: every record processed exactly once and in order (seq and checksum), the ring empty at
 * the end, lent drains and kicks did happen. Exit 0 when everything checks out, 1 on any error,
 * 2 on bad arguments. TSan reports a race on the consumer's state or the ring's consumer side --
 * what the lend protocol must order -- as "WARNING: ThreadSanitizer".
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tc_park.h"

#define LEND_MAX 128        /* the producer lends for turns of at most this many records */
#define LENT_DRAIN_MAX 96   /* the lent drain's own bound (smaller: exercises "left at bound") */

typedef struct {
    tc_ring *ring;
    tc_doorbell bell;
    /* the consumer's state: owned by the consumer thread, or by the producer while borrowed */
    uint64_t next_seq, processed, checksum, errors, by_lender;
    uint64_t gil_every;
    tc_lender lender;
    /* run control */
    uint64_t n;
    uint64_t seed;
    long kick_us;
    atomic_int producer_done, kicker_stop;
    atomic_uint_fast64_t kicks;
} ctx_t;

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static int needs_consumer(const ctx_t *c, uint64_t seq) {
    return c->gil_every && seq % c->gil_every == c->gil_every - 1;
}

/* one record into the consumer's state; returns 0 when the record is not the expected one */
static void apply(ctx_t *c, const tc_ring_view *v) {
    uint64_t seq, h;
    if (v->payload_len != 16) { c->errors++; return; }
    memcpy(&seq, v->payload, 8);
    memcpy(&h, v->payload + 8, 8);
    if (seq != c->next_seq || (double)seq != v->ts || h != mix64(c->seed ^ seq)) {
        if (c->errors < 5)
            fprintf(stderr, "record seq=%" PRIu64 " ts=%.0f, expected %" PRIu64 "\n", seq, v->ts,
                    c->next_seq);
        c->errors++;
    }
    c->next_seq = seq + 1;
    c->processed++;
    c->checksum += h;
}

/* tc_lender.drain: runs on the producer thread while it holds the borrowed state */
static int lent_drain(void *arg) {
    ctx_t *c = arg;
    tc_ring_view v;
    for (int k = 0; k < LENT_DRAIN_MAX; k++) {
        size_t mark = tc_ring_mark(c->ring);
        if (!tc_ring_peek(c->ring, &v)) {
            tc_ring_release(c->ring);
            return 0;
        }
        uint64_t seq;
        memcpy(&seq, v.payload, 8);
        if (needs_consumer(c, seq)) {   /* left, with everything after it, for the consumer */
            tc_ring_rewind(c->ring, mark);
            tc_ring_release(c->ring);
            return 1;
        }
        apply(c, &v);
        c->by_lender++;
        tc_ring_consume(c->ring, &v);
    }
    tc_ring_release(c->ring);
    return tc_ring_peek(c->ring, &v);   /* at the bound: more behind? */
}

static uint64_t drain_own(ctx_t *c) {
    tc_ring_view v;
    uint64_t n = 0;
    while (tc_ring_peek(c->ring, &v)) {
        apply(c, &v);
        tc_ring_consume(c->ring, &v);
        if (++n % 64 == 0) tc_ring_release(c->ring);
    }
    tc_ring_release(c->ring);
    return n;
}

static void *producer(void *arg) {
    ctx_t *c = arg;
    uint64_t seq = 0, rnd = c->seed;
    unsigned char payload[16];
    while (seq < c->n) {
        rnd = mix64(rnd);
        uint64_t turn = 1 + rnd % 200, committed = 0;
        /* On a loaded machine the consumer may not get a core until the producer is done, and
         * a run without a lend checks nothing of the protocol: from half way, until a first
         * lend, one record a turn with a nap after it, so that the consumer drains and parks. */
        int slow = seq >= c->n / 2 && tc_doorbell_lends(&c->bell) == 0;
        if (slow) turn = 1;
        for (uint64_t k = 0; k < turn && seq < c->n; k++) {
            uint64_t h = mix64(c->seed ^ seq);
            memcpy(payload, &seq, 8);
            memcpy(payload + 8, &h, 8);
            tc_ring_wview w;
            int rc = tc_ring_reserve_record(c->ring, (double)seq, 1, 16, &w);
            if (rc == TC_RING_FULL) {   /* never drop here: hand off and retry */
                tc_hand_off(&c->bell, committed, LEND_MAX);
                committed = 0;
                sched_yield();
                k--;
                continue;
            }
            if (rc != TC_RING_OK) { fprintf(stderr, "reserve failed %d\n", rc); exit(1); }
            w.topic[0] = 't';
            memcpy(w.payload, payload, 16);
            tc_ring_commit(c->ring);
            committed++;
            seq++;
        }
        tc_hand_off(&c->bell, committed, LEND_MAX);
        if (slow || (rnd >> 20) % 4 == 0) {
            struct timespec ts = {0, slow ? 200000 : (long)((rnd >> 32) % 200000)};   /* a nap */
            nanosleep(&ts, NULL);
        }
    }
    atomic_store_explicit(&c->producer_done, 1, memory_order_release);
    tc_doorbell_kick(&c->bell);
    return NULL;
}

static void *kicker(void *arg) {
    ctx_t *c = arg;
    struct timespec ts = {0, c->kick_us * 1000};
    while (!atomic_load_explicit(&c->kicker_stop, memory_order_acquire)) {
        nanosleep(&ts, NULL);
        tc_doorbell_kick(&c->bell);
        atomic_fetch_add(&c->kicks, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    static ctx_t c;
    c.n = argc > 1 ? strtoull(argv[1], NULL, 10) : 200000;
    c.seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    size_t capacity = argc > 3 ? (size_t)strtoull(argv[3], NULL, 10) : 1 << 16;
    c.gil_every = argc > 4 ? strtoull(argv[4], NULL, 10) : 37;
    c.kick_us = argc > 5 ? atol(argv[5]) : 300;
    if (c.kick_us <= 0 || c.kick_us >= 1000000 || tc_ring_create(&c.ring, capacity) != TC_RING_OK
            || tc_doorbell_init(&c.bell) != 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    c.lender.drain = lent_drain;
    c.lender.ctx = &c;
    pthread_t p, k;
    pthread_create(&p, NULL, producer, &c);
    pthread_create(&k, NULL, kicker, &c);
    uint64_t parks = 0, kicked = 0, rnd = c.seed ^ 0x5EED;
    for (;;) {
        drain_own(&c);
        if (atomic_load_explicit(&c.producer_done, memory_order_acquire)) {
            drain_own(&c);   /* done was published after the last hand-off: nothing after it */
            break;
        }
        rnd = mix64(rnd);
        int64_t slept;
        int why = tc_park(c.ring, &c.bell, (rnd & 1) ? 100 : 0, (int64_t)(rnd >> 40) % 2000000,
                          &c.lender, &slept);
        parks++;
        if (why == TC_PARK_KICKED) kicked++;
    }
    atomic_store_explicit(&c.kicker_stop, 1, memory_order_release);
    pthread_join(p, NULL);
    pthread_join(k, NULL);
    uint64_t expect_sum = 0;
    for (uint64_t s = 0; s < c.n; s++) expect_sum += mix64(c.seed ^ s);
    uint64_t lends = tc_doorbell_lends(&c.bell);
    int bad = c.errors != 0 || c.processed != c.n || c.next_seq != c.n || c.checksum != expect_sum
              || tc_ring_used_bytes(c.ring) != 0 || lends == 0 || c.by_lender == 0;
    printf("records=%" PRIu64 " processed=%" PRIu64 " by_lender=%" PRIu64 " lends=%" PRIu64
           " parks=%" PRIu64 " kicked=%" PRIu64 " kicks=%" PRIu64 " errors=%" PRIu64 "\n",
           c.n, c.processed, c.by_lender, lends, parks, kicked,
           (uint64_t)atomic_load(&c.kicks), c.errors + (uint64_t)bad);
    tc_doorbell_destroy(&c.bell);
    tc_ring_destroy(c.ring);
    return bad ? 1 : 0;
}
