"""Prints the Markdown tables of docs/performance.md from one run's JSON files.

    .venv/bin/python perf/report.py perf/results/reference/engine.json \
        perf/results/reference/state_memory.json

Figures are medians of pyperf's values (time per reading); readings/s = 1 / median. "load avg"
is the 1-minute load average of the machine when the benchmark's worker processes started (2 CPUs:
above ~1.2 someone else was running too).
"""

from __future__ import annotations

import json
import statistics
import sys

#: benchmark -> (target readings/s, what the target is)
TARGETS = {
    "push_many_1k_keys": (10_000_000, ">= 10M/s"),
    "push_many_1M_keys": (3_000_000, ">= 3M/s"),
}
#: the tick benchmarks are the same work plus one aggregate per reading: shown against the same
#: target, marked as the worst case
WORST_CASE = {
    "push_many_tick_1k_keys": "push_many_1k_keys",
    "push_many_tick_1M_keys": "push_many_1M_keys",
}
ORDER = [
    "decode_api_60B", "decode_native_60B", "push_many_overhead_1k_keys",
    "push_many_decode_only_1k_keys", "push_many_decode_only_1M_keys", "push_many_1k_keys",
    "push_many_1M_keys", "push_many_cold_1M_keys", "push_many_tick_1k_keys",
    "push_many_tick_1M_keys", "push_reading_1k_keys", "pure_push_many_1k_keys",
    "pure_push_many_tick_1k_keys", "py_baseline_tick_1k_keys",
]


def load(path: str) -> dict[str, dict]:
    """Per benchmark: median, min and max of the values (seconds per reading) and the range of
    the 1-minute load average pyperf recorded at the start of its worker processes."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        name = b.get("metadata", {}).get("name") or data["metadata"]["name"]
        values = [v for run in b["runs"] for v in run.get("values", [])]
        loads = [run["metadata"]["load_avg_1min"] for run in b["runs"]
                 if run.get("values") and "load_avg_1min" in run.get("metadata", {})]
        if values:
            out[name] = {"median": statistics.median(values), "min": min(values),
                         "max": max(values), "load": (min(loads), max(loads)) if loads else None}
    return out


def medians(path: str) -> dict[str, float]:
    return {name: r["median"] for name, r in load(path).items()}


def builds(path: str) -> set[tuple[str, str]]:
    """The (engine_so, decode_so) pairs the run's worker processes loaded."""
    with open(path) as f:
        data = json.load(f)
    common = data.get("metadata", {})
    seen = set()
    for b in data["benchmarks"]:
        for run in b["runs"]:
            m = {**common, **b.get("metadata", {}), **run.get("metadata", {})}
            if "engine_so" in m:
                seen.add((m["engine_so"], m.get("decode_so", "")))
    return seen


def fmt_time(s: float) -> str:
    if s < 1e-6:
        return f"{s * 1e9:.1f} ns"
    return f"{s * 1e6:.2f} µs"


def fmt_rate(r: float) -> str:
    if r >= 1e6:
        return f"{r / 1e6:.2f} M/s"
    return f"{r / 1e3:.0f} k/s"


def engine_table(res: dict[str, dict]) -> str:
    rows = ["| benchmark | median per reading | readings/s | vs target | values min–max | "
            "load avg |", "|---|---:|---:|---|---:|---:|"]
    for name in ORDER + sorted(set(res) - set(ORDER)):
        if name not in res:
            continue
        r = res[name]
        t = r["median"]
        rate = 1.0 / t
        verdict = ""
        if name in TARGETS:
            goal, text = TARGETS[name]
            verdict = f"{text}: **{'met' if rate >= goal else 'MISSED'}** ({rate / goal:.2f}x)"
        elif name in WORST_CASE:
            goal, text = TARGETS[WORST_CASE[name]]
            verdict = (f"({text} with 1 aggregate per reading, worst case: "
                       f"{'met' if rate >= goal else 'below'}, {rate / goal:.2f}x)")
        spread = f"{fmt_time(r['min'])} – {fmt_time(r['max'])}"
        lo_hi = r["load"]
        la = ""
        if lo_hi is not None:
            lo, hi = f"{lo_hi[0]:.1f}", f"{lo_hi[1]:.1f}"
            la = lo if lo == hi else f"{lo}–{hi}"
        rows.append(f"| `{name}` | {fmt_time(t)} | {fmt_rate(rate)} | {verdict} | {spread} | "
                    f"{la} |")
    return "\n".join(rows)


