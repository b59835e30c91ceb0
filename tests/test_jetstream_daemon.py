"""`telemetry-cy run --jetstream true` as a process, with a real mosquitto and a real nats-server
with JetStream: the JetStream settings reach the publisher (a wrong `expected_stream` is refused
and counted by reason, `max_in_flight` bounds the window), and the publisher's counters show in
the stats line, the final counters and /metrics. The emitter's own behaviour is
tests/test_jetstream.py's; here it is the wiring. Every wait is bounded.
"""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from support.brokers import NatsSubscriber, free_port, wait_for
from support.daemon import assert_balanced, paho_publisher, payload, publish_all

STREAM = "AGG"


def stream_messages(admin) -> int:
    reply = admin.call(admin.nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=5))
    return json.loads(reply.data)["state"]["messages"]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, *s.labels.values())] = s.value
    return out


def readings(n: int, prefix: str = "dev"):
    return [(f"site/{prefix}{i}/sensor/t", payload(f"{prefix}{i}", "t", float(i)))
            for i in range(n)]


def test_wrong_expected_stream_is_refused_and_counted(mosquitto, nats_server, spawn):
    admin = NatsSubscriber(nats_server.url, subject=None)
    pub = paho_publisher(mosquitto, "tcy-js-wrong")
    try:
        admin.add_stream(STREAM)
        port = free_port()
        d = spawn(mosquitto.url, nats_server.url, "--jetstream", "true",
                  "--expected-stream", "OTHER", "--metrics-port", str(port))
        d.wait_up()
        publish_all(pub, readings(20))
        line = d.wait_stats(lambda s: s["emitted"] >= 20 and s.get("jetstream", {}).get(
            "errors", {}).get("wrong_stream", 0) >= 20, 30)
        assert line is not None, d.tail()
        assert line["published"] == 0 and line["backlog"] >= 20
        assert line["jetstream"]["acks"] == 0 and line["jetstream"]["in_flight"] >= 0
        m = scrape(port)
        assert m[("telemetry_cy_jetstream_publish_errors_total", "wrong_stream")] >= 20
        assert m[("telemetry_cy_jetstream_acks_total",)] == 0
        assert m[("telemetry_cy_published_total",)] == 0
        assert stream_messages(admin) == 0
        code, final = d.stop()
    finally:
        pub.loop_stop()
        pub.disconnect()
        admin.close()
    assert code == 0, d.tail()
    # nothing the stream refused counts as published; at stop the backlog is dropped, counted
    assert final["published"] == 0 and final["drops"]["emit_backlog"] == final["aggregates"]
    assert final["jetstream"]["publish_errors"]["wrong_stream"] >= 20
    assert "expected stream does not match" in final["jetstream"]["last_publish_error"]
    assert_balanced(final)


def test_max_in_flight_bounds_the_window_and_everything_is_acked(mosquitto, nats_server, spawn):
    admin = NatsSubscriber(nats_server.url, subject=None)
    pub = paho_publisher(mosquitto, "tcy-js-window")
    n = 600
    try:
        admin.add_stream(STREAM)
        port = free_port()
        d = spawn(mosquitto.url, nats_server.url, "--jetstream", "true",
                  "--expected-stream", STREAM, "--max-in-flight", "16",
                  "--max-in-flight-bytes", "4KiB", "--metrics-port", str(port))
        d.wait_up()
        publish_all(pub, readings(n))
        line = d.wait_stats(lambda s: s["emitted"] >= n and s["published"] == s["emitted"]
                            and s["backlog"] == 0, 60)
        assert line is not None, d.tail()
        assert line["jetstream"]["errors"] == {} and line["jetstream"]["in_flight"] == 0
        m = scrape(port)
        assert m[("telemetry_cy_jetstream_acks_total",)] == line["published"]
        assert m[("telemetry_cy_jetstream_in_flight",)] == 0
        assert m[("telemetry_cy_jetstream_in_flight_bytes",)] == 0
        assert wait_for(lambda: stream_messages(admin) == line["published"], 10)
        code, final = d.stop()
    finally:
        pub.loop_stop()
        pub.disconnect()
        admin.close()
    assert code == 0, d.tail()
    js = final["jetstream"]
    assert 0 < js["in_flight_high_water"] <= 16
    assert 0 < js["in_flight_bytes_high_water"] <= 4096
    assert js["acks"] + js["duplicates"] == final["published"] >= n
    assert sum(js["publish_errors"].values()) == 0
    assert_balanced(final)
