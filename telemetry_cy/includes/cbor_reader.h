/* Fixed-schema CBOR payload reader (RFC 8949) for telemetry readings.
 *
 * The normative rules are the module docstring of telemetry_cy/engine/_decode_py.py, the pure-Python twin
 * of this file; the two must change together and tests/test_decode.py runs one suite against both.
 *
 * Why it looks like this:
 * - Runs on the engine thread without the GIL: no Python API, no malloc, no errno, no globals.
 * - Portable C11 (x86_64 and aarch64): big-endian loads are byte shifts, type punning is memcpy.
 * - Untrusted input: every length read from the wire is checked against the bytes that remain
 *   before anything is skipped or looped on, so a huge length prefix costs O(1), never a loop.
 * - Nesting is walked with an explicit fixed stack (TC_CBOR_MAX_DEPTH entries), never C recursion:
 *   a payload of a million nested arrays must not overflow the thread stack.
 * - The cursor (tc_cbor_cur) is py-pgproto's frb shape: a pointer and an end, reads that fail
 *   instead of running past the end.
 */
#ifndef TC_CBOR_READER_H
#define TC_CBOR_READER_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A data item may be enclosed by at most this many arrays, maps and tags. Counted exactly as
 * cbor2's max_depth counts (a definite empty container encloses nothing, an indefinite one always
 * counts), so the fallback, run with max_depth=TC_CBOR_MAX_DEPTH, never disagrees with us. */
#define TC_CBOR_MAX_DEPTH 256

/* A map read for a reading with more pairs than this goes to the fallback: the duplicate check
 * below is pairwise over a fixed array, which is only cheap (and only bounded) for a few keys. */
#define TC_CBOR_MAX_READ_KEYS 32

/* Tag 55799 "self-described CBOR" directly on the top-level item is skipped natively. */
#define TC_CBOR_SELF_DESCRIBE_TAG 55799u

/* Smallest accepted reading: a3 61'd' 61 X 61's' 61 Y 61'v' 00 = 12 bytes. Mismatches are only
 * counted, never stored, so cap = len / TC_MIN_READING_BYTES + 1 always suffices. */
#define TC_MIN_READING_BYTES 12

enum {
    TC_PAYLOAD_OK = 0,
    TC_PAYLOAD_DECODE_ERROR = 1,
    TC_PAYLOAD_FALLBACK = 2,       /* well-formed, but cbor2 must decide (see _decode_py.py) */
    TC_PAYLOAD_CAP_TOO_SMALL = 3   /* caller bug: out->cap < len / TC_MIN_READING_BYTES + 1 */
};

typedef struct {
    const char *device;  uint32_t device_len;   /* point into the payload buffer; valid UTF-8 */
    const char *sensor;  uint32_t sensor_len;
    const char *unit;    uint32_t unit_len;     /* unit == NULL when there is no `u` */
    double value;                                /* finite */
    uint64_t seq;        int has_seq;            /* `n` */
    double t;            /* `t`, event time in seconds (finite); NaN when there is no `t`: a NaN
                          * `t` on the wire is a schema mismatch, so NaN never means a value */
} tc_reading;

typedef struct {
    tc_reading *readings; size_t n_readings; size_t cap;  /* caller-owned array */
    uint64_t schema_mismatch; uint64_t non_finite;          /* reading-level drops found */
} tc_decoded;

/* ---- cursor ------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;    /* next unread byte; p <= end always */
    const uint8_t *end;
} tc_cbor_cur;

static inline size_t tc_cur_left(const tc_cbor_cur *c) { return (size_t)(c->end - c->p); }

/* n is a wire length (up to 2^64-1): compared before the pointer moves, so it cannot wrap. */
static inline int tc_cur_skip(tc_cbor_cur *c, uint64_t n)
{
    if (n > (uint64_t)tc_cur_left(c)) return 0;
    c->p += n;
    return 1;
}

