/* The plain-C yardstick for the engine's hot path (perf/engine_vs_c.py builds and runs it).
 *
 * It does the least a C program must do for each reading the engine takes in through push_many:
 * walk a fixed-schema CBOR map {d: text, s: text, v: number, u: text, n: uint}, find the (d, s)
 * key in an open-addressing table, and update that key's one pane (count, sum, min, max, last).
 * No Welford second moment, no first/last by time, no sequence numbers, no drop accounting, no
 * UTF-8 check, no Python: a floor to measure the engine against, not a twin of it.
 *
 * Input: the payload file perf/engine_vs_c.py writes (the same bytes the engine benchmark pushes):
 *   "TCY1", u32 payload count, u32 distinct keys, then count records of (u16 length, payload
 *   bytes), all little-endian.
 * Usage: cloop FILE READINGS_PER_VALUE VALUES [wall|cpu]
 * (cpu: time by this thread's CPU time, as bench_engine.py --clock cpu; default wall)
 * Prints one JSON object: ns per reading of every value (one timed pass over READINGS_PER_VALUE
 * readings, cycling through the payloads in file order), and a checksum that depends on every
 * reading so the compiler cannot drop the work.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NAME_MAX_BYTES 48

typedef struct {
    uint64_t hash;               /* 0 = empty slot */
    uint32_t dlen, slen;
    char name[2 * NAME_MAX_BYTES];  /* device bytes, then sensor bytes */
    uint64_t count;
    double sum, min, max, last;
} slot;

typedef struct {
    const uint8_t *p;
    uint32_t len;
} payload;

static clockid_t timer = CLOCK_MONOTONIC;

