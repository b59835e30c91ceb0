/* Byte-level pieces of the NATS wire encoder (_wire.pyx): a growable buffer, the subject-token
 * test, JSON string escaping, decimal integers and CBOR heads/floats (JSON floats are tc_repr.h's);
 * and the reader of JetStream publish acks (tc_acks_*, at the end), which scans the server's bytes
 * for the emitter.
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
#include <time.h>

typedef struct {
    char *p;
    size_t len;
    size_t cap;
} tc_wbuf;

static inline int tc_wbuf_grow(tc_wbuf *b, size_t extra)
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

static inline void tc_wbuf_free(tc_wbuf *b)
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

/* ---- ordering a batch by subject ------------------------------------------------------------------
 * One sort key per aggregate: its device token's UTF-8 bytes (NULL, 0: sorts first) and its place
 * in the batch, which breaks ties, so the order is exactly that of a stable sort by the bytes.
 * The first 16 bytes are also kept as two big-endian integers, padded with zero bytes: most
 * comparisons end there. The padding cannot reorder anything, because a token never contains a
 * zero byte (subjects.escape_token escapes control characters). */

typedef struct {
    uint64_t k0, k1;
    const char *p;
    size_t n;
    size_t i;
} tc_sort_key;

static inline void tc_sort_key_set(tc_sort_key *k, const char *p, size_t n, size_t i)
{
    unsigned char b[16] = {0};
    if (n)
        memcpy(b, p, n < 16 ? n : 16);
    k->k0 = k->k1 = 0;
    for (int j = 0; j < 8; j++) {
        k->k0 = (k->k0 << 8) | b[j];
        k->k1 = (k->k1 << 8) | b[8 + j];
    }
    k->p = p;
    k->n = n;
    k->i = i;
}

static inline int tc_sort_key_less(const tc_sort_key *x, const tc_sort_key *y)
{
    if (x->k0 != y->k0)
        return x->k0 < y->k0;
    if (x->k1 != y->k1)
        return x->k1 < y->k1;
    if (x->n > 16 && y->n > 16) {
        size_t n = (x->n < y->n ? x->n : y->n) - 16;
        int c = memcmp(x->p + 16, y->p + 16, n);
        if (c)
            return c < 0;
    }
    if (x->n != y->n)
        return x->n < y->n;
    return x->i < y->i;
}

/* Monotonic seconds, for spacing the moments a long loop gives up the GIL (see _wire.pyx). */
static inline double tc_wire_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline size_t tc_sort_key_index(const tc_sort_key *k)
{
    return k->i;
}

static inline void tc_sort_swap(tc_sort_key *a, tc_sort_key *b)
{
    tc_sort_key t = *a;
    *a = *b;
    *b = t;
}

static inline void tc_sort_sift(tc_sort_key *k, size_t root, size_t n)
{
    for (;;) {
        size_t c = 2 * root + 1;
        if (c >= n)
            return;
        if (c + 1 < n && tc_sort_key_less(&k[c], &k[c + 1]))
            c++;
        if (!tc_sort_key_less(&k[root], &k[c]))
            return;
        tc_sort_swap(&k[root], &k[c]);
        root = c;
    }
}

/* Introsort with the comparison inlined (glibc's qsort calls it through a pointer and was 5x
 * slower here): quicksort with a median of three, insertion sort below 16 keys, heapsort when the
 * recursion gets deep. The keys are all different (the index breaks ties), so the result is the
 * one total order whatever the algorithm. */
static inline void tc_sort_range(tc_sort_key *k, size_t n, int depth)
{
    while (n > 16) {
        if (depth-- == 0) {
            for (size_t i = n / 2; i-- > 0;)
                tc_sort_sift(k, i, n);
            for (size_t end = n - 1; end > 0; end--) {
                tc_sort_swap(&k[0], &k[end]);
                tc_sort_sift(k, 0, end);
            }
            return;
        }
        size_t mid = n / 2;
        if (tc_sort_key_less(&k[mid], &k[0]))
            tc_sort_swap(&k[mid], &k[0]);
        if (tc_sort_key_less(&k[n - 1], &k[0]))
            tc_sort_swap(&k[n - 1], &k[0]);
        if (tc_sort_key_less(&k[n - 1], &k[mid]))
            tc_sort_swap(&k[n - 1], &k[mid]);
        tc_sort_swap(&k[mid], &k[n - 2]);   /* the pivot, out of the way */
        tc_sort_key *pivot = &k[n - 2];
        size_t i = 0, j = n - 2;
        for (;;) {
            while (tc_sort_key_less(&k[++i], pivot))
                ;
            while (tc_sort_key_less(pivot, &k[--j]))
                ;
            if (i >= j)
                break;
            tc_sort_swap(&k[i], &k[j]);
        }
        tc_sort_swap(&k[i], &k[n - 2]);
        /* recurse into the smaller side, loop on the larger: the stack stays O(log n) */
        if (i < n - i - 1) {
            tc_sort_range(k, i, depth);
            k += i + 1;
            n -= i + 1;
        } else {
            tc_sort_range(k + i + 1, n - i - 1, depth);
            n = i;
        }
    }
    for (size_t i = 1; i < n; i++) {
        tc_sort_key t = k[i];
        size_t j = i;
        for (; j > 0 && tc_sort_key_less(&t, &k[j - 1]); j--)
            k[j] = k[j - 1];
        k[j] = t;
    }
}

