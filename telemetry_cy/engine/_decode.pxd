# C declarations of the fixed-schema CBOR payload reader (includes/cbor_reader.h), for
# `from telemetry_cy.engine._decode cimport ...`. Everything here is nogil: the engine calls
# tc_decode_payload inside `with nogil:` on its own thread; the strings of a tc_reading point into
# the payload buffer, so the buffer must outlive every use of the readings.

from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef extern from "cbor_reader.h" nogil:
    enum:
        TC_CBOR_MAX_DEPTH
        TC_CBOR_MAX_READ_KEYS
        TC_MIN_READING_BYTES

    enum:
        TC_PAYLOAD_OK
        TC_PAYLOAD_DECODE_ERROR
        TC_PAYLOAD_FALLBACK
        TC_PAYLOAD_CAP_TOO_SMALL

    ctypedef struct tc_reading:
        const char *device
        uint32_t device_len
        const char *sensor
        uint32_t sensor_len
        const char *unit        # NULL when the reading has no `u`
        uint32_t unit_len
        double value            # finite
        uint64_t seq
        int has_seq
        double t                # `t`, finite; NaN when the reading has no `t`

    ctypedef struct tc_decoded:
        tc_reading *readings    # caller-owned, cap entries
        size_t n_readings
        size_t cap              # must be >= len / TC_MIN_READING_BYTES + 1
        uint64_t schema_mismatch
        uint64_t non_finite

    int tc_decode_payload(const uint8_t *buf, size_t len, uint32_t max_name_bytes,
                          tc_decoded *out)
