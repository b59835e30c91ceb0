"""The fixed-schema CBOR payload reader: one suite, run against the compiled reader and its twin.

``TestDecode`` holds every behavioural test and runs once per backend (the ``backend`` fixture:
``telemetry_cy.engine._decode``, then ``telemetry_cy.engine._decode_py``); ``TestCompiledOnly``
checks what only the C reader has.
``TestTwins`` checks that the two agree on arbitrary bytes, and ``TestFallback`` tests the cbor2
path on its own. The rules under test are the docstring of ``telemetry_cy/engine/_decode_py.py``.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import struct
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telemetry_cy.engine.cbor_fallback import check_element, decode_with_cbor2
from telemetry_cy.engine.decode_types import (
    MAX_DEPTH,
    MAX_READ_KEYS,
    MIN_READING_BYTES,
    Decoded,
    Reading,
)

# --------------------------------------------------------------------------------------------
# Hand-built CBOR
# --------------------------------------------------------------------------------------------

_AI_FOR_WIDTH = {1: 24, 2: 25, 4: 26, 8: 27}


def _min_width(arg: int) -> int:
    if arg < 24:
        return 0
    if arg < 1 << 8:
        return 1
    if arg < 1 << 16:
        return 2
    if arg < 1 << 32:
        return 4
    return 8


def hd(major: int, arg: int, width: int | None = None) -> bytes:
    """An item head; width None = shortest, 0 = in the initial byte, else 1/2/4/8 bytes."""
    if width is None:
        width = _min_width(arg)
    if width == 0:
        assert arg < 24
        return bytes([major << 5 | arg])
    return bytes([major << 5 | _AI_FOR_WIDTH[width]]) + arg.to_bytes(width, "big")


def t(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return hd(3, len(b)) + b


def by(b: bytes) -> bytes:
    return hd(2, len(b)) + b


def uint(n: int, width: int | None = None) -> bytes:
    return hd(0, n, width)


def nint(v: int, width: int | None = None) -> bytes:
    assert v < 0
    return hd(1, -1 - v, width)


def arr(*items: bytes) -> bytes:
    return hd(4, len(items)) + b"".join(items)


def iarr(*items: bytes) -> bytes:
    return b"\x9f" + b"".join(items) + b"\xff"


def mp(*pairs: tuple[bytes, bytes]) -> bytes:
    return hd(5, len(pairs)) + b"".join(k + v for k, v in pairs)


def imp(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"\xbf" + b"".join(k + v for k, v in pairs) + b"\xff"


def tag(n: int, item: bytes) -> bytes:
    return hd(6, n) + item


def f16(bits: int) -> bytes:
    return b"\xf9" + bits.to_bytes(2, "big")


def f32(x: float) -> bytes:
    return b"\xfa" + struct.pack(">f", x)


def f64(x: float) -> bytes:
    return b"\xfb" + struct.pack(">d", x)


def chunked_text(*chunks: str) -> bytes:
    return b"\x7f" + b"".join(t(c) for c in chunks) + b"\xff"


def chunked_bytes(*chunks: bytes) -> bytes:
    return b"\x5f" + b"".join(by(c) for c in chunks) + b"\xff"


FALSE, TRUE, NULL, UNDEFINED = b"\xf4", b"\xf5", b"\xf6", b"\xf7"
SELF_DESCRIBE = hd(6, 55799)
MISSING = object()


def rd(d=t("dev"), s=t("temp"), v=uint(1), u=MISSING, n=MISSING, extra=(), indefinite=False,
       tm=MISSING):
    """A reading map from pre-encoded values (MISSING leaves the key out); extra = raw pairs;
    tm = the event time `t`."""
    pairs = [(t(k), val) for k, val in (("d", d), ("s", s), ("v", v), ("u", u), ("n", n),
                                        ("t", tm))]
    pairs = [p for p in pairs if p[1] is not MISSING] + list(extra)
    return imp(*pairs) if indefinite else mp(*pairs)


def R(device="dev", sensor="temp", value=1.0, unit=None, seq=None, tm=None) -> Reading:
    return Reading(device, sensor, value, unit, seq, tm)


def ok(*readings: Reading, mismatch: int = 0, non_finite: int = 0) -> Decoded:
    return Decoded("ok", list(readings), mismatch, non_finite)


ERROR = Decoded("decode_error", [], 0, 0)
MISMATCH = ok(mismatch=1)
NON_FINITE = ok(non_finite=1)


#: RFC 8949 Appendix A examples (tests/data/README.md says where they come from)
APPENDIX_A = json.loads((Path(__file__).parent / "data" / "cbor_appendix_a.json").read_text())


def appendix_a_bytes(entry) -> bytes:
    raw = base64.b64decode(entry["cbor"])
    assert raw == bytes.fromhex(entry["hex"])
    return raw


# The vector set predates RFC 8949, whose section 3.3 made a two-byte simple value below 32 not
# well-formed; simple(24) = f818 is one (cbor2 rejects it too), so it is a decode_error anywhere.
NOT_WELL_FORMED_IN_RFC_8949 = {"f818"}


def appendix_a_expected(entry) -> Decoded:
    """What a reading whose `v` is this example decodes to, by the rules."""
    if entry["hex"] in NOT_WELL_FORMED_IN_RFC_8949:
        return ERROR
    if "decoded" in entry:
        x = entry["decoded"]
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return MISMATCH
        return ok(R(value=float(x)))
    if entry["diagnostic"] in ("Infinity", "-Infinity", "NaN"):
        return NON_FINITE
    return MISMATCH


def _id(entry) -> str:
    return entry["hex"][:24]


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


def _int_encodings(v: int) -> st.SearchStrategy[bytes]:
    major, arg = (0, v) if v >= 0 else (1, -1 - v)
    widths = [w for w in (0, 1, 2, 4, 8) if w >= _min_width(arg) and (w or arg < 24)]
    return st.sampled_from(widths).map(lambda w: hd(major, arg, w))


def _float_encodings(x: float) -> st.SearchStrategy[bytes]:
    encs = [f64(x)]
    for fmt, prefix in ((">f", b"\xfa"), (">e", b"\xf9")):
        try:
            packed = struct.pack(fmt, x)
        except OverflowError:
            continue
        if struct.unpack(fmt, packed)[0] == x:
            encs.append(prefix + packed)
    return st.sampled_from(encs)


numbers = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def readings_payloads(draw):
    """A random batch (or single map) of valid readings with random encodings, and its readings."""
    n_elems = draw(st.integers(1, 4))
    single = n_elems == 1 and draw(st.booleans())
    elems, expected = [], []
    for _ in range(n_elems):
        d, s = draw(names), draw(names)
        v = draw(numbers)
        unit = draw(st.none() | st.text(max_size=5))
        seq = draw(st.none() | st.integers(0, 2**64 - 1))
        venc = draw(_int_encodings(v) if isinstance(v, int) else _float_encodings(v))
        pairs = [(t("d"), t(d)), (t("s"), t(s)), (t("v"), venc)]
        if unit is not None:
            pairs.append((t("u"), t(unit)))
        if seq is not None:
            pairs.append((t("n"), draw(_int_encodings(seq))))
        ev = draw(st.none() | numbers)
        if ev is not None:
            tenc = draw(_int_encodings(ev) if isinstance(ev, int) else _float_encodings(ev))
            # tag 1 only where cbor2's datetime (microseconds, years 1-9999) holds it exactly
            exact_in_datetime = isinstance(ev, int) and 0 <= ev < 2**33
            pairs.append((t("t"), tag(1, tenc) if exact_in_datetime and draw(st.booleans())
                          else tenc))
        extra_keys = st.lists(st.sampled_from(["x", "dv", "", "é", "vv"]), unique=True, max_size=2)
        for key in draw(extra_keys):
            pairs.append((t(key), cbor2.dumps(draw(st.recursive(
                st.none() | st.integers() | st.text(max_size=3) | st.binary(max_size=3),
                lambda c: (st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=2), c, max_size=3)),
                max_leaves=6)))))
        pairs = draw(st.permutations(pairs))
        elems.append(imp(*pairs) if draw(st.booleans()) else mp(*pairs))
        expected.append(R(d, s, float(v), unit, seq, None if ev is None else float(ev)))
    if single:
        payload = elems[0]
    else:
        payload = iarr(*elems) if draw(st.booleans()) else arr(*elems)
    if draw(st.booleans()):
        payload = SELF_DESCRIBE + payload
    return payload, expected


def _leaf_items():
    return st.one_of(
        st.integers(0, 2**64 - 1).flatmap(lambda n: _int_encodings(n)),
        st.integers(-(2**64), -1).flatmap(lambda n: _int_encodings(n)),
        st.text(max_size=4).map(t),
        st.binary(max_size=4).map(t),  # text strings that need not be UTF-8
        st.binary(max_size=4).map(by),
        st.sampled_from([FALSE, TRUE, NULL, UNDEFINED, b"\xf0", b"\xf8\x20", b"\xf8\xff"]),
        st.integers(0, 0xFFFF).map(f16),
        st.integers(0, 0xFFFFFFFF).map(lambda b: b"\xfa" + b.to_bytes(4, "big")),
        st.integers(0, 2**64 - 1).map(lambda b: b"\xfb" + b.to_bytes(8, "big")),
        st.lists(st.text(max_size=2), max_size=3).map(lambda cs: chunked_text(*cs)),
        st.lists(st.binary(max_size=2), max_size=3).map(lambda cs: chunked_bytes(*cs)),
    )


_keys = st.one_of(
    st.sampled_from(["d", "s", "v", "u", "n", "t", "x"]).map(t),
    st.text(max_size=2).map(t),
    st.integers(0, 3).map(uint),
    st.just(chunked_text("d")),
)


def cbor_items(max_leaves: int = 12):
    """Well-formed CBOR with random encodings, biased towards reading-shaped maps."""
    return st.recursive(
        _leaf_items(),
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(lambda xs: arr(*xs)),
            st.lists(children, max_size=4).map(lambda xs: iarr(*xs)),
            st.lists(st.tuples(_keys, children), max_size=6).map(lambda ps: mp(*ps)),
            st.lists(st.tuples(_keys, children), max_size=6).map(lambda ps: imp(*ps)),
            st.tuples(st.sampled_from([2, 3, 6, 55799, 1000]), children).map(lambda p: tag(*p)),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def mutated(draw, base):
    """A payload with a few bytes flipped, inserted or deleted."""
    b = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if op == "insert" or not b:
            b.insert(draw(st.integers(0, len(b))), draw(st.integers(0, 255)))
            continue
        i = draw(st.integers(0, len(b) - 1))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            b[i] = draw(st.sampled_from([0x00, 0x1C, 0x1F, 0x5F, 0x7F, 0x9F, 0xBF, 0xFF, 0xF8]))
        else:
            del b[i]
    return bytes(b)


GOOD_PAYLOADS = [
    rd(),
    rd(u=t("C"), n=uint(7), indefinite=True),
    arr(rd(), rd(d=t("dévice"), v=f16(0x3E00)), uint(5)),
    iarr(rd(v=f64(1.1),
            extra=[(t("x"), iarr(mp((t("a"), tag(2, by(b"\x01")))), chunked_bytes(b"ab")))])),
    SELF_DESCRIBE + rd(v=nint(-5)),
    cbor2.dumps({"d": "dev-0001", "s": "temperature", "v": 21.5, "u": "C", "n": 12345}),
]


# --------------------------------------------------------------------------------------------
# The suite, run against both implementations
# --------------------------------------------------------------------------------------------


class TestDecode:
    @pytest.fixture(autouse=True)
    def _reader(self, backend):
        # the reader under test, for the methods below and for `check`
        self.impl = backend.decode

    def check(self, payload: bytes, expected: Decoded, native: str | None = None, **kw):
        got = self.impl.decode(payload, **kw)
        assert got == expected
        assert type(got) is Decoded and all(type(r) is Reading for r in got.readings)
        if native is None:
            native = "ok" if expected.status == "ok" else "decode_error"
        assert self.impl.decode_native(payload, **kw) == native

    # ---- cbor2-written payloads ---------------------------------------------------------------

    @pytest.mark.parametrize("canonical", [True, False])
    def test_cbor2_single_reading(self, canonical):
        obj = {"d": "dev-0001", "s": "temperature", "v": 21.5, "u": "°C", "n": 12345}
        self.check(cbor2.dumps(obj, canonical=canonical),
                   ok(R("dev-0001", "temperature", 21.5, "°C", 12345)))

    @pytest.mark.parametrize("canonical", [True, False])
    def test_cbor2_batch_mixed(self, canonical):
        obj = [
            {"d": "a", "s": "t", "v": 1},
            {"d": "a", "s": "t"},  # no v
            7,  # not a map
            {"d": "b", "s": "h", "v": float("inf")},
            {"d": "", "s": "h", "v": 1.0},  # empty device
            {"s": "p", "d": "c", "v": -2.5, "u": ""},
            {"d": "c", "s": "p", "v": float("nan"), "n": -1},  # both: schema wins
        ]
        self.check(
            cbor2.dumps(obj, canonical=canonical),
            ok(R("a", "t", 1.0), R("c", "p", -2.5, ""), mismatch=4, non_finite=1),
        )

    def test_every_key_order(self):
        fields = [("d", t("dev")), ("s", t("temp")), ("v", f32(2.5)), ("u", t("K")), ("n", uint(9))]
        for perm in itertools.permutations(fields):
            pairs = [(t(k), v) for k, v in perm]
            self.check(mp(*pairs), ok(R(value=2.5, unit="K", seq=9)))
            self.check(imp(*pairs), ok(R(value=2.5, unit="K", seq=9)))

    @pytest.mark.parametrize(
        "extra",
        [
            {"x": {"nested": [1, 2, {"deep": [None, True]}]}},
            {"meta": cbor2.CBORTag(1234, [1, "two", b"3"])},
            {"big": 2**100, "neg": -(2**100)},  # bignum tags inside an ignored value
            {"blob": b"\x00" * 300, "txt": "é" * 100},
            {"dd": 1.5, "vv": "x", "uu": None, "": 0},
        ],
    )
    @pytest.mark.parametrize("canonical", [True, False])
    def test_unknown_keys_are_skipped_natively(self, extra, canonical):
        obj = {"d": "dev", "s": "temp", "v": 3, **extra}
        self.check(cbor2.dumps(obj, canonical=canonical), ok(R(value=3.0)))

    def test_unknown_key_values_with_chunks_tags_and_indefinite_containers(self):
        ignored = [
            chunked_text("ab", "", "c"),
            chunked_bytes(b"\x00", b"\xff"),
            b"\x5f\xff",  # empty chunked bytes
            iarr(iarr(), imp((t("k"), chunked_text("x")))),
            tag(2, by(b"\x01" * 40)),
            tag(55799, tag(1000, mp((uint(1), uint(2))))),  # non-text keys in an ignored map
            mp((t("a"), uint(1)), (t("a"), uint(2))),  # duplicates in an ignored map: not read
            b"\xf8\x20",  # simple(32)
            t(b"\xff\xfe"),  # invalid UTF-8 in an ignored text: not read, not checked
            f16(0x7E00),  # NaN in an ignored value
        ]
        for value in ignored:
            self.check(rd(extra=[(t("x"), value)]), ok(R()))
            self.check(rd(extra=[(t(b"\xc3\xa9\xff"), value)], indefinite=True), ok(R()))

    def test_empty_array(self):
        self.check(b"\x80", ok())
        self.check(b"\x9f\xff", ok())
        self.check(SELF_DESCRIBE + b"\x80", ok())

    @pytest.mark.parametrize(
        "item",
        [uint(0), nint(-3), t("hello"), by(b"x"), TRUE, NULL, f64(1.5), chunked_text("a"), b"\xa0",
         b"\xbf\xff"],
    )
    def test_top_level_not_a_reading_map(self, item):
        self.check(item, MISMATCH)
        self.check(SELF_DESCRIBE + item, MISMATCH)

    def test_array_elements_not_maps(self):
        self.check(arr(uint(1), arr(rd()), t("x"), rd(), NULL), ok(R(), mismatch=4))

    def test_self_describe_tag(self):
        self.check(SELF_DESCRIBE + rd(), ok(R()))
        self.check(SELF_DESCRIBE + arr(rd(), rd(d=t("b"))), ok(R(), R("b")))
        self.check(hd(6, 55799, 8) + rd(), ok(R()))  # a long-form head is the same tag

    def test_max_name_bytes(self):
        payload = rd(d=t("abcde"), s=t("é" * 3), u=t("xyzzyx"))
        self.check(payload, ok(R("abcde", "ééé", unit="xyzzyx")), max_name_bytes=6)
        self.check(payload, MISMATCH, max_name_bytes=5)  # s is 6 bytes, u is 6 bytes
        self.check(rd(d=t("abcde"), s=t("é" * 3)), MISMATCH, max_name_bytes=5)
        self.check(rd(d=t("abcdef"), s=t("ab")), MISMATCH, max_name_bytes=5)
        self.check(rd(d=t("ab"), s=t("ab"), u=t("abcdef")), MISMATCH, max_name_bytes=5)
        self.check(rd(d=t("ab"), s=t("ab"), u=t("")), ok(R("ab", "ab", unit="")), max_name_bytes=2)
        self.check(rd(), MISMATCH, max_name_bytes=0)
        self.check(rd(d=t("a" * 300), s=t("b")), MISMATCH)  # default 256
        self.check(rd(d=t("a" * 256), s=t("b")), ok(R("a" * 256, "b")))

    @pytest.mark.parametrize("bad", [-1, 2**32, 2**40])
    def test_max_name_bytes_out_of_range(self, bad):
        with pytest.raises(ValueError):
            self.impl.decode(rd(), bad)
        with pytest.raises(ValueError):
            self.impl.decode_native(rd(), bad)

    def test_max_name_bytes_type(self):
        with pytest.raises(TypeError):
            self.impl.decode(rd(), True)
        with pytest.raises(TypeError):
            self.impl.decode(rd(), 3.0)

    def test_buffer_types(self):
        for payload in (bytearray(rd()), memoryview(rd())):
            assert self.impl.decode(payload) == ok(R())
            assert self.impl.decode_native(payload) == "ok"

    def test_many_minimal_readings(self):
        one = rd(d=t("a"), s=t("b"), v=uint(0))
        assert len(one) == MIN_READING_BYTES
        for n in (1, 16, 17, 1000):
            payload = iarr(*[one] * n) if n % 2 else arr(*[one] * n)
            self.check(payload, ok(*[R("a", "b", 0.0)] * n))
        self.check(one, ok(R("a", "b", 0.0)))

    def test_result_lists_are_not_shared(self):
        a = self.impl.decode(b"\xff")
        a.readings.append("junk")
        assert self.impl.decode(b"\xff") == ERROR

    # ---- reading-level rules ---------------------------------------------------------------

    @pytest.mark.parametrize("field", ["d", "s", "v"])
    def test_required_field_missing(self, field):
        self.check(rd(**{field: MISSING}), MISMATCH)

    @pytest.mark.parametrize("field", ["d", "s", "u"])
    @pytest.mark.parametrize(
        "value",
        [by(b"dev"), uint(1), nint(-1), f64(1.0), TRUE, NULL, UNDEFINED, arr(t("a")),
         mp((t("a"), t("b"))), b"\xf8\x40"],
        ids=["bytes", "uint", "nint", "float", "true", "null", "undefined", "array", "map",
             "simple"],
    )
    def test_name_fields_not_text(self, field, value):
        self.check(rd(**{field: value}), MISMATCH)

    @pytest.mark.parametrize("field", ["d", "s"])
    def test_empty_names(self, field):
        self.check(rd(**{field: t("")}), MISMATCH)

    def test_empty_unit_allowed(self):
        self.check(rd(u=t("")), ok(R(unit="")))

    @pytest.mark.parametrize(
        "raw",
        [
            b"\x80",  # lone continuation byte
            b"\xc0\x80",  # overlong NUL
            b"\xc1\xbf",  # overlong
            b"\xe0\x80\x80",  # overlong 3-byte
            b"\xe0\x9f\xbf",  # overlong 3-byte, top
            b"\xf0\x8f\xbf\xbf",  # overlong 4-byte
            b"\xed\xa0\x80",  # surrogate U+D800
            b"\xed\xbf\xbf",  # surrogate U+DFFF
            b"\xf4\x90\x80\x80",  # U+110000
            b"\xf5\x80\x80\x80",
            b"\xff",
            b"a\xe2\x82",  # truncated sequence at the end
            b"\xe2\x28\xa1",  # bad continuation
            b"\xf0\x90\x80",  # truncated 4-byte
            b"\xc3",
        ],
    )
    @pytest.mark.parametrize("field", ["d", "s", "u"])
    def test_invalid_utf8_names(self, raw, field):
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")  # the rule is Python's strict decoder
        self.check(rd(**{field: t(raw)}), MISMATCH)

    def test_utf8_checked_at_every_offset_of_a_long_name(self):
        for pos in range(24):
            for bad in (b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80"):
                name = b"a" * pos + bad + b"b" * (23 - pos)
                self.check(rd(d=t(name)), MISMATCH)
                self.check(rd(u=t(name)), MISMATCH)
            good = "a" * pos + "é" + "b" * (23 - pos)
            self.check(rd(s=t(good)), ok(R(sensor=good)))

    @pytest.mark.parametrize(
        "text",
        ["ü", "水", "𐅑", "\U0010ffff", "\ud7ff", "\ue000", "\x00", "a\u0080b",
         "\u07ff\u0800\uffff\U00010000"],
    )
    def test_valid_utf8_names(self, text):
        self.check(rd(d=t(text), s=t(text), u=t(text)), ok(R(text, text, unit=text)))

    @pytest.mark.parametrize(
        "value",
        [TRUE, FALSE, NULL, UNDEFINED, b"\xf0", b"\xf8\xff", t("1.5"), by(b"\x01"), arr(uint(1)),
         b"\xa0", iarr(), b"\xbf\xff"],
        ids=["true", "false", "null", "undefined", "simple16", "simple255", "text", "bytes",
             "array", "map", "iarray", "imap"],
    )
    def test_value_not_a_number(self, value):
        self.check(rd(v=value), MISMATCH)

    @pytest.mark.parametrize(
        "seq",
        [nint(-1), f64(1.0), f16(0), t("1"), NULL, TRUE, arr()],
        ids=["negative", "float", "half", "text", "null", "true", "array"],
    )
    def test_seq_not_unsigned(self, seq):
        self.check(rd(n=seq), MISMATCH)

    @pytest.mark.parametrize("n", [0, 23, 24, 2**32, 2**64 - 1])
    def test_seq_values(self, n):
        self.check(rd(n=uint(n)), ok(R(seq=n)))
        self.check(rd(n=uint(n, 8)), ok(R(seq=n)))

    @pytest.mark.parametrize(
        "value",
        [f16(0x7C00), f16(0xFC00), f16(0x7E00), f16(0x7C01), f16(0xFFFF), f32(math.inf),
         f32(-math.inf), b"\xfa\x7f\xc0\x00\x00", b"\xfa\x7f\x80\x00\x01", f64(math.inf),
         f64(-math.inf), f64(math.nan), b"\xfb\xff\xf8\x00\x00\x00\x00\x00\x01"],
    )
    def test_non_finite(self, value):
        self.check(rd(v=value), NON_FINITE)
        self.check(arr(rd(v=value), rd()), ok(R(), non_finite=1))

    def test_schema_checked_before_finiteness(self):
        for bad in (dict(d=MISSING), dict(s=t("")), dict(u=uint(1)), dict(n=nint(-2)),
                    dict(d=t(b"\xff"))):
            self.check(rd(v=f64(math.nan), **bad), MISMATCH)
            self.check(rd(v=f16(0x7C00), **bad), MISMATCH)

    # ---- values ----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "n", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**63,
              2**64 - 2, 2**64 - 1]
    )
    def test_unsigned_every_width(self, n):
        for w in (0, 1, 2, 4, 8):
            if w >= _min_width(n) and (w or n < 24):
                self.check(rd(v=uint(n, w)), ok(R(value=float(n))))

    @pytest.mark.parametrize(
        "v",
        [-1, -24, -25, -256, -257, -65536, -65537, -(2**32), -(2**32) - 1, -(2**53) - 1,
         -(2**54) - 3, -(2**63), -(2**64) + 1, -(2**64)],
    )
    def test_negative_every_width(self, v):
        for w in (0, 1, 2, 4, 8):
            if w >= _min_width(-1 - v) and (w or -1 - v < 24):
                self.check(rd(v=nint(v, w)), ok(R(value=float(v))))

    def test_negative_extremes_exact(self):
        r = self.impl.decode(rd(v=b"\x3b" + b"\xff" * 8)).readings[0]
        assert r.value == -18446744073709551616.0
        # -1 - (2**54 + 2) = -(2**54 + 3): rounds once to -(2**54 + 4); rounding n first and then
        # subtracting 1 gives -(2**54) instead.
        r = self.impl.decode(rd(v=nint(-(2**54) - 3))).readings[0]
        assert r.value == -18014398509481988.0
        # and the unsigned conversion is correctly rounded (ties to even)
        r = self.impl.decode(rd(v=uint(2**54 + 2))).readings[0]
        assert r.value == 18014398509481984.0
        r = self.impl.decode(rd(v=uint(2**54 + 3))).readings[0]
        assert r.value == 18014398509481988.0

    @pytest.mark.parametrize(
        "bits,value",
        [
            (0x0000, 0.0),
            (0x0001, 5.960464477539063e-08),  # smallest subnormal
            (0x03FF, 6.097555160522461e-05),  # largest subnormal
            (0x0400, 6.103515625e-05),  # smallest normal
            (0x3C00, 1.0),
            (0x3E00, 1.5),
            (0x7BFF, 65504.0),
            (0xC400, -4.0),
            (0x8001, -5.960464477539063e-08),
            (0x3555, 0.333251953125),
        ],
    )
    def test_half(self, bits, value):
        self.check(rd(v=f16(bits)), ok(R(value=value)))

    def test_negative_zero_keeps_its_sign(self):
        for enc in (f16(0x8000), f32(-0.0), f64(-0.0)):
            (r,) = self.impl.decode(rd(v=enc)).readings
            assert r.value == 0.0 and math.copysign(1.0, r.value) == -1.0
        (r,) = self.impl.decode(rd(v=f16(0))).readings
        assert math.copysign(1.0, r.value) == 1.0

    def test_every_half_pattern(self):
        """All 65536 half floats against the standard library's IEEE binary16."""
        for start in range(0, 0x10000, 4096):
            elems = [rd(v=f16(b)) for b in range(start, start + 4096)]
            expected = [struct.unpack(">e", b.to_bytes(2, "big"))[0]
                        for b in range(start, start + 4096)]
            got = self.impl.decode(arr(*elems))
            finite = [x for x in expected if math.isfinite(x)]
            assert got.non_finite == len(expected) - len(finite) and got.schema_mismatch == 0
            assert [r.value for r in got.readings] == finite
            assert [math.copysign(1, r.value) for r in got.readings] == \
                [math.copysign(1, x) for x in finite]

    @pytest.mark.parametrize(
        "x", [1.5, -0.1, 3.4028234663852886e38, 1.401298464324817e-45, 1.1754943508222875e-38,
              100000.0]
    )
    def test_single(self, x):
        expected = struct.unpack(">f", struct.pack(">f", x))[0]
        self.check(rd(v=f32(x)), ok(R(value=expected)))

    @pytest.mark.parametrize("x", [1.1, -4.1, 1e300, 5e-324, -1.7976931348623157e308, 2.0**-1074,
                                   0.1])
    def test_double(self, x):
        self.check(rd(v=f64(x)), ok(R(value=x)))

    # ---- RFC 8949 Appendix A -------------------------------------------------------------------

    @pytest.mark.parametrize("entry", APPENDIX_A, ids=_id)
    def test_appendix_a_as_value(self, entry):
        payload = rd(v=appendix_a_bytes(entry))
        expected = appendix_a_expected(entry)
        got = self.impl.decode(payload)
        assert got == expected
        if got.readings and got.readings[0].value == 0:
            assert math.copysign(1, got.readings[0].value) == math.copysign(1, entry["decoded"])

    def test_appendix_a_numbers_are_all_there(self):
        kinds = [appendix_a_expected(e) for e in APPENDIX_A]
        assert sum(k.readings != [] for k in kinds) >= 30
        assert sum(k.non_finite == 1 for k in kinds) == 9
        assert len(APPENDIX_A) == 82

    @pytest.mark.parametrize("entry", APPENDIX_A, ids=_id)
    def test_appendix_a_as_ignored_value(self, entry):
        if entry["hex"] in NOT_WELL_FORMED_IN_RFC_8949:
            self.check(rd(extra=[(t("x"), appendix_a_bytes(entry))]), ERROR)
            self.check(arr(appendix_a_bytes(entry), rd()), ERROR)
            return
        self.check(rd(extra=[(t("x"), appendix_a_bytes(entry))]), ok(R()))
        # as an element of a batch it is never a reading (no map here has `d`); a tagged element
        # or a map with non-text keys is resolved by cbor2
        payload = arr(appendix_a_bytes(entry), rd())
        assert self.impl.decode(payload) == ok(R(), mismatch=1)
        first = appendix_a_bytes(entry)[0]
        fallback = first >> 5 == 6 or entry["hex"] == "a201020304"
        assert self.impl.decode_native(payload) == ("fallback" if fallback else "ok")

    # ---- well-formedness: decode_error -----------------------------------------------------

    @pytest.mark.parametrize(
        "payload",
        [
            b"",
            b"\x18", b"\x19\x00", b"\x1a\x00\x00\x00", b"\x1b" + b"\x00" * 7,  # truncated heads
            b"\x61", b"\x62a", b"\x41", b"\x82\x00", b"\xa1\x00", b"\xc6", b"\xf9\x00",
            b"\xfa\x00\x00",
            b"\xfb" + b"\x00" * 7,
            b"\x9f\x00", b"\xbf", b"\x7f", b"\x5f\x41\x00",  # indefinite without break
            b"\xff",  # break at the top
            b"\x81\xff", b"\xa1\xff\x00", b"\xa1\x00\xff",  # break inside definite containers
            b"\xbf\x00\xff",  # break between key and value
            b"\xc6\xff",  # break as a tag's content
            b"\x5f\x61a\xff", b"\x7f\x41a\xff",  # chunk of the wrong major type
            b"\x5f\x00\xff", b"\x7f\xa0\xff",  # chunk that is not a string at all
            b"\x5f\x5f\xff\xff", b"\x7f\x7f\xff\xff",  # indefinite chunk
            b"\x1f", b"\x3f", b"\xdf",  # ai 31 where there is no indefinite form
            b"\xf8\x00", b"\xf8\x1f",  # two-byte simple value below 32
            b"\x00\x00", b"\x80\x00", b"\xa0\xff",  # trailing bytes
        ],
    )
    def test_malformed(self, payload):
        self.check(payload, ERROR)

    @pytest.mark.parametrize("major", range(8))
    @pytest.mark.parametrize("ai", [28, 29, 30])
    def test_reserved_additional_info(self, major, ai):
        item = bytes([major << 5 | ai])
        self.check(item, ERROR)
        self.check(rd(v=item), ERROR)
        self.check(rd(extra=[(t("x"), arr(uint(1), item))]), ERROR)
        self.check(mp((item, uint(1))), ERROR)  # as a key
        self.check(arr(rd(), item), ERROR)

    @pytest.mark.parametrize("where", ["v", "d", "n", "u", "x", "key"])
    def test_malformed_inside_a_reading(self, where):
        bad = b"\xf8\x10"  # simple value below 32 in the two-byte form
        if where == "key":
            payload = rd(extra=[(bad, uint(1))])
        elif where == "x":
            payload = rd(extra=[(t("x"), iarr(bad))])
        else:
            payload = rd(**{where: bad})
        self.check(payload, ERROR)
        self.check(arr(rd(), payload), ERROR)

    def test_indefinite_chunk_inside_indefinite_string(self):
        for opener, empty_chunk in ((b"\x5f", b"\x40"), (b"\x7f", b"\x60")):
            # would be complete if the chunk were empty
            self.check(opener + opener + b"\xff", ERROR)
            self.check(rd(extra=[(t("x"), opener + opener + b"\xff")]), ERROR)
            self.check(rd(extra=[(t("x"), opener + empty_chunk + b"\xff")]), ok(R()))

    def test_utf8_sequence_cut_by_the_end_of_the_string(self):
        # the bytes after the name (a map head, 0xa3, here) look like a continuation byte: the
        # check must stop at the end of the string, not at the end of the payload
        first = mp((t("s"), t("temp")), (t("v"), uint(1)), (t("d"), t(b"\xe2\x82")))
        self.check(arr(first, rd()), ok(R(), mismatch=1))
        self.check(mp((t("s"), t("temp")), (t("v"), uint(1)), (t("d"), t(b"\xf0\x9f"))), MISMATCH)
        self.check(mp((t("s"), t("temp")), (t("v"), uint(1)), (t("d"), t(b"\xe2\x82\xac"))),
                   ok(R("\u20ac")))

    def test_huge_counts_are_rejected(self):
        """A count larger than the bytes left is decode_error. (That it is refused at once rather
        than after reading the items is the fuzz harness's business: tests do not time code.)"""
        zeros = b"\x00" * (1 << 16)
        huge = b"\x9b" + b"\xff" * 8
        for payload in (
            huge + zeros,  # top-level array
            rd(extra=[(t("x"), huge + zeros)]),  # skipped value
            b"\xbb" + b"\xff" * 8 + zeros,  # map read for a reading
            arr(huge + zeros),  # skipped element
        ):
            assert self.impl.decode(payload) == ERROR

    def test_break_inside_ignored_values(self):
        self.check(rd(extra=[(t("x"), b"\xbf\x00\xff")]), ERROR)  # between key and value
        self.check(rd(extra=[(t("x"), b"\xbf\x00\x00\x01\xff")]), ERROR)
        self.check(rd(extra=[(t("x"), b"\xbf\x00\x00\xff")]), ok(R()))
        self.check(rd(extra=[(t("x"), b"\x9f\x9f\xff\xff")]), ok(R()))
        self.check(rd(extra=[(t("x"), b"\x81\xff")]), ERROR)
        self.check(rd(extra=[(t("x"), b"\xc6\xff")]), ERROR)
        self.check(arr(b"\x82\x00\xff", rd()), ERROR)

    def test_trailing_bytes_after_reading(self):
        for extra in (b"\x00", b"\xff", rd()):
            self.check(rd() + extra, ERROR)
            self.check(arr(rd()) + extra, ERROR)
            self.check(SELF_DESCRIBE + rd() + extra, ERROR)

    HUGE_LENGTHS = [
        b"\x7b" + b"\xff" * 8 + b"abc",  # text of 2**64-1 bytes
        b"\x5b\x80" + b"\x00" * 7 + b"abc",
        b"\x9b" + b"\xff" * 8 + b"\x00",  # array of 2**64-1 items
        b"\xbb" + b"\xff" * 8 + b"\x00\x00",
        b"\xbb\x80" + b"\x00" * 7 + b"\x00\x00",  # 2**63 pairs: 2 * count overflows 64 bits
        b"\xbb\x7f" + b"\xff" * 7 + b"\x00\x00",
        b"\x5a\x7f\xff\xff\xff\x00",
        b"\x7f\x7b" + b"\xff" * 8 + b"\xff",  # a chunk
        b"\xda\xff\xff\xff\xff\x9b" + b"\xff" * 8,  # under a tag
    ]

    @pytest.mark.parametrize("payload",
                             HUGE_LENGTHS + [b"\x83\x00\x00", b"\xa2\x00\x00\x00", b"\x62a"])
    def test_length_larger_than_payload(self, payload):
        self.check(payload, ERROR)

    @pytest.mark.parametrize("item", HUGE_LENGTHS)
    @pytest.mark.parametrize("where", ["x", "d", "v", "key", "element"])
    def test_huge_length_anywhere(self, item, where):
        if where == "key":
            payload = rd(extra=[(item, uint(1))])
        elif where == "x":
            payload = rd(extra=[(t("x"), item)])
        elif where == "element":
            payload = arr(rd(), item, rd())
        else:
            payload = rd(**{where: item})
        self.check(payload, ERROR)

    def test_length_prefix_in_reading_fields(self):
        self.check(mp((t("d"), b"\x7b" + b"\xff" * 8)), ERROR)
        self.check(mp((b"\x7b" + b"\xff" * 8, uint(1))), ERROR)  # key
        self.check(b"\xbb" + b"\xff" * 8 + t("d") + t("x"), ERROR)  # top map count

    def test_prefixes_are_truncated(self):
        """CBOR items delimit themselves, so no strict prefix of one item is a whole item."""
        for payload in GOOD_PAYLOADS:
            assert self.impl.decode(payload).status == "ok"
            for cut in range(len(payload)):
                self.check(payload[:cut], ERROR)

    def test_malformed_anywhere_drops_every_reading(self):
        self.check(arr(rd(), rd(), rd(v=b"\xfc")), ERROR)
        self.check(iarr(rd(), rd()) + b"\x00", ERROR)
        self.check(arr(rd(), rd(), uint(1)), ok(R(), R(), mismatch=1))

    # ---- nesting -------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "opener,closer",
        [(b"\x81", b""), (b"\x9f", b"\xff"), (b"\xa1\x00", b""), (b"\xbf\x00", b"\xff"),
         (b"\xc6", b""), (b"\xda\x00\x01\x00\x00", b"")],
        ids=["array", "iarray", "map", "imap", "tag", "tag4"],
    )
    @pytest.mark.parametrize("inner", [b"\x00", b"\x80", b"\x9f\xff", b"\x7f\xff"],
                             ids=["uint", "empty", "iempty", "ichunked"])
    def test_depth_limit_matches_cbor2(self, opener, closer, inner):
        """Counted exactly as cbor2's max_depth, so the fallback never disagrees."""
        for levels in (MAX_DEPTH - 3, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):
            # levels of `opener` inside the value of an ignored key of a top-level map (1 level)
            value = opener * levels + inner + closer * levels
            payload = rd(extra=[(t("x"), value)])
            try:
                cbor2.loads(payload, max_depth=MAX_DEPTH)
                cbor2_ok = True
            except cbor2.CBORDecodeError as e:
                assert "depth" in str(e)
                cbor2_ok = False
            got = self.impl.decode(payload)
            assert got.status == ("ok" if cbor2_ok else "decode_error"), levels
            # the same nesting under a top-level array, as a non-map element
            payload = arr(value)
            got = self.impl.decode(payload)
            try:
                cbor2.loads(payload, max_depth=MAX_DEPTH)
                cbor2_ok = True
            except cbor2.CBORDecodeError:
                cbor2_ok = False
            assert got.status == ("ok" if cbor2_ok else "decode_error"), levels

    def test_depth_limit_exact(self):
        self.check(b"\x81" * MAX_DEPTH + b"\x00", MISMATCH)
        self.check(b"\x81" * (MAX_DEPTH + 1) + b"\x00", ERROR)
        self.check(SELF_DESCRIBE + b"\x81" * (MAX_DEPTH - 1) + b"\x00", MISMATCH)  # the tag counts
        self.check(SELF_DESCRIBE + b"\x81" * MAX_DEPTH + b"\x00", ERROR)
        # an empty definite array encloses nothing
        self.check(b"\x81" * MAX_DEPTH + b"\x80", MISMATCH)
        self.check(b"\x81" * MAX_DEPTH + b"\x9f\xff", ERROR)  # an indefinite one always counts
        self.check(rd(extra=[(t("x"), b"\xc6" * (MAX_DEPTH - 1) + b"\x00")]), ok(R()))
        self.check(rd(extra=[(t("x"), b"\xc6" * MAX_DEPTH + b"\x00")]), ERROR)

    def test_very_deep_nesting_does_not_recurse(self):
        for opener in (b"\x81", b"\x9f", b"\xc6", b"\xa1\x00"):
            self.check(opener * 200_000, ERROR)
            self.check(rd(extra=[(t("x"), opener * 200_000)]), ERROR)

    # ---- duplicate keys ------------------------------------------------------------------------

    @pytest.mark.parametrize("key", ["d", "s", "v", "u", "n", "x", ""])
    def test_duplicate_key_native(self, key):
        payload = rd(extra=[(t(key), uint(1))])
        if key in ("u", "n", "x", ""):
            payload = rd(extra=[(t(key), uint(1)), (t(key), uint(1))])
        self.check(payload, ERROR)
        self.check(arr(rd(), payload), ERROR)
        self.check(iarr(payload), ERROR)
        self.check(SELF_DESCRIBE + payload, ERROR)
        pairs = [(t("d"), t("a")), (t(key), uint(2)), (t("s"), t("b")), (t(key), uint(2)),
                 (t("v"), uint(0))]
        self.check(imp(*pairs), ERROR)

    def test_duplicate_in_ignored_map_is_not_read(self):
        self.check(rd(extra=[(t("x"), mp((t("d"), uint(1)), (t("d"), uint(1))))]), ok(R()))

    def test_duplicate_compares_raw_bytes(self):
        # "é" precomposed vs decomposed: different bytes, different keys
        self.check(rd(extra=[(t("\u00e9"), uint(1)), (t("e\u0301"), uint(2))]), ok(R()))
        self.check(rd(extra=[(t("ab"), uint(1)), (t("ba"), uint(2)), (t("a"), uint(3))]), ok(R()))

    def test_duplicate_keys_on_the_fallback_path(self):
        # a non-text key sends the map to cbor2, which finds the duplicate
        dup_after = mp((uint(1), uint(0)), (t("d"), t("a")), (t("s"), t("b")), (t("v"), uint(0)),
                       (t("d"), t("a")))
        assert self.impl.decode_native(dup_after) == "fallback"
        self.check(dup_after, ERROR, native="fallback")
        # duplicates among non-text keys: only cbor2 can see them
        self.check(rd(extra=[(uint(1), uint(0)), (uint(1), uint(0))]), ERROR, native="fallback")
        # True == 1 in cbor2
        self.check(rd(extra=[(b"\xf5", uint(0)), (uint(1), uint(0))]), ERROR, native="fallback")
        # a chunked "d" and a definite "d" are the same key
        self.check(rd(extra=[(chunked_text("d"), t("x"))]), ERROR, native="fallback")
        # over 32 pairs: the reader stops comparing, cbor2 does not
        many = [(t(f"k{i}"), uint(i)) for i in range(40)] + [(t("k39"), uint(0))]
        self.check(rd(extra=many), ERROR, native="fallback")

    def test_duplicate_found_natively_before_a_fallback_trigger(self):
        self.check(rd(extra=[(t("d"), t("x")), (uint(1), uint(0))]), ERROR, native="decode_error")

    # ---- fallback ------------------------------------------------------------------------------

    def test_non_text_keys_go_through_fallback(self):
        for key in (uint(1), nint(-1), by(b"d"), f64(1.0), NULL, arr(uint(1)),
                    mp((uint(1), uint(2))), tag(6, t("d"))):
            self.check(rd(extra=[(key, t("ignored"))]), ok(R()), native="fallback")
        self.check(mp((uint(1), uint(2))), MISMATCH, native="fallback")
        self.check(arr(rd(), rd(extra=[(uint(1), uint(2))], d=t("b"))), ok(R(), R("b")),
                   native="fallback")

    def test_chunked_keys_go_through_fallback(self):
        pairs = [(chunked_text("d"), t("dev")), (chunked_text("", "s"), t("temp")),
                 (t("v"), uint(1))]
        self.check(mp(*pairs), ok(R()), native="fallback")
        self.check(imp(*pairs), ok(R()), native="fallback")
        self.check(mp((chunked_text("v"), TRUE), (t("d"), t("a")), (t("s"), t("b"))), MISMATCH,
                   native="fallback")

    def test_more_than_32_pairs(self):
        def pairs(n):
            return [(t(f"k{i}"), uint(i)) for i in range(n - 3)]

        self.check(rd(extra=pairs(MAX_READ_KEYS)), ok(R()), native="ok")
        self.check(rd(extra=pairs(MAX_READ_KEYS), indefinite=True), ok(R()), native="ok")
        self.check(rd(extra=pairs(MAX_READ_KEYS + 1)), ok(R()), native="fallback")
        self.check(rd(extra=pairs(MAX_READ_KEYS + 1), indefinite=True), ok(R()), native="fallback")
        # the fields after the 32nd pair are still read (by cbor2)
        late = pairs(MAX_READ_KEYS + 5) + [(t("u"), t("K"))]
        self.check(rd(extra=late, indefinite=True), ok(R(unit="K")), native="fallback")
        self.check(rd(extra=pairs(MAX_READ_KEYS + 1) + [(t("u"), uint(1))]), MISMATCH,
                   native="fallback")

    @pytest.mark.parametrize(
        "field,value,expected",
        [
            ("v", tag(2, by(b"\x01" + b"\x00" * 8)), ok(R(value=18446744073709551616.0))),
            ("v", tag(3, by(b"\x01" + b"\x00" * 8)), ok(R(value=-18446744073709551617.0))),
            ("v", tag(2, by(b"\x01" + b"\x00" * 200)), NON_FINITE),  # beyond the double range
            ("v", tag(3, by(b"\xff" * 200)), NON_FINITE),
            ("v", tag(2, by(b"")), ok(R(value=0.0))),
            ("v", tag(1, uint(1363896240)), MISMATCH),  # a datetime is not a number
            ("v", tag(1000, uint(1)), MISMATCH),
            ("v", tag(55799, f64(2.5)), ok(R(value=2.5))),
            ("v", chunked_text("1"), MISMATCH),
            ("v", chunked_bytes(b"\x01"), MISMATCH),
            ("d", chunked_text("de", "v"), ok(R("dev"))),
            ("d", chunked_text(), MISMATCH),  # empty
            ("d", tag(1000, t("dev")), MISMATCH),
            ("d", tag(55799, t("dev")), ok(R("dev"))),
            ("d", chunked_bytes(b"dev"), MISMATCH),
            ("s", b"\x7f" + t(b"\xff") + b"\xff", MISMATCH),  # chunked, invalid UTF-8
            ("u", chunked_text("K"), ok(R(unit="K"))),
            ("u", chunked_text(), ok(R(unit=""))),
            ("u", tag(1000, t("K")), MISMATCH),
            # decided: a bignum n within uint64 is accepted
            ("n", tag(2, by(b"\x05")), ok(R(seq=5))),
            ("n", tag(2, by(b"\x01" + b"\x00" * 8)), MISMATCH),  # 2**64 does not fit
            ("n", tag(3, by(b"\x00")), MISMATCH),  # -1
            ("n", tag(1000, uint(5)), MISMATCH),
        ],
    )
    def test_tags_and_chunked_strings_in_fields_go_through_fallback(self, field, value, expected):
        self.check(rd(**{field: value}), expected, native="fallback")

    def test_tag_on_element_or_top_item_goes_through_fallback(self):
        self.check(arr(rd(), tag(1000, rd())), ok(R(), mismatch=1), native="fallback")
        self.check(tag(1000, rd()), MISMATCH, native="fallback")
        self.check(tag(1000, arr(rd())), MISMATCH, native="fallback")
        self.check(arr(tag(55799, rd(d=t("b"))), rd()), ok(R("b"), R()), native="fallback")
        self.check(SELF_DESCRIBE + SELF_DESCRIBE + rd(), ok(R()), native="fallback")
        self.check(SELF_DESCRIBE + SELF_DESCRIBE + arr(rd(), uint(1)), ok(R(), mismatch=1),
                   native="fallback")
        self.check(tag(258, arr(uint(1))), MISMATCH, native="fallback")  # a set is not an array

    def test_fallback_readings_are_whole_payload(self):
        # one element needs cbor2: all elements come from cbor2, in order, with the counts
        payload = arr(rd(d=t("a")), uint(1), rd(d=t("b"), v=tag(2, by(b"\x07"))), rd(v=f16(0x7C00)),
                      rd(d=t("c")))
        self.check(payload, ok(R("a"), R("b", value=7.0), R("c"), mismatch=1, non_finite=1),
                   native="fallback")

    def test_malformed_wins_over_fallback(self):
        self.check(rd(extra=[(uint(1), uint(2))]) + b"\x00", ERROR)
        self.check(arr(rd(v=tag(2, by(b"\x01"))), rd(v=b"\x1c")), ERROR)
        self.check(arr(tag(6, rd()), b"\xff"), ERROR)
        self.check(tag(1000, rd()) + b"\x00", ERROR)
        self.check(rd(d=chunked_text("a"), v=b"\xf8\x00"), ERROR)
        self.check(rd(extra=[(uint(1), b"\x81" * (MAX_DEPTH + 1) + b"\x00")]), ERROR)

    def test_fallback_is_stricter_about_tag_contents(self):
        """Decided: cbor2 rejects ill-typed tag contents even in ignored values (see
        cbor_fallback.py)."""
        ignored = [(t("x"), tag(2, t("not bytes")))]
        self.check(rd(extra=ignored), ok(R()), native="ok")  # native: well-formed, not read
        self.check(rd(extra=ignored + [(uint(1), uint(1))]), ERROR, native="fallback")


