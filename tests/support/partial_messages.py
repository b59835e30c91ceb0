"""Partial-format messages for the reader tests and the fuzz corpus: random valid messages (every
kind, quantiles on and off, names in and out of ASCII, values of every sign and size), damage
under a valid checksum, and one outcome of a reader to compare the compiled and the pure one by.
"""

from __future__ import annotations

import math
import random

from support import framing
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.sketch_py import QuantileSketch

NAMES = ("dev", "gerät", "传感器", "x", "a b", "🛰")
UNITS = (None, None, "C", "", "°C", "kPa")


def random_settings(rng: random.Random) -> pf.WindowSettings:
    emit = rng.choice([0.1, 0.5, 1.0, 5.0, 60.0])
    event = rng.random() < 0.7
    qs = sorted(rng.sample([0.01, 0.1, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999], rng.randint(1, 8)))
    return pf.window_settings(
        emit * rng.randint(1, 12), emit, "event" if event else "arrival",
        rng.choice([0.0, emit, 2.5 * emit]) if event else 0.0,
        qs if rng.random() < 0.5 else None, rng.choice([0.005, 0.01, 0.02, 0.05]))


def _value(rng: random.Random) -> float:
    kind = rng.random()
    if kind < 0.6:
        return rng.uniform(-50.0, 50.0)
    if kind < 0.7:
        return 0.0
    if kind < 0.8:
        return rng.choice([1e-12, -3e-10, 2e-9])   # the sketch's zero bucket and its edge
    return rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-8, 15)


def random_panes(rng: random.Random, settings: pf.WindowSettings, interval: int,
                 n: int, wide: bool = True) -> list[pf.PanePartial]:
    """n panes of distinct keys, each as an engine makes one: its readings' statistics, times in
    the interval, the sketch of its readings when quantiles are on. `wide`: values of every
    sign and size (sketch stores up to their cap); else a sensor's (15 to 25: small stores)."""
    lo, hi = interval * settings.emit_every, (interval + 1) * settings.emit_every
    out = []
    for i in range(n):
        vals = [_value(rng) if wide else rng.uniform(15.0, 25.0)
                for _ in range(rng.randint(1, 8))]
        mean = sum(vals) / len(vals)
        ts = sorted(lo + rng.random() * (hi - lo) for _ in range(2))
        ts = [t if lo <= t < hi else lo for t in ts]
        sk = None
        if settings.quantiles:
            sk = QuantileSketch(settings.quantile_accuracy)
            sk.add_many(vals)
        out.append(pf.PanePartial(
            f"{rng.choice(NAMES)}{i}", rng.choice(NAMES[:3]), rng.choice(UNITS), len(vals),
            math.fsum(vals), math.fsum((v - mean) ** 2 for v in vals), min(vals), max(vals),
            vals[0], ts[0], vals[-1], ts[-1], sk))
    return out


def random_message(rng: random.Random, kind: int | None = None, n_panes: int | None = None,
                   settings: pf.WindowSettings | None = None, wide: bool = True) -> bytes:
    settings = settings or random_settings(rng)
    kind = kind if kind is not None else rng.choice(sorted(pf.KINDS))
    interval = rng.choice([0, 7, -3, 10**9, 123456])
    partitions = rng.randint(1, 64)
    panes = ()
    if kind == pf.KIND_PANES:
        n = n_panes if n_panes is not None else rng.choice([0, 1, 2, 5, 20, rng.randint(0, 200)])
        panes = random_panes(rng, settings, interval, n, wide)
    instance = rng.choice(["i", "instance-é", "x" * 255, f"host-{rng.randrange(1000)}"])
    return pf.write(kind, settings, instance, rng.randrange(2**64), interval,
                    rng.randrange(partitions), partitions, panes)


def reseal(data: bytes | bytearray, length_at: int | None = 16) -> bytes:
    """A partial with its length field (u64 at 16; None: left as changed) and crc32 made right."""
    return framing.reseal(data, length_at)


def _sketch_state(sk: QuantileSketch | None):
    if sk is None:
        return None
    return type(sk), sk.alpha, sk.buckets(), sk.count, sk.to_bytes()


def outcome(read, data: bytes):
    """("ok", the message's values with sketches as their state, the message written back) or
    ("refused", reason): equal for two readers that read data the same way."""
    try:
        m = read(data)
    except pf.PartialError as exc:
        return "refused", exc.reason
    fields = m._replace(panes=tuple((p.device, p.sensor, p.unit, p.count, p.sum, p.m2, p.min,
                                     p.max, p.first, p.first_ts, p.last, p.last_ts,
                                     _sketch_state(p.sketch)) for p in m.panes))
    # written back: the same bits of every float (-0.0, NaN payloads) and the same bytes
    again = pf.write(m.kind, m.settings, m.instance, m.seq, m.interval, m.partition,
                     m.partitions, m.panes)
    return "ok", fields, again
