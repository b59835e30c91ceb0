"""What partial mode costs an instance's engine thread (docs/scale-out.md, capacity model).

Process CPU time per message, median of 3 (in rounds over the four cases): 200,000 event-time
CBOR payloads over 10,000 keys pushed in batches of 1,000 (``push_many``) into each engine,
without and with partial mode (``partials=True`` and an ``InstancePartials`` of 16 partitions,
collected every 20 batches: the closing hook, the drain and the messages). Every key reports
once an interval here, so each message ends up in a pane of its own: the most panes a message
can cost. The 1-minute load average is printed before and after (a shared machine).

    python perf/partials_instance.py
    python perf/partials_instance.py --split   # where partial mode's time goes (compiled)
"""

from __future__ import annotations

import argparse
import statistics
import time

import cbor2

from telemetry_cy.backend import load
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.instance_partials import InstancePartials

BASE = 1.7e9


def run(backend: str, partials: bool, n: int = 200_000) -> tuple[float, int]:
    """(CPU µs per message, partial messages made)."""
    e = load(backend).Engine(window=60, emit_every=5, time="event", allowed_lateness=5,
                             key_ttl=600, partials=partials)
    ip = InstancePartials(e, pf.window_settings(60, 5, "event", 5), "i", 16) if partials else None
    pays = [cbor2.dumps({"d": f"dev{i % 10000}", "s": "t", "v": float(i % 97),
                         "t": BASE + i * 0.0005}) for i in range(n)]
    msgs = 0
    t0 = time.process_time()
    for j in range(0, n, 1000):
        e.push_many(pays[j:j + 1000], BASE + j * 0.0005)
        if ip is not None and j % 20000 == 0:
            msgs += len(ip.collect())
    if ip is not None:
        msgs += len(ip.collect())
    return (time.process_time() - t0) / n * 1e6, msgs


def split(n: int = 200_000) -> tuple[float, float, float]:
    """Compiled engine in partial mode, CPU µs per message in (push_many with the closing hook,
    take_closed_panes, the messages around the records)."""
    e = load("compiled").Engine(window=60, emit_every=5, time="event", allowed_lateness=5,
                                key_ttl=600, partials=True)
    ws = pf.window_settings(60, 5, "event", 5)
    pays = [cbor2.dumps({"d": f"dev{i % 10000}", "s": "t", "v": float(i % 97),
                         "t": BASE + i * 0.0005}) for i in range(n)]
    push = take = wrap = 0.0
    for j in range(0, n, 1000):
        t0 = time.process_time()
        e.push_many(pays[j:j + 1000], BASE + j * 0.0005)
        t1 = time.process_time()
        push += t1 - t0
        if j % 20000 == 0:
            groups = e.take_closed_panes(16).groups
            t2 = time.process_time()
            take += t2 - t1
            for interval, part, k, records in groups:
                pf.write_records(pf.KIND_PANES, ws, "i", 0, interval, part, 16, k, records)
            wrap += time.process_time() - t2
    return push / n * 1e6, take / n * 1e6, wrap / n * 1e6


def load_average() -> str:
    """The 1-minute load average: the machine is shared, the figures are read against it."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", action="store_true",
                    help="the compiled engine's partial mode, split by stage")
    if ap.parse_args().split:
        print(f"load average at start: {load_average()}")
        parts = [split() for _ in range(3)]
        for i, name in enumerate(("push_many (with the hook)", "take_closed_panes",
                                  "message headers")):
            print(f"{name}: {statistics.median(p[i] for p in parts):.3f} us/msg")
        print(f"load average at end: {load_average()}")
        return
    cases = [(b, p) for b in ("pure", "compiled") for p in (False, True)]
    print(f"load average at start: {load_average()}")
    # rounds over all four cases, so a burst of load from elsewhere hits each about alike
    runs: dict[tuple[str, bool], list[tuple[float, int]]] = {c: [] for c in cases}
    for _ in range(3):
        for c in cases:
            runs[c].append(run(*c))
    for (backend, partials), rs in runs.items():
        us = statistics.median(r[0] for r in rs)
        name = backend + ("+partials" if partials else "")
        print(f"{name}: {us:.2f} us/msg ({1e6 / us:,.0f} msg/s; {rs[0][1]} messages)")
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
