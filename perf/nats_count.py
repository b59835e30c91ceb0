"""Counts the aggregates published on NATS (subject ``<prefix>.>``), for perf/ingest_rig.py.

    python perf/nats_count.py --url nats://127.0.0.1:4222 [--subject 'agg.>']

stdout: ``{"event": "ready"}`` once subscribed, then ``{"count": N, "bytes": B, "t": ...}`` every
100 ms while the count changes, and a last one on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

import nats


async def run(url: str, subject: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    count = 0
    nbytes = 0

    async def on_msg(msg) -> None:
        nonlocal count, nbytes
        count += 1
        nbytes += len(msg.data)

    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                            pending_size=1 << 28)
    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=10_000_000,
                             pending_bytes_limit=1 << 30)
    await nc.flush()
    print(json.dumps({"event": "ready"}), flush=True)
    last = -1
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
        if count != last:
            last = count
            print(json.dumps({"count": count, "bytes": nbytes, "t": time.time()}), flush=True)
    await nc.flush()
    print(json.dumps({"count": count, "bytes": nbytes, "t": time.time(), "final": True}),
          flush=True)
    await nc.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--subject", default="agg.>")
    a = ap.parse_args(argv)
    asyncio.run(run(a.url, a.subject))
    return 0


if __name__ == "__main__":
    sys.exit(main())
