/* Byte-level pieces of the NATS wire encoder (_wire.pyx): a growable buffer, the subject-token
 * test, JSON string escaping, decimal integers and CBOR heads/floats.
 *
 * No Python here. The rules they implement are Python's (subjects.py, json, cbor2); _wire.pyx
 * decides when they apply and falls back to the Python functions otherwise, and tests/test_wire.py
 * checks the result byte for byte against them.
 *
 * Writers (tc_wire_put_*) do not check capacity: the caller reserves an upper bound first
 * (tc_wbuf_reserve), once per message or body, so the inner loops stay branch-light.
 */
#ifndef TC_WIRE_H
#define TC_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *p;
    size_t len;
    size_t cap;
} tc_wbuf;

static int tc_wbuf_grow(tc_wbuf *b, size_t extra)
{
    size_t need = b->len + extra, cap = b->cap ? b->cap : 4096;
    if (need < b->len)
        return -1;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* 0, or -1 when out of memory (the buffer is unchanged then). */
static inline int tc_wbuf_reserve(tc_wbuf *b, size_t extra)
{
    return b->cap - b->len >= extra ? 0 : tc_wbuf_grow(b, extra);
}

static void tc_wbuf_free(tc_wbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static inline void tc_wire_put(tc_wbuf *b, const void *s, size_t n)
{
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

/* 1 when subjects.escape_token would return the name unchanged without consulting Unicode
 * tables: non-empty, every byte printable ASCII (0x21..0x7e) other than . * > %. Anything else
 * (including every non-ASCII name) is the Python function's business. */
static inline int tc_wire_plain_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e || c == '.' || c == '*' || c == '>' || c == '%')
            return 0;
    }
    return 1;
}

/* A JSON string as json.dumps(ensure_ascii=False) writes it, for valid UTF-8 input: quote,
 * backslash and the five short escapes, other C0 controls as lower-case \u00xx; DEL and
 * everything from 0x80 up pass through. Reserve 6 * n + 2. */
static inline void tc_wire_put_json_str(tc_wbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            memcpy(o, "u00", 3);
            o[3] = hex[c >> 4];
            o[4] = hex[c & 15];
            o += 5;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
}

/* Decimal, as int.__repr__. Reserve 20. */
static inline void tc_wire_put_u64(tc_wbuf *b, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    tc_wire_put(b, tmp + sizeof tmp - n, n);
}

/* Decimal with a minus sign when negative. Reserve 20 (|v| < 2**63 here). */
static inline void tc_wire_put_i64(tc_wbuf *b, int64_t v)
{
    if (v < 0) {
        b->p[b->len++] = '-';
        tc_wire_put_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        tc_wire_put_u64(b, (uint64_t)v);
    }
}

/* repr(x) (Python's shortest round-trip form) when it has at most 15 significant digits and
 * 1e-4 <= |x| < 1e14 (fixed notation there); else 0 and nothing written, and the caller asks
 * PyOS_double_to_string. Readings such as 21.95 take this path in ~20 ns instead of dtoa's ~150.
 *
 * Why it is exact: distinct decimals of at most 15 significant digits (DBL_DIG) never round to
 * the same double, so if one of them rounds to x it is the only one of its length or shorter,
 * which makes it repr's digits. If one exists, the nearest point of the 15-digit grid of x's
 * decade, m / 10**k, is one (it is at least as close to x; the tie case is the neighbour), and
 * x * 10**k is off by far less than 1 from the exact value, so m is within 1 of round(x * 10**k).
 * Each candidate is checked exactly: m < 2**53 and 10**k (k <= 18) are exact doubles and IEEE
 * division rounds correctly, so (double)m / 10**k == x iff m / 10**k rounds to x. A misjudged
 * decade only makes the grid coarser (fewer hits) or fails the m < 10**15 bound. Reserve 24. */
static inline int tc_wire_put_short_double(tc_wbuf *b, double x)
{
    static const double pow10[19] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
                                     1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18};
    double ax = x < 0 ? -x : x;
    if (!(ax >= 1e-4 && ax < 1e14))
        return 0;
    int k = 18;  /* 14 - decade: m = ax * 10**k in [1e14, 1e15) */
    while (k > 1 && ax * pow10[k] >= 1e15)
        k--;
    double p = pow10[k];
    int64_t m = (int64_t)(ax * p + 0.5), c;
    if (m >= 999999999999999)  /* m + 1 must keep to 15 digits */
        return 0;
    if ((double)m / p == ax)
        c = m;
    else if ((double)(m - 1) / p == ax)
        c = m - 1;
    else if ((double)(m + 1) / p == ax)
        c = m + 1;
    else
        return 0;
    while (k > 0 && c % 10 == 0) {
        c /= 10;
        k--;
    }
    char digits[20];
    int n = 0;
    for (int64_t v = c; v; v /= 10)
        digits[sizeof digits - ++n] = (char)('0' + v % 10);
    const char *d = digits + sizeof digits - n;
    char *o = b->p + b->len;
    if (x < 0)
        *o++ = '-';
    if (k == 0) {                       /* whole: "1234.0" */
        memcpy(o, d, (size_t)n);
        memcpy(o + n, ".0", 2);
        o += n + 2;
    } else if (n > k) {                 /* "12.34" */
        memcpy(o, d, (size_t)(n - k));
        o[n - k] = '.';
        memcpy(o + n - k + 1, d + n - k, (size_t)k);
        o += n + 1;
    } else {                            /* "0.001234" */
        memcpy(o, "0.", 2);
        memset(o + 2, '0', (size_t)(k - n));
        memcpy(o + 2 + k - n, d, (size_t)n);
        o += 2 + k;
    }
    b->len = (size_t)(o - b->p);
    return 1;
}

/* A CBOR head in its shortest form, as cbor2 writes it. Reserve 9. */
static inline void tc_wire_put_cbor_head(tc_wbuf *b, unsigned major, uint64_t v)
{
    unsigned char *o = (unsigned char *)b->p + b->len;
    unsigned char mt = (unsigned char)(major << 5);
    int width;
    if (v < 24) {
        o[0] = (unsigned char)(mt | v);
        b->len += 1;
        return;
    }
    if (v <= 0xff) {
        o[0] = mt | 24;
        width = 1;
    } else if (v <= 0xffff) {
        o[0] = mt | 25;
        width = 2;
    } else if (v <= 0xffffffffu) {
        o[0] = mt | 26;
        width = 4;
    } else {
        o[0] = mt | 27;
        width = 8;
    }
    for (int i = width; i >= 1; i--, v >>= 8)
        o[i] = (unsigned char)(v & 0xff);
    b->len += 1 + (size_t)width;
}

/* A finite double as cbor2 writes it (always float64, 0xfb + big-endian). Reserve 9. */
static inline void tc_wire_put_cbor_f64(tc_wbuf *b, double x)
{
    uint64_t bits;
    unsigned char *o = (unsigned char *)b->p + b->len;
    memcpy(&bits, &x, sizeof bits);
    o[0] = 0xfb;
    for (int i = 8; i >= 1; i--, bits >>= 8)
        o[i] = (unsigned char)(bits & 0xff);
    b->len += 9;
}

#endif
