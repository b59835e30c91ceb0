"""A plain loop over one engine path, for a sampling profiler (not a benchmark: use bench_engine.py
for figures). The VMs we run on expose no hardware counters, so sample on the cpu-clock event:

    PYTHONPATH=$PWD perf record -e cpu-clock -F 2000 -o /tmp/engine.data \\
        .venv/bin/python perf/profile_engine.py warm 1000000 15
    perf report -i /tmp/engine.data --no-children --sort dso,symbol
    perf annotate -i /tmp/engine.data --stdio \\
        -s __pyx_f_12telemetry_cy_6engine_7_engine_6Engine__apply_reading

Modes: ``warm`` (push_many on live keys, one interval), ``decode_only`` (max_keys=1: every reading
a key_limit drop), ``tick`` (one reading per key per 5 s interval, tick() after every batch).
At 1M keys the untimed slicing of fresh batches shows up as libpython samples: read the _engine
DSO's share (``--sort dso``) as the engine's time. To leave the set-up (payload load, table fill,
window fill) out of the profile, attach once it prints "ready": ``perf record -p PID``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from payloads import PayloadSet  # noqa: E402

T0 = 1_800_000_000.0
BATCH = 1000


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "warm"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    from telemetry_cy.engine._engine import Engine

    ps = PayloadSet.cached(n, 1 if n > 100_000 else 20)
    ts = T0 + 1.0
    if mode == "decode_only":
        e = Engine(max_keys=1)
        e.push_reading("profile-seed", "profile-seed", 0.0, ts)
    else:
        e = Engine()
    i = 0
    if mode == "warm":
        for s in range(0, n, BATCH):
            e.push_many(ps.batch(s, BATCH), ts)
    elif mode == "tick":
        # 13 intervals first, so every key's 12 panes hold data, as in bench_engine.py
        for i in range(13 * n // BATCH):
            r, s = divmod(i * BATCH, n)
            ts = T0 + 5.0 * r + 5.0 * s / n
            e.push_many(ps.batch(i * BATCH, BATCH), ts)
            e.tick(ts)
        i += 1
    # attach a profiler now to leave the set-up out: perf record -p PID ...
    print(f"ready (pid {os.getpid()})", file=sys.stderr, flush=True)
    timed = 0.0
    readings = 0
    start = time.time()
    while time.time() - start < seconds:
        if mode == "tick":
            r, s = divmod(i * BATCH, n)
            ts = T0 + 5.0 * r + 5.0 * s / n
        items = ps.batch(i * BATCH, BATCH)
        i += 1
        t0 = time.perf_counter()
        e.push_many(items, ts)
        if mode == "tick":
            del items
            e.tick(ts)
        timed += time.perf_counter() - t0
        readings += BATCH
    print(f"{mode} {n} keys: {timed / readings * 1e9:.1f} ns per reading (engine calls only), "
          f"{readings:,} readings", file=sys.stderr)


if __name__ == "__main__":
    main()
