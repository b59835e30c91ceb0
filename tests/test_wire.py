"""NATS wire encoder: the compiled ``_wire`` against its twin ``_wire_py`` byte for byte, and the
twin against what the emitter does one aggregate at a time (subject_for + encode_json/cbor, and
msg_id for JetStream's HPUB messages). The modules' ack reader: tests/test_jetstream_acks.py."""

from __future__ import annotations

import math
import random
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telemetry_cy import backend as backends
from telemetry_cy.engine.rules import AGGREGATE_FIELDS, MAX_QUANTILES, quantile_name
from telemetry_cy.sink.bodies import decode_body, encoder_for
from telemetry_cy.sink.subjects import escape_token, msg_id, parse_subject, subject_for

PREFIX = "agg"
MAX_SUBJECT = 3072  # emitter.MAX_SUBJECT_BYTES
# The encoders take either engine's Aggregate class: the inputs mix both where this install has
# both (the compiled one first: it is what the daemon feeds them), else they are the twin's.
AGGREGATE_CLASSES = [backends.load(name).Aggregate for name in backends.available()]
Aggregate = AGGREGATE_CLASSES[0]
PureAggregate = backends.load("pure").Aggregate
FLOAT_FIELDS = [f for f in AGGREGATE_FIELDS[3:] if f != "count"]

any_char = st.characters(codec=None, categories=None, exclude_categories=())
names = st.one_of(
    st.text(st.characters(max_codepoint=0x7F), max_size=12),  # printable or not, DEL included
    st.text(st.sampled_from(".*>% \t\r\n\x00\x01\x08\x0c\x1f\x7f\"\\/'é°温\u2028\ud800\udfff"),
            max_size=12),
    st.text(any_char, max_size=12),
    st.sampled_from(["dev-00042", "temp", "C", "°C", "", "\ud800", "a.b", "100%"]),
    # long enough for the subject limit (3072 bytes) and past subjects.CACHE_NAME_MAX
    st.builds(lambda s, n: (s * n)[:4000], st.text(any_char, min_size=1, max_size=3),
              st.integers(1, 4000)),
)
# whole numbers around repr's switch to exponent form (1e16) and the end of exact integers (2**53)
EDGE_FLOATS = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e16, -1e16, 1e16 - 2,
               -(1e16 - 2), 2.0**53, 2.0**53 + 2, 2.0**63, -(2.0**63), 1e15, 1e-5, 1e-4,
               1.7e9, 1700000060.0, 0.1, 1.7976931348623157e308, math.inf, -math.inf, math.nan,
               -math.nan, 21.95]
floats = st.one_of(
    st.floats(),
    st.sampled_from(EDGE_FLOATS),
    st.integers(-(2**60), 2**60).map(float),
    st.integers(-10**6, 10**6).map(lambda i: i / 100),
)
counts = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 23, 24, 255, 256, 65535, 65536,
                                                              2**32 - 1, 2**32, 2**64 - 1]))


@st.composite
def aggregates(draw):
    cls = draw(st.sampled_from(AGGREGATE_CLASSES))
    values = dict(device=draw(names), sensor=draw(names),
                  unit=draw(st.one_of(st.none(), names)), count=draw(counts))
    values.update({f: draw(floats) for f in FLOAT_FIELDS})
    # quantiles: none, or up to eight of any q (names as the engine makes them), each value any
    # float, NaN and infinities included
    qs = sorted(draw(st.sets(st.floats(1e-9, 1 - 1e-9), max_size=MAX_QUANTILES)))
    qnames = tuple(quantile_name(q) for q in qs)
    qvalues = tuple(draw(floats) for _ in qs)
    return cls(*(values[f] for f in AGGREGATE_FIELDS), qnames, qvalues)


batches = st.lists(aggregates(), max_size=8)
chunk_sizes = st.one_of(st.integers(1, 2000), st.just(262144))


def typical(i: int, cls=Aggregate):
    t = 1700000000.0 + 5 * (i % 7)
    return cls(f"dev-{i:05d}", "temp", "C", t - 60, t, 12, 263.4 + i, 21.95, 20.1, 23.7,
               1.0312345, 20.1, 23.7 + i / 1000)


