"""Ingest and full-pipeline ramps, and the persistent-session drain, against a private mosquitto.

    python perf/ingest_rig.py ramp  -o perf/results/reference/ingest_ramp.json      # ~5 min
    python perf/ingest_rig.py drain -o perf/results/reference/session_drain.json    # ~2 min

**ramp**: for each offered rate (loadgen.py, 1,000 keys, QoS 0, 2 publisher processes), each
subject in turn gets a fresh process, subscribed to ``site/#`` / ``site/+/sensor/+``:

- ``baseline``: ``mosquitto_sub -t 'site/#' -q 0 -F x`` writing into a file in /dev/shm (two bytes
  and one flushed write() per message, as with ``> /dev/null``; the file size counts them exactly:
  CBOR payloads contain newline bytes, so ``-v | wc -l`` would not);
- ``ingest``: perf/ingest_proc.py, MqttSource + ByteRing + EngineThread, no-op emit (no NATS);
- ``pipeline``: ``telemetry-cy run`` (``python -m telemetry_cy.service.cli run``) publishing to a
  private nats-server, with perf/nats_count.py counting the aggregates on ``agg.>``.

A point: start the subject, probe it with single messages until one arrives (so it is subscribed),
send ``--duration`` seconds at the offered rate, allow ``--grace`` seconds for the tail, then
SIGTERM the subject and read its final counters. It **passes** when the publishers achieved ≥ 99 %
of the offered rate (otherwise the broker pushed back and the offered rate was not tested), the
subject counted zero drops of any reason, and it received ≥ 99.9 % of what was sent by then. The
grace bounds how far behind a subject may fall: with 6 s and 0.3 s, one that keeps up with less
than ~95 % of the rate fails.

Measured per point: CPU seconds of the subject process in the window [just before sending, just
before SIGTERM] from /proc/<pid>/stat (start-up excluded), per 100,000 received messages; VmHWM;
mosquitto's CPU; CPU used by processes that are not part of the rig ("other", from /proc/stat:
all busy time minus the rig's processes), and the load average. A point where others used more
than ``--disturbed`` cores is repeated (at most ``--repeats`` times; every attempt is kept, the
least disturbed one counts).

The ramp goes up ``--rates``; a subject leaves it after two failures in a row (unless
``--keep-going``), each (subject, rate) measured ``--reps`` times, the subjects' order rotated.
Then ``--refine`` bisection steps between each subject's highest clean rate (every point at or
below it passed) and the lowest failing rate above it. The rate ``max`` means unpaced
publishers: they write as fast as mosquitto reads, which measures the broker's ceiling with that
subscriber attached (its points are summarized apart, under "unpaced").

**drain**: a persistent session (client id, session expiry 600 s, MQTT 5, subscription QoS 1)
is created and left; 1,000,000 QoS 0 messages are published as fast as mosquitto takes them
(``queue_qos0_messages true``: mosquitto queues QoS 0 for offline sessions only with it); once
mosquitto is idle the subject reconnects and the time from its (re)connect to the last message is
measured. Subjects: ``mosquitto_sub`` (-c -x 600 -V mqttv5 -C N: mosquitto's own ceiling with a C
client), ``ingest`` (ingest_proc.py --expect N: polled every ms), ``daemon`` (telemetry-cy run,
stats lines every 50 ms, interpolated).

Subjects import telemetry_cy from a copy of the package taken at start (others rebuild the .so
files in place); the JSON records the commit, the copied modules' sha256 and the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from payloads import PayloadSet  # noqa: E402
from telemetry_cy.tools.local_brokers import (  # noqa: E402
    Mosquitto,
    NatsServer,
    find_mosquitto,
    find_nats_server,
)
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, publish_frame  # noqa: E402

PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
MOSQ_EXTRA = ("max_inflight_messages 1000\n"
              "max_queued_messages 5000000\n"
              "queue_qos0_messages true\n")


# ---- /proc ---------------------------------------------------------------------------------------


def proc_cpu(pid: int | None) -> float:
    """utime + stime of a process (all its threads), seconds; 0 when gone."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_status(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def sys_busy() -> float:
    """Busy CPU seconds of the whole machine (all CPUs) since boot."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    # guest/guest_nice are already included in user/nice
    return (sum(vals[:8]) - idle) / CLK


def children_cpu() -> float:
    """CPU seconds of the rig's children that have exited and been waited for."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# ---- machine -------------------------------------------------------------------------------------


def machine_info(snap: Path, src_root: Path) -> dict:
    def run(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip()
        except OSError:
            return ""
    model = ""
    for line in run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    mods = {}
    for so in sorted((snap / "telemetry_cy").glob("*.so")):
        mods[so.name.split(".")[0]] = hashlib.sha256(so.read_bytes()).hexdigest()[:16]
    # a --package tree is an export (git archive) of a commit: nothing in it differs from that
    dirty = (run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "telemetry_cy"])
             if src_root == ROOT else "")
    return {
        "cpu": model, "nproc": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": run([find_mosquitto(), "-h"]).splitlines()[0],
        "nats_server": run([find_nats_server(), "--version"]),
        "commit": run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "package_source": "working tree" if src_root == ROOT else str(src_root),
        "package_commit": ((src_root / "COMMIT").read_text().strip()
                           if (src_root / "COMMIT").exists() else None),
        "telemetry_cy_dirty": dirty.splitlines(),
        "modules_sha256": mods,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def snapshot_package(dst: Path, src_root: Path = ROOT) -> Path:
    shutil.copytree(src_root / "telemetry_cy", dst / "telemetry_cy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html"))
    return dst


