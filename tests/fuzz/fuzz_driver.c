/* A stand-in for libFuzzer's main(), for compilers without -fsanitize=fuzzer (gcc):
 *
 *   cc -std=gnu11 -O1 -g -fsanitize=address,undefined -I telemetry_cy/includes \
 *      tests/fuzz/fuzz_cbor.c tests/fuzz/fuzz_driver.c -o fuzz_cbor
 *   ./fuzz_cbor [-runs=N] [-seed=S] [-max_len=L] [-max_total_time=SECONDS] [-timeout=SECONDS]
 *               CORPUS_DIR_OR_FILE...
 *
 * It replays every corpus file once, then runs N mutated inputs: a corpus entry (or an input
 * that was kept because it was new to the mutator) with 1-8 stacked mutations — bit flips,
 * random or "interesting" bytes (CBOR heads with huge lengths, indefinite/break markers, MQTT
 * remaining-length continuation bytes), inserted/deleted/duplicated ranges, splices with another
 * entry, truncation. No coverage feedback (that is what the libFuzzer build is for); it exists so
 * that the sanitizer job runs everywhere. A hang is caught by alarm(): SIGALRM aborts with the
 * input saved. Exit status 0 = all inputs ran; a crash aborts (the sanitizers print the report)
 * after writing the input to ./crash-<target>-<n>. Options use libFuzzer's spelling, so
 * scripts/sanitize.sh passes the same ones to both builds.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    uint8_t *data;
    size_t len;
} entry;

static entry *corpus;
static size_t n_corpus, cap_corpus;
static const uint8_t *current;
static size_t current_len;

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static void add_entry(const uint8_t *d, size_t n)
{
    if (n_corpus == cap_corpus) {
        cap_corpus = cap_corpus ? 2 * cap_corpus : 256;
        corpus = realloc(corpus, cap_corpus * sizeof *corpus);
        if (!corpus) { perror("realloc"); exit(2); }
    }
    corpus[n_corpus].data = malloc(n ? n : 1);
    if (!corpus[n_corpus].data) { perror("malloc"); exit(2); }
    if (n) memcpy(corpus[n_corpus].data, d, n);
    corpus[n_corpus].len = n;
    n_corpus++;
}

/* Corpus files are replayed whole (up to 1 MiB: a million nested arrays is a fair seed); only
 * the mutants are bounded by -max_len. */
#define REPLAY_MAX ((size_t)1 << 20)

static void load_file(const char *path, size_t max_len)
{
    (void)max_len;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    uint8_t *buf = malloc(REPLAY_MAX);
    size_t n = fread(buf, 1, REPLAY_MAX, f);
    fclose(f);
    add_entry(buf, n);
    free(buf);
}

static void load_path(const char *path, size_t max_len)
{
    struct stat st;
    if (stat(path, &st) != 0) { fprintf(stderr, "no such corpus: %s\n", path); exit(2); }
    if (!S_ISDIR(st.st_mode)) { load_file(path, max_len); return; }
    DIR *dir = opendir(path);
    if (!dir) return;
    struct dirent *e;
    /* sorted order is not needed for correctness; readdir order is fine but not reproducible
     * across file systems, so collect and sort the names */
    char **names = NULL;
    size_t nn = 0, cn = 0;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (nn == cn) { cn = cn ? 2 * cn : 64; names = realloc(names, cn * sizeof *names); }
        size_t L = strlen(path) + strlen(e->d_name) + 2;
        names[nn] = malloc(L);
        snprintf(names[nn], L, "%s/%s", path, e->d_name);
        nn++;
    }
    closedir(dir);
    for (size_t i = 0; i < nn; i++)
        for (size_t j = i + 1; j < nn; j++)
            if (strcmp(names[i], names[j]) > 0) { char *t = names[i]; names[i] = names[j]; names[j] = t; }
    for (size_t i = 0; i < nn; i++) { load_file(names[i], max_len); free(names[i]); }
    free(names);
}

static const char *target_name = "target";

static void save_current(const char *why)
{
    char path[256];
    snprintf(path, sizeof path, "crash-%s-%ld", target_name, (long)getpid());
    FILE *f = fopen(path, "wb");
    if (f) {
        if (current_len) fwrite(current, 1, current_len, f);
        fclose(f);
        fprintf(stderr, "fuzz_driver: %s; input (%zu bytes) saved to %s\n", why, current_len, path);
    }
}

/* the sanitizers' runtimes (gcc and clang alike) call this before exiting on a report */
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static void on_death(void) { save_current("sanitizer report"); }

static void on_signal(int sig)
{
    save_current(sig == SIGALRM ? "timeout (hang)" : "crash");
    signal(sig, SIG_DFL);
    if (sig == SIGALRM) abort();
    raise(sig);
}

static const uint8_t INTERESTING[] = {
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x20, 0x30, 0x32, 0x3f, 0x40, 0x5b,
    0x5f, 0x60, 0x7b, 0x7f, 0x80, 0x9b, 0x9f, 0xa0, 0xa3, 0xbb, 0xbf, 0xc0, 0xc2, 0xd9, 0xd9,
    0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xff, 0x61, 0x64, 0x73, 0x76, 0x75, 0x6e, 0xed, 0xf4, 0xc0,
};

