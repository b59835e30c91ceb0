"""CPU per message of `telemetry-cy run` (MQTT -> NATS) at moderate rates and at the broker's
ceiling, two builds side by side with ``mosquitto_sub`` on the same broker in the same run; and the
latency from an MQTT publish to the reading being in the engine thread.

    python perf/wakeups_rig.py cpu --before DIR [--rates 5000,20000,max] -o out.json
    python perf/wakeups_rig.py latency --before DIR [--rate 5000] -o out.json

``--before DIR``: a directory holding a built ``telemetry_cy/`` (a HEAD export, see
perf/README.md) measured as ``pipeline_before`` beside the working tree's ``pipeline``; without
it only the working tree runs.

**cpu**: one private mosquitto and nats-server (perf/ingest_rig.py's Rig); for each rate, each
subject in turn (order rotated per repetition) is started, probed until subscribed, then
``loadgen.py`` publishes ``--duration`` seconds (1,000 keys, QoS 0, 2 processes, pacing tick
``--tick``: 1 ms by default, so 5k msg/s arrive as ~5 small writes per ms rather than one burst
every 10 ms). Measured in the window [just before sending, all received or ``--grace`` after the
last write]: CPU seconds of the subject process (utime + stime of /proc/<pid>/stat) per 100,000
received messages, the same per thread (/proc/<pid>/task/<tid>/stat; threads labelled in start
order: main, nats, engine, mqtt for the daemon), voluntary context switches per message (each one
a sleep that ended in a wake-up), and "other_cores": CPU used by processes outside the rig.
``--floor 4,8``: also perf/yardstick/nap_floor.c with those naps (subjects ``floor_4ms`` ...), an
MQTT subscriber in plain C that does only the pump's reads, quick ACKs and naps: what the kernel
and the hypervisor charge for the design itself, below which no build of the daemon can go.
``--strace-rates``: an extra point per subject at those rates under ``strace -c -f`` for the
syscall counts per message (strace slows the process: its CPU figures are not used).

**latency**: perf/latency_proc.py (MqttSource + ByteRing + EngineThread of the build under test,
with an engine stand-in that records, for every record it drains, now - the publish time carried
in the payload) against a publisher in this process that stamps each payload with ``time.time()``
just before its write, paced evenly at ``--rate``. Publish -> engine includes mosquitto's hop;
the *added* latency of a change is the difference between the two builds in the same run.

The machine is shared: figures are CPU time, not wall time; a point where others used more than
``--disturbed`` cores is repeated (the least disturbed attempt counts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ingest_rig as ir  # noqa: E402
import loadgen  # noqa: E402
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, paced, publish_frame  # noqa: E402

THREADS = {"pipeline": ("main", "nats", "engine", "mqtt"),
           "latency": ("main", "engine", "mqtt")}


def threads_of(pid: int) -> list[tuple[int, float, int, int]]:
    """(tid, cpu seconds, voluntary, involuntary context switches) of every thread, by tid."""
    out = []
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / ir.CLK
            vol = invol = 0
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol = int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.append((tid, cpu, vol, invol))
    return out


class _RigView:
    """The rig seen by a subject that runs another build: its own snapshot and environment."""

    def __init__(self, rig: ir.Rig, snap: Path):
        self._rig = rig
        self.snap = snap
        self.env = dict(rig.env, PYTHONPATH=str(snap))

    def __getattr__(self, name):
        return getattr(self._rig, name)


class DaemonBefore(ir.Daemon):
    name = "pipeline_before"


class DaemonVariant(ir.Daemon):
    """The working tree's daemon with another --mqtt-coalesce."""

    def __init__(self, rig, coalesce: str):
        super().__init__(rig, ["--mqtt-coalesce", coalesce], stats_every="1s")
        self.name = f"pipeline_c{coalesce}"


