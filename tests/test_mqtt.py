"""MqttSource against a real mosquitto (started by the fixtures in tests/support/brokers.py).

Messages come from real clients (a paho publisher and ``mosquitto_pub``) and are checked in the
ring (``pop_many``), independent of the engine. Every wait is a poll with a deadline; nothing
asserts on timing.
"""

from __future__ import annotations

import inspect
import logging
import socket
import struct
import subprocess
import threading
import time
from collections import Counter

import paho.mqtt as paho_pkg
import paho.mqtt.client as paho
import pytest

from support.brokers import AUTH_USERS, find_mosquitto_pub, wait_for
from telemetry_cy import PURE
from telemetry_cy.source import mqtt as tmqtt
from telemetry_cy.source.mqtt import MqttSource, parse_url, redact_url

if PURE:
    from telemetry_cy.source._ring_py import ByteRing
else:
    from telemetry_cy.source._ring import ByteRing

WAIT = 15.0  # generous deadline for anything that should take milliseconds


# ---- helpers -------------------------------------------------------------------------------------


class Publisher:
    """A paho publisher with its own network thread (loop_start), connected before returning."""

    def __init__(self, broker, protocol=paho.MQTTv5, client_id: str = "") -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol)
        # paho's default of 20 in flight: mosquitto announces Receive Maximum 20 and answers
        # QoS 2 messages beyond it with "quota exceeded", which paho takes as delivered.
        self.client.reconnect_delay_set(1, 1)
        self._up = threading.Event()
        self._done: set[int] = set()     # mids the broker acknowledged (QoS 0: written)
        self._lock = threading.Lock()
        self.client.on_connect = lambda c, u, f, rc, p: self._up.set()
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert self._up.wait(WAIT), "publisher did not connect"
        self.mids: list[int] = []

    def _on_publish(self, client, userdata, mid, rc, props) -> None:
        with self._lock:
            self._done.add(mid)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        # While the broker is away paho keeps QoS 1/2 messages and sends them after reconnecting.
        self.mids.append(self.client.publish(topic, payload, qos=qos).mid)

    def flush(self, timeout: float = WAIT) -> None:
        """Wait until every QoS 1/2 message was acknowledged and every QoS 0 one written."""
        def done() -> bool:
            with self._lock:
                return all(m in self._done for m in self.mids)
        assert wait_for(done, timeout), "publisher could not deliver everything to the broker"
        with self._lock:
            self._done.clear()
        self.mids.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher_factory():
    made = []

    def make(broker, **kw):
        p = Publisher(broker, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def sources():
    """Start MqttSources through this; they are stopped at the end of the test."""
    made = []

    def make(ring, url, **kw):
        kw.setdefault("backoff_initial", 0.05)
        kw.setdefault("backoff_max", 0.5)
        src = MqttSource(ring, url, **kw)
        made.append(src)
        return src.start()

    yield make
    for s in made:
        assert s.stop(10.0)


def collect(ring, expected: int, timeout: float = WAIT) -> list[tuple[float, bytes, bytes]]:
    """Pop records until ``expected`` arrived or the deadline passed (then return what came)."""
    got: list[tuple[float, bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        batch = ring.pop_many(1 << 16)
        if batch:
            got.extend(batch)
        else:
            ring.wait(0.05)
    got.extend(ring.pop_many(1 << 16))
    return got


def seqs(records) -> list[int]:
    return [struct.unpack_from("!I", p)[0] for _, _, p in records]


def payload(i: int, size: int = 16) -> bytes:
    return struct.pack("!I", i) + bytes((i + k) & 0xFF for k in range(size - 4))


def settled(src: MqttSource, written: int) -> dict:
    """stats() once the counters caught up with ``written`` records. The frame reader publishes
    its counters at the end of each socket read, after the records: a consumer can pop a record
    before the counters include it."""
    wait_for(lambda: src.stats()["written"] >= written, WAIT)
    return src.stats()


def check_accounting(st: dict) -> None:
    assert st["received"] == st["written"] + st["drops"]["ingest_full"] + st["drops"]["oversize"]


# ---- paho pin ------------------------------------------------------------------------------------


def test_paho_internals_we_rely_on():
    """Fails with a clear message when paho changes under the fast client (mqtt_client.py)."""
    ver = tuple(int(x) for x in paho_pkg.__version__.split(".")[:2])
    assert (2, 1) <= ver < (2, 3), (
        f"paho-mqtt {paho_pkg.__version__} is outside the range telemetry_cy.source.mqtt_client "
        f"was checked against (>=2.1,<2.3, pinned in pyproject.toml): re-read paho's client.py "
        f"(_packet_read, _packet_handle, _packet_queue, _check_keepalive) and update "
        f"mqtt_client.py and the pin")
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    missing = [n for n in tmqtt.PAHO_PRIVATE_MEMBERS if not hasattr(client, n)]
    assert not missing, f"paho-mqtt {paho_pkg.__version__} lacks private members {missing}"
    last_in = [n for n in tmqtt.PAHO_LAST_IN_NAMES if hasattr(client, n)]
    assert len(last_in) == 1, (
        f"cannot tell which attribute holds paho's last-receive time: {last_in}")
    assert last_in[0] in inspect.getsource(paho.Client._check_keepalive), (
        f"paho's keepalive check no longer reads {last_in[0]}: the fast client's reads would not "
        f"count as traffic and paho would drop live connections")
    assert {"command", "packet", "remaining_length"} <= set(client._in_packet), (
        f"paho's _in_packet dict changed: {sorted(client._in_packet)}")
    for name in ("command", "packet", "remaining_length"):
        assert f"_in_packet['{name}']" in inspect.getsource(paho.Client) or \
            f'_in_packet["{name}"]' in inspect.getsource(paho.Client), name
    params = list(inspect.signature(paho.Client._packet_queue).parameters)
    assert params[:5] == ["self", "command", "packet", "mid", "qos"], (
        f"paho's _packet_queue signature changed: {params}")
    assert list(inspect.signature(paho.Client._packet_handle).parameters) == ["self"]
    assert list(inspect.signature(paho.Client._loop_rc_handle).parameters)[:2] == ["self", "rc"]
    assert callable(paho.time_func)
    # _packet_queue writes directly when no paho thread runs: our thread must be the only writer.
    assert "self._thread is None" in inspect.getsource(paho.Client._packet_queue)


# ---- URLs ----------------------------------------------------------------------------------------


def test_parse_url():
    assert parse_url("mqtt://127.0.0.1:1884") == (False, "127.0.0.1", 1884, None, None)
    assert parse_url("mqtts://broker.example") == (True, "broker.example", 8883, None, None)
    assert parse_url("mqtt://u%40x:p%3Aw%2F@h") == (False, "h", 1883, "u@x", "p:w/")
    assert parse_url("mqtt://[::1]:99/") == (False, "::1", 99, None, None)
    for bad in ("http://h", "h:1883", "mqtt://", "mqtt://h/topic", "mqtt://h:99999"):
        with pytest.raises(ValueError):
            parse_url(bad)
    assert redact_url("mqtt://u:secret@h:1") == "mqtt://***@h:1"
    assert redact_url("nats://TOKEN@h:1") == "nats://***@h:1"
    assert redact_url("mqtt://h:1") == "mqtt://h:1"
    with pytest.raises(ValueError) as ei:
        parse_url("ftp://u:secret@h")
    assert "secret" not in str(ei.value)


def test_constructor_checks():
    ring = ByteRing(1 << 20)
    with pytest.raises(ValueError, match="client_id"):
        MqttSource(ring, session_expiry=60)
    with pytest.raises(ValueError, match="mqtts"):
        MqttSource(ring, "mqtt://h", ca_file="/x")
    with pytest.raises(ValueError, match="does not fit the ring"):
        MqttSource(ByteRing(4096), max_payload_bytes=65536)
    with pytest.raises(ValueError, match="qos"):
        MqttSource(ring, qos=3)
    with pytest.raises(ValueError, match="protocol"):
        MqttSource(ring, protocol=6)
    with pytest.raises(ValueError, match="backoff_initial, backoff_max"):
        MqttSource(ring, backoff_initial=2.0, backoff_max=1.0)
    with pytest.raises(ValueError, match="retain_as_published needs MQTT 5"):
        MqttSource(ring, protocol=4, retain_as_published=True)
    src = MqttSource(ring, "mqtt://user:hunter2@h:1")
    assert "hunter2" not in repr(src) and "hunter2" not in src.url
    st = src.stats()   # not started: not connected, but no outage either
    assert not st["connected"] and st["disconnected_seconds"] == st["down_seconds"] == 0
    assert src.stop()  # never started: nothing to do


# ---- delivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [5, 4], ids=["v5", "v311"])
def test_paho_and_mosquitto_pub_across_filters(mosquitto_module, sources, publisher_factory,
                                               protocol, tmp_path):
    broker = mosquitto_module
    pre = f"d{protocol}"
    ring = ByteRing(1 << 22)
    src = sources(ring, broker.url, topics=[f"{pre}/a/+/x", f"{pre}/b/#"], qos=1,
                  protocol=protocol)
    assert src.wait_connected(WAIT), src.stats()
    pub = publisher_factory(broker, protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311)
    sent: Counter = Counter()
    nbytes = 0
    n = 0
    for qos in (0, 1):
        for i in range(300):
            for topic in (f"{pre}/a/{i % 7}/x", f"{pre}/b/c/{i % 3}"):
                data = payload(n, 8 + i % 50)
                pub.publish(topic, data, qos)
                sent[topic] += 1
                nbytes += len(data)
                n += 1
        pub.publish(f"{pre}/a/1/y", b"not subscribed", qos)     # matches no filter
    pub.flush()
    # mosquitto_pub -l: one message per line of stdin, over its own connection.
    mp = find_mosquitto_pub()
    if mp is not None:
        lines = b"".join(b"line %05d\n" % i for i in range(200))
        subprocess.run([mp, "-h", broker.host, "-p", str(broker.port), "-q", "1",
                        "-t", f"{pre}/b/cli", "-l"], input=lines, check=True, timeout=WAIT)
        sent[f"{pre}/b/cli"] += 200
        nbytes += 200 * 10
    total = sum(sent.values())
    got = collect(ring, total)
    assert len(got) == total
    assert Counter(t.decode() for _, t, _ in got) == sent
    assert sum(len(p) for _, _, p in got) == nbytes
    # paho messages in publish order per topic (one publisher connection, one subscription each)
    for topic in (f"{pre}/a/3/x", f"{pre}/b/c/1"):
        s = [x for x in seqs(r for r in got if r[1] == topic.encode())]
        assert s == sorted(s)
    st = settled(src, total)
    assert st["received"] == st["written"] == total
    assert st["payload_bytes"] == nbytes
    assert st["drops"] == {"ingest_full": 0, "oversize": 0}
    assert st["connected"] and st["connects"] == 1 and st["disconnects"] == 0
    assert st["protocol_errors"] == 0 and st["bytes"] > nbytes
    check_accounting(st)


def test_shared_subscription(mosquitto_module, sources, publisher_factory):
    broker = mosquitto_module
    rings = [ByteRing(1 << 20), ByteRing(1 << 20)]
    srcs = [sources(r, broker.url, topics=["$share/grp/sh/#"], qos=1) for r in rings]
    assert all(s.wait_connected(WAIT) for s in srcs)
    pub = publisher_factory(broker)
    for i in range(400):
        pub.publish(f"sh/{i % 5}", payload(i), 1)
    pub.flush()
    deadline = time.monotonic() + WAIT
    got: list = [[], []]
    while sum(map(len, got)) < 400 and time.monotonic() < deadline:
        for k in range(2):
            got[k].extend(rings[k].pop_many(1000))
        time.sleep(0.01)
    assert sorted(seqs(got[0] + got[1])) == list(range(400))   # each message exactly once
    assert got[0] and got[1]                                    # and the group shares the load


def test_qos2_goes_through_pahos_path(mosquitto_module, sources, publisher_factory):
    broker = mosquitto_module
    ring = ByteRing(1 << 20)
    src = sources(ring, broker.url, topics=["q2/#"], qos=2)
    assert src.wait_connected(WAIT)
    pub = publisher_factory(broker)
    for i in range(50):
        pub.publish("q2/x", payload(i), 2)
    pub.publish("q2/x", payload(50), 1)
    pub.flush()
    got: list = []
    assert wait_for(lambda: got.extend(ring.pop_many_flagged(1 << 16)) or len(got) >= 51, WAIT)
    assert sorted(seqs(r[:3] for r in got)) == list(range(51))
    # both paths store the PUBLISH header's flags: QoS in bits 2-1, no DUP, no RETAIN
    assert Counter(flags for *_, flags in got) == {2 << 1: 50, 1 << 1: 1}
    st = settled(src, 51)
    assert st["received"] == st["written"] == 51
    assert st["acks"] == 1   # only the QoS 1 message was acknowledged by the frame reader


def test_retain_as_published_keeps_the_publishers_retain_flag(mosquitto_module, sources,
                                                              publisher_factory):
    broker = mosquitto_module
    plain_ring, kept_ring = ByteRing(1 << 20), ByteRing(1 << 20)
    plain = sources(plain_ring, broker.url, topics=["rap/#"], qos=2)
    kept = sources(kept_ring, broker.url, topics=["rap/#"], qos=2, retain_as_published=True)
    assert plain.wait_connected(WAIT) and kept.wait_connected(WAIT)
    pub = publisher_factory(broker)
    sent = [(0, True), (1, True), (1, False), (2, True), (0, False)]   # (qos, retain), live
    for i, (qos, retain) in enumerate(sent):
        pub.mids.append(pub.client.publish(f"rap/{i}", payload(i), qos=qos, retain=retain).mid)
    pub.flush()
    try:
        for ring, keeps in ((plain_ring, False), (kept_ring, True)):
            got: list = []
            assert wait_for(lambda: got.extend(ring.pop_many_flagged(64)) or len(got) >= 5, WAIT)
            flags = {seqs([r[:3]])[0]: r[3] for r in got}
            # QoS in bits 2-1 either way; RETAIN (bit 0) only as published, and only when asked
            assert flags == {i: (qos << 1) | (1 if keeps and retain else 0)
                             for i, (qos, retain) in enumerate(sent)}
    finally:
        for i, (_, retain) in enumerate(sent):   # the broker forgets what this test retained
            if retain:
                pub.mids.append(pub.client.publish(f"rap/{i}", b"", qos=1, retain=True).mid)
        pub.flush()


# ---- sessions, restarts --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [5, 4], ids=["v5", "v311"])
def test_persistent_session_resumes_queued_messages(mosquitto_module, sources, publisher_factory,
                                                    protocol):
    broker = mosquitto_module
    ring = ByteRing(1 << 22)
    cid = f"tcy-persist-{protocol}"
    kw = dict(topics=[f"ps{protocol}/#"], qos=1, client_id=cid, session_expiry=300,
              protocol=protocol)
    first = sources(ring, broker.url, **kw)
    assert first.wait_connected(WAIT)
    assert first.stop(10.0)
    pub = publisher_factory(broker)
    for i in range(500):                        # published while nobody is connected
        pub.publish(f"ps{protocol}/t", payload(i), 1)
    pub.flush()
    second = sources(ring, broker.url, **kw)    # same client id: the session is still there
    got = collect(ring, 500)
    assert sorted(seqs(got)) == list(range(500))
    st = settled(second, 500)
    assert st["session_present"] is True
    assert st["received"] == 500 and st["acks"] == 500


def test_broker_restart_mid_stream_loses_nothing_with_qos1(mosquitto, sources, publisher_factory):
    """Broker stopped (it saves its persistence file) and restarted while messages flow: both
    clients reconnect, the source resubscribes and every message arrives (QoS 1 is at least once,
    so a few may arrive twice: the accounting says how many)."""
    broker = mosquitto
    ring = ByteRing(1 << 22)
    src = sources(ring, broker.url, topics=["rs/#"], qos=1, client_id="tcy-restart",
                  session_expiry=600)
    assert src.wait_connected(WAIT)
    pub = publisher_factory(broker, client_id="tcy-restart-pub")
    n = 3000
    got: list = []
    for i in range(n):
        pub.publish("rs/x", payload(i), 1)
        if i % 100 == 99:
            time.sleep(0.005)    # a stream, not one burst
            got.extend(ring.pop_many(1 << 16))
        if i == n // 3:
            broker.stop()        # SIGTERM: mosquitto writes its persistence file
            broker.start()       # same port, same state
    pub.flush(30.0)
    deadline = time.monotonic() + 30.0
    while len(set(seqs(got))) < n and time.monotonic() < deadline:
        got.extend(ring.pop_many(1 << 16))
        ring.wait(0.05)
    unique = set(seqs(got))
    assert unique == set(range(n)), f"missing {sorted(set(range(n)) - unique)[:20]}"
    st = settled(src, len(got))
    assert st["connects"] >= 2 and st["disconnects"] >= 1, st
    assert st["disconnected_seconds"] > 0
    assert st["received"] == st["written"] == len(got)       # no drops; the rest is duplicates
    print(f"restart: {n} sent, {len(got)} received, {len(got) - n} duplicates (QoS 1)")


def test_broker_killed_source_reconnects_and_resubscribes(mosquitto, sources, publisher_factory):
    """SIGKILL, clean session, QoS 0: the subscription is gone with the broker's memory; the
    source must reconnect and subscribe again. Counts: received = before + after."""
    broker = mosquitto
    ring = ByteRing(1 << 22)
    src = sources(ring, broker.url, topics=["k/#"], qos=0)
    assert src.wait_connected(WAIT)
    pub = publisher_factory(broker)
    for i in range(500):
        pub.publish("k/x", payload(i), 0)
    pub.flush()
    before = collect(ring, 500)
    assert sorted(seqs(before)) == list(range(500))
    broker.kill()
    assert wait_for(lambda: not src.connected, WAIT)
    assert wait_for(lambda: src.stats()["down_seconds"] > 0, WAIT), src.stats()
    down = src.stats()
    assert down["disconnected_seconds"] >= down["down_seconds"] and down["disconnects"] == 1
    broker.start()
    assert wait_for(lambda: src.stats()["connects"] >= 2, WAIT), src.stats()
    assert src.wait_connected(WAIT), src.stats()
    pub2 = publisher_factory(broker)
    for i in range(500, 1000):
        pub2.publish("k/x", payload(i), 0)
    pub2.flush()
    after = collect(ring, 500)
    assert sorted(seqs(after)) == list(range(500, 1000))
    st = settled(src, 1000)
    assert st["received"] == st["written"] == 1000
    assert st["connects"] == 2 and st["disconnects"] == 1
    assert st["disconnected_seconds"] > 0 and st["connected"] and st["down_seconds"] == 0


# ---- drops ---------------------------------------------------------------------------------------


def test_ring_full_counts_exactly(mosquitto_module, sources, publisher_factory):
    broker = mosquitto_module
    ring = ByteRing(4096)              # nobody drains it
    src = sources(ring, broker.url, topics=["rf/#"], qos=1, max_payload_bytes=256)
    assert src.wait_connected(WAIT)
    pub = publisher_factory(broker)
    n = 400
    for i in range(n):
        pub.publish("rf/x", payload(i, 40), 1)
    pub.flush()
    assert wait_for(lambda: src.stats()["received"] == n, WAIT), src.stats()
    in_ring = ring.pop_many(n)
    st = src.stats()
    assert 0 < len(in_ring) < n
    assert seqs(in_ring) == list(range(len(in_ring)))      # the first ones, in order
    assert st["drops"]["ingest_full"] == n - len(in_ring) == ring.drops_full
    assert st["written"] == len(in_ring)
    assert st["acks"] == n             # dropped records are acknowledged too (see mqtt_client.py)
    check_accounting(st)


def test_oversize_is_dropped_counted_and_acked(mosquitto_module, sources, publisher_factory):
    broker = mosquitto_module
    ring = ByteRing(1 << 20)
    # A 64 KiB receive buffer: the 2 MiB message is larger than the buffer and gets skipped.
    src = sources(ring, broker.url, topics=["ov/#"], qos=1, max_payload_bytes=100,
                  recv_buffer_bytes=1 << 16)
    assert src.wait_connected(WAIT)
    pub = publisher_factory(broker)
    sizes = [50, 100, 101, 5000, 2 << 20, 10]
    for i, size in enumerate(sizes):
        pub.publish("ov/x", payload(i, size), 1)
    pub.flush()
    assert wait_for(lambda: src.stats()["received"] == len(sizes), WAIT), src.stats()
    got = ring.pop_many(100)
    assert [len(p) for _, _, p in got] == [50, 100, 10]
    st = src.stats()
    assert st["drops"]["oversize"] == 3 and st["acks"] == len(sizes)
    assert st["connects"] == 1 and st["protocol_errors"] == 0
    check_accounting(st)


# ---- security ------------------------------------------------------------------------------------


def test_tls_with_verification(mosquitto_tls, tls_certs, sources, publisher_factory):
    broker = mosquitto_tls
    ring = ByteRing(1 << 20)
    src = sources(ring, broker.tls_url, topics=["tls/#"], qos=1, ca_file=tls_certs.ca_file)
    msrc = sources(ring_m := ByteRing(1 << 20), broker.mtls_url, topics=["tls/#"], qos=1,
                   ca_file=tls_certs.ca_file, cert_file=tls_certs.client_cert,
                   key_file=tls_certs.client_key)
    assert src.wait_connected(WAIT), src.stats()
    assert msrc.wait_connected(WAIT), msrc.stats()
    pub = publisher_factory(broker)   # the plain listener of the same broker
    for i in range(300):
        pub.publish("tls/x", payload(i, 2000), 1)
    pub.flush()
    assert sorted(seqs(collect(ring, 300))) == list(range(300))
    assert sorted(seqs(collect(ring_m, 300))) == list(range(300))


def test_tls_wrong_ca_fails_with_a_clear_error(mosquitto_tls, tls_certs, sources):
    broker = mosquitto_tls
    src = sources(ByteRing(1 << 20), broker.tls_url, topics=["tls/#"],
                  ca_file=tls_certs.other_ca_file)
    assert wait_for(lambda: src.stats()["connect_failures"] >= 2, WAIT)
    st = src.stats()
    assert st["connects"] == 0 and not st["connected"]
    assert "certificate verify failed" in st["last_error"].lower(), st["last_error"]
    # ... and insecure=True skips verification (not for production).
    src2 = sources(ByteRing(1 << 20), broker.tls_url, topics=["tls/#"], insecure=True)
    assert src2.wait_connected(WAIT), src2.stats()


def test_client_certificate_required(mosquitto_tls, tls_certs, sources):
    src = sources(ByteRing(1 << 20), mosquitto_tls.mtls_url, topics=["tls/#"],
                  ca_file=tls_certs.ca_file)     # no client certificate
    assert wait_for(lambda: src.stats()["connect_failures"] >= 1, WAIT)
    assert src.stats()["connects"] == 0


def test_username_password(mosquitto_auth, sources, caplog):
    broker = mosquitto_auth
    caplog.set_level(logging.DEBUG, logger="telemetry_cy")
    user, pw = "bob", AUTH_USERS["bob"]
    ok = sources(ByteRing(1 << 20), broker.url, topics=["auth/#"], username=user, password=pw)
    assert ok.wait_connected(WAIT), ok.stats()
    # Credentials in the URL (percent-encoded), then a wrong password.
    from urllib.parse import quote
    url = f"mqtt://alice:{quote(AUTH_USERS['alice'], safe='')}@{broker.host}:{broker.port}"
    ok2 = sources(ByteRing(1 << 20), url, topics=["auth/#"])
    assert ok2.wait_connected(WAIT), ok2.stats()
    bad = sources(ByteRing(1 << 20), f"mqtt://alice:wrong-secret@{broker.host}:{broker.port}",
                  topics=["auth/#"])
    assert wait_for(lambda: bad.stats()["connect_failures"] >= 1, WAIT)
    st = bad.stats()
    assert st["connects"] == 0 and "refused" in st["last_error"].lower(), st["last_error"]
    for secret in (pw, AUTH_USERS["alice"], "wrong-secret"):
        assert secret not in caplog.text and secret not in repr(bad) and secret not in str(st)


# ---- protocol robustness -------------------------------------------------------------------------


class FakeBroker:
    """Answers CONNECT and SUBSCRIBE like a broker, then sends ``garbage``. Counts connections."""

    def __init__(self, garbage: bytes) -> None:
        self.garbage = garbage
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_packet(self, conn) -> tuple[int, bytes]:
        head = conn.recv(1)
        if not head:
            raise ConnectionError
        mult, rl = 1, 0
        while True:
            b = conn.recv(1)[0]
            rl += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        body = b""
        while len(body) < rl:
            body += conn.recv(rl - len(body))
        return head[0], body

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(5)
            try:
                with conn:
                    self._read_packet(conn)                       # CONNECT
                    conn.sendall(b"\x20\x03\x00\x00\x00")         # CONNACK v5, no properties
                    cmd, body = self._read_packet(conn)           # SUBSCRIBE
                    conn.sendall(b"\x90\x04" + body[:2] + b"\x00\x01")  # SUBACK, granted QoS 1
                    conn.sendall(b"\x30\x08\x00\x03g/x\x00ok" + self.garbage)
                    while conn.recv(4096):
                        pass
            except (OSError, IndexError, ConnectionError):
                pass

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def test_protocol_error_reconnects(sources):
    fake = FakeBroker(b"\x30\xff\xff\xff\xff\x01")    # a 5-byte remaining length
    try:
        ring = ByteRing(1 << 20)
        src = sources(ring, f"mqtt://127.0.0.1:{fake.port}", topics=["g/#"])
        assert wait_for(lambda: src.stats()["protocol_errors"] >= 2, WAIT), src.stats()
        st = src.stats()
        assert st["connects"] >= 2 and st["disconnects"] >= 1
        assert "remaining length" in st["last_error"]
        # what came before the error on each connection was delivered
        assert {r[1:] for r in ring.pop_many(100)} == {(b"g/x", b"ok")}
    finally:
        fake.close()


def test_keepalive(mosquitto_module, sources, publisher_factory):
    """keepalive=1 and no traffic: paho's PINGREQ/PINGRESP keep the connection (fails if the
    frame reader's PINGRESPs did not reach paho). With traffic, the fast client's reads refresh
    paho's last-receive time (by the next keepalive check, which runs on a timer), so paho does
    not ping a busy connection."""
    ring = ByteRing(1 << 20)
    src = sources(ring, mosquitto_module.url, topics=["idle/#"], keepalive=1)
    assert src.wait_connected(WAIT)
    t_end = time.monotonic() + 2.5
    while time.monotonic() < t_end:
        assert src.connected, src.stats()
        time.sleep(0.1)
    st = src.stats()
    assert st["connects"] == 1 and st["disconnects"] == 0
    client = src._client    # white box: the paho client of the network thread
    name = next(n for n in tmqtt.PAHO_LAST_IN_NAMES if hasattr(client, n))
    pub = publisher_factory(mosquitto_module)
    t0 = paho.time_func()
    pub.publish("idle/x", b"wake", 0)
    pub.flush()
    assert len(collect(ring, 1)) == 1
    assert wait_for(lambda: getattr(client, name) >= t0, WAIT)


def test_stop_disconnects_cleanly(mosquitto, sources):
    src = sources(ByteRing(1 << 20), mosquitto.url, topics=["st/#"], client_id="tcy-stopper")
    assert src.wait_connected(WAIT)
    assert src.stop(5.0)
    st = src.stats()
    # a disconnect we asked for is no outage: not counted, and the clock no longer runs
    assert not st["connected"] and st["disconnects"] == 0 and st["down_seconds"] == 0
    assert src.stats()["disconnected_seconds"] == st["disconnected_seconds"]
    assert wait_for(lambda: "tcy-stopper disconnected" in mosquitto.log_text(), WAIT), \
        mosquitto.log_text()[-2000:]
