"""`telemetry-cy run --jetstream true` as a process, with a real mosquitto and a real nats-server
with JetStream: the JetStream settings reach the publisher (a wrong `expected_stream` is refused
and counted by reason, `max_in_flight` bounds the window), the publisher's counters show in the
stats line, the final counters and /metrics, and with event time the late readings are acked
into the stream like the aggregates. The emitter's own behaviour is tests/test_jetstream.py's
and tests/test_late_messages.py's; here it is the wiring. Every wait is bounded.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.brokers import free_port, wait_for
from support.daemon import assert_balanced, paho_publisher, payload, publish_all
from telemetry_cy.sink.subjects import late_msg_id, parse_subject

STREAM = "AGG"


class JetStreamRun:
    """One daemon in JetStream mode with /metrics, a QoS 1 publisher into its mosquitto and an
    admin client of its nats-server's streams."""

    def __init__(self, daemon, metrics_port: int, publisher, admin) -> None:
        self.d, self.port, self.pub, self.admin = daemon, metrics_port, publisher, admin

    def publish(self, items) -> None:
        publish_all(self.pub, items)

    def stream_messages(self, stream: str = STREAM) -> int:
        reply = self.admin.call(self.admin.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"",
                                                      timeout=5))
        return json.loads(reply.data)["state"]["messages"]

    def scrape(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, *s.labels.values())] = s.value
        return out

    def stop(self) -> dict:
        """SIGTERM; the final counters, which must balance."""
        code, final = self.d.stop()
        assert code == 0, self.d.tail()
        assert_balanced(final)
        return final


@pytest.fixture
def js_run(mosquitto, nats_server, nats_admin, spawn):
    """js_run(*flags, subjects=("agg.>",)) makes the stream STREAM on `subjects`, starts the
    daemon with `--jetstream true --metrics-port <free>` and the flags, and waits until it is up;
    the publisher is disconnected at teardown."""
    pubs = []

    def start(*flags: str, subjects=("agg.>",)) -> JetStreamRun:
        nats_admin.add_stream(STREAM, subjects=subjects)
        port = free_port()
        d = spawn(mosquitto.url, nats_server.url, "--jetstream", "true",
                  "--metrics-port", str(port), *flags)
        d.wait_up()
        pubs.append(paho_publisher(mosquitto, f"tcy-js-{len(pubs)}"))
        return JetStreamRun(d, port, pubs[-1], nats_admin)

    yield start
    for pub in pubs:
        pub.loop_stop()
        pub.disconnect()


def readings(n: int, prefix: str = "dev"):
    return [(f"site/{prefix}{i}/sensor/t", payload(f"{prefix}{i}", "t", float(i)))
            for i in range(n)]


def test_wrong_expected_stream_is_refused_and_counted(js_run):
    run = js_run("--expected-stream", "OTHER")
    run.publish(readings(20))
    line = run.d.wait_stats(lambda s: s["emitted"] >= 20 and s.get("jetstream", {}).get(
        "errors", {}).get("wrong_stream", 0) >= 20, 30)
    assert line is not None, run.d.tail()
    assert line["published"] == 0 and line["backlog"] >= 20
    assert line["jetstream"]["acks"] == 0 and line["jetstream"]["in_flight"] >= 0
    m = run.scrape()
    assert m[("telemetry_cy_jetstream_publish_errors_total", "wrong_stream")] >= 20
    assert m[("telemetry_cy_jetstream_acks_total",)] == 0
    assert m[("telemetry_cy_published_total",)] == 0
    assert run.stream_messages() == 0
    final = run.stop()
    # nothing the stream refused counts as published; at stop the backlog is dropped, counted
    assert final["published"] == 0 and final["drops"]["emit_backlog"] == final["aggregates"]
    assert final["jetstream"]["publish_errors"]["wrong_stream"] >= 20
    assert "expected stream does not match" in final["jetstream"]["last_publish_error"]


def test_max_in_flight_bounds_the_window_and_everything_is_acked(js_run):
    n = 600
    run = js_run("--expected-stream", STREAM, "--max-in-flight", "16",
                 "--max-in-flight-bytes", "4KiB")
    run.publish(readings(n))
    line = run.d.wait_stats(lambda s: s["emitted"] >= n and s["published"] == s["emitted"]
                            and s["backlog"] == 0, 60)
    assert line is not None, run.d.tail()
    assert line["jetstream"]["errors"] == {} and line["jetstream"]["in_flight"] == 0
    m = run.scrape()
    assert m[("telemetry_cy_jetstream_acks_total",)] == line["published"]
    assert m[("telemetry_cy_jetstream_in_flight",)] == 0
    assert m[("telemetry_cy_jetstream_in_flight_bytes",)] == 0
    assert wait_for(lambda: run.stream_messages() == line["published"], 10)
    final = run.stop()
    js = final["jetstream"]
    assert 0 < js["in_flight_high_water"] <= 16
    assert 0 < js["in_flight_bytes_high_water"] <= 4096
    assert js["acks"] + js["duplicates"] == final["published"] >= n
    assert sum(js["publish_errors"].values()) == 0


def test_late_readings_are_acked_into_the_stream_once(js_run):
    """Event time with a late subject: the late readings go through the acked path, each lands
    in the stream once (one of them is published twice, as an MQTT redelivery would), and the
    late balance and the acks add up in the final counters."""
    devices = [f"dev{i}" for i in range(5)]
    run = js_run("--time", "event", "--allowed-lateness", "1s", "--late-subject", "late",
                 subjects=("agg.>", "late.>"))
    base = float(int(time.time()))
    run.publish([(f"site/{d}/sensor/t", payload(d, "t", 1.0, t=base + 0.25)) for d in devices]
                + [("site/closer/sensor/t", payload("closer", "t", 0.0, t=base + 10.0))])
    # the windows of the first readings are emitted: readings for them are late from now on
    assert run.d.wait_stats(lambda s: s["emitted"] >= len(devices), 30), run.d.tail()
    late = [(d, base + 0.5 + i * 0.01, -1.0 - i, i) for i, d in enumerate(devices)]
    items = [(f"site/{d}/sensor/t", payload(d, "t", v, t=t, n=n)) for d, t, v, n in late]
    run.publish(items + items[:1])
    line = run.d.wait_stats(lambda s: s.get("event_time", {}).get("late_published", 0)
                            >= len(late) + 1, 30)
    assert line is not None, run.d.tail()
    stored = [m for m in run.admin.stream_msgs(STREAM) if m.subject.startswith("late.")]
    assert sorted(m.headers["Nats-Msg-Id"] for m in stored) == sorted(
        late_msg_id(d, "t", n, t, v) for d, t, v, n in late)
    assert {parse_subject("late", m.subject) for m in stored} == {(d, "t") for d in devices}
    final = run.stop()
    ev, js = final["event_time"], final["jetstream"]
    assert final["drops"]["late"] == len(late) + 1
    assert ev["late_routed"] == ev["late_published"] == len(late) + 1, final
    assert ev["late_dropped"] == ev["late_backlog"] == 0, final
    assert js["duplicates"] >= 1 and sum(js["publish_errors"].values()) == 0
    assert js["acks"] + js["duplicates"] == final["published"] + ev["late_published"]