static inline void tc_sort_keys(tc_sort_key *k, size_t n)
{
    int depth = 0;
    for (size_t m = n; m > 1; m >>= 1)
        depth += 2;
    tc_sort_range(k, n, depth);
}

/* ---- JetStream publish acks --------------------------------------------------------------------
 *
 * The emitter publishes a tick batch as HPUB messages whose reply subject is
 * "<inbox>.<serial>.<index>": serial names the batch, index the message in it. The server answers
 * every message on that subject, and one wildcard subscription ("<inbox>.>") receives them all.
 * tc_acks_feed reads those answers straight from the connection's bytes: it consumes, from the
 * start, every complete MSG/HMSG of that subscription, and stops at the first frame that is
 * anything else (PING, PONG, INFO, -ERR, a message of another subscription), which the caller
 * hands to the client library, or at an incomplete frame. No allocation, no Python.
 *
 * Each answer is classified (tc_ack_classify) and applied to the batch's per-message state array
 * (one byte per message, owned by the caller): a positive ack makes the message ACKED whatever its
 * state was (an ack from an earlier attempt still means the stream has it); an error makes a SENT
 * message FAILED. Only SENT messages count as in flight, so an answer that arrives twice (a retry
 * and the late ack of the attempt before) can never take the count below zero.
 *
 * Answers, as nats-server writes them:
 *   {"stream":"S","seq":N}                      stored
 *   {"stream":"S","seq":N,"duplicate": true}    already stored (same Nats-Msg-Id in the window)
 *   {"error":{"code":C,"err_code":E,"description":"..."},"stream":"S","seq":0}
 *   HMSG with header "NATS/1.0 503" and no body  no responders: no stream captures the subject
 * The body is read by a small strict JSON reader (objects, arrays, strings, numbers, literals;
 * nesting bounded), never by substring search, so a stream name cannot fake a key.
 */

enum {
    TC_ACK_OK = 0,             /* stored */
    TC_ACK_DUPLICATE,          /* stored before (deduplicated) */
    TC_ACK_NO_RESPONDERS,      /* no stream for the subject */
    TC_ACK_STREAM_FULL,        /* limits with discard new, or no storage left */
    TC_ACK_WRONG_STREAM,       /* Nats-Expected-Stream does not match */
    TC_ACK_TOO_MANY_REQUESTS,  /* the stream's ingest queue is full (429) */
    TC_ACK_OTHER_ERROR,        /* any other error answer */
    TC_ACK_BAD,                /* not an answer we can read */
    TC_ACK_KINDS
};

enum { TC_MSG_UNSENT = 0, TC_MSG_SENT = 1, TC_MSG_FAILED = 2, TC_MSG_ACKED = 3 };

#define TC_ACK_DESC_MAX 160
/* Longest control line looked for: nats-server's max_control_line is 4 KiB by default; INFO
 * lines may be longer, so only a line this long without its end is handed over as unreadable. */
#define TC_ACK_MAX_LINE (1u << 20)
#define TC_ACK_JSON_DEPTH 16

typedef struct {
    int kind;
    int64_t code;      /* the error's "code", or the header status (503); 0 when none */
    int64_t err_code;  /* the error's "err_code"; 0 when none */
    const char *desc;  /* the error's "description" (JSON string contents), or NULL */
    size_t desc_len;
} tc_ack_result;