/* Fixed-width big-endian loads written as shifts: portable, alignment-free, and compiled to a
 * load plus byte swap on x86_64 and aarch64. */
static inline uint16_t tc_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t tc_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t tc_be64(const uint8_t *p)
{
    return ((uint64_t)tc_be32(p) << 32) | tc_be32(p + 4);
}

/* ---- item heads --------------------------------------------------------------------------- */

typedef struct {
    uint8_t major;   /* 0..7 */
    uint8_t ai;      /* additional info; 31 = indefinite (major 2-5) or break (major 7) */
    uint64_t arg;    /* argument; for major 7 ai 25-27 the raw float bits */
} tc_cbor_head;

static inline int tc_is_break(const tc_cbor_head *h) { return h->major == 7 && h->ai == 31; }

/* Reads one head. Rejects (returns 0) truncation, reserved ai 28-30, ai 31 on majors that have no
 * indefinite form (0, 1, 6), and a two-byte simple value below 32 (RFC 8949 3.3: not well-formed).
 * A break is returned as a head: only the caller knows whether one may stand here. */
static inline int tc_cbor_read_head(tc_cbor_cur *c, tc_cbor_head *h)
{
    if (c->p >= c->end) return 0;
    uint8_t ib = *c->p++;
    h->major = (uint8_t)(ib >> 5);
    h->ai = (uint8_t)(ib & 31);
    if (h->ai < 24) { h->arg = h->ai; return 1; }
    if (h->ai <= 27) {
        size_t n = (size_t)1 << (h->ai - 24);
        if (tc_cur_left(c) < n) return 0;
        switch (h->ai) {
        case 24: h->arg = c->p[0]; break;
        case 25: h->arg = tc_be16(c->p); break;
        case 26: h->arg = tc_be32(c->p); break;
        default: h->arg = tc_be64(c->p); break;
        }
        c->p += n;
        if (h->major == 7 && h->ai == 24 && h->arg < 32) return 0;
        return 1;
    }
    if (h->ai == 31) {
        h->arg = 0;
        return !(h->major <= 1 || h->major == 6);
    }
    return 0;
}

/* ---- skipping ----------------------------------------------------------------------------- */

/* tc_cbor_skip carries a 4 KiB stack array: kept out of line so the several call sites in the
 * reading reader do not each add one to its frame (and the hot path stays small). `static`, not
 * `static inline` (GCC warns on inline+noinline); `unused` keeps -Wall quiet where it is not used. */
#if defined(__GNUC__) || defined(__clang__)
#define TC_CBOR_NOINLINE __attribute__((noinline, unused))
#else
#define TC_CBOR_NOINLINE
#endif

/* The chunks of an indefinite string: definite strings of the same major type, then a break.
 * Each chunk costs at least one byte, so the loop is bounded by the payload length. */
static inline int tc_cbor_skip_chunks(tc_cbor_cur *c, uint8_t major)
{
    tc_cbor_head h;
    for (;;) {
        if (!tc_cbor_read_head(c, &h)) return 0;
        if (tc_is_break(&h)) return 1;
        if (h.major != major || h.ai == 31) return 0;
        if (!tc_cur_skip(c, h.arg)) return 0;
    }
}

/* Skips exactly one well-formed data item; `depth` = arrays, maps and tags enclosing it.
 * Returns 0 when malformed or nested too deep. One open level = one stack entry (4 KiB worst
 * case on the C stack, nothing on the heap). */
