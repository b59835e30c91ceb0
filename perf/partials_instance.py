"""What partial mode costs an instance's engine thread (docs/scale-out.md, capacity model).

Process CPU time per message, median of 3: 200,000 event-time CBOR payloads over 10,000 keys
pushed in batches of 1,000 (``push_many``) into the pure engine, the pure engine with the
partials hook (``InstancePartials``, collected every 20 batches), and the compiled engine.

    python perf/partials_instance.py
"""

from __future__ import annotations

import statistics
import time

import cbor2

from telemetry_cy.backend import load
from telemetry_cy.engine import _engine_py
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.partials_py import InstancePartials

BASE = 1.7e9


def run(compiled: bool, hook: bool, n: int = 200_000) -> float:
    engine_cls = load("compiled").Engine if compiled else _engine_py.Engine
    e = engine_cls(window=60, emit_every=5, time="event", allowed_lateness=5, key_ttl=600)
    ip = InstancePartials(e, pf.window_settings(60, 5, "event", 5), "i", 16) if hook else None
    pays = [cbor2.dumps({"d": f"dev{i % 10000}", "s": "t", "v": float(i % 97),
                         "t": BASE + i * 0.0005}) for i in range(n)]
    t0 = time.process_time()
    for j in range(0, n, 1000):
        e.push_many(pays[j:j + 1000], BASE + j * 0.0005)
        if ip is not None and j % 20000 == 0:
            ip.collect()
    if ip is not None:
        ip.collect()
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    for name, compiled, hook in (("pure", False, False), ("pure+partials", False, True),
                                 ("compiled", True, False)):
        us = statistics.median(run(compiled, hook) for _ in range(3))
        print(f"{name}: {us:.2f} us/msg")


if __name__ == "__main__":
    main()