class TestEventTime:
    """The optional `t`: a number or tag 1 on a number natively, tag 0 through cbor2."""

    @pytest.fixture(autouse=True)
    def _reader(self, backend):
        self.impl = backend.decode

    def check(self, payload: bytes, expected: Decoded, native: str):
        assert self.impl.decode(payload) == expected
        assert self.impl.decode_native(payload) == native

    @pytest.mark.parametrize("enc,value", [
        (uint(1_700_000_000), 1_700_000_000.0),
        (nint(-5), -5.0),
        (f64(1_700_000_000.125), 1_700_000_000.125),
        (f32(12.5), 12.5),
        (f16(0x3E00), 1.5),
        (uint(2**64 - 1), float(2**64 - 1)),
    ])
    def test_numbers_and_tag_1(self, enc, value):
        self.check(rd(tm=enc), ok(R(tm=value)), "ok")
        self.check(rd(tm=tag(1, enc)), ok(R(tm=value)), "ok")

    def test_tag_0_through_cbor2(self):
        when = tag(0, t("2023-11-14T22:13:20.5Z"))
        self.check(rd(tm=when), ok(R(tm=1_700_000_000.5)), "fallback")
        self.check(rd(tm=tag(0, t("not a date"))), ERROR, "fallback")

    @pytest.mark.parametrize("enc", [
        f64(math.nan), f64(math.inf), f64(-math.inf), f16(0x7C00), f32(math.nan),
        t("1700000000"), TRUE, NULL, UNDEFINED, arr(uint(1)), by(b"\x01"),
    ])
    def test_mismatch(self, enc):
        self.check(rd(tm=enc), MISMATCH, "ok")
        self.check(rd(tm=tag(1, f64(math.nan))), MISMATCH, "ok")

    def test_schema_before_non_finite(self):
        self.check(rd(v=f64(math.inf), tm=t("x")), MISMATCH, "ok")

    @pytest.mark.parametrize("enc", [tag(1, t("x")), tag(1, tag(1, uint(1))),
                                     tag(2, by(b"\x01")), chunked_text("1")])
    def test_other_tags_go_to_cbor2(self, enc):
        assert self.impl.decode_native(rd(tm=enc)) == "fallback"

    def test_array_elements_have_their_own_t(self):
        payload = arr(rd(tm=uint(10)), rd(), rd(tm=t("x")), rd(tm=tag(1, f64(11.5))))
        self.check(payload, ok(R(tm=10.0), R(), R(tm=11.5), mismatch=1), "ok")

    def test_duplicate_t_is_malformed(self):
        self.check(rd(tm=uint(1), extra=[(t("t"), uint(2))]), ERROR, "decode_error")


