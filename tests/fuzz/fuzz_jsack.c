/* Fuzz target for the JetStream ack reader (includes/tc_wire.h, tc_acks_* and tc_ack_classify):
 * it reads whatever nats-server sends on the emitter's connection, in the emitter's process.
 *
 * Built like the other targets by scripts/sanitize.sh (libFuzzer, or fuzz_driver.c with any
 * compiler) and replayed by tests/test_jetstream_acks.py. The input is copied into a buffer of
 * exactly its size (ASan sees a read one byte past the end). Its first byte chooses a split
 * point; the rest is the server's byte stream. Besides what the sanitizers catch, the target
 * abort()s when:
 *   1. tc_acks_feed consumes more than it was given, or hands over a frame that does not fit;
 *   2. the counters disagree with the state array: in_flight != messages SENT, acked !=
 *      messages ACKED, or an answer count went backwards;
 *   3. reading the stream whole and reading it in two pieces at the split point (an incomplete
 *      frame carried over, as sink/jetstream.py's AckTap does) end in different states, counters
 *      or positions;
 *   4. tc_ack_classify, on the stream as a body and on it cut into header and body, gives a kind
 *      out of range or a description outside the input.
 * The state array starts with every state (unsent, sent, failed, acked) present, so each rule of
 * tc_acks_apply is reached.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tc_wire.h"

#define CHECK(cond, what)                                                                   \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "fuzz_jsack: invariant violated: %s (%s:%d)\n", what, __FILE__, \
                    __LINE__);                                                              \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

#define N_MSGS 64
static const char INBOX[] = "_I.x.";

typedef struct {
    tc_acks w;
    unsigned char state[N_MSGS];
    size_t handed;     /* bytes given to "the library" (whole foreign frames) */
    size_t rest;       /* bytes left unread: incomplete, or unreadable (-1) */
    int unreadable;
} run_t;

static void setup(run_t *r)
{
    memset(r, 0, sizeof *r);
    r->w.sid = 1;
    r->w.inbox = INBOX;
    r->w.inbox_len = sizeof INBOX - 1;
    for (size_t i = 0; i < N_MSGS; i++)
        r->state[i] = (unsigned char)(i % 4);
    tc_acks_begin(&r->w, 7, r->state, N_MSGS);   /* makes the non-ACKED ones UNSENT */
    tc_acks_send(&r->w, 0, N_MSGS / 2);          /* half of them in flight */
    tc_ack_result refused = {TC_ACK_STREAM_FULL, 503, 10077, NULL, 0};
    tc_acks_apply(&r->w, 1, 7, 0, &refused);      /* and one refused */
}

static void check_counters(const run_t *r)
{
    uint64_t sent = 0, acked = 0;
    for (size_t i = 0; i < N_MSGS; i++) {
        CHECK(r->state[i] <= TC_MSG_ACKED, "a state out of range");
        sent += r->state[i] == TC_MSG_SENT;
        acked += r->state[i] == TC_MSG_ACKED;
    }
    CHECK(sent == r->w.in_flight, "in_flight is not the number of SENT messages");
    CHECK(acked == r->w.acked, "acked is not the number of ACKED messages");
    uint64_t kinds = 0;
    for (int k = 0; k < TC_ACK_KINDS; k++)
        kinds += r->w.kinds[k];
    CHECK(kinds == r->w.answers + r->w.stale, "answers + stale != answers read");
}

/* The tap's loop over one buffer: returns the bytes not read (kept for later or unreadable). */
static size_t drive(run_t *r, const char *p, size_t n)
{
    size_t pos = 0;
    while (pos < n) {
        int64_t next;
        uint64_t before = r->w.answers + r->w.stale;
        size_t used = tc_acks_feed(&r->w, p + pos, n - pos, &next);
        CHECK(used <= n - pos, "consumed more than it was given");
        CHECK(r->w.answers + r->w.stale >= before, "an answer count went backwards");
        pos += used;
        check_counters(r);
        if (next > 0) {
            CHECK((uint64_t)next <= n - pos, "a handed-over frame does not fit");
            r->handed += (size_t)next;
            pos += (size_t)next;
        } else {
            if (next < 0)
                r->unreadable = 1;
            return n - pos;
        }
    }
    return 0;
}

static void same(const run_t *a, const run_t *b)
{
    CHECK(memcmp(a->state, b->state, N_MSGS) == 0, "split: states differ");
    CHECK(a->w.in_flight == b->w.in_flight && a->w.acked == b->w.acked
          && a->w.answers == b->w.answers && a->w.stale == b->w.stale
          && a->w.repeats == b->w.repeats, "split: counters differ");
    CHECK(memcmp(a->w.kinds, b->w.kinds, sizeof a->w.kinds) == 0, "split: kinds differ");
    CHECK(a->handed == b->handed && a->rest == b->rest && a->unreadable == b->unreadable,
          "split: what is handed over differs");
}

static void classify_in(const char *p, size_t n, size_t cut)
{
    tc_ack_result r;
    tc_ack_classify(p, cut, p + cut, n - cut, &r);
    CHECK(r.kind >= 0 && r.kind < TC_ACK_KINDS, "classify: kind out of range");
    if (r.desc != NULL)
        CHECK(r.desc >= p + cut && r.desc + r.desc_len <= p + n, "classify: desc outside");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t n = size - 1;
    char *buf = malloc(n ? n : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data + 1, n);
    size_t split = n ? (size_t)data[0] * n / 255 : 0;

    run_t whole, parts;
    setup(&whole);
    whole.rest = drive(&whole, buf, n);

    /* two reads: the first's unread tail (an incomplete frame) is put before the second, as
     * the tap does; after an unreadable frame nothing more is read */
    setup(&parts);
    size_t left = drive(&parts, buf, split);
    if (parts.unreadable || split == n) {
        parts.rest = left + (n - split);
    } else {
        size_t m = left + (n - split);
        char *joined = malloc(m ? m : 1);
        CHECK(joined != NULL, "out of memory");
        memcpy(joined, buf + split - left, m);   /* the tail is the end of the first read */
        parts.rest = drive(&parts, joined, m);
        free(joined);
    }
    /* the unread tail is carried over and read again, so two reads end exactly like one */
    same(&whole, &parts);

    classify_in(buf, n, 0);
    classify_in(buf, n, split);

    tc_acks_end(&whole.w);
    CHECK(whole.w.state == NULL && whole.w.in_flight == 0, "end");
    free(buf);
    return 0;
}
