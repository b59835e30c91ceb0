/* Growable byte buffers for the columns of a columnar tick (Engine.tick_columns).
 *
 * Ownership: a buffer belongs to the engine's column builder (the engine's thread) while a tick
 * fills it, then to the Python object that exports it (_ColumnBuffer in _engine.pyx), which frees
 * it, or gives it back to the builder once nothing holds it (_ColumnBuilder._reclaim). One owner
 * at a time, so no locking.
 *
 * Why reuse matters: a tick of 1M keys writes ~150 MB of columns. Fresh memory costs ~37,000 page
 * faults (fault, zeroing, memory-cgroup charge) and as many pages to unmap when it is freed:
 * measured, as much CPU time as filling the columns (docs/performance.md). Transparent huge pages
 * (MADV_HUGEPAGE) were tried and dropped: with the kernel compacting memory on the fault path a
 * tick on fresh memory took 4x longer, not less.
 */
#ifndef TC_COLBUF_H
#define TC_COLBUF_H

#include <stddef.h>
#include <stdlib.h>

typedef struct {
    char *p;     /* NULL until the first reserve */
    size_t len;  /* bytes in use */
    size_t cap;  /* bytes available at p */
} tc_colbuf;

static inline void tc_colbuf_init(tc_colbuf *b) {
    b->p = NULL;
    b->len = b->cap = 0;
}

static inline void tc_colbuf_free(tc_colbuf *b) {
    free(b->p);
    tc_colbuf_init(b);
}

/* Room for `need` bytes in all, the first len kept. 0, or -1 when out of memory (the buffer is
 * unchanged then). Grows at least twofold, so appending costs amortized O(1) per byte; a large
 * block moves by remapping its pages (glibc's realloc of an mmapped chunk), not by copying. */
static inline int tc_colbuf_reserve(tc_colbuf *b, size_t need) {
    if (need <= b->cap) return 0;
    size_t cap = b->cap * 2 > need ? b->cap * 2 : need;
    if (cap < 4096) cap = 4096;
    char *p = (char *)realloc(b->p, cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

#endif
