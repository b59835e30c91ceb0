/* Fuzz target for includes/mqtt_frames.h (the MQTT frame reader of the network thread).
 *
 * Built like fuzz_cbor.c (see there and scripts/sanitize.sh). An input is
 *
 *   byte 0   configuration: bits 0-1 receive buffer (64, 256, 4096, 65536 bytes), bit 2 MQTT 5,
 *            bits 3-4 max payload (0, 16, 200, 65536), bits 5-6 ring (64, 512, 4096, 65536),
 *            bit 7: the consumer drains the ring after every read (else only when asked)
 *   byte 1   seed of the read sizes (how the stream is cut into socket reads)
 *   rest     the byte stream from the broker
 *
 * and is replayed exactly as MqttSource does it: recv into writable() (the read size chosen by
 * a small PRNG seeded by byte 1, at most the free space), tc_mqtt_parse until DONE or ERROR with
 * the OTHER packets collected, counters folded, acks taken, compact. A protocol error ends the
 * connection: the reader is reset and the rest of the stream is a new connection. Records are
 * drained from the ring and checked. Besides ASan/UBSan (the receive buffer and the PUBACK blob
 * are heap blocks of exactly their size), abort() when:
 *   - received != written + oversize + ingest_full for a parse call, or totals disagree;
 *   - an OTHER packet's body is outside [0, end) or is a PUBLISH QoS 0/1;
 *   - more PUBACKs than ack_capacity, or a PUBACK that is not 40 02 with a non-zero packet id;
 *   - fill >= cap after compact (the next recv_into would get an empty buffer), pos > end;
 *   - a ring record whose topic/payload lengths do not add up, or a payload above max_payload;
 *   - a ring record count different from `written`;
 *   - with the 64 KiB buffer (every fuzz input fits in it), the packets, PUBACK packet ids,
 *     records (topic and payload bytes) and counters differ from those of an independent
 *     reference parser written here from the MQTT spec (compared up to the first protocol error).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt_frames.h"

#define CHECK(cond, what)                                                                \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_frames: invariant violated: %s (%s:%d)\n", what, __FILE__, \
                    __LINE__);                                                           \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static const size_t BUF_SIZES[4] = {64, 256, 4096, 65536};
static const size_t MAX_PAYLOADS[4] = {0, 16, 200, 65536};
static const size_t RING_SIZES[4] = {64, 512, 4096, 65536};

/* ---- an independent reference parser (whole stream at once, no buffer limits) ---------------- */

typedef struct { size_t topic_off, topic_len, payload_off, payload_len; } ref_rec;

typedef struct {
    ref_rec *recs; size_t n_recs;        /* PUBLISH 0/1 that fit max_payload and the ring */
    unsigned *pids; size_t n_pids;       /* PUBACKs, in order */
    unsigned char *other_cmd; size_t *other_off, *other_len; size_t n_other;
    uint64_t received, oversize;
    int error;                           /* a protocol error ends the stream */
} ref_out;

/* 1 complete, 0 needs more, -1 malformed (as MQTT's variable byte integer) */
static int ref_varint(const uint8_t *p, size_t avail, uint32_t *v, size_t *used)
{
    uint32_t x = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= avail) return 0;
        x |= (uint32_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) { *v = x; *used = i + 1; return 1; }
    }
    return -1;
}

