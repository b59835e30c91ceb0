"""The quantile sketch (includes/tc_sketch.h, its twin sketch_py.py): the guarantee of
docs/quantiles.md against an exact oracle, merge, collapse, the byte layout, compiled == pure.

The oracle is a sorted list: for q and the values x_0 <= ... <= x_{n-1} (|x| < 1e-9 taken as 0),
x_lo and x_hi are the order statistics of ranks floor(q(n-1)) and ceil(q(n-1)), computed in
exact rational arithmetic, and the reported value must satisfy, exactly (Fractions, no rounding
in the check):
    x_lo - alpha |x_lo|  <=  reported  <=  x_hi + alpha |x_hi|
which is x_lo (1 - alpha) <= v <= x_hi (1 + alpha) for positive values and the mirror for
negative ones. Streams keep each sign's values within a 1,000x span (the documented condition);
the collapse tests go beyond it on purpose.
"""

from __future__ import annotations

import array
import math
import os
import random
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.c_build import build_fuzz_target, need_cc
from telemetry_cy.engine import sketch_py

ALPHAS = (0.005, 0.01, 0.02, 0.05)
QS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
DBL_MAX = sys.float_info.max
CAP = sketch_py.CAP
HERE = Path(__file__).resolve().parent
FUZZ = HERE / "fuzz"

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def Sketch(backend):  # noqa: N802 - returns a class
    return backend.sketch.QuantileSketch


def sketch_of(cls, values, alpha: float):
    s = cls(alpha)
    s.add_many(values)
    return s


# ---- the exact oracle ---------------------------------------------------------------------------


def order_stats(values, q: float) -> tuple[float, float]:
    xs = sorted(0.0 if abs(v) < 1e-9 else v for v in values)
    pos = Fraction(q) * (len(xs) - 1)
    return xs[math.floor(pos)], xs[math.ceil(pos)]


def within(reported: float, x_lo: float, x_hi: float, alpha: float) -> bool:
    a, v = Fraction(alpha), Fraction(reported)
    lo, hi = Fraction(x_lo), Fraction(x_hi)
    return lo - a * abs(lo) <= v <= hi + a * abs(hi)


def assert_guarantee(sketch, values, alpha: float, qs=QS) -> None:
    assert sketch.count == len(values)
    for q in qs:
        got = sketch.quantile(q)
        x_lo, x_hi = order_stats(values, q)
        assert within(got, x_lo, x_hi, alpha), (q, got, x_lo, x_hi, alpha)


# ---- streams ------------------------------------------------------------------------------------
#
# Each draws its values from random.Random(seed), scaled by 10**e; a sign's values stay within
# [scale, 1000 * scale] (clipped to DBL_MAX), so the guarantee applies.

KINDS = ("uniform", "lognormal", "bimodal", "pareto", "negative", "mixed", "constant", "tiny",
         "top")


def _spread(rng: random.Random, kind: str) -> float:
    """A factor in [1, 1000] with the kind's distribution."""
    if kind == "uniform":
        x = rng.uniform(1, 1000)
    elif kind == "lognormal":
        x = rng.lognormvariate(3.45, 1.2)
    elif kind == "bimodal":
        x = rng.gauss(3.0, 0.3) if rng.random() < 0.6 else rng.gauss(700.0, 40.0)
    else:  # pareto: heavy right tail, most mass near 1
        x = rng.paretovariate(1.1)
    return min(max(x, 1.0), 1000.0)


def make_stream(kind: str, n: int, seed: int, e: int) -> list[float]:
    rng = random.Random(seed)
    scale = 10.0**e
    base = ("uniform", "lognormal", "bimodal", "pareto")

    def one(scale: float) -> float:
        shape = rng.choice(base) if kind in ("negative", "mixed") else kind
        return min(scale * _spread(rng, shape), DBL_MAX)

    if kind in base:
        return [one(scale) for _ in range(n)]
    if kind == "negative":
        return [-one(scale) for _ in range(n)]
    if kind == "mixed":   # each sign its own scale; zeros and tiny values in between
        neg_scale = 10.0 ** rng.randint(-9, 300)
        out = []
        for _ in range(n):
            r = rng.random()
            out.append(one(scale) if r < 0.45 else -one(neg_scale) if r < 0.9
                       else rng.choice([0.0, -0.0, 3e-10, -9.99e-10]))
        return out
    if kind == "constant":
        c = rng.choice([scale, -scale, 0.0, 1e-9, -DBL_MAX, DBL_MAX, scale * 1.2345])
        return [c] * n
    if kind == "tiny":    # below 1e-9 reported as 0; the rest within [1e-9, 1e-6]
        return [rng.choice([1.0, -1.0])
                * rng.choice([rng.uniform(0, 1e-9), 10 ** rng.uniform(-9, -6)]) for _ in range(n)]
    # top: the largest doubles
    return [rng.choice([1.0, -1.0]) * min(DBL_MAX, DBL_MAX / rng.uniform(1, 1000))
            for _ in range(n)]


