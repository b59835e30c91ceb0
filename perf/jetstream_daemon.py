"""JetStream against core NATS through the daemon: one tick of N aggregates, from the tick to the
last one the server has (core: the PONG after the batch; JetStream: the last ack).

    PYTHONPATH=$PWD .venv/bin/python perf/jetstream_daemon.py --keys 200000 --reps 3 \\
        --restart -o perf/results/reference/jetstream_daemon.json

One private mosquitto and one nats-server with JetStream (file storage, in a temp directory), both
on free loopback ports. Each run starts a fresh ``telemetry-cy run`` (``--window`` =
``--emit-every`` = ``--tick``, stats every 20 ms, from a copy of the package taken at start, as
perf/ingest_rig.py does) and:

1. waits for MQTT and NATS to be up, then for the start of a tick interval T0 (+0.2 s);
2. publishes one QoS 0 reading for each of the ``--keys`` keys (perf/payloads.py, topic
   ``site/<device>/sensor/<sensor>``) as fast as mosquitto takes them, and checks that the daemon
   received them all before T1 = T0 + tick;
3. the tick at T1 emits one aggregate per key. Measured: from T1 + 50 ms (the engine thread's
   TICK_LAG_S: it cannot tick earlier) to the first stats line whose ``published`` has grown by
   ``--keys`` (its ``ts``, the daemon's own clock; 20 ms resolution). ``published`` means "the
   server has it" in both modes: read by the server (core) or acked by the stream (JetStream);
4. JetStream runs publish to their own subject prefix and stream (``js<run>.>``, duplicate window
   2 min), and afterwards the stream's info must show exactly ``--keys`` messages on ``--keys``
   distinct subjects (one subject per key, one window per run): each (key, window) stored once,
   none missing. Core runs publish to a prefix no stream captures, so the server only routes them.

Mode ``ceiling`` is the server alone, for scale: the HPUB bytes the daemon would send for such a
tick (the compiled encoder, the same key names) written from a raw socket through the emitter's
default window, from the first byte to the last answer -- no MQTT, no engine, no Python event loop.

Modes alternate core, jetstream, ceiling within each repetition (same server, same run).
``--storage memory`` makes the JetStream streams memory-backed; ``--streams 2`` gives each run two
streams that share the sensor names (``<prefix>.*.<sensor>``); ``--daemon-args`` passes flags to
the JetStream runs' daemon (``--max-in-flight 65536``).
``--restart`` adds JetStream runs in which nats-server is restarted (graceful stop, start on the
same port and store) once the daemon has published a third of the tick: the stream must still
hold each (key, window) exactly once. Their time includes the restart, so it is reported apart.

``--subscriber`` also times each run the way a consumer sees it: perf/nats_count.py (nats-py)
subscribed to the run's subjects, from the tick to its first count line at ``--keys`` (100 ms
resolution). That is bounded by the subscriber's own speed for core NATS.

The JSON has every run, the medians, the ratio JetStream/core of the medians (aggregates/s), the
machine (CPU model from lscpu, load average) and the commit of the copied package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import ingest_rig  # noqa: E402
import loadgen  # noqa: E402
from ingest_rig import MOSQ_EXTRA, machine_info, proc_cpu, snapshot_package  # noqa: E402
from payloads import SENSORS, key_of  # noqa: E402
from telemetry_cy.tools.local_brokers import Mosquitto, NatsServer  # noqa: E402
from telemetry_cy.tools.mqtt_loadgen import RawPublisher  # noqa: E402

TICK_LAG_S = 0.05   # telemetry_cy.engine.engine_thread.TICK_LAG_S
STATS_EVERY = "20ms"


def js_api(url: str, subject: str, request: dict) -> dict:
    import nats

    async def run():
        nc = await nats.connect(url)
        try:
            msg = await nc.request(subject, json.dumps(request).encode(), timeout=10)
            return json.loads(msg.data)
        finally:
            await nc.close()
    return asyncio.run(run())


class DaemonRun:
    """One `telemetry-cy run` (perf/ingest_rig.py's Daemon subject: its JSON log lines collected
    by threads), and waits on its stats lines."""

    def __init__(self, snap: Path, env: dict, mosq, nats, tick: float, extra: list[str]):
        rig = types.SimpleNamespace(mosq=mosq, nats=nats, window=tick, emit_every=tick,
                                    snap=snap, env=env)
        self.d = ingest_rig.Daemon(rig, extra, stats_every=STATS_EVERY)
        self.d.start()

    @property
    def tail(self) -> str:
        return self.d.tail()

    def stats_lines(self) -> list[dict]:
        return [o for o in list(self.d.lines) if o.get("msg") == "stats"]

    def wait(self, cond, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.d.proc.poll() is not None:
                raise RuntimeError("the daemon exited:\n" + self.tail)
            lines = self.stats_lines()
            if lines and cond(lines[-1]):
                return lines[-1]
            time.sleep(0.01)
        return None

    def latest(self) -> dict:
        lines = self.stats_lines()
        return lines[-1] if lines else {}

    def first_line(self, cond) -> dict | None:
        return next((o for o in self.stats_lines() if cond(o)), None)

    def stop(self) -> dict:
        return self.d.finish()


class Counter:
    """perf/nats_count.py on the run's subjects: a nats-py subscriber, as the pipeline ramp
    counts aggregates (its count lines come every 100 ms: that is the resolution)."""

    def __init__(self, url: str, subject: str, env: dict):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "nats_count.py"), "--url", url,
                                      "--subject", subject], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        if "ready" not in self.proc.stdout.readline():
            raise RuntimeError("nats_count.py did not start")
        self.lines: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def wait(self, n: int, timeout: float) -> float | None:
        """The time of the first count line at n or more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((o for o in list(self.lines) if o.get("count", 0) >= n), None)
            if hit is not None:
                return hit["t"]
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def stream_layout(stream: str, prefix: str, streams: int) -> dict[str, list[str]]:
    """Stream name -> its subjects: one stream on ``<prefix>.>``, or ``streams`` streams that
    share the sensor names between them (``<prefix>.*.<sensor>``), as an operator would split a
    fleet's subjects so that the server stores on several cores."""
    if streams <= 1:
        return {stream: [f"{prefix}.>"]}
    return {f"{stream}_{i}": [f"{prefix}.*.{name}" for j, (name, *_) in enumerate(SENSORS)
                              if j % streams == i] for i in range(streams)}


