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
from nats.js.api import DeliverPolicy, KeyValueConfig

from telemetry_cy.backend import ACTIVE
from telemetry_cy.engine._engine_py import Aggregate
from telemetry_cy.engine.pane_merge import PaneMerger
from telemetry_cy.engine.partial_format import PartialError, WindowSettings, window_settings
from telemetry_cy.service import config
from telemetry_cy.sink.bodies import encode_json
from telemetry_cy.sink.partials_stream import (
    STREAM,
    STREAM_MAX_AGE_S,
    STREAM_MAX_BYTES,
    SUBJECT_PREFIX,
    ensure_stream,
)
from telemetry_cy.sink.subjects import msg_id, subject_for

#: KV buckets of automatic ownership: leases (they expire) and the last tick emitted per
#: partition (kept: a new owner reads it to not emit a window twice)
LEASES = "TCY_MERGE_LEASES"
EMITTED = "TCY_MERGE_EMITTED"


class MergeWorker:
    def __init__(self, urls: list[str], worker_id: str, settings: WindowSettings,
                 partitions: int, own: list[int] | None, out_prefix: str = "agg",
                 instance_timeout: float = 10.0, replicas: int = 1,
                 tick_every: float = 0.2, jetstream: bool = False,
                 lease_s: float = 5.0) -> None:
        self.urls, self.worker_id, self.settings = urls, worker_id, settings
        self.partitions, self.out_prefix = partitions, out_prefix
        # None: ownership by leases (docs/scale-out.md, "Ownership and failover")
        self.auto = own is None
        self.own: list[int] = [] if own is None else sorted(own)
        self.replicas, self.tick_every, self.jetstream = replicas, tick_every, jetstream
        self.lease_s = lease_s
        self.merger = PaneMerger(settings, instance_timeout)
        self.bad: dict[str, int] = {}
        self.published = 0
        self.takeovers = 0
        self.last_window_end = 0.0   # event time of the newest window published
        self.snapshot: dict = {}
        self._subs: dict[int, object] = {}
        self._leases: dict[int, int] = {}      # partition -> revision of our lease
        self._saved: dict[int, int] = {}       # partition -> last tick written to EMITTED
        self._next_lease = 0.0
        self._stop = asyncio.Event()

    async def run(self, ready=None) -> None:
        nc = await nats.connect(self.urls, name=f"telemetry-cy merge {self.worker_id}",
                                max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            await ensure_stream(nc, self.replicas)
            js = nc.jetstream()
            if self.auto:
                self._kv = await _bucket(js, LEASES, self.lease_s, self.replicas)
                self._kv_emitted = await _bucket(js, EMITTED, None, self.replicas)
                await self._leasing(js)
            else:
                for p in self.own:
                    await self._subscribe(js, p)
            if ready is not None:
                ready()
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), self.tick_every)
                except asyncio.TimeoutError:
                    pass
                await self._turn(nc)
                if self.auto and time.monotonic() >= self._next_lease:
                    await self._leasing(js)
            await self._turn(nc)
            for sub in list(self._subs.values()):
                await sub.unsubscribe()   # type: ignore[attr-defined]
            if self.auto:
                for p, rev in self._leases.items():   # hand them over now, not at expiry
                    try:
                        await self._kv.delete(f"own.{p}", last=rev)
                    except Exception:  # noqa: BLE001  (expiry frees it anyway)
                        pass
        finally:
            await nc.close()

    async def _subscribe(self, js, p: int) -> None:
        # from the stream's start: a new owner replays what the old one had not merged
        self._subs[p] = await js.subscribe(f"{SUBJECT_PREFIX}.{p}", cb=self._on_msg,
                                           ordered_consumer=True,
                                           deliver_policy=DeliverPolicy.ALL)

    async def _leasing(self, js) -> None:
        """Renews our leases (compare-and-swap on the revision: a lease someone else took is
        lost, never overwritten) and takes free partitions up to a fair share."""
        self._next_lease = time.monotonic() + self.lease_s / 4
        kv = self._kv
        await kv.put(f"worker.{self.worker_id}", b"1")
        for p, rev in list(self._leases.items()):
            try:
                self._leases[p] = await kv.update(f"own.{p}", self.worker_id.encode(), last=rev)
            except Exception:  # noqa: BLE001  (taken by another, or expired: let it go)
                await self._release(p)
        try:
            keys = await kv.keys()
        except Exception:  # noqa: BLE001  (NoKeysError: an empty bucket)
            keys = []
        workers = max(1, sum(k.startswith("worker.") for k in keys))
        share = -(-self.partitions // workers)
        # more than a fair share (a worker joined): hand the extra over; the last tick emitted
        # there is saved already (_turn), so the next owner neither skips nor repeats a window
        for p in sorted(self._leases)[share:]:
            rev = self._leases[p]
            await self._release(p)
            try:
                await kv.delete(f"own.{p}", last=rev)
            except Exception:  # noqa: BLE001  (expiry frees it anyway)
                pass
        for p in range(self.partitions):
            if len(self._leases) >= share:
                break
            if p in self._leases or f"own.{p}" in keys:
                continue
            try:
                rev = await kv.create(f"own.{p}", self.worker_id.encode())
            except Exception:  # noqa: BLE001  (another worker was first)
                continue
            self._leases[p] = rev
            await self._take_over(js, p)
        self.own = sorted(self._leases)

    async def _take_over(self, js, p: int) -> None:
        emitted = None
        try:
            entry = await self._kv_emitted.get(f"p.{p}")
            emitted = int(entry.value)
            self.takeovers += 1
        except Exception:  # noqa: BLE001  (KeyNotFoundError: nobody emitted there yet)
            pass
        self.merger.resume(p, emitted)
        if emitted is not None:
            self._saved[p] = emitted
        await self._subscribe(js, p)

    async def _release(self, p: int) -> None:
        self._leases.pop(p, None)
        sub = self._subs.pop(p, None)
        if sub is not None:
            await sub.unsubscribe()   # type: ignore[attr-defined]
        self.merger.drop(p)

    async def _on_msg(self, msg) -> None:
        try:
            partial = ACTIVE.read_partial(msg.data)   # the compiled reader unless pure
        except PartialError as exc:
            self.bad[exc.reason] = self.bad.get(exc.reason, 0) + 1
            return
        if partial.partitions != self.partitions:
            self.bad["settings"] = self.bad.get("settings", 0) + 1
            return
        if partial.partition not in self._subs:
            return   # delivered just before its partition was handed over: the new owner has it
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
            self.last_window_end = max(self.last_window_end, a.window_end)
        await nc.flush()
        self.snapshot = self.stats()   # replaced whole: what a metrics scrape reads
        if self.auto:
            # after the windows are out: a new owner skips through this tick
            for p, tick in self.merger.emitted().items():
                if p in self._leases and self._saved.get(p) != tick:
                    await self._kv_emitted.put(f"p.{p}", str(tick).encode())
                    self._saved[p] = tick

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        s = self.merger.stats
        return {"worker": self.worker_id, "own": self.own, "partials": s.partials,
                "panes": s.panes, "published": self.published, "incomplete": s.incomplete,
                "stale": s.stale, "gaps": s.gaps, "refused": {**s.refused, **self.bad},
                "instances": len(self.merger.instances), "deaths": s.deaths,
                "takeovers": self.takeovers,
                # how far the newest published window ends behind the wall clock (event time)
                "lag_s": (round(time.time() - self.last_window_end, 3)
                          if self.last_window_end else None)}


async def _bucket(js, name: str, ttl: float | None, replicas: int):
    try:
        return await js.key_value(name)
    except Exception:  # noqa: BLE001  (BucketNotFoundError: the first worker makes it)
        return await js.create_key_value(KeyValueConfig(bucket=name, ttl=ttl, history=1,
                                                        replicas=replicas))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats-url", default="nats://127.0.0.1:4222",
                   help="NATS server URL(s), comma-separated for a cluster")
    p.add_argument("--worker-id", default="", help="this worker's name (logs, stats, leases); "
                   "needed unless --print-nats-config")
    p.add_argument("--window", type=config.parse_duration, default=60.0)
    p.add_argument("--emit-every", type=config.parse_duration, default=5.0)
    p.add_argument("--time", choices=("event",), default="event",
                   help="partials exist in event time only (docs/scale-out.md)")
    p.add_argument("--allowed-lateness", type=config.parse_duration, default=5.0)
    p.add_argument("--quantiles", type=config.parse_quantiles, default=())
    p.add_argument("--quantile-accuracy", type=config.parse_accuracy, default=0.01)
    p.add_argument("--partitions", type=int, default=16, help="partitions in all (16)")
    p.add_argument("--own", default="",
                   help="the partitions this worker merges, e.g. 0-7 or 1,3,5 (all); 'auto': "
                   "by JetStream KV leases shared with the other workers, with failover")
    p.add_argument("--lease", type=config.parse_duration, default=5.0,
                   help="--own auto: a lease's life; a dead worker's partitions move after it "
                   "(5s)")
    p.add_argument("--instance-timeout", type=config.parse_duration, default=10.0)
    p.add_argument("--jetstream", action="store_true",
                   help="publish the aggregates with JetStream acks and Nats-Msg-Id "
                   "<device>|<sensor>|<window_end>")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus /metrics on this loopback port (0 = off)")
    p.add_argument("--print-nats-config", action="store_true",
                   help="print what the NATS side needs (the partials stream) and exit")
    p.add_argument("--replicas", type=int, default=1,
                   help="replicas of the partials stream when this worker creates it (1)")