streams = st.builds(make_stream, st.sampled_from(KINDS), st.integers(1, 300),
                    st.integers(0, 2**32), st.integers(-9, 305))


@SETTINGS
@given(stream=streams, alpha=st.sampled_from(ALPHAS), q=st.floats(0, 1))
def test_guarantee_on_streams(backend, stream, alpha, q):
    s = sketch_of(Sketch(backend), stream, alpha)
    assert_guarantee(s, stream, alpha, QS + (q,))


# Adversarial floats: any base, any factor within 1,000x, hypothesis's favourite edge values.
span_limited = st.builds(
    lambda base, factors, signs: [sg * min(base * f, DBL_MAX) for f, sg in zip(factors, signs)],
    st.floats(1e-9, DBL_MAX / 1000),
    st.lists(st.floats(1.0, 1000.0), min_size=1, max_size=60),
    st.lists(st.sampled_from([1.0, -1.0]), min_size=60, max_size=60))


@SETTINGS
@given(values=span_limited, alpha=st.floats(sketch_py.MIN_ALPHA, sketch_py.MAX_ALPHA),
       q=st.floats(0, 1))
def test_guarantee_for_any_alpha_in_range(backend, values, alpha, q):
    s = sketch_of(Sketch(backend), values, alpha)
    assert_guarantee(s, values, alpha, QS + (q,))


# ---- the mapping at the bucket edges ------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_every_bucket_edge_and_representative(alpha):
    """Over every bucket of [1e-9, DBL_MAX]: B(k) = pow(gamma, k) increases, B(k) itself and its
    lower neighbour map to k and the next double up to k + 1 (the fast index never contradicts
    the edges), and the representative is within alpha of both ends of (B(k-1), B(k)], exactly."""
    m = sketch_py.Mapping(alpha)
    a = Fraction(alpha)
    prev = m.edge(m.min_index - 1)
    assert prev < 1e-9 <= m.edge(m.min_index)
    for k in range(m.min_index, m.max_index + 1):
        b = m.edge(k)
        assert b > prev
        rep = Fraction(m.value(k))
        assert rep <= (1 + a) * Fraction(prev), k
        assert rep >= (1 - a) * Fraction(min(b, DBL_MAX)), k
        if b <= DBL_MAX:
            assert m.index(b) == k
            up = math.nextafter(b, math.inf)
            if up <= DBL_MAX:
                assert m.index(up) == k + 1
            down = math.nextafter(b, 0.0)
            if down >= 1e-9:
                assert m.index(down) == (k if down > prev else k - 1)
        prev = b
    assert b > DBL_MAX or m.index(DBL_MAX) == m.max_index


@SETTINGS
@given(v=st.floats(1e-9, DBL_MAX), alpha=st.floats(sketch_py.MIN_ALPHA, sketch_py.MAX_ALPHA))
def test_index_is_the_bucket_between_edges(compiled_backend, v, alpha):
    m = sketch_py.Mapping(alpha)
    i = m.index(v)
    assert m.edge(i - 1) < v <= m.edge(i)
    assert Sketch(compiled_backend)(alpha).bucket_index(v) == i
    assert Sketch(compiled_backend)(alpha).bucket_value(i) == m.value(i)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_values_at_edges_meet_the_guarantee(backend, alpha):
    """Streams made of edges and their neighbours, where rounding would show."""
    cls = Sketch(backend)
    probe = cls(alpha)
    rng = random.Random(alpha)
    for e in (-9, -3, 0, 5, 100, 300):
        k0 = probe.bucket_index(10.0**e)
        edges = [probe.gamma ** float(k) for k in range(k0, k0 + 40)]
        values = []
        for b in edges:
            for v in (b, math.nextafter(b, 0.0), math.nextafter(b, math.inf)):
                values.append(v if rng.random() < 0.7 else -v)
        s = sketch_of(cls, values, alpha)
        assert_guarantee(s, values, alpha, QS + tuple(i / 97 for i in range(98)))


