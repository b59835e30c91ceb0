"""The ``telemetry-cy`` command."""

from __future__ import annotations

import argparse
import sys
import time

from telemetry_cy import PURE, Engine, config
from telemetry_cy.sim import Fleet


def _demo(args) -> int:
    """An in-process simulated fleet through the engine, printing aggregates as ticks close."""
    eng = Engine(window=args.window, emit_every=args.emit_every)
    fleet = Fleet(devices=args.devices, seed=args.seed)
    impl = "pure Python" if PURE else "compiled"
    print(f"telemetry-cy demo ({impl} engine): {args.devices} devices, {args.rate} msg/s, "
          f"window {args.window:g} s every {args.emit_every:g} s; Ctrl-C stops", flush=True)
    start = time.time()
    step = 0.1
    sent = 0
    try:
        while args.duration <= 0 or time.time() - start < args.duration:
            now = time.time()
            due = int((now - start) * args.rate) - sent
            if due > 0:
                eng.push_many(fleet.payloads(now, due), now)
                sent += due
            aggs = eng.tick(now)
            if aggs:
                _print_tick(aggs, eng.stats(), args.show)
            time.sleep(step)
    except KeyboardInterrupt:
        pass
    stats = eng.stats()
    print(f"done: {stats['received']} payloads, {stats['readings']} readings, "
          f"drops {stats['drops']}", flush=True)
    return 0


def _print_tick(aggs, stats, show: int) -> None:
    end = time.strftime("%H:%M:%S", time.localtime(aggs[-1].window_end))
    print(f"\n[{end}] {len(aggs)} aggregates | live keys {stats['live_keys']} | readings "
          f"{stats['readings']} | drops " + ", ".join(
              f"{k}={v}" for k, v in stats["drops"].items() if v), flush=True)
    print(f"  {'device':<10} {'sensor':<9} {'unit':<4} {'count':>6} {'mean':>10} {'min':>10} "
          f"{'max':>10} {'stddev':>8}")
    for a in sorted(aggs, key=lambda a: (a.device, a.sensor))[:show]:
        print(f"  {a.device:<10} {a.sensor:<9} {a.unit or '':<4} {a.count:>6} {a.mean:>10.3f} "
              f"{a.min:>10.3f} {a.max:>10.3f} {a.stddev:>8.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="telemetry-cy",
                                     description="Real-time telemetry processor.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the daemon: MQTT in, window aggregates out to NATS",
                         description="Subscribe to MQTT, keep sliding windows per (device, "
                         "sensor), publish aggregates to NATS. Settings: defaults < --config "
                         "TOML < TELEMETRY_CY_* environment < flags (docs/configuration.md).")
    config.add_arguments(run)
    demo = sub.add_parser("demo", help="run a simulated fleet through the engine")
    demo.add_argument("--rate", type=int, default=2000, help="payloads per second (2000)")
    demo.add_argument("--devices", type=int, default=50, help="simulated devices (50)")
    demo.add_argument("--duration", type=float, default=0.0,
                      help="seconds to run; 0 runs until Ctrl-C (0)")
    demo.add_argument("--window", type=float, default=60.0, help="window seconds (60)")
    demo.add_argument("--emit-every", type=float, default=5.0, help="tick seconds (5)")
    demo.add_argument("--show", type=int, default=8, help="aggregates printed per tick (8)")
    demo.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "run":
        try:
            settings = config.load(args)
        except config.ConfigError as exc:
            print(f"telemetry-cy: {exc}", file=sys.stderr)
            return 2
        from telemetry_cy import daemon
        return daemon.main(settings)
    try:
        return _demo(args)
    except ValueError as exc:
        print(f"telemetry-cy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
