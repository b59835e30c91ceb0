"""A simulated sensor fleet: realistic CBOR payloads for demos, tests and load generation.

Signals drift slowly, carry noise and the odd spike; one device in twenty goes silent for a while;
a small share of payloads is malformed on purpose so the drop counters have something to count,
and a few are lost on the way (a sequence number skipped) for the gap accounting.
Deterministic for a given seed.

With ``event_time`` every reading carries its time ``t`` (docs/windows.md, "Event time"), and the
fleet misbehaves the way real ones do: ``buffering`` devices sit behind a gateway whose uplink
drops for BUFFER_S seconds every BUFFER_EVERY_S; they keep their readings and flush them when it
is back, so the newest of them are within a few seconds' lateness and the oldest are late; and
``skewed`` devices have a clock SKEW_S ahead (their readings are dropped as ``future``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import cbor2

SENSORS = (("temp", "C", 21.0, 3.0), ("rh", "%", 45.0, 10.0), ("pressure", "hPa", 1013.0, 6.0),
           ("vbat", "V", 3.7, 0.2))

MALFORMED = (
    b"\xa3\x61d",                                   # truncated
    cbor2.dumps({"d": "gw-x", "s": "temp"}),        # no value
    cbor2.dumps({"d": "gw-x", "s": "temp", "v": float("nan")}),
    b"\xa2\x61d\x61a\x61d\x61b",                     # duplicate key
)


#: event time: a buffering device's uplink is down BUFFER_S seconds of every BUFFER_EVERY_S ...
BUFFER_S = 12.0
BUFFER_EVERY_S = 45.0
#: ... and a skewed device's clock runs this far ahead
SKEW_S = 600.0


@dataclass
class _Series:
    device: str
    sensor: str
    unit: str
    base: float
    spread: float
    phase: float
    seq: int = 0


class Fleet:
    def __init__(self, devices: int = 100, sensors: int = 4, seed: int = 1,
                 malformed_share: float = 0.001, silent_share: float = 0.05,
                 lost_share: float = 0.001, event_time: bool = False, buffering: int = 0,
                 skewed: int = 0):
        self._rng = random.Random(seed)
        self.series = [
            _Series(f"dev-{d:05d}", name, unit, base, spread, self._rng.random() * math.tau)
            for d in range(devices)
            for name, unit, base, spread in SENSORS[: max(1, min(sensors, len(SENSORS)))]
        ]
        self.malformed_share = malformed_share
        # messages "lost on the way": their sequence number is used but they are never sent,
        # so the engine's gap accounting has something to find
        self.lost_share = lost_share
        n_silent = int(devices * silent_share)
        self._silent = {f"dev-{d:05d}" for d in self._rng.sample(range(devices), n_silent)}
        self._next = 0
        self.event_time = event_time
        # event time: the devices behind a flaky uplink (the first ones that are never silent)
        # and those with a clock ahead (the last ones)
        steady = [f"dev-{d:05d}" for d in range(devices) if f"dev-{d:05d}" not in self._silent]
        self.buffering = set(steady[:buffering]) if event_time else set()
        self.skewed = set(steady[len(steady) - skewed:]) if event_time and skewed else set()
        self._held: list[tuple[str, bytes]] = []

    def value(self, s: _Series, now: float) -> float:
        drift = math.sin(now / 600.0 + s.phase) * s.spread
        noise = self._rng.gauss(0.0, s.spread * 0.05)
        spike = s.spread * 5.0 if self._rng.random() < 0.0005 else 0.0
        return round(s.base + drift + noise + spike, 3)

    def messages(self, now: float, n: int) -> list[tuple[str, bytes]]:
        """The next n (topic, payload) pairs, round-robin over the fleet. Silent devices skip the
        minutes whose number is odd, so their keys go quiet, emit nothing and come back."""
        out = []
        if self._held and now % BUFFER_EVERY_S >= BUFFER_S:
            out, self._held = self._held, []  # the uplink is back: the buffer first, oldest first
        quiet = int(now // 60) % 2 == 1
        for _ in range(n):
            if self._rng.random() < self.malformed_share:
                out.append(("site/unknown/sensor/unknown", self._rng.choice(MALFORMED)))
                continue
            s = self.series[self._next]
            self._next = (self._next + 1) % len(self.series)
            if quiet and s.device in self._silent:
                continue
            s.seq += 1
            if self._rng.random() < self.lost_share:
                continue
            reading = {"d": s.device, "s": s.sensor, "v": self.value(s, now), "u": s.unit,
                       "n": s.seq}
            if not self.event_time:
                out.append((f"site/{s.device}/sensor/{s.sensor}", cbor2.dumps(reading)))
                continue
            reading["t"] = now + (SKEW_S if s.device in self.skewed else 0.0)
            message = (f"site/{s.device}/sensor/{s.sensor}", cbor2.dumps(reading))
            if s.device in self.buffering and now % BUFFER_EVERY_S < BUFFER_S:
                self._held.append(message)  # the uplink is down: kept for later
            else:
                out.append(message)
        return out

    def payloads(self, now: float, n: int) -> list[bytes]:
        return [payload for _topic, payload in self.messages(now, n)]