typedef struct {
    /* set by the owner */
    uint64_t sid;                   /* the inbox subscription's id; 0: nothing is ours */
    const char *inbox;              /* "<inbox>." */
    size_t inbox_len;
    uint64_t serial;                /* the batch whose answers count */
    unsigned char *state;           /* its per-message states, NULL between batches */
    size_t n;
    /* counters */
    uint64_t in_flight;             /* messages SENT and not answered */
    uint64_t acked;                 /* messages ACKED in `state` */
    uint64_t answers;               /* answers applied to the batch (any kind) */
    uint64_t stale;                 /* answers for another batch */
    uint64_t repeats;               /* positive answers for a message already ACKED */
    uint64_t kinds[TC_ACK_KINDS];   /* every answer read, by kind */
    /* the last error answer, for the log */
    int last_kind;
    int64_t last_code, last_err_code;
    char last_desc[TC_ACK_DESC_MAX];
    size_t last_desc_len;
} tc_acks;

typedef struct {
    const char *p, *end;
} tc_json;

static inline void tc_json_ws(tc_json *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r' || *s->p == '\n'))
        s->p++;
}

static inline int tc_json_lit(tc_json *s, const char *lit, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

/* A string: *v, *vn = its raw contents (escapes left as they are). */
static inline int tc_json_string(tc_json *s, const char **v, size_t *vn)
{
    if (s->p >= s->end || *s->p != '"')
        return -1;
    const char *start = ++s->p;
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            *v = start;
            *vn = (size_t)(s->p - start);
            s->p++;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            if (s->end - s->p < 2)
                return -1;
            s->p++;
        }
        s->p++;
    }
    return -1;
}

/* A number; *out = its value when it is an integer of at most 18 digits, else 0. */
static inline int tc_json_number(tc_json *s, int64_t *out)
{
    const char *start = s->p;
    int neg = 0, integral = 1, digits = 0;
    int64_t v = 0;
    if (s->p < s->end && *s->p == '-') {
        neg = 1;
        s->p++;
    }
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        if (digits < 18)
            v = v * 10 + (*s->p - '0');
        else
            integral = 0;
        digits++;
        s->p++;
    }
    if (digits == 0 || (digits > 1 && start[neg] == '0'))
        return -1;
    if (s->p < s->end && *s->p == '.') {
        integral = 0;
        s->p++;
        const char *f = s->p;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
            s->p++;
        if (s->p == f)
            return -1;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        integral = 0;
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        const char *e = s->p;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
            s->p++;
        if (s->p == e)
            return -1;
    }
    *out = integral ? (neg ? -v : v) : 0;
    return 0;
}

static inline int tc_json_skip(tc_json *s, int depth);

/* An object, each member handed to member(ctx, key, keylen, s) which must read its value. */
typedef int (*tc_json_member)(void *ctx, const char *key, size_t kn, tc_json *s, int depth);

static inline int tc_json_object(tc_json *s, int depth, tc_json_member member, void *ctx)
{
    if (depth > TC_ACK_JSON_DEPTH || s->p >= s->end || *s->p != '{')
        return -1;
    s->p++;
    tc_json_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        const char *k;
        size_t kn;
        tc_json_ws(s);
        if (tc_json_string(s, &k, &kn))
            return -1;
        tc_json_ws(s);
        if (s->p >= s->end || *s->p != ':')
            return -1;
        s->p++;
        tc_json_ws(s);
        if (member ? member(ctx, k, kn, s, depth + 1) : tc_json_skip(s, depth + 1))
            return -1;
        tc_json_ws(s);
        if (s->p >= s->end)
            return -1;
        if (*s->p == '}') {
            s->p++;
            return 0;
        }
        if (*s->p != ',')
            return -1;
        s->p++;
    }
}

static inline int tc_json_skip(tc_json *s, int depth)
{
    const char *v;
    size_t vn;
    int64_t num;
    if (depth > TC_ACK_JSON_DEPTH || s->p >= s->end)
        return -1;
    switch (*s->p) {
    case '{':
        return tc_json_object(s, depth, NULL, NULL);
    case '[':
        s->p++;
        tc_json_ws(s);
        if (s->p < s->end && *s->p == ']') {
            s->p++;
            return 0;
        }
        for (;;) {
            tc_json_ws(s);
            if (tc_json_skip(s, depth + 1))
                return -1;
            tc_json_ws(s);
            if (s->p >= s->end)
                return -1;
            if (*s->p == ']') {
                s->p++;
                return 0;
            }
            if (*s->p != ',')
                return -1;
            s->p++;
        }
    case '"':
        return tc_json_string(s, &v, &vn);
    case 't':
        return tc_json_lit(s, "true", 4);
    case 'f':
        return tc_json_lit(s, "false", 5);
    case 'n':
        return tc_json_lit(s, "null", 4);
    default:
        return tc_json_number(s, &num);
    }
}

