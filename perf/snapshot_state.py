"""Snapshots of the compiled engine's window state (docs/state.md): size, time, restore time.

    PYTHONPATH=$PWD .venv/bin/python perf/snapshot_state.py engine \
        -o perf/results/evidence/snapshot_engine.json
    PYTHONPATH=$PWD .venv/bin/python perf/snapshot_state.py sdcard     # writes per hour, 10k keys

**engine**: for quantiles off and on (p50/p90/p99, alpha 0.01) and 1,000 / 100,000 / 1,000,000
keys, each key filled with ``--per-pane`` readings in each of ``--fill`` intervals (default: every
pane of the default 60 s / 5 s window, 2 readings each, sensor-like values), then:
- ``Engine.snapshot()``: bytes, and CPU seconds (``os.times``, user + system: this process's
  CPU, the machine being shared; the system part apart: page faults on fresh memory), median of
  ``--repeats``;
- ``Engine.from_snapshot()``: CPU seconds, median of ``--repeats``, in this process (whose memory
  already holds the engine and the snapshot) and in a fresh process that maps the file (in
  /dev/shm) and restores it, as a starting daemon does (``restore_fresh_process``);
- the live state (``stats()["state_bytes"]``) and snapshot bytes / live state.
Wall times are recorded beside the CPU times. Targets (the issue): <= 2 s to write and to restore
1M keys, size <= 1.2x the live state.

**sdcard**: the state file of 10,000 keys (full windows, quantiles off and on) at the default
checkpoint_every (30 s): checkpoints, bytes and fsyncs per hour.

**ingest**: does checkpointing stall ingest? A private mosquitto and nats-server; ``telemetry-cy
run`` (compiled, QoS 0, 60 s / 5 s windows) fed 100,000 keys (perf/loadgen.py, 2 publisher
processes) at ``--rate`` (100,000 msg/s) for ``--duration`` s, with the state off and with
``--state-dir`` (on disk) and ``--checkpoint-every 1s`` (30x the default: every second a snapshot
of 100,000 keys), alternating, ``--reps`` each. Per run: what the publishers achieved, what the
daemon received, its ``ingest_full`` drops, its checkpoints and their snapshot time (engine
thread) and write time (writer thread), and the daemon's CPU seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cbor2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from telemetry_cy.backend import load  # noqa: E402

WINDOW, EVERY = 60.0, 5.0


def filled_engine(Engine, keys: int, quantiles: bool, fill: int, per_pane: int):
    kw = dict(window=WINDOW, emit_every=EVERY, max_keys=max(keys, 1), key_ttl=600.0)
    if quantiles:
        kw.update(quantiles=[0.5, 0.9, 0.99], quantile_accuracy=0.01)
    engine = Engine(**kw)
    rng = random.Random(keys)
    levels = [rng.uniform(-40.0, 60.0) for _ in range(keys)]
    rounds = [[cbor2.dumps({"d": f"dev-{i // 4:07d}", "s": f"s{i % 4}",
                            "v": round(levels[i] * (1.0 + 0.02 * (r - per_pane / 2)), 3),
                            "u": "C"})
               for i in range(keys)] for r in range(per_pane)]
    base = 1_700_000_000.0
    for interval in range(fill):
        ts = base + interval * EVERY + 0.5
        for payloads in rounds:
            engine.push_many(payloads, ts)
        engine.tick(ts)
    del rounds
    gc.collect()
    return engine, kw


def measure(fn, repeats: int):
    """Medians of CPU (user + system), system alone (the kernel: page faults on fresh memory)
    and wall seconds over `repeats` calls; and the last call's result."""
    cpu, sys_, wall, out = [], [], [], None
    for _ in range(repeats):
        gc.collect()
        t0, w0 = os.times(), time.perf_counter()
        out = fn()
        t1 = os.times()
        wall.append(time.perf_counter() - w0)
        cpu.append((t1.user - t0.user) + (t1.system - t0.system))
        sys_.append(t1.system - t0.system)
        if _ < repeats - 1:
            del out
            out = None
    return statistics.median(cpu), statistics.median(sys_), statistics.median(wall), out


