"""Window state across restarts, end to end: real mosquitto, real nats-server, `telemetry-cy run
--state-dir` (docs/state.md, "State files in the daemon").

- Arrival time: SIGTERM mid-window, readings queued during the gap, restart: every reading is
  in exactly one published aggregate or open at the final stop, none counted twice.
- SIGTERM, readings published while no daemon runs (queued by the broker: persistent session, QoS
  1), a new daemon on the same state directory: every window, those spanning the restart
  included, equals the one recomputed from all the readings (event time), and none is published
  twice.
- kill -9 with a checkpoint every second, then a new daemon: no aggregate counts more readings
  than its window holds, and the readings missing are at most those of the checkpoint interval
  plus half a second.
- Bad state files: truncated, corrupted, empty, foreign, a future version, other window settings:
  one error line naming the file and the reason, exit code 5; with --on-bad-state fresh the file
  is moved aside, counted, and the daemon runs.
"""

from __future__ import annotations

import json
import math
import random
import struct
import threading
import time
from pathlib import Path

import pytest

from support.brokers import NatsSubscriber
from support.daemon import paho_publisher, payload, publish_all
from support.model import event_windows
from telemetry_cy.backend import ACTIVE
from telemetry_cy.engine import snapshot_format
from telemetry_cy.service.checkpoints import STATE_FILE
from telemetry_cy.sink.bodies import decode_body

WINDOW, EVERY, LATENESS = 3.0, 1.0, 2.0


def _bodies(sub: NatsSubscriber) -> list[dict]:
    return [decode_body("json", m.data) for m in list(sub.msgs)]


def test_sigterm_and_restart_mid_window_equals_an_uninterrupted_run(tmp_path, mosquitto,
                                                                     nats_server, spawn):
    rng = random.Random(13)
    state_dir = tmp_path / "state"
    aggs = NatsSubscriber(nats_server.url, subject="agg.>")
    args = ("--time", "event", "--allowed-lateness", "2s", "--client-id", "tcy-state-sigterm",
            "--session-expiry", "300s", "--state-dir", str(state_dir),
            "--checkpoint-every", "30s")
    devices = [f"dev-{i}" for i in range(4)]
    base = math.floor(time.time()) + 0.5
    readings: dict[str, list[tuple[float, float]]] = {d: [] for d in devices}

    def batch(lo: int, hi: int) -> list:
        items = []
        for i in range(lo, hi):
            dev = devices[i % len(devices)]
            t = base + i * 0.02 - rng.uniform(0.0, 1.5) + rng.random() * 1e-6
            v = rng.uniform(-50.0, 50.0)
            readings[dev].append((t, v))
            items.append((f"site/{i % 5}/sensor/x", payload(dev, "temp", v, u="C", t=t)))
        return items

    first = spawn(mosquitto.url, nats_server.url, *args, window="3s", emit_every="1s",
                  name="first")
    first.wait_up()
    pub = paho_publisher(mosquitto, "tcy-state-sigterm-pub")
    try:
        publish_all(pub, batch(0, 300))   # event times over ~6 s: windows open at the stop
        assert first.wait_stats(lambda s: s.get("readings", 0) >= 300, 20.0), first.tail()
        code, final1 = first.stop()
        assert code == 0, first.tail()
        assert final1["open_readings"] > 0, final1   # the stop happened mid-window
        assert (state_dir / STATE_FILE).exists()
        publish_all(pub, batch(300, 450))    # queued in the daemon's session meanwhile
        second = spawn(mosquitto.url, nats_server.url, *args, window="3s", emit_every="1s",
                       name="second")
        second.wait_up()
        publish_all(pub, batch(450, 600))
        newest = max(t for rs in readings.values() for t, _ in rs)
        publish_all(pub, [("site/c/sensor/c",
                           payload("closer", "temp", 0.0, t=newest + WINDOW + LATENESS + 2))])
        assert second.wait_stats(lambda s: s.get("readings", 0) >= 601, 20.0), second.tail()
        code, final2 = second.stop()
        assert code == 0, second.tail()
    finally:
        pub.disconnect()
        pub.loop_stop()

    restored = [r for r in second.records() if r.get("msg") == "state restored"]
    assert len(restored) == 1, second.tail()
    assert restored[0]["keys"] == len(devices) and restored[0]["readings"] == 300, restored
    assert restored[0]["age_s"] < 30
    want = {(dev, end): w for dev, rs in readings.items()
            for end, w in event_windows(rs, WINDOW, EVERY).items()}
    got: dict[tuple[str, float], dict] = {}
    msgs = aggs.wait_count(len(want), 15.0)
    for msg in msgs:
        body = decode_body("json", msg.data)
        key = (body["device"], body["window_end"])
        assert key not in got, f"window {key} published twice"
        assert body["device"] != "closer"
        got[key] = body
    assert set(got) == set(want)
    stop_t = base + 300 * 0.02   # windows around here hold readings of both runs
    spanning = [k for k in want if k[1] - WINDOW <= stop_t + 1.5 and k[1] >= stop_t - 1.5]
    assert spanning
    for key, w in want.items():
        g = got[key]
        for name in ("count", "min", "max", "first", "last"):
            assert g[name] == w[name], (key, name, g[name], w[name])
        assert abs(g["sum"] - w["sum"]) <= 1e-9 * w["magnitude"], key
    # the counters went on from the restored ones
    assert final2["readings"] == 601 and final2["open_readings"] == 1, final2
    assert final2["checkpoint"]["checkpoints"] >= 1 and final2["checkpoint"]["failures"] == 0
    aggs.close()


