/* A doorbell: lets the engine thread sleep while the ring is empty and the network thread wake it,
 * without either side taking a lock in the common case.
 *
 * Consumer (engine thread), after it found the ring empty and spun a little:
 *     tc_doorbell_arm(db);                 // waiting = 1, then a full fence
 *     if (ring is not empty) tc_doorbell_disarm(db);
 *     else tc_doorbell_wait(db, timeout_ns);
 * Producer (network thread), after the tc_ring_commit of a socket read's records and before it
 * next sleeps (the MQTT source rings once per loop turn, right before its nap or poll, so the
 * consumer wakes while the producer has let go of the GIL):
 *     tc_doorbell_ring(db);                // full fence, then reads `waiting`; locks only if set
 *
 * Why it cannot miss a wake-up (Dekker): the consumer stores `waiting` then loads the ring's head;
 * the producer stores the head (commit) then loads `waiting`; a seq_cst fence sits between the
 * store and the load on both sides, so at least one of them sees the other's store. Either the
 * consumer sees the new record and does not sleep, or the producer sees waiting == 1 and signals.
 * The signal cannot fall between the consumer's check and its wait because the consumer holds the
 * mutex from arming until pthread_cond_timedwait releases it, and the producer signals under the
 * same mutex. The timeout bounds the sleep anyway (the engine also wakes for its ticks).
 *
 * A kick (tc_doorbell_kick: any thread, e.g. one asking the consumer to stop) is a ring with a
 * flag of its own instead of a record: the kicker stores `kicked` and then rings; the consumer
 * takes `kicked` after arming, where it looks at the ring's head. The same fences order them, so
 * a kick is never lost either: the consumer's current wait ends, or its next one does not sleep.
 *
 * Ringing late (after more work, not after each commit) keeps this argument: a commit not yet
 * followed by a ring is a record the consumer may not see until the next ring, so the producer's
 * rule is "every commit is followed by a ring before the producer sleeps or exits", which bounds
 * the delay by one turn of its loop (tests/test_wakeups.py parks the consumer without a timeout to
 * check that nothing is left behind). Fewer rings are also what makes coalescing work: the
 * consumer parks at most once per producer turn, not once per record.
 *
 * -- Lending the consumer (tc_park.h) ------------------------------------------------------------
 * At moderate rates a wake-up per producer turn is most of the consumer's cost: the work it wakes
 * for (a few dozen records) is smaller than the sleep and wake-up around it. So while the consumer
 * is parked it may *lend* itself: it publishes a tc_lender (a C drain function and its context, the
 * engine) and the producer, instead of ringing, runs that drain on its own thread. Ownership of
 * everything the drain touches (the ring's consumer side and the consumer's state, e.g. the engine's
 * tables) moves with one atomic word, `lend`:
 *
 *     NONE --offer (consumer, release)--> OFFERED --borrow (producer CAS, acquire)--> BORROWED
 *     BORROWED --give_back (producer, release)--> OFFERED --withdraw (consumer CAS, acquire)--> NONE
 *
 * - The consumer offers only after its last look at the ring (tc_park: armed, kick and ring checked)
 *   and touches neither the ring's consumer side nor the lent state until its withdraw CAS succeeds.
 *   Its offer is a release store: its earlier drains (plain writes to the engine, the ring's
 *   consumer cursor) happen-before the producer's borrow CAS, an acquire that reads that store.
 * - The producer owns the lent state from its borrow CAS to its give_back store (release); the
 *   consumer's withdraw CAS (acquire) reads OFFERED only from that store (or from its own offer), so
 *   the producer's drain happens-before whatever the consumer does next. Every change of `lend` is a
 *   read-modify-write or the owner's store, so the modification order is a single chain and no two
 *   threads ever hold the state at once: a borrow needs OFFERED, a withdraw turns OFFERED into NONE,
 *   and a consumer that wakes while the state is BORROWED spins (then yields) until it is given back
 *   -- a wait bounded by one drain, whose size the lender bounds.
 * - No record is lost or seen twice: the lender consumes and releases what it processed and leaves
 *   the rest in the ring; it reports whether it left any, and then the producer rings (after giving
 *   back, so the consumer it wakes does not spin). The producer's rule becomes "every commit is
 *   followed, before it sleeps, by a ring or by a borrowed drain that consumed it", which keeps the
 *   argument above: what the consumer did not see when it armed was either drained for it or rung.
 * - A kick still ends the park: it rings as before; the consumer withdraws (waiting at most for the
 *   drain in progress) and returns KICKED.
 */
#ifndef TC_DOORBELL_H
#define TC_DOORBELL_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

/* The consumer's state lent to the producer: drain(ctx) processes what the ring holds (bounded
 * work), consumes and releases what it processed and returns 1 when it left records in the ring
 * (a record needing what only the consumer's own thread may do, or its bound), else 0. */
typedef struct {
    int (*drain)(void *ctx);
    void *ctx;
} tc_lender;

enum { TC_LEND_NONE = 0, TC_LEND_OFFERED = 1, TC_LEND_BORROWED = 2 };

typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t cond;      /* waits on CLOCK_MONOTONIC */
    _Atomic int waiting;
    _Atomic int kicked;       /* tc_doorbell_kick: the consumer's next wait must not sleep */
    _Atomic uint64_t wakeups; /* signals sent: a gauge for how often the engine parked */
    _Atomic int lend;         /* TC_LEND_*: who owns the consumer's state (see above) */
    tc_lender *lender;        /* the consumer's, written before it offers; read by a borrower */
    _Atomic uint64_t lends;   /* borrowed drains: a gauge for the wake-ups they saved */
} tc_doorbell;

