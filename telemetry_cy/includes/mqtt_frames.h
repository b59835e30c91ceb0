/* MQTT frame reader: the network thread's hot receive path (docs/design.md §1-2).
 *
 * The network thread reads the socket into one big buffer (one recv per readable event) and calls
 * tc_mqtt_parse, which walks every complete packet in place:
 *   - PUBLISH QoS 0/1 (MQTT 3.1.1 and 5; the v5 properties block is skipped) becomes one ring record
 *     (ts, topic, payload, flags = DUP/QoS/RETAIN) written with tc_ring_try_write_flags, and for QoS 1 its packet id is appended
 *     to a pre-built PUBACK blob. No allocation, no Python object, no GIL.
 *   - Every other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, AUTH, PUBREL, PUBLISH QoS 2, ...)
 *     stops the walk and is reported to the caller (tc_mqtt_other), which hands it to paho.
 *   - An incomplete packet at the end stays; tc_mqtt_compact moves it to the front for the next read.
 *
 * Ownership: the reader (buffer, ack blob, counters) belongs to the network thread alone. Only the
 * counters are read by other threads (stats gauges), so they are tc_atomic_u64 written by that one
 * thread with relaxed stores, once per parse call, from the locals in tc_mqtt_counts.
 *
 * Choices:
 *   - QoS 1 is acknowledged after the record is committed to the ring (the caller queues the blob
 *     after the parse returns). A record dropped because the ring is full (ingest_full) or the payload
 *     is too big (oversize) is still acknowledged and counted: the broker cannot hold it for us
 *     without stalling the whole subscription (mosquitto's inflight window would fill and stop all
 *     delivery), and a redelivery would meet the same full ring. The drop is visible in the counters.
 *   - A PUBLISH larger than the whole buffer can never be parsed in place. Rather than failing the
 *     connection (a persistent session would redeliver it after every reconnect, forever), its
 *     header is read (topic length, packet id), it is counted as oversize (and acked for QoS 1), and
 *     its remaining bytes are skipped as they arrive.
 *   - Anything else that can never complete (a non-PUBLISH packet larger than the buffer), a
 *     remaining length with a 5th continuation byte, packet type 0, QoS 3, a QoS 1 packet id of 0,
 *     or lengths that do not add up is a protocol error: the caller drops the connection.
 *   - We never announce a Topic Alias Maximum in CONNECT, so the broker must send whole topics
 *     [MQTT-3.3.2-8]; the properties block is skipped, not interpreted.
 */
#ifndef TC_MQTT_FRAMES_H
#define TC_MQTT_FRAMES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tc_atomic.h"
#include "spsc_ring.h"

#define TC_MQTT_PUBLISH 3
#define TC_MQTT_PUBACK_BYTE 0x40
/* PUBLISH fixed-header flags: bit 3 DUP, bits 2-1 QoS, bit 0 RETAIN [MQTT-3.3.1]. */
#define TC_MQTT_PUBLISH_FLAGS 0x0Fu
/* Smallest QoS 1 PUBLISH: fixed header 2 + topic length 2 + packet id 2 (+1 for v5 properties).
 * Bounds the number of PUBACKs one buffer can produce. */
#define TC_MQTT_MIN_QOS1_PUBLISH 6
/* Largest remaining length encodable in 4 bytes. */
#define TC_MQTT_MAX_REMAINING 268435455u

enum tc_mqtt_rc {
    TC_MQTT_DONE = 0,   /* every complete packet consumed; [pos, end) is an incomplete packet */
    TC_MQTT_OTHER = 1,  /* *other describes a non-PUBLISH (or QoS 2) packet; call again */
    TC_MQTT_ERROR = -1  /* protocol error; *err says why; the stream is unusable */
};

