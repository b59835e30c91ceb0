/* The keys section of an engine snapshot (docs/state.md): the window table to bytes and back.
 *
 * A logical encoding, not a memory dump: per key its names, unit, sequence baseline, clock fields
 * and only the panes holding data (by age below the newest interval), so the pure twin
 * (_engine_py.py, _snapshot_keys / _restore_keys) writes the same bytes from its own structures
 * and the record layout in tc_window.h may change underneath. Little-endian, no padding; fields
 * are read with memcpy (no alignment assumed).
 *
 * The reader trusts nothing: every length is checked against the bytes left, names must be UTF-8,
 * panes strictly ordered inside the ring, a key's newest interval in range, no key twice. It runs
 * one pass, tc_snap_load checking and building each record; when fewer keys fit than the file
 * holds, tc_snap_scan checks every record and collects their last_ts first, and the load that
 * follows builds those kept. The checksum is checked before either, in Python (zlib.crc32);
 * tests/fuzz/fuzz_snapshot.c drives both passes with arbitrary bytes.
 *
 * No Python, no GIL, no locks: the engine thread owns the table while it writes or loads it.
 */
#ifndef TC_SNAPSHOT_H
#define TC_SNAPSHOT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cbor_reader.h" /* tc_utf8_valid */
#include "tc_window.h"
#include "tc_window_qs.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tc_snapshot.h writes its little-endian fields with memcpy: a big-endian host needs swaps"
#endif

/* record head: u16 device_len, sensor_len, unit_len, n_panes; u8 flags; u64 last_seq;
 * i64 newest; f64 last, last_ts, newest_first_ts. Then f64 frozen_last (event time with a lead),
 * the names, the panes oldest first: u16 age, u32 count, f64 sum, m2, min, max, first; an open
 * pane below the newest (event time) is followed by f64 first_ts, last, last_ts. With quantiles,
 * each pane then carries its sketch: i32 pos_min, i32 neg_min, u16 pos_len, u16 neg_len, u32 n
 * (= the pane's count), then pos_len + neg_len u32 counts (the tc_sketch.h store layout). */
#define TC_SNAP_KEY_HEAD 49
#define TC_SNAP_PANE 46
#define TC_SNAP_OPEN 24
#define TC_SNAP_SKETCH 16
#define TC_SNAP_HAS_UNIT 1u
#define TC_SNAP_HAS_SEQ 2u
#define TC_SNAP_MAX_INTERVAL 4000000000000000000LL /* the engine's interval bound */

typedef struct {
    uint32_t units;   /* pane-sized units before a record's names (tc_table.panes) */
    uint32_t ring;    /* panes per key: P + lead */
    uint32_t lead;    /* event time: open intervals ahead of the closed tick; 0 in arrival */
    int event;
    int started;
    int64_t closed;
    int quantiles;              /* every pane carries its sketch */
    const tc_sketch_map *qmap;  /* the engine's mapping: a store's indexes must lie in it */
} tc_snap_shape;

typedef struct {
    const uint8_t *dev, *sen, *unit;
    uint32_t dlen, slen, ulen, n_panes, flags;
    uint64_t seq;
    int64_t newest;
    double last, last_ts, newest_first_ts, frozen_last;
    const uint8_t *panes; /* n_panes pane entries, each followed by its open times if any */
    uint32_t qs_counts;   /* sketch counts of all panes (quantiles) */
} tc_snap_rec;

static inline int tc_snap_open_pane(const tc_snap_shape *s, int64_t j, int64_t newest) {
    return s->event && j >= s->closed && j < newest;
}

static inline uint32_t tc_snap_ulen(const tc_key *k) {
    return k->unit_len == TC_NO_UNIT ? 0 : k->unit_len;
}

/* ---- writing ---------------------------------------------------------------------------------- */

#define TC_SNAP_PUT(o, v)                                                                          \
    do {                                                                                           \
        memcpy((o), &(v), sizeof(v));                                                              \
        (o) += sizeof(v);                                                                          \
    } while (0)

