"""How many aggregates per second does the NATS emitter publish, core NATS and JetStream?

Starts a private nats-server (telemetry_cy.tools.local_brokers, free loopback port; a JetStream
stream on ``agg.>`` for the JetStream mode, while core NATS publishes on ``core.>``, which no
stream captures), hands a NatsEmitter ``--batches`` tick batches of ``--keys`` typical aggregates
(perf/bench_wire.py's ``typical_batch``), and times from the first hand-off until every aggregate
is confirmed (``published``: a PONG after it for core NATS, every ack for JetStream). Medians of
``--reps`` runs; JSON with ``-o``::

    PYTHONPATH=$PWD .venv/bin/python perf/emit_rate.py --keys 10000 --batches 5 -o /tmp/emit.json

The rate bounds how many keys one daemon can emit per tick: keys / emit_every must stay well
below it (the NATS thread also shares the GIL with the network thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from bench_wire import typical_batch  # noqa: E402
from telemetry_cy.sink.nats_emitter import NatsEmitter  # noqa: E402
from telemetry_cy.tools.local_brokers import NatsServer  # noqa: E402


def add_stream(url: str) -> None:
    import asyncio

    import nats

    async def run():
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(name="AGG", subjects=["agg.>"], max_msgs=2_000_000)
        finally:
            await nc.close()
    asyncio.run(run())


def tick_batch(keys: int, tick: int) -> list:
    """typical_batch moved to its own tick: JetStream deduplicates on (device, sensor,
    window_end), so batches of the same window would not all be stored."""
    from telemetry_cy.engine._engine import Aggregate
    shift = 5.0 * tick
    return [Aggregate(a.device, a.sensor, a.unit, a.window_start + shift, a.window_end + shift,
                      a.count, a.sum, a.mean, a.min, a.max, a.stddev, a.first, a.last)
            for a in typical_batch(keys, seed=tick)]


def one_run(url: str, jetstream: bool, keys: int, batches: int) -> float:
    em = NatsEmitter(url, subject_prefix="agg" if jetstream else "core", jetstream=jetstream,
                     max_backlog_batches=batches + 1, max_backlog_bytes=1 << 40,
                     flush_timeout=30.0)
    em.start(wait_connected=10, fail_fast=True)
    try:
        work = [tick_batch(keys, i) for i in range(batches)]
        total = keys * batches
        t0 = time.perf_counter()
        for b in work:
            em.submit(b, 0.0)
        deadline = time.monotonic() + 600
        while em.stats()["published"] < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"not published within 600 s: {em.stats()}")
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        s = em.stats()
        if s["drops"]["emit_backlog"]:
            raise SystemExit(f"dropped: {s}")
        return total / elapsed
    finally:
        em.stop(5.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=10_000, help="aggregates per batch")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", default="core,jetstream")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp, NatsServer(tmp) as server:
        add_stream(server.url)
        for mode in args.modes.split(","):
            rates = [one_run(server.url, mode == "jetstream", args.keys, args.batches)
                     for _ in range(args.reps)]
            result[mode] = {"aggregates_per_s": rates, "median": statistics.median(rates)}
            print(f"{mode}: {statistics.median(rates):,.0f} aggregates/s "
                  f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps({
            "keys": args.keys, "batches": args.batches, "result": result,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version(), "load": os.getloadavg()}},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
