"""The MQTT frame reader: compiled (``_frames``) and pure-Python twin (``_frames_py``), one suite.

Packet streams are built here byte by byte (MQTT 3.1.1 and 5, PUBLISH QoS 0/1/2 with random
topics, payloads and v5 properties, interleaved with CONNACK/SUBACK/PINGRESP/...), cut at random
points into random-size reads, and the ring's records, the PUBACK blobs and the packets handed back
are compared with what the packet list says they must be. Then the two twins are compared with each
other on arbitrary and mutated bytes.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# ---- packet builders -----------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(cmd: int, body: bytes) -> bytes:
    return bytes((cmd,)) + varint(len(body)) + body


@dataclass(frozen=True)
class Pub:
    topic: bytes
    payload: bytes
    qos: int = 0
    pid: int = 1
    props: bytes = b""
    flags: int = 0  # dup (8) | retain (1)

    def encode(self, v5: bool) -> bytes:
        body = struct.pack("!H", len(self.topic)) + self.topic
        if self.qos:
            body += struct.pack("!H", self.pid)
        if v5:
            body += varint(len(self.props)) + self.props
        body += self.payload
        return packet(0x30 | (self.qos << 1) | self.flags, body)


@dataclass(frozen=True)
class Other:
    cmd: int
    body: bytes

    def encode(self, v5: bool) -> bytes:
        return packet(self.cmd, self.body)


def connack(v5: bool, present: int = 0) -> Other:
    return Other(0x20, bytes((present, 0)) + (b"\x03\x21\x00\x14" if v5 else b""))


def suback(v5: bool, pid: int, codes: bytes = b"\x01") -> Other:
    return Other(0x90, struct.pack("!H", pid) + (b"\x00" if v5 else b"") + codes)


PINGRESP = Other(0xD0, b"")


def expected(pkts: list, v5: bool, max_payload: int, max_record: int):
    """What a reader must produce for this packet list, with a ring that never fills."""
    records, acks, others = [], [], []
    counts = dict(received=0, written=0, oversize=0, ingest_full=0, payload_bytes=0)
    for p in pkts:
        if isinstance(p, Pub) and p.qos < 2:
            counts["received"] += 1
            rsize = (24 + len(p.topic) + len(p.payload) + 7) & ~7
            if len(p.payload) > max_payload or rsize > max_record:
                counts["oversize"] += 1
            else:
                records.append((p.topic, p.payload))
                counts["written"] += 1
                counts["payload_bytes"] += len(p.payload)
            if p.qos == 1:
                acks.append(p.pid)
        else:
            enc = p.encode(v5)
            hdr = next(i + 1 for i in range(1, 5) if not enc[i] & 0x80)
            others.append((enc[0], enc[hdr:]))
    return records, acks, others, counts


def puback_ids(blob: bytes | None) -> list[int]:
    if not blob:
        return []
    assert len(blob) % 4 == 0
    out = []
    for i in range(0, len(blob), 4):
        assert blob[i:i + 2] == b"\x40\x02"
        out.append(struct.unpack("!H", blob[i + 2:i + 4])[0])
    return out


def feed_chunks(reader, data: bytes, cuts: list[int], ts0: float = 1000.0):
    """Feed ``data`` in reads ending at ``cuts`` (each read also limited by the free buffer space).

    Returns ([(ts, acks, packets) per feed], error or None, [byte offset where each feed ended])."""
    results, ends = [], []
    pos = 0
    bounds = sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]
    k = 0
    for b in bounds:
        while pos < b:
            mv = reader.writable()
            assert len(mv) > 0
            n = min(len(mv), b - pos)
            mv[:n] = data[pos:pos + n]
            pos += n
            ts = ts0 + k
            k += 1
            try:
                acks, pk = reader.feed(n, ts)
            except Exception as exc:  # noqa: BLE001 - compared by the callers
                results.append((ts, exc.acks, exc.packets))
                ends.append(pos)
                return results, exc, ends
            results.append((ts, acks, pk))
            ends.append(pos)
    return results, None, ends


def drain(ring) -> list[tuple[float, bytes, bytes]]:
    return ring.pop_many(1 << 30)


# ---- strategies ----------------------------------------------------------------------------------

topic_st = st.one_of(
    st.text(min_size=1, max_size=30).map(lambda s: s.encode("utf-8")),
    st.binary(min_size=0, max_size=40),
    st.integers(0, 400).map(lambda n: b"t/" + b"x" * n),  # 2-byte remaining lengths
)
payload_st = st.one_of(
    st.binary(max_size=200),
    st.integers(0, 40_000).map(lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)),
)


def pkt_st(v5: bool):
    pub = st.builds(
        Pub,
        topic=topic_st,
        payload=payload_st,
        qos=st.sampled_from([0, 0, 1, 1, 2]),
        pid=st.integers(1, 65535),
        props=st.binary(max_size=300) if v5 else st.just(b""),
        flags=st.sampled_from([0, 1, 8, 9]),
    )
    others = st.one_of(
        st.just(connack(v5)),
        st.integers(1, 65535).map(lambda pid: suback(v5, pid)),
        st.just(PINGRESP),
        st.integers(1, 65535).map(lambda pid: Other(0x62, struct.pack("!H", pid))),  # PUBREL
        st.just(Other(0xE0, b"\x00" if v5 else b"")),  # DISCONNECT
        st.binary(max_size=30).map(lambda b: Other(0xF0, b)),  # AUTH (v5) / anything
    )
    return st.one_of(pub, pub, pub, others)


@st.composite
def stream_st(draw):
    v5 = draw(st.booleans())
    pkts = draw(st.lists(pkt_st(v5), max_size=40))
    data = b"".join(p.encode(v5) for p in pkts)
    cuts = draw(st.lists(st.integers(0, max(len(data), 1)), max_size=25))
    max_payload = draw(st.sampled_from([0, 10, 100, 1000, 65536]))
    return v5, pkts, data, cuts, max_payload


# ---- property tests ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_st())
def test_random_streams_split_anywhere(backend, s):
    v5, pkts, data, cuts, max_payload = s
    ring = backend.ByteRing(1 << 22)
    reader = backend.FrameReader(ring, protocol=5 if v5 else 4, max_payload_bytes=max_payload,
                                 buffer_bytes=1 << 17)
    results, err, ends = feed_chunks(reader, data, cuts)
    assert err is None
    recs, acks, others, counts = expected(pkts, v5, max_payload, ring.max_record_bytes)
    got = drain(ring)
    assert [(t, p) for _, t, p in got] == recs
    assert [pid for _, a, _ in results for pid in puback_ids(a)] == acks
    assert [o for _, _, pk in results for o in pk] == others
    c = reader.counters()
    for k, v in counts.items():
        assert c[k] == v, k
    assert c["acked"] == len(acks)
    assert c["bytes"] == len(data)
    assert c["protocol_errors"] == 0
    assert reader.fill == 0 and reader.skip_pending == 0
    # Each record carries the ts of the read that completed its packet.
    completes, off = [], 0
    for p in pkts:
        off += len(p.encode(v5))
        if isinstance(p, Pub) and p.qos < 2 and len(p.payload) <= max_payload:
            completes.append(off)
    want_ts = [results[next(i for i, e in enumerate(ends) if e >= c_)][0] for c_ in completes]
    assert [ts for ts, _, _ in got] == want_ts


@settings(max_examples=150, deadline=None)
@given(stream_st(), st.data())
def test_compiled_equals_pure_on_mutated_streams(compiled_backend, pure_backend, s, data):
    """Valid streams with a few bytes changed, dropped or inserted: same outputs step by step."""
    v5, pkts, raw, cuts, max_payload = s
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(0, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["set", "del", "ins"]))
        if op == "set":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "del":
            del raw[i]
        else:
            raw.insert(i, data.draw(st.integers(0, 255)))
    cap = data.draw(st.sampled_from([64, 256, 4096, 1 << 17]))
    ring_cap = data.draw(st.sampled_from([256, 4096, 1 << 20]))
    _compare_twins((compiled_backend, pure_backend), bytes(raw), cuts, v5, max_payload, cap,
                   ring_cap)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10), st.booleans(),
       st.sampled_from([64, 100, 1 << 16]))
def test_compiled_equals_pure_on_arbitrary_bytes(compiled_backend, pure_backend, raw, cuts, v5,
                                                  cap):
    _compare_twins((compiled_backend, pure_backend), raw, cuts, v5, 100, cap, 1024)


def _compare_twins(backends, raw: bytes, cuts, v5: bool, max_payload: int, cap: int,
                   ring_cap: int) -> None:
    outs = []
    for b in backends:
        ring = b.ByteRing(ring_cap)
        reader = b.FrameReader(ring, protocol=5 if v5 else 4, max_payload_bytes=max_payload,
                               buffer_bytes=cap)
        results, err, ends = feed_chunks(reader, raw, cuts)
        outs.append((results, None if err is None else str(err), ends, reader.counters(),
                     reader.fill, reader.skip_pending, reader.broken, drain(ring), ring.drops_full))
    assert outs[0] == outs[1]


# ---- specific cases ------------------------------------------------------------------------------


def make(backend, ring_cap=1 << 20, **kw):
    ring = backend.ByteRing(ring_cap)
    return ring, backend.FrameReader(ring, **kw)


def feed_bytes(reader, data: bytes, ts: float = 1.0):
    mv = reader.writable()
    mv[:len(data)] = data
    return reader.feed(len(data), ts)


@pytest.mark.parametrize("v5", [False, True])
def test_one_read_many_packets(backend, v5):
    ring, reader = make(backend, protocol=5 if v5 else 4)
    pkts = [connack(v5), suback(v5, 7), Pub(b"a/b", b"\x01\x02", 0), Pub(b"c", b"", 1, pid=300),
            PINGRESP, Pub("ü/ß".encode(), b"x" * 70000, 1, pid=9), Pub(b"q2", b"p", 2, pid=5),
            Pub(b"d", b"y" * 10, 1, pid=65535, props=b"\x03\x00\x04text" if v5 else b"")]
    acks, packets = feed_bytes(reader, b"".join(p.encode(v5) for p in pkts), ts=5.5)
    assert puback_ids(acks) == [300, 9, 65535]
    assert [cmd for cmd, _ in packets] == [0x20, 0x90, 0xD0, 0x34]
    assert packets[0][1] == connack(v5).body
    assert drain(ring) == [(5.5, b"a/b", b"\x01\x02"), (5.5, b"c", b""), (5.5, b"d", b"y" * 10)]
    c = reader.counters()
    assert (c["received"], c["written"], c["oversize"], c["ingest_full"]) == (4, 3, 1, 0)


def test_byte_by_byte(backend):
    ring, reader = make(backend)
    pub = Pub(b"t", b"abc", 1, pid=2).encode(True)
    data = pub + PINGRESP.encode(True)
    out = []
    for i in range(len(data)):
        acks, packets = feed_bytes(reader, data[i:i + 1], ts=float(i))
        out.append((puback_ids(acks), packets))
        assert reader.fill == (i + 1 if i < len(pub) - 1 else (i + 1 - len(pub)) % 2)
    assert out[len(pub) - 1] == ([2], [])    # the PUBLISH completes with its last byte
    assert all(o == ([], []) for o in out[:len(pub) - 1] + out[len(pub):-1])
    assert out[-1] == ([], [(0xD0, b"")])
    assert drain(ring) == [(float(len(pub) - 1), b"t", b"abc")]
    assert reader.fill == 0


def test_partial_packet_is_kept_at_the_front(backend):
    ring, reader = make(backend, buffer_bytes=256)
    p1 = Pub(b"t", b"x" * 100, 0).encode(True)
    p2 = Pub(b"u", b"y" * 100, 0).encode(True)
    feed_bytes(reader, p1 + p2[:50])
    assert reader.fill == 50
    assert len(reader.writable()) == 256 - 50
    feed_bytes(reader, p2[50:])
    assert reader.fill == 0
    assert [r[1:] for r in drain(ring)] == [(b"t", b"x" * 100), (b"u", b"y" * 100)]


@pytest.mark.parametrize("bad, msg", [
    (b"\x30\xff\xff\xff\xff\x01", "remaining length"),
    (b"\x30\x80\x80\x80\x80", "remaining length"),
    (b"\x00\x00", "type 0"),
    (b"\x36\x00", "QoS 3"),
    (b"\x32\x03\x00\x01t", "shorter|longer"),
    (b"\x32\x05\x00\x01t\x00\x00", "packet id 0"),
    (b"\x30\x03\x00\x05t", "topic longer"),
])
def test_protocol_errors(backend, bad, msg):
    ring, reader = make(backend, protocol=4)
    good = Pub(b"ok", b"1", 1, pid=4).encode(False)
    with pytest.raises(backend.FrameError, match=msg) as ei:
        feed_bytes(reader, good + bad)
    # What came before the error is delivered and acked.
    assert puback_ids(ei.value.acks) == [4]
    assert [r[1:] for r in drain(ring)] == [(b"ok", b"1")]
    assert reader.broken and reader.counters()["protocol_errors"] == 1
    with pytest.raises(backend.FrameError, match="reset"):
        feed_bytes(reader, good)
    reader.reset()
    assert not reader.broken
    acks, _ = feed_bytes(reader, good)
    assert puback_ids(acks) == [4]


def test_v5_properties_errors(backend):
    ring, reader = make(backend, protocol=5)
    body = b"\x00\x01t" + b"\x05" + b"ab"   # properties length 5 > 2 bytes left
    with pytest.raises(backend.FrameError, match="properties"):
        feed_bytes(reader, packet(0x30, body))
    ring, reader = make(backend, protocol=5)
    with pytest.raises(backend.FrameError, match="properties length"):
        feed_bytes(reader, packet(0x30, b"\x00\x01t"))          # no properties length at all
    ring, reader = make(backend, protocol=5)
    with pytest.raises(backend.FrameError, match="properties length"):
        feed_bytes(reader, packet(0x30, b"\x00\x01t\xff\xff\xff\xff\x01"))


def test_non_publish_larger_than_the_buffer_is_an_error(backend):
    ring, reader = make(backend, buffer_bytes=64)
    with pytest.raises(backend.FrameError, match="larger than the receive buffer"):
        feed_bytes(reader, b"\x90" + varint(100) + b"\x00\x01")


def test_publish_larger_than_the_buffer_is_skipped_and_acked(backend):
    ring, reader = make(backend, buffer_bytes=256, max_payload_bytes=1 << 20)
    big = Pub(b"big/topic", bytes(range(256)) * 10, 1, pid=77).encode(True)
    after = Pub(b"next", b"ok", 1, pid=78).encode(True)
    data = Pub(b"first", b"1", 0).encode(True) + big + after + PINGRESP.encode(True)
    results, err, _ = feed_chunks(reader, data, list(range(0, len(data), 100)))
    assert err is None
    assert [pid for _, a, _ in results for pid in puback_ids(a)] == [77, 78]
    assert [o for _, _, pk in results for o in pk] == [(0xD0, b"")]
    assert [r[1:] for r in drain(ring)] == [(b"first", b"1"), (b"next", b"ok")]
    c = reader.counters()
    assert (c["received"], c["written"], c["oversize"]) == (3, 2, 1)
    assert reader.skip_pending == 0


def test_publish_header_larger_than_the_buffer_is_an_error(backend):
    ring, reader = make(backend, buffer_bytes=64)
    with pytest.raises(backend.FrameError, match="header larger"):
        feed_bytes(reader, Pub(b"t" * 100, b"", 1, pid=1).encode(True)[:64])


def test_reset_drops_partial_packet_and_skip(backend):
    ring, reader = make(backend, protocol=4, buffer_bytes=128, max_payload_bytes=1 << 20)
    feed_bytes(reader, Pub(b"t", b"x" * 500, 0).encode(False)[:100])
    assert reader.skip_pending > 0
    reader.reset()
    assert reader.skip_pending == 0 and reader.fill == 0
    feed_bytes(reader, Pub(b"t", b"x" * 50, 0).encode(False)[:20])
    assert reader.fill == 20
    reader.reset()
    assert reader.fill == 0
    feed_bytes(reader, Pub(b"a", b"b", 0).encode(False))
    assert [r[1:] for r in drain(ring)] == [(b"a", b"b")]


def test_oversize_is_counted_and_acked(backend):
    ring, reader = make(backend, max_payload_bytes=10)
    data = b"".join(Pub(b"t", b"x" * n, 1, pid=n + 1).encode(True) for n in (9, 10, 11, 1000))
    acks, _ = feed_bytes(reader, data)
    assert puback_ids(acks) == [10, 11, 12, 1001]
    assert [len(r[2]) for r in drain(ring)] == [9, 10]
    c = reader.counters()
    assert (c["received"], c["written"], c["oversize"]) == (4, 2, 2)


def test_record_too_big_for_the_ring_counts_as_oversize(backend):
    ring, reader = make(backend, ring_cap=256, max_payload_bytes=1000)
    acks, _ = feed_bytes(reader, Pub(b"t" * 50, b"p" * 90, 1, pid=3).encode(True)
                         + Pub(b"t", b"p", 0).encode(True))
    assert puback_ids(acks) == [3]
    assert [r[1:] for r in drain(ring)] == [(b"t", b"p")]
    c = reader.counters()
    assert (c["oversize"], c["written"], c["ingest_full"]) == (1, 1, 0)
    assert ring.drops_full == 0


@pytest.mark.parametrize("qos", [0, 1])
def test_ring_full_is_counted_exactly(backend, qos):
    ring, reader = make(backend, ring_cap=1024)
    n = 200
    data = b"".join(Pub(b"s/%03d" % i, b"p" * 20, qos, pid=i + 1).encode(True) for i in range(n))
    results, err, _ = feed_chunks(reader, data, [random.Random(qos).randrange(len(data))
                                                 for _ in range(10)])
    assert err is None
    got = drain(ring)
    # Same-size records: the first ones fill the ring, every later one is dropped.
    assert [r[1] for r in got] == [b"s/%03d" % i for i in range(len(got))]
    c = reader.counters()
    assert c["ingest_full"] == n - len(got) == ring.drops_full > 0
    assert c["written"] == len(got)
    acked = [pid for _, a, _ in results for pid in puback_ids(a)]
    assert acked == (list(range(1, n + 1)) if qos else [])


def test_feed_argument_checks(backend):
    ring, reader = make(backend, buffer_bytes=64)
    with pytest.raises(ValueError):
        reader.feed(65, 0.0)
    with pytest.raises(ValueError):
        reader.feed(-1, 0.0)
    assert reader.feed(0, 0.0) == (None, [])
    with pytest.raises(ValueError, match="protocol"):
        backend.FrameReader(ring, protocol=6)
    with pytest.raises(ValueError, match="buffer_bytes"):
        backend.FrameReader(ring, buffer_bytes=10)
    with pytest.raises(ValueError, match="max_payload_bytes"):
        backend.FrameReader(ring, max_payload_bytes=-1)
    with pytest.raises(TypeError):
        backend.FrameReader(None)
    assert (reader.protocol, reader.buffer_bytes, reader.max_payload_bytes) == (5, 64, 65536)
    assert reader.ring is ring


def test_doorbell_wakes_a_waiting_consumer(backend):
    """One feed that writes records wakes a consumer parked in ring.wait()."""
    import threading

    ring, reader = make(backend)
    woke = []
    t = threading.Thread(target=lambda: woke.append(ring.wait(10.0)))
    t.start()
    # Let the consumer park (bounded: the test passes either way, but must not hang).
    for _ in range(100):
        if not t.is_alive():
            break
        t.join(0.01)
    feed_bytes(reader, Pub(b"t", b"p", 0).encode(True))
    t.join(10.0)
    assert not t.is_alive() and woke == [True]


def test_pure_reader_works_with_the_compiled_ring(compiled_backend, pure_backend):
    ring = compiled_backend.ByteRing(4096)
    reader = pure_backend.FrameReader(ring, protocol=4)
    acks, _ = feed_bytes(reader, Pub(b"t", b"p", 1, pid=5).encode(False))
    assert puback_ids(acks) == [5]
    assert drain(ring) == [(1.0, b"t", b"p")]
