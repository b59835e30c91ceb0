"""`telemetry-cy run` end to end: a real mosquitto, a real nats-server, the daemon as a process.

The aggregates a NATS subscriber receives are checked against the plain model. With
window == emit_every every reading lands in exactly one window, and QoS 1 on one connection keeps
the publish order, so the readings of a key's k-th window are the next `count` values in the
order they were published: the model can be rebuilt without knowing the arrival times.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest

from support.brokers import NatsSubscriber, wait_for
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.sink.subjects import parse_subject

REPO = Path(__file__).resolve().parent.parent


def daemon_cmd(mosquitto, nats_server, *extra):
    return [sys.executable, "-m", "telemetry_cy.service.cli", "run", "--mqtt-url", mosquitto.url,
            "--nats-url", nats_server.url, "--topic", "site/+/sensor/+", "--qos", "1",
            "--window", "1s", "--emit-every", "1s", "--key-ttl", "30s", "--stats-every", "1s",
            "--log-format", "json", *extra]


def start_daemon(cmd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=REPO, text=True)


def stop_daemon(proc, sig=signal.SIGTERM, timeout=30.0):
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def publisher(mosquitto, client_id="tcy-test-pub"):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    return client


def wait_subscribed(proc, timeout=20.0):
    """The daemon logs its stats line once a second; mqtt=up means CONNACK and SUBACK are in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "stats" and record.get("mqtt") == "up" and \
                record.get("nats") == "up":
            return True
    return False


def publish_spread(pub, messages) -> None:
    """Publishes (topic, payload) pairs at QoS 1, pausing after every 500 so the stream spans
    several windows, then waits until every reading is in a closed window (two more ticks)."""
    for i, (topic, payload) in enumerate(messages):
        info = pub.publish(topic, payload, qos=1)
        if i % 500 == 499:
            info.wait_for_publish(10)
            time.sleep(0.3)
    info.wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()
    time.sleep(2.5)


def test_end_to_end_aggregates_match_the_model(mosquitto, nats_server):
    sub = NatsSubscriber(nats_server.url)
    proc = start_daemon(daemon_cmd(mosquitto, nats_server))
    try:
        assert wait_subscribed(proc), "daemon did not come up"
        pub = publisher(mosquitto)
        sent: dict[tuple[str, str], list[float]] = {}
        keys = [("gw-1", "temp"), ("gw-1", "rh"), ("gw-2", "temp")]
        messages = []
        for i in range(3000):
            device, sensor = keys[i % 3]
            value = round(20 + math.sin(i / 50) * 5 + (i % 11) * 0.125, 6)
            sent.setdefault((device, sensor), []).append(value)
            messages.append((f"site/{device}/sensor/{sensor}",
                             cbor2.dumps({"d": device, "s": sensor, "v": value, "u": "C",
                                          "n": i})))
        publish_spread(pub, messages)
    finally:
        code, out, err = stop_daemon(proc)
    assert code == 0, err[-2000:]
    final = json.loads(out.strip().splitlines()[-1])
    assert final["received"] == 3000 and final["readings"] == 3000
    assert final["aggregates"] == final["published"]
    msgs = sub.wait_count(final["published"])
    sub.close()
    assert len(msgs) == final["published"]

    by_key: dict[tuple[str, str], list[dict]] = {}
    for msg in msgs:
        body = decode_body("json", msg.data)
        assert parse_subject("agg", msg.subject) == (body["device"], body["sensor"])
        by_key.setdefault((body["device"], body["sensor"]), []).append(body)
    assert set(by_key) == set(sent)
    for key, aggs in by_key.items():
        aggs.sort(key=lambda a: a["window_end"])
        values = sent[key]
        assert sum(a["count"] for a in aggs) == len(values)
        offset = 0
        for a in aggs:
            chunk = values[offset:offset + a["count"]]
            offset += a["count"]
            mean = math.fsum(chunk) / len(chunk)
            assert a["unit"] == "C"
            assert (a["min"], a["max"], a["first"], a["last"]) == (min(chunk), max(chunk),
                                                                   chunk[0], chunk[-1])
            assert a["sum"] == pytest.approx(math.fsum(chunk), rel=1e-9, abs=1e-9)
            assert a["mean"] == pytest.approx(mean, rel=1e-9)
            var = math.fsum((v - mean) ** 2 for v in chunk) / len(chunk)
            assert a["stddev"] == pytest.approx(math.sqrt(var), rel=1e-6, abs=1e-9)
            assert a["window_end"] - a["window_start"] == 1.0