def run(twin, *args, **kwargs):
    """The result, or the exception's type and text (the twins must fail alike too)."""
    try:
        return twin.encode_batch(*args, **kwargs)
    except Exception as exc:
        return type(exc), str(exc)


def raw_messages(chunks):
    """Every PUB message of the stream, as bytes, checking the framing as a server would."""
    data, out, pos = b"".join(chunks), [], 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        op, _, size = data[pos:end].split(b" ")
        assert op == b"PUB"
        body_end = end + 2 + int(size)
        assert data[body_end:body_end + 2] == b"\r\n"
        out.append(data[pos:body_end + 2])
        pos = body_end + 2
    return out


def messages(chunks):
    """(subject, body) of every PUB message of the stream."""
    out = []
    for raw in raw_messages(chunks):
        head, body = raw[:-2].split(b"\r\n", 1)
        out.append((head.split(b" ")[1].decode(), body))
    return out


def same_value(got, want, fmt) -> bool:
    if isinstance(want, float):
        if not math.isfinite(want) and fmt == "json":
            return got is None
        if math.isnan(want):
            return math.isnan(got)
        return struct.pack("<d", got) == struct.pack("<d", want)  # -0.0 is not 0.0
    if isinstance(want, str) and fmt == "json":
        # encode_json writes lone surrogates as \\uXXXX escapes, and a JSON reader joins a high
        # one followed by a low one into one astral character (the reader's doing, not ours)
        want = want.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return type(got) is type(want) and got == want


# ---- the twins agree, and what they write decodes back ----------------------------------------

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches, st.sampled_from(["json", "cbor"]), chunk_sizes)
@example([typical(1), typical(2, PureAggregate)], "json", 262144)
@example([Aggregate("d", "s", None, 0.0, 5.0, 3, 6.0, 2.0, 1.0, 3.0, 0.8, 1.0, 3.0,
                    ("p50", "p99", "p99.9"), (2.0, 2.97, 3.0)),
          Aggregate("d", "s", "C", 0.0, 5.0, 3, 6.0, 2.0, 1.0, 3.0, 0.8, 1.0, 3.0, ("p90",),
                    (21.95,)),
          PureAggregate("d", "s", None, 0.0, 5.0, 1, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, ("p50",),
                        (math.nan,))],
         "cbor", 262144)
def test_compiled_matches_twin(compiled_backend, pure_backend, aggs, fmt, chunk_bytes):
    got = run(compiled_backend, aggs, PREFIX, fmt, MAX_SUBJECT, chunk_bytes)
    want = run(pure_backend, aggs, PREFIX, fmt, MAX_SUBJECT, chunk_bytes)
    assert got == want
    if isinstance(want[0], type):
        # the only failure the engine's values can cause: cbor2 cannot encode a lone surrogate
        assert fmt == "cbor" and want[0] is UnicodeEncodeError
        return
    chunks, encoded, too_long, nbytes = got
    assert all(type(c) is bytes and c for c in chunks)
    assert encoded + too_long == len(aggs)
    for c in chunks:
        assert len(c) <= chunk_bytes or len(raw_messages([c])) == 1
    # the stream does not depend on where it is cut
    whole = compiled_backend.encode_batch(aggs, PREFIX, fmt, MAX_SUBJECT, 2**40)[0]
    assert b"".join(chunks) == b"".join(whole) and len(whole) <= 1

    msgs = messages(chunks)
    assert len(msgs) == encoded
    kept = [a for a in aggs if len(subject_for(PREFIX, a.device, a.sensor).encode()) <= MAX_SUBJECT]
    assert len(kept) == encoded
    assert nbytes == sum(len(s) + len(b) for s, b in msgs)
    for a, (subject, body) in zip(kept, msgs):
        assert parse_subject(PREFIX, subject) == (a.device, a.sensor)
        fields = decode_body(fmt, body)
        assert list(fields) == list(a.as_dict())
        for name in a.as_dict():
            assert same_value(fields[name], getattr(a, name), fmt), name


