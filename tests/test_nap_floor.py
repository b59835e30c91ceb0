"""perf/yardstick/nap_floor.c, the floor the wake-ups rig measures the daemon against
(docs/performance.md, "Sixth step"): it must subscribe and count every message it receives.
If it counted wrongly, its CPU per message would be a wrong floor. Against a real mosquitto."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from support.c_build import compile_c, need_cc
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, publish_frame

SOURCE = Path(__file__).resolve().parent.parent / "perf" / "yardstick" / "nap_floor.c"


@pytest.fixture(scope="module")
def nap_floor(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("nap_floor") / "nap_floor"
    built = compile_c(need_cc(), exe, [SOURCE], ["-O2", "-Wall", "-Wextra", "-Werror"])
    assert built.returncode == 0, built.stderr
    return exe


def _count(path: Path) -> int:
    data = path.read_bytes()[:8]
    return struct.unpack("<Q", data)[0] if len(data) == 8 else 0


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_counts_every_publish_in_bursts_and_trickles(nap_floor, mosquitto, tmp_path):
    counter = tmp_path / "count"
    proc = subprocess.Popen([str(nap_floor), str(mosquitto.port), "floor/#", str(counter), "4"],
                            stderr=subprocess.PIPE, text=True)
    try:
        pub = RawPublisher(mosquitto.host, mosquitto.port, client_id="floor-test")
        try:
            # probes until the subscription is in place; from then on every message must count
            probe = publish_frame("floor/probe", b"p")

            def subscribed() -> bool:
                pub.send([probe])
                return counter.exists() and _count(counter) > 0

            assert _wait_for(subscribed, 10), "no probe arrived"
            time.sleep(0.2)   # probes still in flight arrive
            base = _count(counter)
            # a burst (the nap path: dense traffic), frames of several sizes, one over 127
            # bytes (a two-byte remaining length), then a trickle (the poll path)
            burst = [publish_frame(f"floor/d{i % 7}", bytes(i % 300)) for i in range(3000)]
            pub.send(burst)
            for i in range(20):
                pub.send([publish_frame("floor/slow", b"x" * i)])
                time.sleep(0.01)
            assert _wait_for(lambda: _count(counter) - base >= 3020, 20)
            time.sleep(0.05)
            assert _count(counter) - base == 3020
        finally:
            pub.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_calibrate_reports_a_syscall_and_a_nap(nap_floor):
    out = subprocess.run([str(nap_floor), "--calibrate", "1"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["nap_ms"] == 1
    assert figures["syscall_ns"] > 0 and figures["nap_cpu_us"] > 0
