"""Fast MQTT load generator for the ingest and pipeline benchmarks.

Pre-built PUBLISH frames of ~60-byte CBOR readings (perf/payloads.py: 1,000 keys by default,
topic ``site/<device>/sensor/<sensor>``), sent over raw sockets by
``telemetry_cy.tools.mqtt_loadgen`` (batched writes, rate pacing), from several processes to reach
rates one Python process cannot. QoS 0 by
default; QoS 1 frames carry packet ids and the broker's PUBACKs are counted.

    python perf/loadgen.py --port 1883 --rate 50000 --duration 10 --procs 2
    python perf/loadgen.py --port 1883 --count 1000000 --rate 0        # as fast as the broker takes

prints one JSON object: ``{"sent", "seconds", "rate", ...}``. ``rate`` is what was really sent per
second (``sent / seconds``), ``offered`` what was asked for: a broker that reads slower than the
offered rate pushes back through TCP and ``rate`` falls below ``offered``.

Keys are split between the processes (process p sends keys p, p+procs, ...), so each key's
readings stay in order on one connection. Every process connects first; all start sending at the
same moment (a barrier), and ``seconds`` runs from that moment to the last process's last write.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from payloads import PayloadSet, key_of  # noqa: E402
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, paced, publish_frame  # noqa: E402

#: frames per write in unpaced (--rate 0) mode: ~100 KB per sendall
CHUNK = 1000


def topic_of(key: int) -> str:
    device, sensor, *_ = key_of(key)
    return f"site/{device}/sensor/{sensor}"


def build_frames(keys: int = 1000, rounds: int = 4, qos: int = 0, part: int = 0,
                 parts: int = 1) -> list[bytes]:
    """PUBLISH frames for the keys of part ``part`` of ``parts``: ``rounds`` rounds of one reading
    per key, each round in a fresh shuffled key order. QoS 1 frames get packet ids 1, 2, ...
    (at most 65,535 frames, so an id is reused only after the broker acked it long ago)."""
    ps = PayloadSet.cached(keys, rounds)
    topics = [topic_of(k).encode() for k in range(keys)]
    frames = []
    for i in range(len(ps)):
        k = ps.key(i)
        if k % parts != part:
            continue
        pid = (len(frames) % 65535) + 1 if qos else 0
        frames.append(publish_frame(topics[k], ps[i], qos, pid))
    if qos and len(frames) > 65535:
        raise ValueError("QoS 1: at most 65,535 pre-built frames per process (fewer rounds/keys)")
    return frames


class _Cycler:
    """make_frames for publisher.paced: the next n frames of a pre-built list, wrapping around,
    never more than ``limit`` in total (None: no limit)."""

    def __init__(self, frames: list[bytes], limit: int | None, done: threading.Event):
        self.frames, self.pos, self.left, self.done = frames, 0, limit, done

    def __call__(self, _now: float, n: int) -> list[bytes]:
        if self.left is not None:
            n = min(n, self.left)
            self.left -= n
            if self.left == 0:
                self.done.set()
        out = []
        frames, total = self.frames, len(self.frames)
        while n > 0:
            take = min(n, total - self.pos)
            out += frames[self.pos:self.pos + take]
            self.pos = (self.pos + take) % total
            n -= take
        return out


def _worker(host: str, port: int, frames: list[bytes], rate: float, duration: float,
            count: int | None, client_id: str, barrier, results, tick: float) -> None:
    try:
        pub = RawPublisher(host, port, client_id=client_id)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        barrier.abort()
        results.put({"error": f"{type(exc).__name__}: {exc}"})
        return
    try:
        barrier.wait(30)
    except threading.BrokenBarrierError:
        pub.close()
        results.put({"error": "another process failed to connect"})
        return
    cpu0 = os.times()
    t0 = time.time()
    done = threading.Event()
    cyc = _Cycler(frames, count, done)
    if rate > 0:
        # paced() stops at `duration` (0: never) or when the cycler has handed out `count`
        limit = duration if duration else 0.0
        if count is not None and not limit:
            limit = count / rate * 4 + 10      # a safety bound; done stops it first
        paced(pub, cyc, rate, limit, stop=done, tick=tick)
    else:
        deadline = time.monotonic() + duration if duration else float("inf")
        while not done.is_set() and time.monotonic() < deadline:
            batch = cyc(0.0, CHUNK)
            if not batch:
                break
            pub.send(batch)
            pub.sent += len(batch)
    t1 = time.time()
    cpu1 = os.times()
    acks_wait = time.monotonic() + 5.0
    if frames[0][0] & 0x06:   # QoS 1: wait a little for the last PUBACKs
        while pub.acks < pub.sent and time.monotonic() < acks_wait:
            time.sleep(0.01)
    results.put({"sent": pub.sent, "bytes": pub.bytes, "acks": pub.acks, "t0": t0, "t1": t1,
                 "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)})
    pub.close()


def run(host: str, port: int, *, rate: float = 0.0, duration: float = 0.0,
        count: int | None = None, procs: int = 1, keys: int = 1000, rounds: int = 4,
        qos: int = 0, client_prefix: str = "loadgen", tick: float = 0.01,
        frames_by_proc: list[list[bytes]] | None = None) -> dict:
    """Publishes from ``procs`` processes and returns {sent, seconds, rate, ...}. ``rate`` is the
    total offered msg/s (0: as fast as possible); stop after ``duration`` s or ``count`` messages
    in total (whichever comes first; at least one of them). ``frames_by_proc``: pre-built frames
    (build_frames(..., part=p, parts=procs)), to keep the frame building out of a timed loop."""
    if not duration and not count:
        raise ValueError("give a duration or a count")
    if frames_by_proc is None:
        frames_by_proc = [build_frames(keys, rounds, qos, p, procs) for p in range(procs)]
    if len(frames_by_proc) != procs:
        raise ValueError("one frame list per process")
    counts = [None] * procs
    if count:
        counts = [count // procs + (1 if p < count % procs else 0) for p in range(procs)]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, daemon=True,
                           args=(host, port, frames_by_proc[p], rate / procs, duration, counts[p],
                                 f"{client_prefix}-{os.getpid()}-{p}", barrier, results, tick))
               for p in range(procs)]
    for w in workers:
        w.start()
    bound = (duration or 0) + (count / rate * 4 if count and rate else 0) + 120
    out = []
    try:
        for _ in workers:
            out.append(results.get(timeout=bound))
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
                w.join(5)
    errors = [r["error"] for r in out if "error" in r]
    if errors:
        raise RuntimeError("; ".join(errors))
    sent = sum(r["sent"] for r in out)
    t0, t1 = min(r["t0"] for r in out), max(r["t1"] for r in out)
    seconds = max(t1 - t0, 1e-9)
    return {"sent": sent, "seconds": round(seconds, 4), "rate": round(sent / seconds, 1),
            "offered": rate, "procs": procs, "keys": keys, "qos": qos,
            "acks": sum(r["acks"] for r in out), "bytes": sum(r["bytes"] for r in out),
            "loadgen_cpu_s": round(sum(r["cpu_s"] for r in out), 3),
            "t_start": t0, "t_end": t1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="total offered msg/s over all processes (0: as fast as possible)")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds to send (0: use --count)")
    ap.add_argument("--count", type=int, default=0, help="messages to send in total")
    ap.add_argument("--procs", type=int, default=2, help="publisher processes")
    ap.add_argument("--keys", type=int, default=1000, help="distinct (device, sensor) keys")
    ap.add_argument("--rounds", type=int, default=4,
                    help="pre-built readings per key (cycled)")
    ap.add_argument("--qos", type=int, choices=(0, 1), default=0)
    ap.add_argument("--tick", type=float, default=0.01, help="pacing interval, seconds")
    a = ap.parse_args(argv)
    if not a.duration and not a.count:
        ap.error("give --duration or --count")
    res = run(a.host, a.port, rate=a.rate, duration=a.duration, count=a.count or None,
              procs=a.procs, keys=a.keys, rounds=a.rounds, qos=a.qos, tick=a.tick)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