def test_twin_is_the_emitters_per_aggregate_path(backend):
    """What emitter._take does per aggregate, concatenated: each twin must be exactly that."""
    aggs = [typical(i) for i in range(50)] + [typical(i, PureAggregate) for i in range(5)]
    aggs.append(Aggregate("Küche.1", "温度 ", "°C", 0.0, 5.0, 1, math.inf, math.nan,
                          -0.0, 1e300, 0.0, 1.0, 2.0))
    for fmt in ("json", "cbor"):
        encode = encoder_for(fmt)
        stream, nbytes = [], 0
        for a in aggs:
            subject = subject_for(PREFIX, a.device, a.sensor)
            body = encode(a)
            stream.append(b"PUB " + subject.encode() + b" " + str(len(body)).encode() + b"\r\n"
                          + body + b"\r\n")
            nbytes += len(subject) + len(body)
        chunks, encoded, too_long, got_nbytes = backend.encode_batch(aggs, PREFIX, fmt,
                                                                     MAX_SUBJECT)
        assert (b"".join(chunks), encoded, too_long, got_nbytes) == (b"".join(stream), len(aggs),
                                                                      0, nbytes), fmt
        assert len(chunks) == 1


# ---- floats: the C fast paths must print exactly repr(x) ----------------------------------------

def float_batch(xs, cls=Aggregate):
    xs = list(xs) + [0.0] * (-len(xs) % 9)
    return [cls("d", "s", None, *xs[i:i + 2], 1, *xs[i + 2:i + 9]) for i in range(0, len(xs), 9)]


def sweep_floats(seed: int = 7) -> list[float]:
    """Decimals of 1 to 17 significant digits in every decade where repr uses fixed notation and
    beyond, their neighbouring doubles, powers of ten and their neighbours, random bit patterns."""
    rng = random.Random(seed)
    xs = []
    for n in range(1, 18):
        for e in range(-7, 18):
            for _ in range(12):
                x = float(f"{rng.randrange(10 ** (n - 1), 10 ** n)}e{e - n + 1}")
                xs += [x, -x, math.nextafter(x, math.inf), math.nextafter(x, -math.inf)]
    for e in range(-8, 20):
        p = float(f"1e{e}")
        xs += [p, -p, math.nextafter(p, 0.0), math.nextafter(p, math.inf), p * (1 - 1e-15)]
    xs += [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
           for _ in range(5000)]
    xs += [i / d for i in range(-3000, 3000, 7) for d in (10, 100, 1000, 3)]
    return xs


def test_float_sweep(compiled_backend, pure_backend):
    aggs = float_batch(sweep_floats())
    for fmt in ("json", "cbor"):
        assert compiled_backend.encode_batch(aggs, PREFIX, fmt, MAX_SUBJECT) == \
            pure_backend.encode_batch(aggs, PREFIX, fmt, MAX_SUBJECT)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(floats, st.floats(1e-5, 1e15), st.floats(-1e15, -1e-5),
                          st.builds(lambda m, e: m * 10.0 ** e, st.integers(-10**15, 10**15),
                                    st.integers(-20, 2))),
                min_size=9, max_size=90))
def test_floats_print_as_repr(compiled_backend, pure_backend, xs):
    aggs = float_batch(xs)
    assert compiled_backend.encode_batch(aggs, PREFIX, "json", MAX_SUBJECT) == \
        pure_backend.encode_batch(aggs, PREFIX, "json", MAX_SUBJECT)


# ---- limits and chunking ----------------------------------------------------------------------

def test_too_long_subjects_are_counted_and_skipped(backend):
    room = MAX_SUBJECT - len(PREFIX) - 2  # bytes left for device + sensor
    fits = Aggregate("d" * (room - 1), "s", None, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)
    over = Aggregate("d" * room, "s", None, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)
    # escaping grows the subject: 1100 dots are 3300 bytes of %2E
    dots = PureAggregate("." * 1100, "s", "C", 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)
    wide = Aggregate("温" * 1023, "s", None, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)  # 3075 bytes
    aggs = [fits, over, dots, wide, typical(1)]
    chunks, encoded, too_long, _ = backend.encode_batch(aggs, PREFIX, "json", MAX_SUBJECT)
    assert (encoded, too_long) == (2, 3)
    assert [s for s, _ in messages(chunks)] == [subject_for(PREFIX, a.device, a.sensor)
                                                for a in (fits, typical(1))]
    assert backend.encode_batch(aggs, PREFIX, "json", 0)[1:3] == (0, 5)


