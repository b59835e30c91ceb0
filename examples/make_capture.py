"""Writes examples/data/fleet-10min.cap, the capture the example notebook replays.

    python examples/make_capture.py [OUT]

Origin: the simulated fleet of the demo (``telemetry_cy.tools.fleet_sim.Fleet``: 4 devices with 4
sensors each, one of them silent every other minute, a small share of malformed payloads and of
skipped sequence numbers), 10 minutes at about 4 messages a second, with simulated arrival times
from 2023-11-14 22:13:20 UTC on. The messages are written in the binary capture format
(docs/capture.md) as ``telemetry-cy record`` writes them, QoS 0, not retained; the segment's
metadata names this script. Deterministic: the same file every run (fixed seed, fixed clock).

A capture of a real feed is made with ``telemetry-cy record --mqtt-url ... --topic ... --out
FILE`` (or ``mosquitto_sub -F '%U %t %x'``); the notebook replays either kind.
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

from telemetry_cy.capture._encode_py import record_bytes
from telemetry_cy.capture.writer import CaptureWriter
from telemetry_cy.tools.fleet_sim import Fleet

T0 = 1_700_000_000.0
MINUTES, RATE = 10, 4.0          # messages per second, on average
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "fleet-10min.cap"
BLOCK = 512                      # messages per capture block


def messages() -> list[tuple[float, bytes, bytes]]:
    """(arrival ts, topic, payload) of the simulated feed, in arrival order."""
    fleet = Fleet(devices=4, seed=18, malformed_share=0.01, silent_share=0.25)
    jitter = random.Random(18)
    out = []
    for i in range(int(MINUTES * 60 * RATE)):
        ts = round(T0 + (i + jitter.random() * 0.5) / RATE, 6)
        out += [(ts, topic.encode(), payload) for topic, payload in fleet.messages(ts, 1)]
    return out


def write(path: Path) -> int:
    msgs = messages()
    meta = {"tool": "examples/make_capture.py", "source": "simulated fleet (fleet_sim.Fleet)",
            "seed": 18, "devices": 4, "minutes": MINUTES}
    writer = CaptureWriter(path, meta=meta, overwrite=True, clock=lambda: T0)
    try:
        for i in range(0, len(msgs), BLOCK):
            part = msgs[i:i + BLOCK]
            writer.write_block(len(part), struct.pack(f"<{len(part)}d", *(m[0] for m in part)),
                               b"".join(record_bytes(t, p, 0) for _, t, p in part), True)
    finally:
        writer.close()
    return len(msgs)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    n = write(out)
    print(f"wrote {n} messages to {out} ({out.stat().st_size} bytes)")