def test_sigterm_and_restart_in_arrival_time_loses_nothing(tmp_path, mosquitto, nats_server,
                                                           spawn):
    """Arrival time, 5 s tumbling windows: the readings of the interval open at the SIGTERM
    survive in the state file and are published by the next daemon, with those queued by the
    broker during the gap (in the windows of their new arrival): every reading is in exactly one
    published aggregate or still open at the final stop."""
    state_dir = tmp_path / "state"
    aggs = NatsSubscriber(nats_server.url, subject="agg.>")
    args = ("--client-id", "tcy-state-arrival", "--session-expiry", "300s",
            "--state-dir", str(state_dir))

    def items(lo: int, hi: int) -> list:
        return [(f"site/{i % 3}/sensor/x", payload(f"dev-{i % 7}", "t", float(i), n=i // 7))
                for i in range(lo, hi)]

    first = spawn(mosquitto.url, nats_server.url, *args, window="5s", emit_every="5s",
                  name="first")
    first.wait_up()
    pub = paho_publisher(mosquitto, "tcy-state-arrival-pub")
    try:
        # start just after a 5 s boundary, so the stop comes inside the interval of the readings
        time.sleep(5.0 - time.time() % 5.0 + 0.1)
        publish_all(pub, items(0, 400))
        assert first.wait_stats(lambda s: s.get("readings", 0) >= 400, 20.0), first.tail()
        code, final1 = first.stop()
        assert code == 0, first.tail()
        publish_all(pub, items(400, 600))          # queued in the session during the gap
        second = spawn(mosquitto.url, nats_server.url, *args, window="5s", emit_every="5s",
                       name="second")
        second.wait_up()
        publish_all(pub, items(600, 800))
        assert second.wait_stats(lambda s: s.get("readings", 0) >= 800, 20.0), second.tail()
        code, final2 = second.stop()
        assert code == 0, second.tail()
    finally:
        pub.disconnect()
        pub.loop_stop()

    assert final1["readings"] == 400 and final2["readings"] == 800, (final1, final2)
    # the stop came mid-window: without the state file these would be lost
    assert final1["open_readings"] > 0, final1
    aggs.wait_count(final1["published"] + final2["published"], 15.0)
    published = sum(b["count"] for b in _bodies(aggs))
    assert published + final2["open_readings"] == 800, (published, final1, final2)
    assert final2["seq"]["duplicates"] == 0 and final2["seq"]["gaps"] == 0
    aggs.close()


def test_kill9_loses_at_most_the_checkpoint_interval_and_counts_nothing_twice(
        tmp_path, mosquitto, nats_server, spawn):
    state_dir = tmp_path / "state"
    aggs = NatsSubscriber(nats_server.url, subject="agg.>")
    args = ("--time", "event", "--client-id", "tcy-state-kill9", "--session-expiry", "300s",
            "--state-dir", str(state_dir), "--checkpoint-every", "1s")
    rate, n = 200.0, 2400
    sent: list[float] = []   # event time of each reading (one key: t = its publish time)
    pub = paho_publisher(mosquitto, "tcy-state-kill9-pub")
    first = spawn(mosquitto.url, nats_server.url, *args, name="first")
    first.wait_up()
    done = threading.Event()

    def publisher() -> None:
        def items():
            for i in range(n):
                t = time.time()
                sent.append(t)
                yield "site/k/sensor/t", payload("k", "t", 1.0, t=t, n=i)
        publish_all(pub, items(), rate=rate, deadline_s=60)
        done.set()

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    second = None
    try:
        assert first.wait_stats(lambda s: s.get("readings", 0) >= 800, 20.0), first.tail()
        first.kill9()
        time.sleep(0.5)
        second = spawn(mosquitto.url, nats_server.url, *args, name="second")
        second.wait_up()
        assert done.wait(40), "publisher did not finish"
        last_t = sent[-1]
        publish_all(pub, [("site/k/sensor/c", payload("k", "t", 1.0, t=last_t + 5.0))])
        assert second.wait_stats(lambda s: (s.get("published", 0) > 0 and
                                            s.get("readings", 0) >= n - rate * 2), 30.0), \
            second.tail()
        time.sleep(1.5)
        code, final = second.stop()
        assert code == 0, second.tail()
    finally:
        pub.disconnect()
        pub.loop_stop()

    restored = [r for r in second.records() if r.get("msg") == "state restored"]
    assert len(restored) == 1, second.tail()
    age = restored[0]["age_s"]
    # windows of 1 s (window = emit_every = 1s): the count each should have, from what was sent
    want: dict[float, int] = {}
    for t in sent:
        end = math.floor(t) + 1.0
        want[end] = want.get(end, 0) + 1
    got: dict[float, int] = {}
    for body in _bodies(aggs):
        end = body["window_end"]
        # at least once: a window may come again after the restore, never with more readings
        assert body["count"] <= want.get(end, 0), (end, body["count"], want.get(end))
        got[end] = max(got.get(end, 0), body["count"])
    missing = sum(want.values()) - sum(got.values())
    print(f"kill -9: {sum(want.values())} readings sent, {missing} missing after the restore "
          f"(checkpoint age at restart {age} s)")
    assert missing >= 0
    # what the first daemon accepted after its last checkpoint: at most one interval + 0.5 s
    assert missing <= rate * (1.0 + 0.5), (missing, age, final)
    assert age < 30
    aggs.close()


# ---- bad state files ---------------------------------------------------------------------------


def _snapshot(**settings) -> bytes:
    engine = ACTIVE.Engine(window=settings.pop("window", 1.0), emit_every=1.0, key_ttl=60.0,
                           **settings)
    for i in range(20):
        engine.push_reading(f"d{i}", "t", float(i), 1000.0 + i * 0.1)
    return engine.snapshot()


def _bad_files() -> dict[str, bytes]:
    good = _snapshot()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    return {
        "empty": b"",
        "truncated": good[:-7],
        "checksum": bytes(flipped),
        "foreign": b"not a state file, just text\n" * 20,
        "version": good[:8] + struct.pack("<I", snapshot_format.VERSION + 1) + good[12:],
        "settings": _snapshot(window=2.0),
    }


@pytest.mark.parametrize("reason", ["empty", "truncated", "checksum", "foreign", "version",
                                    "settings"])
def test_a_bad_state_file_stops_the_daemon_with_exit_code_5(tmp_path, mosquitto, nats_server,
                                                            spawn, reason):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    path = state_dir / STATE_FILE
    path.write_bytes(_bad_files()[reason])
    d = spawn(mosquitto.url, nats_server.url, "--state-dir", str(state_dir))
    d.proc.wait(30)
    assert d.proc.returncode == 5, d.tail()
    errors = [r for r in d.records() if r.get("level") in ("ERROR", "error")]
    assert len(errors) == 1, d.tail()
    assert errors[0]["msg"] == "state file cannot be restored"
    assert errors[0]["file"] == str(path) and errors[0]["reason"] == reason, errors[0]
    assert path.read_bytes() == _bad_files()[reason]   # left as it was, for a look


def test_on_bad_state_fresh_moves_the_file_aside_and_runs(tmp_path, mosquitto, nats_server,
                                                          spawn):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    bad = _bad_files()["checksum"]
    (state_dir / STATE_FILE).write_bytes(bad)
    d = spawn(mosquitto.url, nats_server.url, "--state-dir", str(state_dir),
              "--on-bad-state", "fresh")
    d.wait_up()
    warned = [r for r in d.records() if "moved aside" in str(r.get("msg"))]
    assert len(warned) == 1 and warned[0]["reason"] == "checksum", d.tail()
    aside = list(state_dir.glob(f"{STATE_FILE}.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bad
    assert Path(warned[0]["moved_to"]) == aside[0]
    assert d.stats()["checkpoint"]["bytes"] == 0
    code, final = d.stop()
    assert code == 0, d.tail()
    assert final["checkpoint"]["bad_state_files"] == 1, final
    # the stop wrote a good state file in its place
    snapshot_format.open_snapshot((state_dir / STATE_FILE).read_bytes())
    assert json.dumps(final)


def test_an_unusable_state_dir_is_a_setting_error(tmp_path, mosquitto, nats_server, spawn):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    d = spawn(mosquitto.url, nats_server.url, "--state-dir", str(blocker / "state"))
    d.proc.wait(30)
    assert d.proc.returncode == 2, d.tail()
    errors = [r for r in d.records() if r.get("level") == "error"]
    assert len(errors) == 1 and errors[0]["msg"] == "state_dir cannot be used", d.tail()
