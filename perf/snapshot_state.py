"""Snapshots of the compiled engine's window state (docs/state.md): size, time, restore time.

    PYTHONPATH=$PWD .venv/bin/python perf/snapshot_state.py engine \
        -o perf/results/evidence/snapshot_engine.json
    PYTHONPATH=$PWD .venv/bin/python perf/snapshot_state.py sdcard     # writes per hour, 10k keys

**engine**: for quantiles off and on (p50/p90/p99, alpha 0.01) and 1,000 / 100,000 / 1,000,000
keys, each key filled with ``--per-pane`` readings in each of ``--fill`` intervals (default: every
pane of the default 60 s / 5 s window, 2 readings each, sensor-like values), then:
- ``Engine.snapshot()``: bytes, and CPU seconds (``time.process_time``: this process's CPU, the
  machine being shared), median of ``--repeats``;
- ``Engine.from_snapshot()``: CPU seconds, median of ``--repeats``;
- the live state (``stats()["state_bytes"]``) and snapshot bytes / live state.
Wall times are recorded beside the CPU times. Targets (the issue): <= 2 s to write and to restore
1M keys, size <= 1.2x the live state.

**sdcard**: the state file of 10,000 keys (full windows, quantiles off and on) at the default
checkpoint_every (30 s): checkpoints, bytes and fsyncs per hour.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cbor2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from telemetry_cy.backend import load  # noqa: E402

WINDOW, EVERY = 60.0, 5.0


def filled_engine(Engine, keys: int, quantiles: bool, fill: int, per_pane: int):
    kw = dict(window=WINDOW, emit_every=EVERY, max_keys=max(keys, 1), key_ttl=600.0)
    if quantiles:
        kw.update(quantiles=[0.5, 0.9, 0.99], quantile_accuracy=0.01)
    engine = Engine(**kw)
    rng = random.Random(keys)
    levels = [rng.uniform(-40.0, 60.0) for _ in range(keys)]
    rounds = [[cbor2.dumps({"d": f"dev-{i // 4:07d}", "s": f"s{i % 4}",
                            "v": round(levels[i] * (1.0 + 0.02 * (r - per_pane / 2)), 3),
                            "u": "C"})
               for i in range(keys)] for r in range(per_pane)]
    base = 1_700_000_000.0
    for interval in range(fill):
        ts = base + interval * EVERY + 0.5
        for payloads in rounds:
            engine.push_many(payloads, ts)
        engine.tick(ts)
    del rounds
    gc.collect()
    return engine, kw


def measure(fn, repeats: int):
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        if _ < repeats - 1:
            del out
            out = None
    return statistics.median(cpu), statistics.median(wall), out


def engine_figures(args) -> list[dict]:
    Engine = load("compiled").Engine
    rows = []
    for quantiles in (False, True):
        for keys in args.sizes:
            engine, kw = filled_engine(Engine, keys, quantiles, args.fill, args.per_pane)
            live = engine.stats()["state_bytes"]
            repeats = args.repeats if keys < 1_000_000 else max(1, args.repeats // 2)
            snap_cpu, snap_wall, data = measure(engine.snapshot, repeats)
            rest_cpu, rest_wall, restored = measure(lambda: Engine.from_snapshot(data, **kw),
                                                    repeats)
            assert restored.snapshot() == data
            row = dict(quantiles=quantiles, keys=keys, fill=args.fill, per_pane=args.per_pane,
                       snapshot_bytes=len(data), live_state_bytes=live,
                       ratio=round(len(data) / live, 3),
                       bytes_per_key=round(len(data) / keys, 1),
                       snapshot_cpu_s=round(snap_cpu, 4), snapshot_wall_s=round(snap_wall, 4),
                       restore_cpu_s=round(rest_cpu, 4), restore_wall_s=round(rest_wall, 4),
                       repeats=repeats)
            print(json.dumps(row), flush=True)
            rows.append(row)
            del engine, restored, data
            gc.collect()
    return rows


def sdcard_figures(args) -> list[dict]:
    Engine = load("compiled").Engine
    rows = []
    per_hour = 3600.0 / args.checkpoint_every
    for quantiles in (False, True):
        engine, _ = filled_engine(Engine, 10_000, quantiles, args.fill, args.per_pane)
        size = len(engine.snapshot())
        rows.append(dict(quantiles=quantiles, keys=10_000, checkpoint_every_s=args.checkpoint_every,
                         file_bytes=size, checkpoints_per_hour=per_hour,
                         bytes_per_hour=round(size * per_hour),
                         mib_per_day=round(size * per_hour * 24 / 2**20, 1),
                         fsyncs_per_hour=round(2 * per_hour)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = [line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                 if line.startswith(("Model name", "CPU family", "Model:"))]
    except OSError:
        model = []
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=HERE).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": model, "python": platform.python_version(), "commit": commit}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("engine", "sdcard"))
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--fill", type=int, default=12, help="intervals with data per key (12)")
    ap.add_argument("--per-pane", type=int, default=2, help="readings per key and interval (2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint-every", type=float, default=30.0)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    rows = engine_figures(args) if args.what == "engine" else sdcard_figures(args)
    result = {"command": " ".join(sys.argv), "machine": machine(), "rows": rows}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
