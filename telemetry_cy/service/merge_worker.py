"""``telemetry-cy merge``: a merge worker (docs/scale-out.md). Partials in from the JetStream
stream, the windows of its partitions out to ``agg.<device>.<sensor>``.

One asyncio loop, one nats-py client. The worker reads the subjects ``partials.<p>`` of the
partitions it owns from the stream (all of it: a worker that starts replays what is kept, so
nothing in flight is lost while no worker runs), feeds each message to a ``PaneMerger``, and on
every turn of its timer declares silent instances dead, emits the windows made final and
publishes them (JSON, the aggregates' body). Ownership is static here (``--partitions`` and
``--own``); failover between workers is not built yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

import nats
from nats.js.api import DeliverPolicy

from telemetry_cy.engine._engine_py import Aggregate
from telemetry_cy.engine.pane_merge import PaneMerger
from telemetry_cy.engine.partial_format import PartialError, WindowSettings, read, window_settings
from telemetry_cy.service import config
from telemetry_cy.sink.bodies import encode_json
from telemetry_cy.sink.partials_stream import SUBJECT_PREFIX, ensure_stream
from telemetry_cy.sink.subjects import msg_id, subject_for


class MergeWorker:
    def __init__(self, urls: list[str], worker_id: str, settings: WindowSettings,
                 partitions: int, own: list[int], out_prefix: str = "agg",
                 instance_timeout: float = 10.0, replicas: int = 1,
                 tick_every: float = 0.2, jetstream: bool = False) -> None:
        self.urls, self.worker_id, self.settings = urls, worker_id, settings
        self.partitions, self.own, self.out_prefix = partitions, sorted(own), out_prefix
        self.replicas, self.tick_every, self.jetstream = replicas, tick_every, jetstream
        self.merger = PaneMerger(settings, instance_timeout)
        self.bad: dict[str, int] = {}
        self.published = 0
        self._stop = asyncio.Event()

    async def run(self, ready=None) -> None:
        nc = await nats.connect(self.urls, name=f"telemetry-cy merge {self.worker_id}",
                                max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            await ensure_stream(nc, self.replicas)
            js = nc.jetstream()
            subs = []
            for p in self.own:
                subs.append(await js.subscribe(f"{SUBJECT_PREFIX}.{p}", cb=self._on_msg,
                                               ordered_consumer=True,
                                               deliver_policy=DeliverPolicy.ALL))
            if ready is not None:
                ready()
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), self.tick_every)
                except asyncio.TimeoutError:
                    pass
                await self._turn(nc)
            await self._turn(nc)
            for s in subs:
                await s.unsubscribe()
        finally:
            await nc.close()

    async def _on_msg(self, msg) -> None:
        try:
            partial = read(msg.data)
        except PartialError as exc:
            self.bad[exc.reason] = self.bad.get(exc.reason, 0) + 1
            return
        if partial.partition not in self.own or partial.partitions != self.partitions:
            self.bad["settings"] = self.bad.get("settings", 0) + 1
            return
        self.merger.take(partial, time.monotonic())

    async def _turn(self, nc) -> None:
        self.merger.expire(time.monotonic())
        js = nc.jetstream() if self.jetstream else None
        for agg in self.merger.emit():
            a = Aggregate(**agg)
            subject, body = subject_for(self.out_prefix, a.device, a.sensor), encode_json(a)
            if js is None:
                await nc.publish(subject, body)
            else:
                # one id per (key, window): a window a takeover emits again is stored once
                await js.publish(subject, body, headers={
                    "Nats-Msg-Id": msg_id(a.device, a.sensor, a.window_end)})
            self.published += 1
        await nc.flush()

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        s = self.merger.stats
        return {"worker": self.worker_id, "own": self.own, "partials": s.partials,
                "panes": s.panes, "published": self.published, "incomplete": s.incomplete,
                "stale": s.stale, "gaps": s.gaps, "refused": {**s.refused, **self.bad},
                "instances": len(self.merger.instances), "deaths": s.deaths}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats-url", default="nats://127.0.0.1:4222",
                   help="NATS server URL(s), comma-separated for a cluster")
    p.add_argument("--worker-id", required=True, help="this worker's name (logs, stats)")
    p.add_argument("--window", type=config.parse_duration, default=60.0)
    p.add_argument("--emit-every", type=config.parse_duration, default=5.0)
    p.add_argument("--time", choices=("event",), default="event",
                   help="partials exist in event time only (docs/scale-out.md)")
    p.add_argument("--allowed-lateness", type=config.parse_duration, default=5.0)
    p.add_argument("--quantiles", type=config.parse_quantiles, default=())
    p.add_argument("--quantile-accuracy", type=config.parse_accuracy, default=0.01)
    p.add_argument("--partitions", type=int, default=16, help="partitions in all (16)")
    p.add_argument("--own", default="",
                   help="the partitions this worker merges, e.g. 0-7 or 1,3,5 (all)")
    p.add_argument("--instance-timeout", type=config.parse_duration, default=10.0)
    p.add_argument("--jetstream", action="store_true",
                   help="publish the aggregates with JetStream acks and Nats-Msg-Id "
                   "<device>|<sensor>|<window_end>")
    p.add_argument("--replicas", type=int, default=1,
                   help="replicas of the partials stream when this worker creates it (1)")


def parse_own(text: str, partitions: int) -> list[int]:
    if not text:
        return list(range(partitions))
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    if not out or min(out) < 0 or max(out) >= partitions:
        raise ValueError(f"--own {text!r}: partitions are 0..{partitions - 1}")
    return sorted(out)


def main(args: argparse.Namespace) -> int:
    try:
        settings = window_settings(args.window, args.emit_every, args.time,
                                   args.allowed_lateness, args.quantiles or None,
                                   args.quantile_accuracy)
        own = parse_own(args.own, args.partitions)
    except ValueError as exc:
        print(f"telemetry-cy merge: {exc}", file=sys.stderr)
        return 2
    worker = MergeWorker(args.nats_url.split(","), args.worker_id, settings, args.partitions,
                         own, instance_timeout=args.instance_timeout, replicas=args.replicas,
                         jetstream=args.jetstream)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)

        def ready() -> None:
            print(json.dumps({"msg": "ready", **worker.stats()}), file=sys.stderr, flush=True)

        async def stats_line() -> None:
            while True:
                await asyncio.sleep(1.0)
                print(json.dumps({"msg": "stats", **worker.stats()}), file=sys.stderr,
                      flush=True)
        task = asyncio.create_task(stats_line())
        try:
            await worker.run(ready)
        finally:
            task.cancel()
    asyncio.run(go())
    print(json.dumps(worker.stats()), flush=True)
    return 0
