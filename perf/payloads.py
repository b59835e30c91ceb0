"""Deterministic, realistic pre-encoded CBOR payloads for the performance suite.

Every payload is one reading, a CBOR map of five pairs encoded by ``cbor2.dumps``::

    {"d": "gw-0001-dev-000123", "s": "temperature", "v": 21.37, "u": "degC", "n": 1234567}

- ``d``: 18-byte device name ``gw-GGGG-dev-DDDDDD`` (64 devices per gateway);
- ``s``/``u``: one of eight sensors with its unit (below), chosen so that every payload encodes to
  58-62 bytes (``v`` is always a float64, ``n`` always a 4-byte unsigned integer);
- ``v``: a slow drift plus Gaussian noise around the sensor's typical value, rounded to 2 decimals;
- ``n``: a per-key sequence number, starting at a random point >= 100,000.

A key is (device, sensor); key ``i`` is device ``i // 8`` and sensor ``i % 8``. A *round* holds one
payload per key; each round is a fresh seeded permutation of the keys, so consecutive payloads hit
unrelated hash-table slots, as interleaved publishers would. Same arguments, same bytes, always.

``python perf/payloads.py`` prints a few samples and checks the length bound with cbor2.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from array import array
from pathlib import Path

import cbor2

#: (sensor, unit, typical value, spread): len(sensor) + len(unit) is 12..16, so with the fixed-size
#: fields around them every payload is 58..62 bytes.
SENSORS: tuple[tuple[str, str, float, float], ...] = (
    ("temperature", "degC", 21.0, 3.0),
    ("rel_humidity", "%RH", 45.0, 10.0),
    ("air_pressure", "hPa", 1013.0, 6.0),
    ("battery_volt", "V", 3.7, 0.2),
    ("co2_ndir_ppm", "ppm", 600.0, 150.0),
    ("pm2_5_conc", "ug/m3", 12.0, 6.0),
    ("wifi_rssi", "dBm", -62.0, 8.0),
    ("flow_rate", "l/min", 14.0, 2.5),
)
DEVICES_PER_GATEWAY = 64
MIN_BYTES, MAX_BYTES = 58, 62
DEFAULT_SEED = 20260101
CACHE_DIR = Path(__file__).resolve().parent / ".cache"


def key_of(i: int) -> tuple[str, str, str, float, float]:
    """(device, sensor, unit, typical value, spread) of key number i."""
    dev, s = divmod(i, len(SENSORS))
    sensor, unit, base, spread = SENSORS[s]
    device = f"gw-{dev // DEVICES_PER_GATEWAY:04d}-dev-{dev:06d}"
    return device, sensor, unit, base, spread


def encode(device: str, sensor: str, value: float, unit: str, seq: int) -> bytes:
    return cbor2.dumps({"d": device, "s": sensor, "v": float(value), "u": unit, "n": seq})


class PayloadSet:
    """``rounds`` rounds of one payload per key, kept as one contiguous blob plus offsets.

    ``payloads[i]`` and ``batch(start, n)`` return *fresh* bytes objects sliced from the blob: a
    benchmark materializes a batch just before timing ``push_many`` on it, so the payload bytes
    are as hot in cache as they would be in the ingest ring, whatever the number of keys. ``key``
    and ``round`` tell which key / round payload i belongs to.
    """

    def __init__(self, n_keys: int, rounds: int = 1, seed: int = DEFAULT_SEED):
        if n_keys < 1 or rounds < 1:
            raise ValueError("n_keys and rounds must be >= 1")
        self.n_keys = n_keys
        self.rounds = rounds
        self.seed = seed
        rng = random.Random(f"{seed}:{n_keys}")
        keys = [key_of(i) for i in range(n_keys)]
        phase = [rng.random() * math.tau for _ in range(n_keys)]
        seq = [100_000 + rng.randrange(1_000_000) for _ in range(n_keys)]
        order = list(range(n_keys))
        chunks: list[bytes] = []
        offsets = array("Q", [0])
        key_index = array("I")
        total = 0
        gauss = rng.gauss
        for r in range(rounds):
            rng.shuffle(order)
            for i in order:
                device, sensor, unit, base, spread = keys[i]
                drift = math.sin(phase[i] + r / 600.0) * spread
                value = round(base + drift + gauss(0.0, spread * 0.05), 2)
                p = encode(device, sensor, value, unit, seq[i] + r)
                if not MIN_BYTES <= len(p) <= MAX_BYTES:
                    raise AssertionError(f"payload of {len(p)} bytes: {p.hex()}")
                chunks.append(p)
                total += len(p)
                offsets.append(total)
                key_index.append(i)
        self.blob = b"".join(chunks)
        self.offsets = offsets
        self.key_index = key_index

    @classmethod
    def cached(cls, n_keys: int, rounds: int = 1, seed: int = DEFAULT_SEED) -> "PayloadSet":
        """Same as PayloadSet(...), kept in perf/.cache/ (keyed by this file's source, so editing
        the generator invalidates it): a million payloads take ~4 s to encode, ~0.1 s to load,
        and every pyperf worker process needs them."""
        src = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
        path = CACHE_DIR / f"payloads-{n_keys}-{rounds}-{seed}-{src}.bin"
        try:
            with open(path, "rb") as f:
                self = cls.__new__(cls)
                self.n_keys, self.rounds, self.seed = n_keys, rounds, seed
                count = n_keys * rounds
                self.offsets = array("Q")
                self.offsets.fromfile(f, count + 1)
                self.key_index = array("I")
                self.key_index.fromfile(f, count)
                self.blob = f.read()
                if len(self.blob) != self.offsets[-1]:
                    raise EOFError("truncated cache file")
                return self
        except (OSError, EOFError, ValueError):
            pass
        self = cls(n_keys, rounds, seed)
        CACHE_DIR.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            self.offsets.tofile(f)
            self.key_index.tofile(f)
            f.write(self.blob)
        os.replace(tmp, path)   # atomic: concurrent workers never see half a file
        return self

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        o = self.offsets
        return self.blob[o[i]:o[i + 1]]

    def key(self, i: int) -> int:
        return self.key_index[i]

    def round(self, i: int) -> int:
        return i // self.n_keys

    def batch(self, start: int, n: int) -> list[bytes]:
        """Fresh bytes objects for payloads [start, start + n), wrapping around the end."""
        blob, o, total = self.blob, self.offsets, len(self)
        start %= total
        if start + n <= total:
            return [blob[o[i]:o[i + 1]] for i in range(start, start + n)]
        return self.batch(start, total - start) + self.batch(0, n - (total - start))

    def mean_size(self) -> float:
        return len(self.blob) / len(self)


def check(n_keys: int = 1000, rounds: int = 3) -> dict:
    """Decodes every payload with cbor2 and checks the schema and the 58-62 byte bound."""
    ps = PayloadSet(n_keys, rounds)
    sizes = set()
    for i in range(len(ps)):
        p = ps[i]
        m = cbor2.loads(p)
        if set(m) != {"d", "s", "v", "u", "n"} or not isinstance(m["v"], float):
            raise AssertionError(m)
        if p[p.index(b"av") + 2] != 0xFB:
            raise AssertionError(f"v is not a float64: {p.hex()}")
        sizes.add(len(p))
    again = PayloadSet(n_keys, rounds)
    if again.blob != ps.blob:
        raise AssertionError("not deterministic")
    return {"payloads": len(ps), "sizes": sorted(sizes), "mean_size": ps.mean_size()}


if __name__ == "__main__":
    ps = PayloadSet(1000, 2)
    for i in range(4):
        print(len(ps[i]), cbor2.loads(ps[i]))
    print(check())
    big = PayloadSet(1_000_000, 1)
    print("1M keys:", len(big), "payloads, mean", round(big.mean_size(), 2), "bytes, sizes",
          min(len(big[i]) for i in range(0, len(big), 997)), "..",
          max(len(big[i]) for i in range(0, len(big), 997)))
