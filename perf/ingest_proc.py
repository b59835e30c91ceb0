"""Ingest only: MqttSource -> ByteRing -> EngineThread, with a no-op emit (aggregates are counted
and dropped; no NATS). The "ingest" subject of perf/ingest_rig.py, run as its own process so its
CPU time and peak RSS are its own. Same engine and ring settings as `telemetry-cy run`.

    python perf/ingest_proc.py --mqtt-url mqtt://127.0.0.1:1883 [--expect N]

stdout, one JSON object per line:
- ``{"event": "ready", "t": ...}`` once connected and subscribed (SUBACK granted);
- ``{"event": "stats", "received": N, "t": ...}`` every 100 ms while ``received`` changes;
- with ``--expect N``: ``{"event": "done", "t": ...}`` when ``received`` reaches N (polled every
  millisecond: the session-drain timing);
- on SIGTERM/SIGINT: the final counters, shaped like `telemetry-cy run`'s (received, payloads,
  readings, drops by reason, aggregates, ...) plus the timestamps, CPU seconds and VmHWM.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import threading
import time
from pathlib import Path

# PYTHONPATH (a snapshot of the package, see ingest_rig.py) wins over the working tree
sys.path.append(str(Path(__file__).resolve().parent.parent))

from telemetry_cy import Engine  # noqa: E402
from telemetry_cy.engine import engine_thread  # noqa: E402
from telemetry_cy.engine.engine_thread import EngineThread  # noqa: E402
from telemetry_cy.service.daemon import _pow2_at_least  # noqa: E402
from telemetry_cy.service.pipeline_snapshot import merge_drops  # noqa: E402
from telemetry_cy.source._ring import ByteRing  # noqa: E402
from telemetry_cy.source.mqtt import MqttSource  # noqa: E402


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mqtt-url", required=True)
    ap.add_argument("--topic", action="append", default=None)
    ap.add_argument("--qos", type=int, default=1, choices=(0, 1))
    ap.add_argument("--client-id", default=None)
    ap.add_argument("--session-expiry", type=float, default=0)
    ap.add_argument("--ring-bytes", type=int, default=16 << 20)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--emit-every", type=float, default=5.0)
    ap.add_argument("--max-keys", type=int, default=1_000_000)
    ap.add_argument("--spin-drains", type=int, default=None,
                    help="experiment: override telemetry_cy.engine.engine_thread.SPIN_DRAINS "
                         "(empty drains before the engine thread parks; default: leave it alone)")
    ap.add_argument("--batch-records", type=int, default=None,
                    help="experiment: EngineThread(batch_records=...) (default: its default)")
    ap.add_argument("--drain-before-tick", action="store_true",
                    help="experiment: empty the ring before each clock-driven tick, so records "
                         "stamped before the tick are not counted late when the engine is behind")
    ap.add_argument("--expect", type=int, default=0,
                    help="report the time at which `received` reaches this count")
    a = ap.parse_args(argv)

    if a.spin_drains is not None:
        if not hasattr(engine_thread, "SPIN_DRAINS"):
            # builds since Engine.run_ring park in C: there is no Python spin loop to tune
            raise SystemExit("--spin-drains: this build's engine thread has no spin loop")
        engine_thread.SPIN_DRAINS = a.spin_drains   # read by EngineThread.run() at each park

    if a.drain_before_tick:
        plain_tick = EngineThread._tick

        def _tick(self, now):
            # bounded: at most what the ring holds now, plus what arrives meanwhile (stamped
            # after `now`, so those close the tick by themselves when the engine reaches them)
            for _ in range(1 + ring.capacity // 64 // self.batch_records):
                if not self.engine.drain(self.ring, self.batch_records):
                    break
            plain_tick(self, now)

        EngineThread._tick = _tick

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    emitted = [0]

    def emit(aggregates, now):   # no NATS: count and let them go
        emitted[0] += len(aggregates)

    ring = ByteRing(_pow2_at_least(a.ring_bytes))
    engine = Engine(window=a.window, emit_every=a.emit_every, max_keys=a.max_keys)
    kw = {} if a.batch_records is None else {"batch_records": a.batch_records}
    et = EngineThread(engine, ring, emit, **kw)
    src = MqttSource(ring, url=a.mqtt_url, topics=a.topic or ["site/+/sensor/+"], qos=a.qos,
                     client_id=a.client_id, session_expiry=a.session_expiry)
    et.start()
    t_start = time.time()
    src.start()
    t_ready = t_done = None
    if src.wait_connected(30):
        t_ready = time.time()
        print(json.dumps({"event": "ready", "t": t_ready}), flush=True)
    if a.expect and t_ready is not None:
        while not stop.is_set():
            if src.stats()["received"] >= a.expect:
                t_done = time.time()
                print(json.dumps({"event": "done", "t": t_done}), flush=True)
                break
            time.sleep(0.001)
    last = -1
    while not stop.wait(0.1):
        n = src.stats()["received"]
        if n != last:
            last = n
            print(json.dumps({"event": "stats", "received": n, "t": time.time()}), flush=True)
    src.stop()
    et.stop()
    s, e = src.stats(), et.stats()
    drops, _ = merge_drops(e, s)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "received": s["received"], "written": s["written"], "payloads": e.get("payloads", 0),
        "readings": e.get("readings", 0), "drops": drops, "aggregates": emitted[0],
        "live_keys": e.get("live_keys", 0), "parks": e.get("parks", 0),
        "mqtt": {k: s[k] for k in ("connects", "disconnects", "protocol_errors", "acks")},
        "t_start": t_start, "t_ready": t_ready, "t_done": t_done,
        "cpu_s": ru.ru_utime + ru.ru_stime, "vm_hwm_kib": vm_hwm_kib(),
    }, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
