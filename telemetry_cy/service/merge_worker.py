"""``telemetry-cy merge``: a merge worker (docs/scale-out.md). Partials in from the JetStream
stream, the windows of its partitions out to ``<subject_prefix>.<device>.<sensor>``.

One asyncio loop, one nats-py client. The worker reads the subjects ``partials.<p>`` of the
partitions it owns from the stream, feeds each message to a ``PaneMerger``, and on every turn of
its timer declares silent instances dead, emits the windows made final and publishes them
(JSON, the aggregates' body). Ownership is static (``own`` a list) or by KV leases (``own =
auto``): a partition taken from a previous owner is replayed from the stream position that owner
committed with its last emitted tick (service/replay_floor.py), a partition nobody owned before
from the stream's start (a worker that starts replays what is kept, so nothing in flight is lost
while no worker runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig

from telemetry_cy.backend import ACTIVE
from telemetry_cy.engine.pane_merge import PaneMerger
from telemetry_cy.engine.partial_format import (
    KIND_PANES,
    PartialError,
    WindowSettings,
    window_settings,
)
from telemetry_cy.service import config
from telemetry_cy.service.logs import redact_url
from telemetry_cy.service.replay_floor import ReplayFloor
from telemetry_cy.sink.bodies import encode_json
from telemetry_cy.sink.nats_batches import ENCODE_SLICE, MAX_SUBJECT_BYTES, encode_batch
from telemetry_cy.sink.nats_options import Redactor, connect_options
from telemetry_cy.sink.partials_stream import (
    STREAM,
    STREAM_MAX_AGE_S,
    STREAM_MAX_BYTES,
    SUBJECT_PREFIX,
    ensure_stream,
)
from telemetry_cy.sink.subjects import msg_id, subject_for

#: the active backend's aggregate: what its wire encoder (encode_batch) takes
Aggregate = ACTIVE.Aggregate

#: KV buckets of automatic ownership: leases (they expire) and, per partition, the last tick
#: emitted with the stream position a replay needs (kept: a new owner reads it to emit no window
#: twice and to replay only what was not merged)
LEASES = "TCY_MERGE_LEASES"
EMITTED = "TCY_MERGE_EMITTED"
#: the version of the EMITTED entries' JSON (docs/scale-out.md, "Ownership and failover")
EMITTED_VERSION = 1
#: exit codes of `telemetry-cy merge` (those of `run` where they mean the same)
EXIT_OK, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 2, 3
#: the same NATS error is written to stderr at most once per this many seconds
ERROR_LOG_EVERY_S = 60.0


class NotConnected(Exception):
    """NATS not connected within start_timeout; the message says why (no secret in it)."""


def emitted_entry(tick: int, from_seq: int | None) -> bytes:
    return json.dumps({"v": EMITTED_VERSION, "tick": tick, "from_seq": from_seq},
                      separators=(",", ":")).encode()


def read_emitted_entry(value: bytes) -> tuple[int, int | None]:
    """(tick, from_seq) of an EMITTED entry; ValueError for anything else (a takeover then
    replays from the stream's start: slower, never wrong)."""
    doc = json.loads(value)
    if not isinstance(doc, dict) or doc.get("v") != EMITTED_VERSION:
        raise ValueError(f"not a version {EMITTED_VERSION} entry")
    tick, seq = doc.get("tick"), doc.get("from_seq")
    if type(tick) is not int or not (seq is None or (type(seq) is int and seq >= 1)):
        raise ValueError("bad tick or from_seq")
    return tick, seq


class MergeWorker:
    def __init__(self, urls: list[str], worker_id: str, settings: WindowSettings,
                 partitions: int, own: list[int] | None, out_prefix: str = "agg",
                 instance_timeout: float = 10.0, replicas: int = 1,
                 tick_every: float = 0.2, jetstream: bool = False,
                 lease_s: float = 5.0, connect_opts: dict | None = None,
                 start_timeout: float = 0.0) -> None:
        self.urls, self.worker_id, self.settings = urls, worker_id, settings
        # credentials and TLS (sink/nats_options.connect_options: run's own mechanism); their
        # secrets never reach stderr or the stats
        self.connect_opts = connect_opts or {}
        self._redact = Redactor.of(urls, self.connect_opts)
        self.start_timeout = start_timeout
        self.last_error: str | None = None
        self._logged_errors: dict[str, float] = {}   # error text -> when last written
        self._connected = False
        # the distinct errors before the first connection, in order: what a failed start names
        # (a refused login is followed by the broken pipe of the closed socket: both are said)
        self._start_errors: list[str] = []
        self.partitions, self.out_prefix = partitions, out_prefix
        # None: ownership by leases (docs/scale-out.md, "Ownership and failover")
        self.auto = own is None
        self.own: list[int] = [] if own is None else sorted(own)
        self.replicas, self.tick_every, self.jetstream = replicas, tick_every, jetstream
        self.lease_s = lease_s
        self.merger = PaneMerger(settings, instance_timeout)
        self.bad: dict[str, int] = {}
        self.published = 0
        self.too_large = 0         # windows not published: subject or body too long to send
        self.takeovers = 0
        self.ready_s: float | None = None
        self.replayed = 0          # messages takeover replays read (refused ones included)
        self.replay_from: dict[int, int | None] = {}   # partition -> where its replay began
        self._floors: dict[int, ReplayFloor] = {}      # partition -> its replay floor
        # partitions whose takeover replay has not caught up with the stream: merged as they
        # come, emitted only once caught up (replay_floor.py says why)
        self._replaying: set[int] = set()
        self.last_window_end = 0.0   # event time of the newest window published
        self.snapshot: dict = {}
        self._subs: dict[int, object] = {}
        self._leases: dict[int, int] = {}      # partition -> revision of our lease
        # partition -> (tick, from_seq) last written to EMITTED
        self._saved: dict[int, tuple[int, int | None]] = {}
        self._next_lease = 0.0
        self._stop = asyncio.Event()

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's error callback: every failed connect and later error. Kept as last_error
        and written to stderr, each text at most once per ERROR_LOG_EVERY_S."""
        text = self._redact(str(exc) or type(exc).__name__)
        self.last_error = text
        if not self._connected and text not in self._start_errors:
            self._start_errors.append(text)
        now = time.monotonic()
        if now - self._logged_errors.get(text, -ERROR_LOG_EVERY_S) >= ERROR_LOG_EVERY_S:
            self._logged_errors[text] = now
            print(json.dumps({"msg": "nats error", "worker": self.worker_id, "error": text}),
                  file=sys.stderr, flush=True)

    async def _connect(self):
        """The connected client; None when stopped first. Retries as the reconnects do (nats-py
        never gives up with max_reconnect_attempts -1); NotConnected past start_timeout (> 0)."""
        nc = nats.NATS()
        connecting = asyncio.ensure_future(nc.connect(
            self.urls, name=f"telemetry-cy merge {self.worker_id}", max_reconnect_attempts=-1,
            reconnect_time_wait=0.2, error_cb=self._on_error, **self.connect_opts))
        stopping = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({connecting, stopping}, timeout=self.start_timeout or None,
                                     return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if connecting in done:
            connecting.result()   # a failure nats-py does not retry goes up as it is
            self._connected = True
            return nc
        connecting.cancel()
        try:
            await nc.close()
        except Exception:  # noqa: BLE001  (never connected: nothing to close cleanly)
            pass
        if self._stop.is_set():
            return None
        servers = ",".join(redact_url(u) for u in self.urls)
        raise NotConnected(f"not connected to NATS ({servers}) within start_timeout "
                           f"{self.start_timeout:g} s: "
                           f"{'; '.join(self._start_errors[:5]) or 'no answer'}")

    async def run(self, ready=None) -> None:
        started = time.monotonic()
        nc = await self._connect()
        if nc is None:
            return
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
            # connect to subscribed with the partitions taken (perf/merge_failover.py)
            self.ready_s = round(time.monotonic() - started, 4)
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
                try:   # and no longer counted in the others' fair share
                    await self._kv.delete(f"worker.{self.worker_id}")
                except Exception:  # noqa: BLE001  (expiry removes it anyway)
                    pass
        finally:
            await nc.close()

    async def _subscribe(self, js, p: int, from_seq: int | None = None) -> None:
        # from the previous owner's floor, else from the stream's start
        cfg = (ConsumerConfig(deliver_policy=DeliverPolicy.ALL) if from_seq is None else
               ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                              opt_start_seq=from_seq))

        async def on_msg(msg) -> None:
            if p not in self._subs:
                return   # delivered just before p was handed over: the new owner has it
            meta = msg.metadata
            self.consume(p, msg.data, meta.sequence.stream, meta.num_pending)
        self._subs[p] = await js.subscribe(f"{SUBJECT_PREFIX}.{p}", cb=on_msg,
                                           stream=STREAM, ordered_consumer=True, config=cfg)

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
        try:
            entry = await self._kv_emitted.get(f"p.{p}")
        except Exception:  # noqa: BLE001  (KeyNotFoundError: nobody emitted there yet)
            entry = None
        from_seq = self.resume(p, None if entry is None else (entry.value or b""))
        await self._subscribe(js, p, from_seq)

    def resume(self, p: int, entry: bytes | None) -> int | None:
        """Takes partition p with the previous owner's EMITTED entry (None: there is none,
        nobody emitted there yet). Returns the stream sequence its replay begins at (None: the
        stream's start); until the replay has caught up, p's windows are held (``consume``)."""
        emitted, from_seq = None, None
        if entry:
            self.takeovers += 1
            try:
                emitted, from_seq = read_emitted_entry(entry)
            except ValueError:
                try:   # an entry of a worker before the version: the tick alone
                    emitted = int(entry)
                except ValueError:
                    emitted = None
        self.merger.resume(p, emitted)
        self._floors[p] = ReplayFloor(from_seq)
        if entry is not None:
            self.replay_from[p] = from_seq
            self._replaying.add(p)
        if emitted is not None:
            self._saved[p] = (emitted, from_seq)
        return from_seq

    async def _release(self, p: int) -> None:
        self._leases.pop(p, None)
        sub = self._subs.pop(p, None)
        if sub is not None:
            await sub.unsubscribe()   # type: ignore[attr-defined]
        self.merger.drop(p)
        self._floors.pop(p, None)
        self._replaying.discard(p)

    def consume(self, p: int, data: bytes, seq: int, pending: int) -> None:
        """One message of partition p's subscription: stream sequence ``seq``, ``pending`` more
        after it. A takeover replay has consumed it whether it is merged or refused: a refused
        message is counted (``refused``) and still moves the replay on, so a replay whose last
        message is refused has caught up, and p's windows go out at the next turn instead of
        waiting for the next valid message."""
        if p in self._replaying:
            self.replayed += 1
            if not pending:
                self._replaying.discard(p)   # caught up: its windows may go out again
        try:
            partial = ACTIVE.read_partial(data)   # the compiled reader unless pure
        except PartialError as exc:
            self._refuse(exc.reason)
            return
        if partial.partitions != self.partitions:
            self._refuse("settings")
            return
        if partial.partition != p:
            # on another partition's subject: no instance writes that (it publishes each
            # message on its own partition's subject); merged, it would corrupt p's floor
            self._refuse("malformed")
            return
        self._take(partial, seq)

    def _refuse(self, reason: str) -> None:
        self.bad[reason] = self.bad.get(reason, 0) + 1

    def windows(self) -> list[dict]:
        """The windows made final since the last call, but none of a partition whose takeover
        replay has not caught up yet (replay_floor.py says why)."""
        return self.merger.emit(hold=self._replaying)

    def _take(self, partial, seq: int) -> None:
        floor = self._floors.get(partial.partition)
        if floor is not None:
            floor.note(partial.instance,
                       partial.interval if partial.kind == KIND_PANES else None, seq)
        self.merger.take(partial, time.monotonic())

    async def _turn(self, nc) -> None:
        self.merger.expire(time.monotonic())
        aggs = [Aggregate(**agg) for agg in self.windows()]
        if self.jetstream:
            js = nc.jetstream()
            for a in aggs:
                # one id per (key, window): a window a takeover emits again is stored once
                await js.publish(subject_for(self.out_prefix, a.device, a.sensor),
                                 encode_json(a),
                                 headers={"Nats-Msg-Id": msg_id(a.device, a.sensor,
                                                                a.window_end)})
                self.published += 1
        else:
            await self._publish(nc, aggs)
        if aggs:
            self.last_window_end = max(self.last_window_end, max(a.window_end for a in aggs))
        await nc.flush()
        self.snapshot = self.stats()   # replaced whole: what a metrics scrape reads
        if self.auto:
            # after the windows are out: a new owner skips through this tick and replays from
            # the floor (the lowest stream position still needed)
            for p in self._leases:
                floor = self._floors.get(p)
                if floor is None or p in self._replaying:
                    continue
                tick, live, loss_pending = self.merger.replay_needs(p)
                if tick is None:
                    continue
                saved = (tick, floor.floor(tick, self.settings.panes, live, loss_pending))
                if self._saved.get(p) != saved:
                    await self._kv_emitted.put(f"p.{p}", emitted_entry(*saved))
                    self._saved[p] = saved

    async def _publish(self, nc, aggs: list) -> None:
        """Core NATS: the windows as ready PUB protocol chunks by the emitter's wire encoder
        (sink/nats_batches.py; bodies as bodies.encode_json), put on the client's write queue:
        one encode and one write a chunk, not a publish() a window (most of the worker's time
        went there: docs/performance.md, "The merge worker's cost per pane")."""
        for i in range(0, len(aggs), ENCODE_SLICE):
            chunks, encoded, too_large, _ = encode_batch(
                aggs[i:i + ENCODE_SLICE], self.out_prefix, "json", MAX_SUBJECT_BYTES,
                max_body_bytes=nc.max_payload)
            self.published += encoded
            # a subject or body the server would close the connection on: counted, not sent
            self.too_large += too_large
            for chunk in chunks:
                await nc._send_command(chunk)
            if nc._flush_queue.empty():   # as nats-py's publish() does: wake its writer
                await nc._flush_pending()

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        s = self.merger.stats
        return {"worker": self.worker_id, "own": self.own, "partials": s.partials,
                "panes": s.panes, "published": self.published, "too_large": self.too_large,
                "incomplete": s.incomplete,
                "stale": s.stale, "gaps": s.gaps, "refused": {**s.refused, **self.bad},
                "instances": len(self.merger.instances), "deaths": s.deaths,
                "takeovers": self.takeovers, "replayed": self.replayed,
                "replay_from": {str(p): seq for p, seq in sorted(self.replay_from.items())},
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
    """The settings of config.MERGE (TOML, TELEMETRY_CY_*, flags: docs/configuration.md), and
    one action of its own."""
    config.add_arguments(p, config.MERGE)
    p.add_argument("--print-nats-config", action="store_true",
                   help="print what the NATS side needs (the partials stream) and exit")


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
        f"#   {LEASES} (ttl = lease), {EMITTED} (no ttl), {replicas} replicas",
        "# With --jetstream, a stream over the aggregates' subjects, e.g.:",
        "nats stream add AGG --subjects 'agg.>' --retention limits --max-age 1h "
        f"--replicas {replicas} --dupe-window 2m --defaults",
    ])


def main(args: argparse.Namespace) -> int:
    try:
        c: config.MergeConfig = config.load(args, command=config.MERGE)
    except config.ConfigError as exc:
        print(f"telemetry-cy merge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_nats_config:
        print(nats_config(c.nats.replicas))
        return 0
    if not c.worker.worker_id:
        print("telemetry-cy merge: setting worker_id is needed (--worker-id)", file=sys.stderr)
        return EXIT_CONFIG
    w = c.windows
    settings = window_settings(w.window, w.emit_every, w.time, w.allowed_lateness,
                               w.quantiles or None, w.quantile_accuracy)
    worker = MergeWorker(c.nats.servers, c.worker.worker_id, settings, c.worker.partitions,
                         c.worker.own_partitions, out_prefix=c.nats.subject_prefix,
                         instance_timeout=c.worker.instance_timeout, replicas=c.nats.replicas,
                         jetstream=c.nats.jetstream, lease_s=c.worker.lease,
                         connect_opts=connect_options(c.nats.servers, **c.nats.auth),
                         start_timeout=c.operations.start_timeout)

    if c.operations.port:
        from telemetry_cy.service.merge_metrics import serve
        serve(lambda: worker.snapshot, c.operations.port, c.operations.host)

    # asyncio warns on every TLS connection nats-py closes after a refusal ("returning true
    # from eof_received() has no effect when using ssl"): noise beside the error lines above
    logging.getLogger("asyncio").setLevel(logging.ERROR)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)

        def ready() -> None:
            print(json.dumps({"msg": "ready", "ready_s": worker.ready_s, **worker.stats()}),
                  file=sys.stderr, flush=True)

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
    code = EXIT_OK
    try:
        asyncio.run(go())
    except NotConnected as exc:
        print(f"telemetry-cy merge: {exc}", file=sys.stderr, flush=True)
        code = EXIT_UNREACHABLE
    print(json.dumps(worker.stats()), flush=True)
    return code
