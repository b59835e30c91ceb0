"""The plain-Python model of the window semantics: the test oracle for both engine twins.

It keeps every reading and recomputes each window from scratch with correctly rounded sums
(math.fsum, two-pass variance), so it shares nothing with the pane design it checks.
It is written straight from docs/windows.md:

- interval(ts) = floor(ts / emit_every); tick k (time k * emit_every) covers intervals
  [k - P, k - 1], P = window / emit_every;
- the clock starts at the first accepted reading's interval (or at tick(now)); a reading whose
  interval is below the last closed tick is `late`; a reading or tick(now) closes every tick
  up to its interval;
- at each tick: every live key with readings in the span emits, then keys with
  tick_time - last_ts >= key_ttl are evicted;
- a new key while max_keys are live is `key_limit`;
- quantiles (docs/windows.md, "Quantiles"): for each q chosen, the exact order statistics of
  ranks floor(q(n-1)) and ceil(q(n-1)) of the window's sorted values (|x| < 1e-9 taken as 0), as a
  `QuantileBounds`; `close_enough` holds the engine's value to the proven relative error.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

from telemetry_cy.engine.rules import AGGREGATE_FIELDS, quantile_name


class QuantileBounds(NamedTuple):
    """The exact order statistics x_lo <= x_hi a reported quantile must lie near."""

    q: float
    lo: float
    hi: float

    def admits(self, v: float, alpha: float) -> bool:
        """x_lo - alpha|x_lo| <= v <= x_hi + alpha|x_hi|, in exact rational arithmetic."""
        lo, hi, a, fv = Fraction(self.lo), Fraction(self.hi), Fraction(alpha), Fraction(v)
        return lo - a * abs(lo) <= fv <= hi + a * abs(hi)


def rank_quantile(values: list[float], q: float) -> QuantileBounds:
    """x_lo, x_hi: ranks floor(q(n-1)) and ceil(q(n-1)) (0-based, exact arithmetic on the double
    q) of the sorted values, |x| < 1e-9 taken as 0."""
    (bounds,) = rank_quantiles(values, (q,))
    return bounds


def rank_quantiles(values: list[float], qs) -> list[QuantileBounds]:
    """`rank_quantile` for each q in ``qs``, sorting the values once (a window of 10^5-10^6
    values: the sort is the oracle's cost)."""
    xs = sorted(0.0 if abs(v) < 1e-9 else v for v in values)
    out = []
    for q in qs:
        r = Fraction(q) * (len(xs) - 1)
        out.append(QuantileBounds(q, xs[math.floor(r)], xs[math.ceil(r)]))
    return out


class Model:
    def __init__(self, window=60.0, emit_every=5.0, max_keys=1_000_000, key_ttl=300.0,
                 quantiles=(), quantile_accuracy=0.01):
        self.quantiles = frozenset(float(q) for q in quantiles)
        self.quantile_accuracy = quantile_accuracy
        self.emit_every = float(emit_every)
        self.panes = round(window / emit_every)
        self.max_keys = max_keys
        self.key_ttl = float(key_ttl)
        self.readings: dict[tuple[str, str], list[tuple[float, int, float, str | None]]] = {}
        self.closed: int | None = None
        self.pending: list[dict] = []
        self.arrivals = 0
        self.drops = {"late": 0, "key_limit": 0}
        self.accepted = 0
        self.evicted = 0

    def interval(self, ts: float) -> int:
        return math.floor(ts / self.emit_every)

    def offer(self, device: str, sensor: str, value: float, ts: float, unit=None) -> str | None:
        """Offers one valid reading; returns the drop reason or None when accepted."""
        k = self.interval(ts)
        if self.closed is not None and k < self.closed:
            self.drops["late"] += 1
            return "late"
        self.advance(k)
        return self.store(device, sensor, ts, value, unit)

    def store(self, device: str, sensor: str, time: float, value: float, unit) -> str | None:
        """Keeps an accepted reading at its window time (arrival or event time); "key_limit"
        when its key is new and max_keys keys are live."""
        key = (device, sensor)
        if key not in self.readings:
            if len(self.readings) >= self.max_keys:
                self.drops["key_limit"] += 1
                return "key_limit"
            self.readings[key] = []
        self.arrivals += 1
        self.readings[key].append((float(time), self.arrivals, float(value), unit))
        self.accepted += 1
        return None

    def advance(self, k: int) -> None:
        if self.closed is None:
            self.closed = k
            return
        for tick in range(self.closed + 1, k + 1):
            self._close(tick)
        self.closed = max(self.closed, k)

    def tick(self, now: float) -> list[dict]:
        self.advance(self.interval(now))
        out, self.pending = self.pending, []
        return out

    def _close(self, tick: int) -> None:
        tick_time = tick * self.emit_every
        for (device, sensor), rows in self.readings.items():
            span = [r for r in rows if tick - self.panes <= self.interval(r[0]) <= tick - 1]
            if not span:
                continue
            values = [r[2] for r in span]
            first = min(span, key=lambda r: (r[0], r[1]))
            last = max(span, key=lambda r: (r[0], r[1]))
            mean = math.fsum(values) / len(values)
            computed = {
                "device": device,
                "sensor": sensor,
                "unit": last[3],
                "window_start": (tick - self.panes) * self.emit_every,
                "window_end": tick_time,
                "count": len(values),
                "sum": math.fsum(values),
                "mean": mean,
                "min": min(values),
                "max": max(values),
                "stddev": math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values)),
                "first": first[2],
                "last": last[2],
            }
            # The aggregate's fields are the engine's list, in its order: a field added there and
            # not computed here fails at once (KeyError) instead of going unchecked.
            agg = {name: computed[name] for name in AGGREGATE_FIELDS}
            agg["quantiles"] = {quantile_name(q): rank_quantile(values, q)
                                for q in sorted(self.quantiles)}
            agg["magnitude"] = math.fsum(abs(v) for v in values)
            agg["alpha"] = self.quantile_accuracy
            self.pending.append(agg)
        for key in [key for key, rows in self.readings.items()
                    if tick_time - max(r[0] for r in rows) >= self.key_ttl]:
            del self.readings[key]
            self.evicted += 1
        # readings older than every future window are no longer needed
        for rows in self.readings.values():
            kept = [r for r in rows if self.interval(r[0]) >= tick + 1 - self.panes]
            rows[:] = kept or [max(rows, key=lambda r: (r[0], r[1]))]


