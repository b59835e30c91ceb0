# C declarations of the partial format's reader (includes/tc_partial.h), for
# `from telemetry_cy.engine._partial cimport ...`. Everything in the header is nogil: no Python
# calls, no allocation, no locks; a message and its tc_partial cursor belong to the calling thread.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from telemetry_cy.engine._sketch cimport tc_sketch_hdr, tc_sketch_map


cdef extern from "tc_partial.h" nogil:
    enum:
        TC_PARTIAL_HEADER
        TC_PARTIAL_VERSION
        TC_PARTIAL_MAX_INSTANCE
        TC_PARTIAL_MAX_QUANTILES
        TC_PARTIAL_FLAG_EVENT
        TC_PARTIAL_FLAG_QUANTILES
        TC_PARTIAL_PANES
        TC_PARTIAL_LEAVE

    ctypedef enum tc_partial_reason:
        TC_PARTIAL_OK
        TC_PARTIAL_EMPTY
        TC_PARTIAL_MALFORMED

    const char *const tc_partial_reason_names[]

    ctypedef struct tc_partial:
        uint16_t kind
        uint16_t flags
        double window
        double emit_every
        uint32_t panes
        uint32_t lead
        double allowed_lateness
        double quantile_accuracy
        uint32_t n_quantiles
        uint32_t instance_len
        int64_t interval
        uint64_t seq
        uint32_t partition
        uint32_t partitions
        const uint8_t *quantiles
        const uint8_t *instance
        uint32_t n_panes
        uint32_t left
        const tc_sketch_map *qmap

    ctypedef struct tc_partial_pane:
        const uint8_t *dev
        const uint8_t *sen
        const uint8_t *unit
        uint32_t dlen
        uint32_t slen
        uint32_t ulen
        uint32_t count
        double sum
        double m2
        double min
        double max
        double first
        double first_ts
        double last
        double last_ts
        tc_sketch_hdr sketch
        const uint8_t *counts

    tc_partial_reason tc_partial_open(tc_partial *m, const uint8_t *data, size_t n,
                                      const char **why)
    tc_partial_reason tc_partial_next(tc_partial *m, tc_partial_pane *p, const char **why)
    tc_partial_reason tc_partial_end(const tc_partial *m, const char **why)
    double tc_partial_f64(const uint8_t *p)
    uint32_t tc_partial_u32(const uint8_t *p)
