"""`telemetry-cy demo` runs headless: private brokers, the fleet, the daemon, the subscriber."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.brokers import find_mosquitto, find_nats_server

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(find_mosquitto() is None or find_nats_server() is None,
                    reason="the demo needs mosquitto and nats-server")
def test_demo_runs_headless_and_aggregates_reach_nats():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "telemetry_cy.service.cli", "demo", "--duration", "8", "--rate", "1500",
         "--devices", "20", "--window", "2s", "--emit-every", "1s"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    # not a terminal: plain progress lines, then the summary
    assert any(line.startswith("rate=") for line in lines)
    summary = lines[-1]
    m = re.search(r"received (\d+), readings (\d+), aggregates (\d+), published (\d+), "
                  r"seen by the subscriber (\d+)", summary)
    assert m, summary
    received, readings, aggregates, published, seen = map(int, m.groups())
    assert received > 5000 and readings > 0.9 * received
    assert aggregates > 0 and published == aggregates and seen == published
