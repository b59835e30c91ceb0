/* Fuzz target for includes/cbor_reader.h (the fixed-schema CBOR payload reader).
 *
 * Built two ways by scripts/sanitize.sh:
 *   clang -fsanitize=fuzzer,address,undefined ... fuzz_cbor.c          (libFuzzer, coverage-guided)
 *   cc -fsanitize=address,undefined ... fuzz_cbor.c fuzz_driver.c      (any compiler: corpus replay
 *                                                                       plus a seeded mutator)
 *
 * Each input is one payload. Besides what ASan/UBSan catch (the payload is copied into a buffer
 * of exactly its size, so a read one byte past the end is a heap-buffer-overflow; the readings
 * array is exactly `cap` entries), the target checks, and abort()s on a violation:
 *   1. tc_cbor_skip agrees exactly with an independent, recursive well-formedness checker
 *      written here from RFC 8949 (with the depth rule of docs/input.md);
 *   2. tc_decode_payload: malformed => DECODE_ERROR; OK or FALLBACK => well-formed; the result is
 *      one of the documented codes; no readings and zero counters unless OK;
 *   3. every reading points inside the payload, has names of 1..max_name_bytes bytes of strictly
 *      valid UTF-8 (checked by a second, independent validator), a unit within bounds, a finite
 *      value; readings + mismatches + non-finite never exceed the elements that can fit;
 *   4. a cap one too small gives CAP_TOO_SMALL and writes nothing;
 *   5. the same input with max_name_bytes = 4 never yields a name longer than 4 bytes, and gives
 *      the same payload-level answer (decode error or not) as with 256.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbor_reader.h"

#define CHECK(cond, what)                                                              \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "fuzz_cbor: invariant violated: %s (%s:%d)\n", what, __FILE__, \
                    __LINE__);                                                         \
            abort();                                                                   \
        }                                                                              \
    } while (0)

/* ---- an independent well-formedness checker (recursive; depth bounded by the rule) ---------- */

typedef struct {
    const uint8_t *p, *end;
} wf_cur;

/* returns 1 with (major, ai, arg), 0 when truncated or reserved */
static int wf_head(wf_cur *c, int *major, int *ai, uint64_t *arg)
{
    if (c->p >= c->end) return 0;
    uint8_t b = *c->p++;
    *major = b >> 5;
    *ai = b & 31;
    if (*ai < 24) { *arg = (uint64_t)*ai; return 1; }
    if (*ai >= 28 && *ai <= 30) return 0;
    if (*ai == 31) {
        *arg = 0;
        return !(*major == 0 || *major == 1 || *major == 6);
    }
    int n = 1 << (*ai - 24);
    if (c->end - c->p < n) return 0;
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | c->p[i];
    c->p += n;
    *arg = v;
    if (*major == 7 && *ai == 24 && v < 32) return 0;
    return 1;
}

/* One data item at `depth` (the containers and tags enclosing it). A container or tag that
 * encloses something (definite non-empty, any indefinite, any tag) needs depth < 256. */
static int wf_item(wf_cur *c, int depth);

static int wf_is_break(wf_cur *c)
{
    return c->p < c->end && *c->p == 0xff;
}

static int wf_item(wf_cur *c, int depth)
{
    int major, ai;
    uint64_t arg;
    if (!wf_head(c, &major, &ai, &arg)) return 0;
    switch (major) {
    case 0: case 1:
        return 1;
    case 2: case 3:
        if (ai == 31) {
            for (;;) {
                if (wf_is_break(c)) { c->p++; return 1; }
                int m2, a2;
                uint64_t n2;
                if (!wf_head(c, &m2, &a2, &n2)) return 0;
                if (m2 != major || a2 == 31) return 0;
                if (n2 > (uint64_t)(c->end - c->p)) return 0;
                c->p += n2;
            }
        }
        if (arg > (uint64_t)(c->end - c->p)) return 0;
        c->p += arg;
        return 1;
    case 4: case 5: {
        if (ai != 31 && arg == 0) return 1;
        if (depth >= TC_CBOR_MAX_DEPTH) return 0;
        if (ai == 31) {
            for (;;) {
                if (wf_is_break(c)) { c->p++; return 1; }
                if (!wf_item(c, depth + 1)) return 0;
                if (major == 5) {
                    if (wf_is_break(c)) return 0;   /* a key without its value */
                    if (!wf_item(c, depth + 1)) return 0;
                }
            }
        }
        /* each item takes at least a byte: a count beyond the bytes left is malformed */
        uint64_t items = arg;
        if (items > (uint64_t)(c->end - c->p)) return 0;
        if (major == 5) {
            if (items > (uint64_t)(c->end - c->p) / 2) return 0;
            items *= 2;
        }
        for (uint64_t i = 0; i < items; i++)
            if (!wf_item(c, depth + 1)) return 0;
        return 1;
    }
    case 6:
        if (depth >= TC_CBOR_MAX_DEPTH) return 0;
        return wf_item(c, depth + 1);
    default: /* 7 */
        return ai != 31;   /* a break is not an item */
    }
}