static TC_CBOR_NOINLINE int tc_cbor_skip(tc_cbor_cur *c, unsigned depth)
{
    struct {
        uint64_t left;   /* items still owed by a definite container/tag (a map owes 2 per pair) */
        uint8_t indef;   /* open until a break */
        uint8_t is_map;
        uint8_t odd;     /* indefinite map holding a key without its value: a break is illegal */
    } st[TC_CBOR_MAX_DEPTH];
    unsigned sp = 0;
    tc_cbor_head h;

    if (depth > TC_CBOR_MAX_DEPTH) return 0;
    for (;;) {
        if (!tc_cbor_read_head(c, &h)) return 0;
        switch (h.major) {
        case 2: case 3:
            if (h.ai == 31) { if (!tc_cbor_skip_chunks(c, h.major)) return 0; }
            else if (!tc_cur_skip(c, h.arg)) return 0;
            break;
        case 4: case 5: {
            unsigned is_map = h.major == 5;
            if (h.ai != 31) {
                if (h.arg == 0) break;   /* encloses nothing: complete, and no level (as cbor2) */
                /* every item takes at least one byte: reject a count that cannot fit before
                 * looping on it; this also keeps arg << 1 from overflowing */
                if (h.arg > ((uint64_t)tc_cur_left(c) >> is_map)) return 0;
            }
            if (depth + sp >= TC_CBOR_MAX_DEPTH) return 0;
            st[sp].left = h.ai == 31 ? 0 : h.arg << is_map;
            st[sp].indef = h.ai == 31;
            st[sp].is_map = (uint8_t)is_map;
            st[sp].odd = 0;
            sp++;
            continue;                    /* nothing completed yet */
        }
        case 6:
            if (depth + sp >= TC_CBOR_MAX_DEPTH) return 0;
            st[sp].left = 1; st[sp].indef = 0; st[sp].is_map = 0; st[sp].odd = 0;
            sp++;
            continue;
        case 7:
            if (h.ai == 31) {
                /* a break closes the innermost level only if that is indefinite, and a map only
                 * between pairs; the closed container then completes as an item of its parent */
                if (sp == 0 || !st[sp - 1].indef || st[sp - 1].odd) return 0;
                sp--;
            }
            break;
        default:                         /* majors 0, 1: the head is the whole item */
            break;
        }
        /* one item completed: charge it to the enclosing levels, closing those it fills */
        for (;;) {
            if (sp == 0) return 1;
            if (st[sp - 1].indef) { st[sp - 1].odd ^= st[sp - 1].is_map; break; }
            if (--st[sp - 1].left != 0) break;
            sp--;
        }
    }
}

/* ---- values ------------------------------------------------------------------------------- */

static inline double tc_bits_to_double(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* RFC 8949 Appendix D, done on the bit pattern instead of ldexp (exact, no libm call):
 * subnormals are mant * 2^-24 (exact in a double); normals and Inf/NaN are re-biased. */
static inline double tc_half_to_double(uint16_t half)
{
    uint64_t sign = (uint64_t)(half & 0x8000u) << 48;
    unsigned exp = (half >> 10) & 0x1fu;
    uint64_t mant = half & 0x3ffu;
    if (exp == 0) {
        double v = (double)mant * 5.9604644775390625e-08;   /* 2^-24 */
        return sign ? -v : v;
    }
    if (exp == 31) return tc_bits_to_double(sign | 0x7ff0000000000000ull | (mant << 42));
    return tc_bits_to_double(sign | ((uint64_t)(exp - 15 + 1023) << 52) | (mant << 42));
}

static inline double tc_single_to_double(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

/* Major 1 is -1-n. The +1 is done in integers so the result is rounded once; n = 2^64-1 has no
 * integer room for it, and its value -2^64 is exactly representable. */
static inline double tc_negint_to_double(uint64_t n)
{
    if (n == UINT64_MAX) return -18446744073709551616.0;
    return -(double)(n + 1);
}

/* Whether all n bytes are ASCII: the OR of a few (overlapping) words, no per-byte branch. */
static inline int tc_all_ascii(const uint8_t *s, size_t n)
{
    uint64_t acc = 0;
    if (n >= 8) {
        uint64_t w;
        for (size_t i = 0; i + 8 <= n; i += 8) {
            memcpy(&w, s + i, 8);
            acc |= w;
        }
        memcpy(&w, s + n - 8, 8);
        acc |= w;
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        acc = a | b;
    } else {
        for (size_t i = 0; i < n; i++) acc |= s[i];
    }
    return (acc & 0x8080808080808080ull) == 0;
}

/* Strict UTF-8 as Python's bytes.decode('utf-8'): no overlongs, no surrogates, <= U+10FFFF
 * (Unicode Table 3-7). Names are mostly ASCII: that is settled for the whole name at once; else
 * eight bytes at a time until a high bit shows. */
static inline int tc_utf8_valid(const uint8_t *s, size_t n)
{
    if (tc_all_ascii(s, n)) return 1;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ull) == 0) { i += 8; continue; }
        }
        if (c < 0x80) { i++; continue; }
        uint8_t lo = 0x80, hi = 0xbf;
        size_t need;
        if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c == 0xe0) { need = 2; lo = 0xa0; }
        else if (c == 0xed) { need = 2; hi = 0x9f; }
        else if (c >= 0xe1 && c <= 0xef) need = 2;
        else if (c == 0xf0) { need = 3; lo = 0x90; }
        else if (c >= 0xf1 && c <= 0xf3) need = 3;
        else if (c == 0xf4) { need = 3; hi = 0x8f; }
        else return 0;
        if (n - i - 1 < need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80) return 0;
        i += need + 1;
    }
    return 1;
}