class EventModel(Model):
    """The model in event time (docs/windows.md, "Event time"), from the same rules:

    - a reading's time is its `t`, or its arrival when it has none (counted no_event_time);
      interval(t) = floor(t / emit_every);
    - t more than max_future ahead of its arrival: dropped `future`, and it moves nothing;
    - the watermark is max_t - allowed_lateness over every reading accepted so far (one, global);
      the closed tick is the largest k with k * emit_every <= watermark, and never more than
      D = ceil(allowed_lateness / emit_every) intervals behind floor(max_t / emit_every);
    - a reading whose interval is below the closed tick is `late`: in no aggregate, and routed;
    - tick(now): once max_t has not moved for idle_timeout of arrival time, the watermark moves on
      with `now` (max_t + (now - arrival of max_t - idle_timeout) - allowed_lateness);
    - first / last: earliest / latest by (t, arrival order); the unit is that of the key's latest
      reading by (t, arrival order).
    """

    def __init__(self, window=60.0, emit_every=5.0, max_keys=1_000_000, key_ttl=300.0,
                 allowed_lateness=0.0, idle_timeout=30.0, max_future=60.0, quantiles=(),
                 quantile_accuracy=0.01):
        super().__init__(window, emit_every, max_keys, key_ttl, quantiles, quantile_accuracy)
        self.lateness = float(allowed_lateness)
        self.idle_timeout = float(idle_timeout)
        self.max_future = float(max_future)
        self.lead = math.ceil(self.lateness / self.emit_every - 1e-9)
        self.max_t = -math.inf
        self.max_t_arrival = 0.0
        self.drops.update(future=0)
        self.no_event_time = 0
        self.late: list[tuple] = []

    def target(self, max_t: float) -> int:
        return max(math.floor((max_t - self.lateness) / self.emit_every),
                   math.floor(max_t / self.emit_every) - self.lead)

    def offer_event(self, device: str, sensor: str, value: float, arrival: float, unit=None,
                    t=None, n=None) -> str | None:
        """Offers one valid reading that arrived at `arrival`; returns the drop reason or None."""
        if t is None:
            t = arrival
            self.no_event_time += 1
        if t - arrival > self.max_future:
            self.drops["future"] += 1
            return "future"
        k = self.interval(t)
        if self.closed is not None and k < self.closed:
            self.drops["late"] += 1
            self.late.append((device, sensor, float(value), unit, float(t), n, float(arrival)))
            return "late"
        if t > self.max_t:
            self.max_t, self.max_t_arrival = t, arrival
        self.advance(self.target(self.max_t))
        return self.store(device, sensor, t, value, unit)

    def tick(self, now: float) -> list[dict]:
        if self.closed is not None:
            idle = now - self.max_t_arrival - self.idle_timeout
            if idle >= 0:
                self.advance(self.target(self.max_t + idle))
        out, self.pending = self.pending, []
        return out

    def _close(self, tick: int) -> None:
        # rows of intervals >= tick (still open) are kept out of the window, and the unit is the
        # key's latest reading's: computed before the base class prunes rows
        units = {key: max(rows, key=lambda r: (r[0], r[1]))[3]
                 for key, rows in self.readings.items()}
        before = len(self.pending)
        super()._close(tick)
        for agg in self.pending[before:]:
            agg["unit"] = units[(agg["device"], agg["sensor"])]

    def open_readings(self) -> int:
        """Accepted readings whose first window (the tick after their interval) is not closed."""
        if self.closed is None:
            return 0
        return sum(1 for rows in self.readings.values() for r in rows
                   if self.interval(r[0]) >= self.closed)


