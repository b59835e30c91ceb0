"""The JSON bodies' float formatter (includes/tc_repr.h: Ryu's shortest digits in repr's layout),
through ``_wire.float_text``, against ``repr`` -- what json.dumps writes, and the twin's
``float_text`` -- on every kind of double: any value hypothesis draws, any 64-bit pattern, and a
deterministic sweep of about two million doubles in one call. tests/test_wire.py holds the bodies
that use it to the twin's byte for byte."""

from __future__ import annotations

import math
import random
import struct
import sys
from array import array

from hypothesis import example, given, settings
from hypothesis import strategies as st

DBL_MAX = sys.float_info.max
DBL_MIN = sys.float_info.min            # the smallest normal double
DBL_TRUE_MIN = 5e-324                    # the smallest subnormal


def from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def neighbours(x: float, k: int = 3) -> list[float]:
    """x and its k nearest doubles on each side."""
    out, lo, hi = [x], x, x
    for _ in range(k):
        lo, hi = math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf)
        out += [lo, hi]
    return out


def mismatches(float_text, xs) -> list[tuple[str, str]]:
    """(repr, float_text) of the first doubles of xs they disagree on."""
    got = list(map(float_text, xs))
    want = list(map(repr, xs))
    if got == want:
        return []
    return [(w, g) for w, g in zip(want, got) if w != g][:10]


# ---- property tests: the compiled formatter is repr ---------------------------------------------

@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
@example(0.0).via("zero")
@example(-0.0).via("negative zero")
@example(DBL_TRUE_MIN).via("smallest subnormal")
@example(DBL_MAX).via("largest double")
@example(1e16).via("first exponent form")
@example(9999999999999998.0).via("last fixed form")
@example(1e-4).via("last fixed form below 1")
@example(9.999999999999999e-05).via("first exponent form below 1")
def test_finite_doubles_print_as_repr(compiled_backend, x):
    assert compiled_backend.wire.float_text(x) == repr(x)


@settings(max_examples=3000, deadline=None)
@given(st.integers(0, 2**64 - 1))
@example(0x7FF0000000000000).via("inf")
@example(0xFFF0000000000000).via("-inf")
@example(0x7FF8000000000001).via("a NaN with a payload")
@example(0xFFF8000000000000).via("a negative NaN")
@example(0x0000000000000001).via("smallest subnormal")
@example(0x000FFFFFFFFFFFFF).via("largest subnormal")
@example(0x0010000000000000).via("smallest normal")
def test_any_bit_pattern_prints_as_repr(compiled_backend, pure_backend, bits):
    x = from_bits(bits)
    text = compiled_backend.wire.float_text(x)
    assert text == repr(x)
    assert text == pure_backend.wire.float_text(x)


def test_the_twin_is_repr(pure_backend):
    for x in (0.0, -0.0, 21.95, 1 / 3, 1e16, 5e-324, math.inf, -math.inf, math.nan, 3):
        assert pure_backend.wire.float_text(x) == repr(float(x))


def test_ints_are_taken_as_floats(compiled_backend):
    assert compiled_backend.wire.float_text(3) == "3.0"
    assert compiled_backend.wire.float_text(2**53 + 1) == repr(float(2**53 + 1))


# ---- the sweep ----------------------------------------------------------------------------------

def sweep() -> list[float]:
    """About two million doubles of both signs: the edges of repr's layout and of the double
    format, powers of two and ten with their neighbours, every digit count, values of the kind
    the engine writes, and random bit patterns."""
    rng = random.Random(20240517)
    xs: list[float] = []
    # the layout's edges: exponent form from 1e16 and below 1e-4; whole numbers near 2**53
    for edge in (1e16, 1e-4, 1e15, 1e17, 2.0**53, 2.0**54, 1e21, 1e22, 1e23):
        xs += neighbours(edge, 50)
    xs += [DBL_MAX, DBL_MIN, DBL_TRUE_MIN, 0.0, 0.1, 0.2, 0.3, 1 / 3, 2 / 3, math.pi, math.e]
    xs += neighbours(DBL_MAX, 5) + neighbours(DBL_MIN, 5)
    # every power of ten and of two in range, and their neighbours
    for e in range(-323, 309):
        xs += neighbours(float(f"1e{e}"), 2)
        xs += neighbours(float(f"5e{e}"), 1)
    for e in range(-1074, 1024):
        xs += neighbours(math.ldexp(1.0, e), 1)
    # subnormals: the first thousand, and random ones
    xs += [from_bits(b) for b in range(1, 1001)]
    xs += [from_bits(rng.getrandbits(52)) for _ in range(50_000)]
    # 1 to 17 significant digits at every decade of the fixed form and around it
    for _ in range(150_000):
        digits = rng.randint(1, 17)
        mantissa = rng.randrange(10 ** (digits - 1), 10 ** digits)
        xs.append(float(f"{mantissa}e{rng.randint(-30, 30)}"))
    # what windows produce: two-decimal readings, their sums, means, deviations, whole seconds
    for _ in range(40_000):
        readings = [round(rng.gauss(21.0, 3.0), 2) for _ in range(rng.randint(1, 24))]
        total = math.fsum(readings)
        mean = total / len(readings)
        xs += [readings[0], total, mean,
               math.sqrt(math.fsum((r - mean) ** 2 for r in readings) / len(readings)),
               1_700_000_000.0 + rng.randrange(10**6)]
    xs += [-x for x in xs]
    # random bit patterns (every exponent and both signs alike), and random doubles of everyday
    # magnitudes
    xs += array("d", rng.randbytes(8 * 1_000_000))
    xs += [rng.uniform(-1e6, 1e6) for _ in range(200_000)]
    return [x for x in xs if math.isfinite(x)]   # (nextafter(DBL_MAX, inf), 5e308, raw NaNs)


def test_sweep_prints_as_repr(compiled_backend):
    xs = sweep()
    assert len(xs) > 1_900_000
    assert mismatches(compiled_backend.wire.float_text, xs) == []