def test_chunks_are_cut_at_message_boundaries(backend):
    aggs = [typical(i) for i in range(100)]
    one = backend.encode_batch(aggs[:1], PREFIX, "json", MAX_SUBJECT)[0][0]
    whole = b"".join(backend.encode_batch(aggs, PREFIX, "json", MAX_SUBJECT)[0])
    for chunk_bytes in (1, len(one) - 1, len(one), len(one) + 1, 2 * len(one), 5000, 10**9):
        chunks = backend.encode_batch(aggs, PREFIX, "json", MAX_SUBJECT, chunk_bytes)[0]
        assert b"".join(chunks) == whole
        for c in chunks:
            assert c.startswith(b"PUB ") and c.endswith(b"\r\n")
            assert len(c) <= chunk_bytes or len(raw_messages([c])) == 1
        if chunk_bytes <= len(one):
            assert len(chunks) == len(aggs)  # every message on its own
        # greedy: a chunk was cut only because the next message did not fit
        for a, b in zip(chunks, chunks[1:]):
            assert len(a) + len(raw_messages([b])[0]) > chunk_bytes


def test_empty_batch(backend):
    assert backend.encode_batch([], PREFIX, "json", MAX_SUBJECT) == ([], 0, 0, 0)
    assert backend.encode_batch(iter([]), PREFIX, "cbor", MAX_SUBJECT, 1) == ([], 0, 0, 0)


def test_any_iterable_and_mixed_types(compiled_backend, pure_backend):
    aggs = [typical(1), typical(2, PureAggregate), typical(3)]
    for fmt in ("json", "cbor"):
        want = pure_backend.encode_batch(aggs, PREFIX, fmt, MAX_SUBJECT)
        assert compiled_backend.encode_batch(tuple(aggs), PREFIX, fmt, MAX_SUBJECT) == want
        assert compiled_backend.encode_batch(iter(aggs), PREFIX, fmt, MAX_SUBJECT) == want


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches, st.sampled_from(["json", "cbor"]), st.integers(0, 600))
@example([typical(1), typical(2, PureAggregate)], "json", 200)
def test_body_limit_skips_and_counts_exactly_the_long_bodies(compiled_backend, pure_backend, aggs,
                                                             fmt, limit):
    """max_body_bytes (the server's max_payload): a longer body is skipped and counted in
    too_long, like a long subject; everything else is written as without the limit."""
    got = run(compiled_backend, aggs, PREFIX, fmt, MAX_SUBJECT, 262144, max_body_bytes=limit)
    assert got == run(pure_backend, aggs, PREFIX, fmt, MAX_SUBJECT, 262144,
                      max_body_bytes=limit)
    if isinstance(got[0], type):
        assert fmt == "cbor" and got[0] is UnicodeEncodeError
        return
    encode = encoder_for(fmt)
    fits = [a for a in aggs
            if len(subject_for(PREFIX, a.device, a.sensor).encode()) <= MAX_SUBJECT
            and len(encode(a)) <= limit]
    chunks, encoded, too_long, _ = got
    assert (encoded, too_long) == (len(fits), len(aggs) - len(fits))
    assert [body for _, body in messages(chunks)] == [encode(a) for a in fits]


@pytest.mark.parametrize("args, exc, text", [
    (("xml", MAX_SUBJECT, 1), ValueError, "format must be one of json, cbor, got 'xml'"),
    (("JSON", MAX_SUBJECT, 1), ValueError, "format must be one of json, cbor, got 'JSON'"),
    (("json", -1, 1), ValueError, "max_subject_bytes must be between 0"),
    (("json", MAX_SUBJECT, 0), ValueError, "chunk_bytes must be between 1"),
    (("json", 2**64, 1), ValueError, "max_subject_bytes must be between 0"),
    (("json", 3.0, 1), TypeError, "max_subject_bytes must be an integer"),
    (("json", MAX_SUBJECT, True), TypeError, "chunk_bytes must be an integer"),
])
def test_bad_arguments(backend, args, exc, text):
    fmt, max_subject, chunk_bytes = args
    with pytest.raises(exc, match="^" + text.replace("(", r"\(")):
        backend.encode_batch([typical(1)], PREFIX, fmt, max_subject, chunk_bytes)


