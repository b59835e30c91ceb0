# The compiled capture block encoder's class layout (see _encode.pyx).
#
# Thread rule: an encoder belongs to the thread that consumes the ring it fills from (the
# recorder's writer thread); nothing in it is shared.

cdef class BlockEncoder:
    cdef readonly size_t block_bytes
    # the block being built: n arrival times, and frames_len bytes of records; both malloc'd,
    # grown by doubling, kept across blocks (take() copies them out and starts over)
    cdef double *ts
    cdef size_t n
    cdef size_t ts_cap
    cdef unsigned char *frames
    cdef size_t frames_len
    cdef size_t frames_cap
    cdef bint plain           # every record so far has flags 0: QoS 0, no DUP, no RETAIN
    cdef bint is_full         # the last fill stopped at a record that did not fit
    cdef public unsigned long long skipped

    cdef bint _reserve(self, size_t frame) noexcept nogil
