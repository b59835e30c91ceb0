"""nats-server alone, with nothing of telemetry-cy in the path: what one tick of N JetStream
publishes costs the server, against the same messages as core NATS, and which stream settings
and publisher choices move it.

    .venv/bin/python perf/jetstream_server_alone.py --keys 200000 --reps 3 \\
        -o perf/results/evidence/jetstream_server_alone.json

The messages are built here in plain Python (no telemetry_cy import): for key k the subject
``<prefix>.dev<k>.temp`` and a JSON body shaped like an aggregate of the same length as the
daemon's, as ``HPUB <subject> <inbox>.1.<k> <hlen> <tlen>`` with the header ``Nats-Msg-Id`` (or
as ``PUB`` for core NATS), cut into chunks of ``--chunk`` messages. One raw socket writes them
through a window of ``--window`` messages without an answer; a reader thread counts the answers
(MSG lines on the inbox; error answers too, by their ``"error"``). Timed from the first byte to
the last answer (core NATS: to the PONG after the last byte); the server's CPU time (utime +
stime from /proc) over the same span. Every JetStream variant then checks the stream holds N
messages.

Variants (each repetition runs all of them, in this order, on one server per storage):

- ``core``: PUB, no stream captures the subjects (the server only routes them).
- ``file``: the daemon's case -- file storage, Nats-Msg-Id, one subject per key, window 16,384.
- ``memory``: the same on a memory-storage stream.
- ``file_no_msg_id`` / ``memory_no_msg_id``: without Nats-Msg-Id (no deduplication entry).
- ``file_one_subject``: every message on one subject (no per-subject index growth).
- ``file_two_streams``: the keys spread over two streams (each stream stores on its own).
- ``file_window_4k`` / ``file_window_64k``: other windows.
- ``file_no_ack``: no reply subject (the server stores, sends no ack); done when the stream's
  state shows N messages (polled every 10 ms), or it has not grown for 2 s: without an ack
  a message the server drops (its ingest queue full) is lost without a word.
- ``memory_no_ack_no_msg_id``: the least the server can do for a stream message here.

``--sync always`` starts the server with ``jetstream { sync_interval: always }`` (an fsync per
write; the default syncs every 2 minutes, so an ack does not mean "on disk").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"

VARIANTS = {
    # name: (storage, msg_id, subjects, window, ack); subjects: "key" one per key, "one" the
    # same for all, "two_streams" one per key, spread over two streams
    "file": ("file", True, "key", 16384, True),
    "memory": ("memory", True, "key", 16384, True),
    "file_no_msg_id": ("file", False, "key", 16384, True),
    "memory_no_msg_id": ("memory", False, "key", 16384, True),
    "file_one_subject": ("file", True, "one", 16384, True),
    "file_two_streams": ("file", True, "two_streams", 16384, True),
    "file_window_4k": ("file", True, "key", 4096, True),
    "file_window_64k": ("file", True, "key", 65536, True),
    "file_no_ack": ("file", True, "key", 16384, False),
    "memory_no_ack_no_msg_id": ("memory", False, "key", 16384, False),
}


def find_server() -> str:
    exe = "nats-server"
    for c in (os.environ.get("NATS_SERVER"), str(Path(sysconfig.get_path("scripts")) / exe),
              str(Path(sys.executable).parent / exe), shutil.which(exe)):
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit("nats-server not found")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Conn:
    """One raw NATS connection (headers on, no verbose, no echo of our own +OK)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.recv(65536)   # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true,"protocol":1}\r\n')
        self.buf = b""

    def request(self, subject: str, body: dict, inbox: str = "_INBOX.api") -> dict:
        self.sock.sendall(f"SUB {inbox} 99\r\n".encode())
        data = json.dumps(body).encode()
        self.sock.sendall(f"PUB {subject} {inbox} {len(data)}\r\n".encode() + data + b"\r\n")
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                self.buf += self.sock.recv(65536)
                continue
            line, rest = self.buf[:i], self.buf[i + 2:]
            if line.startswith(b"MSG "):
                size = int(line.split()[-1])
                while len(rest) < size + 2:
                    rest += self.sock.recv(65536)
                self.buf = rest[size + 2:]
                self.sock.sendall(b"UNSUB 99\r\n")
                return json.loads(rest[:size])
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
            self.buf = rest

    def close(self) -> None:
        self.sock.close()


