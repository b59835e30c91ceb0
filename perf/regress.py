"""Engine speed regression check: this build against a stored baseline of the same CPU model.

One command, from the repository root, after building the compiled modules::

    PYTHONPATH=$PWD .venv/bin/python perf/regress.py            # check (about a minute)
    PYTHONPATH=$PWD .venv/bin/python perf/regress.py --record   # store this CPU's baseline

It runs the quick engine benchmarks of perf/bench_engine.py (1,000 keys; pyperf ``--fast``),
prints ``pyperf compare_to`` against ``perf/baselines/<cpu>.json`` and then its own verdict per
benchmark: the ratio of the medians, new / baseline. Exit status:

- 1 when a benchmark got more than ``--threshold`` (default 25 %) slower;
- 0 otherwise, and also, with a message saying why nothing was compared, when there is no
  baseline for this CPU model, or when the machine is busy: the 1-minute load average is above
  ``--max-load`` before the run, or the plain-C yardstick (perf/yardstick/cloop.c), run before
  and after the benchmarks, is more than ``--machine-slack`` slower than when the baseline was
  recorded (a loaded or throttled machine slows the C loop as much as the engine);
- always 0 with ``--report-only`` (our CI: timing never fails a build), and 2 on a usage error.

The benchmarks and the yardstick are timed by the thread's CPU time (bench_engine.py ``--clock
cpu``; a baseline says which clock it used, and a check uses the same), so time spent waiting
for a CPU that someone else's work holds is left out; what load does to caches is not, hence
the checks above.

``<cpu>`` is lscpu's model name, CPU family and model number, e.g. ``amd-epyc-f26-m2``: VMs often
show only "AMD EPYC" or "Intel(R) Xeon(R) Processor" as the name, and a baseline from one core
generation says nothing about another. A baseline is a pyperf JSON file written by
bench_engine.py, with the yardstick's time per reading and the load average added to each
benchmark's metadata. Record it on a quiet machine, from a clean build of a known commit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyperf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import cpu_model, lscpu  # noqa: E402
from engine_vs_c import build_yardstick, run_yardstick, write_payloads  # noqa: E402

BASELINES = HERE / "baselines"
#: the quick benchmarks: 1,000 keys only (the 1M-key ones build a 700 MB table per worker)
QUICK = ("^(decode_native_60B|push_many_overhead_1k_keys|push_many_decode_only_1k_keys"
         "|push_many_1k_keys|push_many_tick_1k_keys|push_reading_1k_keys)$")
YARDSTICK_READINGS, YARDSTICK_VALUES = 1_000_000, 5
META_YARDSTICK = "regress_yardstick_ns"
META_LOAD = "regress_loadavg"


def cpu_slug() -> str:
    info = lscpu()
    parts = [cpu_model()]
    if info.get("CPU family"):
        parts.append("f" + info["CPU family"])
    if info.get("Model"):
        parts.append("m" + info["Model"])
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(parts).lower().replace("(r)", "")
                  .replace("(tm)", "")).strip("-")
    return slug or "unknown"


def yardstick_ns(exe: Path, data: Path, clock: str) -> float:
    return statistics.median(run_yardstick(exe, data, YARDSTICK_READINGS, YARDSTICK_VALUES,
                                           clock))


def run_benchmarks(out: Path, only: str, clock: str, extra: list[str]) -> None:
    cmd = [sys.executable, str(HERE / "bench_engine.py"), "--fast", "--quiet", "--clock", clock,
           "--only", only, "-o", str(out), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def medians(suite: pyperf.BenchmarkSuite) -> dict[str, float]:
    return {b.get_name(): b.median() for b in suite.get_benchmarks()}


def scrub_paths(path: Path) -> None:
    """Drops the metadata that names absolute paths of the machine that recorded the file (where
    Python and the engine were), so a baseline in the repository names nothing outside it."""
    doc = json.loads(path.read_text())

    def scrub(node):
        if isinstance(node, dict):
            for key in ("python_executable", "python_config_args", "engine_dir"):
                node.pop(key, None)
            for value in node.values():
                scrub(value)
        elif isinstance(node, list):
            for value in node:
                scrub(value)
    scrub(doc)
    path.write_text(json.dumps(doc, sort_keys=True) + "\n")


def busy_reason(load: float, max_load: float, ys_now: float, ys_base: float | None,
                slack: float) -> str | None:
    if load > max_load:
        return f"1-minute load average {load:.2f} > --max-load {max_load:.2f}"
    if ys_base is not None and ys_now > ys_base * (1 + slack):
        return (f"the plain-C yardstick ran at {ys_now:.1f} ns/reading, "
                f"{(ys_now / ys_base - 1) * 100:.0f} % slower than the baseline's "
                f"{ys_base:.1f} ns (--machine-slack {slack * 100:.0f} %)")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true",
                    help="store this run as the baseline of this CPU model")
    ap.add_argument("--threshold", type=float, default=25.0,
                    help="percent slower that fails the check (default 25)")
    ap.add_argument("--max-load", type=float, default=None,
                    help="skip when the 1-minute load average is above this "
                         "(default: the number of CPUs)")
    ap.add_argument("--machine-slack", type=float, default=10.0,
                    help="skip when the yardstick is this many percent slower than in the "
                         "baseline (default 10)")
    ap.add_argument("--report-only", action="store_true",
                    help="print everything, always exit 0 (for CI: timing never fails a build)")
    ap.add_argument("--only", default=QUICK, help="benchmarks to run (regex; default: quick set)")
    ap.add_argument("--baseline", type=Path, help="baseline file (default: by CPU model)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="with --record: time by the thread's CPU time (default) or wall time; "
                         "a check always uses the baseline's clock")
    ap.add_argument("--pyperf-args", default="", help="extra options for bench_engine.py")
    args = ap.parse_args()

    slug = cpu_slug()
    baseline = args.baseline or BASELINES / f"{slug}.json"
    max_load = args.max_load if args.max_load is not None else float(os.cpu_count() or 1)
    slack = args.machine_slack / 100
    verdict = 0

    try:
        shown = baseline.resolve().relative_to(HERE.parent)
    except ValueError:
        shown = baseline
    print(f"CPU: {cpu_model()} ({slug}); baseline: {shown}")
    base_suite = None
    if not args.record:
        if not baseline.exists():
            print(f"regress: no baseline for this CPU model ({slug}): nothing compared. Record "
                  f"one on a quiet machine with `perf/regress.py --record`.")
            return 0
        base_suite = pyperf.BenchmarkSuite.load(str(baseline))
    ys_base = None
    clock = args.clock
    if base_suite is not None:
        meta = base_suite.get_benchmarks()[0].get_metadata()
        ys_base = float(meta[META_YARDSTICK]) if META_YARDSTICK in meta else None
        clock = meta.get("bench_clock", "wall")

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="regress.") as tmp:
        work = Path(tmp)
        exe = build_yardstick(work)
        data = work / "payloads.bin"
        write_payloads(data)
        ys_before = yardstick_ns(exe, data, clock)
        reason = busy_reason(load, max_load, ys_before, ys_base, slack)
        if reason:
            print(f"regress: the machine is busy ({reason}): nothing compared.")
            return 0
        new_path = work / "new.json"
        run_benchmarks(new_path, args.only, clock, shlex.split(args.pyperf_args))
        ys_after = yardstick_ns(exe, data, clock)
        ys = max(ys_before, ys_after)
        load = max(load, os.getloadavg()[0] - 1.0)   # the benchmark itself kept one CPU busy
        new_suite = pyperf.BenchmarkSuite.load(str(new_path))

        if args.record:
            reason = busy_reason(load, max_load, ys, None, slack)
            if reason:
                print(f"regress: not recorded, the machine was busy ({reason}).")
                return 0
            for b in new_suite.get_benchmarks():
                b.update_metadata({META_YARDSTICK: f"{ys:.2f}", META_LOAD: f"{load:.2f}"})
            baseline.parent.mkdir(parents=True, exist_ok=True)
            new_suite.dump(str(baseline), replace=True)
            scrub_paths(baseline)
            print(f"regress: baseline recorded: {baseline} (yardstick {ys:.1f} ns/reading, "
                  f"load average {load:.2f})")
            for name, med in sorted(medians(new_suite).items()):
                print(f"  {name}: {med * 1e9:.1f} ns")
            return 0

        reason = busy_reason(load, max_load, ys, ys_base, slack)
        subprocess.run([sys.executable, "-m", "pyperf", "compare_to", str(baseline),
                        str(new_path), "--table"], check=False)
    if reason:
        print(f"regress: the machine got busy during the run ({reason}): no verdict.")
        return 0

    base_med, new_med = medians(base_suite), medians(new_suite)
    limit = 1 + args.threshold / 100
    print(f"\nmedians, new / baseline (fails above {limit:.2f}x); yardstick {ys:.1f} ns/reading"
          + (f" (baseline {ys_base:.1f} ns)" if ys_base else ""))
    for name in sorted(new_med):
        if name not in base_med:
            print(f"  {name}: not in the baseline")
            continue
        r = new_med[name] / base_med[name]
        flag = "SLOWER" if r > limit else "ok"
        if r > limit:
            verdict = 1
        print(f"  {name}: {base_med[name] * 1e9:.1f} ns -> {new_med[name] * 1e9:.1f} ns "
              f"({r:.2f}x) {flag}")
    if verdict:
        print(f"regress: FAILED: a benchmark is more than {args.threshold:.0f} % slower than "
              f"the baseline of this CPU model.")
    else:
        print("regress: ok.")
    return 0 if args.report_only else verdict


if __name__ == "__main__":
    sys.exit(main())
