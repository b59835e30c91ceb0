"""Pure-Python twin of the quantile sketch (includes/tc_sketch.h, wrapped by ``_sketch.pyx``).

The same mapping, the same stores, the same rank rule and the same byte layout as the C code,
operation for operation on the same doubles: ``math.log`` and ``math.pow`` are libm's ``log`` and
``pow``, so every value lands in the same bucket and every quantile and every byte is identical
to the compiled module's. docs/quantiles.md has the guarantee and its proof; tc_sketch.h the
reasoning behind each step, which this file does not repeat.

It is the test oracle for the compiled sketch, and the sketch of the pure engine.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Iterable
from functools import cache

MIN_ALPHA = 0.005
MAX_ALPHA = 0.05
ZERO_BELOW = 1e-9
CAP = 1024
MAX_COUNT = 2**32 - 1
VERSION = 1
MAGIC = b"TCQS"
HEADER_BYTES = 32
EDGE = 2.0**-20
DBL_MAX = sys.float_info.max

_HEADER = struct.Struct("<4sBBHdIiiHH")
assert _HEADER.size == HEADER_BYTES

# The result codes of tc_sketch.h (TC_SKETCH_E_*) and what each means to a caller. The compiled
# module raises these same messages, so either set explains a refusal in the same words.
E_NONFINITE = 1
E_FULL = 2
E_NOMEM = 3
E_NOT_CONTAINED = 4
E_TRUNCATED = 5
E_MAGIC = 6
E_VERSION = 7
E_RESERVED = 8
E_ALPHA = 9
E_STORE_LEN = 10
E_LENGTH = 11
E_INDEX = 12
E_NONCANONICAL = 13
E_TOTAL = 14

REASONS: dict[int, str] = {
    E_NONFINITE: "not a finite value",
    E_FULL: "the sketch would hold more than 2**32 - 1 values",
    E_NOMEM: "out of memory",
    E_NOT_CONTAINED: "the other sketch's values are not all in this one",
    E_TRUNCATED: f"truncated: shorter than the {HEADER_BYTES}-byte header",
    E_MAGIC: "not a quantile sketch (bad magic)",
    E_VERSION: f"unsupported layout version (this build reads version {VERSION})",
    E_RESERVED: "reserved header bytes are not zero",
    E_ALPHA: f"accuracy outside [{MIN_ALPHA}, {MAX_ALPHA}] or not the expected one",
    E_STORE_LEN: f"a store is longer than {CAP} buckets",
    E_LENGTH: "byte length does not match the header's store lengths",
    E_INDEX: "a bucket index outside the values [1e-9, DBL_MAX] map to",
    E_NONCANONICAL: "not canonical: a zero count at a store's edge, "
                    "or an empty store's min is not 0",
    E_TOTAL: "more than 2**32 - 1 values in all",
}


def alpha_error(alpha: float) -> ValueError:
    return ValueError(f"quantile accuracy must be in [{MIN_ALPHA}, {MAX_ALPHA}], got {alpha!r}")


class Mapping:
    """Value <-> bucket index for one accuracy (tc_sketch_map)."""

    __slots__ = ("alpha", "gamma", "mult", "rep_factor", "min_index", "max_index")

    def __init__(self, alpha: float) -> None:
        if not (MIN_ALPHA <= alpha <= MAX_ALPHA):
            raise alpha_error(alpha)
        a = alpha * (1.0 - 2.0**-20)
        self.alpha = alpha
        self.gamma = (1.0 + a) / (1.0 - a)
        self.mult = 1.0 / math.log(self.gamma)
        self.rep_factor = 1.0 + a
        self.min_index = self.index(ZERO_BELOW)
        self.max_index = self.index(DBL_MAX)

    def edge(self, k: int) -> float:
        """B(k) = pow(gamma, k); inf where libm overflows (C's pow returns inf there too)."""
        try:
            return math.pow(self.gamma, float(k))
        except OverflowError:
            return math.inf

    def index(self, av: float) -> int:
        """I(av) for finite av >= 1e-9: the i with B(i - 1) < av <= B(i)."""
        t = math.log(av) * self.mult
        i = math.ceil(t)
        c = float(i)
        if c - t < EDGE:
            if av > self.edge(i):
                i += 1
        elif t - (c - 1.0) < EDGE:
            if av <= self.edge(i - 1):
                i -= 1
        return i

    def value(self, i: int) -> float:
        r = self.edge(i - 1) * self.rep_factor
        return DBL_MAX if r > DBL_MAX else r


@cache
def mapping(alpha: float) -> Mapping:
    return Mapping(alpha)


# ---- stores: lists of counts with the index of the first ------------------------------------


def _span(lo: int, hi: int, keep_high: bool) -> tuple[int, int]:
    if hi - lo + 1 > CAP:
        if keep_high:
            lo = hi - (CAP - 1)
        else:
            hi = lo + (CAP - 1)
    return lo, hi - lo + 1


def _union(lo: int, n: int, olo: int, on: int, keep_high: bool) -> tuple[int, int]:
    if on == 0:
        return lo, n
    if n == 0:
        return olo, on
    return _span(min(lo, olo), max(lo + n - 1, olo + on - 1), keep_high)


def _fold(smin: int, src: list[int], dmin: int, dst: list[int]) -> None:
    dmax = dmin + len(dst) - 1
    for k, c in enumerate(src):
        i = smin + k
        if i < dmin:
            i = dmin
        elif i > dmax:
            i = dmax
        dst[i - dmin] += c


def _merged(lo: int, counts: list[int], olo: int, other: list[int],
            keep_high: bool) -> tuple[int, list[int]]:
    """The store (lo, counts) plus the store (olo, other), widened and capped as
    tc_sketch_merge does; `counts` is added to in place when the shape stays."""
    nlo, n = _union(lo, len(counts), olo, len(other), keep_high)
    if (nlo, n) != (lo, len(counts)):
        fresh = [0] * n
        _fold(lo, counts, nlo, fresh)
        lo, counts = nlo, fresh
    _fold(olo, other, lo, counts)
    return lo, counts


def _subtract(smin: int, src: list[int], dmin: int, dst: list[int], keep_high: bool) -> bool:
    if not src:
        return True
    if not dst:
        return False
    dmax = dmin + len(dst) - 1
    full = len(dst) == CAP
    for k, c in enumerate(src):
        if c == 0:
            continue
        i = smin + k
        if i < dmin:
            if not (full and keep_high):
                return False
            i = dmin
        elif i > dmax:
            if not (full and not keep_high):
                return False
            i = dmax
        if dst[i - dmin] < c:
            return False
        dst[i - dmin] -= c
    return True


def _tighten(lo: int, counts: list[int]) -> tuple[int, list[int]]:
    a, b = 0, len(counts)
    while a < b and counts[a] == 0:
        a += 1
    while b > a and counts[b - 1] == 0:
        b -= 1
    if a == b:
        return 0, []
    return lo + a, counts[a:b]


def _to_double(value: object) -> float:
    # what Cython's `double` argument accepts: numbers, not strings
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"must be real number, not {type(value).__name__}")
    return float(value)  # type: ignore[arg-type]


