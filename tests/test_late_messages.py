"""Late readings as NATS messages (sink/late_messages.py): subjects, bodies, bounds, counters,
and in JetStream mode the acked path against a real nats-server with JetStream: each late reading
lands in the stream once, refusals are counted by reason and retried. The way through the daemon
is tests/test_event_time_daemon.py (core NATS) and tests/test_jetstream_daemon.py (JetStream)."""

from __future__ import annotations

import asyncio
import json
import logging

from support.brokers import wait_for
from telemetry_cy import Aggregate
from telemetry_cy.engine.rules import LateReading
from telemetry_cy.sink import late_messages
from telemetry_cy.sink.late_messages import JetStreamLate, LateQueue, encode_late, late_body
from telemetry_cy.sink.nats_emitter import NatsEmitter
from telemetry_cy.sink.subjects import late_msg_id, parse_subject


def _late(device="gw.1 ü", sensor="temp*", value=-1.5, t=1764720000.25, n=7):
    return LateReading(device, sensor, value, "C", t, n, t + 9.0)


def _messages(data: bytes) -> list[tuple[str, str | None, dict, dict]]:
    """(subject, reply, headers, body) of each PUB or HPUB command in `data`."""
    out = []
    while data:
        line, data = data.split(b"\r\n", 1)
        verb, subject, *rest = line.decode().split(" ")
        reply, head_size, size = None, 0, int(rest[-1])
        if verb == "HPUB":
            reply, head_size = rest[0], int(rest[1])
        else:
            assert verb == "PUB" and len(rest) == 1
        head, body, data = data[:head_size], data[head_size:size], data[size + 2:]
        headers = dict(h.split(": ", 1) for h in head.decode().split("\r\n")[1:] if h)
        out.append((subject, reply, headers, json.loads(body)))
    return out


def _commands(batch) -> list[tuple[str, dict]]:
    return [(subject, body) for subject, _, _, body in _messages(b"".join(batch.parts))]


def test_subjects_are_escaped_and_bodies_carry_every_field():
    readings = [_late(), _late("dev", "rh", 2.0, 5.0, None)]
    batch, too_large = encode_late(readings, "late", 3072, 1 << 20)
    assert too_large == 0 and batch.n == 2
    got = _commands(batch)
    assert [parse_subject("late", s) for s, _ in got] == [("gw.1 ü", "temp*"), ("dev", "rh")]
    assert got[0][1] == {"device": "gw.1 ü", "sensor": "temp*", "value": -1.5, "unit": "C",
                         "t": 1764720000.25, "n": 7, "arrival": 1764720009.25}
    assert got[1][1]["n"] is None
    assert json.loads(late_body(readings[0])) == got[0][1]


def test_too_large_is_left_out_and_counted():
    batch, too_large = encode_late([_late(device="x" * 5000), _late()], "late", 3072, 1 << 20)
    assert too_large == 1 and batch.n == 1
    assert encode_late([_late(device="x" * 5000)], "late", 3072, 1 << 20) == (None, 1)
    assert encode_late([_late()], "late", 3072, 50)[1] == 1  # body over the server's max_payload


def test_chunks_are_bounded(monkeypatch):
    monkeypatch.setattr(late_messages, "CHUNK_BYTES", 300)
    batch, _ = encode_late([_late(value=float(i)) for i in range(20)], "late", 3072, 1 << 20)
    assert len(batch.parts) > 3 and all(len(p) < 600 for p in batch.parts)
    assert [b["value"] for _, b in _commands(batch)] == [float(i) for i in range(20)]