class TestCompiledOnly:
    def test_cap_is_checked(self, compiled_backend):
        _decode_with_cap = compiled_backend.decode._decode_with_cap
        one = rd(d=t("a"), s=t("b"), v=uint(0))
        assert _decode_with_cap(one, 2) == (0, 1)
        assert _decode_with_cap(one, 1) == (3, 0)  # TC_PAYLOAD_CAP_TOO_SMALL
        batch = arr(*[one] * 20)  # 241 bytes: cap 21
        assert _decode_with_cap(batch, 21) == (0, 20)
        assert _decode_with_cap(batch, 20) == (3, 0)

    def test_constants_match_the_header(self, compiled_backend):
        compiled = compiled_backend.decode
        assert compiled.C_MAX_DEPTH == MAX_DEPTH == 256
        assert compiled.C_MAX_READ_KEYS == MAX_READ_KEYS == 32
        assert compiled.C_MIN_READING_BYTES == MIN_READING_BYTES == 12


# --------------------------------------------------------------------------------------------
# Properties over generated payloads, and the two twins against each other
# --------------------------------------------------------------------------------------------

_hyp = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_hyp
@given(readings_payloads())
def test_generated_readings_decode(backend, case):
    payload, expected = case
    assert backend.decode.decode(payload) == ok(*expected)
    assert backend.decode.decode_native(payload) == "ok"
    # cbor2 reads the same payload to the same readings
    assert decode_with_cbor2(payload) == ok(*expected)


