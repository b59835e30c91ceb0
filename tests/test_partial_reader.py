"""The compiled reader of the partial format (_partial.read over includes/tc_partial.h) against its
twin partial_format.read: on random valid messages the same values; on every truncation, every
flipped bit, every byte changed under a valid checksum, crafted header fields and random damage,
the same values or the same refusal reason. The merge worker reads with the active backend's.
(The C header alone runs under the sanitizers: tests/fuzz/fuzz_partial.c.)
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.partial_messages import outcome, random_message, random_panes, random_settings, reseal
from telemetry_cy.engine import partial_format as pf

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def readers(compiled_backend, pure_backend):
    assert pure_backend.read_partial is pf.read
    return compiled_backend.read_partial, pure_backend.read_partial


def same(readers, data: bytes):
    compiled, pure = readers
    got, want = outcome(compiled, data), outcome(pure, data)
    assert got == want, data.hex()
    return want


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), kind=st.sampled_from(sorted(pf.KINDS)))
def test_random_valid_messages_read_the_same(readers, seed, kind):
    data = random_message(random.Random(seed), kind)
    result = same(readers, data)
    assert result[0] == "ok" and result[2] == data


@pytest.mark.parametrize("quantiles", [None, (0.5, 0.9, 0.99)])
def test_a_thousand_panes(readers, quantiles):
    ws = pf.window_settings(60.0, 5.0, "event", 5.0, quantiles)
    rng = random.Random(4)
    data = pf.write(pf.KIND_PANES, ws, "inst", 3, 40, 1, 2, random_panes(rng, ws, 40, 1000))
    result = same(readers, data)
    assert result[0] == "ok" and len(result[1].panes) == 1000
    if quantiles is None:   # no sketch (compared by identity): the values themselves are equal
        compiled, pure = readers
        a, b = compiled(data), pure(data)
        assert a == b and hash(a) == hash(b)
        assert all(type(p) is pf.PanePartial for p in a.panes)
        with pytest.raises(AttributeError):
            a.panes[0].count = 3   # frozen as the twin's


def _sample(quantiles: bool, n: int = 6) -> bytes:
    rng = random.Random(11)
    ws = pf.window_settings(3.0, 1.0, "event", 1.0, (0.5, 0.9) if quantiles else None)
    return pf.write(pf.KIND_PANES, ws, "instance-é", 9, 4, 2, 5, random_panes(rng, ws, 4, n))


@pytest.mark.parametrize("quantiles", [False, True])
def test_every_truncation_and_every_flipped_bit(readers, quantiles):
    data = _sample(quantiles)
    reasons = set()
    for n in range(len(data)):
        reasons.add(same(readers, data[:n])[1])
    assert reasons == {"empty", "foreign", "truncated"}
    assert same(readers, data + b"\0") == ("refused", "truncated")
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            reasons.add(same(readers, bytes(bad))[1])
    assert {"version", "checksum"} <= reasons


@pytest.mark.parametrize("quantiles", [False, True])
def test_every_byte_changed_under_a_valid_checksum(readers, quantiles):
    """The readers do not trust the checksum: each byte of the header and body set to other
    values, the length and crc32 made right again; both accept or both refuse, for one reason."""
    data = _sample(quantiles)
    rng = random.Random(3)
    refused = accepted = 0
    for i in range(len(data) - 4):
        for value in {0, 0xFF, data[i] ^ 0x80, data[i] ^ 1, rng.randrange(256)} - {data[i]}:
            bad = bytearray(data)
            bad[i] = value
            # the length field itself is left as changed, else no change of it would count
            result = same(readers, reseal(bad, None if 16 <= i < 24 else 16))
            refused += result[0] == "refused"
            accepted += result[0] == "ok"
    assert refused > 1000 and accepted > 100


def _field(data: bytes, fmt: str, offset: int, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return reseal(b)


NAN, INF = float("nan"), float("inf")
CRAFTED = [   # (header field format, offset, value): every header check, each side of it
    ("<H", 12, 0), ("<H", 12, 5), ("<H", 12, 2), ("<H", 14, 4), ("<H", 14, 0),
    ("<d", 24, NAN), ("<d", 24, INF), ("<d", 24, 3.0000001), ("<d", 24, 3.000000000001),
    ("<d", 32, 0.0), ("<d", 32, -1.0), ("<d", 32, NAN), ("<I", 40, 0), ("<I", 40, 4),
    ("<I", 44, 2**32 - 1), ("<d", 48, -0.0), ("<d", 48, -1e-300), ("<d", 48, INF),
    ("<d", 56, 0.0), ("<d", 56, 1.0), ("<d", 56, 0.5), ("<d", 56, 0.004), ("<d", 56, NAN),
    ("<I", 64, 0), ("<I", 64, 9), ("<I", 64, 2**32 - 1), ("<I", 68, 0), ("<I", 68, 256),
    ("<I", 68, 2**32 - 1), ("<q", 72, 4 * 10**18), ("<q", 72, 4 * 10**18 + 1),
    ("<q", 72, -(2**63)), ("<q", 72, 5), ("<q", 72, 3), ("<I", 88, 5), ("<I", 92, 0),
    ("<I", 92, 3), ("<d", 96, 0.9), ("<d", 96, 0.5), ("<d", 96, 1.0), ("<d", 96, -0.0),
    ("<d", 96, NAN), ("<d", 104, 0.5), ("<d", 104, 0.95),
]


@pytest.mark.parametrize("fmt, offset, value", CRAFTED)
@pytest.mark.parametrize("quantiles", [False, True])
def test_crafted_header_fields(readers, quantiles, fmt, offset, value):
    data = _sample(quantiles)
    same(readers, _field(data, fmt, offset, value))


def test_crafted_keys_and_panes(readers):
    """What only a crafted message holds: a key twice, a name that is not UTF-8 (an overlong, a
    surrogate), a unit flag of 2, counts that the pane count does not match."""
    ws = pf.window_settings(3.0, 1.0, "event", 1.0, (0.5,))
    panes = random_panes(random.Random(2), ws, 4, 3)
    twice = pf.write(pf.KIND_PANES, ws, "i", 0, 4, 0, 1, [panes[0], panes[1], panes[0]])
    assert same(readers, twice) == ("refused", "malformed")
    ascii_panes = [p.__class__(f"d{i}", "s", None, *[getattr(p, f) for f in (
        "count", "sum", "m2", "min", "max", "first", "first_ts", "last", "last_ts", "sketch")])
        for i, p in enumerate(panes)]
    data = pf.write(pf.KIND_PANES, ws, "i", 0, 4, 0, 1, ascii_panes)
    head = pf.HEADER.size + 8 + 1          # one quantile, instance "i"
    first_name = head + 4 + pf.KEY.size    # after the pane count and the first key's lengths
    for raw in (b"\xc0", b"\xed", b"\xff", b"\x80"):
        b = bytearray(data)
        b[first_name] = raw[0]
        assert same(readers, reseal(b)) == ("refused", "malformed")
    b = bytearray(data)
    b[head + 4 + 6] = 2                    # has_unit
    assert same(readers, reseal(b)) == ("refused", "malformed")
    for count in (0, 2, 4, 2**32 - 1):
        b = bytearray(data)
        struct.pack_into("<I", b, head, count)
        assert same(readers, reseal(b)) == ("refused", "malformed")
    # an instance id of 256 bytes, the message built around it (the writer refuses one)
    b = bytearray(pf.write(pf.KIND_LEAVE, ws, "x" * 255, 0, 4, 0, 1))
    b[pf.HEADER.size + 8:pf.HEADER.size + 8] = b"y"
    struct.pack_into("<I", b, 68, 256)
    assert same(readers, reseal(b)) == ("refused", "malformed")
    struct.pack_into("<I", b, 68, 255)   # the same bytes, one too many after the id
    assert same(readers, reseal(b)) == ("refused", "malformed")
    # a surrogate (U+D800, CESU-style) in the instance id
    b = bytearray(pf.write(pf.KIND_LEAVE, ws, "abc", 0, 4, 0, 1))
    b[pf.HEADER.size + 8:pf.HEADER.size + 11] = b"\xed\xa0\x80"
    assert same(readers, reseal(b)) == ("refused", "malformed")


def test_crafted_pane_fields(readers):
    """Each check of a pane, each side of its bound: age, count, the statistics' order, the times
    against the interval [lo, hi) (next floats on either side), the sketch's head."""
    ws = pf.window_settings(3.0, 1.0, "event", 1.0, (0.5,))
    pane = random_panes(random.Random(5), ws, 4, 1)[0]
    pane = pf.PanePartial("d", "s", None, *[getattr(pane, f) for f in (
        "count", "sum", "m2", "min", "max", "first", "first_ts", "last", "last_ts", "sketch")])
    data = pf.write(pf.KIND_PANES, ws, "i", 0, 4, 0, 1, [pane])
    at = pf.HEADER.size + 8 + 1 + 4 + pf.KEY.size + 2      # the pane: age, count, sum, m2, ...
    lo, hi = 4.0, 5.0
    down, up = (lambda x: math.nextafter(x, -INF)), (lambda x: math.nextafter(x, INF))
    cases = [("<H", 0, 1), ("<I", 2, 0), ("<I", 2, pane.count + 1), ("<d", 6, INF),
             ("<d", 14, -0.0), ("<d", 14, -1e-300), ("<d", 14, NAN),
             ("<d", 22, up(pane.first)), ("<d", 22, down(min(pane.first, pane.last))),
             ("<d", 30, down(pane.first)), ("<d", 30, up(max(pane.first, pane.last))),
             ("<d", 54, up(pane.max)), ("<d", 54, down(pane.min)),
             ("<d", 46, lo), ("<d", 46, down(lo)), ("<d", 46, up(pane.last_ts)),
             ("<d", 62, hi), ("<d", 62, down(hi)), ("<d", 62, down(pane.first_ts)),
             ("<i", 70, 0), ("<i", 70, -(2**31)), ("<i", 74, 1), ("<H", 78, 0),
             ("<H", 78, 1025), ("<H", 80, 7), ("<I", 82, pane.count + 1), ("<I", 82, 0)]
    results = []
    for fmt, off, value in cases:
        results.append(same(readers, _field(data, fmt, at + off, value))[0])
    assert results.count("ok") >= 5 and results.count("refused") >= 15, results