def create_stream(nats, stream: str, prefix: str, storage: str = "file",
                  streams: int = 1) -> None:
    for name, subjects in stream_layout(stream, prefix, streams).items():
        r = js_api(nats.url, f"$JS.API.STREAM.CREATE.{name}",
                   {"name": name, "subjects": subjects, "storage": storage,
                    "retention": "limits", "discard": "old", "num_replicas": 1,
                    "duplicate_window": 120 * 10**9})
        if "error" in r:
            raise RuntimeError(f"stream create: {r['error']}")


def check_stream(nats, stream: str, keys: int, rec: dict, streams: int = 1) -> None:
    """Each (key, window) once: one window per run and one subject per key."""
    messages = subjects = 0
    for name in stream_layout(stream, "-", streams):
        state = js_api(nats.url, f"$JS.API.STREAM.INFO.{name}", {}).get("state", {})
        messages += state.get("messages") or 0
        subjects += state.get("num_subjects") or 0
        js_api(nats.url, f"$JS.API.STREAM.DELETE.{name}", {})
    rec["stream"] = {"messages": messages, "subjects": subjects}
    rec["stream_exact"] = messages == keys and subjects == keys


def ceiling_run(args, nats, run_id: int) -> dict:
    """The server alone: the HPUB bytes the daemon would send for the tick (the compiled
    encoder, same names, JSON bodies of the same size), written by a raw socket through the
    emitter's default window (JS_MAX_IN_FLIGHT messages without an answer), timed from the first
    byte to the last answer. No MQTT, no engine, no Python event loop."""
    from telemetry_cy.backend import ACTIVE
    from telemetry_cy.sink.nats_emitter import JS_MAX_IN_FLIGHT

    prefix, stream, inbox = f"raw{run_id}", f"AGG{run_id}", f"_INBOX.rig{run_id}"
    create_stream(nats, stream, prefix, args.storage, args.streams)
    aggs = []
    for k in range(args.keys):
        device, sensor, unit, value, _ = key_of(k)
        aggs.append(ACTIVE.Aggregate(device, sensor, unit, 1.7e9, 1.7e9 + args.tick, 1, value,
                                     value, value, value, 0.0, value, value))
    chunks, counts, n, _, _ = ACTIVE.wire.encode_jetstream(
        aggs, prefix, "json", 3072, inbox, chunk_messages=JS_MAX_IN_FLIGHT // 8)
    sock = socket.create_connection((nats.host, nats.port))
    sock.recv(65536)
    sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true,"protocol":1}'
                 b"\r\nSUB " + inbox.encode() + b".> 1\r\nPING\r\n")
    got = b""
    while b"PONG" not in got:
        got += sock.recv(65536)
    answered, cond, marker = [0], threading.Condition(), b"MSG " + inbox.encode() + b"."

    def read() -> None:
        tail = b""
        while answered[0] < n:
            data = tail + sock.recv(1 << 20)
            k = data.count(marker)   # MSG and HMSG lines: every answer, whatever its kind
            tail = data[-(len(marker) - 1):]
            with cond:
                answered[0] += k
                cond.notify()

    reader = threading.Thread(target=read, daemon=True)
    cpu0 = proc_cpu(nats.proc.pid)
    t0 = time.perf_counter()
    reader.start()
    sent = 0
    for chunk, k in zip(chunks, counts):
        with cond:
            while sent - answered[0] + k > JS_MAX_IN_FLIGHT:
                cond.wait()
        sock.sendall(chunk)
        sent += k
    reader.join(args.timeout)
    elapsed = time.perf_counter() - t0
    cpu = proc_cpu(nats.proc.pid) - cpu0
    sock.close()
    rec = {"mode": "ceiling", "run": run_id, "restart": False, "keys": args.keys,
           "first_byte_to_last_answer_s": round(elapsed, 3),
           "aggregates_per_s": round(args.keys / elapsed), "server_cpu_s": round(cpu, 3)}
    check_stream(nats, stream, args.keys, rec, args.streams)
    print(json.dumps(rec), flush=True)
    return rec