static size_t mutate(uint8_t *d, size_t len, size_t max_len)
{
    int rounds = 1 + (int)below(8);
    for (int r = 0; r < rounds; r++) {
        switch (below(11)) {
        case 0: if (len) d[below(len)] ^= (uint8_t)(1u << below(8)); break;
        case 1: if (len) d[below(len)] = (uint8_t)rnd(); break;
        case 2: if (len) d[below(len)] = INTERESTING[below(sizeof INTERESTING)]; break;
        case 3: /* insert bytes */
            if (len < max_len) {
                size_t at = below(len + 1), k = 1 + below(max_len - len < 8 ? max_len - len : 8);
                memmove(d + at + k, d + at, len - at);
                for (size_t i = 0; i < k; i++)
                    d[at + i] = below(2) ? INTERESTING[below(sizeof INTERESTING)] : (uint8_t)rnd();
                len += k;
            }
            break;
        case 4: /* delete a range */
            if (len) {
                size_t at = below(len), k = 1 + below(len - at < 16 ? len - at : 16);
                memmove(d + at, d + at + k, len - at - k);
                len -= k;
            }
            break;
        case 5: /* duplicate a range (nesting, repeated packets) */
            if (len && len < max_len) {
                size_t at = below(len), k = 1 + below(len - at);
                if (k > max_len - len) k = max_len - len;
                memmove(d + at + k, d + at, len - at);   /* [at, at+k) still holds the bytes */
                len += k;
            }
            break;
        case 6: /* splice with another corpus entry */
            if (n_corpus) {
                const entry *o = &corpus[below(n_corpus)];
                size_t at = below(len + 1), from = below(o->len + 1);
                size_t k = o->len - from;
                if (k > max_len - at) k = max_len - at;
                memcpy(d + at, o->data + from, k);
                len = at + k;
            }
            break;
        case 7: /* truncate */
            if (len) len = below(len);
            break;
        case 8: /* big-endian length fields set to extremes */
            if (len >= 3) {
                size_t at = below(len - 2);
                uint8_t v = below(2) ? 0xff : 0x00;
                d[at] = below(2) ? 0x1b : 0x5b;
                for (size_t i = at + 1; i < len && i < at + 9; i++) d[i] = v;
            }
            break;
        case 9: /* add/subtract a small number */
            if (len) { size_t at = below(len); d[at] = (uint8_t)(d[at] + (int)below(9) - 4); }
            break;
        default: /* repeat one byte (deep nesting: 0x81 0x81 ... or 0x9f 0x9f ...) */
            if (len < max_len) {
                size_t at = below(len + 1), k = 1 + below(max_len - len < 600 ? max_len - len : 600);
                uint8_t b = len ? d[below(len)] : 0x81;
                memmove(d + at + k, d + at, len - at);
                memset(d + at, b, k);
                len += k;
            }
            break;
        }
    }
    return len;
}

int main(int argc, char **argv)
{
    unsigned long long runs = 100000, seed = 1;
    size_t max_len = 4096;
    double max_time = 0;
    unsigned timeout = 10;
    const char *slash = strrchr(argv[0], '/');
    target_name = slash ? slash + 1 : argv[0];
    for (int i = 1; i < argc; i++) {
        if (sscanf(argv[i], "-runs=%llu", &runs) == 1) continue;
        if (sscanf(argv[i], "-seed=%llu", &seed) == 1) continue;
        if (sscanf(argv[i], "-max_len=%zu", &max_len) == 1) continue;
        if (sscanf(argv[i], "-max_total_time=%lf", &max_time) == 1) continue;
        if (sscanf(argv[i], "-timeout=%u", &timeout) == 1) continue;
        if (argv[i][0] == '-') continue;   /* other libFuzzer flags: ignored */
        load_path(argv[i], max_len);
    }
    rng_state ^= seed * 0x9E3779B97F4A7C15ull;
    if (!rng_state) rng_state = 1;
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(on_death);
    signal(SIGALRM, on_signal);
    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGFPE, on_signal);
    signal(SIGABRT, on_signal);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t seeds = n_corpus;
    for (size_t i = 0; i < seeds; i++) {
        current = corpus[i].data;
        current_len = corpus[i].len;
        alarm(timeout);
        LLVMFuzzerTestOneInput(current, current_len);
    }
    alarm(0);
    fprintf(stderr, "#%zu replayed the corpus (%zu inputs)\n", seeds, seeds);

    uint8_t *buf = malloc(max_len ? max_len : 1);
    uint8_t *exact = NULL;
    unsigned long long done = 0;
    if (!n_corpus) add_entry((const uint8_t *)"", 0);
    for (; done < runs; done++) {
        const entry *base = &corpus[below(n_corpus)];
        size_t len = base->len < max_len ? base->len : max_len;
        memcpy(buf, base->data, len);
        len = mutate(buf, len, max_len);
        /* exact-size copy, so ASan sees a read past the end of the input */
        exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        current = exact;
        current_len = len;
        alarm(timeout);
        LLVMFuzzerTestOneInput(exact, len);
        alarm(0);
        /* keep some mutants as bases, so mutations stack up over time (bounded pool) */
        if (n_corpus < seeds + 4096 && below(64) == 0) add_entry(exact, len);
        free(exact);
        if ((done & 0x3fff) == 0 && max_time > 0) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if ((double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9 > max_time) {
                done++;
                break;
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    fprintf(stderr, "Done %llu runs in %.1f second(s) (%.0f exec/s), corpus %zu, seed %llu\n",
            done, secs, secs > 0 ? done / secs : 0.0, seeds, seed);
    free(buf);
    for (size_t i = 0; i < n_corpus; i++) free(corpus[i].data);
    free(corpus);
    return 0;
}