typedef struct {
    int has_stream, has_seq, duplicate, has_error;
    int64_t code, err_code;
    const char *desc;
    size_t desc_len;
} tc_ack_fields;

#define TC_KEY_IS(k, kn, lit) ((kn) == sizeof(lit) - 1 && memcmp((k), (lit), (kn)) == 0)

static inline int tc_ack_error_member(void *ctx, const char *k, size_t kn, tc_json *s, int depth)
{
    tc_ack_fields *f = (tc_ack_fields *)ctx;
    if (TC_KEY_IS(k, kn, "code") && s->p < s->end && *s->p != '"' && *s->p != '{'
        && *s->p != '[')
        return tc_json_number(s, &f->code);
    if (TC_KEY_IS(k, kn, "err_code") && s->p < s->end && *s->p != '"' && *s->p != '{'
        && *s->p != '[')
        return tc_json_number(s, &f->err_code);
    if (TC_KEY_IS(k, kn, "description") && s->p < s->end && *s->p == '"')
        return tc_json_string(s, &f->desc, &f->desc_len);
    return tc_json_skip(s, depth);
}

static inline int tc_ack_member(void *ctx, const char *k, size_t kn, tc_json *s, int depth)
{
    tc_ack_fields *f = (tc_ack_fields *)ctx;
    const char *v;
    size_t vn;
    int64_t num;
    if (TC_KEY_IS(k, kn, "stream") && s->p < s->end && *s->p == '"') {
        if (tc_json_string(s, &v, &vn))
            return -1;
        f->has_stream = vn > 0;
        return 0;
    }
    if (TC_KEY_IS(k, kn, "seq") && s->p < s->end && ((*s->p >= '0' && *s->p <= '9')
                                                      || *s->p == '-')) {
        if (tc_json_number(s, &num))
            return -1;
        f->has_seq = 1;
        return 0;
    }
    if (TC_KEY_IS(k, kn, "duplicate") && s->p < s->end && *s->p == 't') {
        f->duplicate = 1;
        return tc_json_lit(s, "true", 4);
    }
    if (TC_KEY_IS(k, kn, "error") && s->p < s->end && *s->p == '{') {
        f->has_error = 1;
        return tc_json_object(s, depth, tc_ack_error_member, f);
    }
    return tc_json_skip(s, depth);
}

/* The status code of a header block "NATS/1.0[ CCC[ text]]\r\n...", 0 when it has none, -1 when
 * the block does not start with the version line. */
static inline int tc_ack_status(const char *h, size_t hn)
{
    if (hn < 10 || memcmp(h, "NATS/1.0", 8) != 0)
        return -1;
    if (h[8] == '\r')
        return 0;
    if (h[8] != ' ' || hn < 14)
        return -1;
    int code = 0;
    for (int i = 9; i < 12; i++) {
        if (h[i] < '0' || h[i] > '9')
            return -1;
        code = code * 10 + (h[i] - '0');
    }
    return (h[12] == '\r' || h[12] == ' ') ? code : -1;
}

/* Classifies one answer: hdr/hn the header block (hn 0 for a MSG), body/bn the payload. */
static inline void tc_ack_classify(const char *hdr, size_t hn, const char *body, size_t bn,
                            tc_ack_result *r)
{
    memset(r, 0, sizeof *r);
    int status = 0;
    if (hn) {
        status = tc_ack_status(hdr, hn);
        if (status < 0) {
            r->kind = TC_ACK_BAD;
            return;
        }
    }
    if (bn == 0) {
        r->code = status;
        r->kind = status == 503 ? TC_ACK_NO_RESPONDERS : status ? TC_ACK_OTHER_ERROR : TC_ACK_BAD;
        return;
    }
    tc_ack_fields f;
    memset(&f, 0, sizeof f);
    tc_json s = {body, body + bn};
    tc_json_ws(&s);
    if (tc_json_object(&s, 0, tc_ack_member, &f)) {
        r->kind = TC_ACK_BAD;
        return;
    }
    tc_json_ws(&s);
    if (s.p != s.end) {
        r->kind = TC_ACK_BAD;
        return;
    }
    if (f.has_error) {
        r->code = f.code ? f.code : status;
        r->err_code = f.err_code;
        r->desc = f.desc;
        r->desc_len = f.desc_len;
        switch (f.err_code) {
        case 10077:   /* maximum messages/bytes exceeded (discard new) */
        case 10047:   /* insufficient storage resources */
        case 10028:   /* insufficient memory resources */
            r->kind = TC_ACK_STREAM_FULL;
            break;
        case 10060:   /* expected stream does not match */
            r->kind = TC_ACK_WRONG_STREAM;
            break;
        case 10167:   /* too many requests */
            r->kind = TC_ACK_TOO_MANY_REQUESTS;
            break;
        default:
            r->kind = r->code == 429 ? TC_ACK_TOO_MANY_REQUESTS : TC_ACK_OTHER_ERROR;
        }
        return;
    }
    if (status && status != 200) {   /* a status with a body that is no error: not an ack */
        r->kind = TC_ACK_BAD;
        r->code = status;
        return;
    }
    r->kind = !(f.has_stream && f.has_seq) ? TC_ACK_BAD
              : f.duplicate ? TC_ACK_DUPLICATE : TC_ACK_OK;
}

