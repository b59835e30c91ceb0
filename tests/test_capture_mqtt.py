"""Record and replay against real mosquitto brokers (tests/support/brokers.py fixtures).

- The simulated fleet, published with mixed QoS and retain flags by paho, recorded from broker A;
  the capture replayed into a fresh broker B (as fast as possible, and paced) and recorded again:
  the same messages (topic, payload, QoS, retain) in the same order, and the same as published.
  QoS 2 too (its order against QoS 0/1 is mosquitto's to choose: compared per class).
- One feed seen at once by the engine fed live (MqttSource + EngineThread, as the daemon), by the
  recorder and by the real ``mosquitto_sub -F '%U %t %x'``: ``replay(capture, Engine)`` gives the
  live aggregates (as columns, and through Arrow) and drop counts, from the binary capture and
  from the text one. The readings are published in bursts in the middle of each emit interval,
  so the few milliseconds between the processes' arrival times never move a reading into another
  window.
- Rotation by size and by age; SIGTERM (exit 0, everything received is in the file); SIGKILL (the
  capture reads as a prefix, the torn tail reported); a full disk (a small tmpfs in a user
  namespace: one-line error, non-zero exit, the capture readable); an unreachable broker and an
  existing output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from support.brokers import Mosquitto, find_mosquitto, free_port, wait_for
from telemetry_cy.backend import ACTIVE, available, load
from telemetry_cy.capture import replay
from telemetry_cy.capture.binary_reader import SegmentFile
from telemetry_cy.capture.reader import Capture
from telemetry_cy.capture.writer import existing_segments
from telemetry_cy.engine.engine_thread import EngineThread
from telemetry_cy.source.mqtt import MqttSource
from telemetry_cy.tools.fleet_sim import Fleet
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, publish_frame

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "telemetry_cy"]   # the telemetry-cy command


# ---- helpers -------------------------------------------------------------------------------------


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class RecordProc:
    """``telemetry-cy record`` as a process, its output in files."""

    def __init__(self, workdir: Path, url: str, out: Path, *extra: str,
                 topics: tuple[str, ...] = ("site/#",), prefix: list[str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.stdout_path, self.stderr_path = workdir / "rec.out", workdir / "rec.err"
        argv = [*CLI, "record", "--mqtt-url", url, "--out", str(out), *extra]
        for t in topics:
            argv += ["--topic", t]
        self.proc = subprocess.Popen((prefix or []) + argv, cwd=workdir, env=_env(),
                                     stdout=open(self.stdout_path, "wb"),
                                     stderr=open(self.stderr_path, "wb"))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert wait_for(lambda: "recording" in self.stderr() or self.proc.poll() is not None,
                        timeout), "the recorder did not subscribe in time"
        assert self.proc.poll() is None, self.stderr()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, dict | None]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        lines = self.stdout_path.read_text().splitlines()
        return rc, (json.loads(lines[-1]) if lines else None)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def recorders():
    made: list[RecordProc] = []

    def make(*args, **kw) -> RecordProc:
        made.append(RecordProc(*args, **kw))
        return made[-1]

    yield make
    for r in made:
        r.kill()


#: mosquitto sends a QoS 0 message past QoS 1/2 messages that wait for a slot in the subscriber's
#: in-flight window (max_inflight_messages, 20 by default), so only without that limit is the
#: delivery order the publishing order (docs/capture.md, "Order").
IN_ORDER = "max_inflight_messages 0\n"


def _broker(workdir: Path):
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto not found (apt install mosquitto)")
    broker = Mosquitto(workdir, binary=binary, extra_conf=IN_ORDER)
    broker.start()
    return broker


@pytest.fixture
def broker(tmp_path):
    """The broker a feed is recorded from."""
    b = _broker(tmp_path / "broker")
    yield b
    b.kill()


@pytest.fixture
def fresh_broker(tmp_path):
    """A second mosquitto: the fresh broker a capture is replayed into."""
    b = _broker(tmp_path / "fresh")
    yield b
    b.kill()


def messages(path: Path, topic_prefix: bytes = b"site/") -> list:
    return [m for m in Capture(path).messages() if m.topic.startswith(topic_prefix)]


def blocks_in(path: Path) -> int:
    """Blocks in this one segment file (Capture would read the segments after it too)."""
    with open(path, "rb") as f:
        return sum(1 for _ in SegmentFile(f, str(path), []).blocks())


def wait_messages(path: Path, n: int, timeout: float = 30.0) -> list:
    """The capture once it holds n messages under site/ (it is read while being written)."""
    got: list = []

    def enough() -> bool:
        nonlocal got
        got = messages(path) if path.exists() else []
        return len(got) >= n

    assert wait_for(enough, timeout, 0.05), f"{len(got)} of {n} messages in {path}"
    return got


def paho_client(broker, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(0)   # no limit: a limit queues QoS 1 behind later QoS 0
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert wait_for(client.is_connected, 10.0)
    return client


def publish(client: mqtt.Client, items) -> None:
    """(topic, payload, qos, retain) in order; returns once every one is out and acknowledged."""
    infos = [client.publish(t, p, qos=q, retain=r) for t, p, q, r in items]
    assert wait_for(lambda: all(i.is_published() for i in infos), 60.0, 0.05)


def fleet_items(n: int, seed: int, with_qos2: bool = False) -> list[tuple]:
    """The simulated fleet's messages with a QoS and retain mix (malformed payloads included)."""
    out = []
    for i, (topic, payload) in enumerate(Fleet(devices=30, seed=seed).messages(1.7e9, n)):
        qos = 2 if with_qos2 and i % 7 == 3 else (1 if i % 5 == 1 else 0)
        out.append((topic, payload, qos, i % 13 == 0))
    return out