def one_run(args, snap, env, mosq, nats, frames, mode: str, run_id: int,
            restart: bool = False) -> dict:
    js = mode == "jetstream"
    prefix = f"js{run_id}" if js else f"core{run_id}"
    stream = f"AGG{run_id}"
    if js:
        create_stream(nats, stream, prefix, args.storage, args.streams)
    extra = ["--subject-prefix", prefix, "--jetstream", "true" if js else "false",
             "--max-keys", str(max(args.keys, 1_000_000))]
    if js:
        extra += args.daemon_args.split()
    counter = Counter(nats.url, f"{prefix}.>", env) if args.subscriber else None
    d = DaemonRun(snap, env, mosq, nats, args.tick, extra)
    rec: dict = {"mode": mode, "run": run_id, "restart": restart, "keys": args.keys}
    try:
        if d.wait(lambda s: s.get("mqtt") == "up" and s.get("nats") == "up", 30) is None:
            raise RuntimeError("daemon not connected:\n" + d.tail)
        time.sleep(0.5)   # the MQTT subscription is made after CONNACK
        # the start of a tick interval, with room for the whole feed before its end
        while True:
            now = time.time()
            t0 = math.floor(now / args.tick) * args.tick
            if now - t0 < 0.3:
                time.sleep(t0 + 0.2 - now if now < t0 + 0.2 else 0)
                break
            time.sleep(t0 + args.tick - now + 0.01)
        t0 = math.floor(time.time() / args.tick) * args.tick
        t1 = t0 + args.tick
        base = d.latest()
        pub = RawPublisher("127.0.0.1", mosq.port, client_id=f"jsrig-{run_id}")
        for i in range(0, len(frames), 1000):
            pub.send(frames[i:i + 1000])
        fed = time.time()
        s = d.wait(lambda s: s.get("received", 0) >= base.get("received", 0) + args.keys,
                   max(1.0, t1 - time.time() - 0.1))
        pub.close()
        if s is None or time.time() >= t1:
            raise RuntimeError(f"the feed did not reach the daemon before the tick "
                               f"(fed in {fed - t0:.2f} s; raise --tick)")
        rec["feed_s"] = round(fed - t0, 3)
        target = base.get("published", 0) + args.keys
        restarted_at = None
        if restart:
            third = base.get("published", 0) + args.keys // 3
            if d.wait(lambda s: s.get("published", 0) >= third, args.tick + 60) is None:
                raise RuntimeError("no progress before the restart:\n" + d.tail)
            nats.stop()
            restarted_at = time.time()
            nats.start()
            rec["restart_s"] = round(time.time() - restarted_at, 3)
        if not restart:   # the server's CPU from the tick on
            time.sleep(max(0.0, t1 - time.time()))
        cpu_server0 = proc_cpu(nats.proc.pid)
        cpu_daemon0 = proc_cpu(d.d.proc.pid)
        done = d.wait(lambda s: s.get("published", 0) >= target, args.tick + args.timeout)
        if done is None:
            raise RuntimeError(f"not published within {args.tick + args.timeout:.0f} s: "
                               f"{d.latest()}\n" + d.tail)
        first = d.first_line(lambda s: s.get("published", 0) >= target)
        begin = t1 + TICK_LAG_S
        rec["tick_to_last_s"] = round(first["ts"] - begin, 3)
        rec["aggregates_per_s"] = round(args.keys / rec["tick_to_last_s"])
        started = d.first_line(lambda s: s.get("ts", 0) >= begin
                               and s.get("published", 0) > base.get("published", 0))
        rec["tick_to_first_published_s"] = round(started["ts"] - begin, 3) if started else None
        if not restart:
            rec["server_cpu_s"] = round(proc_cpu(nats.proc.pid) - cpu_server0, 3)
            # up to the stats line that saw it done (20 ms of idle polling at most)
            rec["daemon_cpu_s"] = round(proc_cpu(d.d.proc.pid) - cpu_daemon0, 3)
        if counter is not None:
            got = counter.wait(args.keys, args.timeout)
            rec["tick_to_last_received_s"] = None if got is None else round(got - begin, 3)
        time.sleep(0.3)
    finally:
        final = d.stop()
        if counter is not None:
            counter.stop()
    rec["final"] = {k: final.get(k) for k in ("aggregates", "published", "drops", "nats")}
    if final.get("published") != final.get("aggregates"):
        rec["unbalanced"] = True
    if js:
        check_stream(nats, stream, args.keys, rec, args.streams)
    print(json.dumps({k: v for k, v in rec.items() if k != "final"}), flush=True)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--tick", type=float, default=5.0, help="window and emit_every, seconds")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", default="core,jetstream,ceiling",
                    help="core, jetstream (through the daemon), ceiling (nats-server alone)")
    ap.add_argument("--restart", action="store_true",
                    help="also JetStream runs with a nats-server restart mid-publish")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--subscriber", action="store_true",
                    help="also time the last aggregate a nats-py subscriber receives "
                         "(perf/nats_count.py, 100 ms resolution)")
    ap.add_argument("--storage", choices=("file", "memory"), default="file",
                    help="the JetStream streams' storage")
    ap.add_argument("--streams", type=int, default=1,
                    help="JetStream streams per run, the sensor names shared between them")
    ap.add_argument("--daemon-args", default="",
                    help="more flags for the JetStream runs' daemon, e.g. '--max-in-flight 65536'")
    ap.add_argument("--package", help="import telemetry_cy from this checkout (default: here)")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tcy-jsrig-"))
    src = Path(args.package).resolve() if args.package else ROOT
    snap = snapshot_package(tmp / "snap", src)
    env = dict(os.environ, PYTHONPATH=str(snap), PYTHONDONTWRITEBYTECODE="1")
    machine = machine_info(snap, src)
    frames = loadgen.build_frames(args.keys, 1)
    runs: list[dict] = []
    try:
        with Mosquitto(tmp / "mosquitto", persistence=False, extra_conf=MOSQ_EXTRA) as mosq, \
                NatsServer(tmp / "nats") as nats:
            run_id = 0
            for _ in range(args.reps):
                for mode in args.modes.split(","):
                    run_id += 1
                    if mode == "ceiling":
                        runs.append(ceiling_run(args, nats, run_id))
                    else:
                        runs.append(one_run(args, snap, env, mosq, nats, frames, mode, run_id))
            if args.restart:
                for _ in range(args.reps):
                    run_id += 1
                    runs.append(one_run(args, snap, env, mosq, nats, frames, "jetstream",
                                        run_id, restart=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict = {}
    for mode in args.modes.split(","):
        rates = [r["aggregates_per_s"] for r in runs if r["mode"] == mode and not r["restart"]]
        summary[mode] = {"aggregates_per_s": rates, "median_per_s": statistics.median(rates)}
        received = [r["tick_to_last_received_s"] for r in runs
                    if r["mode"] == mode and r.get("tick_to_last_received_s")]
        if received:
            summary[mode]["tick_to_last_received_s"] = received
            summary[mode]["median_received_per_s"] = round(args.keys
                                                           / statistics.median(received))
    if "core" in summary and "jetstream" in summary:
        summary["ratio_jetstream_to_core"] = round(
            summary["jetstream"]["median_per_s"] / summary["core"]["median_per_s"], 3)
    if summary.get("core", {}).get("median_received_per_s") and \
            summary.get("jetstream", {}).get("median_received_per_s"):
        summary["ratio_received_jetstream_to_core"] = round(
            summary["jetstream"]["median_received_per_s"]
            / summary["core"]["median_received_per_s"], 3)
    if "ceiling" in summary and "jetstream" in summary:
        summary["ratio_jetstream_to_ceiling"] = round(
            summary["jetstream"]["median_per_s"] / summary["ceiling"]["median_per_s"], 3)
    js_runs = [r for r in runs if r["mode"] in ("jetstream", "ceiling")]
    summary["every_stream_exact"] = all(r.get("stream_exact") for r in js_runs)
    summary["every_run_balanced"] = not any(r.get("unbalanced") for r in runs)
    if args.restart:
        summary["restart_runs_tick_to_last_s"] = [r["tick_to_last_s"] for r in runs
                                                  if r["restart"]]
    print(json.dumps(summary, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps({
            "kind": "jetstream_daemon", "args": vars(args), "machine": machine,
            "load_after": os.getloadavg(), "summary": summary, "runs": runs}, indent=2) + "\n")
    return 0 if summary["every_stream_exact"] and summary["every_run_balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