static void ref_parse(const uint8_t *s, size_t len, size_t cap, int v5, size_t max_payload,
                      size_t max_record, ref_out *o)
{
    size_t pos = 0;
    while (pos < len) {
        size_t avail = len - pos;
        if (avail < 2) return;
        uint32_t rl;
        size_t vlen;
        int vr = ref_varint(s + pos + 1, avail - 1, &rl, &vlen);
        if (vr < 0) { o->error = 1; return; }
        if (vr == 0) return;
        unsigned cmd = s[pos], type = cmd >> 4, qos = (cmd >> 1) & 3;
        if (type == 0 || (type == 3 && qos == 3)) { o->error = 1; return; }
        size_t hdr = 1 + vlen;
        size_t need = 2 + (qos ? 2 : 0);
        const uint8_t *b = s + pos + hdr;
        if ((uint64_t)hdr + rl > cap) {
            /* can never be whole in the buffer: a protocol error, except a PUBLISH 0/1, which is
             * counted as oversize (and acknowledged) from its header and then skipped */
            if (type != 3 || qos == 2) { o->error = 1; return; }
            if (avail < hdr + 2) return;
            size_t tlen = ((size_t)b[0] << 8) | b[1];
            if (need + tlen > rl || hdr + need + tlen > cap) { o->error = 1; return; }
            if (avail < hdr + need + tlen) return;
            if (qos) {
                unsigned pid = ((unsigned)b[2 + tlen] << 8) | b[3 + tlen];
                if (pid == 0) { o->error = 1; return; }
                o->pids[o->n_pids++] = pid;
            }
            o->received++;
            o->oversize++;
            return;   /* the rest of the stream belongs to this packet */
        }
        if ((uint64_t)hdr + rl > avail) return;          /* incomplete */
        if (type != 3 || qos == 2) {
            o->other_cmd[o->n_other] = (unsigned char)cmd;
            o->other_off[o->n_other] = pos + hdr;
            o->other_len[o->n_other++] = rl;
            pos += hdr + rl;
            continue;
        }
        if (rl < need) { o->error = 1; return; }
        size_t tlen = ((size_t)b[0] << 8) | b[1];
        if (tlen + need > rl) { o->error = 1; return; }
        size_t off = 2 + tlen;
        unsigned pid = 0;
        if (qos) {
            pid = ((unsigned)b[off] << 8) | b[off + 1];
            off += 2;
            if (pid == 0) { o->error = 1; return; }
        }
        if (v5) {
            uint32_t plen;
            size_t used;
            if (ref_varint(b + off, rl - off, &plen, &used) != 1) { o->error = 1; return; }
            off += used;
            if (plen > rl - off) { o->error = 1; return; }
            off += plen;
        }
        size_t paylen = rl - off;
        o->received++;
        if (paylen > max_payload || tc_ring_record_size(tlen, paylen) > max_record) {
            o->oversize++;
        } else {
            ref_rec *r = &o->recs[o->n_recs++];
            r->topic_off = pos + hdr + 2;
            r->topic_len = tlen;
            r->payload_off = pos + hdr + off;
            r->payload_len = paylen;
        }
        if (qos) o->pids[o->n_pids++] = pid;
        pos += hdr + rl;
    }
}

/* ---- the target ---------------------------------------------------------------------------- */

typedef struct {
    const ref_out *ref;       /* NULL: no comparison */
    const uint8_t *stream;
    size_t next;              /* index of the next expected record */
    int mismatch_ok;          /* records may be missing (ingest_full): skip the comparison */
} cmp_state;

