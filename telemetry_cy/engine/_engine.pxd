cimport cython
from libc.stdint cimport int64_t, uint32_t, uint64_t

from telemetry_cy.engine._decode cimport tc_decoded, tc_reading
from telemetry_cy.engine._sketch cimport tc_sketch, tc_sketch_hdr, tc_sketch_map
from telemetry_cy.source._ring cimport ByteRing, tc_lender, tc_ring


cdef extern from "tc_window.h" nogil:
    ctypedef struct tc_pane:
        uint32_t count
        double sum, m2, min, max, first

    ctypedef struct tc_key:
        uint64_t hash
        int64_t newest
        double last, last_ts
        uint32_t dense_index, device_len, sensor_len, unit_len, unit_cap
        uint32_t has_seq
        uint64_t last_seq

    ctypedef struct tc_agg:
        uint64_t count
        double sum, mean, min, max, m2, first, last, var

    ctypedef struct tc_table:
        tc_key **keys
        size_t n_keys
        size_t max_keys
        uint32_t panes          # pane-sized units before a record's names
        uint32_t ring           # panes that hold data (and sketch headers)
        uint64_t seed
        uint32_t quantiles

    uint32_t TC_NO_UNIT
    uint64_t tc_key_hash(uint64_t seed, const char *dev, size_t dlen, const char *sen, size_t slen)
    char *tc_key_device(const tc_key *k, uint32_t panes)
    char *tc_key_sensor(const tc_key *k, uint32_t panes)
    char *tc_key_unit(const tc_key *k, uint32_t panes)
    int tc_table_init(tc_table *t, uint32_t panes, size_t max_keys, uint64_t seed)
    void tc_table_free(tc_table *t)
    size_t tc_table_state_bytes(const tc_table *t)
    tc_key *tc_table_find(const tc_table *t, uint64_t hash, const char *dev, size_t dlen,
                          const char *sen, size_t slen, size_t *slot_out)
    tc_key *tc_table_insert(tc_table *t, uint64_t hash, size_t slot, const char *dev, size_t dlen,
                            const char *sen, size_t slen)
    void tc_table_remove(tc_table *t, size_t d)
    tc_key *tc_key_set_unit(tc_table *t, tc_key *k, const char *unit, uint32_t ulen)
    uint32_t tc_pane_of(int64_t j, uint32_t panes)
    void tc_key_add(tc_key *k, uint32_t panes, int64_t interval, uint32_t pane, double ts, double x)
    int tc_key_aggregate(const tc_key *k, uint32_t panes, int64_t tick, tc_agg *out)
    uint64_t tc_key_open_count(const tc_key *k, uint32_t panes, int64_t interval)
    void tc_prefetch_slot(const tc_table *t, uint64_t hash)
    void tc_prefetch_key(const tc_key *k, uint32_t panes)

    # event time
    uint32_t tc_event_units(uint32_t ring, uint32_t lead)
    double *tc_key_frozen_last(tc_key *k, uint32_t ring)
    void tc_key_add_event(tc_key *k, uint32_t ring, uint32_t lead, int64_t interval,
                          uint32_t pane, double t, double x)
    int tc_key_aggregate_event(tc_key *k, uint32_t panes, uint32_t ring, uint32_t lead,
                               int64_t tick, tc_agg *out)
    uint64_t tc_key_open_count_event(const tc_key *k, uint32_t ring, int64_t closed)

    enum:
        TC_SEQ_FIRST, TC_SEQ_NEXT, TC_SEQ_GAP, TC_SEQ_DUPLICATE, TC_SEQ_REORDER, TC_SEQ_RESTART,
        TC_SEQ_N_CLASSES
    uint32_t TC_SEQ_MAX_REORDER
    uint64_t TC_SEQ_MAX_GAP
    int tc_key_seq(tc_key *k, uint64_t n, uint64_t *gap)