def as_published(items) -> list[tuple]:
    return [(t.encode(), p, q, r) for t, p, q, r in items]


def as_recorded(msgs) -> list[tuple]:
    return [(m.topic, m.payload, m.qos, m.retain) for m in msgs]


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


# ---- record, replay into a fresh broker, record again --------------------------------------------


@pytest.mark.parametrize("speed", ["max", "10"])
def test_replay_into_a_fresh_broker_records_the_same(broker, fresh_broker, recorders, tmp_path,
                                                     speed):
    items = fleet_items(1500, seed=7)
    rec_a = recorders(tmp_path / "a", broker.url, tmp_path / "a.cap")
    rec_a.wait_ready()
    pub = paho_client(broker, "publisher")
    publish(pub, items)
    pub.disconnect()
    first = wait_messages(tmp_path / "a.cap", len(items))
    rc, final = rec_a.stop()
    assert rc == 0, rec_a.stderr()
    assert as_recorded(messages(tmp_path / "a.cap")) == as_published(items)
    assert final["recorded"] == final["received"] == len(items)
    assert final["drops"] == {"ingest_full": 0, "oversize": 0}
    assert sum(i[3] for i in items) > 50 and {i[2] for i in items} == {0, 1}

    rec_b = recorders(tmp_path / "b", fresh_broker.url, tmp_path / "b.cap")
    rec_b.wait_ready()
    done = run_cli("replay", str(tmp_path / "a.cap"), "--mqtt-url", fresh_broker.url,
                   "--speed", speed)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["sent"] == len(items) and result["unacked"] == 0
    assert result["retained"] == sum(i[3] for i in items)
    second = wait_messages(tmp_path / "b.cap", len(items))
    rc, _ = rec_b.stop()
    assert rc == 0
    assert as_recorded(second) == as_recorded(first) == as_published(items)


