"""Read rate of the partial format: the compiled reader (``_partial.read``, includes/tc_partial.h)
against the pure one (``partial_format.read``), in one run (docs/performance.md, "Reading
partials"; docs/scale-out.md, the merge worker's read cost).

One panes message of --panes keys (perf/partials_rate.py's panes: 5 readings each, one key name
pattern), with and without quantiles (0.5, 0.99 at accuracy 0.01). Each round times one read by
each reader in turn (process CPU clock, --loops reads per timing, so both see the same load),
--rounds rounds; the figures are the medians. Before timing, the two readers' results are
compared (values, sketches' bytes): a broken reader cannot show up as a fast one.

    PYTHONPATH=$PWD .venv/bin/python perf/partial_read.py [--panes 1000] [--rounds 21]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

from bench_engine import cpu_model, lscpu  # noqa: E402
from partials_rate import panes  # noqa: E402
from telemetry_cy.backend import load  # noqa: E402
from telemetry_cy.engine import partial_format as pf  # noqa: E402


def same(a: pf.Partial, b: pf.Partial) -> bool:
    def plain(m: pf.Partial):
        return m._replace(panes=tuple(
            (p.device, p.sensor, p.unit, p.count, p.sum, p.m2, p.min, p.max, p.first,
             p.first_ts, p.last, p.last_ts, p.sketch and p.sketch.to_bytes()) for p in m.panes))
    return plain(a) == plain(b)


def per_read(read, data: bytes, loops: int) -> float:
    t = time.process_time()
    for _ in range(loops):
        read(data)
    return (time.process_time() - t) / loops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--panes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--loops", type=int, default=5, help="reads per timing (5)")
    a = ap.parse_args()
    compiled, pure = load("compiled").read_partial, load("pure").read_partial
    info = lscpu()
    out = {"cpu": cpu_model(), "family": info.get("CPU family"), "model": info.get("Model"),
           "panes": a.panes, "rounds": a.rounds, "loops": a.loops,
           "loadavg_before": os.getloadavg()[0], "cases": {}}
    for quantiles in (False, True):
        ws = pf.window_settings(60.0, 5.0, "event", 5.0, (0.5, 0.99) if quantiles else None)
        data = pf.write(pf.KIND_PANES, ws, "inst0", 0, 20, 0, 1,
                        panes(a.panes, 5, quantiles, random.Random(1)))
        assert same(compiled(data), pure(data)), "the readers disagree"
        c, p = [], []
        for _ in range(a.rounds):
            c.append(per_read(compiled, data, a.loops))
            p.append(per_read(pure, data, a.loops))
        mc, mp = statistics.median(c), statistics.median(p)
        ratios = sorted(y / x for x, y in zip(c, p))
        out["cases"]["quantiles" if quantiles else "no_quantiles"] = {
            "bytes": len(data), "bytes_per_pane": round(len(data) / a.panes, 1),
            "compiled_ms": round(mc * 1e3, 3), "pure_ms": round(mp * 1e3, 3),
            "compiled_us_per_pane": round(mc * 1e6 / a.panes, 3),
            "pure_us_per_pane": round(mp * 1e6 / a.panes, 3),
            "compiled_panes_per_s": round(a.panes / mc), "pure_panes_per_s": round(a.panes / mp),
            "speedup_median_of_rounds": round(statistics.median(ratios), 2),
            "speedup_min_max": [round(ratios[0], 2), round(ratios[-1], 2)],
        }
    out["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
