"""`telemetry-cy run` as a process, and the checks the fault tests make on it.

``DaemonProc`` runs one daemon with its stdout and stderr in files (a pipe that nobody reads would
block its logging) and follows it through its JSON stats line; the ``spawn`` fixture starts
daemons and kills what is left at teardown. ``assert_balanced`` is the balance rules of
docs/architecture.md on the final counters; ``payload``, ``paho_publisher`` and ``publish_all``
make and send the load; ``seen_keys`` and ``log_lines`` read what came out.

A pytest plugin (``tests/conftest.py`` lists it in ``pytest_plugins``, for ``spawn``); test modules
import the rest from here.
"""

from __future__ import annotations

import json
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
from telemetry_cy.backend import ACTIVE
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.sink.subjects import parse_subject

#: the checkout under test: daemons import telemetry_cy from here (PYTHONPATH), whatever the cwd
REPO = Path(__file__).resolve().parents[2]

#: For a test whose load is sized for the compiled pipeline. A daemon runs the backend this process
#: has (it inherits TELEMETRY_CY_PURE); on the pure-Python twins it handles several times fewer
#: messages a second, so at such rates it drops (ingest_full, late) what the test says it keeps.
compiled_rates = pytest.mark.skipif(
    not ACTIVE.compiled,
    reason="load sized for the compiled pipeline; the daemon would run the pure-Python twins")


# ---- the daemon as a process ---------------------------------------------------------------------


class DaemonProc:
    """One ``telemetry-cy run`` process; stdout and stderr go to files in ``workdir``."""

    def __init__(self, workdir: Path, mqtt_url: str, nats_url: str, *extra: str,
                 name: str = "daemon", topic: str = "site/+/sensor/+", qos: str = "1",
                 window: str = "1s", emit_every: str = "1s", env: dict | None = None):
        self.name = name
        self.out_path = Path(workdir) / f"{name}.stdout"
        self.err_path = Path(workdir) / f"{name}.stderr"
        self.cmd = [sys.executable, "-m", "telemetry_cy.service.cli", "run", "--mqtt-url", mqtt_url,
                    "--nats-url", nats_url, "--topic", topic, "--qos", qos,
                    "--window", window, "--emit-every", emit_every, "--key-ttl", "60s",
                    "--stats-every", "250ms", "--log-format", "json",
                    "--shutdown-deadline", "5s", *extra]
        self.env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep
                        + os.environ.get("PYTHONPATH", ""), **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "DaemonProc":
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err, env=self.env,
                                         cwd=REPO, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- what it says --

    def stderr_text(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def records(self) -> list[dict]:
        out = []
        for line in self.stderr_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def stats(self) -> dict | None:
        """The latest stats line, or None."""
        lines = [r for r in self.records() if r.get("msg") == "stats"]
        return lines[-1] if lines else None

    def wait_stats(self, pred, timeout: float) -> dict | None:
        """Polls the stats lines until ``pred(latest)`` holds; the line, or None on timeout or
        when the process ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            s = self.stats()
            if s is not None and pred(s):
                return s
            time.sleep(0.05)
        return None

    def wait_up(self, timeout: float = 20.0) -> dict:
        s = self.wait_stats(lambda s: s.get("mqtt") == "up" and s.get("nats") == "up", timeout)
        assert s is not None, f"{self.name} did not come up:\n{self.stderr_text()[-3000:]}"
        return s

    def tail(self) -> str:
        return self.stderr_text()[-3000:]

    # -- ending it --

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> tuple[int, dict]:
        """Signal, wait, and return (exit code, final counters from stdout)."""
        if self.running():
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} did not stop within {timeout} s:\n{self.tail()}")
        lines = [line for line in self.stdout_text().splitlines() if line.strip()]
        assert lines, f"{self.name} printed no final counters (exit {self.proc.returncode}):\n" \
                      f"{self.tail()}"
        return self.proc.returncode, json.loads(lines[-1])

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def cleanup(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait(10)

    def rss_bytes(self) -> int:
        """Resident set size of the process (VmRSS), 0 when it is gone."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


@pytest.fixture
def spawn(tmp_path):
    """spawn(mqtt_url, nats_url, *flags, **kw) starts a daemon; leftovers are killed at teardown."""
    procs: list[DaemonProc] = []

    def make(mqtt_url, nats_url, *extra, **kw):
        kw.setdefault("name", f"daemon{len(procs)}")
        d = DaemonProc(tmp_path, mqtt_url, nats_url, *extra, **kw).start()
        procs.append(d)
        return d

    yield make
    for d in procs:
        d.cleanup()


# ---- balance and helpers -------------------------------------------------------------------------


def assert_balanced(final: dict, one_reading_per_payload: bool = True) -> None:
    """The three balance rules of docs/architecture.md on the final counters."""
    d = final["drops"]
    assert final["received"] == (final["payloads"] + d["oversize"] + d["decode_error"]
                                 + d["ingest_full"]), final
    if one_reading_per_payload:
        assert final["payloads"] == (final["readings"] + d["schema_mismatch"] + d["non_finite"]
                                     + d["key_limit"] + d["late"] + d["future"]
                                     + d["sketch_full"]), final
    assert final["aggregates"] == final["published"] + d["emit_backlog"] + final["backlog"], final
    assert final["backlog"] == 0, final


def payload(device: str, sensor: str = "t", value: float = 1.0, **more) -> bytes:
    return cbor2.dumps({"d": device, "s": sensor, "v": value, **more})


def paho_publisher(broker, client_id: str, persistent: bool = False) -> mqtt.Client:
    """A paho QoS 1 publisher on its own loop thread; with ``persistent`` it keeps its session
    (clean_session=False), so in-flight QoS 1 messages are resent after a broker restart."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311, clean_session=not persistent)
    client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
    client.max_inflight_messages_set(100)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert wait_for(client.is_connected, 10.0), "publisher did not connect"
    return client


def publish_all(client: mqtt.Client, items, qos: int = 1, rate: float = 0.0,
                deadline_s: float = 60.0) -> None:
    """Publishes (topic, payload) items with QoS 1, riding out broker restarts: while the broker is
    away it waits, and a publish refused for lack of a connection is sent again afterwards.
    Returns once the broker acknowledged every message (or raises after deadline_s)."""
    infos = []
    start = time.monotonic()
    end = start + deadline_s
    for n, (topic, body) in enumerate(items):
        while True:
            if time.monotonic() > end:
                raise AssertionError("publishing did not finish in time")
            if not client.is_connected():
                time.sleep(0.01)
                continue
            info = client.publish(topic, body, qos=qos)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                infos.append(info)
                break
            time.sleep(0.01)
        if rate:
            ahead = (n + 1) / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def all_acked() -> bool:
        return all(i.is_published() for i in infos)

    assert wait_for(all_acked, max(1.0, end - time.monotonic()), 0.05), \
        f"{sum(not i.is_published() for i in infos)} QoS 1 messages never acknowledged"


def seen_keys(sub: NatsSubscriber, prefix: str = "agg") -> dict[tuple[str, str], int]:
    """(device, sensor) -> sum of the aggregate counts received, checking each subject."""
    out: dict[tuple[str, str], int] = {}
    for msg in list(sub.msgs):
        body = decode_body("json", msg.data)
        key = (body["device"], body["sensor"])
        assert parse_subject(prefix, msg.subject) == key, msg.subject
        out[key] = out.get(key, 0) + body["count"]
    return out


def log_lines(d: DaemonProc, text: str) -> list[dict]:
    return [r for r in d.records() if text in str(r.get("msg", ""))]