/* ---- readings ----------------------------------------------------------------------------- */

enum { TC_F_ABSENT = 0, TC_F_OK = 1, TC_F_BAD = 2 };

typedef struct {
    const uint8_t *ptr;
    uint64_t len;
    int state;
} tc_text_field;

/* What cbor2 must see rather than us: a tag, or a chunked string. Not a mismatch by itself (cbor2
 * may turn it into a valid value, e.g. a bignum or a tag-55799-wrapped string). */
static inline int tc_needs_fallback(const tc_cbor_head *h)
{
    return h->major == 6 || ((h->major == 2 || h->major == 3) && h->ai == 31);
}

/* A known text field (d, s, u): a definite text string is taken as is (validated once the map is
 * complete); anything else is BAD, after being skipped so its well-formedness is still checked. */
static inline int tc_read_text_field(tc_cbor_cur *c, unsigned lvl, tc_text_field *f, int *fb)
{
    if (c->p < c->end && *c->p >= 0x60 && *c->p <= 0x77) {
        /* the common case, a text shorter than 24 bytes: its head is this one byte */
        uint64_t len = *c->p++ & 31u;
        f->ptr = c->p;
        f->len = len;
        f->state = TC_F_OK;
        return tc_cur_skip(c, len);
    }
    const uint8_t *start = c->p;
    tc_cbor_head h;
    if (!tc_cbor_read_head(c, &h)) return 0;
    if (h.major == 3 && h.ai != 31) {
        f->ptr = c->p;
        f->len = h.arg;
        f->state = TC_F_OK;
        return tc_cur_skip(c, h.arg);
    }
    if (tc_needs_fallback(&h)) *fb = 1;
    f->state = TC_F_BAD;
    c->p = start;
    return tc_cbor_skip(c, lvl);
}

/* A number head (major 0 or 1, or a half, single or double float) as a double. 0 otherwise. */
static inline int tc_head_number(const tc_cbor_head *h, double *out)
{
    if (h->major == 0) *out = (double)h->arg;   /* one correctly rounded conversion */
    else if (h->major == 1) *out = tc_negint_to_double(h->arg);
    else if (h->major == 7 && h->ai == 25) *out = tc_half_to_double((uint16_t)h->arg);
    else if (h->major == 7 && h->ai == 26) *out = tc_single_to_double((uint32_t)h->arg);
    else if (h->major == 7 && h->ai == 27) *out = tc_bits_to_double(h->arg);
    else return 0;
    return 1;
}

