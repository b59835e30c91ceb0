"""Writes the seed corpus of fuzz_snapshot.c (deterministic; the files are checked in).

    python tests/fuzz/make_snapshot_corpus.py    # rewrites tests/fuzz/corpus/snapshot/

corpus/snapshot/<name>.bin: the target's 12-byte shape then the keys section of a real snapshot,
made with the pure twin (a compiled snapshot is byte-identical, tests/test_snapshot.py): arrival
and event time, with and without a lead, quantiles off and on (alpha 0.01, the target's), keys
with units, sequence numbers, open panes below the newest, a clock not started.
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

from telemetry_cy.engine import snapshot_format as snap
from telemetry_cy.engine._engine_py import Engine

HERE = Path(__file__).resolve().parent
SNAPSHOT_DIR = HERE / "corpus" / "snapshot"

CONFIGS = {
    "arrival": dict(window=4.0, emit_every=1.0),
    "arrival-q": dict(window=3.0, emit_every=1.0, quantiles=[0.5, 0.9, 0.99]),
    "event-lead0": dict(window=4.0, emit_every=1.0, time="event"),
    "event-lead2": dict(window=3.0, emit_every=1.0, time="event", allowed_lateness=2.0),
    "event-lead3-q": dict(window=2.0, emit_every=1.0, time="event", allowed_lateness=3.0,
                          quantiles=[0.5, 0.99]),
}


def shape_bytes(engine: Engine, n_keys: int) -> bytes:
    flags = (1 if engine._event else 0) | (2 if engine.quantiles else 0) \
        | (4 if engine._started else 0) | (engine._lead << 3)
    return struct.pack("<BBHq", flags, engine._panes - 1, n_keys, engine._closed)


def seed_of(engine: Engine) -> bytes:
    data = engine.snapshot()
    opened = snap.open_snapshot(data)
    return shape_bytes(engine, opened.n_keys) + data[opened.keys_start:opened.keys_end]


def seeds() -> dict[str, bytes]:
    out = {}
    for name, config in CONFIGS.items():
        rng = random.Random(name)
        engine = Engine(**config)
        out[f"{name}-empty"] = seed_of(engine)
        t = 100.0
        for i in range(40):
            t += rng.choice([0.0, 0.2, 0.5, 1.0])
            when = t - rng.choice([0.0, 0.0, 0.7, 1.6, 2.5])
            engine.push_reading(f"d{rng.randrange(4)}", rng.choice(["t", "ü"]),
                                rng.choice([0.0, 1.5, -2.25, rng.uniform(-1e6, 1e6)]), t,
                                unit=rng.choice([None, "C", ""]),
                                seq=rng.choice([None, i]), t=when if engine._event else None)
            if i in (3, 20):
                out[f"{name}-{i}"] = seed_of(engine)
        out[f"{name}-40"] = seed_of(engine)
    return out


def write_corpus(directory: Path, corpus: dict[str, bytes]) -> int:
    """directory/<name>.bin for each seed, and no other .bin file (a seed dropped is deleted)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.bin"):
        old.unlink()
    for name, data in corpus.items():
        (directory / f"{name}.bin").write_bytes(data)
    print(f"wrote {len(corpus)} seeds to {directory}")
    return 0


def main() -> int:
    return write_corpus(SNAPSHOT_DIR, seeds())


if __name__ == "__main__":
    sys.exit(main())