def test_extremes(backend):
    """The largest doubles and the smallest indexed magnitude (one 1,000x span per sketch)."""
    cls = Sketch(backend)
    for values in ([DBL_MAX, -DBL_MAX, math.nextafter(DBL_MAX, 0.0), DBL_MAX / 999.0, 0.0],
                   [1e-9, -1e-9, math.nextafter(1e-9, 1.0), 9.99e-7, -1e-6],
                   [math.nextafter(1e-9, 0.0), -0.0, 0.0, -5e-324]):
        for alpha in ALPHAS:
            s = sketch_of(cls, values, alpha)
            assert s.buckets()[0] == sum(1 for v in values if abs(v) < 1e-9)
            assert_guarantee(s, values, alpha, [i / 20 for i in range(21)])
    tiny = sketch_of(cls, [1e-10, -3e-12, 0.0], 0.02)
    assert [tiny.quantile(q) for q in (0.0, 0.5, 1.0)] == [0.0, 0.0, 0.0]


# ---- merge, subtract, collapse ------------------------------------------------------------------

wide = st.lists(st.builds(lambda m, e, sg: sg * min(m * 10.0**e, DBL_MAX), st.floats(1, 10),
                          st.integers(-12, 308), st.sampled_from([1.0, -1.0])),
                max_size=200)


@SETTINGS
@given(values=st.one_of(streams, wide), cuts=st.lists(st.integers(0, 300), max_size=6),
       alpha=st.sampled_from(ALPHAS), seed=st.integers(0, 1000))
def test_merge_equals_adding_all(backend, values, cuts, alpha, seed):
    """Whatever the split and the merge order, collapses included: the same counts and bytes."""
    cls = Sketch(backend)
    bounds = sorted({0, len(values), *(c for c in cuts if c < len(values))})
    parts = [sketch_of(cls, values[a:b], alpha) for a, b in zip(bounds, bounds[1:])]
    random.Random(seed).shuffle(parts)
    merged = cls(alpha)
    for p in parts:
        merged.merge(p)
    whole = sketch_of(cls, values, alpha)
    assert merged.buckets() == whole.buckets()
    assert merged.to_bytes() == whole.to_bytes()
    assert merged.count == len(values)


@SETTINGS
@given(a=st.one_of(streams, wide), b=st.one_of(streams, wide), alpha=st.sampled_from(ALPHAS))
def test_subtract_undoes_merge(backend, a, b, alpha):
    cls = Sketch(backend)
    sa, sb = sketch_of(cls, a, alpha), sketch_of(cls, b, alpha)
    both = sa.copy()
    both.merge(sb)
    collapsed = any(len(store) == CAP for store in both.buckets()[2::2])
    rest = both.copy()
    rest.subtract(sb)
    assert rest.count == len(a)
    if not collapsed:
        assert rest.to_bytes() == sa.to_bytes()
    again = rest.copy()
    again.merge(sb)
    assert again.to_bytes() == both.to_bytes()


def test_subtract_refuses_what_is_not_there(backend):
    cls = Sketch(backend)
    s = sketch_of(cls, [1.0, 2.0, 3.0, -4.0, 0.0], 0.01)
    before = s.to_bytes()
    for other in ([5.0], [1.0, 1.0], [-1.0], [0.0, 0.0], [1.0, 2.0, 3.0, -4.0, 0.0, 0.0]):
        with pytest.raises(ValueError, match="not all in this one"):
            s.subtract(sketch_of(cls, other, 0.01))
        assert s.to_bytes() == before
    s.subtract(s)
    assert s.count == 0 and s.to_bytes() == cls(0.01).to_bytes()


