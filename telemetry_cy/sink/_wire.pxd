# Declarations of the wire encoder's C pieces (includes/tc_wire.h); the rules are in _wire.pyx.

from libc.stdint cimport int64_t, uint64_t


cdef extern from "tc_wire.h" nogil:
    ctypedef struct tc_wbuf:
        char *p
        size_t len
        size_t cap

    int tc_wbuf_reserve(tc_wbuf *b, size_t extra)
    void tc_wbuf_free(tc_wbuf *b)
    void tc_wire_put(tc_wbuf *b, const void *s, size_t n)
    int tc_wire_plain_token(const char *s, size_t n)
    void tc_wire_put_json_str(tc_wbuf *b, const char *s, size_t n)
    void tc_wire_put_u64(tc_wbuf *b, uint64_t v)
    void tc_wire_put_i64(tc_wbuf *b, int64_t v)
    int tc_wire_put_short_double(tc_wbuf *b, double x)
    void tc_wire_put_cbor_head(tc_wbuf *b, unsigned major, uint64_t v)
    void tc_wire_put_cbor_f64(tc_wbuf *b, double x)