/* Per-call tallies; the caller folds them into the reader's atomics (tc_mqtt_publish_counts). */
typedef struct {
    uint64_t received;      /* PUBLISH QoS 0/1 packets parsed, whatever their fate */
    uint64_t written;       /* records committed to the ring */
    uint64_t payload_bytes; /* payload bytes of the written records */
    uint64_t oversize;      /* payload > max_payload, record > ring max, or packet > buffer */
    uint64_t ingest_full;   /* the ring was full (the ring counts them too, in drops_full) */
} tc_mqtt_counts;

typedef struct {
    unsigned char cmd;      /* the fixed header's first byte (type << 4 | flags) */
    size_t body_off;        /* offset of the variable header in buf */
    size_t body_len;        /* remaining length */
} tc_mqtt_other;

typedef struct {
    unsigned char *buf;     /* receive buffer; [0, fill) holds an incomplete packet between reads */
    size_t cap;
    size_t fill;
    uint64_t skip;          /* bytes of an over-long PUBLISH still to discard from the stream */
    int v5;                 /* 1: MQTT 5 (PUBLISH carries a properties block) */
    size_t max_payload;
    unsigned char *acks;    /* PUBACK blob: 4 bytes per QoS 1 PUBLISH of the current feed */
    size_t ack_cap;         /* in packets */
    size_t n_acks;
    /* gauges: written by the network thread only (relaxed), read by anyone */
    tc_atomic_u64 received;
    tc_atomic_u64 written;
    tc_atomic_u64 payload_bytes;
    tc_atomic_u64 oversize;
    tc_atomic_u64 ingest_full;
    tc_atomic_u64 acked;
    tc_atomic_u64 protocol_errors;
    tc_atomic_u64 bytes_in;
} tc_mqtt_reader;

/* PUBACKs one feed of a full buffer can need: every byte of it could be minimal QoS 1 PUBLISHes,
 * plus the header of one over-long PUBLISH being skipped. */
static inline size_t tc_mqtt_ack_capacity(size_t cap)
{
    return cap / TC_MQTT_MIN_QOS1_PUBLISH + 2;
}

/* buf (cap bytes) and acks (tc_mqtt_ack_capacity(cap) * 4 bytes) are allocated by the caller, once,
 * before the network thread starts; nothing here allocates. */
static inline void tc_mqtt_init(tc_mqtt_reader *rd, unsigned char *buf, size_t cap, int v5,
                                size_t max_payload, unsigned char *acks)
{
    rd->buf = buf;
    rd->cap = cap;
    rd->fill = 0;
    rd->skip = 0;
    rd->v5 = v5 ? 1 : 0;
    rd->max_payload = max_payload;
    rd->acks = acks;
    rd->ack_cap = tc_mqtt_ack_capacity(cap);
    rd->n_acks = 0;
    atomic_init(&rd->received, 0);
    atomic_init(&rd->written, 0);
    atomic_init(&rd->payload_bytes, 0);
    atomic_init(&rd->oversize, 0);
    atomic_init(&rd->ingest_full, 0);
    atomic_init(&rd->acked, 0);
    atomic_init(&rd->protocol_errors, 0);
    atomic_init(&rd->bytes_in, 0);
}

/* A new connection starts a new byte stream: forget the partial packet and any pending skip. */
static inline void tc_mqtt_reset(tc_mqtt_reader *rd)
{
    rd->fill = 0;
    rd->skip = 0;
    rd->n_acks = 0;
}

static inline void tc_mqtt__add(tc_atomic_u64 *c, uint64_t n)
{
    /* single writer (the network thread): load + store is an exact increment */
    if (n)
        tc_store_relaxed_u64(c, tc_load_relaxed_u64(c) + n);
}

static inline void tc_mqtt_publish_counts(tc_mqtt_reader *rd, const tc_mqtt_counts *c)
{
    tc_mqtt__add(&rd->received, c->received);
    tc_mqtt__add(&rd->written, c->written);
    tc_mqtt__add(&rd->payload_bytes, c->payload_bytes);
    tc_mqtt__add(&rd->oversize, c->oversize);
    tc_mqtt__add(&rd->ingest_full, c->ingest_full);
}