/* A decimal of 1-19 digits with no sign or leading zero (but "0"); -1 if not. */
static inline int tc_ack_u64(const char *p, size_t n, uint64_t *out)
{
    if (n == 0 || n > 19 || (n > 1 && p[0] == '0'))
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return 0;
}

/* "<inbox>.<serial>.<index>" -> serial, index; -1 for any other subject. */
static inline int tc_ack_token(const tc_acks *w, const char *subj, size_t sn, uint64_t *serial,
                        uint64_t *index)
{
    if (sn <= w->inbox_len || memcmp(subj, w->inbox, w->inbox_len) != 0)
        return -1;
    const char *t = subj + w->inbox_len, *end = subj + sn;
    const char *dot = memchr(t, '.', (size_t)(end - t));
    if (dot == NULL)
        return -1;
    if (tc_ack_u64(t, (size_t)(dot - t), serial) || tc_ack_u64(dot + 1, (size_t)(end - dot - 1),
                                                               index))
        return -1;
    return 0;
}

/* Applies a classified answer for message `index` of batch `serial`. */
static inline void tc_acks_apply(tc_acks *w, int have_token, uint64_t serial, uint64_t index,
                          const tc_ack_result *r)
{
    w->kinds[r->kind]++;
    if (r->kind >= TC_ACK_NO_RESPONDERS) {
        w->last_kind = r->kind;
        w->last_code = r->code;
        w->last_err_code = r->err_code;
        w->last_desc_len = r->desc_len < TC_ACK_DESC_MAX ? r->desc_len : TC_ACK_DESC_MAX;
        if (w->last_desc_len)
            memcpy(w->last_desc, r->desc, w->last_desc_len);
    }
    if (!have_token || w->state == NULL || serial != w->serial || index >= w->n) {
        w->stale++;
        return;
    }
    w->answers++;
    unsigned char *st = w->state + index;
    if (r->kind == TC_ACK_OK || r->kind == TC_ACK_DUPLICATE) {
        if (*st == TC_MSG_ACKED) {
            w->repeats++;
            return;
        }
        if (*st == TC_MSG_SENT)
            w->in_flight--;
        *st = TC_MSG_ACKED;
        w->acked++;
    } else if (*st == TC_MSG_SENT) {
        w->in_flight--;
        *st = TC_MSG_FAILED;
    }
}

/* Splits a control line (without its CRLF) at spaces/tabs: at most `max` fields. Returns how
 * many, or -1 if there are more. */
static inline int tc_ack_fields_of(const char *p, size_t n, const char **f, size_t *fn, int max)
{
    int k = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        if (i == n)
            break;
        size_t start = i;
        while (i < n && p[i] != ' ' && p[i] != '\t')
            i++;
        if (k == max)
            return -1;
        f[k] = p + start;
        fn[k] = i - start;
        k++;
    }
    return k;
}

static inline int tc_ack_op(const char *f, size_t fn, const char *op)
{
    return fn == strlen(op) && memcmp(f, op, fn) == 0;
}

/* Reads server bytes p[0..n). Returns the bytes consumed: every complete answer of subscription
 * w->sid from the start. *next then says what follows: the length of the next frame when it is
 * complete and not ours (the caller hands exactly those bytes to the client library), 0 when
 * nothing follows or the next frame is incomplete (keep it and call again with more bytes), -1
 * when it cannot be read here (the client library decides what it is). */
