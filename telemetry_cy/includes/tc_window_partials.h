/* The closing hook of partial mode (docs/scale-out.md, "run --output partials"): as the event-time
 * clock closes intervals, each key's closed panes that hold data are copied out, already in the
 * partial format's pane encoding, into a buffer the engine's owner drains (take_closed_panes).
 *
 * Why at the clock and not later: tc_window.h keeps a pane's first_ts, last and last_ts only while
 * the pane is open (the newest pane's in the key's header, an older open pane's in its slot after
 * the ring), and once the clock has passed a pane, the next reading of a key may reuse its slot
 * of the ring. So the engine calls tc_pp_take_key for every key before it moves the clock (its
 * _advance, before the tick's scan can evict a key and before the reading that moved the clock is
 * applied): every pane of [closed, target) is still open then, its times are where the record
 * keeps open times, and nothing has reused it.
 *
 * The record written per pane is the partial format's: u16 device, sensor, unit lengths, u8 has
 * unit, the three names, then the snapshot's pane entry (tc_snap_write_pane: age 0, the pane, its
 * open times, its sketch block with quantiles). The pure twin (_engine_py.pane_record) and the
 * Python writer (partial_format.write) write the same bytes; tests/test_partials.py holds the
 * compiled engine's messages to the pure engine's, bit for bit.
 *
 * Bounded: the records' bytes never pass max_bytes. A pane that would pass it (or finds no memory)
 * is not taken and is counted in `lost`; the instance turns a loss into a gap in its sequence
 * numbers, which the merge counts (docs/scale-out.md). Drained once a tick, the buffer holds about
 * one interval of panes (~90 bytes each without quantiles). The memory stays allocated across
 * drains (the next interval has about as many panes): tc_pp_bytes is what it holds, which the
 * engine counts in its state_bytes.
 *
 * No Python, no locks: the engine's thread owns the buffer, as it owns the window table.
 */
#ifndef TC_WINDOW_PARTIALS_H
#define TC_WINDOW_PARTIALS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tc_crc32.h"
#include "tc_snapshot.h"
#include "tc_window.h"
#include "tc_window_qs.h"

/* u16 device length, u16 sensor length, u16 unit length, u8 has unit (partial_format.KEY) */
#define TC_PP_KEY_HEAD 7

typedef struct {
    int64_t interval;
    size_t off;    /* the record is buf[off, off + len) */
    uint32_t len;
    uint32_t crc;  /* crc32(device NUL sensor): the key's partition is crc mod partitions */
} tc_pp_entry;

typedef struct {
    uint8_t *buf;  /* the records, one after another in the order taken */
    size_t len, cap;
    tc_pp_entry *ents;
    size_t n, ents_cap;
    size_t max_bytes;  /* len never passes it */
    uint64_t lost;     /* panes not taken since the last drain: buffer full or no memory */
} tc_pp_buf;

static inline void tc_pp_init(tc_pp_buf *b, size_t max_bytes) {
    memset(b, 0, sizeof(*b));
    b->max_bytes = max_bytes;
}

static inline void tc_pp_free(tc_pp_buf *b) {
    free(b->buf);
    free(b->ents);
    tc_pp_init(b, b->max_bytes);
}

/* The heap memory the buffer holds, kept across drains (tc_pp_clear): the records' capacity (at
 * most max_bytes) and the entries' (it doubles: at most twice the records taken, 256 at the
 * least). Not the struct itself, which lives in its owner (the engine object). Exact, like
 * tc_table_state_bytes. */
static inline size_t tc_pp_bytes(const tc_pp_buf *b) {
    return b->cap + b->ents_cap * sizeof(tc_pp_entry);
}

/* Room for one more record of `size` bytes: 0, or -1 (full, or no memory). */
static inline int tc_pp_reserve(tc_pp_buf *b, size_t size) {
    if (size > b->max_bytes - b->len) return -1;
    if (b->len + size > b->cap) {
        size_t cap = b->cap * 2 > b->len + size ? b->cap * 2 : b->len + size;
        if (cap < 4096) cap = 4096;
        if (cap > b->max_bytes) cap = b->max_bytes;
        uint8_t *p = (uint8_t *)realloc(b->buf, cap);
        if (!p) return -1;
        b->buf = p;
        b->cap = cap;
    }
    if (b->n == b->ents_cap) {
        size_t cap = b->ents_cap ? b->ents_cap * 2 : 256;
        tc_pp_entry *e = (tc_pp_entry *)realloc(b->ents, cap * sizeof *e);
        if (!e) return -1;
        b->ents = e;
        b->ents_cap = cap;
    }
    return 0;
}

/* The closing hook for one key: its panes of intervals [lo, hi) that hold data, with lo the
 * closed tick (every pane from lo on is open: see the top) and hi the tick the clock moves to.
 * `lead` is the engine's (an open pane below the newest exists only with lead > 0, tc_window.h's
 * invariant newest <= closed + lead). Appends one record per pane, interval order. */