static double seconds_now(void)
{
    struct timespec t;
    clock_gettime(timer, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Eight bytes per multiply, the tail gathered byte by byte; the lengths go in too. */
static uint64_t hash_bytes(uint64_t h, const uint8_t *p, uint32_t n)
{
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    for (uint32_t i = 0; i < n; i++) w |= (uint64_t)p[i] << (8 * i);
    h = (h ^ w ^ ((uint64_t)n << 59)) * 0xBF58476D1CE4E5B9ULL;
    return h ^ (h >> 31);
}

static uint64_t key_hash(const uint8_t *d, uint32_t dlen, const uint8_t *s, uint32_t slen)
{
    uint64_t h = hash_bytes(0x243F6A8885A308D3ULL ^ dlen, d, dlen);
    h = hash_bytes(h ^ slen, s, slen);
    return h | 1;                /* never 0: 0 marks an empty slot */
}

/* Big-endian argument of n = 2, 4 or 8 bytes. */
static inline uint64_t be(const uint8_t *p, int n)
{
    uint16_t a;
    uint32_t b;
    uint64_t c;
    switch (n) {
    case 2: memcpy(&a, p, 2); return __builtin_bswap16(a);
    case 4: memcpy(&b, p, 4); return __builtin_bswap32(b);
    default: memcpy(&c, p, 8); return __builtin_bswap64(c);
    }
}

/* One CBOR head: major type and argument (ai < 28; indefinite lengths are not part of the
 * schema). Returns the bytes it took, 0 when truncated or not supported. */
static inline int read_head(const uint8_t *p, const uint8_t *end, int *major, uint64_t *arg)
{
    if (p >= end) return 0;
    *major = p[0] >> 5;
    unsigned ai = p[0] & 31u;
    if (ai < 24) { *arg = ai; return 1; }
    if (ai > 27) return 0;
    int n = 1 << (ai - 24);
    if (end - p - 1 < n) return 0;
    *arg = n == 1 ? p[1] : be(p + 1, n);
    return 1 + n;
}

static double half_to_double(uint64_t h)
{
    int e = (int)((h >> 10) & 31), m = (int)(h & 1023);
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

/* Parses one payload; 1 and the fields when it is a valid reading, 0 otherwise. */
static int parse(const uint8_t *p, const uint8_t *end, const uint8_t **d, uint32_t *dlen,
                 const uint8_t **s, uint32_t *slen, double *v)
{
    int major, n;
    uint64_t pairs, arg;
    unsigned seen = 0;
    if (!(n = read_head(p, end, &major, &pairs)) || major != 5) return 0;
    p += n;
    for (uint64_t i = 0; i < pairs; i++) {
        if (!(n = read_head(p, end, &major, &arg)) || major != 3 || arg > (uint64_t)(end - p - n))
            return 0;
        p += n;
        unsigned key = arg == 1 ? p[0] : 0;
        p += arg;
        if (!(n = read_head(p, end, &major, &arg))) return 0;
        p += n;
        if (major == 3 || major == 2) {
            if (arg > (uint64_t)(end - p)) return 0;
            if (key == 'd' && major == 3) { *d = p; *dlen = (uint32_t)arg; seen |= 1; }
            else if (key == 's' && major == 3) { *s = p; *slen = (uint32_t)arg; seen |= 2; }
            p += arg;
        } else if (key == 'v') {
            if (major == 0) *v = (double)arg;
            else if (major == 1) *v = -1.0 - (double)arg;
            else if (major == 7 && n == 9) memcpy(v, &arg, 8);
            else if (major == 7 && n == 5) {
                uint32_t b = (uint32_t)arg;
                float f;
                memcpy(&f, &b, 4);
                *v = f;
            }
            else if (major == 7 && n == 3) *v = half_to_double(arg);
            else return 0;
            seen |= 4;
        } else if (major != 0) {
            return 0;            /* n is an unsigned integer; nothing else is in the schema */
        }
    }
    return seen == 7 && *dlen <= NAME_MAX_BYTES && *slen <= NAME_MAX_BYTES && p == end;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static payload *load(const char *path, uint32_t *count, uint32_t *keys)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)size);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size || size < 12 ||
        memcmp(buf, "TCY1", 4) != 0) {
        fprintf(stderr, "%s: not a payload file\n", path);
        exit(2);
    }
    fclose(f);
    uint32_t n = le32(buf + 4);
    *keys = le32(buf + 8);
    payload *out = malloc((n ? n : 1) * sizeof(payload));
    size_t at = 12;
    for (uint32_t i = 0; i < n; i++) {
        if (at + 2 > (size_t)size) { fprintf(stderr, "%s: truncated\n", path); exit(2); }
        uint32_t len = (uint32_t)buf[at] | (uint32_t)buf[at + 1] << 8;
        at += 2;
        if (at + len > (size_t)size) { fprintf(stderr, "%s: truncated\n", path); exit(2); }
        out[i].p = buf + at;
        out[i].len = len;
        at += len;
    }
    *count = n;
    return out;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5 || (argc == 5 && strcmp(argv[4], "wall") != 0 &&
                                 strcmp(argv[4], "cpu") != 0)) {
        fprintf(stderr, "usage: %s FILE READINGS_PER_VALUE VALUES [wall|cpu]\n", argv[0]);
        return 2;
    }
    if (argc == 5 && strcmp(argv[4], "cpu") == 0) timer = CLOCK_THREAD_CPUTIME_ID;
    uint32_t count, keys;
    payload *pl = load(argv[1], &count, &keys);
    long per_value = atol(argv[2]), values = atol(argv[3]);
    if (count == 0 || keys == 0 || keys > count || per_value <= 0 || values <= 0) return 2;

    size_t cap = 64;
    while (cap < (size_t)keys * 2) cap <<= 1;    /* at most half full */
    slot *table = calloc(cap, sizeof(slot));
    if (!table) return 2;

    long bad = 0;
    size_t live = 0;
    uint32_t next = 0;
    printf("{\"ns_per_reading\": [");
    for (long val = 0; val < values; val++) {
        double t0 = seconds_now();
        for (long r = 0; r < per_value; r++) {
            const payload *q = &pl[next];
            next = next + 1 == count ? 0 : next + 1;
            const uint8_t *d = NULL, *s = NULL;
            uint32_t dlen = 0, slen = 0;
            double v = 0.0;
            if (!parse(q->p, q->p + q->len, &d, &dlen, &s, &slen, &v)) { bad++; continue; }
            uint64_t h = key_hash(d, dlen, s, slen);
            size_t i = (size_t)h & (cap - 1);
            slot *e;
            for (;;) {
                e = &table[i];
                if (e->hash == 0) {      /* a new key: claim the slot */
                    if (++live > cap / 2) {
                        fprintf(stderr, "%s: more distinct keys than the header says\n", argv[1]);
                        return 2;
                    }
                    e->hash = h;
                    e->dlen = dlen;
                    e->slen = slen;
                    memcpy(e->name, d, dlen);
                    memcpy(e->name + dlen, s, slen);
                    e->min = e->max = v;
                    break;
                }
                if (e->hash == h && e->dlen == dlen && e->slen == slen &&
                    memcmp(e->name, d, dlen) == 0 && memcmp(e->name + dlen, s, slen) == 0)
                    break;
                i = (i + 1) & (cap - 1);
            }
            e->count++;
            e->sum += v;
            if (v < e->min) e->min = v;
            if (v > e->max) e->max = v;
            e->last = v;
        }
        double dt = seconds_now() - t0;
        printf("%s%.3f", val ? ", " : "", dt * 1e9 / (double)per_value);
    }
    double check = 0.0;
    uint64_t readings = 0;
    for (size_t i = 0; i < cap; i++) {
        check += table[i].sum;
        readings += table[i].count;
    }
    printf("], \"readings\": %llu, \"bad\": %ld, \"checksum\": %.6f}\n",
           (unsigned long long)readings, bad, check);
    return 0;
}
