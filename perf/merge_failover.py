"""How fast a merge worker is ready, and how fast a dead one's partitions move (issue #14's
5 s and 10 s bounds, docs/scale-out.md "Ownership and failover"). Figures, not asserts: the
tests check the behaviour, this measures it.

On a 3-node loopback NATS cluster (perf/scaleout_rig.py) with the PARTIALS stream replicated 3
times:

* ``starts``: N times, one ``telemetry-cy merge --own auto`` process alone: ``ready_s`` (its own
  clock from the start of connecting to the ready line: subscribed, leases taken), spawn to the
  ready line (with the interpreter's start), spawn to every partition's lease in the KV bucket
  naming it (read by this script every 10 ms).
* ``kills``: K times, two workers sharing the partitions while one in-script instance (the pure
  engine and its partials, event time = the wall clock, 40 keys, ~400 readings/s) feeds the
  stream and the aggregates are watched on ``agg.>``; then SIGKILL one: time until the survivor
  holds every lease, and until every partition of the dead one has an aggregate again (the
  first published after the kill), and the survivor's replay (messages, floor).

    python perf/merge_failover.py --starts 20 --kills 5 [--lease 5s] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path

import nats

from scaleout_rig import Load, cli, env, machine, start_cluster
from telemetry_cy.engine import _engine_py
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.instance_partials import InstancePartials
from telemetry_cy.service.config import parse_duration
from telemetry_cy.service.merge_worker import LEASES
from telemetry_cy.sink.partials_stream import SUBJECT_PREFIX

WINDOW, EMIT = 5.0, 1.0


def merge_cmd(url: str, name: str, a) -> list[str]:
    return cli("merge", "--nats-url", url, "--worker-id", name, "--window", f"{WINDOW}s",
               "--emit-every", f"{EMIT}s", "--allowed-lateness", "0s", "--partitions",
               str(a.partitions), "--own", "auto", "--lease", f"{a.lease}s", "--replicas", "3")


async def owners(kv) -> dict[int, str]:
    out = {}
    try:
        keys = await kv.keys()
    except Exception:  # noqa: BLE001  (an empty bucket)
        return out
    for key in keys:
        if key.startswith("own."):
            try:
                out[int(key[4:])] = (await kv.get(key)).value.decode()
            except Exception:  # noqa: BLE001  (deleted meanwhile)
                pass
    return out


async def wait_until(pred, timeout: float, every: float = 0.01) -> float | None:
    """Seconds until ``await pred()`` holds, None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await pred():
            return time.monotonic() - t0
        await asyncio.sleep(every)
    return None


async def lease_bucket(js, a):
    from nats.js.api import KeyValueConfig
    try:
        return await js.key_value(LEASES)
    except Exception:  # noqa: BLE001  (the first worker makes it; make it the same way)
        return await js.create_key_value(KeyValueConfig(bucket=LEASES, ttl=a.lease, history=1,
                                                        replicas=3))


async def starts(url: str, a) -> list[dict]:
    nc = await nats.connect(url.split(","))
    kv = await lease_bucket(nc.jetstream(), a)
    out = []
    for i in range(a.starts):
        name = f"r{i}"
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *merge_cmd(url, name, a), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env())
        assert proc.stderr is not None
        ready = None
        while ready is None:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not line:
                raise RuntimeError("worker ended before ready")
            if line.startswith(b"{") and b'"ready"' in line:
                ready = json.loads(line)
        t_line = time.monotonic() - t0

        async def all_mine() -> bool:
            own = await owners(kv)
            return len(own) == a.partitions and set(own.values()) == {name}
        t_owned = await wait_until(all_mine, 30)
        proc.send_signal(signal.SIGTERM)
        await proc.stderr.read()
        await proc.wait()
        rec = {"ready_s": ready["ready_s"], "spawn_to_ready_line_s": round(t_line, 3),
               "owned_at_ready": len(ready["own"]),
               "spawn_to_all_leases_s": None if t_owned is None else round(t_line + t_owned, 3)}
        print(json.dumps({"start": i, **rec}), flush=True)
        out.append(rec)
    await nc.close()
    return out


class Feeder:
    """One instance in this process: readings at the wall clock's event time, its partials
    published to the stream (each awaited, in order), a heartbeat a second when nothing closed."""

    def __init__(self, nc, partitions: int) -> None:
        self.js = nc.jetstream()
        ws = pf.window_settings(WINDOW, EMIT, "event", 0.0)
        self.engine = _engine_py.Engine(window=WINDOW, emit_every=EMIT, time="event",
                                        allowed_lateness=0.0, key_ttl=1e6, partials=True)
        self.out = InstancePartials(self.engine, ws, "feeder", partitions)
        self.sent = 0

    async def run(self, stop: asyncio.Event) -> None:
        rng = random.Random(1)
        last = time.monotonic()
        while not stop.is_set():
            now = time.time()
            for _ in range(20):
                k = rng.randrange(40)
                self.engine.push_reading(f"dev{k}", "temp", rng.uniform(10, 30), now,
                                         unit="C", t=now)
            msgs = self.out.collect()
            if not msgs and time.monotonic() - last >= 1.0:
                msgs = self.out.heartbeat()
            for part, data in msgs:
                await self.js.publish(f"{SUBJECT_PREFIX}.{part}", data)
                self.sent += 1
            if msgs:
                last = time.monotonic()
            await asyncio.sleep(0.05)


