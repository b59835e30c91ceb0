"""FrameReader.pump: the network thread's read turns without the GIL (poll, read, parse into the
ring, ring the doorbell, nap), compiled and pure twin, over a real loopback TCP connection.

Every wait polls with a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_cy.backend import load
from telemetry_cy.tools.mqtt_loadgen import publish_frame

P = load("pure").frames   # the PUMP_* numbers and the nap rule (both twins share them)


@pytest.fixture
def tcp_pair():
    """(broker side, our side) of a loopback TCP connection; ours non-blocking, as paho's is."""
    lst = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(lst.getsockname())
    theirs, _ = lst.accept()
    lst.close()
    ours.setblocking(False)
    wake_r, wake_w = socket.socketpair()
    yield theirs, ours, wake_r, wake_w
    for s in (theirs, ours, wake_r, wake_w):
        s.close()


def pump_until(reader, ours, wake_r, ceiling, done, seconds=20.0):
    """pump() in short turns (as the network thread does) until ``done(results)``."""
    results = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done(results):
        results.append(reader.pump(ours, wake_r, ceiling, time.monotonic() + 0.05))
    return results


def test_records_go_into_the_ring_and_the_pump_returns_at_its_deadline(backend, tcp_pair):
    theirs, ours, wake_r, _ = tcp_pair
    ring = backend.ByteRing(1 << 20)
    reader = backend.FrameReader(ring, protocol=4)
    frames = [publish_frame(f"s/{i}", b"v%d" % i) for i in range(200)]
    theirs.sendall(b"".join(frames))
    got: list = []
    results = pump_until(reader, ours, wake_r, 0.002,
                         lambda r: len(got) >= 200 or got.extend(ring.pop_many(500)))
    assert [(t, p) for _, t, p in got] == [(f"s/{i}".encode(), b"v%d" % i) for i in range(200)]
    assert {r[0] for r in results} == {P.PUMP_DEADLINE}
    assert sum(r[4] for r in results) == sum(map(len, frames))
    assert reader.counters()["written"] == 200


def test_puback_blob_and_other_packets_come_back_with_the_read(backend, tcp_pair):
    theirs, ours, wake_r, _ = tcp_pair
    ring = backend.ByteRing(1 << 20)
    reader = backend.FrameReader(ring, protocol=4)
    pingresp = b"\xd0\x00"
    theirs.sendall(publish_frame("q/1", b"x", qos=1, packet_id=7) + pingresp)
    results = pump_until(reader, ours, wake_r, 0.002,
                         lambda r: any(x[0] == P.PUMP_PACKETS for x in r))
    acks = b"".join(r[2] for r in results if r[2])
    packets = [p for r in results for p in r[3]]
    assert acks == b"\x40\x02\x00\x07" and packets == [(0xD0, b"")]
    assert ring.pop() == (pytest.approx(time.time(), abs=60), b"q/1", b"x")


def test_the_end_of_the_stream_and_a_wake_end_the_pump(backend, tcp_pair):
    theirs, ours, wake_r, wake_w = tcp_pair
    reader = backend.FrameReader(backend.ByteRing(1 << 16), protocol=4)
    wake_w.send(b"x")
    assert reader.pump(ours, wake_r, 0.002, time.monotonic() + 3600)[0] == P.PUMP_WAKE
    wake_r.recv(16)
    theirs.shutdown(socket.SHUT_WR)
    assert reader.pump(ours, wake_r, 0.002, time.monotonic() + 3600)[0] == P.PUMP_CLOSED


def test_interrupt_ends_a_pump_that_naps_in_dense_traffic(backend, tcp_pair):
    """A pump in dense traffic never polls (it naps and reads): stop() reaches it through
    interrupt(), after the nap, and the interrupt is used up by the PUMP_WAKE it causes."""
    theirs, ours, wake_r, _ = tcp_pair
    ring = backend.ByteRing(1 << 22)
    reader = backend.FrameReader(ring, protocol=4)
    stop = threading.Event()

    def send():
        i = 0
        while not stop.is_set():
            theirs.sendall(publish_frame(f"s/{i}", b"v"))
            i += 1
            time.sleep(0.0005)

    def interrupt_when_napping():
        deadline = time.monotonic() + 20
        while ring.used_bytes < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        reader.interrupt()

    threads = [threading.Thread(target=send), threading.Thread(target=interrupt_when_napping)]
    for t in threads:
        t.start()
    try:
        why, _err, _acks, _packets, nbytes, naps = reader.pump(ours, wake_r, 0.004,
                                                               time.monotonic() + 30)
        assert why == P.PUMP_WAKE and naps >= 1 and nbytes > 0
        assert reader.pump(ours, wake_r, 0.004, time.monotonic() + 0.2)[0] == P.PUMP_DEADLINE
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_a_protocol_error_raises_frame_error_with_what_came_before(backend, tcp_pair):
    theirs, ours, wake_r, _ = tcp_pair
    ring = backend.ByteRing(1 << 16)
    reader = backend.FrameReader(ring, protocol=4)
    theirs.sendall(publish_frame("ok", b"1") + b"\x00\x00")   # packet type 0
    with pytest.raises(backend.FrameError):
        pump_until(reader, ours, wake_r, 0.002, lambda r: False)
    assert [r[1:] for r in ring.pop_many(10)] == [(b"ok", b"1")]
    assert reader.broken


@settings(max_examples=10, deadline=None)
@given(bursts=st.lists(st.tuples(st.integers(1, 40), st.sampled_from([0.0, 0.001, 0.004])),
                       min_size=1, max_size=12),
       ceiling=st.sampled_from([0.0, 0.002, 0.005]))
def test_every_record_of_paced_bursts_arrives_in_order(backend, bursts, ceiling):
    """Bursts with pauses (some shorter than a nap, some longer): naps or not, every record
    arrives once and in order; naps are only taken when the ceiling allows them."""
    lst = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(lst.getsockname())
    theirs, _ = lst.accept()
    lst.close()
    ours.setblocking(False)
    wake_r, wake_w = socket.socketpair()
    try:
        ring = backend.ByteRing(1 << 20)
        reader = backend.FrameReader(ring, protocol=4)
        n = 0
        got: list = []
        naps = 0
        for size, pause in bursts:
            theirs.sendall(b"".join(publish_frame("b", b"%d" % (n + k)) for k in range(size)))
            n += size
            r = reader.pump(ours, wake_r, ceiling, time.monotonic() + pause)
            naps += r[5]
            got.extend(ring.pop_many(1000))
        results = pump_until(reader, ours, wake_r, ceiling,
                             lambda r: len(got) >= n or got.extend(ring.pop_many(1000)))
        naps += sum(r[5] for r in results)
        assert [p for _, _, p in got] == [b"%d" % i for i in range(n)]
        if ceiling == 0.0:
            assert naps == 0
    finally:
        for s in (theirs, ours, wake_r, wake_w):
            s.close()


@given(ceiling=st.floats(0.0005, 0.1), rate=st.floats(0.0, 1e7))
def test_the_nap_adapts_to_the_rate_under_the_ceiling(ceiling, rate):
    nap = P.nap_length(ceiling, rate)
    assert min(P.NAP_FLOOR_S, ceiling) <= nap <= ceiling
    # long enough for NAP_TARGET_RECORDS at this rate, unless the ceiling (or floor) says
    if rate and P.NAP_FLOOR_S < nap < ceiling:
        assert nap * rate == pytest.approx(P.NAP_TARGET_RECORDS)
    assert P.nap_length(ceiling, 0.0) == ceiling
