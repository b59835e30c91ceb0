/* Stress harness for includes/spsc_ring.h, meant to run under ThreadSanitizer:
 *
 *   cc -std=gnu11 -fsanitize=thread -O1 -g -pthread -I telemetry_cy/includes \
 *      tests/c/spsc_stress.c -o spsc_stress
 *   ./spsc_stress [n_records [seed [capacity [max_payload [delay_every [yield_on_full]]]]]]
 *
 * One producer pthread writes n_records records whose sizes and bytes are a pure function of
 * (seed, seq), using all three producer paths in turn (raw tc_ring_reserve + hand-written header,
 * tc_ring_reserve_record, tc_ring_try_write). When the ring is full it drops and counts, never waits
 * (with yield_on_full=1 it calls sched_yield() after each drop, so that most records get through even
 * when the two threads share a core; the dropped record stays dropped).
 * The main thread consumes in batches of varying size and checks order, lengths and every byte, and
 * that every missing seq is a counted drop. Exit 0 when everything checks out, 1 on any error
 * (details on stderr), 2 on bad arguments. TSan reports data races on stderr as "WARNING:
 * ThreadSanitizer"; the pytest wrapper (tests/test_ring.py) fails on those as well.
 *
 * The same logic lives in _ring.pyx:stress() for the Cython build; this copy exists so the ring can
 * be checked by TSan without an instrumented CPython.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spsc_ring.h"

#define MAX_TOPIC 48

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static void fill(unsigned char *dst, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (unsigned char)((h >> ((i & 7) << 3)) ^ (i * 0x9D));
}

static int check(const unsigned char *src, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++)
        if (src[i] != (unsigned char)((h >> ((i & 7) << 3)) ^ (i * 0x9D)))
            return 0;
    return 1;
}

typedef struct {
    tc_ring *ring;
    uint64_t n, seed;
    size_t max_payload;
    unsigned char *scratch;   /* producer-private */
    /* dropped[seq] is written by the producer before it commits any later record; the consumer
     * reads dropped[k] only for k below a seq it has acquired, or after the join. One byte per seq
     * so that neighbouring writes and reads never touch the same memory location. */
    unsigned char *dropped;
    uint64_t producer_drops;  /* producer-private until the join */
    int yield_on_full;
    tc_atomic_size done;      /* release-stored after the producer's last commit */
} ctx_t;

static void sizes(const ctx_t *c, uint64_t seq, uint64_t *h, size_t *tlen, size_t *plen)
{
    *h = mix64(c->seed ^ mix64(seq));
    *tlen = (size_t)((*h & 0xFFFF) % (MAX_TOPIC + 1));
    *plen = (size_t)((*h >> 16) % (c->max_payload + 1));
}

static void *producer(void *arg)
{
    ctx_t *c = arg;
    for (uint64_t seq = 0; seq < c->n; seq++) {
        uint64_t h;
        size_t tlen, plen;
        int ok = 0;
        sizes(c, seq, &h, &tlen, &plen);
        switch (seq % 3) {
        case 0: { /* raw two-phase: the caller writes the header itself */
            size_t total = tc_ring_record_size(tlen, plen);
            unsigned char *p = tc_ring_reserve(c->ring, total);
            if (p) {
                tc_ring_hdr hdr = {(uint32_t)total, (uint32_t)tlen, (double)seq, (uint32_t)plen, 0};
                memcpy(p, &hdr, sizeof hdr);
                fill(p + TC_RING_HEADER_SIZE, tlen, h);
                fill(p + TC_RING_HEADER_SIZE + tlen, plen, mix64(h));
                tc_ring_commit(c->ring);
                ok = 1;
            }
            break;
        }
        case 1: { /* two-phase with the header written by the ring */
            tc_ring_wview w;
            if (tc_ring_reserve_record(c->ring, (double)seq, tlen, plen, &w) == TC_RING_OK) {
                fill(w.topic, tlen, h);
                fill(w.payload, plen, mix64(h));
                tc_ring_commit(c->ring);
                ok = 1;
            }
            break;
        }
        default: /* one-shot copy */
            fill(c->scratch, tlen, h);
            fill(c->scratch + tlen, plen, mix64(h));
            ok = tc_ring_try_write(c->ring, (double)seq, c->scratch, tlen, c->scratch + tlen, plen)
                 == TC_RING_OK;
            break;
        }
        if (!ok) {
            c->dropped[seq] = 1;
            c->producer_drops++;
            if (c->yield_on_full)
                sched_yield();
        }
    }
    tc_store_release_size(&c->done, 1);
    return NULL;
}