/* Bytes of one pane entry: the pane, its open times when `open`, its sketch block when h. */
static inline size_t tc_snap_pane_size(int open, const tc_sketch_hdr *h) {
    return TC_SNAP_PANE + (open ? TC_SNAP_OPEN : 0) +
           (h ? TC_SNAP_SKETCH + 4 * (size_t)tc_sketch_buckets(h) : 0);
}

/* One pane entry at o; returns the end. The one writer of the pane encoding: the keys section
 * here and the partial format (tc_window_partials.h) both write their panes with it, so the two
 * formats cannot drift apart. `open`: the pane's times (NULL: not written); h and c: its sketch
 * header and counts (h NULL: no sketch block). */
static inline uint8_t *tc_snap_write_pane(uint8_t *o, uint16_t age, const tc_pane *p,
                                          const tc_open_pane *open, const tc_sketch_hdr *h,
                                          const uint32_t *c) {
    TC_SNAP_PUT(o, age);
    TC_SNAP_PUT(o, p->count);
    TC_SNAP_PUT(o, p->sum);
    TC_SNAP_PUT(o, p->m2);
    TC_SNAP_PUT(o, p->min);
    TC_SNAP_PUT(o, p->max);
    TC_SNAP_PUT(o, p->first);
    if (open) {
        TC_SNAP_PUT(o, open->first_ts);
        TC_SNAP_PUT(o, open->last);
        TC_SNAP_PUT(o, open->last_ts);
    }
    if (h) {
        uint32_t nb = tc_sketch_buckets(h);
        TC_SNAP_PUT(o, h->pos_min);
        TC_SNAP_PUT(o, h->neg_min);
        TC_SNAP_PUT(o, h->pos_len);
        TC_SNAP_PUT(o, h->neg_len);
        TC_SNAP_PUT(o, h->n);
        memcpy(o, c, 4 * (size_t)nb);
        o += 4 * (size_t)nb;
    }
    return o;
}

/* Bytes of k's record. */
static inline size_t tc_snap_key_size(const tc_key *k, const tc_snap_shape *s) {
    size_t n = TC_SNAP_KEY_HEAD + (s->event && s->lead ? 8 : 0) + k->device_len + k->sensor_len +
               tc_snap_ulen(k);
    if (k->newest == INT64_MIN) return n;
    for (int64_t j = k->newest - (int64_t)s->ring + 1; j <= k->newest; j++) {
        if (k->panes[tc_pane_of(j, s->ring)].count == 0) continue;
        n += tc_snap_pane_size(tc_snap_open_pane(s, j, k->newest),
                               s->quantiles ? &tc_qs_hdrs(tc_key_qs(k, s->units))[tc_pane_of(
                                                  j, s->ring)]
                                            : NULL);
    }
    return n;
}