def body_for(k: int) -> bytes:
    # an aggregate's JSON fields and lengths (docs/output.md), the values made up
    return (f'{{"device":"dev{k:06d}","sensor":"temp","unit":"C","window_start":1764740000.0,'
            f'"window_end":1764740005.0,"count":1,"mean":{20 + k % 97 / 7:.6f},"min":20.5,'
            f'"max":21.5,"stddev":0.0,"last":20.5,"p50":20.5,"p95":21.5}}').encode()


def build(keys: int, prefix: str, inbox: str | None, msg_id: bool, subjects: str,
          chunk: int, core: bool) -> list[tuple[bytes, int]]:
    chunks, parts = [], []
    for k in range(keys):
        subject = {"one": f"{prefix}.all.temp", "key": f"{prefix}.dev{k:06d}.temp",
                   "two_streams": f"{prefix}.s{k % 2}.dev{k:06d}"}[subjects]
        body = body_for(k)
        if core:
            parts.append(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(body), body))
        else:
            header = (b"NATS/1.0\r\nNats-Msg-Id: dev%06d|temp|1764740005\r\n\r\n" % k
                      if msg_id else b"NATS/1.0\r\n\r\n")
            reply = f" {inbox}.1.{k}" if inbox else ""
            parts.append(b"HPUB %s%s %d %d\r\n%s%s\r\n" % (
                subject.encode(), reply.encode(), len(header), len(header) + len(body),
                header, body))
        if len(parts) == chunk:
            chunks.append((b"".join(parts), len(parts)))
            parts = []
    if parts:
        chunks.append((b"".join(parts), len(parts)))
    return chunks


def run_core(port: int, pid: int, keys: int, chunk: int, run_id: int) -> dict:
    chunks = build(keys, f"core{run_id}", None, False, "key", chunk, core=True)
    c = Conn(port)
    c.sock.sendall(b"PING\r\n")
    got = b""
    while b"PONG" not in got:
        got += c.sock.recv(65536)
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    for data, _ in chunks:
        c.sock.sendall(data)
    c.sock.sendall(b"PING\r\n")
    got = b""
    while b"PONG" not in got:
        got += c.sock.recv(65536)
    elapsed, cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
    c.close()
    return {"variant": "core", "s": round(elapsed, 4), "server_cpu_s": round(cpu, 3),
            "bytes": sum(len(d) for d, _ in chunks)}