int main(int argc, char **argv)
{
    ctx_t c;
    memset(&c, 0, sizeof c);
    c.n = argc > 1 ? strtoull(argv[1], NULL, 10) : 300000;
    c.seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    size_t capacity = argc > 3 ? (size_t)strtoull(argv[3], NULL, 10) : 4096;
    c.max_payload = argc > 4 ? (size_t)strtoull(argv[4], NULL, 10) : 200;
    uint64_t delay_every = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
    c.yield_on_full = argc > 6 ? atoi(argv[6]) : 0;

    if (tc_ring_create(&c.ring, capacity) != TC_RING_OK) {
        fprintf(stderr, "bad capacity %zu\n", capacity);
        return 2;
    }
    if (tc_ring_record_size(MAX_TOPIC, c.max_payload) > tc_ring_max_record(c.ring)) {
        fprintf(stderr, "max_payload %zu too big for capacity %zu\n", c.max_payload, capacity);
        return 2;
    }
    /* Oversize is refused and not counted as a drop. */
    unsigned char *big = calloc(tc_ring_max_record(c.ring), 1);
    if (!big)
        return 2;
    if (tc_ring_try_write(c.ring, 0.0, big, 0, big, tc_ring_max_record(c.ring)) != TC_RING_TOO_BIG
        || tc_ring_reserve(c.ring, tc_ring_max_record(c.ring) + 8) != NULL
        || tc_ring_drops_full(c.ring) != 0 || tc_ring_used_bytes(c.ring) != 0) {
        fprintf(stderr, "oversize record not refused cleanly\n");
        return 1;
    }
    free(big);
    /* Two-phase edge cases, single-threaded: an uncommitted reservation is abandoned by the next
     * reserve, even a failed one, and a stray commit then publishes nothing. */
    {
        tc_ring_wview w;
        tc_ring_view v;
        if (tc_ring_reserve_record(c.ring, 1.0, 1, 8, &w) != TC_RING_OK
            || tc_ring_reserve(c.ring, tc_ring_max_record(c.ring) + 8) != NULL)
            return 1;
        tc_ring_commit(c.ring);
        if (tc_ring_used_bytes(c.ring) != 0 || tc_ring_peek(c.ring, &v)) {
            fprintf(stderr, "a commit after a failed reserve published something\n");
            return 1;
        }
        if (tc_ring_reserve_record(c.ring, 1.0, 1, 8, &w) != TC_RING_OK
            || tc_ring_reserve_record(c.ring, 2.0, 2, 0, &w) != TC_RING_OK)
            return 1;
        memcpy(w.topic, "ok", 2);
        tc_ring_commit(c.ring);
        if (!tc_ring_peek(c.ring, &v) || v.ts != 2.0 || v.topic_len != 2 || memcmp(v.topic, "ok", 2)
            || v.payload_len != 0 || v.size != tc_ring_used_bytes(c.ring)) {
            fprintf(stderr, "a second reserve did not replace the first\n");
            return 1;
        }
        tc_ring_consume(c.ring, &v);
        tc_ring_release(c.ring);
        if (tc_ring_peek(c.ring, &v) || tc_ring_used_bytes(c.ring) != 0)
            return 1;
    }
    c.scratch = malloc(MAX_TOPIC + c.max_payload + 1);
    c.dropped = calloc(c.n + 1, 1);
    atomic_init(&c.done, 0);
    if (!c.scratch || !c.dropped)
        return 2;

    pthread_t th;
    if (pthread_create(&th, NULL, producer, &c) != 0) {
        perror("pthread_create");
        return 2;
    }

    uint64_t received = 0, expect = 0, errors = 0, unreleased = 0, batch_limit = 1;
    int finished = 0;
    struct timespec nap = {0, 20000};
    for (;;) {
        tc_ring_view v;
        if (!tc_ring_peek(c.ring, &v)) {
            if (unreleased) {
                tc_ring_release(c.ring);
                unreleased = 0;
            }
            if (finished)
                break;
            if (tc_load_acquire_size(&c.done))
                finished = 1;   /* one more peek: it sees the producer's final head */
            else
                sched_yield();
            continue;
        }
        /* Range check first: converting a NaN or out-of-range double to an integer is undefined. */
        uint64_t seq = (v.ts >= 0.0 && v.ts < (double)c.n) ? (uint64_t)v.ts : UINT64_MAX;
        if (seq == UINT64_MAX || (double)seq != v.ts || seq < expect) {
            if (errors++ < 10)
                fprintf(stderr, "bad seq: ts=%f expect>=%" PRIu64 "\n", v.ts, expect);
        } else {
            for (uint64_t k = expect; k < seq; k++)
                if (!c.dropped[k]) {
                    if (errors++ < 10)
                        fprintf(stderr, "seq %" PRIu64 " missing but not counted as dropped\n", k);
                    break;
                }
            uint64_t h;
            size_t tlen, plen;
            sizes(&c, seq, &h, &tlen, &plen);
            if (v.topic_len != tlen || v.payload_len != plen || v.size != tc_ring_record_size(tlen, plen)
                || !check(v.topic, tlen, h) || !check(v.payload, plen, mix64(h))) {
                if (errors++ < 10)
                    fprintf(stderr, "seq %" PRIu64 ": bad lengths or content\n", seq);
            }
            expect = seq + 1;
        }
        received++;
        tc_ring_consume(c.ring, &v);
        /* Batches of 1..97 records between releases, so release points land everywhere. */
        if (++unreleased >= batch_limit) {
            tc_ring_release(c.ring);
            unreleased = 0;
            batch_limit = batch_limit % 97 + 1;
        }
        if (delay_every && received % delay_every == 0) {
            tc_ring_release(c.ring);
            unreleased = 0;
            nanosleep(&nap, NULL);
        }
    }
    pthread_join(th, NULL);

    for (uint64_t k = expect; k < c.n; k++)
        if (!c.dropped[k]) {
            errors++;
            fprintf(stderr, "trailing seq %" PRIu64 " missing but not counted as dropped\n", k);
            break;
        }
    if (c.producer_drops != tc_ring_drops_full(c.ring) || received + c.producer_drops != c.n) {
        errors++;
        fprintf(stderr, "accounting: received %" PRIu64 " + dropped %" PRIu64 " (ring says %" PRIu64
                ") != %" PRIu64 "\n", received, c.producer_drops, tc_ring_drops_full(c.ring), c.n);
    }
    if (tc_ring_used_bytes(c.ring) != 0) {
        errors++;
        fprintf(stderr, "ring not empty at the end: %zu bytes\n", tc_ring_used_bytes(c.ring));
    }
    printf("produced=%" PRIu64 " received=%" PRIu64 " dropped=%" PRIu64 " errors=%" PRIu64 "\n", c.n,
           received, c.producer_drops, errors);
    free(c.scratch);
    free(c.dropped);
    tc_ring_destroy(c.ring);
    return errors ? 1 : 0;
}