def test_queue_balance_and_drop_oldest():
    q = LateQueue("late", max_batches=2, max_bytes=1 << 20)

    def take(readings):  # what the emitter's loop does with a handed-over batch
        q.lane.took(len(readings))
        q.backlog.add(encode_late(readings, "late", 3072, 1 << 20)[0])

    loop = asyncio.new_event_loop()
    try:
        for i in range(3):
            assert q.lane.offer(loop, take, [_late(value=float(i))] * 4, 64, True)
        assert q.stats() == {"routed": 12, "published": 0, "dropped": 0, "backlog": 12}
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    assert q.stats() == {"routed": 12, "published": 0, "dropped": 4, "backlog": 8}
    q.backlog.take_oldest()
    q.published += 4
    q.backlog.confirm()
    assert q.stats() == {"routed": 12, "published": 4, "dropped": 4, "backlog": 4}


def test_emitter_not_running_refuses_and_counts():
    emitter = NatsEmitter(servers="nats://127.0.0.1:1", late_subject="late")
    emitter.submit_late([_late(), _late()])
    assert emitter.stats()["late"] == {"routed": 2, "published": 0, "dropped": 2, "backlog": 0}
    plain = NatsEmitter(servers="nats://127.0.0.1:1")
    plain.submit_late([_late()])  # no late subject: nothing to do
    assert "late" not in plain.stats()


# ---- JetStream mode ------------------------------------------------------------------------------


def _js(serial=7, stream=None, chunk_bytes=1 << 20, chunk_messages=3) -> JetStreamLate:
    return JetStreamLate(f"_INBOX.x.{serial}", serial, stream, chunk_bytes, chunk_messages)


def test_jetstream_batches_carry_ids_replies_and_chunk_starts():
    readings = [_late(value=float(i), n=i if i % 2 else None) for i in range(8)]
    batch, too_large = encode_late(readings, "late", 3072, 1 << 20, _js(stream="LATE"))
    assert too_large == 0 and batch.n == 8 and batch.serial == 7
    # chunk_messages bounds every chunk, and starts says where each begins
    assert batch.starts == [0, 3, 6, 8] and len(batch.parts) == 3
    for k, part in enumerate(batch.parts):
        assert len(_messages(part)) == batch.starts[k + 1] - batch.starts[k]
    got = _messages(b"".join(batch.parts))
    assert [reply for _, reply, _, _ in got] == [f"_INBOX.x.7.{i}" for i in range(8)]
    for r, (subject, _, headers, body) in zip(readings, got):
        assert headers == {"Nats-Msg-Id": late_msg_id(r.device, r.sensor, r.n, r.t, r.value),
                           "Nats-Expected-Stream": "LATE"}
        assert parse_subject("late", subject) == (r.device, r.sensor)
        assert body == json.loads(late_body(r))
    plain, _ = encode_late(readings, "late", 3072, 1 << 20, _js())
    assert "Nats-Expected-Stream" not in _messages(plain.parts[0])[0][2]


def test_jetstream_headers_count_against_max_payload():
    r = _late()
    body = len(late_body(r))
    assert encode_late([r], "late", 3072, body)[1] == 0                  # core: the body fits
    assert encode_late([r], "late", 3072, body, _js()) == (None, 1)      # with its headers not
    batch, too_large = encode_late([_late(device="x" * 5000), r], "late", 3072, 1 << 20, _js())
    assert too_large == 1 and batch.starts == [0, 1]
    assert _messages(batch.parts[0])[0][1] == "_INBOX.x.7.0"   # indexes count encoded ones


# ---- JetStream mode against a real nats-server ---------------------------------------------------


def _late_tick(count: int, t0: float = 1764720000.0) -> list:
    return [_late(f"dev{i}", "temp", float(i), t0 + i * 0.25, i) for i in range(count)]


def _stream_ids(admin, name: str) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in admin.stream_msgs(name)]


def _late_balanced(s: dict) -> bool:
    late = s["late"]
    return late["routed"] == late["published"] + late["dropped"] + late["backlog"]