# ---- subjects -----------------------------------------------------------------------------------


class Subject:
    """A subscriber process: start(), raw_count() (live), pid, finish() -> final dict."""

    name = "?"

    def __init__(self, rig: "Rig"):
        self.rig = rig
        self.proc: subprocess.Popen | None = None
        self.base = 0          # probe messages counted before the measurement

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def raw_count(self) -> int:
        raise NotImplementedError

    def received(self) -> int:
        return self.raw_count() - self.base

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        """Probe messages until one arrives; then every probe sent has arrived: base = count."""
        deadline = time.monotonic() + timeout
        sent = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up: {self.tail()}")
            self.rig.probe()
            sent += 1
            t = time.monotonic() + 0.25
            while time.monotonic() < t and self.raw_count() < 1:
                time.sleep(0.01)
            if self.raw_count() >= 1:
                t = time.monotonic() + 2.0
                while time.monotonic() < t and self.raw_count() < sent:
                    time.sleep(0.01)
                time.sleep(0.05)
                self.base = self.raw_count()
                return
        raise RuntimeError(f"{self.name}: no probe message arrived within {timeout:.0f} s: "
                           f"{self.tail()}")

    def tail(self) -> str:
        return ""

    def stop(self, timeout: float = 30.0) -> tuple[str, str]:
        p = self.proc
        if p is None:
            return "", ""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=10)
        return out or "", err or ""


class MosquittoSub(Subject):
    name = "baseline"

    def __init__(self, rig, extra: list[str] | None = None):
        super().__init__(rig)
        self.extra = extra or []

    def start(self) -> None:
        fd, self.out_path = tempfile.mkstemp(prefix="tcy-sub-", dir=self.rig.shm)
        os.close(fd)
        out = open(self.out_path, "wb")
        try:
            self.proc = subprocess.Popen(
                ["mosquitto_sub", "-h", HOST, "-p", str(self.rig.mosq.port), "-t", "site/#",
                 "-q", "0", "-F", "x", *self.extra],
                stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        finally:
            out.close()

    def raw_count(self) -> int:
        try:
            return os.path.getsize(self.out_path) // 2
        except OSError:
            return 0

    def finish(self) -> dict:
        _, err = self.stop()
        n = self.raw_count()
        os.unlink(self.out_path)
        return {"received_raw": n, "drops": {}, "stderr": err[-500:]}


class _PyProc(Subject):
    """A Python subject whose counters arrive as JSON lines on a pipe, read by a thread."""

    stream = "stdout"

    def start(self) -> None:
        self.latest = 0
        self.lines: list[dict] = []
        self.errtail: list[str] = []
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=self.rig.env,
                                     cwd=self.rig.snap)
        self.readers = [threading.Thread(target=self._read, args=(s, s is self._stream()),
                                         daemon=True)
                        for s in (self.proc.stdout, self.proc.stderr)]
        for t in self.readers:
            t.start()

    def _stream(self):
        return self.proc.stdout if self.stream == "stdout" else self.proc.stderr

    def _read(self, f, is_stats: bool) -> None:
        for line in f:
            if not line.startswith("{"):
                if not is_stats or self.stream == "stderr":
                    self.errtail = (self.errtail + [line.rstrip()])[-20:]
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            self.lines.append(obj)
            if f is self.proc.stderr and obj.get("level") in ("warning", "error"):
                self.errtail = (self.errtail + [line.rstrip()])[-20:]
            if is_stats and obj.get("msg", obj.get("event")) == "stats":
                self.latest = obj["received"]

    def raw_count(self) -> int:
        return self.latest

    def tail(self) -> str:
        return "\n".join(self.errtail)

    def finish(self) -> dict:
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        for t in self.readers:
            t.join(10)
        final = next((o for o in reversed(self.lines) if "drops" in o and "received" in o), None)
        if final is None:
            raise RuntimeError(f"{self.name}: no final counters (exit {p.returncode}): "
                               f"{self.tail()}")
        final = dict(final)
        final["received_raw"] = final["received"]
        final["exit_code"] = p.returncode
        final["warnings"] = self.errtail[-5:]
        return final


class IngestProc(_PyProc):
    name = "ingest"
    stream = "stdout"

    def __init__(self, rig, extra: list[str] | None = None):
        super().__init__(rig)
        self.extra = extra or []

    def argv(self) -> list[str]:
        r = self.rig
        return [PY, str(HERE / "ingest_proc.py"), "--mqtt-url", r.mosq.url,
                "--window", str(r.window), "--emit-every", str(r.emit_every), *self.extra]


