# cython: language_level=3
"""Compiled decode + window engine. The pure-Python twin is ``_engine_py.py``; both follow the
semantics written down in docs/windows.md."""

import os

cimport cython

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact, \
    PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_FromDouble
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.sequence cimport PySequence_Fast_ITEMS
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport INFINITY, NAN, floor, isfinite, isnan, sqrt
from libc.stdint cimport INT64_MIN, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memcpy, memset

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from telemetry_cy.source._ring cimport ByteRing, TC_PARK_KICKED, tc_doorbell_take_kick, \
    tc_lender, tc_ring, tc_ring_consume, tc_ring_mark, tc_ring_peek, tc_ring_release, \
    tc_ring_rewind, tc_ring_view
from telemetry_cy.engine._decode cimport (
    TC_MIN_READING_BYTES, TC_PAYLOAD_DECODE_ERROR, TC_PAYLOAD_FALLBACK, TC_PAYLOAD_OK,
    tc_decode_payload,
    tc_reading,
)
from telemetry_cy.engine._sketch cimport (
    TC_SKETCH_E_NOMEM, TC_SKETCH_OK, tc_sketch_free, tc_sketch_init, tc_sketch_map_init,
)
from telemetry_cy.engine.rules import (
    AGGREGATE_FIELDS, DEFAULT_ALLOWED_LATENESS, DEFAULT_IDLE_TIMEOUT, DEFAULT_LATE_CAPACITY,
    DEFAULT_MAX_FUTURE, DEFAULT_PARTIALS_MAX_BYTES, MAX_QUANTILES, QUANTILE_ACCURACY_DEFAULT,
    TOP_OFFENDERS, ClosedPanes, LateReading, aggregate_args, check_config, check_event_config,
    check_partials, check_partitions, check_quantiles, present_fields, quantile_field,
    top_entries,
)
from telemetry_cy.engine.cbor_fallback import decode_with_cbor2
from telemetry_cy.engine import snapshot_format as snap
from telemetry_cy.engine.column_buffers import COLUMNS as _COLUMNS, FLOAT64 as _FLOAT64, \
    INT64 as _INT64, STRING as _STRING, Columns, column_layout
from telemetry_cy.engine.snapshot_errors import SnapshotError
from telemetry_cy.reasons import DROP_REASONS, ENGINE_REASONS

cdef extern from "tc_reasons.h":
    enum:
        TC_DROP_OVERSIZE, TC_DROP_DECODE_ERROR, TC_DROP_SCHEMA_MISMATCH, TC_DROP_NON_FINITE,
        TC_DROP_KEY_LIMIT, TC_DROP_LATE, TC_DROP_FUTURE, TC_DROP_SKETCH_FULL, TC_DROP_N_REASONS

# why _run_batch stopped
cdef enum:
    RUN_DONE = 0
    RUN_ADVANCE = 1    # a payload with readings needs the clock moved (GIL: builds aggregates)
    RUN_FALLBACK = 2   # the C reader handed a payload to cbor2 (GIL)
    RUN_NO_MEMORY = 3
    RUN_BAD_TS = 4     # an item's ts cannot be an interval index (only from a buggy producer)
    RUN_EVENT = 5      # event time: a payload moves the watermark or has a late reading to route

# what _event_classify says of a reading's event time
cdef enum:
    EV_APPLY = 0       # into its pane now
    EV_ADVANCE = 1     # the watermark passes a window end first (GIL: builds aggregates)
    EV_LATE = 2        # its first window was emitted
    EV_FUTURE = 3      # more than max_future ahead of its arrival
    EV_BAD = 4         # t / emit_every is no interval index: schema_mismatch

cdef inline long long _mono_ns() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <long long>t.tv_sec * 1000000000 + t.tv_nsec


# tick releases the GIL after every (mask + 1) aggregates it builds (~1 ms of work)
cdef uint64_t GIL_YIELD_MASK = 4095

# _run_batch's prefetch pipeline: a reading is applied PIPE_DEPTH readings after its hash slot was
# prefetched; the ring holds up to PIPE_DEPTH + 1 of them (PIPE_DEPTH < PIPE_CAP, a power of two)
cdef enum:
    PIPE_DEPTH = 8
    PIPE_CAP = 16

# _scan prefetches the record of the key this many keys ahead (tc_prefetch_key)
cdef size_t SCAN_AHEAD = 6

# push_many hands payloads to the decoder this many at a time
cdef Py_ssize_t PUSH_CHUNK = 2048

# A drain lent to the network thread (run_ring, tc_park.h) takes at most this many records: it
# bounds how long the engine thread, woken meanwhile, may wait for its engine (~1 us a record).
# The network thread lends only for turns of at most LEND_MAX_RECORDS (_frames_py.py) records.
cdef enum:
    LENT_DRAIN_MAX = 512


cdef int _lent_drain(void *ctx) noexcept nogil:
    # tc_lender.drain: ctx is the Engine, kept alive by the run_ring call that lent it (a
    # borrowed reference, no refcount touched: this runs on the network thread without the GIL)
    return (<Engine>ctx)._drain_lent()

if MAX_QUANTILES != TC_QS_MAX_QUANTILES:
    raise ImportError("telemetry_cy.engine._engine is out of date with rules.MAX_QUANTILES")

# the quantiles of an aggregate when the engine computes none (shared: tuples are immutable)
cdef tuple NO_QUANTILES = ()

# ts/emit_every must fit an int64 interval index with room to spare
cdef double MAX_INTERVAL = 4.0e18


# no_gc: fields are str/None/numbers and tuples of them only, so an Aggregate can never be part of
# a reference cycle; leaving it untracked keeps a tick of 1M aggregates from triggering full
# collections.
@cython.no_gc
cdef class Aggregate:
    """One key's statistics over [window_start, window_end), emitted at tick window_end."""

    def __init__(self, device, sensor, unit, window_start, window_end, count, sum, mean, min, max,
                 stddev, first, last, quantile_names=(), quantile_values=()):
        self.device = device
        self.sensor = sensor
        self.unit = unit
        self.window_start = window_start
        self.window_end = window_end
        self.count = count
        self.sum = sum
        self.mean = mean
        self.min = min
        self.max = max
        self.stddev = stddev
        self.first = first
        self.last = last
        self.quantile_names = tuple(quantile_names)
        self.quantile_values = tuple(float(v) for v in quantile_values)
        if len(self.quantile_names) != len(self.quantile_values):
            raise ValueError("quantile_names and quantile_values differ in length")

    def __getattr__(self, name):
        return quantile_field(self, name)

    def as_dict(self):
        """The fields by name, then the quantiles the engine computes (p50, p99.9, ...)."""
        return present_fields(self)

    def __reduce__(self):
        return (Aggregate, tuple(getattr(self, name) for name in AGGREGATE_FIELDS)
                + (self.quantile_names, self.quantile_values))

    def __eq__(self, other):
        if not isinstance(other, Aggregate):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __hash__(self):
        return hash((self.device, self.sensor, self.window_end))

    def __repr__(self):
        return "Aggregate(" + ", ".join(
            f"{name}={value!r}" for name, value in present_fields(self).items()) + ")"


# ---- columns (Engine.tick_columns) ---------------------------------------------------------------

# where a column's values come from; the columns themselves are column_buffers.column_layout():
# the statistics (column_buffers.COLUMNS), then the engine's quantiles, column j of those taking
# source S_Q0 + j (the engine's j-th quantile). A nullable statistic with no source here is all
# null (a field added to AGGREGATE_FIELDS shows up as a null column until it is given a source
# here and a place in the fill plan, includes/tc_colfill.h).
cdef enum:
    S_NULL = 0
    S_DEVICE, S_SENSOR, S_UNIT, S_COUNT
    S_WINDOW_START, S_WINDOW_END, S_SUM, S_MEAN, S_MIN, S_MAX, S_STDDEV, S_FIRST, S_LAST
    S_Q0

cdef enum:
    K_F64 = 0
    K_I64 = 1
    K_STR = 2

_SOURCES = {
    "device": S_DEVICE, "sensor": S_SENSOR, "unit": S_UNIT, "count": S_COUNT,
    "window_start": S_WINDOW_START, "window_end": S_WINDOW_END, "sum": S_SUM, "mean": S_MEAN,
    "min": S_MIN, "max": S_MAX, "stddev": S_STDDEV, "first": S_FIRST, "last": S_LAST,
}
_KINDS = {_FLOAT64: K_F64, _INT64: K_I64, _STRING: K_STR}
# the kind of column each source writes (by source number, S_NULL first)
_SOURCE_KINDS = (K_F64, K_STR, K_STR, K_STR, K_I64) + (K_F64,) * (S_Q0 - 1 - S_COUNT)
for _name, _kind, _nullable in _COLUMNS:
    if not _nullable and _name not in _SOURCES:
        raise RuntimeError(f"aggregate field {_name!r} has no column source in _engine.pyx")
if len(_COLUMNS) > TC_MAX_COLUMNS:
    raise RuntimeError("more aggregate fields than _ColumnBuilder holds")


cdef char _EMPTY[1]   # what an empty column's buffer points at

cdef extern from "Python.h":
    Py_ssize_t _refcount "Py_REFCNT"(PyObject *o)