def parse_own(text: str, partitions: int) -> list[int] | None:
    if text == "auto":
        return None
    if not text:
        return list(range(partitions))
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    if not out or min(out) < 0 or max(out) >= partitions:
        raise ValueError(f"--own {text!r}: partitions are 0..{partitions - 1}")
    return sorted(out)


def nats_config(replicas: int) -> str:
    """What the NATS cluster needs: no subject mapping (instances hash keys to partitions
    themselves), one stream for the partials, two KV buckets that `--own auto` makes itself."""
    return "\n".join([
        "# telemetry-cy scale-out: what the NATS side needs (docs/scale-out.md)",
        "# JetStream on every server; no subject mapping: instances hash keys to partitions.",
        "# The partials stream (created by the first instance or worker if missing):",
        f"nats stream add {STREAM} --subjects '{SUBJECT_PREFIX}.>' --retention limits "
        f"--max-bytes {STREAM_MAX_BYTES} --max-age {int(STREAM_MAX_AGE_S)}s "
        f"--replicas {replicas} --storage file --discard old --dupe-window 2m --defaults",
        "# With --own auto the workers create the KV buckets themselves:",
        f"#   {LEASES} (ttl = --lease), {EMITTED} (no ttl), {replicas} replicas",
        "# With --jetstream, a stream over the aggregates' subjects, e.g.:",
        "nats stream add AGG --subjects 'agg.>' --retention limits --max-age 1h "
        f"--replicas {replicas} --dupe-window 2m --defaults",
    ])


def main(args: argparse.Namespace) -> int:
    if args.print_nats_config:
        print(nats_config(args.replicas))
        return 0
    if not args.worker_id:
        print("telemetry-cy merge: --worker-id is needed", file=sys.stderr)
        return 2
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
                         jetstream=args.jetstream, lease_s=args.lease)

    if args.metrics_port:
        from telemetry_cy.service.merge_metrics import serve
        serve(lambda: worker.snapshot, args.metrics_port)

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