def test_qos2_replays_with_its_flags(broker, fresh_broker, recorders, tmp_path):
    items = fleet_items(400, seed=8, with_qos2=True)
    rec_a = recorders(tmp_path / "a", broker.url, tmp_path / "a.cap")
    rec_a.wait_ready()
    pub = paho_client(broker, "publisher")
    publish(pub, items)
    pub.disconnect()
    first = wait_messages(tmp_path / "a.cap", len(items))
    assert rec_a.stop()[0] == 0
    rec_b = recorders(tmp_path / "b", fresh_broker.url, tmp_path / "b.cap")
    rec_b.wait_ready()
    done = run_cli("replay", str(tmp_path / "a.cap"), "--mqtt-url", fresh_broker.url,
                   "--speed", "max")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["qos2"] == sum(i[2] == 2 for i in items) > 50
    second = wait_messages(tmp_path / "b.cap", len(items))
    assert rec_b.stop()[0] == 0
    published = as_published(items)
    for got in (as_recorded(first), as_recorded(second)):
        assert sorted(got) == sorted(published)
        # QoS 2 reaches a subscriber after its handshake: in order within each class
        for cls in ((0, 1), (2,)):
            assert [m for m in got if m[2] in cls] == [m for m in published if m[2] in cls]


# ---- one feed: the live engine, the recorder and mosquitto_sub -----------------------------------


def _bursts(broker, rounds: int, per_burst: int) -> int:
    """Fleet readings in bursts at the middle of each second (emit_every 1 s); returns the count."""
    fleet = Fleet(devices=40, seed=5, malformed_share=0.01)
    pub = RawPublisher(broker.host, broker.port, client_id="bursts")
    sent = 0
    try:
        for _ in range(rounds):
            now = time.time()
            time.sleep((int(now) + 1.5 - now) % 1.0)
            frames = [publish_frame(t, p) for t, p in fleet.messages(time.time(), per_burst)]
            pub.send(frames)
            sent += len(frames)
    finally:
        pub.close()
    return sent