def run_js(port: int, pid: int, keys: int, chunk: int, run_id: int, variant: str,
           timeout: float) -> dict:
    storage, msg_id, subjects, window, ack = VARIANTS[variant]
    prefix, inbox = f"v{run_id}", f"_INBOX.r{run_id}"
    # two streams: each has its own ingest queue, so the server can store on two cores
    streams = ({f"S{run_id}a": f"{prefix}.s0.>", f"S{run_id}b": f"{prefix}.s1.>"}
               if subjects == "two_streams" else {f"S{run_id}": f"{prefix}.>"})
    admin = Conn(port)
    for stream, filt in streams.items():
        r = admin.request(f"$JS.API.STREAM.CREATE.{stream}", {
            "name": stream, "subjects": [filt], "storage": storage, "retention": "limits",
            "discard": "old", "num_replicas": 1, "duplicate_window": 120 * 10**9})
        if "error" in r:
            raise RuntimeError(f"stream create: {r['error']}")

    def stored() -> tuple[int, int]:
        states = [admin.request(f"$JS.API.STREAM.INFO.{s}", {})["state"] for s in streams]
        return (sum(st["messages"] for st in states),
                sum(st.get("num_subjects", 0) for st in states))

    chunks = build(keys, prefix, inbox if ack else None, msg_id, subjects,
                   min(chunk, window), core=False)
    c = Conn(port)
    c.sock.sendall(f"SUB {inbox}.> 1\r\nPING\r\n".encode())
    got = b""
    while b"PONG" not in got:
        got += c.sock.recv(65536)
    answered, errors = [0], [0]
    cond = threading.Condition()
    marker = f"MSG {inbox}.".encode()

    def reader() -> None:
        # each count keeps one byte less than its marker from the last read: a marker cut in
        # two by a read is found whole, and none is counted twice
        tail_m = tail_e = b""
        err = b'"error"'
        while answered[0] < keys:
            data = c.sock.recv(1 << 20)
            if not data:
                return
            k, e = (tail_m + data).count(marker), (tail_e + data).count(err)
            tail_m = (tail_m + data)[-(len(marker) - 1):]
            tail_e = (tail_e + data)[-(len(err) - 1):]
            with cond:
                answered[0] += k
                errors[0] += e
                cond.notify()

    t_reader = threading.Thread(target=reader, daemon=True)
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    if ack:
        t_reader.start()
    sent = 0
    for data, k in chunks:
        if ack:
            with cond:
                while sent - answered[0] + k > window:
                    cond.wait()
        c.sock.sendall(data)
        sent += k
    if ack:
        t_reader.join(timeout)
    else:
        end = time.monotonic() + timeout
        # without acks nobody hears of a message the server dropped: stop once the count
        # has not moved for 2 s
        last, moved = -1, time.monotonic()
        while time.monotonic() < end and (now := stored()[0]) < keys:
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > 2.0:
                break
            time.sleep(0.01)
    elapsed, cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
    messages, distinct = stored()
    for stream in streams:
        admin.request(f"$JS.API.STREAM.DELETE.{stream}", {})
    c.close()
    admin.close()
    return {"variant": variant, "s": round(elapsed, 4), "server_cpu_s": round(cpu, 3),
            "answers": answered[0] if ack else None, "error_answers": errors[0],
            "stored": messages, "subjects": distinct, "exact": messages == keys,
            "bytes": sum(len(d) for d, _ in chunks)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=2048, help="messages per write")
    ap.add_argument("--variants", default="core," + ",".join(VARIANTS))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--sync", default="", help="the server's jetstream sync_interval, e.g. "
                    "'always' (an fsync per write); default: the server's (2 min)")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    variants = args.variants.split(",")
    binary = find_server()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="tcy-js-alone-"))
    port = free_port()
    argv = [binary, "-a", HOST, "-p", str(port), "-js"]
    if args.sync:   # the store directory then comes from the file (both places is an error)
        (tmp / "server.conf").write_text(
            f'jetstream {{ store_dir: "{tmp / "js"}", sync_interval: {args.sync} }}\n')
        argv += ["-c", str(tmp / "server.conf")]
    else:
        argv += ["-sd", str(tmp / "js")]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs: list[dict] = []
    try:
        end = time.monotonic() + 10
        while True:
            try:
                Conn(port).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        run_id = 0
        for rep in range(args.reps):
            for v in variants:
                run_id += 1
                rec = (run_core(port, server.pid, args.keys, args.chunk, run_id) if v == "core"
                       else run_js(port, server.pid, args.keys, args.chunk, run_id, v,
                                   args.timeout))
                rec["rep"] = rep
                runs.append(rec)
                print(json.dumps(rec), flush=True)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict = {}
    for v in variants:
        times = [r["s"] for r in runs if r["variant"] == v]
        cpus = [r["server_cpu_s"] for r in runs if r["variant"] == v]
        med = statistics.median(times)
        summary[v] = {"median_s": med, "per_s": round(args.keys / med),
                      "server_cpu_us_per_msg": round(statistics.median(cpus) / args.keys * 1e6,
                                                     2),
                      "runs_s": times}
    if "core" in summary:
        for v in variants:
            summary[v]["vs_core"] = round(summary["core"]["median_s"] / summary[v]["median_s"], 3)
    # without acks a loss is expected (that is the finding), with them none is allowed
    summary["every_acked_stream_exact"] = all(r.get("exact", True) for r in runs
                                              if VARIANTS.get(r["variant"], (0,) * 5)[4])
    summary["no_ack_stored"] = {v: [r["stored"] for r in runs if r["variant"] == v]
                                for v in variants if v in VARIANTS and not VARIANTS[v][4]}
    print(json.dumps(summary, indent=2))
    if args.output:
        cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if ln.startswith("Model name")), "")
        Path(args.output).write_text(json.dumps({
            "kind": "jetstream_server_alone", "args": vars(args), "nats_server": version,
            "cpu": cpu, "nproc": os.cpu_count(), "load_after": os.getloadavg(),
            "summary": summary, "runs": runs}, indent=2) + "\n")
    return 0 if summary["every_acked_stream_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