_FRESH = """
import json, os, sys, time
from telemetry_cy.backend import load
Engine = load("compiled").Engine
kw = json.loads(sys.argv[2])
t0, w0 = os.times(), time.perf_counter()
with open(sys.argv[1], "rb") as f:   # mapped, as service/checkpoints.py restores it
    import mmap
    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
t1, w1 = os.times(), time.perf_counter()
engine = Engine.from_snapshot(data, **kw)
t2, w2 = os.times(), time.perf_counter()
print(json.dumps(dict(read_wall_s=w1 - w0, user_s=t2.user - t1.user, sys_s=t2.system - t1.system,
                      wall_s=w2 - w1, keys=engine.stats()["live_keys"])))
"""


def restore_in_fresh_process(data: bytes, kw: dict, repeats: int) -> dict:
    """The daemon's start: a new process reads the state file and restores it (its memory
    fresh, as a starting daemon's is). Medians over `repeats` processes."""
    import tempfile
    runs = []
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if Path("/dev/shm").is_dir() else None,
                                     suffix=".state") as f:
        f.write(data)
        f.flush()
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-c", _FRESH, f.name, json.dumps(kw)],
                                 capture_output=True, text=True, check=True,
                                 env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
            runs.append(json.loads(out.stdout))
    med = {k: round(statistics.median(r[k] for r in runs), 3)
           for k in ("read_wall_s", "user_s", "sys_s", "wall_s")}
    med["cpu_s"] = round(med["user_s"] + med["sys_s"], 3)
    return med