def test_sigterm_mid_stream_balances(mosquitto, nats_server):
    proc = start_daemon(daemon_cmd(mosquitto, nats_server))
    try:
        assert wait_subscribed(proc), "daemon did not come up"
        pub = publisher(mosquitto, "tcy-test-pub-2")
        payloads = [cbor2.dumps({"d": f"d{i % 40}", "s": "t", "v": i}) for i in range(4000)]
        payloads[10] = b"\xa1"                                   # decode_error
        payloads[20] = cbor2.dumps({"d": "x", "s": "t"})          # schema_mismatch
        payloads[30] = cbor2.dumps({"d": "x", "s": "t", "v": float("nan")})  # non_finite
        for p in payloads:
            info = pub.publish("site/a/sensor/b", p, qos=1)
        info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
    finally:
        # mid-stream from the daemon's point of view: its ring and tick may still be busy
        code, out, err = stop_daemon(proc)
    assert code == 0, err[-2000:]
    final = json.loads(out.strip().splitlines()[-1])
    d = final["drops"]
    assert final["received"] == 4000
    assert final["received"] == (final["payloads"] + d["oversize"] + d["decode_error"]
                                 + d["ingest_full"])
    assert d["decode_error"] == 1 and d["schema_mismatch"] == 1 and d["non_finite"] == 1
    readings_offered = 4000 - 1  # the decode_error payload holds no reading
    assert readings_offered == (final["readings"] + d["schema_mismatch"] + d["non_finite"]
                                + d["key_limit"] + d["late"])
    assert final["aggregates"] == final["published"] + d["emit_backlog"] + final["backlog"]
    assert final["backlog"] == 0
    for name in ("received", "payloads", "readings", "drops", "aggregates", "published",
                 "live_keys", "uptime_s"):
        assert name in final


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_run_with_quantiles_publishes_them_within_the_bound(mosquitto, nats_server, fmt):
    """`telemetry-cy run --quantiles 0.5,0.9,0.99,0.999`: every aggregate on NATS carries p50,
    p90, p99 and p99.9 within alpha of the window's exact rank quantiles (docs/windows.md,
    "Quantiles")."""
    sub = NatsSubscriber(nats_server.url)
    proc = start_daemon(daemon_cmd(mosquitto, nats_server, "--quantiles", "0.5,0.9,0.99,0.999",
                                   "--quantile-accuracy", "0.02", "--format", fmt))
    sent: list[float] = []
    try:
        assert wait_subscribed(proc), "daemon did not come up"
        pub = publisher(mosquitto, f"tcy-test-pub-q-{fmt}")
        for i in range(1500):
            value = (20 + math.sin(i / 40) * 5) * (1 + (i % 17) / 40) * (-1 if i % 13 == 0 else 1)
            sent.append(value)
        publish_spread(pub, [("site/gw/sensor/t", cbor2.dumps({"d": "gw", "s": "t", "v": v}))
                             for v in sent])
    finally:
        code, out, err = stop_daemon(proc)
    assert code == 0, err[-2000:]
    final = json.loads(out.strip().splitlines()[-1])
    assert final["readings"] == 1500 and final["aggregates"] == final["published"]
    msgs = sub.wait_count(final["published"])
    sub.close()
    aggs = sorted((decode_body(fmt, m.data) for m in msgs), key=lambda a: a["window_end"])
    offset = 0
    for a in aggs:
        chunk = sorted(sent[offset:offset + a["count"]])
        offset += a["count"]
        assert list(a)[-4:] == ["p50", "p90", "p99", "p99.9"]
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)):
            r = q * (len(chunk) - 1)
            lo, hi = chunk[math.floor(r)], chunk[math.ceil(r)]
            assert lo - 0.02 * abs(lo) <= a[name] <= hi + 0.02 * abs(hi), (name, a)
    assert offset == 1500


def test_awkward_names_land_on_escaped_subjects(mosquitto, nats_server):
    sub = NatsSubscriber(nats_server.url)
    proc = start_daemon(daemon_cmd(mosquitto, nats_server))
    names = [("a.b", "x y"), ("*", ">"), ("Küche", "温度"), ("100%", "t\tab")]
    try:
        assert wait_subscribed(proc), "daemon did not come up"
        pub = publisher(mosquitto, "tcy-test-pub-3")
        for device, sensor in names:
            info = pub.publish("site/x/sensor/y", cbor2.dumps({"d": device, "s": sensor, "v": 1}),
                               qos=1)
        info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        assert wait_for(lambda: len(sub.msgs) >= len(names), 15.0)
    finally:
        code, _out, err = stop_daemon(proc)
    assert code == 0, err[-2000:]
    got = {parse_subject("agg", m.subject) for m in sub.msgs}
    sub.close()
    assert got == set(names)
    for m in sub.msgs:
        assert all(c not in m.subject for c in " \t") and m.subject.count(".") == 2


def test_bad_setting_exits_2_with_one_line(mosquitto, nats_server):
    proc = start_daemon(daemon_cmd(mosquitto, nats_server, "--window", "7s", "--emit-every",
                                   "5s"))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "window" in lines[0] and "whole multiple" in lines[0]


def test_unreachable_broker_exits_3_when_asked(nats_server, tmp_path):
    from support.brokers import free_port
    dead = free_port()
    cmd = [sys.executable, "-m", "telemetry_cy.service.cli", "run", "--mqtt-url",
           f"mqtt://127.0.0.1:{dead}", "--nats-url", nats_server.url, "--start-timeout", "2s"]
    proc = start_daemon(cmd)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]
    assert "not connected within start_timeout" in err and "MQTT" in err
    json.loads(out.strip().splitlines()[-1])  # the final counters are printed all the same
