# Declarations of the MQTT frame reader (includes/mqtt_frames.h) and the FrameReader class layout.
#
# Thread rule: a FrameReader belongs to the network thread that reads the socket. Its buffer and its
# PUBACK blob are touched by that thread alone; other threads may only read the counters (relaxed
# atomics, see mqtt_frames.h). It is the ring's single producer: nothing else may write the ring
# while the reader is in use, except on the same thread.

from libc.stdint cimport uint32_t, uint64_t

from telemetry_cy.source._ring cimport ByteRing, tc_atomic_u64, tc_ring


cdef extern from "mqtt_frames.h" nogil:
    enum:
        TC_MQTT_MIN_QOS1_PUBLISH

    enum tc_mqtt_rc:
        TC_MQTT_DONE
        TC_MQTT_OTHER
        TC_MQTT_ERROR

    ctypedef struct tc_mqtt_counts:
        uint64_t received
        uint64_t written
        uint64_t payload_bytes
        uint64_t oversize
        uint64_t ingest_full

    ctypedef struct tc_mqtt_other:
        unsigned char cmd
        size_t body_off
        size_t body_len

    ctypedef struct tc_mqtt_reader:
        unsigned char *buf
        size_t cap
        size_t fill
        uint64_t skip
        int v5
        size_t max_payload
        unsigned char *acks
        size_t ack_cap
        size_t n_acks
        tc_atomic_u64 received
        tc_atomic_u64 written
        tc_atomic_u64 payload_bytes
        tc_atomic_u64 oversize
        tc_atomic_u64 ingest_full
        tc_atomic_u64 acked
        tc_atomic_u64 protocol_errors
        tc_atomic_u64 bytes_in

    size_t tc_mqtt_ack_capacity(size_t cap)
    void tc_mqtt_init(tc_mqtt_reader *rd, unsigned char *buf, size_t cap, int v5,
                      size_t max_payload, unsigned char *acks)
    void tc_mqtt_reset(tc_mqtt_reader *rd)
    void tc_mqtt_publish_counts(tc_mqtt_reader *rd, const tc_mqtt_counts *c)
    void tc_mqtt__add(tc_atomic_u64 *c, uint64_t n)
    int tc_mqtt_parse(tc_mqtt_reader *rd, tc_ring *ring, double ts, size_t *pos, size_t end,
                      tc_mqtt_counts *c, tc_mqtt_other *other, const char **err)
    void tc_mqtt_compact(tc_mqtt_reader *rd, size_t pos, size_t end)


cdef class FrameReader:
    cdef tc_mqtt_reader rd
    # Held for as long as the reader may write into it (see _ring.pxd: lifetime).
    cdef readonly ByteRing ring
    # The receive buffer. A bytearray so that recv_into can fill it through a memoryview; the
    # permanent export in _view also forbids resizing it, so rd.buf stays valid.
    cdef bytearray _buf
    cdef object _view
    cdef unsigned char *_acks      # malloc'd once; PUBACK blob of the current feed
    cdef bint _broken              # after a protocol error, until reset()
    cdef uint64_t _unrung          # records committed by feed(notify=False), not handed off
    cdef int _protocol
    # pump()'s adaptive nap: records per second between reads (smoothed), and the
    # CLOCK_MONOTONIC time of the last read
    cdef double _rate
    cdef double _last_read
    # set by interrupt() (any thread), cleared by pump() when it returns PUMP_WAKE
    cdef tc_atomic_u64 _interrupt

    cdef tuple _finish(self, double ts, size_t pos, size_t end, int rc, tc_mqtt_counts *c,
                       tc_mqtt_other *o, const char *err, bint notify)