@pytest.mark.parametrize("alpha", ALPHAS)
def test_collapse_keeps_the_upper_quantiles(backend, alpha):
    """Beyond the cap: the positive store keeps its top CAP buckets, the negative store its CAP
    smallest magnitudes; the folded values count in the end bucket kept. Every quantile keeps
    its lower bound; one whose order statistic is above the fold is still within alpha; one at
    or below it reports the end bucket's value."""
    cls = Sketch(backend)
    rng = random.Random(int(alpha * 1000))
    pos = [10 ** rng.uniform(-9, 308) for _ in range(3000)]
    neg = [-(10 ** rng.uniform(-9, 308)) for _ in range(3000)]
    for values in (pos, neg, pos + neg):
        s = sketch_of(cls, values, alpha)
        zero, pmin, pc, nmin, nc = s.buckets()
        xs = sorted(values)
        if pc:
            top = s.bucket_index(max(v for v in values if v > 0))
            assert len(pc) == CAP and pmin == top - CAP + 1
            assert pc[0] == sum(1 for v in values if v > 0 and s.bucket_index(v) <= pmin)
        if nc:
            low = s.bucket_index(max(v for v in values if v < 0))   # smallest magnitude
            assert len(nc) == CAP and nmin == low
            assert nc[-1] == sum(1 for v in values if v < 0 and s.bucket_index(v) >= nmin + CAP - 1)

        def folded(x):   # in a bucket that holds folded values
            return (x > 0 and pc and s.bucket_index(x) <= pmin) or \
                   (x < 0 and nc and s.bucket_index(x) >= nmin + CAP - 1)

        for q in [i / 200 for i in range(201)]:
            got = s.quantile(q)
            r = math.floor(q * (len(xs) - 1))
            x_lo, x_hi = order_stats(values, q)
            a = Fraction(alpha)
            assert Fraction(got) >= Fraction(x_lo) - a * abs(Fraction(x_lo))
            if folded(xs[r]):
                end = pmin if xs[r] > 0 else nmin + CAP - 1
                assert got == math.copysign(s.bucket_value(end), xs[r])
            else:
                assert within(got, x_lo, x_hi, alpha), (q, got)


def test_a_sketch_holds_at_most_2_to_32_values(backend):
    cls = Sketch(backend)
    almost = bytearray(cls(0.01).to_bytes())
    struct.pack_into("<I", almost, 16, 2**32 - 1)   # the zero count
    full = cls.from_bytes(bytes(almost))
    assert full.count == 2**32 - 1 and full.quantile(0.5) == 0.0
    for v in (0.0, 1.0, -1.0):
        with pytest.raises(ValueError, match="more than 2\\*\\*32 - 1"):
            full.add(v)
    with pytest.raises(ValueError, match="more than 2\\*\\*32 - 1"):
        full.merge(sketch_of(cls, [5.0], 0.01))
    assert full.to_bytes() == bytes(almost)


# ---- API edges ----------------------------------------------------------------------------------


def test_bad_arguments(backend):
    cls = Sketch(backend)
    for alpha in (0.0049, 0.0501, float("nan"), -0.01):
        with pytest.raises(ValueError, match="accuracy"):
            cls(alpha)
    s = sketch_of(cls, [1.0, 2.0], 0.01)
    for v in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="not a finite value"):
            s.add(v)
    with pytest.raises(TypeError):
        s.add("1.0")
    assert s.count == 2
    with pytest.raises(ValueError, match="finite value"):
        s.add_many([3.0, 4.0, float("nan"), 5.0])
    assert s.count == 4    # the values before the bad one stay
    with pytest.raises(ValueError, match="finite value"):
        s.add_many(array.array("d", [6.0, float("inf"), 7.0]))
    assert s.count == 5
    for q in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="quantile"):
            s.quantile(q)
    with pytest.raises(ValueError, match="empty"):
        cls(0.01).quantile(0.5)
    with pytest.raises(ValueError, match="different accuracy"):
        s.merge(cls(0.02))
    with pytest.raises(TypeError):
        s.merge(object())
    with pytest.raises(ValueError, match="no bucket"):
        s.bucket_index(1e-10)
    with pytest.raises(ValueError, match="outside"):
        s.bucket_value(s.max_index + 1)


