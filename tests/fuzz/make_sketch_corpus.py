"""Writes the seed corpus of fuzz_sketch.c (deterministic; the files are checked in).

    python tests/fuzz/make_sketch_corpus.py      # rewrites tests/fuzz/corpus/sketch/

corpus/sketch/<category>-<name>.bin: one candidate byte string each, made with the pure twin
(telemetry_cy/engine/sketch_py.py). Categories:
    valid   sketches as to_bytes() writes them: empty, zeros only, one value, each sign, mixed,
            full (collapsed) stores, the extreme indexes, every allowed alpha edge
    bad     one defect each, one per reason the reader gives (tests/test_sketch.py checks the
            reason of each)
    values  for the target's second reading of an input: a byte choosing alpha (low 2 bits),
            then little-endian doubles to add (sensor data, a wide span that collapses, NaN and
            infinities)
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

from telemetry_cy.engine.sketch_py import DBL_MAX, QuantileSketch

HERE = Path(__file__).resolve().parent
SKETCH_DIR = HERE / "corpus" / "sketch"


def sketch_of(values, alpha: float = 0.01) -> bytes:
    s = QuantileSketch(alpha)
    s.add_many(values)
    return s.to_bytes()


def valid_seeds() -> dict[str, bytes]:
    rng = random.Random(12)
    out = {
        "empty": sketch_of([]),
        "zeros": sketch_of([0.0, -0.0, 1e-12, -5e-10]),
        "one": sketch_of([21.5]),
        "negative-one": sketch_of([-3.0]),
        "sensor": sketch_of([20.0 * (1 + rng.uniform(-0.2, 0.2)) for _ in range(500)]),
        "mixed": sketch_of([rng.uniform(-100, 100) for _ in range(300)] + [0.0] * 7),
        "extremes": sketch_of([DBL_MAX, -DBL_MAX, 1e-9, -1e-9], alpha=0.05),
        "full-stores": sketch_of([10.0**e for e in range(-9, 308)]
                                 + [-(10.0**e) for e in range(-9, 308)], alpha=0.05),
        "alpha-min": sketch_of([1.0, 2.0, 1e300], alpha=0.005),
        "alpha-max": sketch_of([1.0, 2.0, 1e300], alpha=0.05),
    }
    return {f"valid-{k}": v for k, v in out.items()}


def _patched(base: bytes, fmt: str, offset: int, value) -> bytes:
    b = bytearray(base)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def bad_seeds() -> dict[str, bytes]:
    base = sketch_of([1.0, 2.0, 4.0, -8.0, 0.0])   # positive buckets 1 .. 4 with gaps, 1 negative
    one = sketch_of([5.0])
    out = {
        "truncated-header": base[:31],
        "truncated-counts": base[:-1],
        "foreign-json": b'{"d":"gw-01","s":"temp","v":21.5,"ts":1700000000.0}',
        # {"d": "gw-01", "s": "temperature", "v": 21.5, "u": "C"}, an MQTT payload
        "foreign-cbor": bytes.fromhex("a461646567772d303161736b74656d7065726174757265"
                                      "6176fb403580000000000061756143"),
        "magic": b"TCQX" + base[4:],
        "version-2": _patched(base, "<B", 4, 2),
        "version-255": _patched(base, "<B", 4, 255),
        "flags": _patched(base, "<B", 5, 1),
        "reserved": _patched(base, "<H", 6, 0x100),
        "alpha-low": _patched(base, "<d", 8, 0.0049),
        "alpha-high": _patched(base, "<d", 8, 0.06),
        "alpha-nan": _patched(base, "<d", 8, float("nan")),
        "alpha-inf": _patched(base, "<d", 8, float("inf")),
        "store-len": _patched(base, "<H", 28, 1025),
        "length-extra": base + b"\x00\x00\x00\x00",
        "length-short-store": _patched(one, "<H", 28, 2),
        "index-low": _patched(one, "<i", 20, -2**31),
        "index-high": _patched(one, "<i", 20, 2**31 - 1),
        "index-beyond-max": _patched(one, "<i", 20, QuantileSketch(0.01).max_index + 1),
        "noncanonical-edge": _patched(base, "<I", 32, 0),
        "noncanonical-empty-min": _patched(sketch_of([0.0]), "<i", 24, 7),
        "total": _patched(_patched(one, "<I", 16, 2**32 - 1), "<I", 32, 1),
    }
    return {f"bad-{k}": v for k, v in out.items()}


def values_seeds() -> dict[str, bytes]:
    rng = random.Random(34)

    def doubles(alpha_code: int, values) -> bytes:
        return bytes([alpha_code]) + struct.pack(f"<{len(values)}d", *values)

    out = {
        "sensor": doubles(1, [21.5 * (1 + rng.uniform(-0.2, 0.2)) for _ in range(200)]),
        "wide": doubles(3, [rng.choice([1, -1]) * 10 ** rng.uniform(-12, 308) for _ in range(400)]),
        "nonfinite": doubles(0, [1.0, float("nan"), -2.0, float("inf"), 0.0, -float("inf"), 3.0]),
        "edges": doubles(2, [QuantileSketch(0.02).gamma ** float(k) for k in range(-5, 60)]),
    }
    return {f"values-{k}": v for k, v in out.items()}


def seeds() -> dict[str, bytes]:
    return {**valid_seeds(), **bad_seeds(), **values_seeds()}


def main() -> int:
    SKETCH_DIR.mkdir(parents=True, exist_ok=True)
    for old in SKETCH_DIR.glob("*.bin"):
        old.unlink()
    for name, data in seeds().items():
        (SKETCH_DIR / f"{name}.bin").write_bytes(data)
    print(f"{len(seeds())} files in {SKETCH_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