cdef extern from "tc_window_qs.h" nogil:
    enum:
        TC_QS_OK, TC_QS_FULL, TC_QS_NOMEM, TC_QS_MAX_QUANTILES
    int tc_key_qs_add(tc_table *t, tc_key **kp, const tc_sketch_map *m, int64_t interval,
                      uint32_t pane, double x)
    int tc_key_qs_window(const tc_table *t, const tc_key *k, uint32_t panes, int64_t tick,
                         tc_sketch *s)
    void tc_qs_quantiles(const tc_sketch_map *m, const tc_sketch_hdr *h, const uint32_t *c,
                         const double *qs, int nq, double *out)


cdef extern from "tc_topn.h" nogil:
    enum:
        TC_TOPN_CAP
        TC_TOPN_NAME_BYTES

    ctypedef struct tc_topn:
        uint32_t n
        uint32_t min_pos
        uint64_t min_val
        uint64_t total
        uint64_t hash[TC_TOPN_CAP]
        uint64_t count[TC_TOPN_CAP]
        uint64_t error[TC_TOPN_CAP]
        uint32_t name_len[TC_TOPN_CAP]
        char name[TC_TOPN_CAP][TC_TOPN_NAME_BYTES]

    void tc_topn_init(tc_topn *t)
    uint64_t tc_topn_hash(const char *p, size_t n)
    size_t tc_topn_cut(const char *p, size_t len, size_t budget)
    void tc_topn_add(tc_topn *t, const char *name, size_t len, uint64_t w)
    void tc_topn_add_name(tc_topn *t, const char *p, size_t len, uint64_t w)
    void tc_topn_add_pair(tc_topn *t, const char *a, size_t alen, const char *b, size_t blen,
                          uint64_t w)


cdef extern from "tc_snapshot.h" nogil:
    # the keys section of a snapshot (docs/state.md)
    ctypedef struct tc_snap_shape:
        uint32_t units, ring, lead
        int event, started
        int64_t closed
        int quantiles
        const tc_sketch_map *qmap

    size_t TC_SNAP_KEY_HEAD
    size_t tc_snap_key_size(const tc_key *k, const tc_snap_shape *s)
    unsigned char *tc_snap_write_key(unsigned char *o, tc_key *k, const tc_snap_shape *s)
    int tc_snap_scan(const unsigned char *p, size_t len, const tc_snap_shape *s, uint64_t n_keys,
                     double *last_ts, const char **why)
    int tc_snap_load(tc_table *t, const unsigned char *p, size_t len, const tc_snap_shape *s,
                     uint64_t n_keys, const unsigned char *keep, int scanned, const char **why)


cdef extern from "tc_window_partials.h" nogil:
    # partial mode: the closing hook's buffer of pane records (docs/scale-out.md)
    ctypedef struct tc_pp_buf:
        size_t n
        uint64_t lost
    ctypedef struct tc_pp_item:
        int64_t interval
        uint32_t partition
        uint32_t len
        const unsigned char *rec
    void tc_pp_init(tc_pp_buf *b, size_t max_bytes)
    void tc_pp_free(tc_pp_buf *b)
    void tc_pp_take_key(tc_pp_buf *b, const tc_table *t, tc_key *k, uint32_t lead, int64_t lo,
                        int64_t hi)
    void tc_pp_order(const tc_pp_buf *b, uint32_t partitions, tc_pp_item *out)
    void tc_pp_clear(tc_pp_buf *b)
    size_t tc_pp_bytes(const tc_pp_buf *b)


cdef struct batch_item:
    const char *data
    Py_ssize_t size
    double ts
    const char *topic        # only set by drain (Engine.batch_topics)
    Py_ssize_t topic_len


# a decoded single-reading payload waiting in _run_batch's prefetch pipeline: 128 bytes (x86_64),
# a multiple of 16, so every entry in the ring is 16-byte aligned. On one Intel Xeon VM, entries of
# 104 bytes made push_many_1M_keys ~200 ns per reading instead of ~130 ns (cause not pinned down);
# on an AMD EPYC (family 26) VM 104, 112 and 128 bytes measured the same (docs/performance.md)
cdef struct pipe_entry:
    tc_reading r                 # 80 bytes with the event time `t`
    uint64_t hash
    int64_t interval
    double ts
    Py_ssize_t index             # its batch item
    uint32_t pane                # tc_pane_of(interval)
    uint32_t _pad[3]             # to 128 bytes