@_hyp
@given(st.lists(st.fixed_dictionaries({"d": names, "s": names, "v": numbers},
                                      optional={"u": st.text(max_size=4),
                                                "n": st.integers(0, 2**64 - 1)}),
                max_size=4),
       st.booleans())
def test_cbor2_dumps_readings(backend, objs, canonical):
    expected = [R(o["d"], o["s"], float(o["v"]), o.get("u"), o.get("n")) for o in objs]
    assert backend.decode.decode(cbor2.dumps(objs, canonical=canonical)) == ok(*expected)
    if objs:
        assert backend.decode.decode(cbor2.dumps(objs[0], canonical=canonical)) == ok(expected[0])


@_hyp
@given(cbor_items())
def test_generated_items_against_cbor2(backend, payload):
    """An independent oracle: whatever the native reader decides, cbor2 (the fallback) agrees,
    except that cbor2 may reject more (semantic tag checks, duplicates in ignored maps)."""
    got = backend.decode.decode(payload)
    native = backend.decode.decode_native(payload)
    via_cbor2 = decode_with_cbor2(payload)
    if native == "decode_error":
        assert via_cbor2 == ERROR
        assert got == ERROR
    elif native == "fallback":
        assert got == via_cbor2
    else:
        assert via_cbor2 in (got, ERROR)


