"""``telemetry-cy demo --scale-out`` (docs/scale-out.md): the two-phase deployment on this machine.

A private mosquitto, a 3-node nats-server cluster (routes and JetStream on loopback, free
ports), two ``telemetry-cy run --output partials`` instances sharing one ``$share`` subscription,
two ``telemetry-cy merge --own auto`` workers, and a publisher of event-time readings at
``--rate``. One line a second: what the publisher sent, what each instance received, the
partitions each worker owns and the windows it published, and the aggregates seen on ``agg.>``.
Everything stops at ``--duration`` or Ctrl-C, processes first, brokers last.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cbor2
import nats
import paho.mqtt.client as mqtt

from telemetry_cy.tools.local_brokers import Mosquitto
from telemetry_cy.tools.nats_cluster import NatsCluster

PARTITIONS = 8
INSTANCES = 2
WORKERS = 2


def _env() -> dict:
    # the processes import telemetry_cy from where this one did (a checkout or an install)
    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _last_json(path: Path) -> dict:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


class _Counter(threading.Thread):
    """Counts the aggregates on agg.> (its own loop and client)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.count = url, 0
        self.loop = asyncio.new_event_loop()
        self._done = asyncio.Event()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def go() -> None:
            nc = await nats.connect(self.url.split(","))

            async def cb(msg) -> None:
                self.count += 1
            await nc.subscribe("agg.>", cb=cb)
            await self._done.wait()
            await nc.close()
        self.loop.run_until_complete(go())

    def stop(self) -> None:
        """Closes the client before the cluster goes (no reconnect noise)."""
        self.loop.call_soon_threadsafe(self._done.set)
        self.join(5)


def main(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="telemetry-cy-scaleout-"))
    settings = ["--window", f"{args.window}s", "--emit-every", f"{args.emit_every}s",
                "--allowed-lateness", f"{args.allowed_lateness}s"]
    procs: list[subprocess.Popen] = []
    procs_counter: list[_Counter] = []
    print(f"working directory {work}", flush=True)
    with Mosquitto(work / "mosquitto", persistence=False) as broker, \
            NatsCluster(work / "nats") as cluster:
        print(f"mosquitto {broker.url}; NATS cluster {cluster.url}", flush=True)
        cli = [sys.executable, "-m", "telemetry_cy.service.cli"]
        try:
            for i in range(WORKERS):
                err = open(work / f"merge{i}.log", "wb")
                procs.append(subprocess.Popen(
                    [*cli, "merge", "--nats-url", cluster.url, "--worker-id", f"merge{i}",
                     *settings, "--partitions", str(PARTITIONS), "--own", "auto",
                     "--replicas", "3"], stdout=subprocess.DEVNULL, stderr=err, env=_env()))
            for i in range(INSTANCES):
                err = open(work / f"run{i}.log", "wb")
                procs.append(subprocess.Popen(
                    [*cli, "run", "--mqtt-url", broker.url, "--nats-url", cluster.url,
                     "--topic", "$share/demo/site/+/sensor/+", "--time", "event", *settings,
                     "--output", "partials", "--partitions", str(PARTITIONS),
                     "--log-format", "json", "--stats-every", "1s"],
                    stdout=subprocess.DEVNULL, stderr=err, env=_env()))
            counter = _Counter(cluster.url)
            counter.start()
            procs_counter.append(counter)
            time.sleep(2.0)   # the instances subscribe, the workers take their leases
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scaleout-demo-pub")
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            rng = random.Random(args.seed)
            sent, start = 0, time.monotonic()
            next_line = start + 1.0
            while not args.duration or time.monotonic() - start < args.duration:
                due = int((time.monotonic() - start) * args.rate)
                while sent < due:
                    dev = f"dev{rng.randrange(args.devices)}"
                    pub.publish(f"site/{dev}/sensor/temp", cbor2.dumps(
                        {"d": dev, "s": "temp", "v": round(rng.gauss(21, 2), 2),
                         "u": "C", "t": time.time()}), qos=0)
                    sent += 1
                if time.monotonic() >= next_line:
                    next_line += 1.0
                    runs = [_last_json(work / f"run{i}.log") for i in range(INSTANCES)]
                    merges = [_last_json(work / f"merge{i}.log") for i in range(WORKERS)]
                    print(f"sent {sent}  received " + " ".join(
                        str(r.get("received", "-")) for r in runs) + "  workers " + " ".join(
                        f"{m.get('worker', '?')}:own={m.get('own', [])}"
                        f",windows={m.get('published', 0)}" for m in merges)
                        + f"  aggregates on agg.> {counter.count}", flush=True)
                time.sleep(0.005)
            pub.loop_stop()
            pub.disconnect()
        except KeyboardInterrupt:
            pass
        finally:
            for p in reversed(procs):   # instances first (they send `leave`), then workers
                p.terminate()
            for p in reversed(procs):
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
            for c in procs_counter:
                c.stop()
    print(f"stopped; logs in {work}", flush=True)
    return 0
