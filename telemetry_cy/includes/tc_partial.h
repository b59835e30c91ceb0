/* A reader of one message of the partial format (docs/scale-out.md, "The partial format"): what
 * an instance sends a merge worker through NATS, so bytes from another process, checked before
 * anything is believed. telemetry_cy/engine/partial_format.py is the writer, the pure reader and
 * the oracle: this reader accepts exactly the messages it accepts and refuses the others with the
 * same reason (tests/test_partial_reader.py; tests/fuzz/fuzz_partial.c runs it under ASan+UBSan).
 *
 * Layout: header (96 bytes) | n_quantiles f64 | instance id | body | crc32 of all before it. The
 * body of a panes message is a u32 pane count, then per pane its key (u16 device, sensor, unit
 * lengths, u8 has_unit; the names), the snapshot's pane (tc_snapshot.h: u16 age = 0, u32 count,
 * f64 sum, m2, min, max, first), the open-pane times (f64 first_ts, last, last_ts) and, with
 * quantiles, the snapshot's sketch block. Other kinds have no body.
 *
 * Checks, in partial_format.read's order: empty, magic (foreign), version, length (truncated),
 * crc32 (checksum); then every field (malformed). The frame checks are snapshot_format's
 * check_frame and check_length_and_crc; the pane and sketch checks are tc_snapshot.h's
 * (tc_snap_pane_sound, tc_snap_all_finite, tc_snap_sketch). One thing is left to the caller: a
 * key twice in one message (malformed). Finding it needs a set of the keys, which the caller
 * builds anyway as it turns the panes into its own values; this header allocates nothing.
 *
 * Use: tc_partial_open checks the frame and the header fields up to the pane count, then
 * tc_partial_next once per pane (m.n_panes times) yields each pane with pointers into the
 * message, and tc_partial_end checks that no byte is left. Each returns TC_PARTIAL_OK or a
 * reason (tc_partial_reason) with *why set; the caller stops at the first refusal. No Python,
 * no GIL, no locks: the message and the tc_partial belong to the calling thread.
 */
#ifndef TC_PARTIAL_H
#define TC_PARTIAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cbor_reader.h" /* tc_utf8_valid */
#include "tc_crc32.h"
#include "tc_sketch.h"
#include "tc_snapshot.h"

#define TC_PARTIAL_VERSION 1
#define TC_PARTIAL_HEADER 96
#define TC_PARTIAL_CRC 4
#define TC_PARTIAL_KEY 7          /* u16 device, sensor, unit lengths; u8 has_unit */
#define TC_PARTIAL_MAX_INSTANCE 255
#define TC_PARTIAL_MAX_QUANTILES 8 /* rules.MAX_QUANTILES */
#define TC_PARTIAL_FLAG_EVENT 1u
#define TC_PARTIAL_FLAG_QUANTILES 2u

/* Kinds (partial_format.KINDS). */
enum { TC_PARTIAL_PANES = 1, TC_PARTIAL_PROGRESS = 2, TC_PARTIAL_HEARTBEAT = 3, TC_PARTIAL_LEAVE = 4 };

/* Why a message was refused: partial_format.PARTIAL_REASONS in its order, from 1 (0 is OK);
 * tc_partial_reason_names[code - 1] is the reason's word. */
typedef enum {
    TC_PARTIAL_OK = 0,
    TC_PARTIAL_EMPTY = 1,
    TC_PARTIAL_FOREIGN = 2,
    TC_PARTIAL_E_VERSION = 3,
    TC_PARTIAL_TRUNCATED = 4,
    TC_PARTIAL_CHECKSUM = 5,
    TC_PARTIAL_MALFORMED = 6,
} tc_partial_reason;

static const char *const tc_partial_reason_names[] = {"empty", "foreign", "version", "truncated",
                                                      "checksum", "malformed"};