class TestTwins:
    """The compiled reader and the pure twin agree on everything."""

    @pytest.fixture(autouse=True)
    def _readers(self, compiled_backend, pure_backend):
        self.compiled, self.pure = compiled_backend.decode, pure_backend.decode

    def same(self, payload: bytes, max_name_bytes: int = 256):
        assert self.compiled.decode_native(payload, max_name_bytes) == \
            self.pure.decode_native(payload, max_name_bytes)
        assert self.compiled.decode(payload, max_name_bytes) == \
            self.pure.decode(payload, max_name_bytes)

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(max_size=64))
    @example(rd())
    def test_random_bytes(self, payload):
        self.same(payload)

    @settings(max_examples=500, deadline=None)
    @given(mutated(st.sampled_from(GOOD_PAYLOADS)), st.integers(0, 8))
    def test_flipped_good_payloads(self, payload, max_name_bytes):
        self.same(payload, max_name_bytes)

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(cbor_items(), mutated(cbor_items()), readings_payloads().map(lambda c: c[0]),
                     mutated(readings_payloads().map(lambda c: c[0]))))
    def test_generated_and_mutated(self, payload):
        self.same(payload)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(_keys, cbor_items(4)), max_size=40).map(lambda ps: mp(*ps)),
           st.integers(0, 4))
    def test_reading_shaped_maps(self, payload, max_name_bytes):
        self.same(payload, max_name_bytes)
        self.same(arr(payload, payload), max_name_bytes)