/* Writes k's record at o (tc_snap_key_size bytes); returns the end. */
static inline uint8_t *tc_snap_write_key(uint8_t *o, tc_key *k, const tc_snap_shape *s) {
    uint32_t ring = s->ring;
    uint16_t n_panes = 0, dlen = (uint16_t)k->device_len, slen = (uint16_t)k->sensor_len,
             ulen = (uint16_t)tc_snap_ulen(k);
    /* frozen_last as the twin sees it: the last of the newest non-empty closed pane, 0.0 when
     * no stored pane is closed (the value left by a pane that has rolled out is never read) */
    int any_closed = 0;
    if (k->newest != INT64_MIN) {
        for (int64_t j = k->newest - (int64_t)ring + 1; j <= k->newest; j++) {
            if (k->panes[tc_pane_of(j, ring)].count == 0) continue;
            n_panes++;
            if (j < s->closed) any_closed = 1;
        }
    }
    uint8_t flags = (uint8_t)((k->unit_len != TC_NO_UNIT ? TC_SNAP_HAS_UNIT : 0) |
                              (k->has_seq ? TC_SNAP_HAS_SEQ : 0));
    uint64_t seq = k->has_seq ? k->last_seq : 0;
    TC_SNAP_PUT(o, dlen);
    TC_SNAP_PUT(o, slen);
    TC_SNAP_PUT(o, ulen);
    TC_SNAP_PUT(o, n_panes);
    TC_SNAP_PUT(o, flags);
    TC_SNAP_PUT(o, seq);
    TC_SNAP_PUT(o, k->newest);
    TC_SNAP_PUT(o, k->last);
    TC_SNAP_PUT(o, k->last_ts);
    TC_SNAP_PUT(o, k->newest_first_ts);
    if (s->event && s->lead) {
        double frozen = any_closed ? *tc_key_frozen_last(k, ring) : 0.0;
        TC_SNAP_PUT(o, frozen);
    }
    memcpy(o, tc_key_device(k, s->units), dlen);
    o += dlen;
    memcpy(o, tc_key_sensor(k, s->units), slen);
    o += slen;
    memcpy(o, tc_key_unit(k, s->units), ulen);
    o += ulen;
    if (k->newest == INT64_MIN) return o;
    /* the sketch counts follow one another in interval order, empty panes holding none */
    tc_qs_head *qb = s->quantiles ? tc_key_qs(k, s->units) : NULL;
    const uint32_t *qc = qb ? tc_qs_counts(qb, ring) : NULL;
    for (int64_t j = k->newest - (int64_t)ring + 1; j <= k->newest; j++) {
        const tc_pane *p = &k->panes[tc_pane_of(j, ring)];
        const tc_sketch_hdr *h = qb ? &tc_qs_hdrs(qb)[tc_pane_of(j, ring)] : NULL;
        uint32_t nb = h ? tc_sketch_buckets(h) : 0;
        if (p->count == 0) {
            qc += nb;
            continue;
        }
        const tc_open_pane *op =
            tc_snap_open_pane(s, j, k->newest) ? tc_key_open_slot(k, ring, s->lead, j) : NULL;
        o = tc_snap_write_pane(o, (uint16_t)(k->newest - j), p, op, h, qc);
        qc += nb;
    }
    return o;
}

/* ---- reading ---------------------------------------------------------------------------------- */

#define TC_SNAP_GET(v, p)                                                                          \
    do {                                                                                           \
        memcpy(&(v), (p), sizeof(v));                                                              \
        (p) += sizeof(v);                                                                          \
    } while (0)

/* n little-endian doubles at p, all finite. */
static inline int tc_snap_all_finite(const uint8_t *p, int n) {
    for (int i = 0; i < n; i++) {
        double x;
        memcpy(&x, p + 8 * i, 8);
        if (!isfinite(x)) return 0;
    }
    return 1;
}

/* A pane's sum, m2, min, max, first at p as the engine can have made them: finite (readings
 * are), m2 >= 0 (a sum of squares), min <= first <= max. Both engines then compute the same
 * numbers from it (a negative m2 would be NaN in C and an error in Python). */
static inline int tc_snap_pane_sound(const uint8_t *p) {
    double st[5];
    memcpy(st, p, sizeof st);
    return tc_snap_all_finite(p, 5) && st[1] >= 0.0 && st[2] <= st[4] && st[4] <= st[3];
}

/* The 16-byte head of a sketch block at p into *h (the caller checked that it is there);
 * returns p past it. One reader of the head for the checks and for the build. */
static inline const uint8_t *tc_snap_sketch_head(const uint8_t *p, tc_sketch_hdr *h) {
    TC_SNAP_GET(h->pos_min, p);
    TC_SNAP_GET(h->neg_min, p);
    TC_SNAP_GET(h->pos_len, p);
    TC_SNAP_GET(h->neg_len, p);
    TC_SNAP_GET(h->n, p);
    return p;
}

/* The sketch block at p of a pane holding `count` readings (no byte read at or past end): the
 * 16-byte head into *h, then its pos_len + neg_len u32 counts, which must be the stores of a
 * sketch of qmap's mapping (in range, tight) holding exactly the pane's readings. qmap NULL: no
 * mapping (a partial's accuracy outside the sketch's range), every block is refused. Returns its
 * size, or 0 with *why set. `again`: as tc_snap_parse's, only the length checks. The snapshot's
 * keys and the partial format's panes (tc_partial.h) carry the same block. */