static inline void tc_pp_take_key(tc_pp_buf *b, const tc_table *t, tc_key *k, uint32_t lead,
                                  int64_t lo, int64_t hi) {
    if (k->newest == INT64_MIN || k->newest < lo) return;
    uint32_t ring = t->ring, units = t->panes;
    int64_t from = k->newest - (int64_t)ring + 1 > lo ? k->newest - (int64_t)ring + 1 : lo;
    int64_t to = hi - 1 < k->newest ? hi - 1 : k->newest;
    tc_qs_head *qb = t->quantiles ? tc_key_qs(k, units) : NULL;
    uint32_t ulen = tc_snap_ulen(k);
    uint16_t dlen = (uint16_t)k->device_len, slen = (uint16_t)k->sensor_len, ulen16 = (uint16_t)ulen;
    uint8_t has_unit = k->unit_len != TC_NO_UNIT;
    uint32_t crc = 0;
    int crc_done = 0;
    for (int64_t j = from; j <= to; j++) {
        uint32_t x = tc_pane_of(j, ring);
        const tc_pane *p = &k->panes[x];
        if (p->count == 0) continue;
        tc_open_pane times;
        if (j == k->newest) {
            times.first_ts = k->newest_first_ts;
            times.last = k->last;
            times.last_ts = k->last_ts;
        } else {
            times = *tc_key_open_slot(k, ring, lead, j);   /* lo <= j < newest: lead > 0 */
        }
        const tc_sketch_hdr *h = qb ? &tc_qs_hdrs(qb)[x] : NULL;
        const uint32_t *c =
            qb ? tc_qs_counts(qb, ring) + (tc_qs_end_of(k, qb, ring, j) - tc_sketch_buckets(h))
               : NULL;
        size_t size = TC_PP_KEY_HEAD + (size_t)dlen + slen + ulen + tc_snap_pane_size(1, h);
        if (size > UINT32_MAX || tc_pp_reserve(b, size) != 0) {
            b->lost++;
            continue;
        }
        if (!crc_done) {
            const char nul = 0;
            crc = tc_crc32(0, (const uint8_t *)tc_key_device(k, units), dlen);
            crc = tc_crc32(crc, (const uint8_t *)&nul, 1);
            crc = tc_crc32(crc, (const uint8_t *)tc_key_sensor(k, units), slen);
            crc_done = 1;
        }
        uint8_t *o = b->buf + b->len;
        TC_SNAP_PUT(o, dlen);
        TC_SNAP_PUT(o, slen);
        TC_SNAP_PUT(o, ulen16);
        TC_SNAP_PUT(o, has_unit);
        memcpy(o, tc_key_device(k, units), dlen);
        o += dlen;
        memcpy(o, tc_key_sensor(k, units), slen);
        o += slen;
        memcpy(o, tc_key_unit(k, units), ulen);
        o += ulen;
        o = tc_snap_write_pane(o, 0, p, &times, h, c);
        tc_pp_entry *e = &b->ents[b->n++];
        e->interval = j;
        e->off = b->len;
        e->len = (uint32_t)size;
        e->crc = crc;
        b->len += size;
    }
}

/* ---- draining ------------------------------------------------------------------------------- */

/* One record in the order a drain hands them out: by interval, partition, the key's crc32, then
 * (the crc of two keys may be equal) device and sensor bytes, shorter first on a common prefix:
 * Python's order of bytes, so the pure twin sorts the same way. Any fixed order would do for the
 * merge; this one is the same in both engines (their messages are equal bit for bit) and mostly
 * decided by one integer comparison. A (key, interval) is taken once: no two items are equal. */
typedef struct {
    int64_t interval;
    uint64_t order;   /* partition << 32 | crc */
    const uint8_t *rec;
    uint32_t len;
    uint32_t partition;
} tc_pp_item;

static inline int tc_pp_cmp_bytes(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c;
    return (an > bn) - (an < bn);
}

static inline int tc_pp_cmp(const void *pa, const void *pb) {
    const tc_pp_item *a = (const tc_pp_item *)pa, *b = (const tc_pp_item *)pb;
    if (a->interval != b->interval) return a->interval < b->interval ? -1 : 1;
    if (a->order != b->order) return a->order < b->order ? -1 : 1;
    uint16_t ad, as, bd, bs;
    memcpy(&ad, a->rec, 2);
    memcpy(&as, a->rec + 2, 2);
    memcpy(&bd, b->rec, 2);
    memcpy(&bs, b->rec + 2, 2);
    int c = tc_pp_cmp_bytes(a->rec + TC_PP_KEY_HEAD, ad, b->rec + TC_PP_KEY_HEAD, bd);
    if (c) return c;
    return tc_pp_cmp_bytes(a->rec + TC_PP_KEY_HEAD + ad, as, b->rec + TC_PP_KEY_HEAD + bd, bs);
}

/* The b->n records as items (out: b->n of them) in drain order, for `partitions` partitions. */
static inline void tc_pp_order(const tc_pp_buf *b, uint32_t partitions, tc_pp_item *out) {
    for (size_t i = 0; i < b->n; i++) {
        const tc_pp_entry *e = &b->ents[i];
        out[i].interval = e->interval;
        out[i].partition = e->crc % partitions;
        out[i].order = (uint64_t)out[i].partition << 32 | e->crc;
        out[i].len = e->len;
        out[i].rec = b->buf + e->off;
    }
    qsort(out, b->n, sizeof *out, tc_pp_cmp);
}

/* After a drain: empty, the memory kept for the next interval's panes (about as many). */
static inline void tc_pp_clear(tc_pp_buf *b) {
    b->len = b->n = 0;
    b->lost = 0;
}

#endif /* TC_WINDOW_PARTIALS_H */