static inline int tc_doorbell_init(tc_doorbell *db) {
    pthread_condattr_t attr;
    if (pthread_mutex_init(&db->mutex, NULL) != 0) return -1;
    if (pthread_condattr_init(&attr) != 0) return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&db->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) return -1;
    atomic_init(&db->waiting, 0);
    atomic_init(&db->kicked, 0);
    atomic_init(&db->wakeups, 0);
    atomic_init(&db->lend, TC_LEND_NONE);
    db->lender = NULL;
    atomic_init(&db->lends, 0);
    return 0;
}

static inline void tc_doorbell_destroy(tc_doorbell *db) {
    pthread_cond_destroy(&db->cond);
    pthread_mutex_destroy(&db->mutex);
}

static inline void tc_doorbell_arm(tc_doorbell *db) {
    pthread_mutex_lock(&db->mutex);
    atomic_store_explicit(&db->waiting, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
}

static inline void tc_doorbell_disarm(tc_doorbell *db) {
    atomic_store_explicit(&db->waiting, 0, memory_order_relaxed);
    pthread_mutex_unlock(&db->mutex);
}

/* Sleeps until rung or timeout_ns passes; then disarms. Returns 1 when rung, 0 on timeout. */
static inline int tc_doorbell_wait(tc_doorbell *db, int64_t timeout_ns) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ns / 1000000000;
    deadline.tv_nsec += timeout_ns % 1000000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000;
    }
    int rc = 0;
    while (atomic_load_explicit(&db->waiting, memory_order_relaxed) && rc != ETIMEDOUT) {
        rc = pthread_cond_timedwait(&db->cond, &db->mutex, &deadline);
    }
    int rung = !atomic_load_explicit(&db->waiting, memory_order_relaxed);
    atomic_store_explicit(&db->waiting, 0, memory_order_relaxed);
    pthread_mutex_unlock(&db->mutex);
    return rung;
}

/* Producer side: cheap when nobody sleeps (a fence and a load).
 *
 * The signal goes out after the unlock: signalled under the mutex, the woken consumer would find
 * it still held, block on it and need a second wake-up (glibc does not move a condvar waiter onto
 * the mutex). Still no lost wake-up: the consumer holds the mutex from arming until
 * pthread_cond_timedwait releases it, so by the time the producer holds it the consumer either
 * waits on the condvar (the signal after the unlock wakes it; a spurious wake-up before it finds
 * waiting == 0 and returns as rung) or has already left on its timeout (the signal reaches nobody,
 * or wakes a later wait early, which sees waiting == 1 again and goes back to sleep). */
static inline void tc_doorbell_ring(tc_doorbell *db) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&db->waiting, memory_order_relaxed)) {
        pthread_mutex_lock(&db->mutex);
        atomic_store_explicit(&db->waiting, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&db->wakeups, 1, memory_order_relaxed);
        pthread_mutex_unlock(&db->mutex);
        pthread_cond_signal(&db->cond);
    }
}

/* Any thread: the consumer's current wait ends, or its next one returns at once (once). */
static inline void tc_doorbell_kick(tc_doorbell *db) {
    atomic_store_explicit(&db->kicked, 1, memory_order_relaxed);
    tc_doorbell_ring(db);   /* its seq_cst fence orders the store before the load of waiting */
}

/* Consumer, after tc_doorbell_arm (its fence orders the load after the store of waiting) or
 * after a wait: 1 when kicked since it last looked. */
static inline int tc_doorbell_take_kick(tc_doorbell *db) {
    if (!atomic_load_explicit(&db->kicked, memory_order_relaxed)) return 0;
    return atomic_exchange_explicit(&db->kicked, 0, memory_order_relaxed);
}

/* Consumer, parked (after its last look at the ring): the producer may drain with `lender`. */
static inline void tc_doorbell_offer(tc_doorbell *db, tc_lender *lender) {
    db->lender = lender;
    atomic_store_explicit(&db->lend, TC_LEND_OFFERED, memory_order_release);
}

/* Consumer, woken: takes its state back, waiting for a borrowed drain to be given back. */
static inline void tc_doorbell_withdraw(tc_doorbell *db) {
    unsigned spins = 0;
    int expect = TC_LEND_OFFERED;
    while (!atomic_compare_exchange_weak_explicit(&db->lend, &expect, TC_LEND_NONE,
                                                  memory_order_acquire, memory_order_relaxed)) {
        expect = TC_LEND_OFFERED;
        if (++spins > 64) sched_yield();   /* the borrower may be off-core: let it finish */
    }
}

/* Producer: 1 when it now holds the consumer's state (then tc_doorbell_give_back it), else 0. */
static inline int tc_doorbell_borrow(tc_doorbell *db) {
    int expect = TC_LEND_OFFERED;
    if (atomic_load_explicit(&db->lend, memory_order_relaxed) != TC_LEND_OFFERED) return 0;
    return atomic_compare_exchange_strong_explicit(&db->lend, &expect, TC_LEND_BORROWED,
                                                   memory_order_acquire, memory_order_relaxed);
}

/* Any thread, a gauge: the consumer is parked and lent (or its state is borrowed right now). */
static inline int tc_doorbell_lent(tc_doorbell *db) {
    return atomic_load_explicit(&db->lend, memory_order_relaxed) != TC_LEND_NONE;
}

static inline uint64_t tc_doorbell_lends(tc_doorbell *db) {
    return atomic_load_explicit(&db->lends, memory_order_relaxed);
}

static inline void tc_doorbell_give_back(tc_doorbell *db) {
    atomic_fetch_add_explicit(&db->lends, 1, memory_order_relaxed);
    atomic_store_explicit(&db->lend, TC_LEND_OFFERED, memory_order_release);
}

#endif