# The smallest subnormal double: below ~1e-154 a reading's square underflows into the subnormals,
# where each rounding of the sum of squared deviations may be off by half of this, absolutely.
_TINY = 2.0 ** -1074


def close_enough(got: dict, want: dict, magnitude: float, rel: float = 1e-9) -> list[str]:
    """Field names where `got` differs from the exact `want`: count, min, max, first, last and
    names exactly; sum, mean and stddev within `rel` of the data's magnitude (sum of |x| for the
    sum, max |x| for mean and stddev), which is what floating point can promise -- the stddev
    also within the square root of the subnormal rounding its squares may take (a few readings
    of ~1e-158 have squares below the normal range)."""
    bad = []
    per_reading = magnitude / want["count"]
    scale = {"sum": magnitude, "mean": per_reading,
             "stddev": per_reading + math.sqrt(4 * want["count"] * _TINY) / rel}
    # the quantiles: exactly the configured ones, by name and in order, each within its bound
    quantiles = {name: v for name, v in got.items() if name not in AGGREGATE_FIELDS}
    if list(quantiles) != list(want["quantiles"]):
        bad.append("quantile names")
    else:
        bad += [name for name, bounds in want["quantiles"].items()
                if not bounds.admits(quantiles[name], want["alpha"])]
    for name in AGGREGATE_FIELDS:
        if name in scale:
            if abs(got[name] - want[name]) > rel * max(scale[name], 1e-300):
                bad.append(name)
        elif got[name] != want[name]:
            bad.append(name)
    return bad


def event_windows(readings: list[tuple[float, float]], window: float,
                  every: float) -> dict[float, dict]:
    """Every window (by its end) that holds one of the (t, value) readings, recomputed from
    scratch: what a daemon in event time must publish for them (the end-to-end tests)."""
    out = {}
    ends = {math.floor(t / every) * every + every * k for t, _ in readings
            for k in range(1, round(window / every) + 1)}
    for end in ends:
        span = sorted((t, v) for t, v in readings if end - window <= t < end)
        values = [v for _, v in span]
        mean = math.fsum(values) / len(values)
        out[end] = dict(count=len(values), min=min(values), max=max(values), first=span[0][1],
                        last=span[-1][1], sum=math.fsum(values), mean=mean,
                        stddev=math.sqrt(math.fsum((v - mean) ** 2 for v in values)
                                         / len(values)),
                        window_start=end - window, magnitude=math.fsum(abs(v) for v in values))
    return out