@cython.final
cdef class _ColumnBuffer:
    """One column's memory (a tc_colbuf) after the builder handed it over: exported read-only as a
    buffer of `format` items, freed with this object. Every export holds a reference to it (the
    memoryviews of a Columns, a pyarrow buffer over one), so the memory outlives them all."""

    def __dealloc__(self):
        tc_colbuf_free(&self.buf)

    def __getbuffer__(self, Py_buffer *view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a column buffer is read-only")
        view.buf = <void *>(self.buf.p if self.buf.p != NULL else _EMPTY)
        view.obj = self
        view.len = <Py_ssize_t>self.buf.len
        view.readonly = 1
        view.itemsize = self.itemsize
        view.format = self.format if flags & PyBUF_FORMAT else NULL
        view.ndim = 1
        view.shape = self.shape if flags & PyBUF_ND else NULL
        view.strides = self.strides if flags & PyBUF_STRIDES else NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass


cdef _ColumnBuffer _hand_over(tc_colbuf *b, size_t length, char fmt, Py_ssize_t itemsize):
    """The first `length` bytes of `b` as a _ColumnBuffer, which takes the memory; `b` is left
    empty."""
    cdef _ColumnBuffer out = _ColumnBuffer.__new__(_ColumnBuffer)
    out.buf = b[0]
    out.buf.len = length
    tc_colbuf_init(b)
    out.format[0] = fmt
    out.format[1] = 0
    out.itemsize = itemsize
    out.shape[0] = <Py_ssize_t>length // itemsize
    out.strides[0] = itemsize
    return out


@cython.final
cdef class _ColumnBuilder:
    """Aggregates appended straight into Arrow-layout column buffers (column_buffers.py), in C
    memory (includes/tc_colbuf.h) that take() hands to Python without a copy. Owned by the
    engine's thread, like the Engine."""

    def __cinit__(self, tuple q_names):
        cdef int c
        self.layout = column_layout(q_names)
        self.names = tuple([name for name, _, _ in self.layout])
        if len(self.layout) > TC_MAX_COLUMNS or len(q_names) > TC_COLFILL_MAX_QS:
            raise ValueError("more quantiles than the columns hold")
        self.n_cols = len(self.layout)
        self.n_null = 0
        for c in range(S_Q0):
            self.col_of[c] = -1
        for c, (name, kind, nullable) in enumerate(self.layout):
            self.kind[c] = _KINDS[kind]
            self.source[c] = (S_Q0 + q_names.index(name) if name in q_names
                              else _SOURCES.get(name, S_NULL))
            self.nullable[c] = nullable
            self.str_hint[c] = 16
            tc_colbuf_init(&self.values[c])
            tc_colbuf_init(&self.data[c])
            tc_colbuf_init(&self.validity[c])
            if self.source[c] == S_NULL:
                self.null_cols[self.n_null] = c     # filled by append_key's generic loop
                self.n_null += 1
            elif self.source[c] < S_Q0:
                self.col_of[self.source[c]] = c
        # the plan (tc_colfill.h) fills every source but S_NULL: each must have its column, of
        # the kind and nullability it writes
        for c in range(1, S_Q0):
            if (self.col_of[c] < 0 or self.kind[self.col_of[c]] != _SOURCE_KINDS[c]
                    or self.nullable[self.col_of[c]] != (c == S_UNIT)):
                raise RuntimeError(f"column source {c} has no column of its kind in the layout")
        self.plan.n_qs = <uint32_t>len(q_names)
        self.spare = []
        self._reset()

    def __dealloc__(self):
        cdef int c
        for c in range(self.n_cols):
            tc_colbuf_free(&self.values[c])
            tc_colbuf_free(&self.data[c])
            tc_colbuf_free(&self.validity[c])

    cdef _reclaim(self):
        """Takes back the memory of the last take()'s buffers that nobody holds any more, so a
        tick after one whose columns were dropped writes into pages already faulted in rather
        than fresh ones the kernel must zero. The list is their only reference when the count
        is 1: every export (a memoryview, a pyarrow buffer, a numpy array) holds one of its own."""
        cdef Py_ssize_t x
        cdef PyObject *o
        cdef _ColumnBuffer cb
        cdef tc_colbuf *slot
        for x in range(len(self.spare)):
            o = PyList_GET_ITEM(self.spare, x)
            if o == <PyObject *>None or _refcount(o) != 1:
                continue
            slot = (&self.values[x // 3] if x % 3 == 0 else
                    &self.data[x // 3] if x % 3 == 1 else &self.validity[x // 3])
            if slot.cap >= (<_ColumnBuffer>o).buf.cap:
                continue
            cb = <_ColumnBuffer>o
            tc_colbuf_free(slot)
            slot[0] = cb.buf
            slot.len = 0
            tc_colbuf_init(&cb.buf)
        self.spare = []

    cdef _reset(self):
        cdef int c
        self.n = self.cap = 0
        self.plan.unit_nulls = 0
        for c in range(self.n_cols):
            self.nulls[c] = 0
            self.values[c].len = 0
            self.data[c].len = 0
            self.validity[c].len = 0

    cdef int reserve(self, Py_ssize_t more) except -1:
        """Room for `more` rows past the current ones (a string column's bytes: as many as its
        rows took last time, and they grow as they come)."""
        if self.n + more <= self.cap:
            return 0
        cdef Py_ssize_t cap = max(self.n + more, 2 * self.cap, 1024)
        cdef int c
        cdef size_t strings
        if self.cap == 0 and self.spare:
            self._reclaim()
        for c in range(self.n_cols):
            # a string column's values are its offsets: one more than its rows, the first 0
            if tc_colbuf_reserve(&self.values[c], <size_t>(cap + (self.kind[c] == K_STR)) * 8):
                raise MemoryError()
            if self.kind[c] == K_STR:
                if self.values[c].len == 0:
                    (<int64_t *>self.values[c].p)[0] = 0
                    self.values[c].len = 8
                strings = self.data[c].len + <size_t>(more * self.str_hint[c])
                if tc_colbuf_reserve(&self.data[c], strings):
                    raise MemoryError()
            if self.nullable[c] and tc_colbuf_reserve(&self.validity[c], <size_t>(cap + 7) // 8):
                raise MemoryError()
        self.cap = cap
        self._plan()
        return 0

    cdef void _plan(self) noexcept:
        """The plan of append_key (tc_colfill.h) over the buffers as they are now."""
        cdef int c
        cdef tc_colplan *pl = &self.plan
        pl.window_start = <double *>self.values[self.col_of[S_WINDOW_START]].p
        pl.window_end = <double *>self.values[self.col_of[S_WINDOW_END]].p
        pl.sum = <double *>self.values[self.col_of[S_SUM]].p
        pl.mean = <double *>self.values[self.col_of[S_MEAN]].p
        pl.min = <double *>self.values[self.col_of[S_MIN]].p
        pl.max = <double *>self.values[self.col_of[S_MAX]].p
        pl.stddev = <double *>self.values[self.col_of[S_STDDEV]].p
        pl.first = <double *>self.values[self.col_of[S_FIRST]].p
        pl.last = <double *>self.values[self.col_of[S_LAST]].p
        pl.count = <int64_t *>self.values[self.col_of[S_COUNT]].p
        for c in range(self.n_cols):
            if self.source[c] >= S_Q0:
                pl.qs[self.source[c] - S_Q0] = <double *>self.values[c].p
        pl.device = &self.data[self.col_of[S_DEVICE]]
        pl.sensor = &self.data[self.col_of[S_SENSOR]]
        pl.unit = &self.data[self.col_of[S_UNIT]]
        pl.device_off = <int64_t *>self.values[self.col_of[S_DEVICE]].p
        pl.sensor_off = <int64_t *>self.values[self.col_of[S_SENSOR]].p
        pl.unit_off = <int64_t *>self.values[self.col_of[S_UNIT]].p
        pl.unit_valid = &self.validity[self.col_of[S_UNIT]]

    cdef int _put_string(self, int c, Py_ssize_t i, const char *p, size_t size,
                         bint valid) except -1:
        """Row i of string column c: `size` bytes at p, or a null (valid false)."""
        if tc_colbuf_put_string(&self.data[c], <int64_t *>self.values[c].p, <size_t>i, p,
                                size if valid else 0):
            raise MemoryError()
        if self.nullable[c]:
            self._set_valid(c, i, valid)
        return 0

    cdef void _set_valid(self, int c, Py_ssize_t i, bint valid) noexcept:
        tc_colbuf_set_bit(&self.validity[c], <size_t>i, valid)
        if not valid:
            self.nulls[c] += 1

    cdef int append_key(self, const tc_key *k, uint32_t units, const tc_agg *agg,
                        double window_start, double window_end, const double *qv) except -1:
        """One key's aggregate, the same values _scan puts in an Aggregate; `units` is the
        record's pane-sized units before its names, qv the key's quantiles (the engine's
        order; read only when the layout has quantile columns)."""
        cdef Py_ssize_t i = self.n
        cdef int j
        if i >= self.cap:
            self.reserve(1)
        if tc_colplan_put(&self.plan, <size_t>i, k, units, agg, window_start, window_end, qv):
            raise MemoryError()
        for j in range(self.n_null):
            self._put_null(self.null_cols[j], i)
        self.n = i + 1
        return 0

    cdef int _put_null(self, int c, Py_ssize_t i) except -1:
        if self.kind[c] == K_STR:
            return self._put_string(c, i, NULL, 0, False)
        (<int64_t *>self.values[c].p)[i] = 0    # 0.0 or 0: the same eight zero bytes
        self._set_valid(c, i, False)
        return 0

    cdef int append_row(self, tuple row) except -1:
        """One aggregate given as Python values in the layout's order (the slow path: rows that
        were already Aggregate objects)."""
        cdef Py_ssize_t i = self.n
        cdef int c
        cdef bytes b
        if len(row) != self.n_cols:
            raise ValueError("a row must have one value per aggregate field")
        for c in range(self.n_cols):
            if row[c] is None and not self.nullable[c]:
                raise TypeError("a null in a column that takes none")
        if i >= self.cap:
            self.reserve(1)
        for c in range(self.n_cols):
            v = row[c]
            if v is None:
                self._put_null(c, i)
                continue
            if self.kind[c] == K_F64:
                (<double *>self.values[c].p)[i] = <double>v
            elif self.kind[c] == K_I64:
                (<int64_t *>self.values[c].p)[i] = <int64_t>v
            else:
                b = (<str>v).encode("utf-8")
                self._put_string(c, i, PyBytes_AS_STRING(b), <size_t>PyBytes_GET_SIZE(b), True)
                continue
            if self.nullable[c]:
                self._set_valid(c, i, True)
        self.n = i + 1
        return 0

    cdef object take(self):
        """The rows so far as column_buffers.Columns, their memory handed over; starts empty."""
        cdef int c
        cdef Py_ssize_t n = self.n
        self.nulls[self.col_of[S_UNIT]] += <Py_ssize_t>self.plan.unit_nulls
        self.plan.unit_nulls = 0
        if self.cap == 0:
            self.reserve(1)     # an empty string column still has its one offset
        buffers, nulls = {}, {}
        cdef list spare = []
        cdef _ColumnBuffer values, data, validity
        for c, (name, kind, nullable) in enumerate(self.layout):
            validity = data = None
            if self.nulls[c]:
                validity = _hand_over(&self.validity[c], <size_t>(n + 7) // 8, b"B", 1)
            if self.kind[c] == K_STR:
                if n:
                    self.str_hint[c] = <Py_ssize_t>(self.data[c].len // <size_t>n) + 1
                values = _hand_over(&self.values[c], <size_t>(n + 1) * 8, b"q", 8)
                data = _hand_over(&self.data[c], self.data[c].len, b"B", 1)
                buffers[name] = (None if validity is None else memoryview(validity),
                                 memoryview(values), memoryview(data))
            else:
                values = _hand_over(&self.values[c], <size_t>n * 8,
                                    b"d" if self.kind[c] == K_F64 else b"q", 8)
                buffers[name] = (None if validity is None else memoryview(validity),
                                 memoryview(values))
            nulls[name] = self.nulls[c]
            spare += (values, data, validity)
        self._reset()
        self.spare = spare
        return Columns(n, buffers, nulls, self.layout)

    def __len__(self):
        return self.n


@cython.final
cdef class TopN:
    """A space-saving summary (includes/tc_topn.h) on its own, for tests and tools; the engine
    embeds three of them. The pure twin is ``_engine_py.TopN``."""

    capacity = TC_TOPN_CAP
    name_bytes = TC_TOPN_NAME_BYTES

    def __cinit__(self):
        tc_topn_init(&self.summary)

    def add(self, bytes name not None, weight=1):
        """Adds `weight` (a positive int) to `name`, cut to name_bytes."""
        if weight < 1:
            raise ValueError("weight must be positive")
        cdef uint64_t w = weight
        tc_topn_add_name(&self.summary, PyBytes_AS_STRING(name), <size_t>PyBytes_GET_SIZE(name), w)

    def add_pair(self, bytes a not None, bytes b not None, weight=1):
        """Adds `weight` to the name a + b"/" + b, cut to name_bytes."""
        if weight < 1:
            raise ValueError("weight must be positive")
        cdef uint64_t w = weight
        tc_topn_add_pair(&self.summary, PyBytes_AS_STRING(a), <size_t>PyBytes_GET_SIZE(a),
                         PyBytes_AS_STRING(b), <size_t>PyBytes_GET_SIZE(b), w)

    @property
    def total(self):
        return self.summary.total

    def entries(self):
        """Every slot in order: [(name bytes, count, error), ...]."""
        return _topn_entries(&self.summary)

    def top(self, Py_ssize_t k=TOP_OFFENDERS):
        """The k largest: [(name, count, error_bound), ...], by count then name."""
        return top_entries(_topn_entries(&self.summary), k)


cdef list _topn_entries(const tc_topn *t):
    cdef uint32_t i
    return [(PyBytes_FromStringAndSize(t.name[i], t.name_len[i]), t.count[i], t.error[i])
            for i in range(t.n)]


cdef inline bint _is_late(bint started, int64_t closed, int64_t interval) noexcept nogil:
    # tick `closed` has been emitted: its window ended at the start of interval `closed`
    return started and interval < closed


cdef class Engine:
    """Exact sliding-window aggregates per (device, sensor) over CBOR payloads.

    Not thread-safe: one thread owns an Engine (the ingest pipeline's engine thread).
    """

    def __cinit__(self):
        self.lender.drain = _lent_drain
        self.lender.ctx = <void *>self
        self.lend_ring = NULL
        self.lend_error = 0
        tc_sketch_init(&self.qscratch)
        tc_pp_init(&self.pp, 0)
        self.table.keys = NULL
        self.decoded.readings = NULL
        self.batch = NULL

    def __init__(self, window=60.0, emit_every=5.0, max_keys=1_000_000, key_ttl=300.0,
                 max_payload_bytes=65536, max_name_bytes=256, time="arrival",
                 allowed_lateness=DEFAULT_ALLOWED_LATENESS, idle_timeout=DEFAULT_IDLE_TIMEOUT,
                 max_future=DEFAULT_MAX_FUTURE, late_capacity=DEFAULT_LATE_CAPACITY,
                 quantiles=None, quantile_accuracy=QUANTILE_ACCURACY_DEFAULT, partials=False,
                 partials_max_bytes=DEFAULT_PARTIALS_MAX_BYTES):
        cfg = check_config(window, emit_every, max_keys, key_ttl, max_payload_bytes,
                           max_name_bytes)
        ev = check_event_config(time, allowed_lateness, idle_timeout, max_future, late_capacity,
                                cfg.emit_every, cfg.panes)
        qcfg = check_quantiles(quantiles, quantile_accuracy)
        self.partials, pp_max = check_partials(partials, partials_max_bytes, ev.event)
        tc_pp_free(&self.pp)
        tc_pp_init(&self.pp, <size_t>pp_max)
        self.window = cfg.window
        self.emit_every = cfg.emit_every
        self.key_ttl = cfg.key_ttl
        self.max_payload_bytes = cfg.max_payload_bytes
        self.max_name_bytes = cfg.max_name_bytes
        self.panes = cfg.panes
        self.time = time
        self.event = ev.event
        self.allowed_lateness = ev.allowed_lateness
        self.idle_timeout = ev.idle_timeout
        self.max_future = ev.max_future
        self.lead = ev.lead if ev.event else 0
        self.ring = self.panes + self.lead
        self.units = tc_event_units(self.ring, self.lead)
        self.late_capacity = ev.late_capacity
        self.late_out = []
        self.max_t = -INFINITY
        self.max_t_arrival = 0.0
        self.no_event_time = self.late_unrouted = 0
        self.pane_iv = INT64_MIN
        self.pane_of_iv = 0
        seed = int.from_bytes(os.urandom(8), "little")
        if self.table.keys != NULL:
            tc_table_free(&self.table)
        if tc_table_init(&self.table, self.units, cfg.max_keys, seed) != 0:
            raise MemoryError()
        self.table.ring = self.ring   # before any key: the sketch block holds `ring` headers
        self._init_quantiles(qcfg)
        # the reader stores only accepted readings, each at least TC_MIN_READING_BYTES long
        cdef size_t cap = <size_t>self.max_payload_bytes // TC_MIN_READING_BYTES + 1
        free(self.decoded.readings)
        self.decoded.readings = <tc_reading *>malloc(cap * sizeof(tc_reading))
        if self.decoded.readings == NULL:
            raise MemoryError()
        self.decoded.cap = cap
        self.started = False
        self.closed = 0
        self.newest_data = INT64_MIN
        self.pending = []
        self.columns = _ColumnBuilder(self.quantile_names)
        self.emit_columns = False
        self.received = self.payloads = self.readings = 0
        self.evicted = self.ticks = self.aggregates = 0
        memset(self.drops, 0, sizeof(self.drops))
        memset(self.seq_events, 0, sizeof(self.seq_events))
        self.seq_gaps = 0
        tc_topn_init(&self.top_drops)
        tc_topn_init(&self.top_gaps)
        tc_topn_init(&self.top_late)
        self.batch_topics = False

    def __dealloc__(self):
        if self.table.keys != NULL:
            tc_table_free(&self.table)
        free(self.decoded.readings)
        free(self.batch)
        tc_sketch_free(&self.qscratch)
        tc_pp_free(&self.pp)

    cdef int _init_quantiles(self, qcfg) except -1:
        self.quantiles = qcfg.qs
        self.quantile_names = qcfg.names
        self.quantile_accuracy = qcfg.accuracy
        self.n_qs = len(qcfg.qs)   # at most MAX_QUANTILES (rules.check_quantiles)
        for i, q in enumerate(qcfg.qs):
            self.qs[i] = q
        if tc_sketch_map_init(&self.qmap, qcfg.accuracy) != 0:
            raise ValueError(f"quantile_accuracy {qcfg.accuracy!r} out of range")
        # set before any key exists: every record then has its sketch block
        self.table.quantiles = self.n_qs > 0
        return 0

    # ---- the hot path (no GIL) ----------------------------------------------------------------

    cdef int _apply_reading(self, const char *dev, uint32_t dlen, const char *sen, uint32_t slen,
                            const char *unit, uint32_t ulen, double value, double ts,
                            int64_t interval, uint32_t pane, uint64_t seq,
                            bint has_seq) noexcept nogil:
        """0 accepted, 1 dropped for key_limit, 2 for sketch_full, -1 out of memory. The clock is
        already at `interval` (not late, no tick left to close below it); `pane` is its pane."""
        return self._apply_hashed(tc_key_hash(self.table.seed, dev, dlen, sen, slen), dev, dlen,
                                  sen, slen, unit, ulen, value, ts, interval, pane, seq, has_seq)

    cdef int _apply_hashed(self, uint64_t h, const char *dev, uint32_t dlen, const char *sen,
                           uint32_t slen, const char *unit, uint32_t ulen, double value, double ts,
                           int64_t interval, uint32_t pane, uint64_t seq,
                           bint has_seq) noexcept nogil:
        """_apply_reading with the key's hash and the interval's pane already worked out."""
        cdef int rc = 0
        cdef tc_key *k = self._take(h, dev, dlen, sen, slen, unit, ulen, value, ts, interval,
                                    pane, seq, has_seq, &rc)
        if k == NULL:
            return rc
        tc_key_add(k, self.panes, interval, pane, ts, value)
        if interval > self.newest_data:
            self.newest_data = interval
        self.readings += 1
        return 0

    cdef tc_key *_take(self, uint64_t h, const char *dev, uint32_t dlen, const char *sen,
                       uint32_t slen, const char *unit, uint32_t ulen, double value, double time,
                       int64_t interval, uint32_t pane, uint64_t seq, bint has_seq,
                       int *rc) noexcept nogil:
        """The reading's key with everything but the pane statistics updated (its sketch, unit,
        sequence), in either time mode (`time` is ts or t). NULL when the reading goes no
        further: *rc = 1 dropped for key_limit, 2 for sketch_full (both counted), -1 out of
        memory. The record may move: use the key returned."""
        cdef size_t slot
        cdef uint64_t gap
        cdef int seq_class, r
        cdef tc_key *k = tc_table_find(&self.table, h, dev, dlen, sen, slen, &slot)
        if k == NULL:
            if self.table.n_keys >= self.table.max_keys:
                self.drops[TC_DROP_KEY_LIMIT] += 1
                tc_topn_add_pair(&self.top_drops, dev, dlen, sen, slen, 1)
                rc[0] = 1
                return NULL
            k = tc_table_insert(&self.table, h, slot, dev, dlen, sen, slen)
            if k == NULL:
                rc[0] = -1
                return NULL
            if self.lead > 0:
                tc_key_frozen_last(k, self.ring)[0] = 0.0
        if self.n_qs:
            # first, so that a refused value leaves the pane statistics alone
            r = tc_key_qs_add(&self.table, &k, &self.qmap, interval, pane, value)
            if r != TC_QS_OK:
                if r == TC_QS_FULL:
                    self.drops[TC_DROP_SKETCH_FULL] += 1
                    tc_topn_add_pair(&self.top_drops, dev, dlen, sen, slen, 1)
                    rc[0] = 2
                    return NULL
                rc[0] = -1
                return NULL
        if time >= k.last_ts:
            # this reading becomes the key's latest: its unit is the window's unit
            k = tc_key_set_unit(&self.table, k, unit, ulen)
            if k == NULL:
                rc[0] = -1
                return NULL
        if has_seq:
            seq_class = tc_key_seq(k, seq, &gap)
            self.seq_events[seq_class] += 1
            if seq_class == TC_SEQ_GAP:
                self.seq_gaps += gap
                tc_topn_add_pair(&self.top_gaps, dev, dlen, sen, slen, gap)
        return k

    cdef Py_ssize_t _run_batch(self, Py_ssize_t start, Py_ssize_t n, int *why) noexcept nogil:
        """Decodes and applies batch items [start, n). Stops early (and says why) where the GIL
        is needed; the item it stops at is not counted yet.

        Single-reading payloads that need nothing but a window update (the common case) go
        through a short pipeline: decoded and hashed on entry, their hash slot prefetched, and
        applied PIPE_DEPTH such readings later, when the slot is in cache (at 1M keys the slot
        miss otherwise stalls every lookup). Any other item first empties the pipeline, so
        counters, offender summaries and every early stop see the items in batch order."""
        cdef Py_ssize_t i, j, failed
        cdef int status = 0, rc
        cdef tc_reading *r
        cdef batch_item *item
        cdef double ts = NAN, q
        cdef int64_t interval = 0
        cdef uint32_t pane = 0
        cdef bint late
        cdef pipe_entry pipe[PIPE_CAP]
        cdef pipe_entry *e
        cdef size_t head = 0, tail = 0     # entries [head, tail) are waiting, at index % PIPE_CAP
        for i in range(start, n):
            item = &self.batch[i]
            if item.ts != ts:
                # items of one socket read (or one push_many) share ts: divide once per run
                ts = item.ts
                q = floor(ts / self.emit_every)
                if not (q <= MAX_INTERVAL and q >= -MAX_INTERVAL):
                    failed = self._pipe_flush(pipe, head, tail)
                    if failed >= 0:
                        why[0] = RUN_NO_MEMORY
                        return failed + 1
                    why[0] = RUN_BAD_TS
                    return i
                interval = <int64_t>q
                pane = tc_pane_of(interval, self.panes)
            if item.size <= self.max_payload_bytes:
                status = tc_decode_payload(<const unsigned char *>item.data, <size_t>item.size,
                                           self.max_name_bytes, &self.decoded)
                if (status == TC_PAYLOAD_OK and self.decoded.n_readings == 1
                        and self.decoded.schema_mismatch == 0 and self.decoded.non_finite == 0
                        and self.started and interval == self.closed):
                    # neither late nor moving the clock: into the pipeline
                    r = &self.decoded.readings[0]
                    e = &pipe[tail % PIPE_CAP]
                    e.hash = tc_key_hash(self.table.seed, r.device, r.device_len, r.sensor,
                                         r.sensor_len)
                    tc_prefetch_slot(&self.table, e.hash)
                    e.r = r[0]
                    e.interval = interval
                    e.pane = pane
                    e.ts = ts
                    e.index = i
                    tail += 1
                    if tail - head > PIPE_DEPTH:
                        e = &pipe[head % PIPE_CAP]
                        head += 1
                        self.payloads += 1
                        if self._apply_hashed(e.hash, e.r.device, e.r.device_len, e.r.sensor,
                                              e.r.sensor_len, e.r.unit, e.r.unit_len, e.r.value,
                                              e.ts, e.interval, e.pane, e.r.seq,
                                              e.r.has_seq) < 0:
                            why[0] = RUN_NO_MEMORY
                            return e.index + 1
                    continue
            # anything else runs as it always did, after the items before it
            if head != tail:
                failed = self._pipe_flush(pipe, head, tail)
                head = tail = 0
                if failed >= 0:
                    why[0] = RUN_NO_MEMORY
                    return failed + 1
            if item.size > self.max_payload_bytes:
                self.drops[TC_DROP_OVERSIZE] += 1
                self._payload_offender(item, 1)
                continue
            if status != TC_PAYLOAD_OK and status != TC_PAYLOAD_FALLBACK:
                # DECODE_ERROR; CAP_TOO_SMALL cannot happen (cap covers max_payload_bytes)
                self.drops[TC_DROP_DECODE_ERROR] += 1
                self._payload_offender(item, 1)
                continue
            if status == TC_PAYLOAD_FALLBACK:
                why[0] = RUN_FALLBACK
                return i
            late = _is_late(self.started, self.closed, interval)
            if (self.decoded.n_readings > 0 and not late
                    and (not self.started or interval > self.closed)):
                why[0] = RUN_ADVANCE
                return i
            self._count_decoded(item)
            if late:
                self.drops[TC_DROP_LATE] += self.decoded.n_readings
                for j in range(<Py_ssize_t>self.decoded.n_readings):
                    r = &self.decoded.readings[j]
                    tc_topn_add_pair(&self.top_late, r.device, r.device_len, r.sensor,
                                     r.sensor_len, 1)
                continue
            for j in range(<Py_ssize_t>self.decoded.n_readings):
                r = &self.decoded.readings[j]
                rc = self._apply_reading(r.device, r.device_len, r.sensor, r.sensor_len, r.unit,
                                         r.unit_len, r.value, ts, interval, pane, r.seq,
                                         r.has_seq)
                if rc < 0:
                    why[0] = RUN_NO_MEMORY
                    return i + 1
        failed = self._pipe_flush(pipe, head, tail)
        if failed >= 0:
            why[0] = RUN_NO_MEMORY
            return failed + 1
        why[0] = RUN_DONE
        return n

    cdef Py_ssize_t _pipe_flush(self, pipe_entry *pipe, size_t head, size_t tail) noexcept nogil:
        """Applies the pipeline's entries [head, tail) in order. Returns -1, or the batch index
        of the entry that ran out of memory (counted; the entries after it are not)."""
        cdef size_t x
        cdef pipe_entry *e
        for x in range(head, tail):
            e = &pipe[x % PIPE_CAP]
            self.payloads += 1
            if self._apply_hashed(e.hash, e.r.device, e.r.device_len, e.r.sensor, e.r.sensor_len,
                                  e.r.unit, e.r.unit_len, e.r.value, e.ts, e.interval, e.pane,
                                  e.r.seq, e.r.has_seq) < 0:
                return e.index
        return -1

    cdef void _count_decoded(self, const batch_item *item) noexcept nogil:
        """A payload the reader decoded (self.decoded): counted, with the readings it refused
        (schema_mismatch, non_finite) as drops of the payload's topic."""
        self.payloads += 1
        if self.decoded.schema_mismatch or self.decoded.non_finite:
            self.drops[TC_DROP_SCHEMA_MISMATCH] += self.decoded.schema_mismatch
            self.drops[TC_DROP_NON_FINITE] += self.decoded.non_finite
            self._payload_offender(item, self.decoded.schema_mismatch + self.decoded.non_finite)

    cdef void _payload_offender(self, const batch_item *item, uint64_t w) noexcept nogil:
        """A drop counted per payload, or for readings the decoder does not name: the offender
        is the payload's MQTT topic, or "-" when it came without one (push, push_many)."""
        if self.batch_topics:
            tc_topn_add_name(&self.top_drops, item.topic, <size_t>item.topic_len, w)
        else:
            tc_topn_add(&self.top_drops, b"-", 1, w)

    # ---- clock and ticks (GIL) ----------------------------------------------------------------

    cdef int _advance(self, int64_t interval) except -1:
        """Moves the clock to `interval`, closing every tick <= interval on the way."""
        if not self.started:
            # the first tick is the first boundary after the first reading (or tick() call)
            self.started = True
            self.closed = interval
            return 0
        if interval <= self.closed:
            return 0
        if self.partials:
            # before the scan (which may evict a key) and before the reading that moved the
            # clock (which may reuse a closed pane's slot): tc_window_partials.h
            self._take_closing(interval)
        cdef int64_t tick = self.closed + 1
        # a tick emits only for keys with data in its P intervals: past newest_data + P every
        # tick is empty, so jump to the target and only evict there
        cdef int64_t last_emitting = interval
        if self.newest_data == INT64_MIN:
            last_emitting = tick - 1
        elif self.newest_data + <int64_t>self.panes < interval:
            last_emitting = self.newest_data + <int64_t>self.panes
        while tick <= last_emitting:
            self._scan(tick, True)
            tick += 1
        if tick <= interval:
            self._scan(interval, False)
        self.ticks += <uint64_t>(interval - self.closed)
        self.closed = interval
        return 0

    cdef int _take_closing(self, int64_t interval) except -1:
        """The closing hook: every key's panes of [closed, interval) holding data, copied into
        the partial buffer (tc_pp_take_key) while they are still open."""
        cdef size_t i
        cdef int64_t lo = self.closed
        with nogil:
            for i in range(self.table.n_keys):
                if i + SCAN_AHEAD < self.table.n_keys:
                    tc_prefetch_key(self.table.keys[i + SCAN_AHEAD], self.units)
                tc_pp_take_key(&self.pp, &self.table, self.table.keys[i], self.lead, lo, interval)
        return 0

    cdef int _scan(self, int64_t tick, bint emit) except -1:
        """At tick `tick`: emit each key's aggregate, then evict keys idle for key_ttl."""
        cdef double tick_time = <double>tick * self.emit_every
        cdef double window_start = <double>(tick - <int64_t>self.panes) * self.emit_every
        cdef size_t i = 0
        cdef tc_key *k
        cdef tc_agg agg
        cdef Aggregate a
        cdef list out = self.pending
        cdef uint32_t panes = self.panes, units = self.units, ring = self.ring, lead = self.lead
        cdef bint event = self.event
        cdef bint columns = emit and self.emit_columns
        cdef size_t n_keys
        cdef double qv[TC_QS_MAX_QUANTILES]   # the key's quantiles, self.qs order (_key_quantiles)
        if columns:
            self.columns.reserve(<Py_ssize_t>self.table.n_keys)
        while i < self.table.n_keys:
            k = self.table.keys[i]
            n_keys = self.table.n_keys
            if i + SCAN_AHEAD < n_keys:
                tc_prefetch_key(self.table.keys[i + SCAN_AHEAD], units)
            if emit and (tc_key_aggregate_event(k, panes, ring, lead, tick, &agg) if event
                         else tc_key_aggregate(k, panes, tick, &agg)):
                # one aggregate, two outputs: the columns, or an Aggregate (the same values)
                if self.n_qs:
                    self._key_quantiles(k, tick, qv)
                if columns:
                    self.columns.append_key(k, units, &agg, window_start, tick_time, qv)
                else:
                    a = Aggregate.__new__(Aggregate)
                    a.device = PyUnicode_DecodeUTF8(tc_key_device(k, units), k.device_len, NULL)
                    a.sensor = PyUnicode_DecodeUTF8(tc_key_sensor(k, units), k.sensor_len, NULL)
                    if k.unit_len == TC_NO_UNIT:
                        a.unit = None
                    else:
                        a.unit = PyUnicode_DecodeUTF8(tc_key_unit(k, units), k.unit_len, NULL)
                    a.window_start = window_start
                    a.window_end = tick_time
                    a.count = agg.count
                    a.sum = agg.sum
                    a.mean = agg.mean
                    a.min = agg.min
                    a.max = agg.max
                    a.stddev = sqrt(agg.var)
                    a.first = agg.first
                    a.last = agg.last
                    if self.n_qs:
                        self._set_quantiles(a, qv)
                    else:
                        a.quantile_names = a.quantile_values = NO_QUANTILES
                    out.append(a)
                self.aggregates += 1
                if (self.aggregates & GIL_YIELD_MASK) == 0:
                    # Building a million aggregates holds the GIL for ~0.25 s, and no bytecode
                    # boundary comes by where CPython would hand it over: release it briefly so
                    # a thread that has asked for it (the MQTT network thread) gets it now.
                    with nogil:
                        pass
            if tick_time - k.last_ts >= self.key_ttl:
                # swap-remove: the key moved into slot i has not been scanned yet
                tc_table_remove(&self.table, i)
                self.evicted += 1
                continue
            i += 1
        return 0

    cdef int _key_quantiles(self, const tc_key *k, int64_t tick, double *vals) except -1:
        """The quantiles the engine computes (self.qs, named self.quantile_names) of k's window at
        `tick`, into vals[0 .. n_qs): its panes' sketches merged in C into the scratch sketch.
        NaN when the window holds more than 2**32 - 1 values (the sketch's limit;
        docs/windows.md). Both outputs of _scan take them from here."""
        cdef int r = tc_key_qs_window(&self.table, k, self.panes, tick, &self.qscratch)
        cdef int i
        if r == TC_SKETCH_E_NOMEM:
            raise MemoryError("telemetry-cy engine: out of memory merging a window's sketches")
        if r == TC_SKETCH_OK:
            # self.qs ascends (rules.check_quantiles): one walk for all of them
            tc_qs_quantiles(&self.qmap, &self.qscratch.h, self.qscratch.counts, self.qs,
                            self.n_qs, vals)
        else:
            for i in range(self.n_qs):
                vals[i] = NAN
        return 0

    cdef int _set_quantiles(self, Aggregate a, const double *vals) except -1:
        """An Aggregate's quantiles from _key_quantiles' values: the engine's names (shared) and
        one tuple of the values."""
        cdef int i
        cdef tuple values = PyTuple_New(self.n_qs)
        cdef object v
        for i in range(self.n_qs):
            v = PyFloat_FromDouble(vals[i])
            Py_INCREF(v)   # PyTuple_SET_ITEM steals the reference
            PyTuple_SET_ITEM(values, i, v)
        a.quantile_names = self.quantile_names
        a.quantile_values = values
        return 0

    cdef int64_t _interval(self, double ts) except? -1:
        if not isfinite(ts):
            raise ValueError(f"ts must be a finite number of seconds, got {ts!r}")
        cdef double q = floor(ts / self.emit_every)
        if q > MAX_INTERVAL or q < -MAX_INTERVAL:
            raise ValueError(f"ts {ts!r} is out of range")
        return <int64_t>q

    # ---- batches --------------------------------------------------------------------------------

    cdef Py_ssize_t _run_all(self, Py_ssize_t n) except -1:
        """Runs the n items of the batch scratch array; returns the readings accepted."""
        cdef uint64_t before = self.readings
        cdef Py_ssize_t i = 0
        cdef int why = RUN_DONE
        self.received += <uint64_t>n
        while i < n:
            with nogil:
                if self.event:
                    i = self._run_batch_event(i, n, &why)
                else:
                    i = self._run_batch(i, n, &why)
            if why == RUN_EVENT:
                self._event_payload(i)
                i += 1
            elif why == RUN_ADVANCE:
                self._advance(self._interval(self.batch[i].ts))
            elif why == RUN_FALLBACK:
                self._push_fallback(i)
                i += 1
            elif why == RUN_BAD_TS:
                self._interval(self.batch[i].ts)  # raises the ValueError that names it
            elif why == RUN_NO_MEMORY:
                raise MemoryError("telemetry-cy engine: out of memory growing the window table")
        return <Py_ssize_t>(self.readings - before)

    cdef _push_fallback(self, Py_ssize_t i):
        cdef batch_item *item = &self.batch[i]
        cdef int64_t interval = self._interval(item.ts)
        payload = item.data[:item.size]
        decoded = decode_with_cbor2(payload, self.max_name_bytes)
        if decoded.status != "ok":
            self.drops[TC_DROP_DECODE_ERROR] += 1
            self._payload_offender(item, 1)
            return
        self.payloads += 1
        if decoded.schema_mismatch or decoded.non_finite:
            self.drops[TC_DROP_SCHEMA_MISMATCH] += decoded.schema_mismatch
            self.drops[TC_DROP_NON_FINITE] += decoded.non_finite
            self._payload_offender(item, decoded.schema_mismatch + decoded.non_finite)
        for reading in decoded.readings:
            if self.event:
                _event_python(self, reading, item.ts)
            else:
                self._accept_python(reading.device, reading.sensor, reading.value, reading.unit,
                                    reading.seq, item.ts, interval)

    cdef _accept_python(self, str device, str sensor, double value, unit, seq, double ts,
                        int64_t interval):
        """Applies one validated reading that came through Python (fallback, push_reading)."""
        dev_b = device.encode("utf-8")
        sen_b = sensor.encode("utf-8")
        if _is_late(self.started, self.closed, interval):
            self.drops[TC_DROP_LATE] += 1
            tc_topn_add_pair(&self.top_late, PyBytes_AS_STRING(dev_b),
                             <size_t>PyBytes_GET_SIZE(dev_b), PyBytes_AS_STRING(sen_b),
                             <size_t>PyBytes_GET_SIZE(sen_b), 1)
            return
        self._advance(interval)
        cdef const char *unit_p = NULL
        cdef uint32_t ulen = 0
        cdef uint64_t seq_n = 0 if seq is None else seq
        if unit is not None:
            unit_b = (<str>unit).encode("utf-8")
            unit_p = PyBytes_AS_STRING(unit_b)
            ulen = <uint32_t>PyBytes_GET_SIZE(unit_b)
        if self._apply_reading(PyBytes_AS_STRING(dev_b), <uint32_t>PyBytes_GET_SIZE(dev_b),
                               PyBytes_AS_STRING(sen_b), <uint32_t>PyBytes_GET_SIZE(sen_b),
                               unit_p, ulen, value, ts, interval, tc_pane_of(interval, self.panes),
                               seq_n, seq is not None) < 0:
            raise MemoryError("telemetry-cy engine: out of memory growing the window table")

    cdef int _reserve_batch(self, Py_ssize_t n) except -1:
        if n <= self.batch_cap:
            return 0
        cdef Py_ssize_t cap = max(n, 2 * self.batch_cap, 64)
        cdef batch_item *items = <batch_item *>realloc(self.batch, cap * sizeof(batch_item))
        if items == NULL:
            raise MemoryError()
        self.batch = items
        self.batch_cap = cap
        return 0

    # ---- event time (docs/windows.md, "Event time") -----------------------------------------------
    #
    # The closed tick follows the watermark max_t - allowed_lateness (max_t: the largest event time
    # accepted, over all keys), and never falls more than `lead` intervals behind a key's newest
    # pane (the ring holds P + lead panes). A reading whose interval is below the closed tick is
    # late; one more than max_future ahead of its arrival is dropped before it can move max_t.

    cdef int64_t _event_target(self, double max_t) noexcept nogil:
        """The closed tick the watermark of `max_t` asks for."""
        cdef double q = floor((max_t - self.allowed_lateness) / self.emit_every)
        cdef double q2 = floor(max_t / self.emit_every) - <double>self.lead
        if q2 > q:
            q = q2   # only where rounding put the watermark more than `lead` intervals behind
        if q < -MAX_INTERVAL:
            q = -MAX_INTERVAL
        return <int64_t>q

    cdef int _event_classify(self, double t, double arrival, int64_t *interval) noexcept nogil:
        """What a reading at event time t, arrived at `arrival`, needs (EV_*). No side effects."""
        if t - arrival > self.max_future:
            return EV_FUTURE
        cdef double q = floor(t / self.emit_every)
        if not (q <= MAX_INTERVAL and q >= -MAX_INTERVAL):
            return EV_BAD
        interval[0] = <int64_t>q
        if not self.started:
            return EV_ADVANCE
        if interval[0] < self.closed:
            return EV_LATE
        if t > self.max_t and self._event_target(t) > self.closed:
            return EV_ADVANCE
        return EV_APPLY

    cdef uint32_t _event_pane(self, int64_t interval) noexcept nogil:
        if interval != self.pane_iv:
            self.pane_iv = interval
            self.pane_of_iv = tc_pane_of(interval, self.ring)
        return self.pane_of_iv

    cdef int _event_commit(self, const tc_reading *r, double t, double arrival, int cls,
                           int64_t interval) noexcept nogil:
        """Counts or applies one reading classified `cls` (never EV_ADVANCE; a late one is only
        counted here, its routing needs the GIL). 0, or -1 when out of memory."""
        if cls == EV_APPLY:
            if t > self.max_t:
                self.max_t = t
                self.max_t_arrival = arrival
            if self._apply_event(tc_key_hash(self.table.seed, r.device, r.device_len, r.sensor,
                                             r.sensor_len),
                                 r.device, r.device_len, r.sensor, r.sensor_len, r.unit,
                                 r.unit_len, r.value, t, interval, self._event_pane(interval),
                                 r.seq, r.has_seq) < 0:
                return -1
        elif cls == EV_LATE:
            self.drops[TC_DROP_LATE] += 1
            tc_topn_add_pair(&self.top_late, r.device, r.device_len, r.sensor, r.sensor_len, 1)
        else:
            self.drops[TC_DROP_FUTURE if cls == EV_FUTURE else TC_DROP_SCHEMA_MISMATCH] += 1
            tc_topn_add_pair(&self.top_drops, r.device, r.device_len, r.sensor, r.sensor_len, 1)
        return 0

    cdef int _apply_event(self, uint64_t h, const char *dev, uint32_t dlen, const char *sen,
                          uint32_t slen, const char *unit, uint32_t ulen, double value, double t,
                          int64_t interval, uint32_t pane, uint64_t seq,
                          bint has_seq) noexcept nogil:
        """_apply_hashed in event mode (closed <= interval <= closed + lead): 0 accepted, 1
        dropped for key_limit, 2 for sketch_full, -1 out of memory."""
        cdef int rc = 0
        cdef tc_key *k = self._take(h, dev, dlen, sen, slen, unit, ulen, value, t, interval,
                                    pane, seq, has_seq, &rc)
        if k == NULL:
            return rc
        tc_key_add_event(k, self.ring, self.lead, interval, pane, t, value)
        if interval > self.newest_data:
            self.newest_data = interval
        self.readings += 1
        return 0

    cdef Py_ssize_t _run_batch_event(self, Py_ssize_t start, Py_ssize_t n,
                                     int *why) noexcept nogil:
        """_run_batch in event mode: each reading has its own interval. Stops (RUN_EVENT) at a
        payload with a reading that moves the watermark past a window end or is late with
        routing on; the GIL path (_event_payload) runs that payload. Single-reading payloads
        that only update a pane go through the same prefetch pipeline as in arrival mode."""
        cdef Py_ssize_t i, j, failed
        cdef int status, cls
        cdef tc_reading *r
        cdef batch_item *item
        cdef double t
        cdef int64_t interval = 0
        cdef pipe_entry pipe[PIPE_CAP]
        cdef pipe_entry *e
        cdef size_t head = 0, tail = 0
        cdef bint route = self.late_capacity > 0
        for i in range(start, n):
            item = &self.batch[i]
            if item.size <= self.max_payload_bytes:
                status = tc_decode_payload(<const unsigned char *>item.data, <size_t>item.size,
                                           self.max_name_bytes, &self.decoded)
                if (status == TC_PAYLOAD_OK and self.decoded.n_readings == 1
                        and self.decoded.schema_mismatch == 0 and self.decoded.non_finite == 0):
                    r = &self.decoded.readings[0]
                    t = r.t
                    if isnan(t):
                        t = item.ts
                    if self._event_classify(t, item.ts, &interval) == EV_APPLY:
                        if isnan(r.t):
                            self.no_event_time += 1
                        e = &pipe[tail % PIPE_CAP]
                        e.hash = tc_key_hash(self.table.seed, r.device, r.device_len, r.sensor,
                                             r.sensor_len)
                        tc_prefetch_slot(&self.table, e.hash)
                        e.r = r[0]
                        e.r.t = t
                        e.interval = interval
                        e.pane = self._event_pane(interval)
                        e.ts = item.ts
                        e.index = i
                        tail += 1
                        if tail - head > PIPE_DEPTH:
                            failed = self._pipe_flush_event(pipe, head, head + 1)
                            head += 1
                            if failed >= 0:
                                why[0] = RUN_NO_MEMORY
                                return failed + 1
                        continue
            else:
                status = TC_PAYLOAD_DECODE_ERROR
            if head != tail:
                failed = self._pipe_flush_event(pipe, head, tail)
                head = tail = 0
                if failed >= 0:
                    why[0] = RUN_NO_MEMORY
                    return failed + 1
            if item.size > self.max_payload_bytes:
                self.drops[TC_DROP_OVERSIZE] += 1
                self._payload_offender(item, 1)
                continue
            if status == TC_PAYLOAD_FALLBACK:
                why[0] = RUN_FALLBACK
                return i
            if status != TC_PAYLOAD_OK:
                self.drops[TC_DROP_DECODE_ERROR] += 1
                self._payload_offender(item, 1)
                continue
            for j in range(<Py_ssize_t>self.decoded.n_readings):
                r = &self.decoded.readings[j]
                t = item.ts if isnan(r.t) else r.t
                cls = self._event_classify(t, item.ts, &interval)
                if cls == EV_ADVANCE or (cls == EV_LATE and route):
                    why[0] = RUN_EVENT
                    return i
            self._count_decoded(item)
            for j in range(<Py_ssize_t>self.decoded.n_readings):
                r = &self.decoded.readings[j]
                t = r.t
                if isnan(t):
                    t = item.ts
                    self.no_event_time += 1
                cls = self._event_classify(t, item.ts, &interval)
                if self._event_commit(r, t, item.ts, cls, interval) < 0:
                    why[0] = RUN_NO_MEMORY
                    return i + 1
        failed = self._pipe_flush_event(pipe, head, tail)
        if failed >= 0:
            why[0] = RUN_NO_MEMORY
            return failed + 1
        why[0] = RUN_DONE
        return n

    cdef Py_ssize_t _pipe_flush_event(self, pipe_entry *pipe, size_t head,
                                      size_t tail) noexcept nogil:
        """_pipe_flush in event mode (e.r.t is the resolved event time, e.ts the arrival)."""
        cdef size_t x
        cdef pipe_entry *e
        for x in range(head, tail):
            e = &pipe[x % PIPE_CAP]
            self.payloads += 1
            if e.r.t > self.max_t:
                self.max_t = e.r.t
                self.max_t_arrival = e.ts
            if self._apply_event(e.hash, e.r.device, e.r.device_len, e.r.sensor, e.r.sensor_len,
                                 e.r.unit, e.r.unit_len, e.r.value, e.r.t, e.interval, e.pane,
                                 e.r.seq, e.r.has_seq) < 0:
                return e.index
        return -1

    cdef int _event_payload(self, Py_ssize_t i) except -1:
        """Runs the payload _run_batch_event stopped at: it is decoded in self.decoded (its
        strings point into the batch item, alive until the batch is done)."""
        cdef batch_item *item = &self.batch[i]
        cdef Py_ssize_t j
        self._count_decoded(item)
        for j in range(<Py_ssize_t>self.decoded.n_readings):
            self._event_reading(&self.decoded.readings[j], item.ts)
        return 0

    cdef int _event_reading(self, const tc_reading *r, double arrival) except -1:
        """One valid reading in event mode, with the GIL: moves the watermark (emitting the
        windows it passes) and routes a late reading when it has to."""
        cdef double t = r.t
        cdef int64_t interval = 0
        if isnan(t):
            t = arrival
            self.no_event_time += 1
        cdef int cls = self._event_classify(t, arrival, &interval)
        if cls == EV_ADVANCE:
            if t > self.max_t:
                self.max_t = t
                self.max_t_arrival = arrival
            self._advance(self._event_target(self.max_t))
            cls = EV_APPLY
        elif cls == EV_LATE and self.late_capacity > 0:
            if len(self.late_out) < self.late_capacity:
                self.late_out.append(LateReading(
                    PyUnicode_DecodeUTF8(r.device, r.device_len, NULL),
                    PyUnicode_DecodeUTF8(r.sensor, r.sensor_len, NULL),
                    r.value,
                    None if r.unit == NULL else PyUnicode_DecodeUTF8(r.unit, r.unit_len, NULL),
                    t,
                    r.seq if r.has_seq else None,
                    arrival))
            else:
                self.late_unrouted += 1
        if self._event_commit(r, t, arrival, cls, interval) < 0:
            raise MemoryError("telemetry-cy engine: out of memory growing the window table")
        return 0

    cdef int _event_tick(self, double now) except -1:
        """tick(now) in event mode: once no reading has moved max_t for idle_timeout of the
        clock `now` runs on, the watermark moves on with that clock, so windows still close
        (at most allowed_lateness + idle_timeout + emit_every after their end)."""
        if not self.started:
            return 0
        cdef double idle = now - self.max_t_arrival - self.idle_timeout
        if not idle >= 0.0:
            return 0
        cdef int64_t target = self._event_target(self.max_t + idle)
        if target > self.closed:
            self._advance(target)
        return 0

    # ---- public API -------------------------------------------------------------------------------

    def push(self, payload, double ts):
        """Decodes one CBOR payload that arrived at `ts`; returns the readings accepted."""
        if not PyBytes_CheckExact(payload):
            payload = _as_bytes(payload)
        self._interval(ts)
        self._reserve_batch(1)
        self.batch_topics = False
        self.batch[0].data = PyBytes_AS_STRING(payload)
        self.batch[0].size = PyBytes_GET_SIZE(payload)
        self.batch[0].ts = ts
        return self._run_all(1)

    def push_many(self, payloads, double ts):
        """Decodes a batch of payloads taken at one clock reading; returns readings accepted."""
        # `batch` (a list or tuple) keeps every payload alive while the loop reads them without
        # the GIL; anything that is not exactly bytes is converted into a new list first
        cdef object batch = payloads if type(payloads) is list or type(payloads) is tuple \
            else list(payloads)
        cdef Py_ssize_t n = len(batch), i
        cdef PyObject **items = PySequence_Fast_ITEMS(batch)
        for i in range(n):
            if not PyBytes_CheckExact(<object>items[i]):
                batch = [_as_bytes(p) for p in batch]
                items = PySequence_Fast_ITEMS(batch)
                break
        self._interval(ts)
        cdef Py_ssize_t start, m, accepted = 0
        self._reserve_batch(min(n, PUSH_CHUNK))
        self.batch_topics = False
        # in chunks, so each payload object is still in cache when the decoder reads it
        for start in range(0, n, PUSH_CHUNK):
            m = min(PUSH_CHUNK, n - start)
            for i in range(m):
                self.batch[i].data = PyBytes_AS_STRING(<object>items[start + i])
                self.batch[i].size = PyBytes_GET_SIZE(<object>items[start + i])
                self.batch[i].ts = ts
            accepted += self._run_all(m)
        return accepted

    def drain(self, ByteRing ring not None, Py_ssize_t max_records=4096):
        """Consumes up to max_records records from the ingest ring (this thread must be the
        ring's only consumer) and processes their payloads, each at its own arrival ts.
        Returns the number of records consumed."""
        return self._drain(ring, max_records)

    cdef Py_ssize_t _drain(self, ByteRing ring, Py_ssize_t max_records) except -1:
        cdef Py_ssize_t n = 0
        cdef tc_ring_view v
        self._reserve_batch(max_records)
        with nogil:
            # the views point into the ring: valid until tc_ring_release below, and the producer
            # cannot reuse those bytes before then (release is what hands them back)
            while n < max_records and tc_ring_peek(ring._ring, &v):
                self.batch[n].data = <const char *>v.payload
                self.batch[n].size = <Py_ssize_t>v.payload_len
                self.batch[n].ts = v.ts
                self.batch[n].topic = <const char *>v.topic
                self.batch[n].topic_len = <Py_ssize_t>v.topic_len
                tc_ring_consume(ring._ring, &v)
                n += 1
        if n == 0:
            return 0
        self.batch_topics = True
        try:
            self._run_all(n)
        finally:
            tc_ring_release(ring._ring)
        return n

    cdef int _drain_lent(self) noexcept nogil:
        """_drain on the network thread while run_ring's park lends the engine (tc_park.h):
        without the GIL, so it stops before the first record that needs it (a payload for cbor2,
        data moving the clock, an event-time payload to route: RUN_* other than RUN_DONE) and
        leaves that record and the rest in the ring for the engine thread (rewound to the mark
        taken before the record's peek). Returns 1 when it left records in the ring."""
        cdef tc_ring *r = self.lend_ring
        cdef size_t marks[LENT_DRAIN_MAX]
        cdef tc_ring_view v
        cdef Py_ssize_t n = 0, done
        cdef Py_ssize_t most = self.batch_cap if self.batch_cap < LENT_DRAIN_MAX else LENT_DRAIN_MAX
        cdef int why = RUN_DONE
        while n < most:
            marks[n] = tc_ring_mark(r)
            if not tc_ring_peek(r, &v):
                break
            self.batch[n].data = <const char *>v.payload
            self.batch[n].size = <Py_ssize_t>v.payload_len
            self.batch[n].ts = v.ts
            self.batch[n].topic = <const char *>v.topic
            self.batch[n].topic_len = <Py_ssize_t>v.topic_len
            tc_ring_consume(r, &v)
            n += 1
        if n == 0:
            return 0
        self.batch_topics = True
        if self.event:
            done = self._run_batch_event(0, n, &why)
        else:
            done = self._run_batch(0, n, &why)
        if why == RUN_NO_MEMORY:
            # as _run_all after the same stop, but raised on the engine thread (run_ring)
            self.lend_error = RUN_NO_MEMORY
        self.received += <uint64_t>done
        if done < n:
            tc_ring_rewind(r, marks[done])
        tc_ring_release(r)
        if done < n:
            return 1
        return tc_ring_peek(r, &v)   # at its bound with more behind: the engine thread's

    def run_ring(self, ByteRing ring not None, double seconds, Py_ssize_t batch_records=8192,
                 bint lend=True):
        """The engine thread between two of its Python turns: drains the ring in batches of
        batch_records and, after a short batch, parks on the ring's doorbell without the GIL,
        until `seconds` have passed (monotonic clock; one drain always happens) or the ring is
        woken (ByteRing.wake). Returns True when woken (its parks count in ring.parks).

        While parked it lends the engine (`lend`): the network thread may drain a few records
        into it itself instead of waking this thread (tc_park.h; ring.lends counts those)."""
        cdef long long deadline = _mono_ns() + <long long>(max(seconds, 0.0) * 1e9)
        cdef long long left
        cdef Py_ssize_t n
        cdef int why
        cdef tc_lender *lender = NULL
        self._reserve_batch(min(batch_records, LENT_DRAIN_MAX))   # the lent drain cannot grow it
        if lend:
            self.lend_ring = ring._ring   # ring outlives the call: run_ring holds it
            lender = &self.lender
        while True:
            # a payload cbor2 must read, or data closing a tick, takes the GIL inside _drain
            # (as drain() does): neither needs the caller, whose tick collects what was closed
            n = self._drain(ring, batch_records)
            left = deadline - _mono_ns()
            if left <= 0:
                return False
            if n >= batch_records:
                # busy: no park, so look for a kick here (a stop must not wait for the deadline)
                if tc_doorbell_take_kick(&ring.bell):
                    return True
                continue
            with nogil:
                why = ring.park_ns(left, lender)
            if self.lend_error:
                self.lend_error = 0
                raise MemoryError("telemetry-cy engine: out of memory growing the window table")
            if why == TC_PARK_KICKED:
                # records that came with the kick stay in the ring for the caller's next drain
                return True

    def push_reading(self, str device not None, str sensor not None, value, double ts,
                     unit=None, seq=None, t=None):
        """Adds one reading given as Python values (`seq`: the payload's optional `n`, `t` its
        event time), arrived at `ts`. Bad values are counted drops like bad payloads
        (schema_mismatch, non_finite); wrong argument types raise TypeError."""
        cdef int64_t interval = self._interval(ts)
        checked = _check_reading(device, sensor, value, unit, self.max_name_bytes, seq, t)
        if isinstance(checked, str):
            self.drops[DROP_REASONS.index(checked)] += 1
            tc_topn_add(&self.top_drops, b"-", 1, 1)
            return
        if self.event:
            _event_python(self, checked, ts)
            return
        self._accept_python(checked.device, checked.sensor, checked.value, checked.unit,
                            checked.seq, ts, interval)

    def tick(self, double now):
        """Closes every aligned tick <= now and returns the aggregates of all ticks closed since
        the last call, oldest tick first."""
        self._close_to(now, False)
        out = self.pending
        self.pending = []
        return out

    def tick_columns(self, double now):
        """tick(now) with the aggregates as columns (column_buffers.Columns): the same rows in
        the same order, filled in C without an object per aggregate."""
        self._close_to(now, True)
        return self.columns.take()

    cdef int _close_to(self, double now, bint columns) except -1:
        """What tick and tick_columns share: every tick <= now closed into the chosen output."""
        cdef int64_t interval = self._interval(now)
        self._emit_to(columns)
        if self.event:
            self._event_tick(now)
        elif not self.started or interval > self.closed:
            self._advance(interval)
        return 0

    cdef int _emit_to(self, bint columns) except -1:
        """Closed ticks go to the output of the last tick call. Ticks closed by data since then
        are older than any the coming call closes: moved over first, in order (the slow path,
        only when a caller switches between tick and tick_columns)."""
        if columns == self.emit_columns:
            return 0
        cdef dict d
        if columns:
            for a in self.pending:
                d = a.as_dict()
                self.columns.append_row(tuple([d[name] for name in self.columns.names]))
            self.pending = []
        else:
            self.pending = [Aggregate(*aggregate_args(d))
                            for d in self.columns.take().to_dicts()]
        self.emit_columns = columns
        return 0

    def open_readings(self):
        """Readings accepted in the interval no tick has closed yet: they are in no aggregate
        returned so far (docs/windows.md, "Stopping"). O(live keys)."""
        if not self.started:
            return 0
        cdef uint64_t n = 0
        cdef size_t i
        if self.event:
            for i in range(self.table.n_keys):
                n += tc_key_open_count_event(self.table.keys[i], self.ring, self.closed)
            return n
        for i in range(self.table.n_keys):
            n += tc_key_open_count(self.table.keys[i], self.panes, self.closed)
        return n

    def take_closed_panes(self, partitions):
        """The panes the clock closed since the last call (partial mode), as a ClosedPanes:
        per (interval, partition), ascending, the n pane records of the partial format, keys in
        (device, sensor) order; and the panes lost to a full buffer (tc_window_partials.h)."""
        if not self.partials:
            raise ValueError("take_closed_panes needs an engine made with partials=True")
        cdef uint32_t parts = check_partitions(partitions)
        cdef size_t n = self.pp.n, i = 0, j, x, total
        cdef tc_pp_item *items = NULL
        cdef char *o
        groups = []
        if n:
            items = <tc_pp_item *>malloc(n * sizeof(tc_pp_item))
            if items == NULL:
                raise MemoryError()
            try:
                with nogil:
                    tc_pp_order(&self.pp, parts, items)
                while i < n:
                    j = i
                    total = 0
                    while (j < n and items[j].interval == items[i].interval
                           and items[j].partition == items[i].partition):
                        total += items[j].len
                        j += 1
                    body = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
                    o = PyBytes_AS_STRING(body)
                    for x in range(i, j):
                        memcpy(o, items[x].rec, items[x].len)
                        o += items[x].len
                    groups.append((items[i].interval, items[i].partition, j - i, body))
                    i = j
            finally:
                free(items)
        lost = self.pp.lost
        tc_pp_clear(&self.pp)
        return ClosedPanes(self.closed if self.started else None, groups, lost)

    def take_late(self):
        """The late readings kept since the last call (event time with late_capacity > 0),
        oldest first: each a ``LateReading``. At most late_capacity are kept between two calls;
        the rest are still counted `late`, and `late_unrouted` in stats()["event_time"]."""
        out = self.late_out
        self.late_out = []
        return out

    def stats(self):
        # partial mode's buffer keeps its capacity between drains: memory of the window state
        # like the table's, so state_bytes counts it (0 outside partial mode: nothing allocated)
        cdef size_t pp_bytes = tc_pp_bytes(&self.pp)
        return {
            "received": self.received,
            "payloads": self.payloads,
            "readings": self.readings,
            "drops": {reason: self.drops[i] for i, reason in enumerate(ENGINE_REASONS)},
            "live_keys": self.table.n_keys,
            "evicted": self.evicted,
            "state_bytes": tc_table_state_bytes(&self.table) + pp_bytes,
            "partial_buffer_bytes": pp_bytes,
            "ticks": self.ticks,
            "aggregates": self.aggregates,
            "pending": len(self.pending) + self.columns.n,
            "closed_tick": self.closed * self.emit_every if self.started else None,
            "event_time": {
                "no_event_time": self.no_event_time,
                "late_unrouted": self.late_unrouted,
                "watermark": (self.max_t - self.allowed_lateness
                              if self.event and self.started else None),
            },
            "seq": {
                "gaps": self.seq_gaps,
                "duplicates": self.seq_events[TC_SEQ_DUPLICATE],
                "reorders": self.seq_events[TC_SEQ_REORDER],
                "restarts": self.seq_events[TC_SEQ_RESTART],
            },
            "offenders": {
                "drops": top_entries(_topn_entries(&self.top_drops), TOP_OFFENDERS),
                "gaps": top_entries(_topn_entries(&self.top_gaps), TOP_OFFENDERS),
                "late": top_entries(_topn_entries(&self.top_late), TOP_OFFENDERS),
            },
        }

    @property
    def max_keys(self):
        return self.table.max_keys

    # ---- snapshots (docs/state.md; the keys section in includes/tc_snapshot.h) ----------------

    def snapshot(self):
        """The engine's whole state as bytes (docs/state.md): restore it with from_snapshot."""
        cdef tc_snap_shape shape = _snap_shape(self)
        cdef size_t keys_len = 0, i, n = self.table.n_keys
        cdef unsigned char *o
        with nogil:
            for i in range(n):
                keys_len += tc_snap_key_size(self.table.keys[i], &shape)
        head = snap.prefix(_snap_settings(self), _snap_state(self), n, keys_len)
        cdef Py_ssize_t head_len = len(head)
        # one buffer, filled in place: the keys are written without the GIL straight into it
        out = PyBytes_FromStringAndSize(NULL, head_len + <Py_ssize_t>keys_len + 4)
        o = <unsigned char *>PyBytes_AS_STRING(out)
        memcpy(o, PyBytes_AS_STRING(head), head_len)
        o += head_len
        with nogil:
            for i in range(n):
                o = tc_snap_write_key(o, self.table.keys[i], &shape)
        # zlib.crc32 releases the GIL over a large buffer; the host is little-endian
        # (tc_snapshot.h refuses to build otherwise), as the field is
        cdef uint32_t crc = snap.checksum(out)
        memcpy(o, &crc, 4)
        return out

    @classmethod
    def from_snapshot(cls, data, **settings):
        """An engine built with `settings` (Engine's keyword arguments) holding the state of a
        snapshot. Raises SnapshotError (a ValueError) naming the reason when the bytes are not
        a sound snapshot or were made with other window, emit_every, time or quantile
        settings. With a smaller max_keys the most recently seen keys are kept; the others are
        counted as evicted."""
        cdef Engine engine = cls(**settings)
        opened = snap.open_snapshot(data)
        snap.check_settings(opened.settings, _snap_settings(engine))
        _restore_state(engine, opened.state)
        _restore_keys(engine, data, opened.keys_start, opened.keys_end, opened.n_keys)
        return engine


# ---- snapshots: the engine section goes through snapshot_format, the keys through C -----------

cdef tc_snap_shape _snap_shape(Engine eng):
    cdef tc_snap_shape s
    s.units = eng.units
    s.ring = eng.ring
    s.lead = eng.lead
    s.event = eng.event
    s.started = eng.started
    s.closed = eng.closed
    s.quantiles = eng.table.quantiles
    s.qmap = &eng.qmap
    return s


cdef _snap_settings(Engine eng):
    return snap.Settings(
        eng.window, eng.emit_every, eng.panes, bool(eng.event), eng.lead,
        eng.allowed_lateness if eng.event else 0.0,
        *snap.quantile_settings(eng.quantiles, eng.quantile_accuracy), eng.table.max_keys,
        eng.key_ttl, eng.idle_timeout, eng.max_future, eng.late_capacity, eng.max_name_bytes,
        eng.max_payload_bytes)


cdef _snap_state(Engine eng):
    return snap.EngineState(
        bool(eng.started), eng.closed, eng.newest_data, eng.max_t, eng.max_t_arrival,
        (eng.received, eng.payloads, eng.readings, eng.evicted, eng.ticks, eng.aggregates),
        tuple(eng.seq_events[i] for i in range(6)), eng.seq_gaps, eng.no_event_time,
        eng.late_unrouted, {reason: eng.drops[i] for i, reason in enumerate(ENGINE_REASONS)},
        ((eng.top_drops.total, _topn_entries(&eng.top_drops)),
         (eng.top_gaps.total, _topn_entries(&eng.top_gaps)),
         (eng.top_late.total, _topn_entries(&eng.top_late))),
        snap.pending_of(eng.pending), list(eng.late_out))


cdef _restore_topn(tc_topn *t, uint64_t total, list entries):
    if len(entries) > TC_TOPN_CAP:
        raise SnapshotError("malformed", f"{len(entries)} offender slots, at most {TC_TOPN_CAP}")
    names = set()
    cdef uint32_t i = 0
    tc_topn_init(t)
    for name, count, error in entries:
        if len(<bytes>name) > TC_TOPN_NAME_BYTES or name in names:
            raise SnapshotError("malformed", "an offender name is too long or repeated")
        names.add(name)
        t.count[i] = count
        t.error[i] = error
        t.name_len[i] = <uint32_t>len(<bytes>name)
        memcpy(t.name[i], PyBytes_AS_STRING(name), t.name_len[i])
        t.hash[i] = tc_topn_hash(t.name[i], t.name_len[i])
        i += 1
    t.n = i
    t.total = total
    # min_pos/min_val only bound where the takeover search starts: (0, 0) makes the first search
    # a full scan, which finds the slot the writer's bound would have found
    t.min_pos = 0
    t.min_val = 0


cdef _restore_state(Engine eng, st):
    eng.started = st.started
    eng.closed = st.closed
    eng.newest_data = st.newest_data
    eng.max_t = st.max_t
    eng.max_t_arrival = st.max_t_arrival
    (eng.received, eng.payloads, eng.readings, eng.evicted, eng.ticks,
     eng.aggregates) = st.counters
    cdef int i
    for i in range(6):
        eng.seq_events[i] = st.seq_events[i]
    eng.seq_gaps = st.seq_gaps
    eng.no_event_time = st.no_event_time
    for name, count in st.drops.items():
        if name not in ENGINE_REASONS:
            raise SnapshotError("malformed", f"unknown drop reason {name!r}")
        eng.drops[ENGINE_REASONS.index(name)] = count
    _restore_topn(&eng.top_drops, st.offenders[0][0], st.offenders[0][1])
    _restore_topn(&eng.top_gaps, st.offenders[1][0], st.offenders[1][1])
    _restore_topn(&eng.top_late, st.offenders[2][0], st.offenders[2][1])
    eng.pending = [Aggregate(**agg, quantile_names=eng.quantile_names if qv else (),
                             quantile_values=qv) for agg, qv in st.pending]
    eng.late_out, eng.late_unrouted = snap.late_kept(st, eng.late_capacity)


cdef int _cmp_desc(const void *a, const void *b) noexcept nogil:
    cdef double x = (<const double *>a)[0], y = (<const double *>b)[0]
    return (x < y) - (x > y)


cdef _restore_keys(Engine eng, data, Py_ssize_t start, Py_ssize_t end, uint64_t n_keys):
    """tc_snapshot.h over data[start:end]: one checking load, or with more keys than max_keys a
    scan first and the keys seen last kept (snapshot_format.keep_mask, same rule)."""
    cdef const unsigned char[::1] view = memoryview(data).cast("B")
    cdef const unsigned char *p = &view[0] + start
    cdef size_t length = <size_t>(end - start)
    cdef tc_snap_shape shape = _snap_shape(eng)
    cdef const char *why = NULL
    cdef double *last_ts = NULL
    cdef double *order = NULL
    cdef unsigned char *keep = NULL
    cdef uint64_t i, ties, max_keys = eng.table.max_keys, dropped = 0
    cdef double threshold
    cdef int rc
    if n_keys > length // TC_SNAP_KEY_HEAD:
        raise SnapshotError("malformed", f"{n_keys} keys cannot fit {length} bytes")
    cdef bint scanned = n_keys > max_keys
    try:
        if scanned:
            # which keys fit needs every key's last_ts first: a checking pass, then the load
            last_ts = <double *>malloc(n_keys * sizeof(double))
            order = <double *>malloc(n_keys * sizeof(double))
            keep = <unsigned char *>malloc(n_keys)
            if last_ts == NULL or order == NULL or keep == NULL:
                raise MemoryError()
            with nogil:
                rc = tc_snap_scan(p, length, &shape, n_keys, last_ts, &why)
            if rc != 0:
                raise SnapshotError("malformed", why.decode("ascii"))
        if keep != NULL:
            with nogil:
                memcpy(order, last_ts, n_keys * sizeof(double))
                qsort(order, n_keys, sizeof(double), _cmp_desc)
                threshold = order[max_keys - 1]
                ties = max_keys
                for i in range(n_keys):
                    if last_ts[i] > threshold:
                        ties -= 1
                for i in range(n_keys):
                    keep[i] = last_ts[i] > threshold
                    if not keep[i] and last_ts[i] == threshold and ties > 0:
                        keep[i] = 1
                        ties -= 1
                    if not keep[i]:
                        dropped += 1
        with nogil:
            rc = tc_snap_load(&eng.table, p, length, &shape, n_keys, keep, scanned, &why)
        if rc < 0:
            raise MemoryError("telemetry-cy engine: out of memory restoring a snapshot")
        if rc > 0:
            raise SnapshotError("malformed", why.decode("ascii"))
        eng.evicted += dropped
    finally:
        free(last_ts)
        free(order)
        free(keep)


cdef _event_python(Engine eng, reading, double arrival):
    """A validated Reading that came through Python (fallback, push_reading) in event mode:
    the same path as a decoded one, its strings held by bytes objects for the call."""
    cdef tc_reading r
    dev_b = (<str>reading.device).encode("utf-8")
    sen_b = (<str>reading.sensor).encode("utf-8")
    unit_b = None if reading.unit is None else (<str>reading.unit).encode("utf-8")
    r.device = PyBytes_AS_STRING(dev_b)
    r.device_len = <uint32_t>PyBytes_GET_SIZE(dev_b)
    r.sensor = PyBytes_AS_STRING(sen_b)
    r.sensor_len = <uint32_t>PyBytes_GET_SIZE(sen_b)
    r.unit = NULL if unit_b is None else PyBytes_AS_STRING(unit_b)
    r.unit_len = 0 if unit_b is None else <uint32_t>PyBytes_GET_SIZE(unit_b)
    r.value = reading.value
    r.has_seq = reading.seq is not None
    r.seq = reading.seq if r.has_seq else 0
    r.t = NAN if reading.t is None else reading.t
    eng._event_reading(&r, arrival)


cdef bytes _as_bytes(payload):
    if PyBytes_CheckExact(payload):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes-like, not {type(payload).__name__}")


from telemetry_cy.engine.rules import check_reading as _check_reading