/* The event time `t`: a number, or tag 1 (epoch-based date/time, RFC 8949 3.4.2) on a number,
 * read natively. Any other tag (tag 0's RFC 3339 text included), a tag 1 on anything but a number,
 * or a chunked string goes to cbor2; another type is BAD (skipped, so it is still checked). */
static inline int tc_read_time_field(tc_cbor_cur *c, unsigned lvl, int *state, double *t, int *fb)
{
    const uint8_t *start = c->p;
    tc_cbor_head h;
    if (tc_cur_left(c) >= 9 && *c->p == 0xfb) {
        *t = tc_bits_to_double(tc_be64(c->p + 1));
        c->p += 9;
        *state = TC_F_OK;
        return 1;
    }
    if (!tc_cbor_read_head(c, &h)) return 0;
    if (h.major == 6 && h.arg == 1) {
        if (!tc_cbor_read_head(c, &h)) return 0;
        if (tc_head_number(&h, t)) { *state = TC_F_OK; return 1; }
        *fb = 1;
    } else if (tc_head_number(&h, t)) {
        *state = TC_F_OK;
        return 1;
    } else if (tc_needs_fallback(&h)) {
        *fb = 1;
    }
    *state = TC_F_BAD;
    c->p = start;
    return tc_cbor_skip(c, lvl);
}

static inline int tc_name_ok(const tc_text_field *f, uint32_t max_name_bytes, int allow_empty)
{
    if (f->state != TC_F_OK) return 0;
    if (f->len == 0) return allow_empty;
    return f->len <= max_name_bytes && tc_utf8_valid(f->ptr, (size_t)f->len);
}

/* Reads a map that is read for a reading; its head `mh` was just consumed and `lvl` levels
 * (including the map itself) enclose its keys and values. Returns 0 when the payload is
 * malformed (a duplicate key included), -1 if out is full (unreachable when cap is checked),
 * 1 otherwise: the reading is stored or counted, or *fb is set and cbor2 decides the payload. */