class QuantileSketch:
    """A mergeable quantile sketch: every quantile within ``alpha`` relative error
    (docs/quantiles.md). The API of the compiled ``telemetry_cy.engine._sketch.QuantileSketch``."""

    __slots__ = ("_m", "_pos_min", "_pos", "_neg_min", "_neg", "_n")

    def __init__(self, alpha: float = 0.01) -> None:
        self._m = mapping(_to_double(alpha))
        self._pos_min = 0
        self._pos: list[int] = []
        self._neg_min = 0
        self._neg: list[int] = []
        self._n = 0

    # ---- the mapping

    @property
    def alpha(self) -> float:
        return self._m.alpha

    @property
    def gamma(self) -> float:
        return self._m.gamma

    @property
    def min_index(self) -> int:
        return self._m.min_index

    @property
    def max_index(self) -> int:
        return self._m.max_index

    def bucket_index(self, value: float) -> int:
        """The bucket of |value| (|value| >= 1e-9, finite)."""
        av = abs(_to_double(value))
        if not (math.isfinite(av) and av >= ZERO_BELOW):
            raise ValueError(f"no bucket for {value!r}: |value| must be finite and >= {ZERO_BELOW}")
        return self._m.index(av)

    def bucket_value(self, index: int) -> float:
        """The value bucket `index` reports for |v|."""
        if not (self._m.min_index <= index <= self._m.max_index):
            raise ValueError(f"bucket index {index} outside "
                             f"[{self._m.min_index}, {self._m.max_index}]")
        return self._m.value(index)

    # ---- contents

    @property
    def count(self) -> int:
        return self._n

    def buckets(self) -> tuple[int, int, tuple[int, ...], int, tuple[int, ...]]:
        """(zero count, positive min, positive counts, negative min, negative counts)."""
        zero = self._n - sum(self._pos) - sum(self._neg)
        return zero, self._pos_min, tuple(self._pos), self._neg_min, tuple(self._neg)

    def clear(self) -> None:
        self._pos_min, self._pos, self._neg_min, self._neg, self._n = 0, [], 0, [], 0

    def copy(self) -> QuantileSketch:
        other = QuantileSketch.__new__(QuantileSketch)
        other._m = self._m
        other._pos_min, other._pos = self._pos_min, list(self._pos)
        other._neg_min, other._neg = self._neg_min, list(self._neg)
        other._n = self._n
        return other

    def add(self, value: float) -> None:
        v = _to_double(value)
        if not math.isfinite(v):
            raise ValueError(f"{REASONS[E_NONFINITE]}: {v!r}")
        if self._n == MAX_COUNT:
            raise ValueError(REASONS[E_FULL])
        av = abs(v)
        if av < ZERO_BELOW:
            self._n += 1
            return
        i = self._m.index(av)
        if v > 0:
            off = i - self._pos_min
            if 0 <= off < len(self._pos):
                self._pos[off] += 1
            else:
                self._pos_min, self._pos = _merged(self._pos_min, self._pos, i, [1], True)
        else:
            off = i - self._neg_min
            if 0 <= off < len(self._neg):
                self._neg[off] += 1
            else:
                self._neg_min, self._neg = _merged(self._neg_min, self._neg, i, [1], False)
        self._n += 1

    def add_many(self, values: Iterable[float]) -> None:
        """add() for each value in turn; a bad value raises, the values before it stay added."""
        for v in values:
            self.add(v)

    def _same_mapping(self, other: object) -> QuantileSketch:
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"expected a QuantileSketch of this module, got {type(other).__name__}")
        if other._m.alpha != self._m.alpha:
            raise ValueError(f"sketches of different accuracy: {self._m.alpha!r} and "
                             f"{other._m.alpha!r}")
        return other

    def merge(self, other: QuantileSketch) -> None:
        """Adds other's values: the result is what adding them one by one would have made."""
        o = self._same_mapping(other)
        if self._n + o._n > MAX_COUNT:
            raise ValueError(REASONS[E_FULL])
        opos, oneg = list(o._pos), list(o._neg)   # other may be self
        self._pos_min, self._pos = _merged(self._pos_min, self._pos, o._pos_min, opos, True)
        self._neg_min, self._neg = _merged(self._neg_min, self._neg, o._neg_min, oneg, False)
        self._n += o._n

    def subtract(self, other: QuantileSketch) -> None:
        """Removes other's values, which must all be in this sketch (as after merging it)."""
        o = self._same_mapping(other)
        if o._n > self._n:
            raise ValueError(REASONS[E_NOT_CONTAINED])
        zero_o = o._n - sum(o._pos) - sum(o._neg)
        zero_s = self._n - sum(self._pos) - sum(self._neg)
        if zero_o > zero_s:
            raise ValueError(REASONS[E_NOT_CONTAINED])
        pos, neg = list(self._pos), list(self._neg)
        if not (_subtract(o._pos_min, list(o._pos), self._pos_min, pos, True)
                and _subtract(o._neg_min, list(o._neg), self._neg_min, neg, False)):
            raise ValueError(REASONS[E_NOT_CONTAINED])
        self._pos_min, self._pos = _tighten(self._pos_min, pos)
        self._neg_min, self._neg = _tighten(self._neg_min, neg)
        self._n -= o._n

    # ---- quantiles

    def quantile(self, q: float) -> float:
        """The value of the bucket holding the value of rank floor(q * (n - 1)), 0-based."""
        q = _to_double(q)
        if not (0.0 <= q <= 1.0):
            raise ValueError(f"quantile must be in [0, 1], got {q!r}")
        if self._n == 0:
            raise ValueError("quantile of an empty sketch")
        rank = math.floor(q * float(self._n - 1))
        seen = 0
        for k in range(len(self._neg) - 1, -1, -1):
            seen += self._neg[k]
            if seen > rank:
                return -self._m.value(self._neg_min + k)
        seen += self._n - sum(self._pos) - sum(self._neg)
        if seen > rank:
            return 0.0
        for k, c in enumerate(self._pos):
            seen += c
            if seen > rank:
                return self._m.value(self._pos_min + k)
        raise AssertionError("counts do not sum to the count")

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        return [self.quantile(q) for q in qs]

    # ---- byte layout (tc_sketch.h)

    def to_bytes(self) -> bytes:
        zero = self._n - sum(self._pos) - sum(self._neg)
        head = _HEADER.pack(MAGIC, VERSION, 0, 0, self._m.alpha, zero, self._pos_min,
                            self._neg_min, len(self._pos), len(self._neg))
        return head + struct.pack(f"<{len(self._pos) + len(self._neg)}I", *self._pos, *self._neg)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview,
                   alpha: float | None = None) -> QuantileSketch:
        """The sketch of a to_bytes() output; ValueError saying why for anything else. With
        `alpha`, the bytes must carry exactly that accuracy."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        b = bytes(data)
        code, parsed = _read(b, None if alpha is None else _to_double(alpha))
        if code:
            raise ValueError(f"not a readable sketch: {REASONS[code]}")
        m, pos_min, pos, neg_min, neg, n = parsed
        s = cls.__new__(cls)
        s._m, s._pos_min, s._pos, s._neg_min, s._neg, s._n = m, pos_min, pos, neg_min, neg, n
        return s

    def __repr__(self) -> str:
        return (f"QuantileSketch(alpha={self._m.alpha!r}, count={self._n}, "
                f"buckets={len(self._pos) + len(self._neg)})")


def _check_store(m: Mapping, lo: int, counts: tuple[int, ...]) -> int:
    if not counts:
        return 0 if lo == 0 else E_NONCANONICAL
    if lo < m.min_index or lo > m.max_index or lo + len(counts) - 1 > m.max_index:
        return E_INDEX
    if counts[0] == 0 or counts[-1] == 0:
        return E_NONCANONICAL
    return 0


def _read(b: bytes, expect_alpha: float | None):
    """tc_sketch_read: (0, (mapping, pos_min, pos, neg_min, neg, n)) or (error code, None)."""
    if len(b) < HEADER_BYTES:
        return E_TRUNCATED, None
    magic, version, flags, reserved, alpha, zero, pos_min, neg_min, pos_len, neg_len = \
        _HEADER.unpack_from(b)
    if magic != MAGIC:
        return E_MAGIC, None
    if version != VERSION:
        return E_VERSION, None
    if flags or reserved:
        return E_RESERVED, None
    if not (MIN_ALPHA <= alpha <= MAX_ALPHA):
        return E_ALPHA, None
    m = mapping(alpha)
    if expect_alpha is not None and struct.pack("<d", alpha) != struct.pack("<d", expect_alpha):
        return E_ALPHA, None
    if pos_len > CAP or neg_len > CAP:
        return E_STORE_LEN, None
    if len(b) != HEADER_BYTES + 4 * (pos_len + neg_len):
        return E_LENGTH, None
    counts = struct.unpack_from(f"<{pos_len + neg_len}I", b, HEADER_BYTES)
    pos, neg = counts[:pos_len], counts[pos_len:]
    code = _check_store(m, pos_min, pos) or _check_store(m, neg_min, neg)
    if code:
        return code, None
    total = zero + sum(counts)
    if total > MAX_COUNT:
        return E_TOTAL, None
    return 0, (m, pos_min, list(pos), neg_min, list(neg), total)
