"""Compiled quantile sketch: a thin wrapper of includes/tc_sketch.h, for tests, tools and the
pure/compiled switch (the engine uses the C functions directly, without this class).

Same API, same results bit for bit and the same bytes as the twin ``sketch_py.QuantileSketch``,
whose messages this module raises; the API is in ``_sketch.pyi``, the guarantee in
docs/quantiles.md.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.math cimport NAN, fabs, isfinite
from libc.stdint cimport int32_t, uint8_t, uint32_t

from telemetry_cy.engine import sketch_py as _twin
from telemetry_cy.engine.sketch_py import REASONS as _REASONS
from telemetry_cy.engine.sketch_py import _to_double
from telemetry_cy.engine.sketch_py import alpha_error as _alpha_error

# The twin states the constants for both; a header that disagrees would be a different sketch.
if (TC_SKETCH_CAP, TC_SKETCH_VERSION, TC_SKETCH_HEADER_BYTES, TC_SKETCH_MAX_COUNT,
        TC_SKETCH_MIN_ALPHA, TC_SKETCH_MAX_ALPHA, TC_SKETCH_ZERO_BELOW, TC_SKETCH_EDGE) != (
        _twin.CAP, _twin.VERSION, _twin.HEADER_BYTES, _twin.MAX_COUNT, _twin.MIN_ALPHA,
        _twin.MAX_ALPHA, _twin.ZERO_BELOW, _twin.EDGE):
    raise ImportError("telemetry_cy.engine._sketch is out of date with sketch_py")

MIN_ALPHA = _twin.MIN_ALPHA
MAX_ALPHA = _twin.MAX_ALPHA
ZERO_BELOW = _twin.ZERO_BELOW
CAP = _twin.CAP
MAX_COUNT = _twin.MAX_COUNT
VERSION = _twin.VERSION
MAGIC = _twin.MAGIC
HEADER_BYTES = _twin.HEADER_BYTES


cdef object _error(int code, object detail=None):
    if code == TC_SKETCH_E_NOMEM:
        return MemoryError(_REASONS[code])
    if detail is not None:
        return ValueError(f"{_REASONS[code]}: {detail!r}")
    return ValueError(_REASONS[code])


cdef QuantileSketch _same_mapping(QuantileSketch self, other):
    if not isinstance(other, QuantileSketch):
        raise TypeError(f"expected a QuantileSketch of this module, got {type(other).__name__}")
    cdef QuantileSketch o = <QuantileSketch>other
    if o.m.alpha != self.m.alpha:
        raise ValueError(f"sketches of different accuracy: {self.m.alpha!r} and {o.m.alpha!r}")
    return o


cdef class QuantileSketch:
    """A mergeable quantile sketch: every quantile within ``alpha`` relative error
    (docs/quantiles.md)."""

    def __cinit__(self):
        tc_sketch_init(&self.s)

    def __init__(self, alpha=0.01):
        cdef double a = _to_double(alpha)
        if tc_sketch_map_init(&self.m, a) != 0:
            raise _alpha_error(a)

    def __dealloc__(self):
        tc_sketch_free(&self.s)

    # ---- the mapping

    @property
    def alpha(self):
        return self.m.alpha

    @property
    def gamma(self):
        return self.m.gamma

    @property
    def min_index(self):
        return self.m.min_index

    @property
    def max_index(self):
        return self.m.max_index

    def bucket_index(self, value):
        """The bucket of |value| (|value| >= 1e-9, finite)."""
        cdef double av = fabs(_to_double(value))
        if not (isfinite(av) and av >= TC_SKETCH_ZERO_BELOW):
            raise ValueError(f"no bucket for {value!r}: |value| must be finite and >= {ZERO_BELOW}")
        return tc_sketch_index(&self.m, av)

    def bucket_value(self, index):
        """The value bucket `index` reports for |v|."""
        if not (self.m.min_index <= index <= self.m.max_index):
            raise ValueError(f"bucket index {index} outside "
                             f"[{self.m.min_index}, {self.m.max_index}]")
        return tc_sketch_value(&self.m, <int32_t>index)

    # ---- contents

    @property
    def count(self):
        return self.s.h.n

    def buckets(self):
        """(zero count, positive min, positive counts, negative min, negative counts)."""
        cdef uint32_t k
        cdef uint32_t pl = self.s.h.pos_len
        cdef uint32_t nl = self.s.h.neg_len
        zero = self.s.h.n - tc_sketch_stores_sum(&self.s.h, self.s.counts)
        pos = tuple([self.s.counts[k] for k in range(pl)])
        neg = tuple([self.s.counts[pl + k] for k in range(nl)])
        return zero, self.s.h.pos_min, pos, self.s.h.neg_min, neg

    def clear(self):
        tc_sketch_clear(&self.s)

    def copy(self):
        cdef QuantileSketch other = QuantileSketch.__new__(QuantileSketch)
        other.m = self.m
        cdef int r = tc_sketch_merge(&other.s, &self.s.h, self.s.counts)
        if r != TC_SKETCH_OK:
            raise _error(r)
        return other

    def add(self, value):
        cdef double v = _to_double(value)
        cdef int r = tc_sketch_add(&self.s, &self.m, v)
        if r == TC_SKETCH_E_NONFINITE:
            raise _error(r, v)
        if r != TC_SKETCH_OK:
            raise _error(r)

    def add_many(self, values):
        """add() for each value in turn; a bad value raises, the values before it stay added.
        A buffer of doubles (array('d'), a float64 memoryview) is read without the interpreter."""
        cdef const double[::1] buf
        cdef Py_ssize_t k, n
        cdef int r = TC_SKETCH_OK
        try:
            buf = values
        except (TypeError, ValueError, BufferError):
            for v in values:
                self.add(v)
            return
        n = buf.shape[0]
        k = 0
        with nogil:
            while k < n:
                r = tc_sketch_add(&self.s, &self.m, buf[k])
                if r != TC_SKETCH_OK:
                    break
                k += 1
        if r == TC_SKETCH_E_NONFINITE:
            raise _error(r, buf[k])
        if r != TC_SKETCH_OK:
            raise _error(r)

    def merge(self, other):
        """Adds other's values: the result is what adding them one by one would have made."""
        cdef QuantileSketch o = _same_mapping(self, other)
        cdef int r = tc_sketch_merge(&self.s, &o.s.h, o.s.counts)
        if r != TC_SKETCH_OK:
            raise _error(r)

    def subtract(self, other):
        """Removes other's values, which must all be in this sketch (as after merging it)."""
        cdef QuantileSketch o = _same_mapping(self, other)
        cdef int r = tc_sketch_subtract(&self.s, &o.s.h, o.s.counts)
        if r != TC_SKETCH_OK:
            raise _error(r)

    # ---- quantiles

    def quantile(self, q):
        """The value of the bucket holding the value of rank floor(q * (n - 1)), 0-based."""
        cdef double qq = _to_double(q)
        if not (0.0 <= qq <= 1.0):
            raise ValueError(f"quantile must be in [0, 1], got {qq!r}")
        if self.s.h.n == 0:
            raise ValueError("quantile of an empty sketch")
        return tc_sketch_quantile(&self.m, &self.s.h, self.s.counts, qq)

    def quantiles(self, qs):
        return [self.quantile(q) for q in qs]

    # ---- byte layout (tc_sketch.h)

    def to_bytes(self):
        cdef size_t n = tc_sketch_bytes(&self.s.h)
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
        tc_sketch_write(&self.m, &self.s.h, self.s.counts, <uint8_t *>PyBytes_AS_STRING(out))
        return out

    @classmethod
    def from_bytes(cls, data, alpha=None):
        """The sketch of a to_bytes() output; ValueError saying why for anything else. With
        `alpha`, the bytes must carry exactly that accuracy."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        cdef bytes b = bytes(data)
        cdef double expect = NAN if alpha is None else _to_double(alpha)
        cdef QuantileSketch s = QuantileSketch.__new__(QuantileSketch)
        cdef int r = tc_sketch_read(<const uint8_t *>PyBytes_AS_STRING(b), len(b), expect, &s.m,
                                    &s.s)
        if r == TC_SKETCH_E_NOMEM:
            raise _error(r)
        if r != TC_SKETCH_OK:
            raise ValueError(f"not a readable sketch: {_REASONS[r]}")
        return s

    def __repr__(self):
        return (f"QuantileSketch(alpha={self.m.alpha!r}, count={self.s.h.n}, "
                f"buckets={tc_sketch_buckets(&self.s.h)})")