class Daemon(_PyProc):
    name = "pipeline"
    stream = "stderr"

    def __init__(self, rig, extra: list[str] | None = None, stats_every: str = "200ms"):
        super().__init__(rig)
        self.extra = extra or []
        self.stats_every = stats_every

    def argv(self) -> list[str]:
        r = self.rig
        return [PY, "-m", "telemetry_cy.service.cli", "run", "--mqtt-url", r.mosq.url,
                "--nats-url", r.nats.url if r.nats else "nats://127.0.0.1:1",
                "--stats-every", self.stats_every, "--log-format", "json",
                "--window", f"{r.window}s", "--emit-every", f"{r.emit_every}s", *self.extra]


# ---- the rig -------------------------------------------------------------------------------------


class Rig:
    def __init__(self, args, need_nats: bool):
        self.args = args
        self.window = args.window
        self.emit_every = args.emit_every
        self.tmp = Path(tempfile.mkdtemp(prefix="tcy-rig-"))
        self.shm = "/dev/shm" if os.path.isdir("/dev/shm") else str(self.tmp)
        src_root = Path(args.package).resolve() if args.package else ROOT
        self.snap = snapshot_package(self.tmp / "snap", src_root)
        self.env = dict(os.environ, PYTHONPATH=str(self.snap), PYTHONDONTWRITEBYTECODE="1")
        self.machine = machine_info(self.snap, src_root)
        # broker_extra: broker configuration lines a rig adds (wakeups_rig --broker-nodelay)
        self.mosq = Mosquitto(self.tmp / "mosquitto", persistence=False,
                              extra_conf=MOSQ_EXTRA + getattr(args, "broker_extra", ""))
        self.nats = NatsServer(self.tmp / "nats", jetstream=False) if need_nats else None
        self.counter: subprocess.Popen | None = None
        self.nats_count = 0
        self._probe_pub: RawPublisher | None = None
        ps = PayloadSet.cached(args.keys, 1)
        self.probe_frame = publish_frame("site/probe/sensor/probe", ps[0])

    def __enter__(self):
        self.mosq.start()
        if self.nats:
            self.nats.start()
            self.counter = subprocess.Popen(
                [PY, str(HERE / "nats_count.py"), "--url", self.nats.url, "--subject", "agg.>"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
            first = self.counter.stdout.readline()
            if "ready" not in first:
                raise RuntimeError("nats_count.py did not start")
            threading.Thread(target=self._read_counter, daemon=True).start()
        return self

    def _read_counter(self) -> None:
        for line in self.counter.stdout:
            try:
                self.nats_count = json.loads(line)["count"]
            except (ValueError, KeyError):
                pass

    def __exit__(self, *exc) -> None:
        if self._probe_pub:
            self._probe_pub.close()
        if self.counter and self.counter.poll() is None:
            self.counter.terminate()
            try:
                self.counter.wait(10)
            except subprocess.TimeoutExpired:
                self.counter.kill()
                self.counter.wait(5)
        if self.nats:
            self.nats.stop()
        self.mosq.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def probe(self) -> None:
        if self._probe_pub is None:
            self._probe_pub = RawPublisher(HOST, self.mosq.port, client_id="rig-probe")
        self._probe_pub.send([self.probe_frame])

    def pids(self) -> dict:
        out = {"broker": self.mosq.proc.pid}
        if self.nats:
            out["nats_server"] = self.nats.proc.pid
            out["nats_count"] = self.counter.pid
        return out

    def snapshot(self, subject: Subject) -> dict:
        return {"t": time.time(), "busy": sys_busy(), "self": self_cpu(),
                "subject": proc_cpu(subject.pid),
                **{k: proc_cpu(p) for k, p in self.pids().items()},
                "loadavg": os.getloadavg()[0]}

    # ---- one ramp point ----

    def point(self, subject: Subject, rate: float, frames) -> dict:
        a = self.args
        nats0 = self.nats_count      # before the subject starts: all its aggregates count
        subject.start()
        try:
            subject.wait_subscribed()
        except Exception:
            subject.finish() if isinstance(subject, MosquittoSub) else subject.stop()
            raise
        s0 = self.snapshot(subject)
        lg = loadgen.run(HOST, self.mosq.port, rate=rate, duration=a.duration, procs=a.procs,
                         keys=a.keys, frames_by_proc=frames, client_prefix=f"lg-{subject.name}")
        # the tail: at most `grace` seconds after the last write
        deadline = lg["t_end"] + a.grace
        caught_up = None
        while time.time() < deadline:
            if subject.received() >= lg["sent"]:
                caught_up = time.time() - lg["t_end"]
                break
            time.sleep(0.005)
        time.sleep(max(0.0, deadline - time.time()))
        s1 = self.snapshot(subject)
        hwm = proc_status(subject.pid, "VmHWM")
        final = subject.finish()
        if self.nats:   # the last aggregates reach the counter
            t = time.monotonic() + 3.0
            while time.monotonic() < t and self.nats_count - nats0 < final.get("published", 0):
                time.sleep(0.05)
            time.sleep(0.2)
        received = final["received_raw"] - subject.base
        drops = {k: v for k, v in final.get("drops", {}).items() if v}
        wall = s1["t"] - s0["t"]
        cpu = s1["subject"] - s0["subject"]
        ours = sum(s1[k] - s0[k] for k in ("subject", "self", *self.pids())) + lg["loadgen_cpu_s"]
        busy = s1["busy"] - s0["busy"]
        achieved = lg["sent"] / lg["seconds"] / rate if rate else 1.0
        ratio = received / lg["sent"] if lg["sent"] else 0.0
        reasons = []
        if achieved < 0.99:
            reasons.append(f"publishers achieved {achieved:.1%} of the offered rate")
        if drops:
            reasons.append(f"drops {drops}")
        if ratio < 0.999:
            reasons.append(f"received {ratio:.2%} within {a.grace} s")
        rec = {
            "subject": subject.name, "offered": rate, "achieved_rate": lg["rate"],
            "failed_only_late": bool(reasons) and len(reasons) == 1 and set(drops) == {"late"},
            "sent": lg["sent"], "received": received, "received_ratio": round(ratio, 6),
            "drops": drops, "passed": not reasons, "why_failed": reasons,
            "caught_up_after_s": None if caught_up is None else round(caught_up, 3),
            "cpu_s": round(cpu, 3),
            "cpu_s_per_100k": round(cpu / received * 1e5, 4) if received else None,
            "vm_hwm_mib": round(hwm / 1024, 1),
            "broker_cpu_s": round(s1["broker"] - s0["broker"], 3),
            "broker_core_share": round((s1["broker"] - s0["broker"]) / wall, 3),
            "loadgen_cpu_s": lg["loadgen_cpu_s"],
            "wall_s": round(wall, 3),
            "other_cores": round(max(0.0, busy - ours) / wall, 3),
            "loadavg_start": round(s0["loadavg"], 2), "loadavg_end": round(s1["loadavg"], 2),
        }
        if self.nats:
            rec["nats_server_cpu_s"] = round(s1["nats_server"] - s0["nats_server"], 3)
        if isinstance(subject, _PyProc):
            rec["exit_code"] = final.get("exit_code")
            for k in ("aggregates", "published", "payloads", "readings"):
                if k in final:
                    rec[k] = final[k]
            if final.get("warnings"):
                rec["warnings"] = final["warnings"]
        if isinstance(subject, Daemon):
            rec["nats_received"] = self.nats_count - nats0
            rec["backlog"] = final.get("backlog")
        return rec

    def wait_quiet(self) -> float:
        """Waits (at most --wait-quiet seconds) until processes outside the rig use less than
        --disturbed cores over 0.5 s. Returns the seconds waited."""
        a = self.args
        t0 = time.monotonic()
        pids = list(self.pids().values())
        while True:
            b0, s0, p0 = sys_busy(), self_cpu(), sum(proc_cpu(p) for p in pids)
            time.sleep(0.5)
            other = (sys_busy() - b0) - (self_cpu() - s0) - (sum(proc_cpu(p) for p in pids) - p0)
            if other / 0.5 <= a.disturbed or time.monotonic() - t0 >= a.wait_quiet:
                return time.monotonic() - t0

    def measure(self, make_subject, rate: float, frames) -> dict:
        """One point, repeated while others disturbed it; the least disturbed attempt counts."""
        a = self.args
        attempts = []
        for _ in range(1 + a.repeats):
            waited = self.wait_quiet()
            rec = self.point(make_subject(), rate, frames)
            rec["waited_for_quiet_s"] = round(waited, 1)
            attempts.append(rec)
            flag = "" if rec["other_cores"] <= a.disturbed else "  DISTURBED"
            print(f"  {rec['subject']:9s} {rate or rec['achieved_rate']:>9,.0f}/s  "
                  f"sent {rec['sent']:>8,} recv {rec['received_ratio']:.4f} "
                  f"drops {sum(rec['drops'].values()):>6} "
                  f"cpu/100k {rec['cpu_s_per_100k']} hwm {rec['vm_hwm_mib']} MiB "
                  f"broker {rec['broker_core_share']:.2f} other {rec['other_cores']:.2f} "
                  f"load {rec['loadavg_end']:.2f} {'PASS' if rec['passed'] else 'FAIL'}{flag}"
                  + ("" if rec["passed"] else f"  ({'; '.join(rec['why_failed'])})"),
                  flush=True)
            if rec["other_cores"] <= a.disturbed:
                break
        best = dict(min(attempts, key=lambda r: r["other_cores"]))
        best["attempts"] = len(attempts)
        if len(attempts) > 1:
            best["all_attempts"] = [
                {k: r[k] for k in ("passed", "why_failed", "drops", "sent", "received_ratio",
                                   "cpu_s_per_100k", "other_cores", "loadavg_end")}
                for r in attempts]
        return best


# ---- ramp ----------------------------------------------------------------------------------------


class IngestSpin0(IngestProc):
    """Experiment: ingest with telemetry_cy.engine.engine_thread.SPIN_DRAINS = 0 (the engine thread
    parks on the ring's doorbell after the first empty drain instead of spinning 200 times in
    Python)."""

    name = "ingest_spin0"

    def __init__(self, rig):
        super().__init__(rig, ["--spin-drains", "0"])


class IngestBatch512(IngestProc):
    """Experiment: EngineThread(batch_records=512): the engine drains at most 512 records before
    it looks at the clock, so a backlog of more than 512 records at a tick boundary shows how
    records stamped before the tick become `late` (the default is 8,192)."""

    name = "ingest_batch512"

    def __init__(self, rig):
        super().__init__(rig, ["--batch-records", "512"])


class IngestBatch512Drained(IngestProc):
    """Experiment: as ingest_batch512, but the ring is emptied before each clock-driven tick."""

    name = "ingest_batch512_dbt"

    def __init__(self, rig):
        super().__init__(rig, ["--batch-records", "512", "--drain-before-tick"])


SUBJECTS = {"baseline": MosquittoSub, "ingest": IngestProc, "pipeline": Daemon,
            "ingest_spin0": IngestSpin0, "ingest_batch512": IngestBatch512,
            "ingest_batch512_dbt": IngestBatch512Drained}


def cmd_ramp(args) -> dict:
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    for s in subjects:
        if s not in SUBJECTS:
            raise SystemExit(f"unknown subject {s!r} (known: {', '.join(SUBJECTS)})")
    # "max": unpaced publishers, as fast as mosquitto reads them (the broker's ceiling)
    rates = [0.0 if r.strip() == "max" else float(r) for r in args.rates.split(",")]
    frames = [loadgen.build_frames(args.keys, args.rounds, 0, p, args.procs)
              for p in range(args.procs)]
    points: list[dict] = []
    t_begin = time.time()
    with Rig(args, need_nats="pipeline" in subjects) as rig:
        state = {s: {"fails": 0, "out": False} for s in subjects}
        phase = "ramp"

        def run(s: str, rate: float, rep: int = 0) -> dict:
            rec = rig.measure(lambda: SUBJECTS[s](rig), rate, frames)
            rec["phase"] = phase
            rec["rep"] = rep
            points.append(rec)
            return rec

        k = 0
        for rate in rates:
            active = [s for s in subjects if args.keep_going or not state[s]["out"]]
            if not active:
                break
            print(f"rate {rate:,.0f} msg/s" if rate else "rate max (unpaced)", flush=True)
            for rep in range(args.reps):
                order = active[k % len(active):] + active[:k % len(active)]   # rotate the order
                k += 1
                for s in order:
                    rec = run(s, rate, rep)
                    state[s]["fails"] = 0 if rec["passed"] else state[s]["fails"] + 1
                    if state[s]["fails"] >= 2:
                        state[s]["out"] = True
        phase = "refine"
        for _step in range(args.refine):
            for s in subjects:
                lo, hi = bracket(points, s)
                if lo is None or hi is None or hi - lo <= args.resolution:
                    continue
                mid = round((lo + hi) / 2 / 1000) * 1000
                print(f"refine {s}: {lo:,.0f} .. {hi:,.0f} -> {mid:,.0f}", flush=True)
                run(s, mid)
        machine = rig.machine
    return {"kind": "ramp", "args": vars(args), "machine": machine,
            "seconds": round(time.time() - t_begin, 1), "points": points,
            "summary": summarize(points, subjects)}


def _groups(points: list[dict], subject: str) -> dict[float, list[dict]]:
    out: dict[float, list[dict]] = {}
    for p in points:
        if p["subject"] == subject and p["offered"]:     # not the unpaced "max" points
            out.setdefault(float(p["offered"]), []).append(p)
    return dict(sorted(out.items()))


def highest_clean(points: list[dict], subject: str, ok=lambda p: p["passed"]) -> float | None:
    """The highest rate R such that every point of the subject at a rate <= R passed."""
    best = None
    for rate, ps in _groups(points, subject).items():
        if not all(ok(p) for p in ps):
            break
        best = rate
    return best


def bracket(points: list[dict], subject: str) -> tuple[float | None, float | None]:
    """The highest clean rate, and the lowest rate above it with a failure."""
    lo = highest_clean(points, subject)
    bad = [r for r, ps in _groups(points, subject).items()
           if (lo is None or r > lo) and not all(p["passed"] for p in ps)]
    return lo, (min(bad) if bad else None)


def summarize(points: list[dict], subjects: list[str]) -> dict:
    out: dict = {"subjects": {}}
    for s in subjects:
        groups = _groups(points, s)
        lo, hi = bracket(points, s)
        passing = [p for p in points if p["subject"] == s and p["passed"]]
        first_fail = next((ps for r, ps in groups.items() if not all(p["passed"] for p in ps)),
                          None)
        at_lo = groups.get(lo, [])
        out["subjects"][s] = {
            "highest_zero_drop_rate": lo,
            "lowest_failing_rate_above": hi,
            "first_failure": None if first_fail is None else {
                "rate": first_fail[0]["offered"],
                "why": sorted({w for p in first_fail for w in p["why_failed"]})},
            "highest_passing_rate_any": max((p["offered"] for p in passing), default=None),
            "highest_zero_drop_rate_if_late_ignored": highest_clean(
                points, s, lambda p: p["passed"] or p.get("failed_only_late", False)),
            "late_drops_total": sum(p["drops"].get("late", 0)
                                    for p in points if p["subject"] == s),
            "cpu_s_per_100k_at_highest": (statistics.median(p["cpu_s_per_100k"] for p in at_lo)
                                          if at_lo else None),
            "peak_vm_hwm_mib": max((p["vm_hwm_mib"] for p in points if p["subject"] == s),
                                   default=None),
            "broker_core_share_at_highest": (max(p["broker_core_share"] for p in at_lo)
                                             if at_lo else None),
        }
    subj = out["subjects"]
    base = subj.get("baseline", {}).get("highest_zero_drop_rate")
    for s in subjects:
        r = subj[s]["highest_zero_drop_rate"]
        if s != "baseline" and base and r:
            subj[s]["rate_vs_baseline"] = round(r / base, 3)
    # unpaced points: what mosquitto took in (and delivered, when they passed), per subject
    sat = {}
    for s in subjects:
        ps = [p for p in points if p["subject"] == s and not p["offered"]]
        if ps:
            ok = [p["achieved_rate"] for p in ps if p["passed"]]
            sat[s] = {"n": len(ps), "passed": len(ok),
                      "achieved_rates": [p["achieved_rate"] for p in ps],
                      "median_rate_passed": statistics.median(ok) if ok else None,
                      "cpu_s_per_100k_median": statistics.median(
                          p["cpu_s_per_100k"] for p in ps if p["cpu_s_per_100k"]),
                      "broker_core_share_median": statistics.median(
                          p["broker_core_share"] for p in ps)}
    if sat:
        b = sat.get("baseline", {}).get("median_rate_passed")
        for s, v in sat.items():
            if s != "baseline" and b and v["median_rate_passed"]:
                v["vs_baseline"] = round(v["median_rate_passed"] / b, 3)
        out["unpaced"] = sat
    table: dict = {}
    for s in subjects:
        for rate, ps in _groups(points, s).items():
            cpus = [p["cpu_s_per_100k"] for p in ps if p["cpu_s_per_100k"] is not None]
            table.setdefault(f"{rate:.0f}", {})[s] = {
                "n": len(ps), "passed": sum(p["passed"] for p in ps),
                "cpu_s_per_100k_median": statistics.median(cpus) if cpus else None,
                "cpu_s_per_100k_min_max": [min(cpus), max(cpus)] if cpus else None,
                "other_cores_max": max(p["other_cores"] for p in ps),
                "late": sum(p["drops"].get("late", 0) for p in ps),
            }
    out["by_rate"] = dict(sorted(table.items(), key=lambda kv: float(kv[0])))
    # CPU of the pipeline vs ingest alone, rate by rate (medians; every point counts: a late
    # drop does not change what a message costs)
    if "ingest" in subjects and "pipeline" in subjects:
        ratios = {}
        for rate, row in out["by_rate"].items():
            i, p = row.get("ingest"), row.get("pipeline")
            if i and p and i["cpu_s_per_100k_median"] and p["cpu_s_per_100k_median"]:
                ratios[rate] = round(p["cpu_s_per_100k_median"] / i["cpu_s_per_100k_median"], 3)
        out["pipeline_vs_ingest_cpu"] = {"by_rate": ratios,
                                         "median": statistics.median(ratios.values())
                                         if ratios else None}
    return out


# ---- drain ---------------------------------------------------------------------------------------


def wait_broker_idle(rig: Rig, quiet: float = 0.3, timeout: float = 60.0) -> float:
    """Waits until mosquitto used < 2 % CPU over `quiet` seconds; returns the seconds waited."""
    t0 = time.monotonic()
    pid = rig.mosq.proc.pid
    while time.monotonic() - t0 < timeout:
        c0 = proc_cpu(pid)
        time.sleep(quiet)
        if proc_cpu(pid) - c0 <= 0.02 * quiet + 1.0 / CLK:
            break
    return time.monotonic() - t0


def drain_one(rig: Rig, subject: str, n: int, frames, pub_qos: int) -> dict:
    a = rig.args
    cid = f"drain-{subject}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    expiry = "600"
    # 1. the session: connect, subscribe, leave
    if subject == "mosquitto_sub":
        r = subprocess.run(["mosquitto_sub", "-h", HOST, "-p", str(rig.mosq.port), "-t", "site/#",
                            "-q", "1", "-c", "-i", cid, "-V", "mqttv5", "-x", expiry, "-E"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise RuntimeError(f"mosquitto_sub -E failed: {r.stderr}")
    else:
        session = ["--client-id", cid, "--session-expiry", expiry]
        s = IngestProc(rig, session) if subject == "ingest" else Daemon(rig, session)
        s.start()
        s.wait_subscribed()
        s.finish()
    # 2. the queue
    lg = loadgen.run(HOST, rig.mosq.port, rate=0, count=n, procs=a.procs, keys=a.keys,
                     frames_by_proc=frames, client_prefix=f"lg-drain-{subject}")
    idle_wait = wait_broker_idle(rig)
    waited = rig.wait_quiet()
    broker_rss = proc_status(rig.mosq.proc.pid, "VmRSS")
    load0 = os.getloadavg()[0]
    b0, busy0, self0, ch0, w0 = (proc_cpu(rig.mosq.proc.pid), sys_busy(), self_cpu(),
                                 children_cpu(), time.time())
    n0 = sum(proc_cpu(p) for k, p in rig.pids().items() if k != "broker")
    # 3. reconnect and drain
    rec = {"subject": subject, "queued": n, "publish": lg,
           "broker_idle_wait_s": round(idle_wait, 2), "waited_for_quiet_s": round(waited, 1),
           "broker_rss_mib_queued": round(broker_rss / 1024, 1), "loadavg_start": round(load0, 2)}
    if subject == "mosquitto_sub":
        fd, out_path = tempfile.mkstemp(prefix="tcy-drain-", dir=rig.shm)
        os.close(fd)
        with open(out_path, "wb") as out:
            t0 = time.time()
            p = subprocess.Popen(["mosquitto_sub", "-h", HOST, "-p", str(rig.mosq.port), "-t",
                                  "site/#", "-q", "1", "-c", "-i", cid, "-V", "mqttv5", "-x",
                                  expiry, "-C", str(n), "-W", "120", "-F", "x"],
                                 stdout=out, stderr=subprocess.PIPE)
            _, err = p.communicate(timeout=180)
            t1 = time.time()
        got = os.path.getsize(out_path) // 2
        os.unlink(out_path)
        rec.update(received=got, drops={}, seconds=round(t1 - t0, 4),
                   timed_from="process start (exec, TCP connect, CONNACK) to its exit after -C N",
                   exit_code=p.returncode)
    elif subject == "ingest":
        s = IngestProc(rig, ["--client-id", cid, "--session-expiry", expiry, "--expect", str(n)])
        s.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(o.get("event") == "done" for o in s.lines):
            if s.proc.poll() is not None:
                break
            time.sleep(0.01)
        c1 = proc_cpu(s.pid)
        hwm = proc_status(s.pid, "VmHWM")
        final = s.finish()
        got = final["received"]
        secs = (final["t_done"] - final["t_start"]) if final.get("t_done") else None
        rec.update(received=got, drops={k: v for k, v in final["drops"].items() if v},
                   seconds=None if secs is None else round(secs, 4),
                   timed_from="MqttSource.start() (before TCP connect)",
                   seconds_from_suback=None if not final.get("t_done") else
                   round(final["t_done"] - final["t_ready"], 4),
                   cpu_s_process_total=round(c1, 3), vm_hwm_mib=round(hwm / 1024, 1),
                   exit_code=final["exit_code"])
    else:  # daemon
        s = Daemon(rig, ["--client-id", cid, "--session-expiry", expiry], stats_every="50ms")
        s.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and s.raw_count() < n and s.proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.2)
        c1 = proc_cpu(s.pid)
        hwm = proc_status(s.pid, "VmHWM")
        final = s.finish()
        got = final["received"]
        t_start = next((o["ts"] for o in s.lines if o.get("msg") == "starting"), None)
        t_conn = next((o["ts"] for o in s.lines
                       if "connected (session present" in o.get("msg", "")), None)
        stats = [(o["ts"], o["received"]) for o in s.lines if o.get("msg") == "stats"]
        t_done = None
        for (ta, ra), (tb, rb) in zip(stats, stats[1:]):
            if rb >= n > ra or (ra >= n and t_done is None and ta == stats[0][0]):
                t_done = ta + (tb - ta) * (n - ra) / max(1, rb - ra) if rb != ra else ta
                break
        rec.update(received=got, drops={k: v for k, v in final["drops"].items() if v},
                   seconds=(None if (t_done is None or t_conn is None)
                            else round(t_done - t_conn, 4)),
                   timed_from="the daemon's 'connected' log line (CONNACK); end interpolated "
                              "between stats lines 50 ms apart",
                   seconds_from_start_log=None if (t_done is None or t_start is None)
                   else round(t_done - t_start, 4),
                   cpu_s_process_total=round(c1, 3), vm_hwm_mib=round(hwm / 1024, 1),
                   exit_code=final["exit_code"])
    b1, busy1, self1, ch1, w1 = (proc_cpu(rig.mosq.proc.pid), sys_busy(), self_cpu(),
                                 children_cpu(), time.time())
    # the subject has exited and was waited for: its CPU is in RUSAGE_CHILDREN
    # (start-up included: a Python subject spends ~0.1 s importing)
    rec["subject_cpu_s_incl_startup"] = round(ch1 - ch0, 3)
    rec["subject_cpu_s_per_100k_incl_startup"] = round((ch1 - ch0) / max(1, rec["received"]) * 1e5,
                                                       4)
    n1 = sum(proc_cpu(p) for k, p in rig.pids().items() if k != "broker")
    ours = (b1 - b0) + (self1 - self0) + (ch1 - ch0) + (n1 - n0)
    rec["other_cores"] = round(max(0.0, (busy1 - busy0) - ours) / (w1 - w0), 3)
    # 4. end the session (clean start, expiry 0), or every later queue would fill it too
    subprocess.run(["mosquitto_sub", "-h", HOST, "-p", str(rig.mosq.port), "-t", "cleanup/x",
                    "-i", cid, "-V", "mqttv5", "-E"], capture_output=True, timeout=30)
    rec["rate"] = round(n / rec["seconds"], 1) if rec.get("seconds") else None
    rec["broker_cpu_s"] = round(b1 - b0, 3)
    rec["loadavg_end"] = round(os.getloadavg()[0], 2)
    rec["complete"] = rec["received"] == n
    print(f"  {subject:13s} {rec['received']:>9,} of {n:,} in {rec.get('seconds')} s = "
          f"{rec['rate']} msg/s  broker cpu {rec['broker_cpu_s']} s  other {rec['other_cores']} "
          f"load {rec['loadavg_end']}",
          flush=True)
    return rec


def cmd_drain(args) -> dict:
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    frames = [loadgen.build_frames(args.keys, args.rounds, args.pub_qos, p, args.procs)
              for p in range(args.procs)]
    runs = []
    t_begin = time.time()
    with Rig(args, need_nats="daemon" in subjects) as rig:
        for rep in range(args.rounds_drain):
            order = subjects[rep % len(subjects):] + subjects[:rep % len(subjects)]
            for s in order:
                rec = drain_one(rig, s, args.count, frames, args.pub_qos)
                rec["round"] = rep
                runs.append(rec)
        machine = rig.machine
    summary = {}
    for s in subjects:
        rates = [r["rate"] for r in runs if r["subject"] == s and r["rate"] and r["complete"]]
        summary[s] = {"median_rate": statistics.median(rates) if rates else None,
                      "rates": rates}
    return {"kind": "drain", "args": vars(args), "machine": machine,
            "seconds": round(time.time() - t_begin, 1), "runs": runs, "summary": summary}


# ---- CLI -----------------------------------------------------------------------------------------


def add_rig_args(p: argparse.ArgumentParser, disturbed: float, wait_quiet: float) -> None:
    """The options every rig command takes (this rig's and perf/wakeups_rig.py's): what Rig,
    the publishers and the daemon read from ``args``."""
    p.add_argument("-o", "--output", help="write the JSON here")
    p.add_argument("--package", help="a directory holding a built telemetry_cy/ to measure "
                   "(default: the working tree); see perf/README.md for a HEAD export")
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=4, help="pre-built readings per key")
    p.add_argument("--procs", type=int, default=2, help="publisher processes")
    p.add_argument("--window", type=float, default=10.0, help="engine window, seconds")
    p.add_argument("--emit-every", type=float, default=1.0, help="engine tick, seconds")
    p.add_argument("--disturbed", type=float, default=disturbed,
                   help="a point is disturbed when others used more cores than this")
    p.add_argument("--wait-quiet", type=float, default=wait_quiet,
                   help="before a point, wait up to this long for the others to be quiet")


def write_result(res: dict, output: str | None) -> None:
    """The JSON to ``output`` (if given), the summary to stdout."""
    text = json.dumps(res, indent=1)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")
        print(f"wrote {output}")
    print(json.dumps(res.get("summary"), indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("ramp", "drain"):
        add_rig_args(sub.add_parser(name), disturbed=0.25, wait_quiet=20.0)
    r = sub.choices["ramp"]
    r.add_argument("--subjects", default="baseline,ingest,pipeline")
    r.add_argument("--rates", default="20000,40000,60000,80000,100000,120000,150000,200000,"
                                      "250000,300000")
    r.add_argument("--duration", type=float, default=6.0, help="seconds of sending per point")
    r.add_argument("--grace", type=float, default=0.3,
                   help="seconds after the last write before the subject is stopped")
    r.add_argument("--refine", type=int, default=2, help="bisection steps after the ramp")
    r.add_argument("--reps", type=int, default=1, help="measurements of each (subject, rate)")
    r.add_argument("--keep-going", action="store_true",
                   help="measure every rate for every subject (no drop-out after 2 failures)")
    r.add_argument("--resolution", type=float, default=5000,
                   help="stop refining when pass and fail are this close (msg/s)")
    r.add_argument("--repeats", type=int, default=2, help="repeats of a disturbed point")
    d = sub.choices["drain"]
    d.add_argument("--subjects", default="mosquitto_sub,ingest,daemon")
    d.add_argument("--count", type=int, default=1_000_000)
    d.add_argument("--rounds-drain", type=int, default=2, help="repetitions of each subject")
    d.add_argument("--pub-qos", type=int, default=0, choices=(0, 1))
    args = ap.parse_args(argv)
    res = cmd_ramp(args) if args.cmd == "ramp" else cmd_drain(args)
    write_result(res, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
