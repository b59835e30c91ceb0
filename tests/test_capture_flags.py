"""The ring record's flags word and the frame reader filling it (what the capture recorder keeps).

The ring carries a 32-bit ``flags`` word per record beside (ts, topic, payload); the MQTT frame
reader stores the PUBLISH fixed header's low nibble there (DUP 8, QoS 2-1, RETAIN 1). Both twins
run every test (the ``backend`` fixture); the compiled engine draining a ring whose records carry
flags must see exactly the payloads it sees without them (the header's payload_len shrank to 32
bits to make room, so a layout slip would show up here as garbage lengths).
"""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_cy.tools.mqtt_loadgen import remaining_length


def publish(topic: bytes, payload: bytes, *, qos: int = 0, retain: bool = False, dup: bool = False,
            pid: int = 1, v5: bool = False) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", pid)
    if v5:
        body += b"\x00"   # empty properties block
    body += payload
    cmd = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return bytes((cmd,)) + remaining_length(len(body)) + body


# ---- the ring ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(records=st.lists(st.tuples(st.floats(allow_nan=False), st.binary(max_size=40),
                                  st.binary(max_size=300), st.integers(0, 0xFFFFFFFF)),
                        max_size=40))
def test_flags_round_trip_and_plain_pop_unchanged(backend, records):
    ring = backend.ByteRing(1 << 16)
    for rec in records:
        assert ring.try_push(*rec)
    assert ring.pop_many_flagged(len(records) + 1) == records
    for ts, topic, payload, flags in records:
        assert ring.try_push(ts, topic, payload, flags)
    assert ring.pop_many(len(records) + 1) == [r[:3] for r in records]
    assert ring.used_bytes == 0


def test_flags_default_to_zero(backend):
    ring = backend.ByteRing(1024)
    assert ring.try_push(1.0, b"t", b"p")
    assert ring.pop_many_flagged(2) == [(1.0, b"t", b"p", 0)]


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (1 << 32, ValueError),
                                       (True, TypeError), (1.0, TypeError), ("1", TypeError)])
def test_bad_flags_are_refused_alike(backend, bad, error):
    ring = backend.ByteRing(1024)
    with pytest.raises(error, match="flags"):
        ring.try_push(1.0, b"t", b"p", bad)
    assert ring.used_bytes == 0 and ring.drops_full == 0


def test_stress_checks_flags(backend):
    # the stress producer writes a different flags word per record and the consumer checks it
    res = backend.ring.stress(5000, seed=11, capacity_bytes=4096, max_payload=100,
                              yield_on_full=True)
    assert res["errors"] == 0
    assert res["received"] + res["dropped"] == 5000 and res["received"] > 0


def test_compiled_engine_reads_payloads_past_nonzero_flags(compiled_backend):
    """The engine reads only the view's ts/topic/payload: records with every flag bit set must
    give the same aggregates as the same records with none."""
    b = compiled_backend
    results = []
    for flags in (0, 0xFFFFFFFF):
        ring, engine = b.ByteRing(1 << 16), b.Engine(window=10.0, emit_every=5.0)
        for i in range(50):
            payload = cbor2.dumps({"d": f"dev-{i % 3}", "s": "temp", "v": float(i), "u": "C"})
            assert ring.try_push(100.0 + i * 0.1, b"site/x", payload, flags)
        assert engine.drain(ring, 100) == 50
        results.append(([a.as_dict() for a in engine.tick(200.0)], engine.stats()["drops"]))
    assert results[0] == results[1]
    # 3 keys, readings in [100, 105): in the windows ending at 105 and at 110
    aggregates, drops = results[0]
    assert len(aggregates) == 6 and sum(a["count"] for a in aggregates) == 100
    assert not any(drops.values())


# ---- the frame reader ----------------------------------------------------------------------------


pubs = st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=60),
                          st.sampled_from([0, 1]), st.booleans(), st.booleans()),
                min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(msgs=pubs, v5=st.booleans())
def test_frame_reader_stores_the_publish_flags(backend, msgs, v5):
    ring = backend.ByteRing(1 << 16)
    reader = backend.FrameReader(ring, protocol=5 if v5 else 4, buffer_bytes=1 << 14)
    stream = b""
    want = []
    for i, (topic, payload, qos, retain, dup) in enumerate(msgs):
        dup = dup and qos > 0   # DUP must be 0 for QoS 0 [MQTT-3.3.1-2]
        stream += publish(topic, payload, qos=qos, retain=retain, dup=dup, pid=i + 1, v5=v5)
        want.append((topic, payload, (8 if dup else 0) | (qos << 1) | int(retain)))
    buf = reader.writable()
    buf[:len(stream)] = stream
    reader.feed(len(stream), 42.0)
    got = ring.pop_many_flagged(len(msgs) + 1)
    assert [(t, p, f) for _ts, t, p, f in got] == want
    assert all(ts == 42.0 for ts, *_ in got)
