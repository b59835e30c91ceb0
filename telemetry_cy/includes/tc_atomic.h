/* Minimal C11 atomics for telemetry-cy.
 *
 * Why this header exists: Cython 3.x ships no libc/stdatomic.pxd and cannot spell `_Atomic` itself,
 * so the compiled modules reach <stdatomic.h> through these `static inline` wrappers, declared in
 * .pxd files with `cdef extern from "tc_atomic.h" nogil`. Cython code only ever sees the typedef
 * names (as plain integers) and calls the functions; it must never read or write a tc_atomic_*
 * object with an ordinary expression, because that would silently be a seq_cst access (correct but
 * slower) and, worse, would hide the intended ordering from the reader.
 *
 * Portability: plain ISO C11, no intrinsics, so the same code is correct on x86_64 (TSO: acquire and
 * release compile to ordinary loads and stores) and on aarch64 (weak ordering: they compile to
 * LDAR/STLR). gcc >= 4.9 and clang >= 3.6 both provide <stdatomic.h>; ThreadSanitizer understands it.
 *
 * Only single-writer patterns are provided on purpose: every tc_atomic_* variable in this project has
 * exactly one writing thread, so no read-modify-write (fetch_add, CAS) is needed, and a counter is
 * bumped with tc_store_relaxed(p, tc_load_relaxed(p) + 1) by its owner.
 */
#ifndef TC_ATOMIC_H
#define TC_ATOMIC_H

#ifdef __cplusplus
#error "tc_atomic.h is C11 only; the telemetry-cy extensions are compiled as C"
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>

/* The ring's indices and counters must be lock-free; a lock-based fallback (libatomic) would be
 * correct but would defeat the point of a lock-free ring and could block the network thread. */
#if ATOMIC_LONG_LOCK_FREE != 2 || ATOMIC_LLONG_LOCK_FREE != 2
#error "tc_atomic.h needs lock-free word-sized atomics"
#endif

typedef _Atomic size_t tc_atomic_size;
typedef _Atomic uint64_t tc_atomic_u64;

/* Acquire load: every write the other thread made before its matching tc_store_release_size() of the
 * value we read is visible to us after this call. */
static inline size_t tc_load_acquire_size(tc_atomic_size *p)
{
    return atomic_load_explicit(p, memory_order_acquire);
}

/* Release store: publishes every write this thread made before it to whoever acquire-loads the
 * stored value (or a later one). */
static inline void tc_store_release_size(tc_atomic_size *p, size_t v)
{
    atomic_store_explicit(p, v, memory_order_release);
}

/* Relaxed load: atomic (no torn value) but orders nothing. Use it for a thread's own variable, or for
 * approximate gauges read by a third party. */
static inline size_t tc_load_relaxed_size(tc_atomic_size *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

static inline void tc_store_relaxed_size(tc_atomic_size *p, size_t v)
{
    atomic_store_explicit(p, v, memory_order_relaxed);
}

static inline uint64_t tc_load_relaxed_u64(tc_atomic_u64 *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

static inline void tc_store_relaxed_u64(tc_atomic_u64 *p, uint64_t v)
{
    atomic_store_explicit(p, v, memory_order_relaxed);
}

static inline uint64_t tc_load_acquire_u64(tc_atomic_u64 *p)
{
    return atomic_load_explicit(p, memory_order_acquire);
}

static inline void tc_store_release_u64(tc_atomic_u64 *p, uint64_t v)
{
    atomic_store_explicit(p, v, memory_order_release);
}

#endif /* TC_ATOMIC_H */