static inline size_t tc_snap_sketch(const uint8_t *p, const uint8_t *end, const tc_sketch_map *qmap,
                                    uint32_t count, tc_sketch_hdr *h, const char **why, int again) {
    const uint8_t *start = p;
    if ((size_t)(end - p) < TC_SNAP_SKETCH) {
        *why = "a sketch runs past the keys section";
        return 0;
    }
    p = tc_snap_sketch_head(p, h);
    size_t nb = tc_sketch_buckets(h);
    if (h->pos_len > TC_SKETCH_CAP || h->neg_len > TC_SKETCH_CAP || (size_t)(end - p) < 4 * nb) {
        *why = "a sketch's stores are too long";
        return 0;
    }
    if (!again) {
        if (!qmap || tc_sketch_check_store(qmap, h->pos_min, h->pos_len, p) != TC_SKETCH_OK ||
            tc_sketch_check_store(qmap, h->neg_min, h->neg_len, p + 4 * (size_t)h->pos_len) !=
                TC_SKETCH_OK) {
            *why = "a sketch store is outside the mapping or not tight";
            return 0;
        }
        uint64_t sum = 0;
        for (size_t b = 0; b < nb; b++) sum += tc_sketch_get_u32(p + 4 * b);
        if (h->n != count || sum > h->n) {
            *why = "a sketch does not hold its pane's readings";
            return 0;
        }
    }
    return (size_t)(p - start) + 4 * nb;
}

/* Parses and checks the record at p (len bytes left). Returns its size, or 0 with *why set.
 * `again`: the bytes passed this check before (tc_snap_load after tc_snap_scan): the content
 * checks that cost (UTF-8, sketch stores) are skipped, every length check stays. */
static inline size_t tc_snap_parse(const uint8_t *p, size_t len, const tc_snap_shape *s,
                                   tc_snap_rec *r, const char **why, int again) {
    const uint8_t *start = p, *end = p + len;
    uint16_t dlen, slen, ulen, n_panes;
    uint8_t flags;
    if (len < TC_SNAP_KEY_HEAD) {
        *why = "a key record runs past the keys section";
        return 0;
    }
    TC_SNAP_GET(dlen, p);
    TC_SNAP_GET(slen, p);
    TC_SNAP_GET(ulen, p);
    TC_SNAP_GET(n_panes, p);
    TC_SNAP_GET(flags, p);
    TC_SNAP_GET(r->seq, p);
    TC_SNAP_GET(r->newest, p);
    TC_SNAP_GET(r->last, p);
    TC_SNAP_GET(r->last_ts, p);
    TC_SNAP_GET(r->newest_first_ts, p);
    r->frozen_last = 0.0;
    if (s->event && s->lead) {
        if ((size_t)(end - p) < 8) {
            *why = "a key record runs past the keys section";
            return 0;
        }
        TC_SNAP_GET(r->frozen_last, p);
    }
    if (!again && n_panes && (!isfinite(r->last) || !isfinite(r->last_ts) ||
                              !isfinite(r->newest_first_ts) || !isfinite(r->frozen_last))) {
        *why = "a key's times or last value are not finite";
        return 0;
    }
    if ((flags & ~(TC_SNAP_HAS_UNIT | TC_SNAP_HAS_SEQ)) || (ulen && !(flags & TC_SNAP_HAS_UNIT))) {
        *why = "bad key flags";
        return 0;
    }
    if (n_panes > s->ring) {
        *why = "more panes than the ring holds";
        return 0;
    }
    if (r->newest == INT64_MIN) {
        if (n_panes) {
            *why = "panes in a key without data";
            return 0;
        }
    } else if (r->newest > TC_SNAP_MAX_INTERVAL || r->newest < -TC_SNAP_MAX_INTERVAL ||
               (s->started && r->newest > s->closed + (int64_t)s->lead)) {
        *why = "a key's newest interval is out of range";
        return 0;
    }
    if ((size_t)(end - p) < (size_t)dlen + slen + ulen) {
        *why = "a key's names run past the keys section";
        return 0;
    }
    r->dev = p;
    r->sen = p + dlen;
    r->unit = p + dlen + slen;
    if (!again && (!tc_utf8_valid(r->dev, dlen) || !tc_utf8_valid(r->sen, slen) ||
                   !tc_utf8_valid(r->unit, ulen))) {
        *why = "a key's name or unit is not UTF-8";
        return 0;
    }
    p += (size_t)dlen + slen + ulen;
    r->dlen = dlen;
    r->slen = slen;
    r->ulen = ulen;
    r->flags = flags;
    r->n_panes = n_panes;
    r->panes = p;
    uint32_t prev_age = s->ring;
    r->qs_counts = 0;
    for (uint32_t i = 0; i < n_panes; i++) {
        uint16_t age;
        uint32_t count;
        if ((size_t)(end - p) < TC_SNAP_PANE) {
            *why = "a pane runs past the keys section";
            return 0;
        }
        memcpy(&age, p, 2);
        memcpy(&count, p + 2, 4);
        if (age >= prev_age || count == 0) {
            *why = "pane ages out of order or an empty pane";
            return 0;
        }
        if (!again && !tc_snap_pane_sound(p + 6)) {
            *why = "a pane's statistics are not finite or not ordered";
            return 0;
        }
        p += TC_SNAP_PANE;
        prev_age = age;
        if (tc_snap_open_pane(s, r->newest - age, r->newest)) {
            if ((size_t)(end - p) < TC_SNAP_OPEN) {
                *why = "a pane runs past the keys section";
                return 0;
            }
            if (!again && !tc_snap_all_finite(p, 3)) {
                *why = "an open pane's times are not finite";
                return 0;
            }
            p += TC_SNAP_OPEN;
        }
        if (s->quantiles) {
            tc_sketch_hdr h;
            size_t used = tc_snap_sketch(p, end, s->qmap, count, &h, why, again);
            if (used == 0) return 0;
            p += used;
            r->qs_counts += tc_sketch_buckets(&h);
        }
    }
    return (size_t)(p - start);
}