typedef struct {
    /* header */
    uint16_t kind, flags;
    double window, emit_every;
    uint32_t panes, lead;
    double allowed_lateness, quantile_accuracy;
    uint32_t n_quantiles, instance_len;
    int64_t interval;
    uint64_t seq;
    uint32_t partition, partitions;
    const uint8_t *quantiles; /* n_quantiles little-endian f64, ascending in (0, 1) */
    const uint8_t *instance;  /* instance_len bytes of UTF-8 */
    uint32_t n_panes;         /* a panes message's pane count; 0 for the other kinds */
    /* the cursor: the next pane at pos, the crc32 at end */
    const uint8_t *pos, *end;
    uint32_t left;            /* panes not yet read */
    double lo, hi;            /* a pane's times lie in [lo, hi): its interval */
    const tc_sketch_map *qmap; /* quantiles on: the accuracy's mapping; NULL when it has none */
    tc_sketch_map map;
} tc_partial;

typedef struct {
    const uint8_t *dev, *sen, *unit; /* UTF-8; unit NULL when the key has none */
    uint32_t dlen, slen, ulen;
    uint32_t count;
    double sum, m2, min, max, first, first_ts, last, last_ts;
    tc_sketch_hdr sketch;    /* quantiles on: the pane's sketch, counts at `counts` */
    const uint8_t *counts;   /* pos_len + neg_len little-endian u32; NULL when quantiles are off */
} tc_partial_pane;

