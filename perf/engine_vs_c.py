"""The engine against a plain C loop, in one run: how close is push_many to the limit?

Builds perf/yardstick/cloop.c with ``cc -O2`` (into a temporary directory), feeds it the same
payloads the engine benchmark pushes (perf/payloads.py, 1,000 keys x 20 rounds, in the same order),
and runs, one after the other on the same machine:

1. the yardstick, VALUES passes of READINGS readings each;
2. the pyperf engine benchmark ``push_many_1k_keys`` (perf/bench_engine.py, ``--fast``);
3. the yardstick again (so a machine that got busier or quieter mid-run shows as spread).

It prints the CPU (``lscpu`` model name), the median time per reading of both, and the ratio
engine / yardstick (the target: <= 2, i.e. the engine reaches >= 0.5x the yardstick's
readings/s). The yardstick does less than the engine (no second moment, no first/last by time,
no sequence numbers, no UTF-8 check, no drop accounting): read it as a floor, not a twin.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python perf/engine_vs_c.py
    PYTHONPATH=$PWD .venv/bin/python perf/engine_vs_c.py --repeat 3 -o /tmp/engine_vs_c.json

Both sides are timed by the thread's CPU time (``--clock cpu``, the default): on a small machine
others are using, wall time also counts the moments the OS had the benchmark wait for a CPU, and
a short C run and a long pyperf run catch different amounts of that (``--clock wall`` to see it).
``--repeat N`` runs the three steps N times and reports each run's ratio and their median;
``--pyperf-args '...'`` passes extra options to the engine benchmark (e.g. ``--rigorous``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import cpu_model  # noqa: E402
from payloads import PayloadSet  # noqa: E402

KEYS, ROUNDS = 1_000, 20
BENCH = "push_many_1k_keys"


def write_payloads(path: Path) -> int:
    """The yardstick's input: the engine benchmark's payloads in the order it pushes them (its
    warm-up pushes round 0, then the timed loops cycle from round 1)."""
    ps = PayloadSet.cached(KEYS, ROUNDS)
    n = len(ps)
    order = list(range(KEYS, n)) + list(range(KEYS))
    with open(path, "wb") as f:
        f.write(b"TCY1" + struct.pack("<II", n, KEYS))
        for i in order:
            p = ps[i]
            f.write(struct.pack("<H", len(p)) + p)
    return n


def build_yardstick(workdir: Path) -> Path:
    exe = workdir / "cloop"
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-o", str(exe), str(HERE / "yardstick" / "cloop.c"), "-lm"]
    subprocess.run(cmd, check=True)
    return exe


def run_yardstick(exe: Path, data: Path, readings: int, values: int,
                  clock: str = "wall") -> list[float]:
    out = subprocess.run([str(exe), str(data), str(readings), str(values), clock], check=True,
                         capture_output=True, text=True).stdout
    res = json.loads(out)
    if res["bad"] or res["readings"] != readings * values:
        raise SystemExit(f"yardstick rejected payloads: {res}")
    return res["ns_per_reading"]


def run_engine(workdir: Path, clock: str, extra: list[str]) -> list[float]:
    out = workdir / "engine.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "bench_engine.py"), "--fast", "--quiet", "--clock", clock,
           "--only", f"^{BENCH}$", "-o", str(out), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    import pyperf
    bench = pyperf.Benchmark.load(str(out))
    return [v * 1e9 for v in bench.get_values()]


def one_run(exe, data, workdir, args) -> dict:
    load_before = os.getloadavg()[0]
    c_before = run_yardstick(exe, data, args.readings, args.values, args.clock)
    engine = run_engine(workdir, args.clock, shlex.split(args.pyperf_args))
    c_after = run_yardstick(exe, data, args.readings, args.values, args.clock)
    c = c_before + c_after
    c_med, e_med = statistics.median(c), statistics.median(engine)
    return {
        "yardstick_ns": c_med, "yardstick_min_ns": min(c), "yardstick_max_ns": max(c),
        "yardstick_before_ns": statistics.median(c_before),
        "yardstick_after_ns": statistics.median(c_after),
        "engine_ns": e_med, "engine_min_ns": min(engine), "engine_max_ns": max(engine),
        "ratio": e_med / c_med,
        # the run itself keeps one CPU busy: a load above 1 means someone else's work too
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=2_000_000,
                    help="readings per yardstick value (default 2,000,000)")
    ap.add_argument("--values", type=int, default=8,
                    help="yardstick values before and after the engine benchmark (default 8)")
    ap.add_argument("--repeat", type=int, default=1, help="whole runs (default 1)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="time both sides by the thread's CPU time (default: steady on a shared "
                         "machine) or by wall time")
    ap.add_argument("--pyperf-args", default="", help="extra options for bench_engine.py")
    ap.add_argument("-o", "--output", help="write the figures as JSON here")
    args = ap.parse_args()

    cpu = cpu_model()
    with tempfile.TemporaryDirectory(prefix="engine_vs_c.") as tmp:
        workdir = Path(tmp)
        exe = build_yardstick(workdir)
        data = workdir / "payloads.bin"
        write_payloads(data)
        runs = []
        for r in range(args.repeat):
            res = one_run(exe, data, workdir, args)
            runs.append(res)
            print(f"run {r + 1}: yardstick {res['yardstick_ns']:.1f} ns/reading "
                  f"(before {res['yardstick_before_ns']:.1f}, after "
                  f"{res['yardstick_after_ns']:.1f}), engine {BENCH} {res['engine_ns']:.1f} "
                  f"ns/reading, ratio {res['ratio']:.2f} (load average "
                  f"{res['loadavg_before']:.2f} -> {res['loadavg_after']:.2f})", flush=True)

    ratio = statistics.median(r["ratio"] for r in runs)
    print()
    print(f"CPU: {cpu}; clock: {'thread CPU time' if args.clock == 'cpu' else 'wall time'}")
    print("| | ns/reading (median) | readings/s |")
    print("|---|---|---|")
    c_ns = statistics.median(r["yardstick_ns"] for r in runs)
    e_ns = statistics.median(r["engine_ns"] for r in runs)
    print(f"| plain C yardstick (perf/yardstick/cloop.c, -O2) | {c_ns:.1f} "
          f"| {1e3 / c_ns:.1f} M/s |")
    print(f"| engine `{BENCH}` (pyperf) | {e_ns:.1f} | {1e3 / e_ns:.1f} M/s |")
    print(f"engine / yardstick time per reading: {ratio:.2f} (median of {len(runs)} run(s); "
          f"target <= 2.0, i.e. >= 0.5x the yardstick's readings/s: "
          f"{'met' if ratio <= 2.0 else 'NOT met'})")
    busy = max(max(r["loadavg_before"], r["loadavg_after"] - 1.0) for r in runs)
    if busy > (os.cpu_count() or 1) / 2:
        print(f"WARNING: the machine was busy (load average up to {busy:.2f} besides this run)"
              + (": time-sliced runs inflate the two sides unequally, so the ratio is unreliable"
                 if args.clock == "wall" else ": CPU time leaves out the waiting, not the "
                 "cache others evict"))
    if args.output:
        Path(args.output).write_text(json.dumps(
            {"cpu": cpu, "clock": args.clock, "bench": BENCH, "runs": runs,
             "ratio_median": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