static inline void tc_mqtt__ack(tc_mqtt_reader *rd, unsigned pid)
{
    /* n_acks < ack_cap by construction (tc_mqtt_ack_capacity); the check only guards a misuse. */
    if (rd->n_acks < rd->ack_cap) {
        unsigned char *a = rd->acks + 4 * rd->n_acks++;
        a[0] = TC_MQTT_PUBACK_BYTE;
        a[1] = 2;
        a[2] = (unsigned char)(pid >> 8);
        a[3] = (unsigned char)pid;
    }
}

/* Variable byte integer at p[0..avail): 1 and *value, *used set when complete, 0 when more bytes are
 * needed, -1 when a 4th byte still has the continuation bit (malformed). */
static inline int tc_mqtt__varint(const unsigned char *p, size_t avail, uint32_t *value, size_t *used)
{
    uint32_t v = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= avail)
            return 0;
        v |= (uint32_t)(p[i] & 0x7F) << (7 * i);
        if ((p[i] & 0x80) == 0) {
            *value = v;
            *used = i + 1;
            return 1;
        }
    }
    return -1;
}

/* Discard the bytes of an over-long PUBLISH at the front of [*pos, end). */
static inline void tc_mqtt_skip(tc_mqtt_reader *rd, size_t *pos, size_t end)
{
    size_t avail = end - *pos;
    size_t d = rd->skip < avail ? (size_t)rd->skip : avail;
    *pos += d;
    rd->skip -= d;
}

/* Walk the packets in buf[*pos, end). See the enum for the results. The caller rings the ring's
 * doorbell once afterwards when c->written grew. */