def test_capture_through_the_engine_gives_the_live_aggregates(broker, fresh_broker, recorders,
                                                              tmp_path):
    sub_bin = shutil.which("mosquitto_sub")
    if sub_bin is None:
        pytest.skip("mosquitto_sub not found (apt install mosquitto-clients)")
    window, every = 2.0, 1.0
    # the engine fed live, as the daemon feeds it
    engine = ACTIVE.Engine(window=window, emit_every=every)
    ring = ACTIVE.ByteRing(1 << 22)
    live: list = []
    source = MqttSource(ring, broker.url, ["site/+/sensor/+"], qos=1)
    thread = EngineThread(engine, ring, lambda aggs, now: live.extend(aggs))
    thread.start()
    source.start()
    # the recorder and mosquitto_sub (which also takes probes/#: it says nothing when subscribed)
    rec = recorders(tmp_path / "rec", broker.url, tmp_path / "feed.cap",
                    topics=("site/+/sensor/+",))
    text_path = tmp_path / "feed.txt"
    sub = subprocess.Popen([sub_bin, "-h", broker.host, "-p", str(broker.port), "-q", "1",
                            "-t", "site/+/sensor/+", "-t", "probes/#", "-F", "%U %t %x"],
                           stdout=open(text_path, "wb"), stderr=subprocess.DEVNULL)
    try:
        assert source.wait_connected(20.0)
        rec.wait_ready()
        probe = paho_client(broker, "probe")

        def sub_ready() -> bool:
            probe.publish("probes/x", b"", qos=0)
            return text_path.stat().st_size > 0

        assert wait_for(sub_ready, 20.0, 0.1)
        probe.disconnect()
        sent = _bursts(broker, rounds=4, per_burst=300)
        assert wait_for(lambda: source.stats()["written"] >= sent, 30.0)
        recorded = wait_messages(tmp_path / "feed.cap", sent)
        assert wait_for(lambda: sum(1 for m in Capture(text_path).messages()
                                    if m.topic.startswith(b"site/")) >= sent, 30.0)
        # every window that holds a reading closed by the live clock
        last = max(m.ts for m in recorded)
        closing = (int(last // every) + 1) * every + window
        assert wait_for(lambda: (engine_stats := thread.stats()).get("closed_tick") is not None
                        and engine_stats["closed_tick"] >= closing, 30.0, 0.05)
    finally:
        source.stop()
        thread.stop()
        sub.terminate()
        sub.wait(10)
    assert rec.stop()[0] == 0
    live_dicts = [a.as_dict() for a in live]
    live_drops = engine.stats()["drops"]
    assert len(live_dicts) > 100 and live_drops["decode_error"] > 0

    for name in available():
        e = load(name).Engine(window=window, emit_every=every)
        columns = replay(tmp_path / "feed.cap", e)
        assert columns.to_dicts() == live_dicts, name
        assert e.stats()["drops"] == live_drops, name
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            continue
        assert columns.to_arrow().to_pylist() == live_dicts, name   # the notebook's path
    # the same feed as mosquitto_sub printed it: the same messages, the same aggregates
    text_msgs = [m for m in Capture(text_path).messages() if m.topic.startswith(b"site/")]
    assert [(m.topic, m.payload) for m in text_msgs] == [(m.topic, m.payload) for m in recorded]
    assert all(abs(a.ts - b.ts) < 1.0 for a, b in zip(text_msgs, recorded))
    e = ACTIVE.Engine(window=window, emit_every=every)
    assert replay(text_path, e).to_dicts() == live_dicts
    # and the text capture replays into a broker: QoS 0, not retained, as the text says
    rec_b = recorders(tmp_path / "b", fresh_broker.url, tmp_path / "b.cap")
    rec_b.wait_ready()
    done = run_cli("replay", str(text_path), "--mqtt-url", fresh_broker.url, "--speed", "max")
    assert done.returncode == 0, done.stderr
    again = wait_messages(tmp_path / "b.cap", sent)
    assert rec_b.stop()[0] == 0
    assert as_recorded(again) == [(m.topic, m.payload, 0, False) for m in text_msgs]


# ---- rotation, signals, a full disk, bad starts --------------------------------------------------


def _fleet_frames(n: int, seed: int = 3) -> list[bytes]:
    return [publish_frame(t, p) for t, p in Fleet(devices=20, seed=seed).messages(1.7e9, n)]


def _send(broker, frames: list[bytes]) -> None:
    pub = RawPublisher(broker.host, broker.port, client_id=f"load-{time.monotonic_ns()}")
    try:
        pub.send(frames)
    finally:
        pub.close()


def test_rotation_by_size(broker, recorders, tmp_path):
    rec = recorders(tmp_path / "rec", broker.url, tmp_path / "cap", "--rotate-bytes", "8KiB")
    rec.wait_ready()
    frames = _fleet_frames(2000)
    for i in range(0, len(frames), 100):   # several blocks: the recorder flushes between sends
        _send(broker, frames[i:i + 100])
        time.sleep(0.05)
    got = wait_messages(tmp_path / "cap", len(frames))
    rc, final = rec.stop()
    assert rc == 0
    segments = existing_segments(tmp_path / "cap")
    assert len(segments) == final["segments"] >= 3
    assert final["newest"] == str(segments[-1])
    for p in segments:
        assert p.stat().st_size <= 8192 or blocks_in(p) == 1
    expected = [(t.encode(), p) for t, p in Fleet(devices=20, seed=3).messages(1.7e9, 2000)]
    assert [(m.topic, m.payload) for m in got] == expected


def test_rotation_by_age(broker, recorders, tmp_path):
    rec = recorders(tmp_path / "rec", broker.url, tmp_path / "cap", "--rotate-seconds", "300ms")
    rec.wait_ready()
    frames = _fleet_frames(400)
    for i in range(0, len(frames), 100):
        _send(broker, frames[i:i + 100])
        time.sleep(0.4)
    got = wait_messages(tmp_path / "cap", len(frames))
    assert rec.stop()[0] == 0
    # four sends 0.4 s apart span more than 0.3 s: at least one rotation, nothing lost
    assert len(existing_segments(tmp_path / "cap")) >= 2
    assert [m.payload for m in got] == [p for _, p in Fleet(devices=20, seed=3).messages(1.7e9,
                                                                                        400)]


def _signal_mid_flow(broker, recorders, tmp_path, sig: int, total: int, first: int, seed: int):
    """Records ``first`` fleet messages, sends the rest and signals the recorder while they are
    in flight (in the broker, the socket, the ring or the block). Returns the exit code, the
    final counters, the capture and the payloads in the order they were sent."""
    rec = recorders(tmp_path / "rec", broker.url, tmp_path / "cap")
    rec.wait_ready()
    frames = _fleet_frames(total, seed=seed)
    _send(broker, frames[:first])
    wait_messages(tmp_path / "cap", first)
    _send(broker, frames[first:])
    rc, final = rec.stop(sig)
    assert rc == (-sig if sig == signal.SIGKILL else 0), rec.stderr()
    sent = [p for _, p in Fleet(devices=20, seed=seed).messages(1.7e9, total)]
    return final, Capture(tmp_path / "cap"), sent


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_with_everything_received_written(broker, recorders, tmp_path, sig):
    final, cap, sent = _signal_mid_flow(broker, recorders, tmp_path, sig, 3000, 1000, seed=4)
    got = [m.payload for m in cap.messages()]
    assert cap.torn == []
    assert len(got) == final["recorded"] == final["received"] >= 1000
    assert final["unwritten"] == 0 and not any(final["drops"].values())
    assert got == sent[:len(got)]


def test_sigkill_leaves_a_readable_prefix(broker, recorders, tmp_path):
    _, cap, sent = _signal_mid_flow(broker, recorders, tmp_path, signal.SIGKILL, 20000, 2000,
                                    seed=6)
    got = [m.payload for m in cap.messages()]
    assert len(got) >= 2000 and got == sent[:len(got)]
    assert all(t.offset < t.size for t in cap.torn)


def test_full_disk_stops_with_one_line_and_a_readable_capture(broker, tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare not found (util-linux)")
    probe = subprocess.run([unshare, "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.decode().strip()}")
    mnt, keep = tmp_path / "mnt", tmp_path / "keep"
    mnt.mkdir()
    keep.mkdir()
    script = (f'mount -t tmpfs -o size=1m none "{mnt}" || exit 97; '
              f'"$@"; rc=$?; cp "{mnt}"/cap* "{keep}"/; exit $rc')
    rec = RecordProc(tmp_path / "rec", broker.url, mnt / "cap",
                     prefix=[unshare, "-rm", "sh", "-c", script, "sh"])
    try:
        rec.wait_ready()
        frames = _fleet_frames(2000, seed=2)
        # ~70 bytes a message: a few rounds fill 1 MiB; the recorder then stops on its own
        assert wait_for(lambda: _send(broker, frames) or rec.proc.poll() is not None, 120.0,
                        0.1)
        rc, final = rec.stop()
    finally:
        rec.kill()
    assert rc == 5, rec.stderr()
    errors = [ln for ln in rec.stderr().splitlines() if not ln.startswith(
        "telemetry-cy record: recording")]
    assert len(errors) == 1 and "No space left on device" in errors[0], errors
    cap = Capture(keep / "cap")
    got = list(cap.messages())
    assert cap.torn == [] and len(got) == final["recorded"] > 5000
    assert final["received"] == final["recorded"] + final["unwritten"] + sum(
        final["drops"].values())


def test_unreachable_broker(tmp_path):
    done = run_cli("record", "--mqtt-url", f"mqtt://127.0.0.1:{free_port()}", "--topic", "#",
                   "--out", str(tmp_path / "cap"), "--start-timeout", "1s")
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert all(ln.startswith("telemetry-cy record: ") for ln in lines), lines
    assert lines[-1].startswith("telemetry-cy record: not connected and subscribed")
    assert "Connection refused" in lines[-1]
    assert json.loads(done.stdout)["recorded"] == 0
    assert not (tmp_path / "cap").exists()   # nothing recorded, nothing left behind


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "cap").write_bytes(b"precious")
    done = run_cli("record", "--mqtt-url", "mqtt://127.0.0.1:1", "--topic", "#",
                   "--out", str(tmp_path / "cap"))
    assert done.returncode == 2 and "exists" in done.stderr
    assert (tmp_path / "cap").read_bytes() == b"precious"