static inline int tc_read_reading(tc_cbor_cur *c, const tc_cbor_head *mh, unsigned lvl,
                                  uint32_t max_name_bytes, tc_decoded *out, int *fb)
{
    /* Duplicates: the six field keys are single bytes that no other key can equal, so a bit each
     * finds them; other keys are kept and compared pairwise (at most 32 of them, raw bytes). */
    const uint8_t *kp[TC_CBOR_MAX_READ_KEYS];
    uint64_t kl[TC_CBOR_MAX_READ_KEYS];
    unsigned nk = 0;
    unsigned seen = 0;
    tc_text_field d = {0}, s = {0}, u = {0};
    int v_state = TC_F_ABSENT, n_state = TC_F_ABSENT, t_state = TC_F_ABSENT;
    double value = 0.0, tval = NAN;
    uint64_t seq = 0;
    int indef = mh->ai == 31;
    uint64_t pairs_left = mh->arg;
    uint64_t pairs = 0;
    int map_fb = 0;      /* this map goes to cbor2: keys and values are only skipped from here on */
    tc_cbor_head h;

    if (!indef && pairs_left > ((uint64_t)tc_cur_left(c) >> 1)) return 0;
    for (;;) {
        if (indef) {
            if (c->p < c->end && *c->p == 0xff) { c->p++; break; }
        } else {
            if (pairs_left == 0) break;
            pairs_left--;
        }
        if (++pairs > TC_CBOR_MAX_READ_KEYS) map_fb = 1;

        const uint8_t *kstart = c->p;
        uint64_t klen;
        if (!map_fb && c->p < c->end && *c->p >= 0x60 && *c->p <= 0x77) {
            klen = *c->p++ & 31u;   /* a text key shorter than 24 bytes (all of the schema's) */
        } else {
            if (!tc_cbor_read_head(c, &h)) return 0;
            if (map_fb || h.major != 3 || h.ai == 31) {
                map_fb = 1;
                c->p = kstart;
                if (!tc_cbor_skip(c, lvl) || !tc_cbor_skip(c, lvl)) return 0;
                continue;
            }
            klen = h.arg;
        }
        const uint8_t *k = c->p;
        if (!tc_cur_skip(c, klen)) return 0;
        unsigned bit = 0;
        if (klen == 1) {
            switch (k[0]) {
            case 'd': bit = 1; break;
            case 's': bit = 2; break;
            case 'v': bit = 4; break;
            case 'u': bit = 8; break;
            case 'n': bit = 16; break;
            case 't': bit = 32; break;
            default: break;
            }
        }
        if (bit) {
            if (seen & bit) return 0;                                          /* duplicate */
            seen |= bit;
        } else {
            for (unsigned i = 0; i < nk; i++)
                if (kl[i] == klen && memcmp(kp[i], k, (size_t)klen) == 0) return 0;   /* duplicate */
            kp[nk] = k; kl[nk] = klen; nk++;  /* nk <= pairs <= TC_CBOR_MAX_READ_KEYS here */
        }

        int r = 1;
        switch (bit ? k[0] : 0) {
        case 'd': r = tc_read_text_field(c, lvl, &d, &map_fb); break;
        case 's': r = tc_read_text_field(c, lvl, &s, &map_fb); break;
        case 'u': r = tc_read_text_field(c, lvl, &u, &map_fb); break;
        case 'v': {
            const uint8_t *start = c->p;
            if (tc_cur_left(c) >= 9 && *c->p == 0xfb) {
                value = tc_bits_to_double(tc_be64(c->p + 1));   /* the common float64 */
                c->p += 9;
                v_state = TC_F_OK;
                break;
            }
            if (!tc_cbor_read_head(c, &h)) return 0;
            v_state = TC_F_OK;
            if (h.major == 0) value = (double)h.arg;   /* one correctly rounded conversion */
            else if (h.major == 1) value = tc_negint_to_double(h.arg);
            else if (h.major == 7 && h.ai == 25) value = tc_half_to_double((uint16_t)h.arg);
            else if (h.major == 7 && h.ai == 26) value = tc_single_to_double((uint32_t)h.arg);
            else if (h.major == 7 && h.ai == 27) value = tc_bits_to_double(h.arg);
            else {
                if (tc_needs_fallback(&h)) map_fb = 1;
                v_state = TC_F_BAD;
                c->p = start;
                r = tc_cbor_skip(c, lvl);
            }
            break;
        }
        case 't':
            r = tc_read_time_field(c, lvl, &t_state, &tval, &map_fb);
            break;
        case 'n': {
            const uint8_t *start = c->p;
            if (tc_cur_left(c) >= 5 && *c->p == 0x1a) {
                seq = tc_be32(c->p + 1);   /* the common 4-byte unsigned integer */
                c->p += 5;
                n_state = TC_F_OK;
                break;
            }
            if (!tc_cbor_read_head(c, &h)) return 0;
            if (h.major == 0) { n_state = TC_F_OK; seq = h.arg; }
            else {
                if (tc_needs_fallback(&h)) map_fb = 1;
                n_state = TC_F_BAD;
                c->p = start;
                r = tc_cbor_skip(c, lvl);
            }
            break;
        }
        default:
            r = tc_cbor_skip(c, lvl);
            break;
        }
        if (!r) return 0;
    }

    if (map_fb) { *fb = 1; return 1; }
    if (!tc_name_ok(&d, max_name_bytes, 0) || !tc_name_ok(&s, max_name_bytes, 0)
        || v_state != TC_F_OK || n_state == TC_F_BAD
        || (t_state == TC_F_BAD || (t_state == TC_F_OK && !isfinite(tval)))
        || (u.state != TC_F_ABSENT && !tc_name_ok(&u, max_name_bytes, 1))) {
        out->schema_mismatch++;
        return 1;
    }
    if (!isfinite(value)) { out->non_finite++; return 1; }
    if (out->n_readings >= out->cap) return -1;
    tc_reading *rd = &out->readings[out->n_readings++];
    rd->device = (const char *)d.ptr; rd->device_len = (uint32_t)d.len;
    rd->sensor = (const char *)s.ptr; rd->sensor_len = (uint32_t)s.len;
    rd->unit = u.state == TC_F_OK ? (const char *)u.ptr : NULL;
    rd->unit_len = u.state == TC_F_OK ? (uint32_t)u.len : 0;
    rd->value = value;
    rd->seq = seq; rd->has_seq = n_state == TC_F_OK;
    rd->t = t_state == TC_F_OK ? tval : NAN;
    return 1;
}