def engine_figures(args) -> list[dict]:
    Engine = load("compiled").Engine
    rows = []
    for quantiles in (False, True):
        for keys in args.sizes:
            engine, kw = filled_engine(Engine, keys, quantiles, args.fill, args.per_pane)
            live = engine.stats()["state_bytes"]
            repeats = args.repeats if keys < 1_000_000 else max(1, args.repeats // 2)
            snap_cpu, snap_sys, snap_wall, data = measure(engine.snapshot, repeats)
            rest_cpu, rest_sys, rest_wall, restored = measure(
                lambda d=data: Engine.from_snapshot(d, **kw), repeats)
            assert restored.snapshot() == data
            del restored
            gc.collect()
            fresh = restore_in_fresh_process(data, kw, repeats)
            row = dict(quantiles=quantiles, keys=keys, fill=args.fill, per_pane=args.per_pane,
                       snapshot_bytes=len(data), live_state_bytes=live,
                       ratio=round(len(data) / live, 3),
                       bytes_per_key=round(len(data) / keys, 1),
                       snapshot_cpu_s=round(snap_cpu, 4), snapshot_sys_s=round(snap_sys, 4),
                       snapshot_wall_s=round(snap_wall, 4),
                       restore_cpu_s=round(rest_cpu, 4), restore_sys_s=round(rest_sys, 4),
                       restore_wall_s=round(rest_wall, 4),
                       restore_fresh_process=fresh, repeats=repeats)
            print(json.dumps(row), flush=True)
            rows.append(row)
            del engine, data
            gc.collect()
    return rows


def sdcard_figures(args) -> list[dict]:
    Engine = load("compiled").Engine
    rows = []
    per_hour = 3600.0 / args.checkpoint_every
    for quantiles in (False, True):
        engine, _ = filled_engine(Engine, 10_000, quantiles, args.fill, args.per_pane)
        size = len(engine.snapshot())
        rows.append(dict(quantiles=quantiles, keys=10_000, checkpoint_every_s=args.checkpoint_every,
                         file_bytes=size, checkpoints_per_hour=per_hour,
                         bytes_per_hour=round(size * per_hour),
                         mib_per_day=round(size * per_hour * 24 / 2**20, 1),
                         fsyncs_per_hour=round(2 * per_hour)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def ingest_figures(args) -> list[dict]:
    import signal
    import tempfile

    from ingest_rig import MOSQ_EXTRA, proc_cpu
    from telemetry_cy.tools.local_brokers import Mosquitto, NatsServer

    rows = []
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    with tempfile.TemporaryDirectory(dir=args.state_root) as tmp_s:
        tmp = Path(tmp_s)
        with Mosquitto(tmp / "mosq", persistence=False, extra_conf=MOSQ_EXTRA) as mosq, \
                NatsServer(tmp / "nats") as nats:
            for run in range(2 * args.reps):
                state = run % 2 == 1
                err = tmp / f"daemon{run}.err"
                cmd = [sys.executable, "-m", "telemetry_cy.service.cli", "run",
                       "--mqtt-url", mosq.url, "--nats-url", nats.url,
                       "--topic", "site/+/sensor/+", "--qos", "0", "--window", "60s",
                       "--emit-every", "5s", "--stats-every", "500ms", "--log-format", "json",
                       "--subject-prefix", f"agg{run}"]
                if state:
                    cmd += ["--state-dir", str(tmp / f"state{run}"), "--checkpoint-every",
                            f"{args.checkpoint_every}s"]
                with open(err, "wb") as ef:
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=ef, env=env)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and '"mqtt": "up"' not in err.read_text():
                    time.sleep(0.05)
                time.sleep(0.5)
                lg = [sys.executable, str(HERE / "loadgen.py"), "--port", str(mosq.port),
                      "--keys", str(args.keys), "--rounds", "1", "--procs", "2"]
                # every key once (the state to checkpoint), then the rate
                subprocess.run(lg + ["--count", str(args.keys), "--rate", "0"],
                               capture_output=True, text=True, check=True)
                time.sleep(1.0)
                cpu0 = proc_cpu(proc.pid)
                out = subprocess.run(lg + ["--rate", str(args.rate), "--duration",
                                           str(args.duration)],
                                     capture_output=True, text=True, check=True)
                cpu = proc_cpu(proc.pid) - cpu0
                sent = json.loads(out.stdout.strip().splitlines()[-1])
                time.sleep(2.0)
                proc.send_signal(signal.SIGTERM)
                stdout, _ = proc.communicate(timeout=60)
                final = json.loads(stdout.decode().strip().splitlines()[-1])
                ck = final.get("checkpoint") or {}
                row = dict(state=state, run=run, offered=args.rate, achieved=sent.get("rate"),
                           sent=sent.get("sent", 0) + args.keys, received=final["received"],
                           ingest_full=final["drops"]["ingest_full"],
                           drops={k: v for k, v in final["drops"].items() if v},
                           live_keys=final["live_keys"], daemon_cpu_s=round(cpu, 2),
                           checkpoints=ck.get("checkpoints"), skipped=ck.get("skipped"),
                           last_snapshot_s=ck.get("last_snapshot_seconds"),
                           last_write_s=ck.get("last_write_seconds"),
                           last_bytes=ck.get("last_bytes"))
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = [line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                 if line.startswith(("Model name", "CPU family", "Model:"))]
    except OSError:
        model = []
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=HERE).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": model, "python": platform.python_version(), "commit": commit}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("engine", "sdcard", "ingest"))
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--fill", type=int, default=12, help="intervals with data per key (12)")
    ap.add_argument("--per-pane", type=int, default=2, help="readings per key and interval (2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint-every", type=float, default=None,
                    help="seconds (sdcard: 30, the default; ingest: 1)")
    ap.add_argument("--rate", type=float, default=100_000.0, help="ingest: msg/s")
    ap.add_argument("--duration", type=float, default=15.0, help="ingest: seconds")
    ap.add_argument("--keys", type=int, default=100_000, help="ingest: keys")
    ap.add_argument("--reps", type=int, default=2, help="ingest: runs with state off and on")
    ap.add_argument("--state-root", default=None,
                    help="ingest: directory for brokers and state (default: the system's tmp)")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.checkpoint_every is None:
        args.checkpoint_every = 1.0 if args.what == "ingest" else 30.0
    figures = {"engine": engine_figures, "sdcard": sdcard_figures, "ingest": ingest_figures}
    rows = figures[args.what](args)
    result = {"command": " ".join(sys.argv), "machine": machine(), "rows": rows}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