/* Pass 1: n_keys records fill exactly len bytes at p. last_ts (may be NULL) gets each record's
 * last_ts. 0, or -1 with *why set. */
static inline int tc_snap_scan(const uint8_t *p, size_t len, const tc_snap_shape *s,
                               uint64_t n_keys, double *last_ts, const char **why) {
    size_t pos = 0;
    tc_snap_rec r;
    if (n_keys > len / TC_SNAP_KEY_HEAD) {
        *why = "more keys than the keys section can hold";
        return -1;
    }
    for (uint64_t i = 0; i < n_keys; i++) {
        size_t used = tc_snap_parse(p + pos, len - pos, s, &r, why, 0);
        if (used == 0) return -1;
        if (last_ts) last_ts[i] = r.last_ts;
        pos += used;
    }
    if (pos != len) {
        *why = "bytes after the last key record";
        return -1;
    }
    return 0;
}

/* Inserts one parsed record into t. 0, 1 (the key is already there: *why set), -1 no memory. */
static inline int tc_snap_build(tc_table *t, const tc_snap_rec *r, const tc_snap_shape *s,
                                const char **why) {
    size_t slot;
    const char *dev = (const char *)r->dev, *sen = (const char *)r->sen;
    uint64_t h = tc_key_hash(t->seed, dev, r->dlen, sen, r->slen);
    if (tc_table_find(t, h, dev, r->dlen, sen, r->slen, &slot)) {
        *why = "a key appears twice";
        return 1;
    }
    tc_key *k = tc_table_insert(t, h, slot, dev, r->dlen, sen, r->slen);
    if (!k) return -1;
    if (r->flags & TC_SNAP_HAS_UNIT) {
        k = tc_key_set_unit(t, k, (const char *)r->unit, r->ulen);
        if (!k) return -1;
    }
    uint32_t ring = s->ring;
    tc_qs_head *qb = NULL;
    uint32_t *qc = NULL;
    if (s->quantiles) {
        /* the block exactly as large as the counts: the engine grows it as it always does */
        qb = tc_key_qs(k, t->panes);
        if (r->qs_counts > qb->cap) {
            size_t old_size = tc_key_bytes(t, k);
            size_t new_size = old_size + 4 * (size_t)(r->qs_counts - qb->cap);
            tc_key *moved = (tc_key *)realloc(k, new_size);
            if (!moved) return -1;
            k = moved;
            t->keys[k->dense_index] = k;
            t->record_bytes += new_size - old_size;
            qb = tc_key_qs(k, t->panes);
            qb->cap = r->qs_counts;
        }
        qb->used = r->qs_counts;
        qc = tc_qs_counts(qb, ring);
    }
    k->has_seq = (r->flags & TC_SNAP_HAS_SEQ) ? 1 : 0;
    k->last_seq = k->has_seq ? r->seq : 0;
    k->newest = r->newest;
    k->last = r->last;
    k->last_ts = r->last_ts;
    k->newest_first_ts = r->newest_first_ts;
    if (s->event && s->lead) *tc_key_frozen_last(k, ring) = r->frozen_last;
    const uint8_t *p = r->panes;
    for (uint32_t i = 0; i < r->n_panes; i++) {
        uint16_t age;
        TC_SNAP_GET(age, p);
        int64_t j = r->newest - age;
        tc_pane *pn = &k->panes[tc_pane_of(j, ring)];
        TC_SNAP_GET(pn->count, p);
        TC_SNAP_GET(pn->sum, p);
        TC_SNAP_GET(pn->m2, p);
        TC_SNAP_GET(pn->min, p);
        TC_SNAP_GET(pn->max, p);
        TC_SNAP_GET(pn->first, p);
        if (tc_snap_open_pane(s, j, r->newest)) {
            tc_open_pane *op = tc_key_open_slot(k, ring, s->lead, j);
            TC_SNAP_GET(op->first_ts, p);
            TC_SNAP_GET(op->last, p);
            TC_SNAP_GET(op->last_ts, p);
        }
        if (qb) {
            tc_sketch_hdr *h = &tc_qs_hdrs(qb)[tc_pane_of(j, ring)];
            p = tc_snap_sketch_head(p, h);
            size_t nb = tc_sketch_buckets(h);
            memcpy(qc, p, 4 * nb);
            qc += nb;
            p += 4 * nb;
        }
    }
    return 0;
}