def test_compiled_and_pure_sketches_do_not_mix(compiled_backend, pure_backend):
    c, p = Sketch(compiled_backend)(0.01), Sketch(pure_backend)(0.01)
    with pytest.raises(TypeError):
        c.merge(p)
    with pytest.raises(TypeError):
        p.merge(c)


def test_add_many_buffer_equals_list(compiled_backend):
    cls = Sketch(compiled_backend)
    values = make_stream("mixed", 2000, 3, 2)
    assert sketch_of(cls, array.array("d", values), 0.01).to_bytes() == \
        sketch_of(cls, values, 0.01).to_bytes()


def test_sensor_like_pane_uses_few_buckets(backend):
    """The memory claim of docs/quantiles.md: values within +-20 % of a level fill at most
    log(1.5) / log(gamma) + 2 buckets (22 at alpha = 0.01), wherever the level is."""
    cls = Sketch(backend)
    rng = random.Random(9)
    for alpha in ALPHAS:
        bound = math.floor(math.log(1.2 / 0.8) / math.log(cls(alpha).gamma)) + 2
        for level in (1e-6, 0.37, 21.5, 1013.25, 4e12, -40.0):
            s = sketch_of(cls, [level * rng.uniform(0.8, 1.2) for _ in range(5000)], alpha)
            used = len(s.buckets()[2]) + len(s.buckets()[4])
            assert used <= bound, (alpha, level, used)
    assert math.floor(math.log(1.5) / math.log(cls(0.01).gamma)) + 2 == 22


# ---- byte layout --------------------------------------------------------------------------------


@SETTINGS
@given(values=st.one_of(streams, wide), alpha=st.sampled_from(ALPHAS))
def test_bytes_round_trip(compiled_backend, pure_backend, values, alpha):
    for writer in (compiled_backend, pure_backend):
        written = sketch_of(Sketch(writer), values, alpha)
        data = written.to_bytes()
        assert len(data) == 32 + 4 * (len(written.buckets()[2]) + len(written.buckets()[4]))
        for reader in (compiled_backend, pure_backend):
            back = Sketch(reader).from_bytes(data)
            assert back.to_bytes() == data
            assert back.alpha == alpha and back.count == len(values)
            assert Sketch(reader).from_bytes(memoryview(data), alpha=alpha).to_bytes() == data
            with pytest.raises(ValueError, match="accuracy"):
                Sketch(reader).from_bytes(data, alpha=0.03)


def test_layout_fields():
    """The documented layout, field by field, for one known sketch."""
    s = sketch_py.QuantileSketch(0.01)
    s.add_many([0.0, 1.0, 1.0, -2.0])
    data = s.to_bytes()
    i1, i2 = s.bucket_index(1.0), s.bucket_index(2.0)
    assert data[:4] == b"TCQS" and data[4] == 1 and data[5:8] == b"\0\0\0"
    assert struct.unpack_from("<d", data, 8)[0] == 0.01
    assert struct.unpack_from("<IiiHH", data, 16) == (1, i1, i2, 1, 1)
    assert struct.unpack_from("<II", data, 32) == (2, 1)
    assert len(data) == 40


def _corpus(prefix: str) -> list[Path]:
    return sorted((FUZZ / "corpus" / "sketch").glob(f"{prefix}-*.bin"))


BAD_REASON = {   # corpus file -> the reason the reader must give
    "truncated-header": sketch_py.E_TRUNCATED, "truncated-counts": sketch_py.E_LENGTH,
    "foreign-json": sketch_py.E_MAGIC, "foreign-cbor": sketch_py.E_MAGIC,
    "magic": sketch_py.E_MAGIC, "version-2": sketch_py.E_VERSION,
    "version-255": sketch_py.E_VERSION, "flags": sketch_py.E_RESERVED,
    "reserved": sketch_py.E_RESERVED, "alpha-low": sketch_py.E_ALPHA,
    "alpha-high": sketch_py.E_ALPHA, "alpha-nan": sketch_py.E_ALPHA,
    "alpha-inf": sketch_py.E_ALPHA, "store-len": sketch_py.E_STORE_LEN,
    "length-extra": sketch_py.E_LENGTH, "length-short-store": sketch_py.E_LENGTH,
    "index-low": sketch_py.E_INDEX, "index-high": sketch_py.E_INDEX,
    "index-beyond-max": sketch_py.E_INDEX, "noncanonical-edge": sketch_py.E_NONCANONICAL,
    "noncanonical-empty-min": sketch_py.E_NONCANONICAL, "total": sketch_py.E_TOTAL,
}