@cython.final
cdef class TopN:
    cdef tc_topn summary


@cython.final
cdef class Aggregate:
    cdef readonly str device
    cdef readonly str sensor
    cdef readonly object unit
    cdef readonly double window_start
    cdef readonly double window_end
    cdef readonly unsigned long long count
    cdef readonly double sum
    cdef readonly double mean
    cdef readonly double min
    cdef readonly double max
    cdef readonly double stddev
    cdef readonly double first
    cdef readonly double last
    # quantiles (rules.QUANTILE_ATTRIBUTES): the engine's field names (one tuple shared by its
    # aggregates) and this window's values in the same order; both () when it computes none
    cdef readonly tuple quantile_names
    cdef readonly tuple quantile_values


# aggregate fields _ColumnBuilder holds at most (rules.AGGREGATE_FIELDS)
cdef enum:
    TC_MAX_COLUMNS = 32


cdef extern from "tc_colbuf.h" nogil:
    ctypedef struct tc_colbuf:
        char *p
        size_t len
        size_t cap
    void tc_colbuf_init(tc_colbuf *b)
    void tc_colbuf_free(tc_colbuf *b)
    int tc_colbuf_reserve(tc_colbuf *b, size_t need)
    int tc_colbuf_put_string(tc_colbuf *data, int64_t *offsets, size_t i, const char *p,
                             size_t size)
    void tc_colbuf_set_bit(tc_colbuf *bits, size_t i, int valid)


cdef extern from "tc_colfill.h" nogil:
    enum:
        TC_COLFILL_MAX_QS
    ctypedef struct tc_colplan:
        double *window_start
        double *window_end
        double *sum
        double *mean
        double *min
        double *max
        double *stddev
        double *first
        double *last
        int64_t *count
        uint32_t n_qs
        double *qs[16]
        tc_colbuf *device
        tc_colbuf *sensor
        tc_colbuf *unit
        int64_t *device_off
        int64_t *sensor_off
        int64_t *unit_off
        tc_colbuf *unit_valid
        size_t unit_nulls
    int tc_colplan_put(tc_colplan *pl, size_t i, const tc_key *k, uint32_t units,
                       const tc_agg *a, double window_start, double window_end, const double *qs)


@cython.final
cdef class _ColumnBuffer:
    cdef tc_colbuf buf
    cdef char format[2]
    cdef Py_ssize_t itemsize
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]


@cython.final
cdef class _ColumnBuilder:
    cdef tuple layout            # column_buffers.column_layout() of the engine's quantiles
    cdef tuple names             # the layout's column names
    cdef Py_ssize_t n, cap       # rows, and rows the value buffers have room for
    cdef int n_cols
    cdef int n_q                 # quantile columns (the last ones; append_key's qv)
    cdef int kind[TC_MAX_COLUMNS]
    cdef int source[TC_MAX_COLUMNS]
    cdef bint nullable[TC_MAX_COLUMNS]
    cdef Py_ssize_t nulls[TC_MAX_COLUMNS]
    cdef Py_ssize_t str_hint[TC_MAX_COLUMNS]   # a string column's bytes per row, last take
    cdef tc_colbuf values[TC_MAX_COLUMNS]      # float64 / int64 values; a string column's offsets
    cdef tc_colbuf data[TC_MAX_COLUMNS]        # a string column's UTF-8 bytes
    cdef tc_colbuf validity[TC_MAX_COLUMNS]    # a nullable column's bitmap
    # how append_key fills a row: the plan (tc_colfill.h) for every column with a source, set
    # by reserve(); col_of[source] = its column; the columns without a source (all null)
    cdef tc_colplan plan
    cdef int col_of[TC_MAX_COLUMNS]
    cdef int n_null
    cdef int null_cols[TC_MAX_COLUMNS]
    # the last take()'s _ColumnBuffer objects (values, data, validity per column, or None),
    # for _reclaim
    cdef list spare

    cdef _reclaim(self)
    cdef _reset(self)
    cdef int reserve(self, Py_ssize_t more) except -1
    cdef void _plan(self) noexcept
    cdef int _put_string(self, int c, Py_ssize_t i, const char *p, size_t size,
                         bint valid) except -1
    cdef void _set_valid(self, int c, Py_ssize_t i, bint valid) noexcept
    cdef int _put_null(self, int c, Py_ssize_t i) except -1
    cdef int append_key(self, const tc_key *k, uint32_t units, const tc_agg *agg,
                        double window_start, double window_end, const double *qv) except -1
    cdef int append_row(self, tuple row) except -1
    cdef object take(self)