static int wf_payload(const uint8_t *buf, size_t len)
{
    wf_cur c = {buf, buf + len};
    if (len == 0) return 0;
    return wf_item(&c, 0) && c.p == c.end;
}

/* ---- an independent strict UTF-8 validator (decode and check the code point) ---------------- */

static int utf8_strict(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k;
        uint8_t b = s[i];
        if (b < 0x80) { i++; continue; }
        else if ((b & 0xe0) == 0xc0) { cp = b & 0x1f; k = 1; }
        else if ((b & 0xf0) == 0xe0) { cp = b & 0x0f; k = 2; }
        else if ((b & 0xf8) == 0xf0) { cp = b & 0x07; k = 3; }
        else return 0;
        if (n - i - 1 < k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000))
            return 0;   /* overlong */
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += k + 1;
    }
    return 1;
}

/* ---- the target ----------------------------------------------------------------------------- */

static int in_buf(const uint8_t *buf, size_t len, const char *p, size_t n)
{
    const uint8_t *q = (const uint8_t *)p;
    return q >= buf && q <= buf + len && n <= (size_t)(buf + len - q);
}

static int decode_checked(const uint8_t *buf, size_t len, uint32_t max_name, int wf)
{
    size_t cap = len / TC_MIN_READING_BYTES + 1;
    tc_reading *rd = (tc_reading *)malloc(cap * sizeof *rd);
    CHECK(rd != NULL, "malloc");
    tc_decoded out;
    out.readings = rd;
    out.cap = cap;
    int r = tc_decode_payload(buf, len, max_name, &out);
    CHECK(r == TC_PAYLOAD_OK || r == TC_PAYLOAD_DECODE_ERROR || r == TC_PAYLOAD_FALLBACK,
          "result code");
    /* malformed => decode_error (a duplicate key makes a well-formed payload one too) */
    if (!wf) CHECK(r == TC_PAYLOAD_DECODE_ERROR, "malformed payload not reported as decode_error");
    if (r != TC_PAYLOAD_OK) {
        CHECK(out.n_readings == 0 && out.schema_mismatch == 0 && out.non_finite == 0,
              "readings or counts left on a non-OK result");
    } else {
        CHECK(out.n_readings <= cap, "more readings than cap");
        /* every counted element takes at least one byte of the payload */
        CHECK(out.n_readings + out.schema_mismatch + out.non_finite <= len, "element count");
        for (size_t i = 0; i < out.n_readings; i++) {
            const tc_reading *x = &rd[i];
            CHECK(x->device_len >= 1 && x->device_len <= max_name, "device length");
            CHECK(x->sensor_len >= 1 && x->sensor_len <= max_name, "sensor length");
            CHECK(in_buf(buf, len, x->device, x->device_len), "device outside the payload");
            CHECK(in_buf(buf, len, x->sensor, x->sensor_len), "sensor outside the payload");
            CHECK(utf8_strict((const uint8_t *)x->device, x->device_len), "device UTF-8");
            CHECK(utf8_strict((const uint8_t *)x->sensor, x->sensor_len), "sensor UTF-8");
            if (x->unit == NULL) {
                CHECK(x->unit_len == 0, "unit length without unit");
            } else {
                CHECK(x->unit_len <= max_name, "unit length");
                CHECK(in_buf(buf, len, x->unit, x->unit_len), "unit outside the payload");
                CHECK(utf8_strict((const uint8_t *)x->unit, x->unit_len), "unit UTF-8");
            }
            CHECK(isfinite(x->value), "non-finite value accepted");
            CHECK(x->has_seq == 0 || x->has_seq == 1, "has_seq");
        }
    }
    /* one entry too few: refused up front, nothing written */
    if (cap > 0) {
        tc_decoded small;
        small.readings = rd;
        small.cap = cap - 1;
        CHECK(tc_decode_payload(buf, len, max_name, &small) == TC_PAYLOAD_CAP_TOO_SMALL,
              "cap too small not reported");
        CHECK(small.n_readings == 0, "readings written with a cap too small");
    }
    free(rd);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exact-size copy: ASan sees any read past the end; len 0 gets a 1-byte allocation */
    uint8_t *buf = (uint8_t *)malloc(size ? size : 1);
    if (buf == NULL) return 0;
    if (size) memcpy(buf, data, size);

    int wf = wf_payload(buf, size);
    if (size) {
        tc_cbor_cur c = {buf, buf + size};
        int ok = tc_cbor_skip(&c, 0);
        CHECK((ok && c.p == c.end) == wf, "tc_cbor_skip disagrees with the reference checker");
        CHECK(c.p >= buf && c.p <= buf + size, "cursor out of bounds");
    }
    int r256 = decode_checked(buf, size, 256, wf);
    int r4 = decode_checked(buf, size, 4, wf);
    CHECK((r256 == TC_PAYLOAD_DECODE_ERROR) == (r4 == TC_PAYLOAD_DECODE_ERROR),
          "max_name_bytes changed the payload-level answer");
    free(buf);
    return 0;
}