def test_bad_bytes_raise_with_their_reason(backend):
    files = _corpus("bad")
    assert {p.stem.removeprefix("bad-") for p in files} == set(BAD_REASON)
    for path in files:
        reason = sketch_py.REASONS[BAD_REASON[path.stem.removeprefix("bad-")]]
        with pytest.raises(ValueError) as info:
            Sketch(backend).from_bytes(path.read_bytes())
        assert str(info.value) == f"not a readable sketch: {reason}", path.name
    with pytest.raises(TypeError):
        Sketch(backend).from_bytes("TCQS")


def test_every_truncation_is_refused(backend):
    data = sketch_of(Sketch(backend), make_stream("mixed", 200, 1, 3), 0.02).to_bytes()
    for n in range(len(data)):
        with pytest.raises(ValueError, match="truncated|length"):
            Sketch(backend).from_bytes(data[:n])


@SETTINGS
@given(data=st.binary(max_size=200) | st.builds(
    lambda body, at, byte: body[:at] + bytes([byte]) + body[at + 1:],
    st.sampled_from([p.read_bytes() for p in _corpus("valid")] or [b""]),
    st.integers(0, 8300), st.integers(0, 255)))
def test_any_bytes_read_the_same_in_both(compiled_backend, pure_backend, data):
    """Random bytes and one-byte corruptions of valid sketches: both readers refuse with the same
    reason, or both accept and write back exactly the input."""
    verdicts = []
    for b in (compiled_backend, pure_backend):
        try:
            s = Sketch(b).from_bytes(data)
        except ValueError as exc:
            verdicts.append(("refused", str(exc)))
        else:
            assert s.to_bytes() == data
            verdicts.append(("read", s.buckets(), [s.quantile(q) for q in QS] if s.count else []))
    assert verdicts[0] == verdicts[1]


# ---- compiled == pure ---------------------------------------------------------------------------


@SETTINGS
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "merge", "subtract", "clear", "copy"]),
                              st.one_of(streams, wide)), min_size=1, max_size=8),
       alpha=st.floats(sketch_py.MIN_ALPHA, sketch_py.MAX_ALPHA))
def test_compiled_equals_pure(compiled_backend, pure_backend, ops, alpha):
    """The same operations give the same counts, the same quantiles to the bit, the same bytes
    and the same refusals."""
    sides = []
    for b in (compiled_backend, pure_backend):
        cls = Sketch(b)
        s, log = cls(alpha), []
        for op, values in ops:
            try:
                if op == "add":
                    s.add_many(values)
                elif op == "merge":
                    s.merge(sketch_of(cls, values, alpha))
                elif op == "subtract":
                    s.subtract(sketch_of(cls, values[: len(values) // 2], alpha))
                elif op == "clear":
                    s.clear()
                else:
                    s = s.copy()
                    s.merge(s)
            except ValueError as exc:
                log.append(str(exc))
            qs = [struct.pack("<d", x) for x in s.quantiles(QS)] if s.count else []
            log.append((s.count, s.buckets(), qs, s.to_bytes()))
        sides.append(log)
    assert sides[0] == sides[1]


# ---- the fuzz target and its corpus -------------------------------------------------------------


def test_corpus_is_what_make_sketch_corpus_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sketch_corpus",
                                                  FUZZ / "make_sketch_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    on_disk = {p.stem: p.read_bytes() for p in (FUZZ / "corpus" / "sketch").glob("*.bin")}
    assert on_disk == mod.seeds(), "run python tests/fuzz/make_sketch_corpus.py"


def test_fuzz_target_replays_corpus_and_mutants(tmp_path):
    exe = build_fuzz_target(need_cc(), "sketch", tmp_path / "fuzz_sketch")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    run = subprocess.run([str(exe), "-runs=20000", "-seed=7", str(FUZZ / "corpus" / "sketch")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Done 20000 runs" in run.stderr, run.stderr[-2000:]
    assert "runtime error" not in run.stderr, run.stderr[-4000:]