class NapFloor(ir.Subject):
    """perf/yardstick/nap_floor.c: the pump's reads, quick ACKs and naps with nothing behind
    them. Its CPU per message is the part of the daemon's that the kernel and the hypervisor
    charge for the design itself; it counts PUBLISHes into a shared mapped file."""

    def __init__(self, rig: ir.Rig, nap_ms: float = 4.0):
        super().__init__(rig)
        self.nap_ms = nap_ms
        self.name = f"floor_{nap_ms:g}ms"
        self.exe = Path(rig.tmp) / "nap_floor"
        if not self.exe.exists():
            src = HERE / "yardstick" / "nap_floor.c"
            subprocess.run(["cc", "-O2", "-o", str(self.exe), str(src)], check=True)

    def start(self) -> None:
        fd, self.counter = tempfile.mkstemp(prefix="tcy-floor-", dir=self.rig.shm)
        os.close(fd)
        self.proc = subprocess.Popen(
            [str(self.exe), str(self.rig.mosq.port), "site/#", self.counter, str(self.nap_ms)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def raw_count(self) -> int:
        try:
            with open(self.counter, "rb") as f:
                data = f.read(8)
        except OSError:
            return 0
        return struct.unpack("<Q", data)[0] if len(data) == 8 else 0

    def finish(self) -> dict:
        n = self.raw_count()
        _, err = self.stop()
        os.unlink(self.counter)
        tail = (err or b"")[-500:]
        return {"received_raw": n, "drops": {},
                "stderr": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}


def make_subjects(rig: ir.Rig, before: Path | None, variants: list[str] = (),
                  floor_naps: list[float] = ()) -> dict:
    # stats lines once a second (the default is 10 s): the rig counts messages from them, and
    # at 5k msg/s the rig's usual 200 ms would cost the main thread ~0.04 CPU-s per 100k
    subjects = {"baseline": lambda: ir.MosquittoSub(rig),
                "pipeline": lambda: ir.Daemon(rig, stats_every="1s")}
    if before is not None:
        view = _RigView(rig, before)
        subjects["pipeline_before"] = lambda: DaemonBefore(view, stats_every="1s")
    for v in variants:
        subjects[f"pipeline_c{v}"] = lambda v=v: DaemonVariant(rig, v)
    for ms in floor_naps:
        subjects[f"floor_{ms:g}ms"] = lambda ms=ms: NapFloor(rig, ms)
    return subjects


def _strace(pid: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen(["strace", "-c", "-f", "-q", "-p", str(pid), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _strace_table(path: Path) -> dict:
    calls: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                continue
    return calls


def cpu_point(rig: ir.Rig, subject, rate: float, frames, strace: bool = False) -> dict:
    a = rig.args
    subject.start()
    try:
        subject.wait_subscribed()
    except Exception:
        subject.finish() if isinstance(subject, ir.MosquittoSub) else subject.stop()
        raise
    pid = subject.pid
    tracer = None
    trace_file = Path(tempfile.mktemp(prefix="tcy-strace-", dir=rig.tmp))
    if strace:
        tracer = _strace(pid, trace_file)
        time.sleep(1.0)   # attached to every thread before the first message
    s0 = rig.snapshot(subject)
    t0 = {tid: (cpu, vol, invol) for tid, cpu, vol, invol in threads_of(pid)}
    lg = loadgen.run(ir.HOST, rig.mosq.port, rate=rate, duration=a.duration, procs=a.procs,
                     keys=a.keys, frames_by_proc=frames, tick=a.tick,
                     client_prefix=f"lg-{subject.name}")
    deadline = lg["t_end"] + a.grace
    while time.time() < deadline and subject.received() < lg["sent"]:
        time.sleep(0.005)
    s1 = rig.snapshot(subject)
    t1 = threads_of(pid)
    syscalls = None
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        syscalls = _strace_table(trace_file)
        trace_file.unlink(missing_ok=True)
    final = subject.finish()
    received = final["received_raw"] - subject.base
    wall = s1["t"] - s0["t"]
    cpu = s1["subject"] - s0["subject"]
    ours = sum(s1[k] - s0[k] for k in ("subject", "self", *rig.pids())) + lg["loadgen_cpu_s"]
    labels = THREADS.get("pipeline" if subject.name.startswith("pipeline") else "", ())
    threads = {}
    for i, (tid, c, vol, invol) in enumerate(t1):
        c0, v0, i0 = t0.get(tid, (0.0, 0, 0))
        name = labels[i] if i < len(labels) else f"thread{i}"
        threads[name] = {"cpu_s_per_100k": round((c - c0) / max(1, received) * 1e5, 4),
                         "vol_ctxsw_per_msg": round((vol - v0) / max(1, received), 4),
                         "invol_ctxsw_per_msg": round((invol - i0) / max(1, received), 4)}
    rec = {
        "subject": subject.name, "offered": rate, "achieved_rate": lg["rate"], "sent": lg["sent"],
        "received": received, "received_ratio": round(received / max(1, lg["sent"]), 5),
        "drops": {k: v for k, v in final.get("drops", {}).items() if v},
        "cpu_s": round(cpu, 3),
        "cpu_s_per_100k": round(cpu / received * 1e5, 4) if received else None,
        "threads": threads,
        "vol_ctxsw_per_msg": round(sum(
            (v - t0.get(tid, (0, 0, 0))[1]) for tid, _, v, _ in t1) / max(1, received), 4),
        "broker_cpu_s": round(s1["broker"] - s0["broker"], 3),
        "wall_s": round(wall, 3),
        "other_cores": round(max(0.0, (s1["busy"] - s0["busy"]) - ours) / wall, 3),
        "loadavg_end": round(s1["loadavg"], 2), "strace": strace,
    }
    if syscalls is not None:
        rec["syscalls_per_msg"] = {k: round(v / max(1, received), 3)
                                   for k, v in sorted(syscalls.items(), key=lambda kv: -kv[1])}
        rec["syscalls_per_msg_total"] = round(sum(syscalls.values()) / max(1, received), 3)
    return rec


def measure(rig: ir.Rig, make, rate: float, frames, strace: bool = False) -> dict:
    a = rig.args
    attempts = []
    for _ in range(1 + a.repeats):
        rig.wait_quiet()
        rec = cpu_point(rig, make(), rate, frames, strace)
        attempts.append(rec)
        th = " ".join(f"{k}={v['cpu_s_per_100k']}" for k, v in rec["threads"].items())
        print(f"  {rec['subject']:16s} {rate or rec['achieved_rate']:>9,.0f}/s "
              f"recv {rec['received_ratio']:.4f} cpu/100k {rec['cpu_s_per_100k']} [{th}] "
              f"vcsw/msg {rec['vol_ctxsw_per_msg']} other {rec['other_cores']:.2f}"
              + (f" syscalls/msg {rec['syscalls_per_msg_total']}" if strace else ""), flush=True)
        if rec["other_cores"] <= a.disturbed:
            break
    best = dict(min(attempts, key=lambda r: r["other_cores"]))
    best["attempts"] = len(attempts)
    return best


def cmd_cpu(args) -> dict:
    rates = [0.0 if r.strip() == "max" else float(r) for r in args.rates.split(",")]
    strace_rates = [float(r) for r in args.strace_rates.split(",") if r.strip()]
    frames = [loadgen.build_frames(args.keys, args.rounds, 0, p, args.procs)
              for p in range(args.procs)]
    points = []
    t_begin = time.time()
    with ir.Rig(args, need_nats=True) as rig:
        subjects = make_subjects(rig, Path(args.before).resolve() if args.before else None,
                                 [v for v in args.variants.split(",") if v],
                                 [float(ms) for ms in args.floor.split(",") if ms])
        if args.before:
            rig.machine["before"] = {"commit": (
                (Path(args.before) / "COMMIT").read_text().strip()
                if (Path(args.before) / "COMMIT").exists() else None)}
        names = list(subjects)
        k = 0
        for rate in rates:
            print(f"rate {rate:,.0f} msg/s" if rate else "rate max (unpaced)", flush=True)
            for rep in range(args.reps):
                order = names[k % len(names):] + names[:k % len(names)]
                k += 1
                for s in order:
                    rec = measure(rig, subjects[s], rate, frames)
                    rec["rep"] = rep
                    points.append(rec)
        for rate in strace_rates:
            print(f"strace at {rate:,.0f} msg/s", flush=True)
            for s in names:
                if s == "baseline":
                    continue
                rec = cpu_point(rig, subjects[s](), rate, frames, strace=True)
                print(f"  {s:16s} syscalls/msg {rec['syscalls_per_msg_total']} "
                      f"{dict(list(rec['syscalls_per_msg'].items())[:8])}", flush=True)
                points.append(rec)
        machine = rig.machine
    return {"kind": "cpu", "args": vars(args), "machine": machine,
            "seconds": round(time.time() - t_begin, 1), "points": points,
            "summary": summarize(points)}


def summarize(points: list[dict]) -> dict:
    table: dict = {}
    for p in points:
        if p.get("strace"):
            continue
        key = f"{p['offered']:.0f}" if p["offered"] else "max"
        row = table.setdefault(key, {}).setdefault(p["subject"], {"cpu": [], "rate": [],
                                                                   "vcsw": [], "threads": []})
        row["cpu"].append(p["cpu_s_per_100k"])
        row["rate"].append(p["achieved_rate"])
        row["vcsw"].append(p["vol_ctxsw_per_msg"])
        row["threads"].append(p["threads"])
    out = {}
    for key, subjects in table.items():
        out[key] = {}
        for s, row in subjects.items():
            cpus = [c for c in row["cpu"] if c is not None]
            out[key][s] = {"cpu_s_per_100k_median": statistics.median(cpus) if cpus else None,
                           "cpu_s_per_100k_all": cpus,
                           "achieved_rate_median": statistics.median(row["rate"]),
                           "vol_ctxsw_per_msg_median": statistics.median(row["vcsw"]),
                           "threads_last": row["threads"][-1]}
    return out


# ---- latency -------------------------------------------------------------------------------------


def latency_point(rig: ir.Rig, snap: Path, name: str, rate: float, duration: float,
                  extra: tuple[str, ...] = ()) -> dict:
    env = dict(rig.env, PYTHONPATH=str(snap))
    proc = subprocess.Popen([ir.PY, str(HERE / "latency_proc.py"), "--mqtt-url", rig.mosq.url,
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(snap))
    try:
        line = proc.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"latency_proc.py did not get ready: {line} {proc.stderr.read()}")
        pub = RawPublisher(ir.HOST, rig.mosq.port, client_id=f"lat-{name}")
        topic = b"site/lat/sensor/x"

        def frames(_now: float, n: int) -> list[bytes]:
            t = time.time()
            return [publish_frame(topic, struct.pack("<dI", t, i)) for i in range(n)]

        pids = [proc.pid, *rig.pids().values()]
        b0, s0, p0 = ir.sys_busy(), ir.self_cpu(), sum(ir.proc_cpu(p) for p in pids)
        w0 = time.monotonic()
        paced(pub, frames, rate, duration, tick=rig.args.tick)
        sent = pub.sent
        other = ((ir.sys_busy() - b0) - (ir.self_cpu() - s0)
                 - (sum(ir.proc_cpu(p) for p in pids) - p0)) / (time.monotonic() - w0)
        time.sleep(0.5)
        pub.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    res = json.loads(out.strip().splitlines()[-1])
    res.update(subject=name, rate=rate, sent=sent, other_cores=round(max(0.0, other), 3))
    print(f"  {name:16s} {rate:>7,.0f}/s sent {sent} got {res['n']} p50 {res['p50_ms']} ms "
          f"p99 {res['p99_ms']} ms p999 {res['p999_ms']} max {res['max_ms']} ms "
          f"other {res['other_cores']:.2f}", flush=True)
    return res


def cmd_latency(args) -> dict:
    points = []
    t_begin = time.time()
    with ir.Rig(args, need_nats=False) as rig:
        builds: list[tuple[str, Path, tuple[str, ...]]] = [("after", rig.snap, ())]
        if args.before:
            builds.append(("before", Path(args.before).resolve(), ()))
        for v in [v for v in args.variants.split(",") if v]:
            builds.append((f"after_c{v}", rig.snap, ("--coalesce", v)))
        for rate in [float(r) for r in args.rates.split(",")]:
            for rep in range(args.reps):
                order = builds if rep % 2 == 0 else builds[::-1]
                for name, snap, extra in order:
                    rec = latency_point(rig, snap, name, rate, args.duration, extra)
                    rec["rep"] = rep
                    points.append(rec)
        machine = rig.machine
    summary: dict = {}
    for p in points:
        s = summary.setdefault(f"{p['rate']:.0f}", {}).setdefault(p["subject"],
                                                                  {"p50": [], "p99": []})
        s["p50"].append(p["p50_ms"])
        s["p99"].append(p["p99_ms"])
    for by in summary.values():
        for s in by.values():
            s["p50_median"] = statistics.median(s["p50"])
            s["p99_median"] = statistics.median(s["p99"])
        if "before" in by and "after" in by:
            a, b = by["after"], by["before"]
            by["added_ms"] = {"p50": round(a["p50_median"] - b["p50_median"], 3),
                              "p99": round(a["p99_median"] - b["p99_median"], 3)}
    return {"kind": "latency", "args": vars(args), "machine": machine,
            "seconds": round(time.time() - t_begin, 1), "points": points, "summary": summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("cpu", "latency"):
        p = sub.add_parser(name)
        ir.add_rig_args(p, disturbed=0.35, wait_quiet=10.0)
        p.add_argument("--before", help="a directory holding the other build's telemetry_cy/")
        p.add_argument("--tick", type=float, default=0.001, help="publisher pacing interval, s")
        p.add_argument("--duration", type=float, default=8.0, help="seconds of sending per point")
        p.add_argument("--reps", type=int, default=2)
        p.add_argument("--repeats", type=int, default=1, help="repeats of a disturbed point")
        p.add_argument("--variants", default="",
                       help="also the working tree with these coalesce naps, e.g. 4ms (cpu) or "
                            "0.004 (latency)")
    c = sub.choices["cpu"]
    c.add_argument("--rates", default="5000,20000,max")
    c.add_argument("--grace", type=float, default=2.5,
                   help="seconds after the last write for the tail (stats lines come every 1 s)")
    c.add_argument("--strace-rates", default="", help="e.g. 5000: extra points under strace -c")
    c.add_argument("--broker-nodelay", dest="broker_extra", action="store_const",
                   const="set_tcp_nodelay true\n", default="",
                   help="the broker with set_tcp_nodelay true (Nagle off: nothing held back)")
    c.add_argument("--floor", default="",
                   help="naps in ms, e.g. 4,8: also perf/yardstick/nap_floor.c with each (subjects "
                        "floor_4ms ...): the pump's reads and naps alone, the design's floor here")
    lat = sub.choices["latency"]
    lat.add_argument("--rates", default="1000,5000,20000")
    args = ap.parse_args(argv)
    res = cmd_cpu(args) if args.cmd == "cpu" else cmd_latency(args)
    if args.before:   # no machine path in a stored result: the build is named by its COMMIT
        commit = Path(args.before) / "COMMIT"
        res["args"]["before"] = ("export of " + commit.read_text().strip()
                                 if commit.exists() else "a build without COMMIT")
    ir.write_result(res, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