def derived(med: dict[str, float]) -> str:
    def d(a, b):
        return med[a] - med[b] if a in med and b in med else None
    lines = []
    for label, a, b in [
        ("decode + key hash (C reader, inside push_many)", "push_many_decode_only_1k_keys",
         "push_many_overhead_1k_keys"),
        ("window update, 1k keys (probe + key compare + pane update)", "push_many_1k_keys",
         "push_many_decode_only_1k_keys"),
        ("window update, 1M keys (probe + key compare + pane update)", "push_many_1M_keys",
         "push_many_decode_only_1M_keys"),
        ("first insert of a key vs update, 1M keys", "push_many_cold_1M_keys",
         "push_many_1M_keys"),
        ("tick cost per aggregate, 1k keys", "push_many_tick_1k_keys", "push_many_1k_keys"),
        ("tick cost per aggregate, 1M keys", "push_many_tick_1M_keys", "push_many_1M_keys"),
    ]:
        v = d(a, b)
        if v is not None:
            lines.append(f"| {label} | `{a}` − `{b}` | {fmt_time(v)} |")
    rows = ["| derived figure | from | per reading |", "|---|---|---:|"] + lines
    ratios = []
    for num, den in [("py_baseline_tick_1k_keys", "push_many_tick_1k_keys"),
                     ("py_baseline_tick_1k_keys", "push_many_1k_keys"),
                     ("pure_push_many_tick_1k_keys", "push_many_tick_1k_keys"),
                     ("pure_push_many_1k_keys", "push_many_1k_keys")]:
        if num in med and den in med:
            ratios.append(f"| `{den}` vs `{num}` | {med[num] / med[den]:.1f}x faster |")
    if ratios:
        rows += ["", "| ratio | |", "|---|---:|"] + ratios
    return "\n".join(rows)


def memory_table(path: str) -> str:
    with open(path) as f:
        m = json.load(f)
    budget = m["budget_bytes_per_key"]
    rows = ["| live keys | state_bytes / key | RSS growth / key | vs budget (≤ 1,024 B/key) |",
            "|---:|---:|---:|---|"]
    for r in m["per_key"]:
        worst = max(r["state_bytes_per_key"], r["rss_growth_per_key"])
        rows.append(f"| {r['keys']:,} | {r['state_bytes_per_key']:.0f} B | "
                    f"{r['rss_growth_per_key']:.0f} B | "
                    f"{'met' if worst <= budget else 'MISSED'} |")
    h = m["one_hot_key"]
    rows += ["", f"One key, {h['readings']:,} readings ({h['event_seconds']:.0f} s of event time "
                 f"at {h['event_rate_per_s']:,.0f} readings/s, {h['ticks']} ticks): VmRSS "
                 f"{h['rss_first'] // 1024:,} KiB at the first sample, {h['rss_last'] // 1024:,} "
                 f"KiB at the last; range over the last 90% "
                 f"{(h['rss_tail_max'] - h['rss_tail_min']) // 1024} KiB; least-squares slope "
                 f"{h['rss_slope_bytes_per_million_readings']:+.0f} B per million readings; "
                 f"state_bytes {h['state_bytes_values']} throughout → "
                 f"**{'flat' if h['flat'] else 'NOT FLAT'}**."]
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    seen = builds(sys.argv[1])
    if len(seen) > 1:
        raise SystemExit(f"{sys.argv[1]}: workers loaded {len(seen)} different builds of the "
                         f"engine {sorted(seen)}: rebuilt during the run? Run it again.")
    res = load(sys.argv[1])
    med = {name: r["median"] for name, r in res.items()}
    print(engine_table(res))
    print()
    print(derived(med))
    if len(sys.argv) > 2:
        print()
        print(memory_table(sys.argv[2]))


if __name__ == "__main__":
    main()
