"""`--metrics-port`: /metrics scraped over HTTP and parsed with the Prometheus text parser, and
/healthz, against the daemon as a process with a real mosquitto and nats-server (like
test_daemon.py).

Every wait is bounded (wait_for with a deadline); nothing asserts on how long something took.
The unit tests at the end drive the histogram buckets and the health rules with fake parts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import cbor2
import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.brokers import NatsSubscriber, free_port, wait_for
from telemetry_cy.reasons import DROP_REASONS
from telemetry_cy.service import config as cfg
from telemetry_cy.service.metrics import Buckets, Health, MetricsServer
from telemetry_cy.service.pipeline_snapshot import PipelineSnapshot

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "telemetry-cy.toml"

COUNTERS = ("telemetry_cy_received", "telemetry_cy_payloads", "telemetry_cy_readings",
            "telemetry_cy_aggregates", "telemetry_cy_published", "telemetry_cy_drops",
            "telemetry_cy_mqtt_connects", "telemetry_cy_mqtt_disconnects",
            "telemetry_cy_mqtt_disconnected_seconds", "telemetry_cy_nats_reconnects",
            "telemetry_cy_nats_disconnected_seconds", "telemetry_cy_nats_stalled_flushes",
            "telemetry_cy_keys_evicted",
            "telemetry_cy_mqtt_payload_bytes")
GAUGES = ("telemetry_cy_ring_used_bytes", "telemetry_cy_ring_capacity_bytes",
          "telemetry_cy_nats_backlog_batches", "telemetry_cy_nats_backlog_aggregates",
          "telemetry_cy_nats_backlog_bytes", "telemetry_cy_live_keys", "telemetry_cy_state_bytes",
          "telemetry_cy_mqtt_connected", "telemetry_cy_nats_connected",
          "telemetry_cy_mqtt_down_seconds", "telemetry_cy_nats_down_seconds",
          "telemetry_cy_engine_heartbeat_age_seconds", "telemetry_cy_healthy",
          "telemetry_cy_build_info")
HISTOGRAMS = ("telemetry_cy_tick_duration_seconds", "telemetry_cy_publish_delay_seconds")


# ---- helpers -------------------------------------------------------------------------------------


def start_daemon(*args):
    cmd = [sys.executable, "-m", "telemetry_cy.service.cli", "run", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=REPO, text=True)


def stop_daemon(proc, timeout=30.0):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def get(port, path, timeout=5.0):
    """(status, body); status None when nothing answers (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, ""


def scrape(port) -> dict:
    """{sample name: value} for unlabelled samples, {(name, label value): value} for labelled
    ones (one label per family here), and the families under "_families"."""
    status, text = get(port, "/metrics")
    assert status == 200, (status, text[:500])
    out = {"_families": {}}
    for family in text_string_to_metric_families(text):
        out["_families"][family.name] = family
        for s in family.samples:
            if s.labels:
                out[(s.name, *s.labels.values())] = s.value
            else:
                out[s.name] = s.value
    return out


def healthz(port):
    status, body = get(port, "/healthz")
    return status, (json.loads(body) if body else None)


def up(port) -> bool:
    status, body = healthz(port)
    return status == 200 and body["mqtt"]["connected"] and body["nats"]["connected"]


def wait_healthy(proc, port, timeout=30.0):
    """Healthy and connected to both brokers (a fresh daemon is healthy before it connects:
    /healthz only turns 503 once an outage has lasted health_stale_after)."""
    ok = wait_for(lambda: proc.poll() is not None or up(port), timeout)
    assert ok and proc.poll() is None, proc.stderr.read()[-3000:] if proc.poll() is not None \
        else f"not healthy within {timeout} s: {healthz(port)}"


def publisher(mosquitto, client_id):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    return client


# ---- the daemon as a process ---------------------------------------------------------------------


def test_counters_move_with_their_events(mosquitto, nats_server):
    pub = publisher(mosquitto, "tcy-metrics-pub")
    # A retained reading reaches the daemon exactly once, right after its SUBACK: once it is
    # counted, the subscription is in place and the baseline is exact.
    pub.publish("site/probe/sensor/t", cbor2.dumps({"d": "probe", "s": "t", "v": 1.0}), qos=1,
                retain=True).wait_for_publish(10)
    sub = NatsSubscriber(nats_server.url)
    port = free_port()
    proc = start_daemon("--mqtt-url", mosquitto.url, "--nats-url", nats_server.url,
                        "--topic", "site/+/sensor/+", "--window", "1s", "--emit-every", "1s",
                        "--max-payload-bytes", "1KiB", "--stats-every", "0",
                        "--metrics-port", str(port))
    try:
        wait_healthy(proc, port)
        assert wait_for(lambda: scrape(port).get("telemetry_cy_readings_total") == 1, 15.0), \
            "the retained probe was not counted"
        base = scrape(port)

        families = base["_families"]
        for name in COUNTERS:
            assert families[name].type == "counter", name
        for name in GAUGES:
            assert families[name].type == "gauge", name
        for name in HISTOGRAMS:
            assert families[name].type == "histogram", name
        # the closed set of reasons is there from the start, every one at 0 so far
        assert {s.labels["reason"] for s in families["telemetry_cy_drops"].samples} == \
            set(DROP_REASONS)
        for reason in DROP_REASONS:
            assert base[("telemetry_cy_drops_total", reason)] == 0, reason
        assert base["telemetry_cy_received_total"] == base["telemetry_cy_payloads_total"] == 1
        assert base["telemetry_cy_mqtt_connected"] == 1 and base["telemetry_cy_nats_connected"] == 1
        assert base["telemetry_cy_mqtt_connects_total"] == 1
        assert base["telemetry_cy_ring_capacity_bytes"] >= 4096
        assert base["telemetry_cy_healthy"] == 1

        good = [cbor2.dumps({"d": f"gw-{i % 4}", "s": "temp", "v": 20.0 + i}) for i in range(20)]
        # one stream with sequence numbers: 1, 2, 5 skips two, the second 5 is a duplicate
        good += [cbor2.dumps({"d": "gw-seq", "s": "t", "v": 1.0, "n": n}) for n in (1, 2, 5, 5)]
        array = cbor2.dumps([{"d": "gw-9", "s": s, "v": 1.5} for s in ("a", "b", "c")])
        bad = {
            "decode_error": [b"\xa1", b"\xff\x00"],
            "schema_mismatch": [cbor2.dumps({"d": "gw-1", "s": "temp"})],
            "non_finite": [cbor2.dumps({"d": "gw-1", "s": "temp", "v": float("inf")})],
            "oversize": [cbor2.dumps({"d": "gw-1", "s": "temp", "v": 1.0, "u": "x" * 2000})],
        }
        payloads = good + [array] + [p for ps in bad.values() for p in ps]
        for p in payloads:
            info = pub.publish("site/gw/sensor/temp", p, qos=1)
        info.wait_for_publish(10)

        sent = len(payloads)                        # 30 PUBLISH messages
        decoded = sent - 2 - 1                      # not the decode_error and oversize ones
        readings = len(good) + 3                    # the array holds three
        expected = {
            "telemetry_cy_received_total": base["telemetry_cy_received_total"] + sent,
            "telemetry_cy_payloads_total": base["telemetry_cy_payloads_total"] + decoded,
            "telemetry_cy_readings_total": base["telemetry_cy_readings_total"] + readings,
            **{("telemetry_cy_drops_total", r): len(bad.get(r, ())) for r in DROP_REASONS},
        }

        def counted():
            now = scrape(port)
            return all(now.get(k) == v for k, v in expected.items())

        assert wait_for(counted, 15.0), {k: (scrape(port).get(k), v) for k, v in expected.items()}
        if "telemetry_cy_sequence_gaps" in families:   # engines with sequence accounting
            now = scrape(port)
            assert now["telemetry_cy_sequence_gaps_total"] == \
                base["telemetry_cy_sequence_gaps_total"] + 2
            assert now["telemetry_cy_sequence_duplicates_total"] == \
                base["telemetry_cy_sequence_duplicates_total"] + 1

        # a tick closes the windows: aggregates are made, NATS confirms them, the histograms move
        def published():
            now = scrape(port)
            return (now["telemetry_cy_aggregates_total"] > base["telemetry_cy_aggregates_total"]
                    and now["telemetry_cy_published_total"] == now["telemetry_cy_aggregates_total"]
                    and now["telemetry_cy_nats_backlog_aggregates"] == 0
                    and now["telemetry_cy_publish_delay_seconds_count"]
                    > base["telemetry_cy_publish_delay_seconds_count"])

        assert wait_for(published, 15.0), scrape(port)
        after = scrape(port)
        assert after["telemetry_cy_tick_duration_seconds_count"] > \
            base["telemetry_cy_tick_duration_seconds_count"]
        assert after["telemetry_cy_publish_delay_seconds_sum"] > 0
        # histogram buckets are cumulative and end with +Inf == _count
        for name in HISTOGRAMS:
            buckets = [s for s in after["_families"][name].samples if s.name.endswith("_bucket")]
            values = [s.value for s in buckets]
            assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf"
            assert values[-1] == after[f"{name}_count"]
        # 4 gw keys, the sequence key, 3 array keys, the probe
        assert after["telemetry_cy_live_keys"] == 9
        assert after["telemetry_cy_state_bytes"] > 0
        # what NATS subscribers got is what the counter says was published
        assert wait_for(lambda: len(sub.msgs) >= after["telemetry_cy_published_total"]
                        - base["telemetry_cy_published_total"], 10.0)
        status, _ = get(port, "/nope")
        assert status == 404
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.close()
        code, out, err = stop_daemon(proc)
    assert code == 0, err[-3000:]
    final = json.loads(out.strip().splitlines()[-1])
    assert final["received"] == expected["telemetry_cy_received_total"]
    assert final["drops"]["decode_error"] == 2 and final["drops"]["oversize"] == 1


def test_healthz_follows_nats_with_the_example_config(mosquitto, nats_server):
    """The example config, as shipped, runs the daemon (the flags only point it at the test
    brokers and a free port); /healthz turns 503 when NATS has been down longer than
    health_stale_after and 200 again once it is back."""
    port = free_port()
    proc = start_daemon("--config", str(EXAMPLE), "--mqtt-url", mosquitto.url,
                        "--nats-url", nats_server.url, "--metrics-port", str(port),
                        "--health-stale-after", "1s")
    try:
        wait_healthy(proc, port)
        status, body = healthz(port)
        assert body["status"] == "ok" and body["problems"] == []
        assert body["mqtt"]["connected"] and body["nats"]["connected"], body
        assert body["stale_after_seconds"] == 1.0

        nats_server.stop()
        assert wait_for(lambda: healthz(port)[0] == 503, 20.0), healthz(port)
        status, body = healthz(port)
        assert body["status"] == "unhealthy" and not body["nats"]["connected"]
        assert any("NATS" in p for p in body["problems"])
        assert body["nats"]["down_seconds"] > 1.0
        assert body["mqtt"]["connected"]              # only NATS is to blame
        m = scrape(port)
        assert m["telemetry_cy_nats_connected"] == 0 and m["telemetry_cy_healthy"] == 0
        assert m["telemetry_cy_nats_down_seconds"] > 1.0

        nats_server.start()
        # nats-py reconnects with a backoff of at most 5 s
        assert wait_for(lambda: up(port), 30.0), healthz(port)
        m = scrape(port)
        assert m["telemetry_cy_nats_connected"] == 1 and m["telemetry_cy_nats_down_seconds"] == 0
        assert m["telemetry_cy_nats_reconnects_total"] >= 1
        assert m["telemetry_cy_nats_disconnected_seconds_total"] > 1.0
    finally:
        code, _out, err = stop_daemon(proc)
    assert code == 0, err[-3000:]


def test_metrics_port_in_use_exits_2(mosquitto, nats_server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start_daemon("--mqtt-url", mosquitto.url, "--nats-url", nats_server.url,
                            "--metrics-port", str(port), "--log-format", "json")
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err[-3000:]
    errors = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [e["msg"] for e in errors if e["level"] == "error"] == \
        ["cannot listen on the metrics port"]
    json.loads(out.strip().splitlines()[-1])  # the final counters are printed all the same


def test_systemd_notify_ready_watchdog_stopping(mosquitto, nats_server):
    """Type=notify in deploy/telemetry-cy.service: READY=1 once started, WATCHDOG=1 pings while
    the engine loops (WatchdogSec given through WATCHDOG_USEC), STOPPING=1 on SIGTERM."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tcy") as d:   # short: AF_UNIX paths are < 108 bytes
        path = os.path.join(d, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(0.5)
            env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
            cmd = [sys.executable, "-m", "telemetry_cy.service.cli", "run",
                   "--mqtt-url", mosquitto.url, "--nats-url", nats_server.url,
                   "--stats-every", "1s"]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=dict(os.environ, **env, PYTHONPATH=str(REPO)),
                                    cwd=REPO, text=True)
            got: list[str] = []

            def received(what):
                try:
                    got.extend(sock.recv(4096).decode().splitlines())
                except TimeoutError:
                    pass
                return what in got

            try:
                assert wait_for(lambda: received("READY=1"), 20.0), got
                assert wait_for(lambda: received("WATCHDOG=1"), 10.0), got

                def status_line():
                    received("")   # one more datagram, if any
                    return any(m.startswith("STATUS=received=") for m in got)

                assert wait_for(status_line, 10.0), got
            finally:
                code, _out, err = stop_daemon(proc)
            assert code == 0, err[-3000:]
            assert wait_for(lambda: received("STOPPING=1"), 5.0), got
    assert got.index("READY=1") < got.index("STOPPING=1")


def test_watchdog_pings_only_while_the_engine_loops():
    from telemetry_cy.service.daemon import SystemdNotifier

    name = f"@tcy-test-notify-{os.getpid()}"             # an abstract socket, as systemd uses
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        sock.settimeout(0.2)
        n = SystemdNotifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_every == 1.0
        n.watchdog(False)                                # stalled: no ping
        with pytest.raises(TimeoutError):
            sock.recv(100)
        n.watchdog(True)
        n.watchdog(True)                                 # within the period: one ping only
        assert sock.recv(100) == b"WATCHDOG=1"
        with pytest.raises(TimeoutError):
            sock.recv(100)
        n.close()
    other = SystemdNotifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000",
                             "WATCHDOG_PID": "1"})          # the watchdog is another process's
    assert other.watchdog_every == 0
    assert not SystemdNotifier({}).enabled and SystemdNotifier({}).notify("READY=1") is False


def test_metrics_off_by_default():
    c = cfg.load(argparse.Namespace(config=None), environ={})
    assert c.metrics.port == 0 and c.metrics.host == "127.0.0.1" and c.metrics.stale_after == 30


def test_settings_are_checked():
    with pytest.raises(cfg.ConfigError, match="metrics_port"):
        cfg.load(argparse.Namespace(config=None), environ={"TELEMETRY_CY_METRICS_PORT": "70000"})
    with pytest.raises(cfg.ConfigError, match="health_stale_after"):
        cfg.load(argparse.Namespace(config=None),
                 environ={"TELEMETRY_CY_HEALTH_STALE_AFTER": "100ms"})
    c = cfg.load(argparse.Namespace(config=str(EXAMPLE)), environ={})
    assert c.metrics.port == 9464 and c.metrics.stale_after == 30.0


# ---- pieces, with fake parts ---------------------------------------------------------------------


def test_buckets_are_cumulative_and_inclusive():
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        b.observe(v)
    buckets, total, count = b.snapshot()
    assert buckets == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert count == 5 and total == pytest.approx(8.65)


class _Part:
    def __init__(self, **stats):
        self.s = stats

    def stats(self):
        return dict(self.s)


class _EngineThread:
    def __init__(self, alive=True, heartbeat=None, error=None):
        self.alive, self.error, self.ident = alive, error, 1
        self.s = {} if heartbeat is None else {"heartbeat": heartbeat}

    def is_alive(self):
        return self.alive

    def stats(self):
        return dict(self.s)


def _fake_pipeline(src, eng, emi) -> SimpleNamespace:
    from telemetry_cy.source._ring_py import ByteRing

    return SimpleNamespace(source=src, engine_thread=eng, emitter=emi, ring=ByteRing(4096),
                           stop_requested=threading.Event())


def _health(pipeline, clock, stale_after=2.0) -> Health:
    return Health(lambda: PipelineSnapshot.read(pipeline), pipeline.engine_thread,
                  stale_after=stale_after, stopping=pipeline.stop_requested.is_set,
                  clock=lambda: clock[0])


def test_health_rules():
    clock = [1000.0]
    up = dict(connected=True, disconnected_seconds=0.0, down_seconds=0.0, connects=1,
              reconnects=0)
    src, emi, eng = _Part(**up), _Part(**up), _EngineThread(heartbeat=1000.0)
    pipeline = _fake_pipeline(src, eng, emi)
    h = _health(pipeline, clock)
    assert h.check()[0]
    clock[0] += 1.0
    eng.s["heartbeat"] = clock[0]
    src.s.update(connected=False, disconnected_seconds=0.5, down_seconds=0.5)  # not yet stale
    ok, body = h.check()
    assert ok and body["mqtt"] == {"connected": False, "down_seconds": 0.5}
    clock[0] += 2.0
    eng.s["heartbeat"] = clock[0]
    src.s.update(disconnected_seconds=2.5, down_seconds=2.5)
    ok, body = h.check()
    assert not ok and body["problems"] == ["MQTT down for 2.5 s"]
    # the part's own outage clock decides, not what health saw before: a new outage of 0.1 s
    # right after a long one is 0.1 s
    src.s.update(connected=False, disconnected_seconds=2.6, down_seconds=0.1, connects=2)
    ok, body = h.check()
    assert ok and body["mqtt"]["down_seconds"] == 0.1
    src.s.update(connected=True, down_seconds=0.0)
    emi.s.update(connected=False, down_seconds=7.25)
    ok, body = h.check()
    assert not ok and body["problems"] == ["NATS down for 7.2 s"]
    assert body["nats"] == {"connected": False, "down_seconds": 7.25}
    emi.s.update(connected=True, down_seconds=0.0)
    assert h.check()[0]
    clock[0] += 2.5                                             # the engine loop is stuck
    ok, body = h.check()
    assert not ok and body["problems"] == ["engine thread has not looped for 2.5 s"]
    eng.s["heartbeat"] = clock[0]
    eng.error = RuntimeError("boom")
    assert h.check()[1]["problems"] == ["engine thread failed"]
    eng.error, eng.alive = None, True
    pipeline.stop_requested.set()
    assert h.check()[1]["problems"] == ["stopping"]


def test_server_answers_with_fake_parts():
    beat = time.monotonic()
    pipeline = _fake_pipeline(
        _Part(connected=True, received=5, drops={"oversize": 1}, connects=1, down_seconds=0.0),
        _EngineThread(heartbeat=beat),
        _Part(connected=True, published=2, drops={"emit_backlog": 3, "mystery": 4},
              down_seconds=0.0))
    pipeline.engine_thread.s.update(payloads=4, drops={"late": 2})
    server = MetricsServer(pipeline, "127.0.0.1", 0, 30.0, version="x", engine_kind="pure")
    assert not server.publish_delay_hooked            # a fake emitter is left alone
    server.start()
    try:
        port = int(server.url.rsplit(":", 1)[1])
        server.tick_seconds.observe(0.003)
        m = scrape(port)
        assert m["telemetry_cy_received_total"] == 5 and m["telemetry_cy_payloads_total"] == 4
        assert m[("telemetry_cy_drops_total", "oversize")] == 1
        assert m[("telemetry_cy_drops_total", "late")] == 2
        assert m[("telemetry_cy_drops_total", "emit_backlog")] == 3
        # a reason outside the closed set is shown under its own name, not lost
        assert m[("telemetry_cy_drops_total", "mystery")] == 4
        assert m["telemetry_cy_tick_duration_seconds_count"] == 1
        assert m["telemetry_cy_publish_delay_seconds_count"] == 0
        assert m["telemetry_cy_ring_capacity_bytes"] == 4096
        info = [s for s in m["_families"]["telemetry_cy_build_info"].samples]
        assert info[0].labels == {"version": "x", "engine": "pure"}
        assert healthz(port)[0] == 200
        pipeline.stop_requested.set()
        status, body = healthz(port)
        assert status == 503 and body["problems"] == ["stopping"]
    finally:
        server.stop()
