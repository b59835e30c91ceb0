"""Soak: `telemetry-cy run` for a long time at a steady rate, RSS sampled; is memory flat?

    python perf/soak.py                          # 10 minutes at 75,000 msg/s, 1,000 keys
    python perf/soak.py --rate 20000 --duration 120 -o /tmp/soak.json
    python perf/soak.py --keys 100000 --window 60s --emit-every 5s

What it does: starts a private mosquitto and nats-server (telemetry_cy.tools.local_brokers, free
loopback ports), the daemon as a process (QoS 1 subscription, 60 s windows every 5 s by
default), and a publisher *process* sending pre-built ~60-byte CBOR readings for ``--keys`` keys
at ``--rate`` msg/s (telemetry_cy.tools.mqtt_loadgen: raw socket, QoS 0, paced). Every
``--sample-every`` seconds it records the daemon's RSS (VmRSS), its CPU time and its latest stats
line. At the end it stops the daemon with SIGTERM, checks the balance of the final counters, and
fits a least-squares line to RSS over time *after the warm-up* (default: two windows, when every
key's panes are allocated and the allocator has seen a full window of tick batches).

Verdict (exit status 0/1): PASS when the fitted slope is below ``--threshold`` MiB/min (default
1.0) and nothing was dropped. Why 1 MiB/min: it is 1.4 GiB a day, so a pass rules out any leak
that matters in service, and it is well above the noise a 10-minute run shows (glibc arenas,
Python free lists; the residual of the fit is printed). What it catches: one leaked 64-byte
object per message at 75,000 msg/s is ~275 MiB/min; one leaked ~100-byte object per aggregate
(1,000 keys every 5 s = 12,000 aggregates/min) is ~1.1 MiB/min. Figures of the recorded run are
in docs/reliability.md.

The rate should be about half the sustainable (zero-drop) rate of the machine. On the 2-core VM
of docs/reliability.md the daemon took everything the one publisher process could push through
mosquitto, ~150,000-160,000 msg/s, without a drop (1,000 keys, 16 MiB ring, QoS 1): hence 75,000.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import cbor2  # noqa: E402

from telemetry_cy.tools.local_brokers import Mosquitto, NatsServer  # noqa: E402
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, paced, publish_frame  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def build_frames(keys: int, rounds: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    frames = []
    for r in range(rounds):
        order = list(range(keys))
        rnd.shuffle(order)
        for k in order:
            device, sensor = f"gw-{k // 8:05d}", ("temp", "rh", "p", "co2", "pm25", "lux", "v",
                                                   "i")[k % 8]
            body = cbor2.dumps({"d": device, "s": sensor, "v": round(rnd.gauss(20, 5), 3),
                                "u": "C", "n": r})
            frames.append(publish_frame(f"site/{device}/sensor/{sensor}", body))
    return frames


def publisher_main(host: str, port: int, keys: int, rate: float, duration: float,
                   seed: int, result) -> None:
    frames = build_frames(keys, max(1, min(8, 200_000 // max(1, keys))), seed)
    pub = RawPublisher(host, port, "telemetry-cy-soak-pub")
    pos = 0

    def make(now: float, n: int) -> list[bytes]:
        nonlocal pos
        out = [frames[(pos + i) % len(frames)] for i in range(n)]
        pos += n
        return out

    t0 = time.monotonic()
    sent = paced(pub, make, rate, duration, tick=0.005)
    result.put({"sent": sent, "seconds": time.monotonic() - t0})
    pub.close()


def last_stats(err_path: Path) -> dict:
    last = {}
    try:
        with open(err_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return last
    for line in tail:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("msg") == "stats":
            last = rec
    return last


def fit(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """Least-squares slope (bytes per second) and the residual standard deviation (bytes)."""
    n = len(samples)
    if n < 3:
        return float("nan"), float("nan")
    mx = sum(t for t, _ in samples) / n
    my = sum(r for _, r in samples) / n
    sxx = sum((t - mx) ** 2 for t, _ in samples)
    sxy = sum((t - mx) * (r - my) for t, r in samples)
    slope = sxy / sxx if sxx else float("nan")
    resid = [r - (my + slope * (t - mx)) for t, r in samples]
    return slope, math.sqrt(sum(e * e for e in resid) / (n - 2))


def balanced(final: dict) -> list[str]:
    d = final.get("drops", {})
    problems = []
    if final.get("received") != final.get("payloads", 0) + d.get("oversize", 0) + \
            d.get("decode_error", 0) + d.get("ingest_full", 0):
        problems.append("received != payloads + payload-level drops")
    if final.get("payloads") != final.get("readings", 0) + d.get("schema_mismatch", 0) + \
            d.get("non_finite", 0) + d.get("key_limit", 0) + d.get("late", 0):
        problems.append("payloads != readings + reading-level drops (one reading per payload)")
    if final.get("aggregates") != final.get("published", 0) + d.get("emit_backlog", 0) + \
            final.get("backlog", 0):
        problems.append("aggregates != published + emit_backlog + backlog")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=75_000, help="msg/s (75000)")
    ap.add_argument("--duration", type=float, default=600, help="seconds of load (600)")
    ap.add_argument("--keys", type=int, default=1000, help="distinct (device, sensor) keys")
    ap.add_argument("--window", default="60s")
    ap.add_argument("--emit-every", default="5s")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds excluded from the fit (default: two windows)")
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--threshold", type=float, default=1.0, help="MiB per minute (1.0)")
    ap.add_argument("--qos", default="1")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--daemon-arg", action="append", default=[],
                    help="extra flag for telemetry-cy run "
                         "(repeat; e.g. --daemon-arg=--ring-bytes=64MiB)")
    ap.add_argument("-o", "--output", help="write the samples and the verdict as JSON here")
    args = ap.parse_args(argv)

    from telemetry_cy.service.config import parse_duration
    window = parse_duration(args.window)
    warmup = args.warmup if args.warmup is not None else 2 * window

    work = Path(tempfile.mkdtemp(prefix="tcy-soak-"))
    mosq = Mosquitto(work / "mosquitto").start()
    nats = NatsServer(work / "nats", jetstream=False).start()
    err_path, out_path = work / "daemon.stderr", work / "daemon.stdout"
    cmd = [sys.executable, "-m", "telemetry_cy.service.cli", "run", "--mqtt-url", mosq.url,
           "--nats-url", nats.url, "--topic", "site/+/sensor/+", "--qos", args.qos,
           "--window", args.window, "--emit-every", args.emit_every,
           "--key-ttl", f"{max(300.0, window)}s", "--stats-every", f"{args.sample_every}s",
           "--log-format", "json", *args.daemon_arg]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    samples = []
    daemon = None
    pub_proc = None
    try:
        with open(err_path, "wb") as err, open(out_path, "wb") as out:
            daemon = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while last_stats(err_path).get("mqtt") != "up" or last_stats(err_path).get("nats") != "up":
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"daemon did not come up:\n{err_path.read_text()[-3000:]}")
            time.sleep(0.1)
        print(f"soak: {args.rate:.0f} msg/s for {args.duration:.0f} s, {args.keys} keys, "
              f"window {args.window} every {args.emit_every}, warm-up {warmup:.0f} s; "
              f"daemon pid {daemon.pid}, logs in {work}", flush=True)
        result = mp.Queue()
        pub_proc = mp.Process(target=publisher_main, args=(
            mosq.host, mosq.port, args.keys, args.rate, args.duration, args.seed, result),
            daemon=True)
        t0 = time.monotonic()
        pub_proc.start()
        next_sample = t0
        while pub_proc.is_alive() and daemon.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                s = last_stats(err_path)
                samples.append({"t": round(now - t0, 2), "rss": rss_bytes(daemon.pid),
                                "cpu_s": cpu_seconds(daemon.pid),
                                "received": s.get("received"), "drops": s.get("drops", {}),
                                "live_keys": s.get("live_keys"),
                                "state_bytes": s.get("state_bytes"),
                                "mosquitto_rss": rss_bytes(mosq.proc.pid)})
                last = samples[-1]
                print(f"  t={last['t']:6.0f}s rss={last['rss'] / 2**20:7.1f} MiB "
                      f"cpu={last['cpu_s']:7.1f}s received={last['received']} "
                      f"drops={last['drops'] or '{}'}", flush=True)
                next_sample += args.sample_every
            time.sleep(min(0.2, max(0.0, next_sample - time.monotonic())))
        pub_proc.join(30)
        sent = result.get(timeout=30) if not result.empty() else {"sent": None}
        time.sleep(2 * parse_duration(args.emit_every) + 1)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        final = json.loads(out_path.read_text().strip().splitlines()[-1])
    finally:
        if pub_proc is not None and pub_proc.is_alive():
            pub_proc.terminate()
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        nats.stop()
        mosq.stop()

    fitted = [(s["t"], s["rss"]) for s in samples if s["t"] >= warmup and s["rss"]]
    slope, resid = fit(fitted)
    slope_mib_min = slope * 60 / 2**20
    after = [r for _, r in fitted]
    drops = {k: v for k, v in final.get("drops", {}).items() if v}
    cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"] if len(samples) > 1 else float("nan")
    span = samples[-1]["t"] - samples[0]["t"] if len(samples) > 1 else float("nan")
    summary = {
        "rate": args.rate, "duration_s": args.duration, "keys": args.keys,
        "window": args.window, "emit_every": args.emit_every, "warmup_s": warmup,
        "sent": sent.get("sent"), "publisher_seconds": sent.get("seconds"),
        "received": final.get("received"), "readings": final.get("readings"),
        "aggregates": final.get("aggregates"), "published": final.get("published"),
        "drops": drops, "balance_problems": balanced(final),
        "rss_start_mib": samples[0]["rss"] / 2**20 if samples else None,
        "rss_after_warmup_min_mib": min(after) / 2**20 if after else None,
        "rss_after_warmup_max_mib": max(after) / 2**20 if after else None,
        "rss_end_mib": samples[-1]["rss"] / 2**20 if samples else None,
        "slope_mib_per_min": slope_mib_min, "residual_sd_mib": resid / 2**20,
        "threshold_mib_per_min": args.threshold, "samples_fitted": len(fitted),
        "daemon_cpu_share": cpu / span if span else None,
        "mosquitto_rss_end_mib": samples[-1]["mosquitto_rss"] / 2**20 if samples else None,
    }
    ok = (len(fitted) >= 3 and slope_mib_min < args.threshold and not drops
          and not summary["balance_problems"])
    summary["verdict"] = "PASS" if ok else "FAIL"
    print(json.dumps(summary, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps({"summary": summary, "samples": samples,
                                                 "final": final, "cmd": cmd}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