static inline size_t tc_acks_feed(tc_acks *w, const char *p, size_t n, int64_t *next)
{
    size_t pos = 0;
    *next = 0;
    while (pos < n) {
        const char *line = p + pos;
        size_t avail = n - pos;
        const char *lf = memchr(line, '\n', avail < TC_ACK_MAX_LINE ? avail : TC_ACK_MAX_LINE);
        if (lf == NULL) {
            *next = avail >= TC_ACK_MAX_LINE ? -1 : 0;
            return pos;
        }
        size_t line_n = (size_t)(lf - line) + 1;  /* with CRLF */
        if (line_n < 2 || lf[-1] != '\r') {
            *next = -1;
            return pos;
        }
        /* the operation: the line's first word (nats-py's parser is case-sensitive too) */
        size_t opn = 0;
        while (opn < line_n - 2 && line[opn] != ' ' && line[opn] != '\t')
            opn++;
        int is_msg = tc_ack_op(line, opn, "MSG"), is_hmsg = tc_ack_op(line, opn, "HMSG");
        if (!is_msg && !is_hmsg) {
            /* a one-line operation (PING, PONG, +OK, -ERR, INFO) is the library's; anything
             * else is too, but as unreadable */
            int known = tc_ack_op(line, opn, "PING") || tc_ack_op(line, opn, "PONG")
                        || tc_ack_op(line, opn, "+OK") || tc_ack_op(line, opn, "-ERR")
                        || tc_ack_op(line, opn, "INFO");
            *next = known ? (int64_t)line_n : -1;
            return pos;
        }
        const char *f[6];
        size_t fn[6];
        int k = tc_ack_fields_of(line, line_n - 2, f, fn, 6);
        /* MSG <subject> <sid> [reply] <size> | HMSG <subject> <sid> [reply] <hsize> <size> */
        int base = is_msg ? 4 : 5;
        if (k != base && k != base + 1) {
            *next = -1;
            return pos;
        }
        uint64_t sid, size, hsize = 0;
        if (tc_ack_u64(f[2], fn[2], &sid) || tc_ack_u64(f[k - 1], fn[k - 1], &size)
            || (is_hmsg && tc_ack_u64(f[k - 2], fn[k - 2], &hsize)) || hsize > size
            || size > ((uint64_t)1 << 40)) {
            *next = -1;
            return pos;
        }
        uint64_t frame = (uint64_t)line_n + size + 2;
        if (frame > avail) {
            *next = 0;   /* incomplete: ours or not, wait for the rest */
            return pos;
        }
        const char *payload = line + line_n;
        if (payload[size] != '\r' || payload[size + 1] != '\n') {
            *next = -1;
            return pos;
        }
        if (sid != w->sid || w->sid == 0) {
            *next = (int64_t)frame;
            return pos;
        }
        tc_ack_result r;
        tc_ack_classify(payload, (size_t)hsize, payload + hsize, (size_t)(size - hsize), &r);
        uint64_t serial = 0, index = 0;
        int have = tc_ack_token(w, f[1], fn[1], &serial, &index) == 0;
        if (!have)
            r.kind = TC_ACK_BAD;
        tc_acks_apply(w, have, serial, index, &r);
        pos += (size_t)frame;
    }
    return pos;
}

/* Marks messages [first, last) SENT unless ACKED; returns how many became in flight. */
static inline size_t tc_acks_send(tc_acks *w, size_t first, size_t last)
{
    size_t k = 0;
    if (w->state == NULL)
        return 0;
    if (last > w->n)
        last = w->n;
    for (size_t i = first; i < last; i++) {
        if (w->state[i] != TC_MSG_ACKED && w->state[i] != TC_MSG_SENT) {
            w->state[i] = TC_MSG_SENT;
            k++;
        }
    }
    w->in_flight += k;
    return k;
}

/* Starts an attempt on a batch's state array: whatever is not ACKED is UNSENT again. */
static inline void tc_acks_begin(tc_acks *w, uint64_t serial, unsigned char *state, size_t n)
{
    w->serial = serial;
    w->state = state;
    w->n = n;
    w->in_flight = 0;
    w->acked = 0;
    w->answers = 0;
    for (size_t i = 0; i < n; i++) {
        if (state[i] == TC_MSG_ACKED)
            w->acked++;
        else
            state[i] = TC_MSG_UNSENT;
    }
}

static inline void tc_acks_end(tc_acks *w)
{
    w->state = NULL;
    w->n = 0;
    w->in_flight = 0;
}

#endif