static inline uint64_t tc_partial_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline double tc_partial_f64(const uint8_t *p) {
    double v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t tc_partial_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint16_t tc_partial_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

#define TC_PARTIAL_BAD(text)                                                                       \
    do {                                                                                           \
        *why = (text);                                                                             \
        return TC_PARTIAL_MALFORMED;                                                               \
    } while (0)

/* snapshot_format.check_frame then check_length_and_crc, for n bytes at data. */
static inline tc_partial_reason tc_partial_frame(const uint8_t *data, size_t n, const char **why) {
    if (n == 0) {
        *why = "the partial is empty (0 bytes)";
        return TC_PARTIAL_EMPTY;
    }
    if (n < 8 || memcmp(data, "TCYPARTL", 8) != 0) {
        *why = "not a telemetry-cy partial (no TCYPARTL magic)";
        return TC_PARTIAL_FOREIGN;
    }
    if (n < 12) {
        *why = "shorter than a partial header";
        return TC_PARTIAL_TRUNCATED;
    }
    if (tc_partial_u32(data + 8) != TC_PARTIAL_VERSION) {
        *why = "a format version this build does not read (written by a newer telemetry-cy?)";
        return TC_PARTIAL_E_VERSION;
    }
    if (n < TC_PARTIAL_HEADER + TC_PARTIAL_CRC) {
        *why = "shorter than a partial header";
        return TC_PARTIAL_TRUNCATED;
    }
    if (tc_partial_u64(data + 16) != (uint64_t)n) {
        *why = "not as long as the header says";
        return TC_PARTIAL_TRUNCATED;
    }
    if (tc_partial_u32(data + n - TC_PARTIAL_CRC) != tc_crc32(0, data, n - TC_PARTIAL_CRC)) {
        *why = "the crc32 does not match: the message is corrupted";
        return TC_PARTIAL_CHECKSUM;
    }
    return TC_PARTIAL_OK;
}

/* Checks the frame and every field up to the first pane; fills m. */
static inline tc_partial_reason tc_partial_open(tc_partial *m, const uint8_t *data, size_t n,
                                                const char **why) {
    tc_partial_reason rc = tc_partial_frame(data, n, why);
    if (rc != TC_PARTIAL_OK) return rc;
    const uint8_t *h = data;
    m->kind = tc_partial_u16(h + 12);
    m->flags = tc_partial_u16(h + 14);
    m->window = tc_partial_f64(h + 24);
    m->emit_every = tc_partial_f64(h + 32);
    m->panes = tc_partial_u32(h + 40);
    m->lead = tc_partial_u32(h + 44);
    m->allowed_lateness = tc_partial_f64(h + 48);
    m->quantile_accuracy = tc_partial_f64(h + 56);
    m->n_quantiles = tc_partial_u32(h + 64);
    m->instance_len = tc_partial_u32(h + 68);
    memcpy(&m->interval, h + 72, 8);
    m->seq = tc_partial_u64(h + 80);
    m->partition = tc_partial_u32(h + 88);
    m->partitions = tc_partial_u32(h + 92);
    m->n_panes = m->left = 0;
    m->qmap = NULL;
    if (m->kind < TC_PARTIAL_PANES || m->kind > TC_PARTIAL_LEAVE) TC_PARTIAL_BAD("unknown kind");
    if (m->flags & ~(TC_PARTIAL_FLAG_EVENT | TC_PARTIAL_FLAG_QUANTILES))
        TC_PARTIAL_BAD("unknown flags");
    if ((m->n_quantiles != 0) != ((m->flags & TC_PARTIAL_FLAG_QUANTILES) != 0) ||
        m->n_quantiles > TC_PARTIAL_MAX_QUANTILES)
        TC_PARTIAL_BAD("the quantile count and the quantiles flag disagree");
    /* window / emit_every within 1e-9 of the pane count: what the engine's settings make */
    double w = m->window, e = m->emit_every, lateness = m->allowed_lateness;
    if (!(isfinite(e) && e > 0 && m->panes >= 1 && isfinite(w) &&
          fabs(w / e - (double)m->panes) <= 1e-9 * (double)m->panes && isfinite(lateness) &&
          lateness >= 0))
        TC_PARTIAL_BAD("window, emit_every or allowed_lateness out of range");
    if (!(m->flags & TC_PARTIAL_FLAG_EVENT) && (m->lead || lateness != 0.0))
        TC_PARTIAL_BAD("lead or allowed_lateness in arrival time");
    if (m->interval > TC_SNAP_MAX_INTERVAL || m->interval < -TC_SNAP_MAX_INTERVAL ||
        m->partition >= m->partitions)
        TC_PARTIAL_BAD("interval or partition out of range");
    const uint8_t *pos = data + TC_PARTIAL_HEADER, *end = data + n - TC_PARTIAL_CRC;
    if ((uint64_t)(end - pos) < 8 * (uint64_t)m->n_quantiles + m->instance_len)
        TC_PARTIAL_BAD("the quantiles or instance id run past the message");
    m->quantiles = pos;
    double prev = 0.0;
    for (uint32_t i = 0; i < m->n_quantiles; i++) {
        double q = tc_partial_f64(pos + 8 * (size_t)i);
        if (!(q > 0.0 && q < 1.0 && q > prev))
            TC_PARTIAL_BAD("the quantiles are not ascending values in (0, 1)");
        prev = q;
    }
    pos += 8 * (size_t)m->n_quantiles;
    double acc = m->quantile_accuracy;
    if (m->n_quantiles && !(acc > 0.0 && acc < 1.0)) TC_PARTIAL_BAD("quantile accuracy");
    if (!m->n_quantiles && acc != 0.0) TC_PARTIAL_BAD("a quantile accuracy without quantiles");
    if (m->instance_len == 0 || m->instance_len > TC_PARTIAL_MAX_INSTANCE)
        TC_PARTIAL_BAD("instance id of 0 or more than 255 bytes");
    if (!tc_utf8_valid(pos, m->instance_len)) TC_PARTIAL_BAD("instance id is not UTF-8");
    m->instance = pos;
    pos += m->instance_len;
    if (m->kind == TC_PARTIAL_PANES) {
        if (end - pos < 4) TC_PARTIAL_BAD("the pane count runs past the message");
        m->n_panes = m->left = tc_partial_u32(pos);
        pos += 4;
        /* the engine's mapping for the accuracy; none outside the sketch's range, and then every
         * sketch block is refused (as sketch_py refuses its alpha) */
        if (m->n_quantiles && tc_sketch_map_init(&m->map, acc) == 0) m->qmap = &m->map;
        /* a pane holds readings of its interval only: as partial_format computes them */
        m->lo = (double)m->interval * e;
        m->hi = (double)(m->interval + 1) * e;
    }
    m->pos = pos;
    m->end = end;
    return TC_PARTIAL_OK;
}

/* The next pane into *p (call it m->n_panes times). */
static inline tc_partial_reason tc_partial_next(tc_partial *m, tc_partial_pane *p,
                                                const char **why) {
    const uint8_t *pos = m->pos, *end = m->end;
    if (m->left == 0) TC_PARTIAL_BAD("more panes read than the message holds");
    if (end - pos < TC_PARTIAL_KEY) TC_PARTIAL_BAD("a key runs past the message");
    uint16_t dlen = tc_partial_u16(pos), slen = tc_partial_u16(pos + 2),
             ulen = tc_partial_u16(pos + 4);
    uint8_t has_unit = pos[6];
    pos += TC_PARTIAL_KEY;
    if (has_unit > 1 || (ulen && !has_unit) || !dlen || !slen)
        TC_PARTIAL_BAD("a key's names or unit flag are malformed");
    if ((size_t)(end - pos) < (size_t)dlen + slen + ulen + TC_SNAP_PANE + TC_SNAP_OPEN)
        TC_PARTIAL_BAD("a key runs past the message");
    p->dev = pos;
    p->sen = pos + dlen;
    p->unit = has_unit ? pos + dlen + slen : NULL;
    p->dlen = dlen;
    p->slen = slen;
    p->ulen = ulen;
    if (!tc_utf8_valid(p->dev, dlen) || !tc_utf8_valid(p->sen, slen) ||
        !tc_utf8_valid(pos + dlen + slen, ulen))
        TC_PARTIAL_BAD("a key's name or unit is not UTF-8");
    pos += (size_t)dlen + slen + ulen;
    /* the snapshot's pane (age 0: the pane of the message's interval) and its open times; the
     * eight doubles are contiguous */
    uint16_t age = tc_partial_u16(pos);
    p->count = tc_partial_u32(pos + 2);
    const uint8_t *st = pos + 6;
    if (age != 0 || p->count == 0 || !tc_snap_all_finite(st, 8))
        TC_PARTIAL_BAD("a pane with an age, no reading, or a value that is not finite");
    p->sum = tc_partial_f64(st);
    p->m2 = tc_partial_f64(st + 8);
    p->min = tc_partial_f64(st + 16);
    p->max = tc_partial_f64(st + 24);
    p->first = tc_partial_f64(st + 32);
    p->first_ts = tc_partial_f64(st + 40);
    p->last = tc_partial_f64(st + 48);
    p->last_ts = tc_partial_f64(st + 56);
    if (!(tc_snap_pane_sound(st) && p->min <= p->last && p->last <= p->max &&
          m->lo <= p->first_ts && p->first_ts <= p->last_ts && p->last_ts < m->hi))
        TC_PARTIAL_BAD("a pane's statistics or times are inconsistent");
    pos += TC_SNAP_PANE + TC_SNAP_OPEN;
    p->counts = NULL;
    if (m->n_quantiles) {
        size_t used = tc_snap_sketch(pos, end, m->qmap, p->count, &p->sketch, why, 0);
        if (used == 0) return TC_PARTIAL_MALFORMED;
        p->counts = pos + TC_SNAP_SKETCH;
        pos += used;
    } else {
        tc_sketch_hdr_clear(&p->sketch);
    }
    m->pos = pos;
    m->left--;
    return TC_PARTIAL_OK;
}

/* After the last pane: nothing may follow it. */
static inline tc_partial_reason tc_partial_end(const tc_partial *m, const char **why) {
    if (m->left) TC_PARTIAL_BAD("fewer panes read than the message holds");
    if (m->pos != m->end) TC_PARTIAL_BAD("bytes after the last field");
    return TC_PARTIAL_OK;
}

/* The whole message at once (open, every pane, end): the fuzz target's and a caller's that
 * wants only the verdict. */
static inline tc_partial_reason tc_partial_check(const uint8_t *data, size_t n, const char **why) {
    tc_partial m;
    tc_partial_pane p;
    tc_partial_reason rc = tc_partial_open(&m, data, n, why);
    while (rc == TC_PARTIAL_OK && m.left) rc = tc_partial_next(&m, &p, why);
    return rc == TC_PARTIAL_OK ? tc_partial_end(&m, why) : rc;
}

#undef TC_PARTIAL_BAD

#endif