async def kills(url: str, a) -> list[dict]:
    nc = await nats.connect(url.split(","))
    kv = await lease_bucket(nc.jetstream(), a)
    seen: list[tuple[float, int]] = []     # (monotonic, partition) of each aggregate

    async def on_agg(msg) -> None:
        body = json.loads(msg.data)
        seen.append((time.monotonic(),
                     pf.partition_of(body["device"], body["sensor"], a.partitions)))
    await nc.subscribe("agg.>", cb=on_agg)
    stop = asyncio.Event()
    feeder = Feeder(nc, a.partitions)
    feed = asyncio.create_task(feeder.run(stop))
    out = []
    for k in range(a.kills):
        names = (f"a{k}", f"b{k}")
        procs = {}
        for name in names:
            procs[name] = await asyncio.create_subprocess_exec(
                *merge_cmd(url, name, a), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, env=env())

        async def balanced() -> bool:
            own = await owners(kv)
            counts = [sum(v == n for v in own.values()) for n in names]
            recent = {p for t, p in seen if t > time.monotonic() - 2.0}
            # a fair share each (the first comer hands the extra over at its next renewal)
            return sum(counts) == a.partitions and max(counts) - min(counts) <= 1 and \
                len(recent) == a.partitions
        if await wait_until(balanced, 60, 0.1) is None:
            raise RuntimeError("the two workers did not share the partitions")
        await asyncio.sleep(1.0)
        theirs = sorted(p for p, v in (await owners(kv)).items() if v == names[0])
        t_kill = time.monotonic()
        procs[names[0]].send_signal(signal.SIGKILL)

        async def survivor_has_all() -> bool:
            own = await owners(kv)
            return len(own) == a.partitions and set(own.values()) == {names[1]}
        t_owned = await wait_until(survivor_has_all, 60)

        async def flowing() -> bool:
            after = {p for t, p in seen if t > t_kill + 0.05}
            return set(theirs) <= after
        await wait_until(flowing, 60)
        firsts = {p: min(t for t, q in seen if q == p and t > t_kill + 0.05) - t_kill
                  for p in theirs}
        await procs[names[0]].wait()
        procs[names[1]].send_signal(signal.SIGTERM)
        final_out, _ = await procs[names[1]].communicate()
        final = json.loads(final_out.decode().strip().splitlines()[-1])
        rec = {"dead_owned": len(theirs),
               "kill_to_all_leases_s": None if t_owned is None else round(t_owned, 3),
               "kill_to_aggregates_again_s": round(max(firsts.values()), 3),
               "survivor_replayed": final.get("replayed"),
               "survivor_takeovers": final.get("takeovers"),
               "replay_from": final.get("replay_from")}
        print(json.dumps({"kill": k, **rec}), flush=True)
        out.append(rec)
        await asyncio.sleep(a.lease + 1.0)   # the dead one's worker key expires
    stop.set()
    await feed
    await nc.close()
    return out


def summary(rows: list[dict], key: str) -> dict:
    xs = [r[key] for r in rows if r.get(key) is not None]
    if not xs:
        return {}
    return {"n": len(xs), "median": round(statistics.median(xs), 3), "max": round(max(xs), 3),
            "min": round(min(xs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--lease", type=parse_duration, default=5.0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    load = Load().start()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_cluster(Path(tmp) / "cluster")
        try:
            url = cluster.url
            s = asyncio.run(starts(url, a)) if a.starts else []
            k = asyncio.run(kills(url, a)) if a.kills else []
        finally:
            cluster.kill()
    result = {
        "machine": machine(), "load": load.stop(),
        "settings": {"partitions": a.partitions, "lease_s": a.lease, "window_s": WINDOW,
                     "emit_every_s": EMIT, "stream_replicas": 3, "nodes": 3},
        "starts": {k_: summary(s, k_) for k_ in ("ready_s", "spawn_to_ready_line_s",
                                                 "spawn_to_all_leases_s")},
        "kills": {k_: summary(k, k_) for k_ in ("kill_to_all_leases_s",
                                                "kill_to_aggregates_again_s",
                                                "survivor_replayed")},
        "runs": {"starts": s, "kills": k},
    }
    text = json.dumps(result, indent=1)
    print(json.dumps({"starts": result["starts"], "kills": result["kills"],
                      "load": result["load"]}, indent=1))
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
