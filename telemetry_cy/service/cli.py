"""The ``telemetry-cy`` command."""

from __future__ import annotations

import argparse
import sys

from telemetry_cy import __version__
from telemetry_cy.backend import ACTIVE
from telemetry_cy.capture import cli as capture_cli
from telemetry_cy.service import config


def _duration(text: str) -> float:
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="telemetry-cy",
                                     description="Real-time telemetry processor.")
    # the backend too: a wheel check on a new platform wants to see the compiled modules load
    parser.add_argument("--version", action="version",
                        version=f"telemetry-cy {__version__} ({ACTIVE.name})")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the daemon: MQTT in, window aggregates out to NATS",
                         description="Subscribe to MQTT, keep sliding windows per (device, "
                         "sensor), publish aggregates to NATS. Settings: defaults < --config "
                         "TOML < TELEMETRY_CY_* environment < flags (docs/configuration.md).")
    config.add_arguments(run)
    demo = sub.add_parser("demo", help="the whole pipeline on this machine: private mosquitto "
                          "and nats-server, a simulated fleet, a live view")
    demo.add_argument("--rate", type=float, default=2000, help="messages per second (2000)")
    demo.add_argument("--devices", type=int, default=50, help="simulated devices (50)")
    demo.add_argument("--duration", type=_duration, default=0.0,
                      help="how long to run, e.g. 30s or 5m; 0 runs until Ctrl-C (0)")
    demo.add_argument("--window", type=_duration, default=60.0, help="window (60s)")
    demo.add_argument("--emit-every", type=_duration, default=5.0, help="tick period (5s)")
    demo.add_argument("--quantiles", type=config.parse_quantiles, default=(0.5, 0.9, 0.99),
                      help="quantiles shown per aggregate, out of 0.5, 0.9, 0.99; empty for none "
                      "(0.5,0.9,0.99)")
    demo.add_argument("--show", type=int, default=8, help="aggregates printed per tick (8)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--time", choices=("arrival", "event"), default="arrival",
                      help="event: readings carry their own time; a few devices buffer and "
                      "flush late, one clock runs ahead (arrival)")
    demo.add_argument("--allowed-lateness", type=_duration, default=5.0,
                      help="with --time event: how late a reading may be (5s)")
    demo.add_argument("--scale-out", action="store_true",
                      help="the scale-out deployment instead: a 3-node NATS cluster, 2 run "
                      "instances sharing the MQTT load, 2 merge workers (docs/scale-out.md)")
    demo.add_argument("--plain", action="store_true",
                      help="plain lines instead of the live view (automatic when not a terminal)")
    merge = sub.add_parser("merge", help="scale-out: merge the partials of several run "
                           "instances into the windows of the partitions this worker owns",
                           description="docs/scale-out.md")
    from telemetry_cy.service import merge_worker
    merge_worker.add_arguments(merge)
    capture_cli.add_record_parser(sub)
    capture_cli.add_replay_parser(sub)
    args = parser.parse_args(argv)
    if args.command in ("record", "replay"):
        return args.func(args)
    if args.command == "merge":
        return merge_worker.main(args)
    if args.command == "run":
        try:
            settings = config.load(args)
        except config.ConfigError as exc:
            print(f"telemetry-cy: {exc}", file=sys.stderr)
            return 2
        from telemetry_cy.service import daemon
        return daemon.main(settings)
    if args.scale_out:
        from telemetry_cy.tools import scaleout_demo
        return scaleout_demo.main(args)
    from telemetry_cy.tools import demo as demo_mod
    try:
        return demo_mod.main(args)
    except config.ConfigError as exc:
        print(f"telemetry-cy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
