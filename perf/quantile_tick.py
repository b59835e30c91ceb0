"""Tick cost per aggregate with quantiles on, when every pane holds many sensor-like values.

perf/bench_engine.py's q_push_many_tick_* streams give each key one reading per interval, so
each pane's sketch has one bucket. Here 1,000 keys each get `per_pane` readings per 5 s interval
(uniform within +-20 % of the key's own level, drifting 0.1 %/s): after 13 intervals every pane
holds up to ~22 buckets at alpha = 0.01, and a tick merges 12 such panes per key. Timed: the
``tick()`` call that closes an interval (1,000 aggregates), by this thread's CPU time; the figure is
the median over `--ticks` ticks, per aggregate, for quantiles off and on in the same process.

    PYTHONPATH=$PWD .venv/bin/python perf/quantile_tick.py --per-pane 1,100,1000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

T0 = 1_800_000_000.0


def tick_cost(per_pane: int, quantiles: bool, keys: int, ticks: int, seed: int = 1) -> float:
    from telemetry_cy.engine._engine import Engine
    rnd = random.Random(seed)
    kw = dict(quantiles=[0.5, 0.9, 0.99], quantile_accuracy=0.01) if quantiles else {}
    e = Engine(window=60.0, emit_every=5.0, **kw)
    names = [(f"dev-{i:05d}", "temperature") for i in range(keys)]
    levels = [10.0 ** rnd.uniform(0.0, 3.0) for _ in range(keys)]
    push = e.push_reading
    costs = []
    for interval in range(13 + ticks):
        base = T0 + 5.0 * interval
        for step in range(per_pane):
            t = base + 5.0 * step / per_pane
            drift = 1.0 + 0.001 * (t - T0)
            for (d, s), level in zip(names, levels):
                push(d, s, level * drift * rnd.uniform(0.8, 1.2), t)
        t0 = time.thread_time_ns()
        out = e.tick(base + 5.0)
        dt = time.thread_time_ns() - t0
        if interval >= 13:
            if len(out) != keys:
                raise RuntimeError(f"{len(out)} aggregates, want {keys}")
            costs.append(dt / len(out))
        del out
    return statistics.median(costs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-pane", default="1,100,1000")
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=7)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    rows = []
    print(f"{'readings/pane':>14} {'off ns/agg':>11} {'on ns/agg':>10}")
    for n in (int(x) for x in args.per_pane.split(",")):
        off = tick_cost(n, False, args.keys, args.ticks)
        on = tick_cost(n, True, args.keys, args.ticks)
        rows.append({"per_pane": n, "off_ns": off, "on_ns": on})
        print(f"{n:>14,} {off:>11.1f} {on:>10.1f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"keys": args.keys, "ticks": args.ticks, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