def test_bad_body_limit(backend):
    with pytest.raises(ValueError, match="^max_body_bytes must be between 0"):
        backend.encode_batch([typical(1)], PREFIX, "json", MAX_SUBJECT, max_body_bytes=-1)
    with pytest.raises(TypeError, match="^max_body_bytes must be an integer"):
        backend.encode_batch([typical(1)], PREFIX, "json", MAX_SUBJECT, max_body_bytes=1.5)


@pytest.mark.parametrize("prefix, exc", [("", ValueError), ("a b", ValueError),
                                         ("agg\r\nPUB x 0", ValueError), ("a.*", ValueError),
                                         ("a..b", ValueError), (b"agg", TypeError),
                                         (None, TypeError)])
def test_bad_prefix(compiled_backend, pure_backend, prefix, exc):
    for twin in (compiled_backend, pure_backend):
        with pytest.raises(exc):
            twin.encode_batch([typical(1)], prefix, "json", MAX_SUBJECT)
    assert run(compiled_backend, [], prefix, "json", 1) == \
        run(pure_backend, [], prefix, "json", 1)


def test_prefix_subclass_rejected(backend):
    class Prefix(str):
        pass
    with pytest.raises(TypeError, match="prefix must be a str"):
        backend.encode_batch([], Prefix("agg"), "json", MAX_SUBJECT)


def test_multi_token_and_non_ascii_prefix(compiled_backend, pure_backend):
    aggs = [typical(1), compiled_backend.Aggregate("é", "x.y", None, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)]
    for prefix in ("a.b.c", "télé.agg"):
        for fmt in ("json", "cbor"):
            want = pure_backend.encode_batch(aggs, prefix, fmt, MAX_SUBJECT)
            assert compiled_backend.encode_batch(aggs, prefix, fmt, MAX_SUBJECT) == want
            assert want[3] == sum(len(s) + len(b) for s, b in messages(want[0]))


def test_odd_field_values_fail_alike(compiled_backend, pure_backend):
    """Values the engine never makes still go the Python way in both twins (same result or same
    error): a None name on the compiled class, non-str units, odd types on the pure class."""
    A, P = compiled_backend.Aggregate, pure_backend.Aggregate
    cases = [
        [A(None, "s", None, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)],
        [A("d", "s", 42, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)],
        [A("d", "s", type("U", (str,), {})("°C"), 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)],
        [P("d", "s", None, 0, 5, -1, 1, 1, 1, 1, 0, 1, 1)],
        [P("d", "s", None, 0, 5, 2**70, 1, 1, 1, 1, 0, 1, 1)],
        [P(3, "s", None, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)],
        [object()],
    ]
    for aggs in cases:
        for fmt in ("json", "cbor"):
            assert run(compiled_backend, aggs, PREFIX, fmt, MAX_SUBJECT) == \
                run(pure_backend, aggs, PREFIX, fmt, MAX_SUBJECT)


# ---- JetStream: HPUB messages with a Nats-Msg-Id header ------------------------------------------

REPLY = "_INBOX.t3st.7"


def run_js(twin, *args, **kwargs):
    try:
        return twin.wire.encode_jetstream(*args, **kwargs)
    except Exception as exc:
        return type(exc), str(exc)


def hpub_messages(chunks):
    """(subject, reply, header, body) of every HPUB message of the stream, checking the framing
    as a server would."""
    data, out, pos = b"".join(chunks), [], 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        op, subject, reply, hsize, size = data[pos:end].split(b" ")
        assert op == b"HPUB" and int(hsize) <= int(size)
        payload = data[end + 2:end + 2 + int(size)]
        assert len(payload) == int(size) and data[end + 2 + int(size):][:2] == b"\r\n"
        out.append((subject.decode(), reply.decode(), payload[:int(hsize)], payload[int(hsize):]))
        pos = end + 2 + int(size) + 2
    return out


