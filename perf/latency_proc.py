"""Publish -> engine latency probe: MqttSource + ByteRing + EngineThread of the build on
PYTHONPATH, with an engine stand-in that, for every record it drains, notes ``time.time()`` minus
the publish time the payload carries (``struct '<dI'``: publish time, sequence number, written by
perf/wakeups_rig.py's publisher just before its write). Run by ``wakeups_rig.py latency``.

The stand-in drains with ``ring.pop_many`` (Python objects, the GIL held) where the real engine
decodes in C without the GIL: it measures when a record can be read on the engine thread, which is
what the wake-up path (network thread, ring, doorbell, the engine thread's park) decides. It is
never lent to the network thread (includes/tc_park.h: only the compiled engine offers a C drain
entry), so it measures the doorbell path; a record drained into a lent engine is processed in
the turn of its read, i.e. at the ``read_*`` figures plus the drain's microseconds.

stdout: ``{"event": "ready"}`` once subscribed; on SIGTERM one JSON line with the percentiles (ms)
of publish -> engine (``p50_ms`` ...), publish -> network thread's read (``read_*``: the record's
arrival stamp, broker hop included) and read -> engine (``ring_*``).
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

from telemetry_cy.backend import ACTIVE  # noqa: E402
from telemetry_cy.engine.engine_thread import EngineThread  # noqa: E402
from telemetry_cy.source.mqtt import MqttSource  # noqa: E402

_STAMP = struct.Struct("<dI")


class ProbeEngine:
    """What EngineThread needs of an Engine, recording latencies instead of windows."""

    emit_every = 1.0

    def __init__(self) -> None:
        self.total: list[float] = []
        self.read: list[float] = []
        self.ring: list[float] = []

    def drain(self, ring, max_records: int) -> int:
        recs = ring.pop_many(max_records)
        if recs:
            now = time.time()
            for ts, _topic, payload in recs:
                if len(payload) != _STAMP.size:
                    continue   # the rig's subscription probe
                sent = _STAMP.unpack(payload)[0]
                self.total.append(now - sent)
                self.read.append(ts - sent)
                self.ring.append(now - ts)
        return len(recs)

    def run_ring(self, ring, seconds: float, batch_records: int) -> bool:
        # the engine's loop between Python turns, in its twin's Python form around this drain:
        # the same parks on the same doorbell as the compiled one (builds before run_ring never
        # call it, hence the import here)
        from telemetry_cy.engine._engine_py import run_ring_loop
        return run_ring_loop(self.drain, ring, seconds, batch_records)

    def tick(self, now: float) -> list:
        return []

    def stats(self) -> dict:
        return {"payloads": len(self.total)}

    def open_readings(self) -> int:
        return 0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1e3, 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mqtt-url", required=True)
    ap.add_argument("--qos", type=int, default=1, choices=(0, 1))
    ap.add_argument("--coalesce", type=float, default=None,
                    help="MqttSource(coalesce=...) (default: its default)")
    a = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ring = ACTIVE.ByteRing(16 << 20)
    probe = ProbeEngine()
    et = EngineThread(probe, ring, lambda aggs, now: None)
    kw = {} if a.coalesce is None else {"coalesce": a.coalesce}
    src = MqttSource(ring, url=a.mqtt_url, topics=["site/+/sensor/+"], qos=a.qos, **kw)
    et.start()
    src.start()
    if not src.wait_connected(30):
        print(json.dumps({"event": "failed", "error": src.stats()["last_error"]}), flush=True)
        return 1
    print(json.dumps({"event": "ready"}), flush=True)
    stop.wait()
    src.stop()
    et.stop()
    out = {"n": len(probe.total)}
    for prefix, vals in (("", probe.total), ("read_", probe.read), ("ring_", probe.ring)):
        for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
            out[f"{prefix}{name}_ms"] = pct(vals, q)
        out[f"{prefix}max_ms"] = round(max(vals) * 1e3, 3) if vals else None
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