def test_jetstream_late_messages_are_acked_and_stored_once(nats_server, nats_admin, emitters):
    """Aggregates and late readings share one stream; a late reading delivered twice (as an MQTT
    redelivery would) is stored once, and every late message counts as published only once
    acked."""
    nats_admin.add_stream("ALL", subjects=("agg.>", "late.>"))
    em = emitters(nats_server.url, jetstream=True, late_subject="late")
    em.start(wait_connected=5)
    readings = _late_tick(20)
    em.submit_late(readings[:12])
    em.submit_late(readings[8:])   # 8..11 a second time
    assert wait_for(lambda: em.stats()["late"]["published"] == 24, 15), em.stats()
    s = em.stats()
    assert s["late"] == {"routed": 24, "published": 24, "dropped": 0, "backlog": 0}
    assert (s["jetstream"]["acks"], s["jetstream"]["duplicates"]) == (20, 4)
    assert s["published"] == 0 and sum(s["jetstream"]["publish_errors"].values()) == 0
    ids = _stream_ids(nats_admin, "ALL")
    assert sorted(ids) == sorted(late_msg_id(r.device, r.sensor, r.n, r.t, r.value)
                                 for r in readings)


def test_jetstream_late_refusals_are_counted_and_retried_once_there_is_room(
        nats_server, nats_admin, emitters):
    """A full late stream refuses part of a batch: counted as stream_full, the rest stays in
    the late backlog and goes through, once, when there is room; the balance holds throughout."""
    nats_admin.add_stream("LATE", subjects=("late.>",), max_msgs=5, discard="new")
    em = emitters(nats_server.url, jetstream=True, late_subject="late")
    em.start(wait_connected=5)
    readings = _late_tick(8)
    em.submit_late(readings)
    assert wait_for(lambda: em.stats()["jetstream"]["publish_errors"]["stream_full"] >= 3, 10)
    s = em.stats()
    assert s["late"]["published"] == 5 and s["late"]["backlog"] == 3 and _late_balanced(s)
    assert s["jetstream"]["last_publish_error"].startswith("stream_full")
    nats_admin.call(nats_admin.nc.jsm().purge_stream("LATE"))
    assert wait_for(lambda: em.stats()["late"]["published"] == 8, 15), em.stats()
    assert _late_balanced(em.stats()) and em.stats()["late"]["dropped"] == 0
    # the purge took the first five; the other three arrived once
    assert sorted(_stream_ids(nats_admin, "LATE")) == sorted(
        late_msg_id(r.device, r.sensor, r.n, r.t, r.value) for r in readings[5:])


def test_jetstream_late_subject_without_a_stream(nats_server, nats_admin, emitters, log_capture):
    """The start-time check names the late subjects no stream captures; their messages are
    answered no_responders, counted, kept, and at stop counted as dropped. The aggregates,
    which have their stream, go through meanwhile."""
    nats_admin.add_stream("AGG", subjects=("agg.>",))
    em = emitters(nats_server.url, jetstream=True, late_subject="late", flush_timeout=0.5)
    em.start(wait_connected=5)
    em.check_stream()

    def said(level: int, fields: dict) -> bool:
        return any(r.levelno == level and "JetStream stream captures" in r.getMessage()
                   and r.fields == fields for r in log_capture.records)
    assert wait_for(lambda: said(logging.WARNING, {"subjects": "late.*.*"}), 10)
    assert said(logging.INFO, {"stream": "AGG", "subjects": "agg.*.*"})
    em.submit_late(_late_tick(4))
    assert wait_for(lambda: em.stats()["jetstream"]["publish_errors"]["no_responders"] >= 4, 10)
    em.submit([Aggregate(f"dev{i}", "temp", "C", 0.0, 60.0, 3, 4.5, 1.5, 0.5, 2.5, 0.5, 0.5,
                         2.5) for i in range(6)], 60.0)
    assert wait_for(lambda: em.stats()["published"] == 6, 10), em.stats()
    s = em.stats()
    assert s["late"]["published"] == 0 and s["late"]["backlog"] == 4 and _late_balanced(s)
    em.stop(0.5)
    assert em.stats()["late"] == {"routed": 4, "published": 0, "dropped": 4, "backlog": 0}
