# C declarations of the quantile sketch (includes/tc_sketch.h), for `from telemetry_cy.engine._sketch
# cimport ...`. Everything in the header is nogil: no Python calls, no locks; a sketch (or the
# counts an owner keeps for one) belongs to one thread at a time, e.g. the engine thread.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "tc_sketch.h" nogil:
    double TC_SKETCH_MIN_ALPHA
    double TC_SKETCH_MAX_ALPHA
    double TC_SKETCH_ZERO_BELOW
    double TC_SKETCH_EDGE
    enum:
        TC_SKETCH_CAP
        TC_SKETCH_VERSION
        TC_SKETCH_HEADER_BYTES
    uint32_t TC_SKETCH_MAX_COUNT

    enum:
        TC_SKETCH_OK
        TC_SKETCH_E_NONFINITE
        TC_SKETCH_E_FULL
        TC_SKETCH_E_NOMEM
        TC_SKETCH_E_NOT_CONTAINED
        TC_SKETCH_NEEDS_SHAPE

    ctypedef struct tc_sketch_map:
        double alpha
        double gamma
        double mult
        double rep_factor
        int32_t min_index
        int32_t max_index

    ctypedef struct tc_sketch_hdr:
        int32_t pos_min
        int32_t neg_min
        uint16_t pos_len
        uint16_t neg_len
        uint32_t n

    ctypedef struct tc_sketch:
        uint32_t *counts
        tc_sketch_hdr h
        uint32_t cap

    int tc_sketch_map_init(tc_sketch_map *m, double alpha)
    int32_t tc_sketch_index(const tc_sketch_map *m, double av)
    double tc_sketch_value(const tc_sketch_map *m, int32_t i)

    uint32_t tc_sketch_buckets(const tc_sketch_hdr *h)
    uint64_t tc_sketch_stores_sum(const tc_sketch_hdr *h, const uint32_t *c)
    void tc_sketch_shape_union(tc_sketch_hdr *a, const tc_sketch_hdr *b)
    void tc_sketch_fold(const tc_sketch_hdr *hs, const uint32_t *cs, const tc_sketch_hdr *hd,
                        uint32_t *cd)
    double tc_sketch_quantile(const tc_sketch_map *m, const tc_sketch_hdr *h, const uint32_t *c,
                              double q)

    void tc_sketch_relayout(const tc_sketch_hdr *h, const uint32_t *c, tc_sketch_hdr *nh,
                            uint32_t *nc)
    int tc_sketch_hdr_add(tc_sketch_hdr *h, uint32_t *c, const tc_sketch_map *m, double v,
                          tc_sketch_hdr *nh)

    void tc_sketch_init(tc_sketch *s)
    void tc_sketch_free(tc_sketch *s)
    void tc_sketch_clear(tc_sketch *s)
    void tc_sketch_trim(tc_sketch *s)
    int tc_sketch_reserve(tc_sketch *s, uint32_t need)
    int tc_sketch_add(tc_sketch *s, const tc_sketch_map *m, double v)
    int tc_sketch_merge(tc_sketch *s, const tc_sketch_hdr *sh, const uint32_t *sc)
    int tc_sketch_subtract(tc_sketch *s, const tc_sketch_hdr *sh, const uint32_t *sc)

    size_t tc_sketch_bytes(const tc_sketch_hdr *h)
    void tc_sketch_write(const tc_sketch_map *m, const tc_sketch_hdr *h, const uint32_t *c,
                         uint8_t *out)
    int tc_sketch_read(const uint8_t *buf, size_t length, double expect_alpha, tc_sketch_map *m,
                       tc_sketch *s)


cdef class QuantileSketch:
    cdef tc_sketch s      # owns its counts buffer
    cdef tc_sketch_map m