def expected_header(a, stream=None):
    return (b"NATS/1.0\r\nNats-Msg-Id: " + msg_id(a.device, a.sensor, a.window_end).encode()
            + b"\r\n" + (b"Nats-Expected-Stream: " + stream.encode() + b"\r\n" if stream else b"")
            + b"\r\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches, st.sampled_from(["json", "cbor"]), chunk_sizes, st.integers(1, 5),
       st.integers(0, 2**40), st.sampled_from([None, "AGG", "s-1_x"]), st.integers(0, 600))
@example([typical(1), typical(2, PureAggregate)], "json", 262144, 1, 0, "AGG", 10**6)
def test_jetstream_compiled_matches_twin(compiled_backend, pure_backend, aggs, fmt, chunk_bytes,
                                         chunk_messages, first, stream, limit):
    args = (aggs, PREFIX, fmt, MAX_SUBJECT, REPLY, first, stream, chunk_bytes, limit,
            chunk_messages)
    got = run_js(compiled_backend, *args)
    want = run_js(pure_backend, *args)
    assert got == want
    if isinstance(want[0], type):
        assert fmt == "cbor" and want[0] is UnicodeEncodeError
        return
    chunks, counts, encoded, too_long, nbytes = got
    assert encoded + too_long == len(aggs) and sum(counts) == encoded
    assert len(counts) == len(chunks) and all(0 < k <= chunk_messages for k in counts)
    for c, k in zip(chunks, counts):
        assert len(hpub_messages([c])) == k
        assert len(c) <= chunk_bytes or k == 1
    encode = encoder_for(fmt)
    kept = [a for a in aggs
            if len(subject_for(PREFIX, a.device, a.sensor).encode()) <= MAX_SUBJECT
            and len(expected_header(a, stream)) + len(encode(a)) <= limit]
    msgs = hpub_messages(chunks)
    assert len(msgs) == len(kept) == encoded
    assert nbytes == sum(len(s) + len(h) + len(b) for s, _, h, b in msgs)
    for i, (a, (subject, reply, header, body)) in enumerate(zip(kept, msgs)):
        assert parse_subject(PREFIX, subject) == (a.device, a.sensor)
        assert reply == f"{REPLY}.{first + i}"     # the ack's token: the message's index
        assert header == expected_header(a, stream)
        assert body == encode(a)


def test_jetstream_twin_is_the_per_aggregate_path(backend):
    """Each message is the HPUB of subject_for + msg_id + the body encoder, in order."""
    aggs = [typical(i) for i in range(40)] + [typical(i, PureAggregate) for i in range(3)]
    aggs.append(Aggregate("Küche|1", "温度 ", "°C", 0.0, math.inf, 1, 1.0, 2.0, -0.0, 1e300,
                          0.0, 1.0, 2.0))
    aggs.append(Aggregate("d", "s", None, 0.0, -0.0, 1, 1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 2.0))
    aggs.append(Aggregate("d", "s", None, 0.0, math.nan, 1, 1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 2.0))
    for fmt in ("json", "cbor"):
        encode = encoder_for(fmt)
        stream = []
        for i, a in enumerate(aggs):
            subject = subject_for(PREFIX, a.device, a.sensor).encode()
            header = expected_header(a, "AGG")
            body = encode(a)
            stream.append(b"HPUB %s %s.%d %d %d\r\n%s%s\r\n" % (
                subject, REPLY.encode(), 5 + i, len(header), len(header) + len(body), header,
                body))
        chunks, counts, encoded, too_long, _ = backend.wire.encode_jetstream(
            aggs, PREFIX, fmt, MAX_SUBJECT, REPLY, 5, "AGG")
        assert (b"".join(chunks), counts, encoded, too_long) == \
            (b"".join(stream), [len(aggs)], len(aggs), 0), fmt
    ids = [h for _, _, h, _ in hpub_messages(chunks)]
    assert b"Nats-Msg-Id: K%C3%BCche%7C1|%E6%B8%A9%E5%BA%A6%20|inf\r\n" in ids[len(aggs) - 3]
    assert b"|-0.0\r\n" in ids[-2] and b"|nan\r\n" in ids[-1]