@settings(max_examples=300, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_damage(readers, data, seed):
    b = bytearray(random_message(random.Random(seed), n_panes=3))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(b) - 1))
        b[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(b)))
        b = b[:cut] + bytearray(data.draw(st.binary(max_size=16)))
    same(readers, bytes(b))
    if len(b) >= pf.HEADER.size + 4:
        same(readers, reseal(b))


def test_what_the_reader_accepts(readers):
    """bytes, bytearray and memoryviews (of other formats too), as the twin."""
    compiled, pure = readers
    data = _sample(True)
    want = outcome(pure, data)
    for form in (bytearray(data), memoryview(data), memoryview(bytearray(data)).cast("I")
                 if len(data) % 4 == 0 else memoryview(data)[0:]):
        assert outcome(compiled, form) == want
    for bad in (None, 3, "text"):
        with pytest.raises(TypeError):
            compiled(bad)
        with pytest.raises(TypeError):
            pure(bad)


def test_the_merge_worker_reads_with_the_active_backend(compiled_backend):
    from telemetry_cy import backend
    from telemetry_cy.engine import _partial
    from telemetry_cy.service import merge_worker

    assert compiled_backend.read_partial is _partial.read
    assert merge_worker.ACTIVE is backend.ACTIVE
    assert backend.ACTIVE.read_partial is (pf.read if backend.PURE else _partial.read)


def test_the_crc32_tables_are_the_generated_ones():
    import importlib.util

    spec = importlib.util.spec_from_file_location("crc32_table", ROOT / "scripts" /
                                                  "crc32_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    header = (ROOT / "telemetry_cy" / "includes" / "tc_crc32.h").read_text()
    assert mod.c_block() in header
    assert mod.tables()[0][1] == 0x77073096   # zlib's table


def test_random_settings_cover_both_times_and_quantiles():
    rng = random.Random(1)
    seen = {(s.event, bool(s.quantiles)) for s in (random_settings(rng) for _ in range(200))}
    assert seen == {(False, False), (False, True), (True, False), (True, True)}
