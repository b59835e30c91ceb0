/* The two ends of the ingest ring's hand-off, one implementation for the compiled modules
 * (ByteRing.park_ns in _ring.pyx, FrameReader.pump in _frames.pyx) and the ThreadSanitizer harness
 * (tests/c/lend_stress.c):
 *
 *   tc_park      the consumer (engine thread), ring empty: spin briefly, arm the doorbell, look at
 *                the kick flag and the ring once more, lend itself (optional), sleep, take itself
 *                back. Why it cannot miss a record or a kick: tc_doorbell.h.
 *   tc_hand_off  the producer (network thread), after committing `records` records and before it
 *                sleeps: drain them itself into the lent consumer when there are few (at most
 *                lend_max), else -- or when the consumer is not lent, or the drain left records --
 *                ring the doorbell.
 *
 * Why lend (docs/ingest.md, "Coalesced wake-ups"): at moderate rates each producer turn brings a few
 * dozen records, less work than the consumer's sleep and wake-up around it; drained on the producer's
 * thread, they cost the work alone, and the consumer sleeps until its own deadline. At high rates a
 * turn brings more than lend_max records and the producer rings as before, so both threads keep
 * working in parallel.
 */
#ifndef TC_PARK_H
#define TC_PARK_H

#include <stdint.h>
#include <time.h>

#include "spsc_ring.h"
#include "tc_doorbell.h"

/* why tc_park ended */
enum {
    TC_PARK_TIMEOUT = 0,  /* the timeout passed, nobody rang */
    TC_PARK_RECORDS = 1,  /* a producer rang, or records were already there */
    TC_PARK_KICKED = 2    /* tc_doorbell_kick: someone wants the consumer back, records or not */
};

static inline int64_t tc_park__now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Consumer. `spins` polls of the ring before arming (0: none); `lender` NULL: not lent.
 * *slept_ns: how long the wait lasted (0 when it did not sleep). A kick wins over records. */
static inline int tc_park(tc_ring *ring, tc_doorbell *db, int spins, int64_t timeout_ns,
                          tc_lender *lender, int64_t *slept_ns) {
    tc_ring_view v;
    *slept_ns = 0;
    if (tc_doorbell_take_kick(db)) return TC_PARK_KICKED;
    for (int i = 0; i < spins; i++)
        if (tc_ring_peek(ring, &v)) return TC_PARK_RECORDS;
    tc_doorbell_arm(db);
    if (tc_doorbell_take_kick(db)) {
        tc_doorbell_disarm(db);
        return TC_PARK_KICKED;
    }
    if (tc_ring_peek(ring, &v)) {
        tc_doorbell_disarm(db);
        return TC_PARK_RECORDS;
    }
    /* the last look at the ring is above: from here until the withdraw, the ring's consumer side
     * and the lent state may belong to the producer */
    if (lender != NULL) tc_doorbell_offer(db, lender);
    int64_t t0 = tc_park__now_ns();
    int rung = tc_doorbell_wait(db, timeout_ns);
    if (lender != NULL) tc_doorbell_withdraw(db);
    *slept_ns = tc_park__now_ns() - t0;
    if (tc_doorbell_take_kick(db)) return TC_PARK_KICKED;   /* this wait ended: the kick is spent */
    return rung ? TC_PARK_RECORDS : TC_PARK_TIMEOUT;
}

/* Producer. Returns 1 when a lent drain took the records (no wake-up), 0 when it rang (or had
 * nothing to hand off). */
static inline int tc_hand_off(tc_doorbell *db, uint64_t records, uint64_t lend_max) {
    if (records == 0) return 0;
    if (records <= lend_max && tc_doorbell_borrow(db)) {
        tc_lender *lender = db->lender;
        int left = lender->drain(lender->ctx);
        tc_doorbell_give_back(db);   /* before the ring: the consumer it wakes need not spin */
        if (!left) return 1;
    }
    tc_doorbell_ring(db);
    return 0;
}

#endif
