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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* Row i of a string column: `size` bytes at p appended to `data`, and its end offset as
 * offsets[i + 1] (int64; the offsets buffer has room for row i, the caller's job). 0 or -1 (out
 * of memory: nothing changed). */
static inline int tc_colbuf_put_string(tc_colbuf *data, tc_colbuf *offsets, size_t i,
                                       const char *p, size_t size) {
    if (size) {
        if (data->len + size > data->cap && tc_colbuf_reserve(data, data->len + size)) return -1;
        memcpy(data->p + data->len, p, size);
        data->len += size;
    }
    ((int64_t *)offsets->p)[i + 1] = (int64_t)data->len;
    return 0;
}

/* Bit i of an Arrow validity bitmap (least significant bit first); bytes are cleared as row
 * i enters them, so the bitmap needs no zeroing up front. */
static inline void tc_colbuf_set_bit(tc_colbuf *bits, size_t i, int valid) {
    unsigned char *b = (unsigned char *)bits->p;
    if ((i & 7) == 0) b[i >> 3] = 0;
    if (valid) b[i >> 3] |= (unsigned char)(1u << (i & 7));
}

#endif
