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

/* n bytes from s to d (not overlapping). Names are short: up to 32 bytes move as two fixed-size
 * loads and stores that overlap in the middle, inline, where a memcpy of a variable size is a libc
 * call per name (three per row of a tick). Reads and writes stay within [s, s+n) and [d, d+n). */
static inline void tc_copy_short(char *d, const char *s, size_t n) {
    if (n >= 16 && n <= 32) {
        uint64_t a[2], b[2];
        memcpy(a, s, 16);
        memcpy(b, s + n - 16, 16);
        memcpy(d, a, 16);
        memcpy(d + n - 16, b, 16);
    } else if (n >= 8 && n < 16) {
        uint64_t a, b;
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4 && n < 8) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else if (n > 0 && n < 4) {
        d[0] = s[0];
        d[n >> 1] = s[n >> 1];
        d[n - 1] = s[n - 1];
    } else if (n > 32) {
        memcpy(d, s, n);
    }
}

/* Row i of a string column: `size` bytes at p appended to `data`, and its end offset as
 * offsets[i + 1] (int64; the offsets buffer has room for row i, the caller's job). 0 or -1 (out
 * of memory: nothing changed). */
static inline int tc_colbuf_put_string(tc_colbuf *data, int64_t *offsets, size_t i,
                                       const char *p, size_t size) {
    size_t len = data->len;
    if (size) {
        if (len + size > data->cap && tc_colbuf_reserve(data, len + size)) return -1;
        tc_copy_short(data->p + len, p, size);
        len += size;
        data->len = len;
    }
    offsets[i + 1] = (int64_t)len;
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