# --------------------------------------------------------------------------------------------
# The cbor2 path on its own
# --------------------------------------------------------------------------------------------


class TestFallback:
    def test_trailing_bytes(self):
        # why loads is not used: it ignores what follows the first item
        assert cbor2.loads(rd() + b"\x00") == {"d": "dev", "s": "temp", "v": 1}
        assert decode_with_cbor2(rd() + b"\x00") == ERROR
        assert decode_with_cbor2(rd()) == ok(R())

    @pytest.mark.parametrize("payload", [b"", b"\xff", b"\x1c", b"\xa1\x00", b"\x7f\x41a\xff"])
    def test_malformed(self, payload):
        assert decode_with_cbor2(payload) == ERROR

    def test_self_describe_gives_immutable_containers(self):
        assert decode_with_cbor2(SELF_DESCRIBE + arr(rd(), uint(1))) == ok(R(), mismatch=1)
        assert decode_with_cbor2(SELF_DESCRIBE + rd()) == ok(R())

    def test_top_level_strings_are_not_arrays(self):
        assert decode_with_cbor2(t("abc")) == MISMATCH
        assert decode_with_cbor2(by(b"abc")) == MISMATCH

    def test_depth(self):
        assert decode_with_cbor2(b"\x81" * MAX_DEPTH + b"\x00") == MISMATCH
        assert decode_with_cbor2(b"\x81" * (MAX_DEPTH + 1) + b"\x00") == ERROR

    def test_surrogate_escaped_names(self):
        assert decode_with_cbor2(rd(d=t(b"\xed\xa0\x80"))) == MISMATCH
        assert decode_with_cbor2(rd(u=t(b"\xff"))) == MISMATCH
        # an invalid UTF-8 *key* is just an unknown key
        assert decode_with_cbor2(rd(extra=[(t(b"\xff"), uint(1))])) == ok(R())

    def test_max_name_bytes_checked(self):
        with pytest.raises(ValueError):
            decode_with_cbor2(rd(), -1)