/* Builds the records whose keep[i] is set (keep NULL: all), in file order. `scanned`: a
 * tc_snap_scan of the same bytes succeeded, so only the length checks are made again; else every
 * check is made here, in one pass (a restore with room for every key needs no scan first, and a
 * refused file leaves a half-built table the caller throws away). 0, 1 (refused: *why set), -1 no
 * memory. */
static inline int tc_snap_load(tc_table *t, const uint8_t *p, size_t len, const tc_snap_shape *s,
                               uint64_t n_keys, const uint8_t *keep, int scanned,
                               const char **why) {
    size_t pos = 0;
    tc_snap_rec r;
    if (n_keys > len / TC_SNAP_KEY_HEAD) {   /* before sizing anything by n_keys */
        *why = "more keys than the keys section can hold";
        return 1;
    }
    /* the table at its final size first: no rehash while the keys go in */
    uint64_t kept = n_keys;
    if (keep) {
        kept = 0;
        for (uint64_t i = 0; i < n_keys; i++) kept += keep[i] ? 1 : 0;
    }
    while ((t->n_keys + kept) * 4 > (t->slot_mask + 1) * 3)
        if (tc_table_grow(t) != 0) return -1;
    for (uint64_t i = 0; i < n_keys; i++) {
        size_t used = tc_snap_parse(p + pos, len - pos, s, &r, why, scanned);
        if (used == 0) return 1;
        pos += used;
        if (keep && !keep[i]) continue;
        int rc = tc_snap_build(t, &r, s, why);
        if (rc) return rc;
    }
    if (pos != len) {
        *why = "bytes after the last key record";
        return 1;
    }
    return 0;
}

#endif
