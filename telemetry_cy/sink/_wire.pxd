# Declarations of the wire encoder's and the ack reader's C pieces (includes/tc_wire.h, and
# tc_repr.h for the JSON floats); the rules are in _wire.pyx and those headers.

from libc.stdint cimport int64_t, uint64_t


cdef extern from "tc_repr.h" nogil:
    enum:
        TC_REPR_MAX
    size_t tc_repr_double(char *out, double x)


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
    void tc_wire_put_cbor_head(tc_wbuf *b, unsigned major, uint64_t v)
    void tc_wire_put_cbor_f64(tc_wbuf *b, double x)

    # ordering a batch by subject
    ctypedef struct tc_sort_key:
        pass

    double tc_wire_now()
    void tc_sort_key_set(tc_sort_key *k, const char *p, size_t n, size_t i)
    void tc_sort_keys(tc_sort_key *k, size_t n)
    size_t tc_sort_key_index "tc_sort_key_index"(const tc_sort_key *k)

    # JetStream acks
    enum:
        TC_ACK_OK
        TC_ACK_DUPLICATE
        TC_ACK_BAD
        TC_ACK_KINDS
        TC_MSG_SENT
        TC_MSG_ACKED
        TC_ACK_DESC_MAX

    ctypedef struct tc_ack_result:
        int kind
        int64_t code
        int64_t err_code
        const char *desc
        size_t desc_len

    ctypedef struct tc_acks:
        uint64_t sid
        const char *inbox
        size_t inbox_len
        uint64_t serial
        unsigned char *state
        size_t n
        uint64_t in_flight
        uint64_t acked
        uint64_t answers
        uint64_t stale
        uint64_t repeats
        uint64_t kinds[8]
        int last_kind
        int64_t last_code
        int64_t last_err_code
        char last_desc[160]
        size_t last_desc_len

    void tc_ack_classify(const char *hdr, size_t hn, const char *body, size_t bn,
                         tc_ack_result *r)
    int tc_ack_token(const tc_acks *w, const char *subj, size_t sn, uint64_t *serial,
                     uint64_t *index)
    void tc_acks_apply(tc_acks *w, int have_token, uint64_t serial, uint64_t index,
                       const tc_ack_result *r)
    size_t tc_acks_feed(tc_acks *w, const char *p, size_t n, int64_t *next)
    size_t tc_acks_send(tc_acks *w, size_t first, size_t last)
    void tc_acks_begin(tc_acks *w, uint64_t serial, unsigned char *state, size_t n)
    void tc_acks_end(tc_acks *w)