def test_jetstream_chunks_hold_at_most_chunk_messages(backend):
    aggs = [typical(i) for i in range(100)]
    for k in (1, 7, 100, 1000):
        chunks, counts, *_ = backend.wire.encode_jetstream(aggs, PREFIX, "json", MAX_SUBJECT,
                                                           REPLY, chunk_messages=k)
        full, rest = divmod(100, min(k, 100))
        assert counts == [min(k, 100)] * full + ([rest] if rest else [])
        assert [len(hpub_messages([c])) for c in chunks] == counts


def test_jetstream_payload_limit_counts_the_header(backend):
    a = typical(1)
    size = len(expected_header(a)) + len(encoder_for("json")(a))
    for limit, kept in ((size, 1), (size - 1, 0)):
        _, _, encoded, too_long, _ = backend.wire.encode_jetstream(
            [a], PREFIX, "json", MAX_SUBJECT, REPLY, max_body_bytes=limit)
        assert (encoded, too_long) == (kept, 1 - kept)


@pytest.mark.parametrize("kwargs, exc, text", [
    (dict(reply_prefix="a b"), ValueError, "subject prefix"),
    (dict(reply_prefix="_INBOX.*"), ValueError, "subject prefix"),
    (dict(reply_prefix=b"_INBOX"), TypeError, "reply_prefix must be a str"),
    (dict(first_index=-1), ValueError, "first_index must be between 0"),
    (dict(first_index=1.0), TypeError, "first_index must be an integer"),
    (dict(chunk_messages=0), ValueError, "chunk_messages must be between 1"),
    (dict(expected_stream=""), ValueError, "stream name must be"),
    (dict(expected_stream="a.b"), ValueError, "stream name must be"),
    (dict(expected_stream="a b"), ValueError, "stream name must be"),
    (dict(expected_stream="AGG\r\nX-Evil: 1"), ValueError, "stream name must be"),
    (dict(expected_stream=5), TypeError, "stream name must be a str"),
])
def test_jetstream_bad_arguments(compiled_backend, pure_backend, kwargs, exc, text):
    args = dict(reply_prefix=REPLY, first_index=0, expected_stream=None, chunk_messages=10)
    args.update(kwargs)
    for twin in (compiled_backend, pure_backend):
        with pytest.raises(exc, match=text):
            twin.wire.encode_jetstream([typical(1)], PREFIX, "json", MAX_SUBJECT, **args)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(aggregates(), max_size=40), st.randoms(use_true_random=False))
def test_subject_order_is_a_stable_sort_by_device_token(compiled_backend, pure_backend, aggs,
                                                         rnd):
    aggs = aggs + [typical(rnd.randrange(50)) for _ in range(rnd.randrange(60))]  # equal names
    want = sorted(aggs, key=lambda a: escape_token(a.device).encode())
    assert pure_backend.wire.subject_order(aggs) == want
    got = compiled_backend.wire.subject_order(iter(aggs))
    assert [id(a) for a in got] == [id(a) for a in want]   # the same objects, stably ordered


def test_subject_order_of_a_large_batch_and_odd_items(compiled_backend, pure_backend):
    rnd = random.Random(5)
    names = ["gw-%04d-dev-%06d" % (rnd.randrange(99), rnd.randrange(10**6)) for _ in range(5000)]
    names += ["a" * rnd.randrange(40) for _ in range(300)] + ["é" * 3, "x.y", "", "%", "\x00"]
    aggs = [Aggregate(rnd.choice(names), "s", None, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1)
            for _ in range(20000)]
    aggs += [PureAggregate(3, "s", None, 0, 5, 1, 1, 1, 1, 1, 0, 1, 1), typical(1)]
    got = compiled_backend.wire.subject_order(aggs)
    assert [id(a) for a in got] == [id(a) for a in pure_backend.wire.subject_order(aggs)]
    assert got[0].device == 3    # a device that is not a str sorts first
    for twin in (compiled_backend, pure_backend):
        with pytest.raises(AttributeError):
            twin.wire.subject_order([typical(1), object()])