static uint64_t drain(tc_ring *ring, size_t max_payload, cmp_state *cmp)
{
    uint64_t n = 0;
    tc_ring_view v;
    while (tc_ring_peek(ring, &v)) {
        CHECK(v.size >= TC_RING_HEADER_SIZE && v.size % TC_RING_ALIGN == 0, "record size");
        CHECK(tc_ring_record_size(v.topic_len, v.payload_len) == v.size, "record lengths");
        CHECK(v.payload_len <= max_payload, "payload above max_payload in the ring");
        CHECK(v.topic_len <= 65535, "topic longer than MQTT allows");
        CHECK(v.ts == 1234.5, "timestamp");
        /* touch the bytes: ASan checks they are inside the ring allocation */
        volatile unsigned char sink = 0;
        if (v.topic_len) sink ^= v.topic[v.topic_len - 1];
        if (v.payload_len) sink ^= v.payload[v.payload_len - 1];
        (void)sink;
        if (cmp && cmp->ref && !cmp->mismatch_ok) {
            CHECK(cmp->next < cmp->ref->n_recs, "a record the reference does not have");
            const ref_rec *r = &cmp->ref->recs[cmp->next++];
            CHECK(r->topic_len == v.topic_len && r->payload_len == v.payload_len,
                  "record lengths differ from the reference");
            CHECK(memcmp(cmp->stream + r->topic_off, v.topic, v.topic_len) == 0,
                  "record topic differs from the reference");
            CHECK(v.payload_len == 0
                  || memcmp(cmp->stream + r->payload_off, v.payload, v.payload_len) == 0,
                  "record payload differs from the reference");
        }
        tc_ring_consume(ring, &v);
        n++;
    }
    tc_ring_release(ring);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    uint8_t conf = data[0];
    uint32_t rng = 0x9e3779b9u ^ ((uint32_t)data[1] * 0x01000193u);
    const uint8_t *stream = data + 2;
    size_t left = size - 2;

    size_t cap = BUF_SIZES[conf & 3];
    int v5 = (conf >> 2) & 1;
    size_t max_payload = MAX_PAYLOADS[(conf >> 3) & 3];
    size_t ring_cap = RING_SIZES[(conf >> 5) & 3];
    int drain_always = conf >> 7;

    tc_ring *ring = NULL;
    CHECK(tc_ring_create(&ring, ring_cap) == TC_RING_OK, "ring");
    unsigned char *buf = (unsigned char *)malloc(cap);
    size_t ack_cap = tc_mqtt_ack_capacity(cap);
    unsigned char *acks = (unsigned char *)malloc(ack_cap * 4);
    CHECK(buf && acks, "malloc");
    tc_mqtt_reader rd;
    tc_mqtt_init(&rd, buf, cap, v5, max_payload, acks);

    /* the reference comparison: with the 64 KiB buffer no fuzz input has a packet that does not
     * fit, so the reader's result must be the plain MQTT parse; compared up to the first error */
    ref_out ref;
    memset(&ref, 0, sizeof ref);
    cmp_state cmp = {NULL, stream, 0, 0};
    size_t slots = left / 2 + 1;
    int compare = cap == 65536 && left <= cap;
    if (compare) {
        ref.recs = malloc(slots * sizeof *ref.recs);
        ref.pids = malloc(slots * sizeof *ref.pids);
        ref.other_cmd = malloc(slots);
        ref.other_off = malloc(slots * sizeof *ref.other_off);
        ref.other_len = malloc(slots * sizeof *ref.other_len);
        CHECK(ref.recs && ref.pids && ref.other_cmd && ref.other_off && ref.other_len, "malloc");
        ref_parse(stream, left, cap, v5, max_payload, tc_ring_max_record(ring), &ref);
        cmp.ref = &ref;
    }
    const uint8_t *stream0 = stream;
    size_t got_pids = 0, got_other = 0;
    int stopped_by_error = 0;

    uint64_t written_total = 0, drained_total = 0;
    uint64_t received_total = 0, oversize_total = 0, full_total = 0;
    unsigned reads = 0;
    while (left > 0 && reads < 100000) {
        reads++;
        /* one "recv_into(writable())": 1..free bytes, sizes from the PRNG, often small */
        CHECK(rd.fill < rd.cap, "no room for the next read");
        size_t room = rd.cap - rd.fill;
        rng = rng * 1664525u + 1013904223u;
        size_t want = (rng >> 8) % 4 == 0 ? room : 1 + (rng >> 12) % 97;
        size_t n = want < room ? want : room;
        if (n > left) n = left;
        memcpy(rd.buf + rd.fill, stream, n);
        stream += n;
        left -= n;

        tc_mqtt_counts c;
        memset(&c, 0, sizeof c);
        tc_mqtt_other o;
        const char *err = NULL;
        size_t pos = 0, end = rd.fill + n;
        rd.n_acks = 0;
        int rc;
        unsigned others = 0;
        for (;;) {
            rc = tc_mqtt_parse(&rd, ring, 1234.5, &pos, end, &c, &o, &err);
            CHECK(pos <= end, "pos past end");
            if (rc != TC_MQTT_OTHER) break;
            others++;
            CHECK(others <= end, "OTHER loop does not advance");
            CHECK(o.body_off <= end && o.body_len <= end - o.body_off, "OTHER body outside");
            unsigned type = o.cmd >> 4, qos = (o.cmd >> 1) & 3;
            CHECK(type != 0 && !(type == TC_MQTT_PUBLISH && qos < 2), "OTHER is a PUBLISH 0/1");
            if (o.body_len) {
                volatile unsigned char sink = rd.buf[o.body_off + o.body_len - 1];
                (void)sink;
            }
            if (compare) {
                CHECK(got_other < ref.n_other, "a packet the reference does not have");
                CHECK(ref.other_cmd[got_other] == o.cmd && ref.other_len[got_other] == o.body_len
                      && memcmp(stream0 + ref.other_off[got_other], rd.buf + o.body_off,
                                o.body_len) == 0, "packet differs from the reference");
                got_other++;
            }
        }
        CHECK(rc == TC_MQTT_DONE || rc == TC_MQTT_ERROR, "parse result");
        CHECK(rc != TC_MQTT_ERROR || err != NULL, "error without a reason");
        CHECK(c.received == c.written + c.oversize + c.ingest_full, "per-call balance");
        CHECK(rd.n_acks <= ack_cap, "acks beyond capacity");
        for (size_t i = 0; i < rd.n_acks; i++) {
            const unsigned char *a = acks + 4 * i;
            CHECK(a[0] == 0x40 && a[1] == 2 && (a[2] | a[3]) != 0, "PUBACK bytes");
            if (compare) {
                CHECK(got_pids < ref.n_pids, "a PUBACK the reference does not have");
                CHECK(ref.pids[got_pids++] == (((unsigned)a[2] << 8) | a[3]),
                      "PUBACK packet id differs from the reference");
            }
        }
        tc_mqtt_publish_counts(&rd, &c);
        written_total += c.written;
        received_total += c.received;
        oversize_total += c.oversize;
        full_total += c.ingest_full;
        if (c.ingest_full) cmp.mismatch_ok = 1;   /* some records were (rightly) dropped */
        if (rc == TC_MQTT_ERROR && compare) {
            stopped_by_error = 1;
            break;                        /* the comparison ends at the first error */
        }
        if (rc == TC_MQTT_ERROR) {
            tc_mqtt_reset(&rd);           /* the connection is dropped; a new one starts */
        } else {
            tc_mqtt_compact(&rd, pos, end);
            CHECK(rd.fill < rd.cap, "compact left a full buffer");
        }
        if (drain_always || (rng & 0x300) == 0)
            drained_total += drain(ring, max_payload, &cmp);
    }
    drained_total += drain(ring, max_payload, &cmp);
    if (compare) {
        CHECK(stopped_by_error == ref.error, "protocol error differs from the reference");
        CHECK(got_pids == ref.n_pids && got_other == ref.n_other, "fewer packets than the reference");
        CHECK(received_total == ref.received && oversize_total == ref.oversize,
              "counters differ from the reference");
        CHECK(cmp.mismatch_ok || cmp.next == ref.n_recs, "fewer records than the reference");
        free(ref.recs); free(ref.pids); free(ref.other_cmd); free(ref.other_off);
        free(ref.other_len);
    }
    CHECK(drained_total == written_total, "ring records != written");
    CHECK(tc_load_relaxed_u64(&rd.written) == written_total, "written gauge");
    CHECK(tc_load_relaxed_u64(&rd.received) == received_total, "received gauge");
    CHECK(tc_load_relaxed_u64(&rd.oversize) == oversize_total, "oversize gauge");
    CHECK(tc_load_relaxed_u64(&rd.ingest_full) == full_total, "ingest_full gauge");
    CHECK(tc_ring_drops_full(ring) == full_total, "ring drops != ingest_full");

    free(acks);
    free(buf);
    tc_ring_destroy(ring);
    return 0;
}
