"""Event time vs arrival time: engine CPU per reading, and the build before event time.

Times ``Engine.push_many`` of warm keys (every key live, every reading in the open interval, no
tick): the engine's hot path, as ``push_many_1k_keys`` / ``push_many_1M_keys`` of bench_engine.py.
Modes, each on its own payload set (one ~60-byte reading per payload, perf/payloads.py's keys):

- ``arrival``: ``Engine()``, payloads without ``t`` (today's payloads);
- ``arrival_t``: ``Engine()``, the same payloads with a ``t`` (a float64; the decoder reads it,
  arrival time ignores it);
- ``event``: ``Engine(time="event", allowed_lateness=2 * emit_every)``, payloads with ``t`` in
  the open interval (the watermark does not move: the apply path with its lateness bookkeeping);
- ``event_l0``: the same with no allowed lateness (the record is the arrival-mode record);
- ``arrival_q`` / ``event_q``: ``arrival`` / ``event`` with quantiles on (p50, p90, p99, alpha
  0.01): each reading also goes into its pane's sketch.

Before each timed call the batch's payloads are sliced fresh from one blob (untimed), so they are
in cache as they would be in the ingest ring. The clock is this thread's CPU time
(``time.thread_time``: the machine is shared), per reading, over passes of at least 200,000
readings; each figure is the median of ``--repeats`` such passes, the modes' passes taking turns.
The memory figure is ``stats()["state_bytes"]`` per key after the warm-up (the table's own
accounting: records, slots, dense array), for 1M keys.

``--modes arrival`` runs on any build (the one before event time included), so the before/after
comparison of arrival mode is one script run twice, alternately, with PYTHONPATH pointing at each
checkout: see docs/performance.md ("Event time").

    python perf/event_time.py --keys 1000 1000000 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from payloads import key_of  # noqa: E402

T0 = 1_767_225_600.0  # 2026-01-01 UTC, a multiple of 5 s
BATCH = 1000
TS = T0 + 1.5  # every arrival, and every t, in one emit interval


def payloads(n_keys: int, with_t: bool) -> list[bytes]:
    out = []
    for i in range(n_keys):
        device, sensor, unit, base, _ = key_of(i)
        m = {"d": device, "s": sensor, "v": round(base + (i % 97) * 0.01, 2), "u": unit,
             "n": 100_000 + i}
        if with_t:
            m["t"] = T0 + 1.0 + (i % 1000) * 1e-3  # in TS's interval
        out.append(cbor2.dumps(m))
    # interleaved publishers: a seeded permutation, as perf/payloads.py does
    import random
    random.Random(7).shuffle(out)
    return out


def engine_for(mode: str):
    """event: allowed lateness 10 s (two emit intervals: two more panes and open-pane slots per
    key); event_l0: no lateness (the arrival-mode record)."""
    from telemetry_cy.engine._engine import Engine
    quantiles = dict(quantiles=[0.5, 0.9, 0.99]) if mode.endswith("_q") else {}
    if mode in ("event", "event_q"):
        return Engine(time="event", allowed_lateness=10.0, **quantiles)
    if mode == "event_l0":
        return Engine(time="event")
    return Engine(**quantiles)


class Setup:
    """One mode's warm engine and its batches."""

    def __init__(self, mode: str, n_keys: int) -> None:
        self.mode, self.n_keys = mode, n_keys
        items = payloads(n_keys, with_t=mode not in ("arrival", "arrival_q"))
        self.batches = [items[i:i + BATCH] for i in range(0, n_keys, BATCH)]
        # each batch as one blob and its cuts: sliced fresh before each timed call (untimed), so
        # the payload bytes are as hot as in the ingest ring, as bench_engine.py does at 1M keys
        self.blobs = []
        for b in self.batches:
            cuts, pos = [], 0
            for p in b:
                cuts.append((pos, pos + len(p)))
                pos += len(p)
            self.blobs.append((b"".join(b), cuts))
        self.engine = engine_for(mode)
        for b in self.batches:
            self.engine.push_many(b, TS)
        st = self.engine.stats()
        if st["readings"] != n_keys or st["live_keys"] != n_keys:
            raise SystemExit(f"{mode}: warm-up gave {st['readings']} readings, "
                             f"{st['live_keys']} keys")
        self.state_per_key = st["state_bytes"] / n_keys
        self.samples: list[float] = []
        self.passes = 0

    def time_pass(self, rounds: int) -> None:
        push, clock = self.engine.push_many, time.thread_time
        t = 0.0
        for _ in range(rounds):
            for blob, cuts in self.blobs:
                b = [blob[i:j] for i, j in cuts]
                t0 = clock()
                push(b, TS)
                t += clock() - t0
        self.passes += rounds
        self.samples.append(t / (rounds * self.n_keys) * 1e9)

    def check(self) -> None:
        st = self.engine.stats()
        want = self.n_keys * (1 + self.passes)
        if st["readings"] != want or any(st["drops"].values()):
            raise SystemExit(f"{self.mode}: {st['readings']} readings (want {want}), "
                             f"drops {st['drops']}")


def run_keys(modes: list[str], n_keys: int, repeats: int) -> list[dict]:
    """All modes' engines are built first; their timed passes then take turns, so a change in
    the machine's load hits every mode alike."""
    rounds = max(1, 200_000 // n_keys)
    setups = [Setup(mode, n_keys) for mode in modes]
    gc.disable()
    try:
        for _ in range(repeats):
            for s in setups:
                s.time_pass(rounds)
    finally:
        gc.enable()
    out = []
    for s in setups:
        s.check()
        out.append({"mode": s.mode, "keys": n_keys, "ns_per_reading": statistics.median(s.samples),
                    "samples": s.samples, "state_bytes_per_key": s.state_per_key})
    return out


def build_commit(tree: Path) -> str:
    """The commit of the package measured: an export's COMMIT file (perf/README.md), else the
    checkout's HEAD; not its path, which names a directory of one machine."""
    marker = tree / "COMMIT"
    if marker.exists():
        return marker.read_text().strip()
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    return head.stdout.strip() if head.returncode == 0 else "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, nargs="+", default=[1000, 1_000_000])
    ap.add_argument("--modes", nargs="+", default=["arrival", "arrival_t", "event"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    import telemetry_cy
    results = []
    for n in args.keys:
        for r in run_keys(args.modes, n, args.repeats):
            r["build"] = build_commit(Path(telemetry_cy.__file__).resolve().parents[1])
            results.append(r)
            print(f"{n:>9} keys  {r['mode']:<10} {r['ns_per_reading']:7.1f} ns/reading (cpu)  "
                  f"state {r['state_bytes_per_key']:.0f} B/key  "
                  f"[{', '.join(f'{s:.0f}' for s in r['samples'])}]", flush=True)
        # same-pass ratios: each mode against arrival in the same turn, then the median
        by_mode = {r["mode"]: r for r in results if r["keys"] == n}
        base = by_mode.get("arrival")
        for mode, r in by_mode.items():
            if base is not None and mode != "arrival":
                ratios = [a / b for a, b in zip(base["samples"], r["samples"])]
                r["throughput_vs_arrival"] = statistics.median(ratios)
                print(f"{n:>9} keys  {mode:<10} throughput {r['throughput_vs_arrival']:.2f}x "
                      f"arrival (median of same-turn ratios)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "python": platform.python_version(), "machine": platform.machine(),
            "results": results}, indent=1))


if __name__ == "__main__":
    main()