class TestCheckElement:
    @pytest.mark.parametrize(
        "elem,expected",
        [
            ({"d": "a", "s": "b", "v": 1}, R("a", "b", 1.0)),
            ({"d": "a", "s": "b", "v": True}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": False}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 2**1024}, "non_finite"),
            ({"d": "a", "s": "b", "v": -(2**1024)}, "non_finite"),
            ({"d": "a", "s": "b", "v": 2**1023}, R("a", "b", float(2**1023))),
            ({"d": "a", "s": "b", "v": 1, "n": True}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 1, "n": 2**64}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 1, "n": -1}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 1, "n": 1.0}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 1, "u": None}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 1, "t": 5}, R("a", "b", 1.0, tm=5.0)),
            ({"d": "a", "s": "b", "v": 1, "t": math.inf}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 1, "t": 2**1024}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 1, "t": True}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": 1, "t": "5"}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": math.nan, "t": "5"}, "schema_mismatch"),
            ({"d": "a\udcff", "s": "b", "v": 1}, "schema_mismatch"),
            ({"d": b"a", "s": "b", "v": 1}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": "1"}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": math.nan, "u": 3}, "schema_mismatch"),
            ({"d": "a", "s": "b", "v": math.nan}, "non_finite"),
            ({1: "x", ("t",): 2, "d": "a", "s": "b", "v": 1}, R("a", "b", 1.0)),
            ([("d", "a")], "schema_mismatch"),
            ("dsv", "schema_mismatch"),
        ],
    )
    def test_rules(self, elem, expected):
        assert check_element(elem, 256) == expected

    def test_name_length_in_utf8_bytes(self):
        assert check_element({"d": "é" * 2, "s": "b", "v": 1}, 4) == R("éé", "b", 1.0)
        assert check_element({"d": "é" * 3, "s": "b", "v": 1}, 5) == "schema_mismatch"