static inline int tc_mqtt_parse(tc_mqtt_reader *rd, tc_ring *ring, double ts, size_t *pos,
                                size_t end, tc_mqtt_counts *c, tc_mqtt_other *other,
                                const char **err)
{
    const unsigned char *buf = rd->buf;
    size_t p = *pos;
    int rc = TC_MQTT_DONE;
    if (rd->skip) {
        tc_mqtt_skip(rd, &p, end);
        if (rd->skip) {
            *pos = p;
            return TC_MQTT_DONE;
        }
    }
    while (p < end) {
        const unsigned char *h = buf + p;
        size_t avail = end - p;
        if (avail < 2)
            break;
        uint32_t rl;
        size_t vlen;
        int vr = tc_mqtt__varint(h + 1, avail - 1, &rl, &vlen);
        if (vr < 0) {
            *err = "malformed remaining length (continuation bit set in its 4th byte)";
            rc = TC_MQTT_ERROR;
            break;
        }
        if (vr == 0)
            break;
        unsigned char cmd = h[0];
        unsigned type = cmd >> 4;
        unsigned qos = (cmd >> 1) & 3;
        size_t hdr = 1 + vlen;
        size_t total = hdr + (size_t)rl;
        if (type == 0) {
            *err = "reserved packet type 0";
            rc = TC_MQTT_ERROR;
            break;
        }
        if (type == TC_MQTT_PUBLISH && qos == 3) {
            *err = "PUBLISH with QoS 3";
            rc = TC_MQTT_ERROR;
            break;
        }
        if (type != TC_MQTT_PUBLISH || qos == 2) {
            if (total > avail) {
                if (total > rd->cap) {
                    *err = "packet larger than the receive buffer";
                    rc = TC_MQTT_ERROR;
                }
                break;
            }
            other->cmd = cmd;
            other->body_off = p + hdr;
            other->body_len = rl;
            p += total;
            rc = TC_MQTT_OTHER;
            break;
        }
        /* PUBLISH QoS 0 or 1. Variable header: topic length, topic, [packet id], [v5 properties]. */
        size_t need_id = 2 + (qos ? 2u : 0u);   /* bytes of the variable header up to the packet id */
        if (total > avail) {
            if (total <= rd->cap)
                break;   /* it will fit once the rest arrives */
            /* Over-long: read the header as far as the packet id, then skip the rest. */
            if (avail < hdr + 2)
                break;
            size_t tlen = ((size_t)h[hdr] << 8) | h[hdr + 1];
            size_t need = hdr + need_id + tlen;
            if (need_id + tlen > rl) {
                *err = "PUBLISH topic longer than the packet";
                rc = TC_MQTT_ERROR;
                break;
            }
            if (need > rd->cap) {
                *err = "PUBLISH header larger than the receive buffer";
                rc = TC_MQTT_ERROR;
                break;
            }
            if (avail < need)
                break;
            if (qos) {
                unsigned pid = ((unsigned)h[hdr + 2 + tlen] << 8) | h[hdr + 3 + tlen];
                if (pid == 0) {
                    *err = "PUBLISH QoS 1 with packet id 0";
                    rc = TC_MQTT_ERROR;
                    break;
                }
                tc_mqtt__ack(rd, pid);
            }
            c->received++;
            c->oversize++;
            rd->skip = (uint64_t)(total - avail);
            p = end;
            break;
        }
        const unsigned char *q = h + hdr;
        size_t rem = rl;
        if (rem < need_id) {
            *err = "PUBLISH shorter than its variable header";
            rc = TC_MQTT_ERROR;
            break;
        }
        size_t tlen = ((size_t)q[0] << 8) | q[1];
        if (tlen > rem - need_id) {
            *err = "PUBLISH topic longer than the packet";
            rc = TC_MQTT_ERROR;
            break;
        }
        const unsigned char *topic = q + 2;
        size_t off = 2 + tlen;
        unsigned pid = 0;
        if (qos) {
            pid = ((unsigned)q[off] << 8) | q[off + 1];
            off += 2;
            if (pid == 0) {
                *err = "PUBLISH QoS 1 with packet id 0";
                rc = TC_MQTT_ERROR;
                break;
            }
        }
        if (rd->v5) {
            uint32_t plen;
            size_t pused;
            if (tc_mqtt__varint(q + off, rem - off, &plen, &pused) != 1) {
                *err = "PUBLISH with a malformed properties length";
                rc = TC_MQTT_ERROR;
                break;
            }
            off += pused;
            if (plen > rem - off) {
                *err = "PUBLISH properties longer than the packet";
                rc = TC_MQTT_ERROR;
                break;
            }
            off += plen;
        }
        size_t paylen = rem - off;
        c->received++;
        if (paylen > rd->max_payload) {
            c->oversize++;
        } else {
            /* The fixed header's low nibble (DUP, QoS, RETAIN) rides along in the record's flags:
             * the engine ignores it, the capture recorder keeps QoS and retain. */
            int wr = tc_ring_try_write_flags(ring, ts, cmd & TC_MQTT_PUBLISH_FLAGS, topic, tlen,
                                             q + off, paylen);
            if (wr == TC_RING_OK) {
                c->written++;
                c->payload_bytes += paylen;
            } else if (wr == TC_RING_FULL) {
                c->ingest_full++;
            } else {
                c->oversize++;   /* TC_RING_TOO_BIG: topic + payload exceed the ring's max record */
            }
        }
        /* After the commit inside tc_ring_try_write: the ack never precedes the record. */
        if (qos)
            tc_mqtt__ack(rd, pid);
        p += total;
    }
    *pos = p;
    return rc;
}

/* Keep the incomplete packet [pos, end) for the next read by moving it to the front. */
static inline void tc_mqtt_compact(tc_mqtt_reader *rd, size_t pos, size_t end)
{
    size_t left = end - pos;
    if (left && pos)
        memmove(rd->buf, rd->buf + pos, left);
    rd->fill = left;
}

#endif /* TC_MQTT_FRAMES_H */
