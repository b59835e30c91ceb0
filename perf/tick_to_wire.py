"""One tick of many keys, from the engine to NATS protocol bytes: how long does it take?

At 1,000,000 live keys a tick emits 1,000,000 aggregates every emit interval (5 s by default),
so the engine's ``tick`` plus the emitter's encoding must stay well inside that interval. This
times, for ``--keys`` keys with every key's panes filled (``--rounds`` intervals of one reading
per key, then the tick that closes the last one):

- ``tick``: ``Engine.tick`` building the Aggregate objects (engine thread);
- ``wire``: what the NATS thread does with them for core NATS (``NatsEmitter._encode_core``:
  the compiled encoder in ``ENCODE_SLICE`` slices);
- ``order`` and ``jetstream_wire``: what it does with them for JetStream: the batch put in
  subject order (``_wire.subject_order``), then HPUB messages with a Nats-Msg-Id header and a
  reply subject each (``_wire.encode_jetstream`` in ``ENCODE_SLICE`` slices, as
  ``TickEncoder.more`` does while the batch is sent);
- ``python_path`` (on a sample of ``--sample`` aggregates, scaled): the per-aggregate
  ``subject_for`` + ``encode_json`` that the emitter used before the compiled encoder, without
  nats-py's ``publish`` per message on top.

Meanwhile a probe thread sleeps 0.5 ms at a time and records its longest wait to run again
(``gil_wait_tick_s``, ``gil_wait_wire_s``, ``gil_wait_order_s``, ``gil_wait_jetstream_s``): how
long another thread (in the daemon, the MQTT network thread) can be kept off the GIL by each step.

Each is repeated ``--reps`` times (a fresh tick each time) and the medians are printed and
written as JSON::

    PYTHONPATH=$PWD .venv/bin/python perf/tick_to_wire.py --keys 1000000 -o /tmp/tick_to_wire.json

Not a pyperf benchmark: one measurement is a whole tick of seconds, and what matters is whether
it fits the emit interval, not a nanosecond trend.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # PYTHONPATH (a snapshot of the package) wins over the working tree
sys.path.insert(0, str(ROOT / "perf"))

from payloads import PayloadSet  # noqa: E402
from telemetry_cy.engine._engine import Engine  # noqa: E402
from telemetry_cy.sink.bodies import encode_json  # noqa: E402
from telemetry_cy.sink.nats_batches import encode_jetstream, subject_order  # noqa: E402
from telemetry_cy.sink.nats_emitter import ENCODE_SLICE, MAX_SUBJECT_BYTES, encode_batch  # noqa: E402
from telemetry_cy.sink.subjects import subject_for  # noqa: E402

EMIT_EVERY = 5.0
WINDOW = 60.0
T0 = 1_800_000_000.0
BATCH = 8192


def feed_interval(engines, ps: PayloadSet, n_keys: int, interval: int) -> None:
    """One reading per key into each engine, spread over emit interval `interval` (also used by
    columns_tick.py)."""
    base = T0 + EMIT_EVERY * interval
    for start in range(0, n_keys, BATCH):
        batch = ps.batch(start, min(BATCH, n_keys - start))
        for e in engines:
            e.push_many(batch, base + EMIT_EVERY * start / n_keys)


def encode_wire(aggregates: list) -> tuple[int, int]:
    n = size = 0
    for i in range(0, len(aggregates), ENCODE_SLICE):
        chunks, encoded, _, _ = encode_batch(aggregates[i:i + ENCODE_SLICE], "agg", "json",
                                             MAX_SUBJECT_BYTES)
        n += encoded
        size += sum(len(c) for c in chunks)
    return n, size


def encode_jetstream_wire(aggregates: list) -> tuple[int, int]:
    n = size = 0
    for i in range(0, len(aggregates), ENCODE_SLICE):
        chunks, _, encoded, _, _ = encode_jetstream(aggregates[i:i + ENCODE_SLICE], "agg", "json",
                                                    MAX_SUBJECT_BYTES, "_INBOX.tick.1", n,
                                                    chunk_messages=2048)
        n += encoded
        size += sum(len(c) for c in chunks)
    return n, size


class GilProbe(threading.Thread):
    """Sleeps 0.5 ms at a time; `longest()` is its longest wait to run again since the last
    call (the sleep included), i.e. how long it waited for the GIL at most."""

    def __init__(self):
        super().__init__(daemon=True)
        self.worst = 0.0
        self.done = threading.Event()

    def run(self):
        clock = time.perf_counter
        while not self.done.is_set():
            t0 = clock()
            time.sleep(0.0005)
            self.worst = max(self.worst, clock() - t0)

    def longest(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


def python_path(aggregates: list) -> int:
    size = 0
    for a in aggregates:
        subject = subject_for("agg", a.device, a.sensor)
        size += len(subject) + len(encode_json(a))
    return size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="intervals fed before the timed ticks")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sample", type=int, default=20_000)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()

    ps = PayloadSet.cached(args.keys, 1)
    engine = Engine(window=WINDOW, emit_every=EMIT_EVERY, max_keys=args.keys + 1)
    interval = 0
    for interval in range(args.rounds):
        feed_interval((engine,), ps, args.keys, interval)
        engine.tick(T0 + EMIT_EVERY * (interval + 1))
    rows = []
    probe = GilProbe()
    probe.start()
    for rep in range(args.reps):
        interval += 1
        feed_interval((engine,), ps, args.keys, interval)
        time.sleep(0.05)
        probe.longest()
        t0 = time.perf_counter()
        aggregates = engine.tick(T0 + EMIT_EVERY * (interval + 1))
        t1 = time.perf_counter()
        time.sleep(0.02)  # the probe wakes and records the wait that ended with the step
        gil_tick = probe.longest()
        t1b = time.perf_counter()
        n, wire_bytes = encode_wire(aggregates)
        t2b = time.perf_counter()
        time.sleep(0.02)
        gil_wire = probe.longest()
        t4 = time.perf_counter()
        ordered = subject_order(aggregates)
        t5 = time.perf_counter()
        time.sleep(0.02)
        gil_order = probe.longest()
        t5b = time.perf_counter()
        n_js, js_bytes = encode_jetstream_wire(ordered)
        t6 = time.perf_counter()
        time.sleep(0.02)
        gil_js = probe.longest()
        sample = aggregates[:args.sample]
        t2 = time.perf_counter()
        python_path(sample)
        t3 = time.perf_counter()
        if len(aggregates) != args.keys or n != args.keys or n_js != args.keys:
            raise SystemExit(f"rep {rep}: {len(aggregates)} aggregates, {n} / {n_js} encoded, "
                             f"want {args.keys}")
        rows.append({"tick_s": t1 - t0, "wire_s": t2b - t1b, "gil_wait_tick_s": gil_tick,
                     "gil_wait_wire_s": gil_wire, "order_s": t5 - t4,
                     "jetstream_wire_s": t6 - t5b, "gil_wait_order_s": gil_order,
                     "gil_wait_jetstream_s": gil_js,
                     "python_path_s": (t3 - t2) * len(aggregates) / len(sample),
                     "wire_bytes": wire_bytes, "jetstream_bytes": js_bytes})
        del aggregates, sample, ordered
        print(f"rep {rep}: tick {t1 - t0:.3f} s, wire {t2b - t1b:.3f} s, JetStream: order "
              f"{t5 - t4:.3f} s + wire {t6 - t5b:.3f} s; longest GIL wait "
              f"{gil_tick * 1e3:.1f} / {gil_wire * 1e3:.1f} / {gil_order * 1e3:.1f} / "
              f"{gil_js * 1e3:.1f} ms, python path (scaled) {rows[-1]['python_path_s']:.3f} s",
              flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    per = {k: med[k] / args.keys * 1e9 for k in ("tick_s", "wire_s", "order_s",
                                                  "jetstream_wire_s", "python_path_s")}
    print(f"{args.keys:,} keys, medians of {args.reps}: tick {med['tick_s']:.3f} s "
          f"({per['tick_s']:.0f} ns/agg), wire {med['wire_s']:.3f} s "
          f"({per['wire_s']:.0f} ns/agg, {med['wire_bytes'] / args.keys:.0f} B/agg), "
          f"tick + wire {med['tick_s'] + med['wire_s']:.3f} s of a {EMIT_EVERY:g} s interval; "
          f"python path {med['python_path_s']:.3f} s ({per['python_path_s']:.0f} ns/agg); "
          f"longest GIL wait of another thread: tick {med['gil_wait_tick_s'] * 1e3:.1f} ms, "
          f"wire {med['gil_wait_wire_s'] * 1e3:.1f} ms; JetStream: order {med['order_s']:.3f} s "
          f"({per['order_s']:.0f} ns/agg, GIL wait {med['gil_wait_order_s'] * 1e3:.1f} ms), "
          f"wire {med['jetstream_wire_s']:.3f} s ({per['jetstream_wire_s']:.0f} ns/agg, "
          f"{med['jetstream_bytes'] / args.keys:.0f} B/agg, GIL wait "
          f"{med['gil_wait_jetstream_s'] * 1e3:.1f} ms)")
    probe.done.set()
    if args.output:
        Path(args.output).write_text(json.dumps({
            "keys": args.keys, "reps": rows, "medians": med, "ns_per_aggregate": per,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "load": os.getloadavg()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
