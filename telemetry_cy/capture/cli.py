"""The ``record`` and ``replay`` subcommands of ``telemetry-cy`` (service/cli.py adds them).

Each ``add_*_parser(subparsers)`` adds its subcommand and sets ``func`` to its ``run_*`` function,
which takes the parsed arguments and returns the exit code. Both print one JSON object on stdout
when they end (the counters), and a one-line error on stderr when they fail.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from telemetry_cy.service.config import parse_duration, parse_size

EXIT_SIGNAL_TWICE = 130   # a second SIGINT/SIGTERM: no flush, exit at once (as the daemon)


def _typed(parse):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = 0.0
    if not speed > 0 or speed == float("inf"):
        raise argparse.ArgumentTypeError(f"speed must be a number > 0 (1 = real time) or max, "
                                         f"got {text!r}")
    return speed


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum, frame) -> None:
        if stop.is_set():
            os._exit(EXIT_SIGNAL_TWICE)
        stop.set()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def _log_as(command: str) -> None:
    """Warnings of the parts (a lost connection, a reconnect) as lines like our own."""
    import logging
    logging.basicConfig(format=f"telemetry-cy {command}: %(message)s", level=logging.WARNING,
                        stream=sys.stderr)


def _fail(command: str, message: str) -> None:
    print(f"telemetry-cy {command}: {message}", file=sys.stderr, flush=True)


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, separators=(",", ":")), flush=True)


# ---- record --------------------------------------------------------------------------------------


def add_record_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "record", help="record a live MQTT feed into a capture file (docs/capture.md)",
        description="Subscribe to MQTT and write every message (arrival time, topic, payload, "
        "QoS, retain) into a capture: FILE, then FILE.1, FILE.2, ... when it rotates (the "
        "highest number is the newest). Stops cleanly on SIGINT/SIGTERM and prints its counters "
        "as one JSON line.")
    p.add_argument("--mqtt-url", required=True,
                   help="mqtt://[user[:pass]@]host[:port] or mqtts://...")
    p.add_argument("--topic", action="append", required=True,
                   help="topic filter (repeat for several)")
    p.add_argument("--out", required=True, metavar="FILE", help="the capture file")
    p.add_argument("--rotate-bytes", type=_typed(parse_size), default=0, metavar="N",
                   help="start a new segment before one would pass N bytes, e.g. 256MiB (0: never)")
    p.add_argument("--rotate-seconds", type=_typed(parse_duration), default=0.0, metavar="S",
                   help="start a new segment when one is S old, e.g. 1h (0: never)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing capture of that name (and its segments)")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5",
                   help="MQTT version (5: retain flags as published; 3.1.1: only for the "
                   "retained messages sent at subscribe time)")
    p.add_argument("--client-id", default=None)
    p.add_argument("--max-payload-bytes", type=_typed(parse_size), default=1 << 20,
                   help="larger messages are dropped and counted as oversize (1MiB)")
    p.add_argument("--ring-bytes", type=_typed(parse_size), default=64 << 20,
                   help="ingest ring between the network thread and the writer (64MiB)")
    p.add_argument("--start-timeout", type=_typed(parse_duration), default=10.0,
                   help="give up when not connected and subscribed by then (10s)")
    p.add_argument("--ca-file")
    p.add_argument("--cert-file")
    p.add_argument("--key-file")
    p.add_argument("--insecure", action="store_true", help="TLS without server verification")
    p.set_defaults(func=run_record)
    return p


def run_record(args: argparse.Namespace) -> int:
    from telemetry_cy.capture.recorder import EXIT_USAGE, Recorder

    _log_as("record")
    tls = {k: v for k, v in (("ca_file", args.ca_file), ("cert_file", args.cert_file),
                             ("key_file", args.key_file)) if v}
    if args.insecure:
        tls["insecure"] = True
    try:
        recorder = Recorder(args.mqtt_url, args.topic, args.out, rotate_bytes=args.rotate_bytes,
                            rotate_seconds=args.rotate_seconds, overwrite=args.overwrite,
                            ring_bytes=args.ring_bytes, max_payload_bytes=args.max_payload_bytes,
                            protocol=5 if args.protocol == "5" else 4, client_id=args.client_id,
                            **tls)
    except (ValueError, OSError) as exc:
        _fail("record", str(exc))
        return EXIT_USAGE
    stop = threading.Event()
    _stop_on_signals(stop)

    def ready() -> None:
        # the one line a person (or a script) waits for before publishing
        print(f"telemetry-cy record: recording {','.join(args.topic)} from "
              f"{recorder.source.url} into {args.out}", file=sys.stderr, flush=True)

    code = recorder.run(stop, args.start_timeout, on_ready=ready)
    if recorder.error:
        _fail("record", recorder.error)
    _print_json(recorder.counters())
    return code


# ---- replay --------------------------------------------------------------------------------------


def add_replay_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "replay", help="republish a capture into an MQTT broker",
        description="Publish the messages of a capture (a telemetry-cy capture and its segments, "
        "or mosquitto_sub -F '%%U %%t %%x' text) with their QoS and retain flags, spaced as they "
        "arrived (divided by --speed) or as fast as the broker takes them (--speed max).")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--mqtt-url", required=True,
                   help="mqtt://host[:port] (plain MQTT without credentials)")
    p.add_argument("--speed", type=_speed, default=1.0,
                   help="1 = as recorded, 10 = ten times faster, max = as fast as possible (1)")
    p.add_argument("--client-id", default=None)
    p.set_defaults(func=run_replay)
    return p


def run_replay(args: argparse.Namespace) -> int:
    import uuid

    from telemetry_cy.capture.format import CaptureError
    from telemetry_cy.capture.reader import Capture
    from telemetry_cy.capture.replay_mqtt import AckingPublisher, Replayer
    from telemetry_cy.source.mqtt import parse_url

    _log_as("replay")
    try:
        tls, host, port, user, _password = parse_url(args.mqtt_url)
        if tls or user is not None:
            raise ValueError("replay publishes over plain mqtt:// without credentials (a tool "
                             "for a test or lab broker)")
        capture = Capture(args.file)
    except (ValueError, OSError) as exc:
        _fail("replay", str(exc))
        return 2
    client_id = args.client_id or f"telemetry-cy-replay-{uuid.uuid4().hex[:8]}"
    try:
        publisher = AckingPublisher(host, port, client_id)
    except (OSError, ConnectionError) as exc:
        _fail("replay", f"cannot connect to {host}:{port}: {exc}")
        return 3
    stop = threading.Event()
    _stop_on_signals(stop)
    replayer = Replayer(publisher, args.speed, stop)
    code = 0
    try:
        replayer.run(capture)
    except CaptureError as exc:
        _fail("replay", f"{exc} (the messages before it were sent)")
        code = 1
    except (OSError, ConnectionError) as exc:
        _fail("replay", f"the broker connection failed: {exc}")
        code = 3
    finally:
        publisher.close()
    for torn in capture.torn:
        _fail("replay", f"warning: {torn}")
    _print_json(replayer.result.as_dict())
    return code

