/* Top offenders in bounded memory: a space-saving summary (Metwally, Agrawal, El Abbadi, "Efficient
 * computation of frequent and top-k elements in data streams", ICDT 2005), weighted.
 *
 * A summary holds at most TC_TOPN_CAP entries (name, count, error). An update of weight w for a
 * name:
 *   - the name has an entry: count += w;
 *   - else, a free entry: (name, w, 0);
 *   - else the entry with the smallest count (the lowest index among equals) is taken over:
 *     error = its count, count += w, name = the new name.
 * Guarantees, with W the total weight offered: for every entry, count - error <= true weight <=
 * count, and error <= W / TC_TOPN_CAP; every name whose true weight is above W / TC_TOPN_CAP has
 * an entry. Names are cut to TC_TOPN_NAME_BYTES at a UTF-8 character boundary (tc_topn_cut), so two
 * names sharing that prefix are one entry.
 *
 * Cost: O(TC_TOPN_CAP) per update at most (a hash compare per slot, and for a takeover a search
 * for the smallest count that is O(1) on average under a flood of new names, see tc_topn_add), no
 * allocation. It runs only for drops, gaps and late readings, never for a good reading.
 * The pure-Python twin is `TopN` in telemetry_cy/engine/_engine_py.py; both keep the same entries in the
 * same slots, so they agree exactly on any stream of updates.
 */
#ifndef TC_TOPN_H
#define TC_TOPN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TC_TOPN_CAP 32
#define TC_TOPN_NAME_BYTES 96

/* Updates sit on the engine's rare paths: keep them out of line and out of the hot code's way. */
#if defined(__GNUC__)
#define TC_TOPN_COLD __attribute__((noinline))
#else
#define TC_TOPN_COLD
#endif

/* Slot i is (name[i][:name_len[i]], count[i], error[i]) for i < n. Each field is its own array so
 * the two scans of an update (hashes, then counts) read 4 cache lines each. */
typedef struct {
    uint32_t n;                     /* slots in use: [0, n) */
    uint32_t min_pos;               /* the takeover search starts here: every slot before it ... */
    uint64_t min_val;               /* ... counts more than this, and no slot counts less */
    uint64_t total;                 /* W: the weight of every update so far */
    uint64_t hash[TC_TOPN_CAP];     /* of the name bytes: a quick mismatch test, nothing else */
    uint64_t count[TC_TOPN_CAP];    /* upper bound of the name's weight since it took the slot ... */
    uint64_t error[TC_TOPN_CAP];    /* ... over-estimated by at most this much */
    uint32_t name_len[TC_TOPN_CAP];
    char name[TC_TOPN_CAP][TC_TOPN_NAME_BYTES];
} tc_topn;

static inline void tc_topn_init(tc_topn *t) {
    t->n = 0;
    t->min_pos = 0;
    t->min_val = 0;
    t->total = 0;
}

/* The length to keep of `len` bytes under a budget of `budget` bytes: the budget, moved back to
 * the start of a UTF-8 character when it falls inside one (at most 3 bytes back, so arbitrary
 * bytes, e.g. a topic, are cut near the budget too). p[budget] must be readable when len > budget. */
static inline size_t tc_topn_cut(const char *p, size_t len, size_t budget) {
    if (len <= budget) return len;
    size_t n = budget;
    for (int back = 0; back < 3 && n > 0 && ((unsigned char)p[n] & 0xC0) == 0x80; back++) n--;
    return n;
}

/* A word at a time; only ever compared with other hashes of this function in this process. */
static inline uint64_t tc_topn_hash(const char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)(unsigned char)p[i] << (8 * i);
    h = (h ^ w) * 0x94D049BB133111EBULL;
    return h ^ (h >> 31);
}

/* Copies a short name a word at a time. Not memcpy: with a size it cannot see, gcc inlines memcpy
 * (and turns plain copy loops into it) as `rep movs`, whose start-up cost was most of an update's
 * time for names of a few dozen bytes. The empty asm keeps the loops as they are written. */
#if defined(__GNUC__)
#define TC_TOPN_KEEP_LOOP(p) __asm__("" : "+r"(p))
#else
#define TC_TOPN_KEEP_LOOP(p) ((void)0)
#endif
static inline void tc_topn_copy(char *dst, const char *src, size_t n) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, src, 8);
        memcpy(dst, &w, 8);
        dst += 8;
        src += 8;
        n -= 8;
        TC_TOPN_KEEP_LOOP(dst);
    }
    while (n > 0) {
        *dst++ = *src++;
        n--;
        TC_TOPN_KEEP_LOOP(dst);
    }
}

/* One update; `name` is already cut (len <= TC_TOPN_NAME_BYTES). */
static TC_TOPN_COLD void tc_topn_add(tc_topn *t, const char *name, size_t len, uint64_t w) {
    uint64_t h = tc_topn_hash(name, len);
    uint32_t i;
    t->total += w;
    for (i = 0; i < t->n; i++) {
        if (t->hash[i] == h && t->name_len[i] == len && memcmp(t->name[i], name, len) == 0) {
            t->count[i] += w;
            return;
        }
    }
    if (t->n < TC_TOPN_CAP) {
        i = t->n++;
        t->count[i] = w;
        t->error[i] = 0;
    } else {
        /* The slot with the smallest count, the lowest among equals. Counts only grow, so the
         * bound (min_pos, min_val) stays true between updates: the first slot from min_pos that
         * counts min_val is the answer, and only when none is left does it take a full scan. A
         * flood of new names (every update a takeover) then costs O(1) per update on average. */
        for (i = t->min_pos; i < TC_TOPN_CAP && t->count[i] != t->min_val; i++) {
        }
        if (i == TC_TOPN_CAP) {
            uint64_t least = t->count[0];
            i = 0;
            for (uint32_t j = 1; j < TC_TOPN_CAP; j++) {
                if (t->count[j] < least) {
                    least = t->count[j];
                    i = j;
                }
            }
            t->min_val = least;
        }
        t->min_pos = i + 1; /* slot i is about to count more than min_val */
        t->error[i] = t->min_val;
        t->count[i] = t->min_val + w;
    }
    t->hash[i] = h;
    t->name_len[i] = (uint32_t)len;
    tc_topn_copy(t->name[i], name, len);
}

/* An update for the name `len` bytes at `p`, cut to the budget. */
static TC_TOPN_COLD void tc_topn_add_name(tc_topn *t, const char *p, size_t len, uint64_t w) {
    tc_topn_add(t, p, tc_topn_cut(p, len, TC_TOPN_NAME_BYTES), w);
}

/* An update for the name "a/b" (device/sensor), cut to the budget. */
static TC_TOPN_COLD void tc_topn_add_pair(tc_topn *t, const char *a, size_t alen, const char *b,
                                    size_t blen, uint64_t w) {
    char buf[TC_TOPN_NAME_BYTES + 1]; /* one byte past the budget: where the cut looks */
    size_t n = alen < sizeof(buf) ? alen : sizeof(buf);
    tc_topn_copy(buf, a, n);
    if (n < sizeof(buf)) buf[n++] = '/';
    size_t m = blen < sizeof(buf) - n ? blen : sizeof(buf) - n;
    tc_topn_copy(buf + n, b, m);
    tc_topn_add(t, buf, tc_topn_cut(buf, alen + 1 + blen, TC_TOPN_NAME_BYTES), w);
}

#endif
