"""What the partial path costs per key and interval (docs/scale-out.md), pure Python.

Builds K panes of one interval (R readings each), then times with the process CPU clock, on the
same data in one run: writing them as one panes message (``partial_format.write``), reading it
back (``read``), and merging the decoded panes of I instances into a ``PaneMerger``, then
emitting the windows (the merge figure is per key and window, all I instances' panes included).
Prints bytes per pane and microseconds per pane for each step (median of --reps).

    python perf/partials_rate.py --keys 20000 --instances 3 --reps 5 [--quantiles]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.pane_merge import PaneMerger
from telemetry_cy.engine.sketch_py import QuantileSketch


def panes(keys: int, readings: int, quantiles: bool, rng: random.Random):
    out = []
    for k in range(keys):
        vals = [rng.uniform(10, 30) for _ in range(readings)]
        mean = sum(vals) / len(vals)
        sk = None
        if quantiles:
            sk = QuantileSketch(0.01)
            sk.add_many(vals)
        out.append(pf.PanePartial(f"dev{k}", "temp", "C", len(vals), sum(vals),
                                  sum((v - mean) ** 2 for v in vals), min(vals), max(vals),
                                  vals[0], 100.1, vals[-1], 100.9, sk))
    return out


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--readings", type=int, default=5, help="readings per pane (5)")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quantiles", action="store_true")
    a = ap.parse_args()
    qs = (0.5, 0.99) if a.quantiles else None
    ws = pf.window_settings(60.0, 5.0, "event", 5.0, qs)
    data = panes(a.keys, a.readings, a.quantiles, random.Random(1))
    msg = pf.write(pf.KIND_PANES, ws, "inst0", 0, 20, 0, 1, data)
    parts = [pf.read(pf.write(pf.KIND_PANES, ws, f"i{i}", 1, 20, 0, 1, data))
             for i in range(a.instances)]
    w, r, m = [], [], []
    for _ in range(a.reps):
        w.append(cpu(lambda: pf.write(pf.KIND_PANES, ws, "inst0", 0, 20, 0, 1, data)))
        r.append(cpu(lambda: pf.read(msg)))

        def merge() -> None:
            merger = PaneMerger(ws)
            for part in parts:   # each instance: its start, its panes, its progress past them
                merger.take(part._replace(seq=0, kind=pf.KIND_PROGRESS, panes=()), 0.0)
                merger.take(part._replace(seq=1), 0.0)
                merger.take(part._replace(seq=2, kind=pf.KIND_PROGRESS, interval=21, panes=()),
                            0.0)
            merger.emit()
        m.append(cpu(merge))
    per = 1e6 / a.keys
    print(json.dumps({
        "keys": a.keys, "readings_per_pane": a.readings, "instances": a.instances,
        "quantiles": a.quantiles, "bytes_per_pane": round(len(msg) / a.keys, 1),
        "write_us_per_pane": round(statistics.median(w) * per, 2),
        "read_us_per_pane": round(statistics.median(r) * per, 2),
        "merge_emit_us_per_key_window": round(statistics.median(m) * per, 2),
    }))


if __name__ == "__main__":
    main()
