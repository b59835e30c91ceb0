"""What the scale-out rigs share (perf/merge_failover.py, perf/scaleout_capacity.py): the
machine and its load, a 3-node loopback NATS cluster with the partials stream, and the window
settings both sides of a measurement use.

The machine is shared: ``Load`` reads /proc/stat around a measurement and says how many cores
were busy in all (ours included) and the load average, so a figure can be put next to what else
ran (docs/scale-out.md quotes both).
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import time
from pathlib import Path

import nats
from nats.js.api import RetentionPolicy, StreamConfig

from telemetry_cy.sink.partials_stream import STREAM, STREAM_MAX_AGE_S, SUBJECT_PREFIX
from telemetry_cy.tools.local_brokers import find_nats_server
from telemetry_cy.tools.nats_cluster import NatsCluster

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    cpu = family = model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "Model name":
            cpu = value
        elif key == "CPU family":
            family = value
        elif key == "Model":
            model = value
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "family": family, "model": model, "nproc": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(),
            "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _busy_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Load:
    """Busy cores of the whole machine between start() and stop(), and the load averages."""

    def start(self) -> "Load":
        self._t0, self._b0 = time.monotonic(), _busy_ticks()
        return self

    def stop(self) -> dict:
        b1 = _busy_ticks()
        busy, total = b1[0] - self._b0[0], b1[1] - self._b0[1]
        return {"busy_cores": round((os.cpu_count() or 1) * busy / max(1, total), 2),
                "loadavg": [round(x, 2) for x in os.getloadavg()]}


def start_cluster(workdir: Path, replicas: int = 3) -> NatsCluster:
    binary = find_nats_server()
    if binary is None:
        raise SystemExit("nats-server not found")
    cluster = NatsCluster(workdir, binary=binary).start()
    asyncio.run(make_stream(cluster.urls[0], replicas))
    return cluster


async def make_stream(url: str, replicas: int, name: str = STREAM,
                      prefix: str = SUBJECT_PREFIX) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            await js.delete_stream(name)
        except Exception:  # noqa: BLE001  (not there yet)
            pass
        await js.add_stream(StreamConfig(
            name=name, subjects=[f"{prefix}.>"], retention=RetentionPolicy.LIMITS,
            max_bytes=1 << 30, max_age=STREAM_MAX_AGE_S, num_replicas=replicas))
    finally:
        await nc.close()


def cli(*args: str) -> list[str]:
    import sys
    return [sys.executable, "-m", "telemetry_cy.service.cli", *args]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
