"""Recording and replay rates on a private mosquitto, each against its baseline in the same run.

    python perf/capture_rate.py --count 2000000 --reps 3 -o /tmp/capture_rate.json

**record**: unpaced publishers (perf/loadgen.py: ~60-byte CBOR readings, 1,000 keys, QoS 0, 2
processes) send ``--count`` messages as fast as mosquitto takes them, with one subscriber to
``site/#``, in turns:

- ``mosquitto_sub``: ``mosquitto_sub -t 'site/#' -q 0 -F x`` into a file in /dev/shm (two bytes
  per message, so the file's size counts them; done when it holds all of them, polled every 5 ms);
- ``record``: ``telemetry-cy record`` into /dev/shm; done at the arrival time of the last message,
  as the capture records it.

A subject's rate is count / (done - the publishers' start). mosquitto is single-threaded: a
subscriber that reads slower holds the broker back, so the rate is what the broker delivered to
that subscriber. The recorder must also drop nothing (its final counters) and hold every message.

**replay**: into the same mosquitto with no subscriber: one raw publisher process sending the same
messages pre-built (loadgen.py, ``--procs 1``), then ``telemetry-cy replay --speed max`` of the
capture just recorded; each rate is messages / seconds from its first to its last write (the
loadgen's and the replay's own figures).

Turns alternate (mosquitto_sub, record, raw, replay) for ``--reps`` rounds; the medians are
compared. The JSON has every run, the ratios, the machine (lscpu's model name) and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from telemetry_cy.capture.binary_reader import read_blocks  # noqa: E402
from telemetry_cy.tools.local_brokers import Mosquitto, find_mosquitto, wait_for  # noqa: E402

CLI = [sys.executable, "-m", "telemetry_cy"]   # the telemetry-cy command
TOPIC = "site/#"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _probe_until_seen(broker, seen) -> None:
    """Single messages on site/probe until the subscriber shows it got one (it is subscribed)."""
    from telemetry_cy.tools.mqtt_loadgen import RawPublisher, publish_frame
    pub = RawPublisher(broker.host, broker.port, client_id="probe")
    try:
        ok = wait_for(lambda: pub.send([publish_frame("site/probe", b"")]) or seen(), 20.0, 0.05)
    finally:
        pub.close()
    if not ok:
        raise RuntimeError("the subscriber did not subscribe within 20 s")


def run_mosquitto_sub(broker, frames_by_proc, count: int, workdir: Path) -> dict:
    out = workdir / "sub.out"
    sub = subprocess.Popen([shutil.which("mosquitto_sub"), "-h", broker.host, "-p",
                            str(broker.port), "-t", TOPIC, "-q", "0", "-F", "x"],
                           stdout=open(out, "wb"), stderr=subprocess.DEVNULL)
    try:
        _probe_until_seen(broker, lambda: out.stat().st_size > 0)
        base = out.stat().st_size // 2
        res = loadgen.run(broker.host, broker.port, count=count, procs=len(frames_by_proc),
                          frames_by_proc=frames_by_proc, client_prefix="sub-load")
        if not wait_for(lambda: out.stat().st_size // 2 >= base + count, 120.0, 0.005):
            raise RuntimeError(f"mosquitto_sub got {out.stat().st_size // 2 - base} of {count}")
        done = time.time()
    finally:
        sub.terminate()
        sub.wait(10)
    return {"subject": "mosquitto_sub", "rate": count / (done - res["t_start"]),
            "publishers_rate": res["rate"]}


def run_record(broker, frames_by_proc, count: int, workdir: Path, capture: Path) -> dict:
    for p in workdir.glob(capture.name + "*"):
        p.unlink()
    err = workdir / "rec.err"
    rec = subprocess.Popen([*CLI, "record", "--mqtt-url", broker.url, "--topic", TOPIC,
                            "--out", str(capture)], env=_env(), stdout=subprocess.PIPE,
                           stderr=open(err, "wb"))
    try:
        if not wait_for(lambda: "recording" in err.read_text() or rec.poll() is not None, 30.0):
            raise RuntimeError("the recorder did not start")
        res = loadgen.run(broker.host, broker.port, count=count, procs=len(frames_by_proc),
                          frames_by_proc=frames_by_proc, client_prefix="rec-load")
        last: list = []

        def complete() -> bool:
            # block headers and arrival times only: parsing every record here would take the
            # CPU the recorder needs
            blocks = [pb.block for pb in read_blocks(capture, [])]
            last[:] = [blocks[-1].ts[-1]] if blocks else []
            return sum(len(b) for b in blocks) >= count
        if not wait_for(complete, 120.0, 0.2):
            raise RuntimeError("the capture did not get every message")
        rec.send_signal(signal.SIGTERM)
        stdout, _ = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
    final = json.loads(stdout.decode().splitlines()[-1])
    return {"subject": "record", "rate": count / (last[0] - res["t_start"]),
            "publishers_rate": res["rate"], "drops": final["drops"], "recorded": final["recorded"],
            "capture_bytes": final["bytes"]}


def run_raw(broker, frames: list[bytes], count: int) -> dict:
    res = loadgen.run(broker.host, broker.port, count=count, procs=1, frames_by_proc=[frames],
                      client_prefix="raw")
    return {"subject": "raw publisher", "rate": res["rate"]}


def run_replay(broker, capture: Path) -> dict:
    done = subprocess.run([*CLI, "replay", str(capture), "--mqtt-url", broker.url, "--speed",
                           "max"], env=_env(), capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(done.stderr)
    res = json.loads(done.stdout.splitlines()[-1])
    return {"subject": "replay --speed max", "rate": res["rate"], "sent": res["sent"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2_000_000, help="messages per run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2, help="publisher processes (record runs)")
    ap.add_argument("-o", "--output", help="write the JSON here too")
    a = ap.parse_args(argv)
    binary = find_mosquitto()
    if binary is None or shutil.which("mosquitto_sub") is None:
        print("mosquitto and mosquitto_sub are needed", file=sys.stderr)
        return 2
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=shm, prefix="capture-rate-") as tmp:
        work = Path(tmp)
        frames_by_proc = [loadgen.build_frames(part=p, parts=a.procs) for p in range(a.procs)]
        raw_frames = loadgen.build_frames()
        broker = Mosquitto(work / "mosquitto", binary=binary, persistence=False)
        broker.start()
        runs = []
        try:
            for rep in range(a.reps):
                for run in ("mosquitto_sub", "record", "raw", "replay"):
                    if run == "mosquitto_sub":
                        r = run_mosquitto_sub(broker, frames_by_proc, a.count, work)
                    elif run == "record":
                        r = run_record(broker, frames_by_proc, a.count, work, work / "cap")
                    elif run == "raw":
                        r = run_raw(broker, raw_frames, a.count)
                    else:
                        r = run_replay(broker, work / "cap")
                    r["rep"] = rep
                    runs.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
        finally:
            broker.stop()

    def median(subject: str) -> float:
        return statistics.median(r["rate"] for r in runs if r["subject"] == subject)

    rec_ok = all(not any(r["drops"].values()) and r["recorded"] >= a.count
                 for r in runs if r["subject"] == "record")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    out = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_after": os.getloadavg()},
        "commit": commit, "count": a.count, "reps": a.reps,
        "record": {"mosquitto_sub_median": round(median("mosquitto_sub")),
                   "record_median": round(median("record")),
                   "ratio": round(median("record") / median("mosquitto_sub"), 3),
                   "no_drop": rec_ok, "target": 0.95},
        "replay": {"raw_median": round(median("raw publisher")),
                   "replay_median": round(median("replay --speed max")),
                   "ratio": round(median("replay --speed max") / median("raw publisher"), 3),
                   "target": 0.9},
        "runs": runs,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
