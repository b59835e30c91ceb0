"""Late readings as NATS messages (sink/late_messages.py): subjects, bodies, bounds, counters.
The way through a real nats-server is tests/test_event_time_daemon.py."""

from __future__ import annotations

import json

from telemetry_cy.engine.rules import LateReading
from telemetry_cy.sink import late_messages
from telemetry_cy.sink.late_messages import LateQueue, encode_late, late_body
from telemetry_cy.sink.nats_emitter import NatsEmitter
from telemetry_cy.sink.subjects import parse_subject


def _late(device="gw.1 ü", sensor="temp*", value=-1.5, t=1764720000.25, n=7):
    return LateReading(device, sensor, value, "C", t, n, t + 9.0)


def _commands(batch) -> list[tuple[str, dict]]:
    data = b"".join(batch.parts)
    out = []
    while data:
        line, data = data.split(b"\r\n", 1)
        verb, subject, size = line.split(b" ")
        assert verb == b"PUB"
        body, data = data[:int(size)], data[int(size) + 2:]
        out.append((subject.decode(), json.loads(body)))
    return out


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
    for i in range(3):
        batch, _ = encode_late([_late(value=float(i))] * 4, "late", 3072, 1 << 20)
        q.handoff = (q.handoff[0] + 1, q.handoff[1] + 4, q.handoff[2])
        q.taken = (q.taken[0] + 1, q.taken[1] + 4)
        q.backlog.add(batch)
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