@cython.final
cdef class Engine:
    cdef tc_table table
    cdef tc_decoded decoded
    cdef readonly double window
    cdef readonly double emit_every
    cdef readonly double key_ttl
    cdef readonly Py_ssize_t max_payload_bytes
    cdef readonly uint32_t max_name_bytes
    cdef uint32_t panes
    cdef bint started            # the clock starts at the first accepted reading or tick()
    cdef int64_t closed          # newest closed tick index (tick k closes interval k-1)
    cdef int64_t newest_data     # newest interval any key holds data in
    cdef list pending            # aggregates of closed ticks not yet returned by tick()
    cdef _ColumnBuilder columns  # ... or by tick_columns(), when emit_columns
    cdef bint emit_columns       # the last tick call was tick_columns
    # batch scratch space, reused across calls; items point into payload objects or the ring
    cdef batch_item *batch
    cdef Py_ssize_t batch_cap
    # counters; drops indexed by tc_reason
    cdef uint64_t received, payloads, readings, evicted, ticks, aggregates
    cdef uint64_t drops[9]
    # sequence numbers: events by class (TC_SEQ_*), and the numbers skipped by gaps
    cdef uint64_t seq_events[6]
    cdef uint64_t seq_gaps
    # top offenders (tc_topn.h); batch_topics: the batch items carry MQTT topics (drain)
    cdef tc_topn top_drops, top_gaps, top_late
    cdef bint batch_topics
    # event time (docs/windows.md, "Event time"); `ring` panes per key (P + lead), `lead` open
    # intervals ahead of the closed tick, `units` pane-sized units before a record's names
    cdef readonly str time
    cdef readonly double allowed_lateness
    cdef readonly double idle_timeout
    cdef readonly double max_future
    cdef bint event
    cdef uint32_t ring, lead, units
    cdef double max_t            # the largest event time accepted (the watermark is max_t - L)
    cdef double max_t_arrival    # arrival of the reading that set max_t: the idle clock
    cdef uint64_t no_event_time, late_unrouted
    cdef Py_ssize_t late_capacity
    cdef list late_out           # late readings for take_late(), at most late_capacity
    cdef int64_t pane_iv         # the last interval whose pane was worked out, and its pane:
    cdef uint32_t pane_of_iv     # keeps the 64-bit modulo off most readings
    # quantiles (tc_window_qs.h): on when n_qs > 0; qmap shared by every key, qscratch the
    # window sketch a tick merges each key's panes into (its buffer kept across keys)
    cdef readonly tuple quantiles          # the q, ascending
    cdef readonly tuple quantile_names     # their fields: p50, p99.9 (rules.quantile_name)
    cdef readonly double quantile_accuracy
    cdef tc_sketch_map qmap
    cdef tc_sketch qscratch
    cdef int n_qs
    cdef double qs[TC_QS_MAX_QUANTILES]
    # partial mode (tc_window_partials.h): the clock copies each closed pane out into pp, which
    # take_closed_panes drains; off unless partials=True (event time only)
    cdef readonly bint partials
    cdef tc_pp_buf pp
    # Lent to the network thread while run_ring parks (tc_park.h): `lender` (drain entry
    # _lent_drain, ctx this engine) is offered only inside run_ring's park, `lend_ring` is the
    # ring being drained then; between its borrow and give-back the network thread owns every
    # field of this engine. A lent drain that ran out of memory leaves lend_error for run_ring
    # to raise on its own thread.
    cdef tc_lender lender
    cdef tc_ring *lend_ring
    cdef int lend_error

    cdef int _apply_reading(self, const char *dev, uint32_t dlen, const char *sen, uint32_t slen,
                            const char *unit, uint32_t ulen, double value, double ts,
                            int64_t interval, uint32_t pane, uint64_t seq,
                            bint has_seq) noexcept nogil
    cdef int _apply_hashed(self, uint64_t h, const char *dev, uint32_t dlen, const char *sen,
                           uint32_t slen, const char *unit, uint32_t ulen, double value, double ts,
                           int64_t interval, uint32_t pane, uint64_t seq,
                           bint has_seq) noexcept nogil
    cdef tc_key *_take(self, uint64_t h, const char *dev, uint32_t dlen, const char *sen,
                       uint32_t slen, const char *unit, uint32_t ulen, double value, double time,
                       int64_t interval, uint32_t pane, uint64_t seq, bint has_seq,
                       int *rc) noexcept nogil
    cdef Py_ssize_t _pipe_flush(self, pipe_entry *pipe, size_t head, size_t tail) noexcept nogil
    cdef void _count_decoded(self, const batch_item *item) noexcept nogil
    cdef void _payload_offender(self, const batch_item *item, uint64_t w) noexcept nogil
    cdef Py_ssize_t _run_batch(self, Py_ssize_t start, Py_ssize_t n, int *why) noexcept nogil
    cdef int _advance(self, int64_t interval) except -1
    cdef int _take_closing(self, int64_t interval) except -1
    cdef int _scan(self, int64_t tick, bint emit) except -1
    cdef int _init_quantiles(self, qcfg) except -1
    cdef int _key_quantiles(self, const tc_key *k, int64_t tick, double *vals) except -1
    cdef int _set_quantiles(self, Aggregate a, const double *vals) except -1
    cdef Py_ssize_t _run_all(self, Py_ssize_t n) except -1
    cdef int64_t _interval(self, double ts) except? -1
    cdef _push_fallback(self, Py_ssize_t i)
    cdef _accept_python(self, str device, str sensor, double value, unit, seq, double ts,
                        int64_t interval)
    cdef int _reserve_batch(self, Py_ssize_t n) except -1
    cdef Py_ssize_t _drain(self, ByteRing ring, Py_ssize_t max_records) except -1
    cdef int _drain_lent(self) noexcept nogil
    # event time
    cdef int _apply_event(self, uint64_t h, const char *dev, uint32_t dlen, const char *sen,
                          uint32_t slen, const char *unit, uint32_t ulen, double value, double t,
                          int64_t interval, uint32_t pane, uint64_t seq,
                          bint has_seq) noexcept nogil
    cdef Py_ssize_t _pipe_flush_event(self, pipe_entry *pipe, size_t head,
                                      size_t tail) noexcept nogil
    cdef int _event_classify(self, double t, double arrival, int64_t *interval) noexcept nogil
    cdef int64_t _event_target(self, double max_t) noexcept nogil
    cdef int _event_commit(self, const tc_reading *r, double t, double arrival, int cls,
                           int64_t interval) noexcept nogil
    cdef uint32_t _event_pane(self, int64_t interval) noexcept nogil
    cdef Py_ssize_t _run_batch_event(self, Py_ssize_t start, Py_ssize_t n,
                                     int *why) noexcept nogil
    cdef int _event_payload(self, Py_ssize_t i) except -1
    cdef int _event_reading(self, const tc_reading *r, double arrival) except -1
    cdef int _event_tick(self, double now) except -1
    cdef int _emit_to(self, bint columns) except -1
    cdef int _close_to(self, double now, bint columns) except -1
