"""Coalesced wake-ups lose no reading: the network thread naps under dense traffic and rings the
doorbell once per turn, the engine thread parks until rung. Here the engine thread's park has no
timeout to fall back on (MAX_PARK_S and the tick an hour away), so a ring that a commit misses
would leave records in the ring for good, and the test would see them there.

Real mosquitto, real MqttSource and EngineThread, either backend. Every wait polls with a
deadline; nothing asserts on timing.
"""

from __future__ import annotations

import threading
import time

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.brokers import wait_for
from telemetry_cy.engine import engine_thread
from telemetry_cy.engine.engine_thread import EngineThread
from telemetry_cy.source.mqtt import MqttSource
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, publish_frame

WAIT = 30.0   # generous: a stranded record fails the test only after this deadline

#: bursts of (messages in one write, pause after it): one write, a few per nap, sparse
BURSTS = st.lists(st.tuples(st.integers(1, 60), st.sampled_from([0.0, 0.0005, 0.002, 0.01])),
                  min_size=1, max_size=25)


def _reading(i: int) -> bytes:
    return cbor2.dumps({"d": f"d{i % 7}", "s": "t", "v": float(i)})


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bursts=BURSTS, coalesce=st.sampled_from([0.0, 0.002, 0.01]))
def test_no_reading_is_stranded_when_the_publisher_stops(mosquitto_module, backend, bursts,
                                                        coalesce):
    broker = mosquitto_module
    ring = backend.ByteRing(1 << 20)
    engine = backend.Engine(window=3600.0, emit_every=3600.0, key_ttl=3600.0)
    topic = f"wake/{id(bursts)}/sensor/x"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_thread, "MAX_PARK_S", 3600.0)   # only the doorbell wakes the engine
        thread = EngineThread(engine, ring, lambda aggs, now: None)
        thread.start()
        src = MqttSource(ring, broker.url, topics=[topic], qos=0, coalesce=coalesce)
        src.start()
        pub = None
        try:
            assert src.wait_connected(WAIT), src.stats()
            pub = RawPublisher(broker.host, broker.port, client_id=f"wake-pub-{id(bursts)}")
            n = 0
            for size, pause in bursts:
                pub.send(publish_frame(topic, _reading(n + k)) for k in range(size))
                n += size
                if pause:
                    time.sleep(pause)
            # the network thread committed every record ...
            assert wait_for(lambda: src.stats()["written"] == n, WAIT), src.stats()
            # ... and the engine thread, woken by the doorbell alone, took every one
            assert wait_for(lambda: ring.used_bytes == 0, WAIT), (ring, thread.stats())
        finally:
            if pub is not None:
                pub.close()
            assert src.stop(10.0)
            # The engine thread parks for an hour: ask it to stop, then wake it the only way it
            # can be woken, with a record (this thread is the ring's producer now that the
            # network thread has ended).
            thread.stop(timeout=0)
            assert ring.try_push(time.time(), b"", _reading(-1))
            thread.join(WAIT)
    assert not thread.is_alive() and thread.error is None
    stats = thread.stats()
    assert stats["payloads"] == n + 1 and stats["readings"] == n + 1
    assert src.stats()["received"] == n


def test_notify_wakes_a_parked_consumer_for_a_deferred_feed(backend):
    ring = backend.ByteRing(4096)
    reader = backend.FrameReader(ring, protocol=5)
    woke: list = []

    def consumer():
        woke.append(ring.wait(WAIT))
        woke.append(ring.pop_many(10))

    t = threading.Thread(target=consumer)
    t.start()
    frame = publish_frame("a/b", b"payload")
    # MQTT 5 PUBLISH: a properties length byte follows the topic
    frame = bytes([0x30, len(frame) - 2 + 1]) + frame[2:2 + 2 + 3] + b"\x00" + b"payload"
    buf = reader.writable()
    buf[:len(frame)] = frame
    acks, packets = reader.feed(len(frame), 7.0, notify=False)
    assert acks is None and packets == []
    reader.notify()
    t.join(WAIT)
    assert not t.is_alive()
    assert woke == [True, [(7.0, b"a/b", b"payload")]]
    reader.notify()   # nothing left to ring: harmless


def test_coalesce_is_checked_where_it_is_set(backend):
    import argparse

    from telemetry_cy.service import config as cfg

    ring = backend.ByteRing(1 << 16)
    for bad in (-0.001, 0.5, True, "2ms"):
        with pytest.raises(ValueError, match="coalesce"):
            MqttSource(ring, "mqtt://127.0.0.1:1", coalesce=bad)
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    assert cfg.load(parser.parse_args([]), {}).mqtt.coalesce == 0.004
    assert cfg.load(parser.parse_args(["--mqtt-coalesce", "5ms"]), {}).mqtt.coalesce == 0.005
    assert cfg.load(parser.parse_args(["--mqtt-coalesce", "0"]), {}).mqtt.coalesce == 0.0
    with pytest.raises(cfg.ConfigError, match="mqtt_coalesce"):
        cfg.load(parser.parse_args(["--mqtt-coalesce", "200ms"]), {})


def _publish_v5(topic: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + b"\x00" + payload   # no properties
    return bytes([0x30, len(body)]) + body


def test_nap_rings_for_a_deferred_feed_then_sleeps_until_the_fd_is_readable(backend):
    import socket

    ring = backend.ByteRing(4096)
    reader = backend.FrameReader(ring, protocol=5)
    r, w = socket.socketpair()
    woke: list = []

    def consumer():
        woke.append(ring.wait(WAIT))
        woke.append(ring.pop_many(10))

    t = threading.Thread(target=consumer)
    t.start()
    frame = _publish_v5(b"n/a", b"xyz")
    reader.writable()[:len(frame)] = frame
    reader.feed(len(frame), 3.0, notify=False)
    assert reader.nap(r.fileno(), 0.001) is False   # nothing to read: the whole nap
    t.join(WAIT)
    assert not t.is_alive()
    assert woke == [True, [(3.0, b"n/a", b"xyz")]]
    w.send(b"x")
    assert reader.nap(r.fileno(), WAIT) is True      # readable: back at once
    r.close()
    w.close()
