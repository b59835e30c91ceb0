"""The broker and NATS figures of the scale-out capacity model (docs/scale-out.md, "Capacity
model"), on loopback, this machine:

* ``share``: mosquitto spreading one stream over 1, 2, 3 subscribers of a ``$share`` group:
  loadgen.py (--pub-procs processes) sends --count readings (QoS 0, as fast as it can) to
  ``site/<device>/sensor/<sensor>``; each subscriber is perf/ingest_proc.py (our MQTT source,
  ring and compiled engine, no NATS) on ``$share/cap/site/+/sensor/+``. Delivered msg/s (all
  subscribers together, from the first write to the last message received), the share each
  got, mosquitto's CPU per 100k delivered, and what was lost (QoS 0: mosquitto drops what a
  slow subscriber's queue cannot hold).
* ``jetstream``: partial messages (the format's panes messages, --panes per message, 90 bytes a
  pane) published into a stream of the 3-node cluster with 1 and 3 replicas: one at a time, each
  acked before the next (what ``run --output partials`` does), and pipelined (--window publishes
  in flight); messages/s, panes/s, MB/s, the servers' CPU per MB.
* ``merge``: one ``telemetry-cy merge`` process (all partitions) reading a stream pre-filled
  with the partials of --instances instances × --keys keys × --intervals intervals: panes merged
  per second from its ready line to its last window on ``agg.>``, and its CPU per pane.
  ``--profile DIR`` runs that worker under cProfile (DIR/merge<rep>.prof; docs/performance.md,
  "The merge worker's cost per pane").

Each point is repeated --reps times, interleaved; the summary gives medians of one run.

    python perf/scaleout_capacity.py share jetstream merge --reps 3 --out FILE.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nats

import loadgen
from scaleout_rig import Load, cli, env, machine, make_stream, start_cluster
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.sink.partials_stream import SUBJECT_PREFIX
from telemetry_cy.tools.local_brokers import Mosquitto

HERE = Path(__file__).resolve().parent
CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


# ---- share ----------------------------------------------------------------------------------


class Subscriber:
    """perf/ingest_proc.py on the shared subscription; its stats lines read by a thread."""

    def __init__(self, url: str, i: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "ingest_proc.py"), "--mqtt-url", url, "--topic",
             "$share/cap/site/+/sensor/+", "--qos", "0", "--client-id", f"cap-sub-{i}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env())
        self.received, self.last_change, self.ready = 0, 0.0, threading.Event()
        self.final: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "ready":
                self.ready.set()
            elif rec.get("event") == "stats":
                if rec["received"] != self.received:
                    self.received, self.last_change = rec["received"], time.time()
            elif "received" in rec:
                self.final = rec

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        time.sleep(0.1)
        return int(self.final.get("received", self.received))


def share_point(mosq: Mosquitto, n: int, count: int, frames) -> dict:
    subs = [Subscriber(mosq.url, i) for i in range(n)]
    try:
        for s in subs:
            if not s.ready.wait(20):
                raise RuntimeError("subscriber not ready")
        time.sleep(0.3)
        load = Load().start()
        cpu0 = proc_cpu(mosq.proc.pid)
        t0 = time.time()
        lg = loadgen.run("127.0.0.1", mosq.port, rate=0, count=count, procs=len(frames),
                         frames_by_proc=frames, client_prefix=f"cap-lg-{n}")
        deadline = time.time() + 10.0
        while time.time() < deadline and sum(s.received for s in subs) < lg["sent"]:
            time.sleep(0.01)
        time.sleep(0.3)     # stats lines every 100 ms: the last counts come in
        t_end = max(s.last_change for s in subs)
        cpu1 = proc_cpu(mosq.proc.pid)
        machine_load = load.stop()
    finally:
        got = [s.stop() for s in subs]
    delivered = sum(got)
    return {"subscribers": n, "sent": lg["sent"], "publish_rate": round(lg["rate"]),
            "delivered": delivered, "lost": lg["sent"] - delivered,
            "delivered_rate": round(delivered / max(1e-9, t_end - t0)),
            "shares": [round(g / max(1, delivered), 3) for g in got],
            "mosquitto_cpu_s_per_100k": round((cpu1 - cpu0) / max(1, delivered) * 1e5, 3),
            **machine_load}


def share(a, tmp: Path) -> list[dict]:
    mosq = Mosquitto(tmp / "mosq").start()
    frames = [loadgen.build_frames(1000, 4, 0, p, a.pub_procs) for p in range(a.pub_procs)]
    out = []
    try:
        for rep in range(a.reps):
            for n in (1, 2, 3):
                rec = share_point(mosq, n, a.count, frames)
                print(json.dumps({"share": rep, **rec}), flush=True)
                out.append(rec)
    finally:
        mosq.kill()
    return out


# ---- jetstream ------------------------------------------------------------------------------


def panes_message(panes: int, seq: int, ws) -> bytes:
    ps = [pf.PanePartial(f"dev{k}", "temp", "C", 5, 100.0 + k, 2.5, 19.0, 22.0, 20.0, 100.1,
                         21.0, 100.9, None) for k in range(panes)]
    return pf.write(pf.KIND_PANES, ws, "cap-inst", seq, 100, 0, 1, ps)


async def js_point(urls: list[str], replicas: int, panes: int, window: int, seconds: float,
                   pids: list[int]) -> dict:
    await make_stream(urls[0], replicas, name="CAP", prefix="cap")
    ws = pf.window_settings(60.0, 5.0, "event", 5.0)
    body = panes_message(panes, 0, ws)
    nc = await nats.connect(urls[0])
    js = nc.jetstream()
    load = Load().start()
    cpu0 = sum(proc_cpu(p) for p in pids)
    sent, t0 = 0, time.monotonic()
    try:
        if window <= 1:
            while time.monotonic() - t0 < seconds:
                await js.publish("cap.0", body, headers={"Nats-Msg-Id": f"m{sent}"})
                sent += 1
        else:
            sem = asyncio.Semaphore(window)
            tasks: set = set()

            async def one(i: int) -> None:
                try:
                    await js.publish("cap.0", body, headers={"Nats-Msg-Id": f"m{i}"})
                finally:
                    sem.release()
            while time.monotonic() - t0 < seconds:
                await sem.acquire()
                task = asyncio.create_task(one(sent))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
        info = await js.stream_info("CAP")
    finally:
        await nc.close()
    cpu = sum(proc_cpu(p) for p in pids) - cpu0
    mb = sent * len(body) / 1e6
    return {"replicas": replicas, "panes_per_msg": panes, "bytes_per_msg": len(body),
            "in_flight": window, "msgs": sent, "stored": info.state.messages,
            "msg_per_s": round(sent / wall), "panes_per_s": round(sent * panes / wall),
            "mb_per_s": round(mb / wall, 2),
            "servers_cpu_s_per_mb": round(cpu / max(1e-9, mb), 4), **load.stop()}


def jetstream(a, tmp: Path) -> list[dict]:
    cluster = start_cluster(tmp / "cluster")
    pids = [n.proc.pid for n in cluster.nodes]
    out = []
    try:
        for rep in range(a.reps):
            for replicas in (1, 3):
                for panes in (20, 500):
                    for window in (1, 64):
                        rec = asyncio.run(js_point(cluster.urls, replicas, panes, window,
                                                   a.seconds, pids))
                        print(json.dumps({"jetstream": rep, **rec}), flush=True)
                        out.append(rec)
    finally:
        cluster.kill()
    return out


# ---- merge ----------------------------------------------------------------------------------


def prefill_messages(instances: int, keys: int, intervals: int, partitions: int, ws):
    """(partition, bytes) of every instance's partials, interval by interval: each key's pane
    from each instance (p = instances panes per key-interval: the round-robin case)."""
    k0 = 1000
    by_part: dict[int, list[int]] = {}
    for k in range(keys):
        by_part.setdefault(pf.partition_of(f"dev{k}", "temp", partitions), []).append(k)
    seqs = {(i, p): 0 for i in range(instances) for p in range(partitions)}
    out = []

    def msg(kind, i, p, interval, panes=()):
        data = pf.write(kind, ws, f"inst{i}", seqs[i, p], interval, p, partitions, panes)
        seqs[i, p] += 1
        return p, data
    for i in range(instances):
        for p in range(partitions):
            out.append(msg(pf.KIND_PROGRESS, i, p, k0))
    for j in range(intervals):
        k = k0 + j
        t0 = k * ws.emit_every
        for i in range(instances):
            for p, ks in sorted(by_part.items()):
                panes = [pf.PanePartial(f"dev{x}", "temp", "C", 5, 100.0 + x + i, 2.5, 19.0, 22.0,
                                        20.0, t0 + 0.1 + 0.01 * i, 21.0, t0 + 0.9 - 0.01 * i,
                                        None) for x in ks]
                out.append(msg(pf.KIND_PANES, i, p, k, panes))
            for p in range(partitions):
                out.append(msg(pf.KIND_PROGRESS, i, p, k + 1))
    for i in range(instances):   # closed far ahead, as an instance that stops: every window
        for p in range(partitions):
            out.append(msg(pf.KIND_LEAVE, i, p, k0 + intervals + 1000))
    return out


def merge_point(cluster, a, msgs, panes_total: int, tmp: Path, rep: int) -> dict:
    asyncio.run(make_stream(cluster.urls[0], 3))
    # one at a time, each acked: a partition's messages stay in order (prefill is not measured)
    asyncio.run(prefill_sequential(cluster.urls[0], msgs))
    count = {"n": 0, "t": 0.0}

    async def watch(stop: asyncio.Event) -> None:
        nc = await nats.connect(cluster.urls[1])

        async def cb(msg) -> None:
            count["n"] += 1
            count["t"] = time.monotonic()
        await nc.subscribe("agg.>", cb=cb)
        await stop.wait()
        await nc.close()
    stop_watch = asyncio.Event()
    loop = asyncio.new_event_loop()
    th = threading.Thread(target=loop.run_until_complete, args=(watch(stop_watch),), daemon=True)
    th.start()
    time.sleep(0.5)
    err = open(tmp / f"merge{rep}.stderr", "wb")
    # --profile: the worker under cProfile (its stats written when SIGTERM ends it)
    prof = ([sys.executable, "-m", "cProfile", "-o", str(a.profile / f"merge{rep}.prof")]
            if a.profile else [])
    command = cli("merge", "--nats-url", cluster.url, "--worker-id", f"cap{rep}",
                  "--window", "5s", "--emit-every", "1s", "--allowed-lateness", "0s",
                  "--partitions", str(a.partitions), "--own", f"0-{a.partitions - 1}")
    if prof:
        command = prof + command[1:]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env())
    err.close()
    while b'"ready"' not in (tmp / f"merge{rep}.stderr").read_bytes():
        time.sleep(0.005)
    t_ready, cpu0 = time.monotonic(), proc_cpu(proc.pid)
    load = Load().start()
    while True:   # done when nothing new has come for 2 s
        n = count["n"]
        time.sleep(2.0)
        if count["n"] == n and n > 0:
            break
    cpu1 = proc_cpu(proc.pid)
    machine_load = load.stop()
    proc.send_signal(signal.SIGTERM)
    final = json.loads(proc.communicate(timeout=30)[0].decode().splitlines()[-1])
    loop.call_soon_threadsafe(stop_watch.set)
    th.join(5)
    wall = count["t"] - t_ready
    return {"instances": a.instances, "keys": a.keys, "intervals": a.intervals,
            "panes": final["panes"], "windows": count["n"], "partials": final["partials"],
            "panes_expected": panes_total, "seconds": round(wall, 3),
            "panes_per_s": round(final["panes"] / wall),
            "cpu_us_per_pane": round((cpu1 - cpu0) / final["panes"] * 1e6, 2),
            "cpu_us_per_window": round((cpu1 - cpu0) / max(1, count["n"]) * 1e6, 2),
            **machine_load}


async def prefill_sequential(url: str, msgs) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for p, data in msgs:
        await js.publish(f"{SUBJECT_PREFIX}.{p}", data)
    await nc.close()


def merge(a, tmp: Path) -> list[dict]:
    cluster = start_cluster(tmp / "cluster-m")
    ws = pf.window_settings(5.0, 1.0, "event", 0.0)
    msgs = prefill_messages(a.instances, a.keys, a.intervals, a.partitions, ws)
    panes_total = a.instances * a.keys * a.intervals
    out = []
    try:
        for rep in range(a.reps):
            rec = merge_point(cluster, a, msgs, panes_total, tmp, rep)
            print(json.dumps({"merge": rep, **rec}), flush=True)
            out.append(rec)
    finally:
        cluster.kill()
    return out


# ---- main -----------------------------------------------------------------------------------


def medians(rows: list[dict], by: tuple[str, ...], keys: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[b] for b in by), []).append(r)
    return [{**dict(zip(by, g)), "n": len(rs),
             **{k: statistics.median(r[k] for r in rs) for k in keys}}
            for g, rs in groups.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="+", choices=("share", "jetstream", "merge"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--count", type=int, default=1_000_000, help="share: messages per point")
    ap.add_argument("--pub-procs", type=int, default=2, help="share: publisher processes")
    ap.add_argument("--seconds", type=float, default=4.0, help="jetstream: seconds per point")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--intervals", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--profile", type=Path,
                    help="merge: run the worker under cProfile, merge<rep>.prof in this folder")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "load_start": os.getloadavg(), "command": sys.argv}
    summary: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "share" in a.what:
            rows = result["share"] = share(a, tmp)
            summary["share"] = medians(rows, ("subscribers",), (
                "delivered_rate", "publish_rate", "lost", "mosquitto_cpu_s_per_100k",
                "busy_cores"))
        if "jetstream" in a.what:
            rows = result["jetstream"] = jetstream(a, tmp)
            summary["jetstream"] = medians(rows, ("replicas", "panes_per_msg", "in_flight"), (
                "msg_per_s", "panes_per_s", "mb_per_s", "servers_cpu_s_per_mb", "busy_cores"))
        if "merge" in a.what:
            rows = result["merge"] = merge(a, tmp)
            summary["merge"] = medians(rows, ("instances", "keys"), (
                "panes_per_s", "cpu_us_per_pane", "cpu_us_per_window", "busy_cores"))
    result["summary"] = summary
    result["load_end"] = os.getloadavg()
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
