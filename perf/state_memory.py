"""Memory of the compiled engine's window state (default 60 s window, 5 s emit interval).

(a) Per live key, at 1,000 / 100,000 / 1,000,000 keys, each size in a fresh child process:
    ``stats()["state_bytes"] / live_keys`` (the engine's own account: key records with their
    name bytes and 12 panes, plus the hash-slot and dense arrays) and the growth of the process's
    resident set (VmRSS from /proc/self/status) across inserting the keys, divided by the keys.
    RSS also counts what state_bytes cannot see: malloc's chunk headers and rounding, and the
    arrays' unused capacity pages that were touched.
(b) One key receiving 10,000,000 readings (batches of 1,000 payloads, event time advancing at
    10,000 readings/s, so 1,000 s and 200 ticks, tick() after every batch): VmRSS and state_bytes
    sampled every 100,000 readings; the least-squares slope of RSS over readings must be ~0.

Budget: state <= 1,024 bytes per live key, key bytes and table overhead included; RSS
flat under one hot key.

With ``--quantiles`` every engine computes p50, p90, p99 (alpha 0.01, ``--quantile-accuracy``) and
a third part runs:
(c) 1,000 keys of sensor-like data (each key uniform within +-20 % of its own level, the level
    drifting 0.1 %/s) at 1, 10 and 100 readings/s per key for 65 s of event time (every pane of
    every window full), then ``state_bytes / live_keys``: the state per key with every pane's
    sketch holding its data. Budget with quantiles: 2,048 bytes per key.

    PYTHONPATH=$PWD .venv/bin/python perf/state_memory.py \
        -o perf/results/reference/state_memory.json
    PYTHONPATH=$PWD .venv/bin/python perf/state_memory.py --quantiles --sizes 1000,1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from payloads import PayloadSet  # noqa: E402

T0 = 1_800_000_000.0
BUDGET_PER_KEY = 1024
BUDGET_PER_KEY_QUANTILES = 2048
BATCH = 1000
#: Engine settings with --quantiles (the accuracy may be changed with --quantile-accuracy).
QUANTILES: dict = {}


def vm_rss() -> int:
    """Resident set size of this process in bytes (VmRSS of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def per_key(n_keys: int, engine_kwargs: dict | None = None) -> dict:
    """Runs in a fresh child: inserts n_keys keys (one reading each) into a default Engine (or
    one made with ``engine_kwargs``, ``--engine``: e.g. event time with allowed lateness)."""
    from telemetry_cy.engine._engine import Engine
    ps = PayloadSet.cached(n_keys, 1) if n_keys >= 100_000 else PayloadSet(n_keys, 1)
    e = Engine(**{**QUANTILES, **(engine_kwargs or {})})
    gc.collect()
    gc.disable()
    ts = T0 + 1.0
    # one warm-up batch of unrelated work first, so the interpreter's own allocations for a
    # batch (list, bytes objects, pymalloc arenas) are already there when `before` is read
    scratch = Engine()
    scratch.push_many(ps.batch(0, BATCH), ts)
    del scratch
    before = vm_rss()
    for start in range(0, n_keys, BATCH):
        e.push_many(ps.batch(start, BATCH), ts)
    after = vm_rss()
    st = e.stats()
    if st["live_keys"] != n_keys or st["readings"] != n_keys:
        raise RuntimeError(f"expected {n_keys} live keys, got {st}")
    return {
        "keys": n_keys,
        "state_bytes": st["state_bytes"],
        "state_bytes_per_key": st["state_bytes"] / n_keys,
        "rss_before": before,
        "rss_after": after,
        "rss_growth_per_key": (after - before) / n_keys,
        "payload_bytes_mean": ps.mean_size(),
    }


def one_hot_key(readings: int, rate: float, sample_every: int) -> dict:
    from telemetry_cy.engine._engine import Engine
    ps = PayloadSet(1, 10 * BATCH)           # one key, 10,000 distinct payloads (values, seq)
    batches = [ps.batch(i, BATCH) for i in range(0, len(ps), BATCH)]
    e = Engine(**QUANTILES)
    n_batches = readings // BATCH
    per_sample = max(1, sample_every // BATCH)
    n_samples = (n_batches + per_sample - 1) // per_sample + 1
    # samples go into arrays allocated up front: a growing list of dicts would itself show up as
    # RSS growth (~30 KiB over 100 samples)
    s_readings = array("q", bytes(8 * n_samples))
    s_rss = array("q", bytes(8 * n_samples))
    s_state = array("q", bytes(8 * n_samples))
    s_ts = array("d", bytes(8 * n_samples))
    k = 0
    aggregates = 0
    gc.collect()
    t_start = time.perf_counter()
    for b in range(n_batches):
        ts = T0 + b * BATCH / rate
        e.push_many(batches[b % len(batches)], ts)
        aggregates += len(e.tick(ts))
        if b % per_sample == 0 or b == n_batches - 1:
            st = e.stats()
            s_readings[k] = st["readings"]
            s_rss[k] = vm_rss()
            s_state[k] = st["state_bytes"]
            s_ts[k] = ts - T0
            k += 1
    elapsed = time.perf_counter() - t_start
    samples = [{"readings": s_readings[i], "rss": s_rss[i], "state_bytes": s_state[i],
                "ts": s_ts[i]} for i in range(k)]
    st = e.stats()
    if st["readings"] != n_batches * BATCH or st["live_keys"] != 1:
        raise RuntimeError(f"unexpected counters: {st}")
    # slope after the first 10% (allocator warm-up), by least squares
    tail = samples[len(samples) // 10:]
    xs = [s["readings"] for s in tail]
    ys = [s["rss"] for s in tail]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    state_sizes = sorted({s["state_bytes"] for s in samples})
    # with quantiles a pane's sketch grows with the spread of its values, so the state grows
    # until the first window is full (60 s + one interval); from then on it must not move
    full = sorted({s["state_bytes"] for s in samples if s["ts"] >= 65.0})
    rss_tail = [s["rss"] for s in tail]
    return {
        "readings": st["readings"],
        "event_rate_per_s": rate,
        "event_seconds": n_batches * BATCH / rate,
        "ticks": st["ticks"],
        "aggregates": aggregates,
        "wall_seconds": elapsed,
        "samples": samples,
        "rss_first": samples[0]["rss"],
        "rss_last": samples[-1]["rss"],
        "rss_tail_min": min(rss_tail),
        "rss_tail_max": max(rss_tail),
        "rss_slope_bytes_per_million_readings": slope * 1e6,
        "state_bytes_values": state_sizes,
        "state_bytes_after_first_window": full,
        # flat: the window state did not change size once the first window was full, and RSS
        # moved by less than 64 KiB over the
        # last 90% of the run (page granularity is 4 KiB; the interpreter allocates a little)
        "flat": len(full) == 1 and max(rss_tail) - min(rss_tail) < 64 * 1024,
    }


def sensor_windows(n_keys: int, rate: float, seconds: float = 65.0, seed: int = 1) -> dict:
    """(c): n_keys keys of sensor-like data at `rate` readings/s each, every pane full."""
    import random

    from telemetry_cy.engine._engine import Engine
    rnd = random.Random(seed)
    e = Engine(**QUANTILES)
    names = [(f"dev-{i:05d}", "temperature") for i in range(n_keys)]
    levels = [10.0 ** rnd.uniform(0.0, 3.0) for _ in range(n_keys)]
    push, uniform = e.push_reading, rnd.uniform
    steps = int(seconds * rate)
    for step in range(steps):
        t = T0 + step / rate
        drift = 1.0 + 0.001 * (t - T0)
        for (d, s), level in zip(names, levels):
            push(d, s, level * drift * uniform(0.8, 1.2), t)
    n_aggs = len(e.tick(T0 + seconds))
    st = e.stats()
    return {"keys": n_keys, "rate_per_key": rate, "event_seconds": seconds,
            "readings": st["readings"], "aggregates": n_aggs,
            "state_bytes_per_key": st["state_bytes"] / st["live_keys"]}


def machine() -> dict:
    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except OSError:
            return ""
    model = next((ln.split(":", 1)[1].strip() for ln in run("lscpu").splitlines()
                  if ln.startswith("Model name")), "")
    return {"cpu": model, "cpus": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(),
            "git_commit": run("git", "-C", str(HERE.parent), "rev-parse", "HEAD").strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", help="write the results as JSON here")
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--hot-readings", type=int, default=10_000_000)
    ap.add_argument("--rate", type=float, default=10_000.0, help="event-time readings/s of (b)")
    ap.add_argument("--engine", default="{}", help="(a) only: Engine keyword arguments as JSON, "
                    "e.g. '{\"time\": \"event\", \"allowed_lateness\": 10}'")
    ap.add_argument("--quantiles", action="store_true",
                    help="engines compute p50, p90, p99; adds part (c)")
    ap.add_argument("--quantile-accuracy", type=float, default=0.01)
    ap.add_argument("--sensor-rates", default="1,10,100", help="readings/s per key of (c)")
    ap.add_argument("--child-keys", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quantiles:
        QUANTILES.update(quantiles=[0.5, 0.9, 0.99], quantile_accuracy=args.quantile_accuracy)

    if args.child_keys:
        print(json.dumps(per_key(args.child_keys, json.loads(args.engine))))
        return

    out = {"machine": machine(), "window_s": 60.0, "emit_every_s": 5.0,
           "budget_bytes_per_key": BUDGET_PER_KEY_QUANTILES if QUANTILES else BUDGET_PER_KEY,
           "quantiles": QUANTILES, "per_key": [], "one_hot_key": None, "sensor_windows": []}
    print(f"(a) state per live key, default 60 s / 5 s window, Engine(**{args.engine})"
          + (f", quantiles {QUANTILES}" if QUANTILES else ""))
    print(f"{'keys':>10} {'state_bytes/key':>16} {'RSS growth/key':>15}")
    for n in (int(x) for x in args.sizes.split(",")):
        child = subprocess.run([sys.executable, __file__, "--child-keys", str(n),
                                "--engine", args.engine,
                                *(["--quantiles", "--quantile-accuracy",
                                   str(args.quantile_accuracy)] if args.quantiles else [])],
                               capture_output=True, text=True, check=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        out["per_key"].append(r)
        print(f"{n:>10,} {r['state_bytes_per_key']:>16.1f} {r['rss_growth_per_key']:>15.1f}")

    print(f"\n(b) one key, {args.hot_readings:,} readings "
          f"at {args.rate:,.0f} readings/s event time")
    hot = one_hot_key(args.hot_readings, args.rate, sample_every=100_000)
    out["one_hot_key"] = hot
    print(f"{'readings':>12} {'VmRSS (KiB)':>12} {'state_bytes':>12}")
    for s in hot["samples"][:: max(1, len(hot["samples"]) // 20)] + hot["samples"][-1:]:
        print(f"{s['readings']:>12,} {s['rss'] // 1024:>12,} {s['state_bytes']:>12,}")
    print(f"slope (last 90%): {hot['rss_slope_bytes_per_million_readings']:+.1f} bytes per "
          f"million readings; RSS range {(hot['rss_tail_max'] - hot['rss_tail_min']) // 1024} KiB; "
          f"state_bytes {hot['state_bytes_values']} (after the first window "
          f"{hot['state_bytes_after_first_window']}); ticks {hot['ticks']}, "
          f"{hot['aggregates']} aggregates; {hot['wall_seconds']:.1f} s; flat: {hot['flat']}")
    if QUANTILES:
        print("\n(c) 1,000 keys of sensor-like data, every pane full")
        print(f"{'readings/s/key':>15} {'state_bytes/key':>16}")
        for rate in (float(x) for x in args.sensor_rates.split(",")):
            r = sensor_windows(1000, rate)
            out["sensor_windows"].append(r)
            print(f"{rate:>15g} {r['state_bytes_per_key']:>16.1f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
