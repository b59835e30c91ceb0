"""Does nats-server's fast batch publish help? Per-message acks against a fast batch, server alone.

    PYTHONPATH=$PWD .venv/bin/python perf/jetstream_fast_batch.py --keys 200000 --reps 3 \\
        -o perf/results/evidence/jetstream_fast_batch.json

nats-server 2.14 added "fast batch" publishing: the messages of a batch carry the batch id,
sequence and operation in their reply subject (``<inbox>.<batch id>.<ack every>.fail.<seq>.<op>
.$FI``) and the server answers with a flow-control ack every N messages and one PubAck at the
commit, instead of one ack per message (the stream needs ``allow_batched``). The question for the
emitter is whether the server stores a tick batch faster that way.

One private nats-server with JetStream (file storage), a stream with ``allow_batched: true`` and
a 2-minute duplicate window. Each run writes ``--keys`` HPUB messages (a Nats-Msg-Id header and a
~230-byte JSON body each, subjects in order) from a raw socket, at most ``--window`` messages
ahead of the answers (for fast batch: ahead of the flow acks), and times from the first byte to
the last answer; the server's CPU seconds come from /proc. ``per_message``: a reply subject per
message, one ack each (what the emitter does). ``fast_batch``: the whole tick as one fast batch,
``fail`` gap mode, a flow ack every 500 messages asked for. Each run checks that the stream then
holds exactly ``--keys`` messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ingest_rig import proc_cpu  # noqa: E402
from telemetry_cy.tools.local_brokers import NatsServer  # noqa: E402

BODY = json.dumps({"device": "dev-00001", "sensor": "temp", "unit": "C",
                   "window_start": 1700000000.0, "window_end": 1700000060.0, "count": 12,
                   "sum": 263.4, "mean": 21.95, "min": 20.1, "max": 23.7, "stddev": 1.0312345,
                   "first": 20.1, "last": 23.701}, separators=(",", ":")).encode()


def api(url: str, subject: str, request: dict) -> dict:
    import nats

    async def run():
        nc = await nats.connect(url)
        try:
            msg = await nc.request(subject, json.dumps(request).encode(), timeout=10)
            return json.loads(msg.data)
        finally:
            await nc.close()
    return asyncio.run(run())


def messages(n: int, run: int, fast: bool) -> list[bytes]:
    """The HPUB messages of a run."""
    out = []
    for i in range(n):
        subject = b"agg%d.dev-%07d.temp" % (run, i)
        header = b"NATS/1.0\r\nNats-Msg-Id: dev-%07d|temp|%d\r\n\r\n" % (i, run)
        if fast:
            op = 2 if i == n - 1 else (0 if i == 0 else 1)   # commit, start, append
            reply = b"_INBOX.fb.run%d.500.fail.%d.%d.$FI" % (run, i + 1, op)
        else:
            reply = b"_INBOX.fb.%d" % i
        out.append(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, len(header),
                                                      len(header) + len(BODY), header, BODY))
    return out


def one(server: NatsServer, run: int, n: int, fast: bool, window: int) -> dict:
    stream = f"FB{run}"
    r = api(server.url, f"$JS.API.STREAM.CREATE.{stream}",
            {"name": stream, "subjects": [f"agg{run}.>"], "storage": "file", "num_replicas": 1,
             "retention": "limits", "discard": "old", "allow_batched": True,
             "duplicate_window": 120 * 10**9})
    if "error" in r:
        raise SystemExit(f"stream create: {r['error']} (fast batch needs nats-server >= 2.14)")
    msgs = messages(n, run, fast)
    sock = socket.create_connection((server.host, server.port))
    sock.recv(65536)
    sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true,"protocol":1}'
                 b"\r\nSUB _INBOX.fb.> 1\r\nPING\r\n")
    got = b""
    while b"PONG" not in got:
        got += sock.recv(65536)
    # progress: answers (per message), or the highest sequence a flow ack or the PubAck confirmed
    done, cond, errors = [0], threading.Condition(), [0]

    def read() -> None:
        tail, confirmed = b"", 0
        while done[0] < n:
            data = tail + sock.recv(1 << 20)
            cut = data.rfind(b"\r\n") + 2
            data, tail = data[:cut], data[cut:]
            if fast:
                for line in data.split(b"\r\n"):
                    if line.startswith(b"{"):
                        obj = json.loads(line)
                        if "error" in obj:
                            errors[0] += 1
                        if obj.get("type") == "ack":
                            confirmed = max(confirmed, obj["seq"])
                        elif "batch" in obj:   # the PubAck of the commit
                            confirmed = n
                k = confirmed - done[0] if confirmed > done[0] else 0
            else:
                k = data.count(b"MSG _INBOX.fb.")
                errors[0] += data.count(b'"error"')
            with cond:
                done[0] += k
                cond.notify()

    reader = threading.Thread(target=read, daemon=True)
    cpu0 = proc_cpu(server.proc.pid)
    t0 = time.perf_counter()
    reader.start()
    sent = 0
    step = 2048
    for i in range(0, n, step):
        chunk = msgs[i:i + step]
        with cond:
            while sent - done[0] + len(chunk) > window:
                if not cond.wait(30):
                    raise SystemExit(f"stalled at {done[0]} of {n}")
        sock.sendall(b"".join(chunk))
        sent += len(chunk)
    reader.join(120)
    elapsed = time.perf_counter() - t0
    cpu = proc_cpu(server.proc.pid) - cpu0
    sock.close()
    state = api(server.url, f"$JS.API.STREAM.INFO.{stream}", {}).get("state", {})
    api(server.url, f"$JS.API.STREAM.DELETE.{stream}", {})
    rec = {"mode": "fast_batch" if fast else "per_message", "run": run,
           "seconds": round(elapsed, 3), "messages_per_s": round(n / elapsed),
           "server_cpu_s": round(cpu, 3),
           "server_cpu_us_per_message": round(cpu / n * 1e6, 2), "error_answers": errors[0],
           "stored": state.get("messages"), "exact": state.get("messages") == n}
    print(json.dumps(rec), flush=True)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp, NatsServer(tmp) as server:
        version = subprocess.run([server.binary, "--version"], capture_output=True,
                                 text=True).stdout.strip()
        run = 0
        for _ in range(args.reps):
            for fast in (False, True):
                run += 1
                runs.append(one(server, run, args.keys, fast, args.window))
    summary = {m: {"median_s": statistics.median(r["seconds"] for r in runs if r["mode"] == m),
                   "median_server_cpu_us_per_message": statistics.median(
                       r["server_cpu_us_per_message"] for r in runs if r["mode"] == m)}
               for m in ("per_message", "fast_batch")}
    print(json.dumps(summary, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps({
            "kind": "jetstream_fast_batch", "args": vars(args), "nats_server": version,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "load": os.getloadavg()},
            "summary": summary, "runs": runs}, indent=2) + "\n")
    return 0 if all(r["exact"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