/* Decodes one payload into `out` (resets n_readings and both counters first). Walks the whole
 * payload before reporting, so a malformed byte anywhere makes it DECODE_ERROR with no readings;
 * FALLBACK and DECODE_ERROR also leave no readings and zero counters. */
static inline int tc_decode_payload(const uint8_t *buf, size_t len, uint32_t max_name_bytes,
                                    tc_decoded *out)
{
    tc_cbor_cur c;
    tc_cbor_head h;
    unsigned depth = 0;      /* levels enclosing the top-level item (the 55799 tag counts, as in cbor2) */
    int fb = 0;
    int r = 1;
    const uint8_t *start;

    out->n_readings = 0;
    out->schema_mismatch = 0;
    out->non_finite = 0;
    if (out->cap < len / TC_MIN_READING_BYTES + 1) return TC_PAYLOAD_CAP_TOO_SMALL;
    if (len == 0) return TC_PAYLOAD_DECODE_ERROR;   /* also keeps NULL + 0 out of the arithmetic */
    c.p = buf;
    c.end = buf + len;

    start = c.p;
    if (!tc_cbor_read_head(&c, &h)) goto malformed;
    if (h.major == 6 && h.arg == TC_CBOR_SELF_DESCRIBE_TAG) {
        depth = 1;
        start = c.p;
        if (!tc_cbor_read_head(&c, &h)) goto malformed;
    }
    if (h.major == 5) {
        r = tc_read_reading(&c, &h, depth + 1, max_name_bytes, out, &fb);
    } else if (h.major == 4) {
        int indef = h.ai == 31;
        uint64_t left = h.arg;
        if (!indef && left > (uint64_t)tc_cur_left(&c)) goto malformed;
        for (;;) {
            if (indef) {
                if (c.p < c.end && *c.p == 0xff) { c.p++; break; }
            } else {
                if (left == 0) break;
                left--;
            }
            const uint8_t *el = c.p;
            if (!tc_cbor_read_head(&c, &h)) goto malformed;
            if (h.major == 5) {
                r = tc_read_reading(&c, &h, depth + 2, max_name_bytes, out, &fb);
                if (r != 1) break;
            } else {
                if (h.major == 6) fb = 1; else out->schema_mismatch++;
                c.p = el;
                if (!tc_cbor_skip(&c, depth + 1)) goto malformed;
            }
        }
    } else {
        if (h.major == 6) fb = 1; else out->schema_mismatch++;
        c.p = start;
        r = tc_cbor_skip(&c, depth);
    }
    if (r == -1) {
        out->n_readings = 0; out->schema_mismatch = 0; out->non_finite = 0;
        return TC_PAYLOAD_CAP_TOO_SMALL;
    }
    if (r == 0 || c.p != c.end) goto malformed;
    if (fb) {
        out->n_readings = 0; out->schema_mismatch = 0; out->non_finite = 0;
        return TC_PAYLOAD_FALLBACK;
    }
    return TC_PAYLOAD_OK;

malformed:
    out->n_readings = 0; out->schema_mismatch = 0; out->non_finite = 0;
    return TC_PAYLOAD_DECODE_ERROR;
}

#endif /* TC_CBOR_READER_H */
