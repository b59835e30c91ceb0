"""Pure-Python twin of the compiled engine (``_engine.pyx`` over ``includes/tc_window.h``).

Same state layout (a ring of P panes per key), same arithmetic in the same order, so with
``-ffp-contract=off`` the two give bit-identical aggregates. It runs where no compiler is at hand
(``TELEMETRY_CY_PURE=1``) and serves as a readable statement of what the C code does.
"""

from __future__ import annotations

import itertools
import math
import struct
import sys
import time
import zlib
from dataclasses import field, make_dataclass
from typing import TYPE_CHECKING

from telemetry_cy.engine import snapshot_format as snap
from telemetry_cy.engine._decode_py import decode
from telemetry_cy.engine.column_buffers import ColumnBuilder, Columns, column_layout
from telemetry_cy.engine.decode_types import Reading
from telemetry_cy.engine.rules import (
    AGGREGATE_FIELDS,
    DEFAULT_ALLOWED_LATENESS,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LATE_CAPACITY,
    DEFAULT_MAX_FUTURE,
    DEFAULT_PARTIALS_MAX_BYTES,
    MAX_INTERVAL,
    NO_TOPIC,
    QUANTILE_ACCURACY_DEFAULT,
    SEQ_MAX_GAP,
    SEQ_MAX_REORDER,
    TOP_OFFENDERS,
    TOPN_CAPACITY,
    TOPN_NAME_BYTES,
    ClosedPanes,
    LateReading,
    aggregate_args,
    aggregate_field_type,
    check_config,
    check_event_config,
    check_partials,
    check_partitions,
    check_quantiles,
    check_reading,
    interval_of,
    present_fields,
    quantile_field,
    top_entries,
)
from telemetry_cy.engine.sketch_py import QuantileSketch
from telemetry_cy.engine.snapshot_errors import SnapshotError
from telemetry_cy.reasons import ENGINE_REASONS
from telemetry_cy.source._ring_py import PARK_KICKED


def _as_dict(self) -> dict:
    """The fields by name, then the quantiles the engine computes (p50, p99.9, ...)."""
    return present_fields(self)


def _getattr(self, name: str) -> float:
    return quantile_field(self, name)


def _post_init(self) -> None:
    if len(self.quantile_names) != len(self.quantile_values):
        raise ValueError("quantile_names and quantile_values differ in length")


# the statistics, then the quantiles (rules.QUANTILE_ATTRIBUTES), () unless given
_FIELD_SPECS = [(name, aggregate_field_type(name)) for name in AGGREGATE_FIELDS] + [
    ("quantile_names", tuple[str, ...], field(default=())),
    ("quantile_values", tuple[float, ...], field(default=())),
]


if TYPE_CHECKING:
    # the compiled class's stub declares the same fields (tests/test_aggregate_fields.py)
    from telemetry_cy.engine._engine import Aggregate
else:
    # Its fields are AGGREGATE_FIELDS, so the twin cannot drift from the compiled class; frozen
    # and slotted like the read-only cdef class.
    Aggregate = make_dataclass(
        "Aggregate", _FIELD_SPECS,
        namespace={"as_dict": _as_dict, "__getattr__": _getattr, "__post_init__": _post_init,
                   "__doc__": "One key's statistics over [window_start, window_end), emitted at "
                              "tick window_end."},
        frozen=True, slots=True)
    Aggregate.__module__ = __name__   # where pickle finds it


class TopN:
    """Space-saving summary of the heaviest names (twin of ``includes/tc_topn.h``): the same
    slots, the same takeover rule (the smallest count, lowest slot among equals), so it holds
    exactly what the C summary holds after any stream of updates."""

    capacity = TOPN_CAPACITY
    name_bytes = TOPN_NAME_BYTES

    def __init__(self) -> None:
        self._names: list[bytes] = []
        self._counts: list[int] = []
        self._errors: list[int] = []
        self._slot: dict[bytes, int] = {}
        self.total = 0

    def add(self, name: bytes, weight: int = 1) -> None:
        """Adds `weight` (a positive int) to `name`, cut to name_bytes."""
        if not isinstance(name, bytes):
            raise TypeError("name must be bytes")
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise TypeError("weight must be an int")
        if weight < 1:
            raise ValueError("weight must be positive")
        self._add(name[:_cut(name, self.name_bytes)], weight)

    def add_pair(self, a: bytes, b: bytes, weight: int = 1) -> None:
        """Adds `weight` to the name a + b"/" + b, cut to name_bytes."""
        self.add(a + b"/" + b, weight)

    def _add(self, name: bytes, w: int) -> None:
        self.total += w
        i = self._slot.get(name)
        if i is not None:
            self._counts[i] += w
            return
        if len(self._names) < self.capacity:
            self._slot[name] = len(self._names)
            self._names.append(name)
            self._counts.append(w)
            self._errors.append(0)
            return
        counts = self._counts
        m = 0
        for j in range(1, self.capacity):
            if counts[j] < counts[m]:
                m = j
        del self._slot[self._names[m]]
        self._slot[name] = m
        self._names[m] = name
        self._errors[m] = counts[m]
        counts[m] += w

    def entries(self) -> list[tuple[bytes, int, int]]:
        """Every slot in order: [(name bytes, count, error), ...]."""
        return list(zip(self._names, self._counts, self._errors))

    def top(self, k: int = TOP_OFFENDERS) -> list[tuple[str, int, int]]:
        """The k largest: [(name, count, error_bound), ...], by count then name."""
        return top_entries(self.entries(), k)


def _cut(p: bytes, budget: int) -> int:
    """tc_topn_cut: the budget, moved back (at most 3 bytes) to the start of a UTF-8 character."""
    if len(p) <= budget:
        return len(p)
    n = budget
    back = 0
    while back < 3 and n > 0 and p[n] & 0xC0 == 0x80:
        n -= 1
        back += 1
    return n


# classes of tc_key_seq (tc_window.h)
SEQ_FIRST, SEQ_NEXT, SEQ_GAP, SEQ_DUPLICATE, SEQ_REORDER, SEQ_RESTART = range(6)


def seq_step(last: int | None, n: int) -> tuple[int, int, int]:
    """tc_key_seq: (class, new baseline, numbers skipped) for sequence number n after `last`
    (None: no baseline yet)."""
    if last is None:
        return SEQ_FIRST, n, 0
    if n > last:
        skipped = n - last - 1
        if skipped == 0:
            return SEQ_NEXT, n, 0
        if skipped > SEQ_MAX_GAP:
            return SEQ_RESTART, n, 0
        return SEQ_GAP, n, skipped
    if n == last:
        return SEQ_DUPLICATE, last, 0
    if n <= 1 or last - n > SEQ_MAX_REORDER:
        return SEQ_RESTART, n, 0
    return SEQ_REORDER, last, 0


class _Pane:
    # first_ts, last, last_ts: event time only (the C record keeps them for open panes alone,
    # tc_window.h "event time"; the twin keeps them in every pane, with the same values)
    __slots__ = ("count", "sum", "m2", "min", "max", "first", "first_ts", "last", "last_ts")
    # set on a pane's first reading; read only while count > 0
    sum: float
    m2: float
    min: float
    max: float
    first: float
    first_ts: float
    last: float
    last_ts: float

    def __init__(self) -> None:
        self.count = 0


def _pane_put(p: _Pane, x: float) -> bool:
    """x into pane p's count, sum, m2, min and max (Welford, as tc_pane_put); True when p was
    empty (its first is x then). first and last by time are the caller's: their times live in
    the key for the newest pane and in the pane for an older open one."""
    if p.count == 0:
        p.count, p.sum, p.m2, p.min, p.max, p.first = 1, x, 0.0, x, x, x
        return True
    n = float(p.count)
    delta = x - p.sum / n
    p.sum += x
    p.count += 1
    p.m2 += delta * (x - p.sum / (n + 1.0))
    if x < p.min:
        p.min = x
    if x > p.max:
        p.max = x
    return False


class _Key:
    __slots__ = ("device", "sensor", "panes", "newest", "last", "last_ts", "newest_first_ts",
                 "unit", "seq", "sketches")

    def __init__(self, device: str, sensor: str, panes: int, alpha: float | None = None) -> None:
        self.device = device
        self.sensor = sensor
        self.panes = [_Pane() for _ in range(panes)]
        self.newest: int | None = None
        self.last = 0.0
        self.last_ts = -math.inf
        self.newest_first_ts = 0.0
        self.unit: str | None = None
        self.seq: int | None = None  # the sequence baseline (tc_key.last_seq / has_seq)
        # quantiles on: one sketch per pane (tc_window_qs.h keeps their counts in the record)
        self.sketches = None if alpha is None else [QuantileSketch(alpha) for _ in range(panes)]

    # ---- quantiles (tc_window_qs.h)

    def sketch_add(self, interval: int, x: float) -> bool:
        """tc_key_qs_add: x into the sketch of its pane, before add(); False when the pane
        already holds 2**32 - 1 values (the reading is then a sketch_full drop)."""
        sketches = self.sketches
        assert sketches is not None
        n_panes = len(sketches)
        if self.newest is None or interval > self.newest:
            start = interval if self.newest is None else self.newest + 1
            for j in range(max(start, interval - n_panes + 1), interval + 1):
                sketches[j % n_panes].clear()
        try:
            sketches[interval % n_panes].add(x)
        except ValueError:
            return False
        return True

    def window_sketch(self, tick: int, window_panes: int,
                      alpha: float) -> QuantileSketch | None:
        """tc_key_qs_window: the merge of the panes' sketches over [tick-P, tick-1] (in event
        time the open panes after tick-1 left out); None when it would hold more than
        2**32 - 1 values."""
        sketches = self.sketches
        assert sketches is not None and self.newest is not None
        n_panes = len(sketches)
        out = QuantileSketch(alpha)
        for j in range(max(tick - window_panes, self.newest - n_panes + 1),
                       min(self.newest, tick - 1) + 1):
            if sketches[j % n_panes].count:
                try:
                    out.merge(sketches[j % n_panes])
                except ValueError:
                    return None
        return out

    def add(self, interval: int, ts: float, x: float) -> None:
        n_panes = len(self.panes)
        if self.newest is None or interval > self.newest:
            start = interval if self.newest is None else self.newest + 1
            start = max(start, interval - n_panes + 1)
            for j in range(start, interval + 1):
                self.panes[j % n_panes].count = 0
            self.newest = interval
        p = self.panes[interval % n_panes]
        if _pane_put(p, x) or ts < self.newest_first_ts:
            p.first = x
            self.newest_first_ts = ts
        if ts >= self.last_ts:
            self.last = x
            self.last_ts = ts

    def add_event(self, ring: int, interval: int, t: float, x: float) -> None:
        """tc_key_add_event: `interval` may be below the newest (an open pane); `ring` = len(panes).
        """
        if self.newest is None or interval >= self.newest:
            self.add(interval, t, x)
            p = self.panes[interval % ring]
            if p.count == 1:
                p.first_ts, p.last, p.last_ts = t, x, t
            elif t >= p.last_ts:
                p.last, p.last_ts = x, t
            p.first_ts = self.newest_first_ts
            return
        p = self.panes[interval % ring]
        if _pane_put(p, x):
            p.first_ts, p.last, p.last_ts = t, x, t
            return
        if t < p.first_ts:
            p.first, p.first_ts = x, t
        if t >= p.last_ts:
            p.last, p.last_ts = x, t

    def aggregate_event(self, tick: int, window_panes: int):
        """tc_key_aggregate_event: (count, sum, m2, min, max, first, last) over intervals
        [tick-P, tick-1] (the open panes after tick-1 left out), or None."""
        ring = len(self.panes)
        if self.newest is None or self.newest < tick - window_panes:
            return None
        lo = max(tick - window_panes, self.newest - ring + 1)
        merged = self._merge(lo, min(tick - 1, self.newest))
        return None if merged is None else (*merged[:6], merged[6].last)

    def aggregate(self, tick: int):
        """(count, sum, m2, min, max, first) over intervals [tick-P, tick-1], or None."""
        n_panes = len(self.panes)
        if self.newest is None or self.newest < tick - n_panes:
            return None
        merged = self._merge(max(tick - n_panes, self.newest - n_panes + 1), self.newest)
        return None if merged is None else merged[:6]

    def _merge(self, lo: int, hi: int):
        """tc_merge_panes over intervals [lo, hi]: merge_panes of the ring's panes there."""
        ring = len(self.panes)
        return merge_panes(self.panes[j % ring] for j in range(lo, hi + 1))


def merge_panes(panes):
    """tc_merge_panes: (count, sum, m2, min, max, first, the newest non-empty pane) of panes
    given oldest first (Chan's update for m2; empty ones skipped), or None when they hold no
    reading. The engine's window and the merge worker's (pane_merge.py) are both this."""
    n = 0
    newest = None
    for p in panes:
        if p.count == 0:
            continue
        newest = p
        if n == 0:
            n, total, m2, mn, mx, first = p.count, p.sum, p.m2, p.min, p.max, p.first
            continue
        na, nb = float(n), float(p.count)
        delta = p.sum / nb - total / na
        m2 += p.m2 + delta * delta * (na * nb / (na + nb))
        total += p.sum
        n += p.count
        if p.min < mn:   # min()/max() without the calls: this runs per pane of every window
            mn = p.min
        if p.max > mx:
            mx = p.max
    if n == 0:
        return None
    return n, total, m2, mn, mx, first, newest


class Engine:
    """Exact sliding-window aggregates per (device, sensor) over CBOR payloads (pure Python)."""

    def __init__(self, window=60.0, emit_every=5.0, max_keys=1_000_000, key_ttl=300.0,
                 max_payload_bytes=65536, max_name_bytes=256, time="arrival",
                 allowed_lateness=DEFAULT_ALLOWED_LATENESS, idle_timeout=DEFAULT_IDLE_TIMEOUT,
                 max_future=DEFAULT_MAX_FUTURE, late_capacity=DEFAULT_LATE_CAPACITY,
                 quantiles=None, quantile_accuracy=QUANTILE_ACCURACY_DEFAULT, partials=False,
                 partials_max_bytes=DEFAULT_PARTIALS_MAX_BYTES):
        cfg = check_config(window, emit_every, max_keys, key_ttl, max_payload_bytes,
                           max_name_bytes)
        ev = check_event_config(time, allowed_lateness, idle_timeout, max_future, late_capacity,
                                cfg.emit_every, cfg.panes)
        qcfg = check_quantiles(quantiles, quantile_accuracy)
        # partial mode (tc_window_partials.h): the clock's closing hook fills _taken, up to
        # _taken_max bytes of records; a pane past that is counted in _lost
        self.partials, self._taken_max = check_partials(partials, partials_max_bytes, ev.event)
        self._taken: list[tuple[int, int, bytes, bytes, bytes]] = []
        self._taken_bytes = self._lost = 0
        self.quantiles = qcfg.qs
        self.quantile_accuracy = qcfg.accuracy
        self.quantile_names = qcfg.names
        self._alpha = qcfg.accuracy if qcfg.qs else None
        self.time = time
        self.allowed_lateness = ev.allowed_lateness
        self.idle_timeout = ev.idle_timeout
        self.max_future = ev.max_future
        self._event = ev.event
        self._lead = ev.lead if ev.event else 0
        self._late_capacity = ev.late_capacity
        self._late_out: list[LateReading] = []
        self._max_t = -math.inf
        self._max_t_arrival = 0.0
        self._no_event_time = self._late_unrouted = 0
        self.window = cfg.window
        self.emit_every = cfg.emit_every
        self.key_ttl = cfg.key_ttl
        self.max_keys = cfg.max_keys
        self.max_payload_bytes = cfg.max_payload_bytes
        self.max_name_bytes = cfg.max_name_bytes
        self._panes = cfg.panes
        self._keys: dict[tuple[str, str], _Key] = {}
        self._started = False
        self._closed = 0
        self._newest_data: int | None = None
        self._pending: list[Aggregate] = []
        # tick_columns: closed ticks go to _pending_columns instead of _pending (_emit_to)
        self._columns = False
        self._pending_columns = ColumnBuilder(column_layout(self.quantile_names))
        self._received = self._payloads = self._readings = 0
        self._evicted = self._ticks = self._aggregates = 0
        self._drops = dict.fromkeys(ENGINE_REASONS, 0)
        self._seq_events = [0] * 6
        self._seq_gaps = 0
        self._top_drops, self._top_gaps, self._top_late = TopN(), TopN(), TopN()

    # ---- readings ----

    def _accept(self, reading: Reading, ts: float, interval: int) -> bool:
        if self._started and interval < self._closed:
            self._drops["late"] += 1
            self._top_late.add_pair(_utf8(reading.device), _utf8(reading.sensor))
            return False
        self._advance(interval)
        key = self._take(reading, interval, ts)
        if key is None:
            return False
        key.add(interval, ts, reading.value)
        self._accepted(interval)
        return True

    def _take(self, reading: Reading, interval: int, time: float) -> _Key | None:
        """The reading's key with everything but the pane statistics updated (its sketch, unit,
        sequence), in either time mode; None when the reading is dropped instead (key_limit,
        sketch_full: counted)."""
        key = self._keys.get((reading.device, reading.sensor))
        if key is None:
            if len(self._keys) >= self.max_keys:
                self._drops["key_limit"] += 1
                self._top_drops.add_pair(_utf8(reading.device), _utf8(reading.sensor))
                return None
            key = self._keys[(reading.device, reading.sensor)] = _Key(
                reading.device, reading.sensor, self._panes + self._lead, self._alpha)
        # the sketch first, so that a refused value leaves the pane statistics alone
        if key.sketches is not None and not key.sketch_add(interval, reading.value):
            self._drops["sketch_full"] += 1
            self._top_drops.add_pair(_utf8(reading.device), _utf8(reading.sensor))
            return None
        if time >= key.last_ts:
            key.unit = reading.unit
        if reading.seq is not None:
            seq_class, key.seq, skipped = seq_step(key.seq, reading.seq)
            self._seq_events[seq_class] += 1
            if seq_class == SEQ_GAP:
                self._seq_gaps += skipped
                self._top_gaps.add_pair(_utf8(reading.device), _utf8(reading.sensor), skipped)
        return key

    def _accepted(self, interval: int) -> None:
        if self._newest_data is None or interval > self._newest_data:
            self._newest_data = interval
        self._readings += 1

    # ---- event time (docs/windows.md, "Event time"; _engine.pyx's event-time section) ----

    def _event_target(self, max_t: float) -> int:
        q = math.floor((max_t - self.allowed_lateness) / self.emit_every)
        q2 = math.floor(max_t / self.emit_every) - self._lead
        return max(q, q2, -int(MAX_INTERVAL))

    def _accept_event(self, reading: Reading, arrival: float) -> bool:
        t = reading.t
        if t is None:
            t = arrival
            self._no_event_time += 1
        if t - arrival > self.max_future:
            self._drops["future"] += 1
            self._top_drops.add_pair(_utf8(reading.device), _utf8(reading.sensor))
            return False
        q = math.floor(t / self.emit_every)
        if abs(q) > MAX_INTERVAL:
            self._drops["schema_mismatch"] += 1
            self._top_drops.add_pair(_utf8(reading.device), _utf8(reading.sensor))
            return False
        if self._started and q < self._closed:
            self._drops["late"] += 1
            self._top_late.add_pair(_utf8(reading.device), _utf8(reading.sensor))
            if self._late_capacity > 0:
                if len(self._late_out) < self._late_capacity:
                    self._late_out.append(LateReading(
                        reading.device, reading.sensor, reading.value, reading.unit, t,
                        reading.seq, arrival))
                else:
                    self._late_unrouted += 1
            return False
        if t > self._max_t:
            self._max_t, self._max_t_arrival = t, arrival
        target = self._event_target(self._max_t)
        if not self._started or target > self._closed:
            self._advance(target)
        key = self._take(reading, q, t)
        if key is None:
            return False
        key.add_event(len(key.panes), q, t, reading.value)
        self._accepted(q)
        return True

    def _event_tick(self, now: float) -> None:
        if not self._started:
            return
        idle = now - self._max_t_arrival - self.idle_timeout
        if idle >= 0.0:
            target = self._event_target(self._max_t + idle)
            if target > self._closed:
                self._advance(target)

    def _push_one(self, payload, ts: float, interval: int, topic: bytes = NO_TOPIC) -> int:
        self._received += 1
        if len(payload) > self.max_payload_bytes:
            self._drops["oversize"] += 1
            self._top_drops.add(topic)
            return 0
        decoded = decode(payload, self.max_name_bytes)
        if decoded.status != "ok":
            self._drops["decode_error"] += 1
            self._top_drops.add(topic)
            return 0
        self._payloads += 1
        if decoded.schema_mismatch or decoded.non_finite:
            self._drops["schema_mismatch"] += decoded.schema_mismatch
            self._drops["non_finite"] += decoded.non_finite
            self._top_drops.add(topic, decoded.schema_mismatch + decoded.non_finite)
        if self._event:
            return sum(self._accept_event(r, ts) for r in decoded.readings)
        return sum(self._accept(r, ts, interval) for r in decoded.readings)

    # ---- clock ----

    def _advance(self, interval: int) -> None:
        if not self._started:
            self._started = True
            self._closed = interval
            return
        if interval <= self._closed:
            return
        if self.partials:
            # before the scan (which may evict a key) and before the reading that moved the
            # clock (which may reuse a closed pane's slot), as the compiled engine does
            self._take_closing(self._closed, interval)
        tick = self._closed + 1
        if self._newest_data is None:
            last_emitting = tick - 1
        else:
            last_emitting = min(interval, self._newest_data + self._panes)
        while tick <= last_emitting:
            self._scan(tick, emit=True)
            tick += 1
        if tick <= interval:
            self._scan(interval, emit=False)
        self._ticks += interval - self._closed
        self._closed = interval

    def _take_closing(self, lo: int, hi: int) -> None:
        """tc_pp_take_key for every key: its panes of [lo, hi) holding data, as pane records."""
        for key in self._keys.values():
            if key.newest is None or key.newest < lo:
                continue
            ring = len(key.panes)
            dev, sen = _utf8(key.device), _utf8(key.sensor)
            for j in range(max(lo, key.newest - ring + 1), min(hi, key.newest + 1)):
                p = key.panes[j % ring]
                if not p.count:
                    continue
                sketch = None if key.sketches is None else key.sketches[j % ring]
                rec = pane_record(dev, sen, key.unit, p.count, p.sum, p.m2, p.min, p.max,
                                  p.first, p.first_ts, p.last, p.last_ts, sketch)
                if len(rec) > self._taken_max - self._taken_bytes:
                    self._lost += 1
                    continue
                self._taken_bytes += len(rec)
                self._taken.append((j, zlib.crc32(dev + b"\0" + sen), dev, sen, rec))

    def _scan(self, tick: int, emit: bool) -> None:
        tick_time = float(tick) * self.emit_every
        window_start = float(tick - self._panes) * self.emit_every
        evict = []
        for name, key in self._keys.items():
            if emit:
                agg = (key.aggregate_event(tick, self._panes) if self._event
                       else key.aggregate(tick))
                if agg is not None:
                    n, total, m2, mn, mx, first = agg[:6]
                    last = agg[6] if self._event else key.last
                    row = (key.device, key.sensor, key.unit, window_start, tick_time, n, total,
                           total / float(n), mn, mx, math.sqrt(m2 / float(n)), first, last)
                    qv = self._quantile_values(key, tick) if self._alpha is not None else ()
                    if self._columns:
                        self._pending_columns.append(row + qv)
                    else:
                        self._pending.append(Aggregate(*row, self.quantile_names, qv))
                    self._aggregates += 1
            if tick_time - key.last_ts >= self.key_ttl:
                evict.append(name)
        for name in evict:
            del self._keys[name]
        self._evicted += len(evict)

    def _quantile_values(self, key: _Key, tick: int) -> tuple[float, ...]:
        """The quantiles the engine computes (self.quantiles, named self.quantile_names) of the
        key's window, for both outputs: NaN past the sketch's 2**32 - 1 values."""
        assert self._alpha is not None
        window = key.window_sketch(tick, self._panes, self._alpha)
        if window is None:
            return (math.nan,) * len(self.quantiles)
        return tuple(window.quantile(q) for q in self.quantiles)

    # ---- public API ----

    def push(self, payload, ts: float) -> int:
        """Decodes one CBOR payload that arrived at `ts`; returns the readings accepted."""
        return self.push_many((payload,), ts)

    def push_many(self, payloads, ts: float) -> int:
        """Decodes a batch of payloads taken at one clock reading; returns readings accepted."""
        interval = interval_of(ts, self.emit_every)
        ts = float(ts)
        items = [_as_bytes(p) for p in payloads]
        return sum(self._push_one(p, ts, interval) for p in items)

    def drain(self, ring, max_records: int = 4096) -> int:
        """Consumes up to max_records records from the ingest ring (this thread must be the
        ring's only consumer) and processes their payloads, each at its own arrival ts.
        Returns the number of records consumed."""
        records = ring.pop_many(max_records)
        for ts, topic, payload in records:
            self._push_one(payload, ts, interval_of(ts, self.emit_every), topic)
        return len(records)

    def run_ring(self, ring, seconds: float, batch_records: int = 8192,
                 lend: bool = True) -> bool:
        """The engine thread between two of its Python turns: drains the ring in batches of
        batch_records and, after a short batch, parks on the ring's doorbell, until `seconds`
        have passed (monotonic clock; one drain always happens) or the ring is woken
        (ByteRing.wake). Returns True when woken (its parks count in ring.parks).

        ``lend`` is the compiled engine's (lent to the compiled reader's pump while parked,
        includes/tc_park.h); this twin is never lent: a Python engine cannot be run by the
        network thread without the GIL, and the pure ring wakes its consumer on every push."""
        return run_ring_loop(self.drain, ring, seconds, batch_records)

    def push_reading(self, device: str, sensor: str, value, ts: float, unit=None,
                     seq=None, t=None) -> None:
        """Adds one reading given as Python values (`seq`: the payload's optional `n`, `t` its
        event time), arrived at `ts`. Bad values are counted drops like bad payloads
        (schema_mismatch, non_finite); wrong argument types raise TypeError."""
        interval = interval_of(ts, self.emit_every)
        reading_or_reason = check_reading(device, sensor, value, unit, self.max_name_bytes, seq,
                                          t)
        if isinstance(reading_or_reason, str):
            self._drops[reading_or_reason] += 1
            self._top_drops.add(NO_TOPIC)
            return
        if self._event:
            self._accept_event(reading_or_reason, float(ts))
            return
        self._accept(reading_or_reason, float(ts), interval)

    def tick(self, now: float) -> list[Aggregate]:
        """Closes every aligned tick <= now and returns the aggregates of all ticks closed since
        the last call, oldest tick first."""
        self._close_to(now, columns=False)
        out, self._pending = self._pending, []
        return out

    def tick_columns(self, now: float) -> Columns:
        """``tick(now)`` with the aggregates as columns (``column_buffers.Columns``): the same
        rows in the same order, without an object per aggregate."""
        self._close_to(now, columns=True)
        return self._pending_columns.take()

    def _close_to(self, now: float, columns: bool) -> None:
        """What tick and tick_columns share: every tick <= now closed into the chosen output."""
        interval = interval_of(now, self.emit_every)
        self._emit_to(columns)
        if self._event:
            self._event_tick(float(now))
        elif not self._started or interval > self._closed:
            self._advance(interval)

    def _emit_to(self, columns: bool) -> None:
        """Closed ticks go to the output of the last tick call. Ticks closed by data since then
        are older than any the coming call closes: moved over first, in order."""
        if columns == self._columns:
            return
        if columns:
            for a in self._pending:
                d = a.as_dict()
                self._pending_columns.append(
                    tuple(d[name] for name, _, _ in self._pending_columns.layout))
            self._pending = []
        else:
            self._pending = [Aggregate(*aggregate_args(d))
                             for d in self._pending_columns.take().to_dicts()]
        self._columns = columns

    def open_readings(self) -> int:
        """Readings accepted in the interval no tick has closed yet: they are in no aggregate
        returned so far (docs/windows.md, "Stopping"). O(live keys)."""
        if not self._started:
            return 0
        if self._event:
            return sum(key.panes[j % len(key.panes)].count for key in self._keys.values()
                       if key.newest is not None
                       for j in range(self._closed, key.newest + 1))
        n_panes = self._panes
        return sum(key.panes[self._closed % n_panes].count for key in self._keys.values()
                   if key.newest == self._closed)

    def take_closed_panes(self, partitions: int) -> ClosedPanes:
        """The panes the clock closed since the last call (partial mode), as a ClosedPanes:
        per (interval, partition), ascending, the n pane records of the partial format, keys in
        (device, sensor) order; and the panes lost to a full buffer (tc_window_partials.h)."""
        if not self.partials:
            raise ValueError("take_closed_panes needs an engine made with partials=True")
        parts = check_partitions(partitions)
        # tc_pp_order's order; (interval, device, sensor) is unique: a key's pane closes once
        taken = sorted((j, crc % parts, crc, dev, sen, rec)
                       for j, crc, dev, sen, rec in self._taken)
        groups = []
        for (j, part), items in itertools.groupby(taken, key=lambda x: (x[0], x[1])):
            recs = [x[5] for x in items]
            groups.append((j, part, len(recs), b"".join(recs)))
        lost = self._lost
        self._taken, self._taken_bytes, self._lost = [], 0, 0
        return ClosedPanes(self._closed if self._started else None, groups, lost)

    def take_late(self) -> list[LateReading]:
        """The late readings kept since the last call (event time with late_capacity > 0),
        oldest first. At most late_capacity are kept between two calls; the rest are still
        counted `late`, and `late_unrouted` in stats()["event_time"]."""
        out, self._late_out = self._late_out, []
        return out

    def stats(self) -> dict:
        # partial mode's buffer is window state too (tc_pp_bytes; 0 outside partial mode, where
        # the compiled buffer never allocates)
        taken = _buffer_size(self._taken) if self.partials else 0
        return {
            "received": self._received,
            "payloads": self._payloads,
            "readings": self._readings,
            "drops": dict(self._drops),
            "live_keys": len(self._keys),
            "evicted": self._evicted,
            "state_bytes": _state_bytes(self._keys) + taken,
            "partial_buffer_bytes": taken,
            "ticks": self._ticks,
            "aggregates": self._aggregates,
            "pending": len(self._pending) + len(self._pending_columns),
            "closed_tick": self._closed * self.emit_every if self._started else None,
            "event_time": {
                "no_event_time": self._no_event_time,
                "late_unrouted": self._late_unrouted,
                "watermark": (self._max_t - self.allowed_lateness
                              if self._event and self._started else None),
            },
            "seq": {
                "gaps": self._seq_gaps,
                "duplicates": self._seq_events[SEQ_DUPLICATE],
                "reorders": self._seq_events[SEQ_REORDER],
                "restarts": self._seq_events[SEQ_RESTART],
            },
            "offenders": {
                "drops": self._top_drops.top(TOP_OFFENDERS),
                "gaps": self._top_gaps.top(TOP_OFFENDERS),
                "late": self._top_late.top(TOP_OFFENDERS),
            },
        }

    # ---- snapshots (docs/state.md; the keys section is _snapshot_keys / _restore_keys) ----

    def _snapshot_settings(self) -> snap.Settings:
        return snap.Settings(
            self.window, self.emit_every, self._panes, self._event, self._lead,
            self.allowed_lateness if self._event else 0.0,
            *snap.quantile_settings(self.quantiles, self.quantile_accuracy), self.max_keys,
            self.key_ttl, self.idle_timeout, self.max_future, self._late_capacity,
            self.max_name_bytes, self.max_payload_bytes)

    def _snapshot_state(self) -> snap.EngineState:
        return snap.EngineState(
            self._started, self._closed,
            snap.NO_INTERVAL if self._newest_data is None else self._newest_data,
            self._max_t, self._max_t_arrival,
            (self._received, self._payloads, self._readings, self._evicted, self._ticks,
             self._aggregates),
            tuple(self._seq_events), self._seq_gaps, self._no_event_time, self._late_unrouted,
            dict(self._drops),
            tuple((t.total, t.entries()) for t in (self._top_drops, self._top_gaps,
                                                   self._top_late)),
            snap.pending_of(self._pending), list(self._late_out))

    def snapshot(self) -> bytes:
        """The engine's whole state as bytes (docs/state.md): restore it with from_snapshot."""
        n, keys = _snapshot_keys(self)
        return snap.assemble(self._snapshot_settings(), self._snapshot_state(), n, keys)

    @classmethod
    def from_snapshot(cls, data, **settings) -> Engine:
        """An engine built with `settings` (Engine's keyword arguments) holding the state of a
        snapshot. Raises SnapshotError (a ValueError) naming the reason when the bytes are not
        a sound snapshot or were made with other window, emit_every, time or quantile
        settings. With a smaller max_keys the most recently seen keys are kept; the others are
        counted as evicted."""
        engine = cls(**settings)
        opened = snap.open_snapshot(data)
        snap.check_settings(opened.settings, engine._snapshot_settings())
        engine._restore_state(opened.state)
        _restore_keys(engine, memoryview(data).cast("B")[opened.keys_start:opened.keys_end],
                      opened.n_keys)
        return engine

    def _restore_state(self, st: snap.EngineState) -> None:
        self._started, self._closed = st.started, st.closed
        self._newest_data = None if st.newest_data == snap.NO_INTERVAL else st.newest_data
        self._max_t, self._max_t_arrival = st.max_t, st.max_t_arrival
        (self._received, self._payloads, self._readings, self._evicted, self._ticks,
         self._aggregates) = st.counters
        self._seq_events = list(st.seq_events)
        self._seq_gaps, self._no_event_time = st.seq_gaps, st.no_event_time
        for name, count in st.drops.items():
            if name not in self._drops:
                raise SnapshotError("malformed", f"unknown drop reason {name!r}")
            self._drops[name] = count
        for summary, (total, entries) in zip((self._top_drops, self._top_gaps, self._top_late),
                                             st.offenders):
            _restore_topn(summary, total, entries)
        self._pending = [Aggregate(**agg, quantile_names=self.quantile_names if qv else (),
                                   quantile_values=qv) for agg, qv in st.pending]
        self._late_out, self._late_unrouted = snap.late_kept(st, self._late_capacity)


def _utf8(name: str) -> bytes:
    return name.encode("utf-8")


def _as_bytes(payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes-like, not {type(payload).__name__}")


def _state_bytes(keys: dict) -> int:
    # Python objects: an estimate of what the twin holds, not comparable with the C figure
    total = sys.getsizeof(keys)
    for key in keys.values():
        total += sys.getsizeof(key) + sum(sys.getsizeof(p) for p in key.panes)
        if key.sketches is not None:
            total += sum(sys.getsizeof(sk) + 8 * len(sk.buckets()[2]) + 8 * len(sk.buckets()[4])
                         for sk in key.sketches)
    return total


def _buffer_size(taken: list) -> int:
    # tc_pp_bytes's twin, in Python objects as _state_bytes: the list, its tuples and what they
    # hold, each object once (a key's device and sensor bytes are shared by the panes taken
    # from it in one pass)
    objs = {id(x): x for item in taken for x in (item, *item)}
    return sys.getsizeof(taken) + sum(sys.getsizeof(x) for x in objs.values())


# ---- the keys section of a snapshot (docs/state.md; twin of includes/tc_snapshot.h) ----------

KEY_HEAD = struct.Struct("<HHHHBQqddd")  # lengths, n_panes, flags | seq, newest, last, last_ts, ...
PANE = struct.Struct("<HIddddd")         # age (newest - interval), count, sum, m2, min, max, first
OPEN_PANE = struct.Struct("<ddd")        # first_ts, last, last_ts of an open pane below the newest
SKETCH = struct.Struct("<iiHHI")         # pos_min, neg_min, pos_len, neg_len, n; then the counts
PANE_KEY = struct.Struct("<HHHB")        # a partial's key: device, sensor, unit lengths, has unit
_SKETCH_BYTES_HEAD = struct.Struct("<4sBBHdI")  # sketch_py's byte layout up to the zero count
F64 = struct.Struct("<d")
KEY_HAS_UNIT, KEY_HAS_SEQ = 1, 2


def _topn_check(total: int, entries) -> None:
    if len(entries) > TopN.capacity:
        raise SnapshotError("malformed", f"{len(entries)} offender slots, at most {TopN.capacity}")
    names = set()
    for name, count, _error in entries:
        if len(name) > TopN.name_bytes or name in names:
            raise SnapshotError("malformed", "an offender name is too long or repeated")
        names.add(name)


def _restore_topn(t: TopN, total: int, entries) -> None:
    _topn_check(total, entries)
    t.total = total
    t._names = [e[0] for e in entries]
    t._counts = [e[1] for e in entries]
    t._errors = [e[2] for e in entries]
    t._slot = {name: i for i, name in enumerate(t._names)}


def _frozen_last(key: _Key, ring: int, closed: int) -> float:
    """tc_key_frozen_last as the snapshot holds it: the last of the newest non-empty pane the
    clock has closed (the one a window without its own pane tick-1 reports), 0.0 when no stored
    pane is closed."""
    if key.newest is None:
        return 0.0
    for j in range(min(closed - 1, key.newest), key.newest - ring, -1):
        p = key.panes[j % ring]
        if p.count:
            return p.last
    return 0.0


def _snapshot_keys(engine: Engine) -> tuple[int, bytes]:
    out: list[bytes] = []
    ring = engine._panes + engine._lead
    event, lead, closed = engine._event, engine._lead, engine._closed
    for key in engine._keys.values():
        dev, sen = _utf8(key.device), _utf8(key.sensor)
        unit = b"" if key.unit is None else _utf8(key.unit)
        panes: list[bytes] = []
        n_panes = 0
        if key.newest is not None:
            for j in range(key.newest - ring + 1, key.newest + 1):
                p = key.panes[j % ring]
                if p.count:
                    n_panes += 1
                    panes.append(PANE.pack(key.newest - j, p.count, p.sum, p.m2, p.min, p.max,
                                           p.first))
                    if event and closed <= j < key.newest:
                        panes.append(OPEN_PANE.pack(p.first_ts, p.last, p.last_ts))
                    if key.sketches is not None:
                        panes.append(_sketch_block(key.sketches[j % ring], p.count))
        flags = (KEY_HAS_UNIT if key.unit is not None else 0) | \
            (KEY_HAS_SEQ if key.seq is not None else 0)
        out.append(KEY_HEAD.pack(
            len(dev), len(sen), len(unit), n_panes,
            flags, key.seq or 0, snap.NO_INTERVAL if key.newest is None else key.newest,
            key.last, key.last_ts, key.newest_first_ts))
        if event and lead > 0:
            out.append(F64.pack(_frozen_last(key, ring, closed)))
        out += [dev, sen, unit]
        out += panes
    return len(engine._keys), b"".join(out)


def _sketch_block(sketch: QuantileSketch, count: int) -> bytes:
    # sketch_py's byte layout holds the shape at 20..32 in the snapshot's order, counts from 32
    raw = sketch.to_bytes()
    return raw[20:32] + struct.pack("<I", count) + raw[32:]


def pane_record(device: bytes, sensor: bytes, unit: str | None, count: int, total: float,
                m2: float, mn: float, mx: float, first: float, first_ts: float, last: float,
                last_ts: float, sketch: QuantileSketch | None) -> bytes:
    """One key's pane in the partial format (docs/scale-out.md): the key, then the snapshot's
    pane entry with age 0, its times, and its sketch block when given. The one writer of it in
    Python: the twin's closing hook and partial_format.write (tc_window_partials.h in C)."""
    u = b"" if unit is None else _utf8(unit)
    out = (PANE_KEY.pack(len(device), len(sensor), len(u), unit is not None) + device + sensor
           + u + PANE.pack(0, count, total, m2, mn, mx, first)
           + OPEN_PANE.pack(first_ts, last, last_ts))
    return out if sketch is None else out + _sketch_block(sketch, count)


def _read_sketch(view: memoryview, pos: int, end: int, count: int,
                 alpha: float) -> tuple[QuantileSketch, int]:
    """The sketch block at pos (checked as tc_snapshot.h checks it), and the position after it."""
    if end - pos < SKETCH.size:
        raise _bad("a sketch runs past the keys section")
    pos_min, neg_min, pos_len, neg_len, n = SKETCH.unpack_from(view, pos)
    nb = pos_len + neg_len
    start = pos + SKETCH.size
    if pos_len > 1024 or neg_len > 1024 or end - start < 4 * nb:
        raise _bad("a sketch's stores are too long")
    counts = bytes(view[start:start + 4 * nb])
    total = sum(struct.unpack(f"<{nb}I", counts))
    blob = (_SKETCH_BYTES_HEAD.pack(b"TCQS", 1, 0, 0, alpha, max(n - total, 0))
            + bytes(view[pos:pos + 12]) + counts)
    try:
        sketch = QuantileSketch.from_bytes(blob, alpha)
    except ValueError:
        raise _bad("a sketch store is outside the mapping or not tight") from None
    if n != count or total > n:
        raise _bad("a sketch does not hold its pane's readings")
    return sketch, start + 4 * nb


def _pane_sound(stats) -> bool:
    """tc_snap_pane_sound: sum, m2, min, max, first finite, m2 >= 0, min <= first <= max."""
    total, m2, mn, mx, first = stats
    return all(map(math.isfinite, stats)) and m2 >= 0.0 and mn <= first <= mx


def _bad(what: str) -> SnapshotError:
    return SnapshotError("malformed", what)


def _name(view: memoryview, pos: int, n: int, what: str) -> str:
    try:
        return bytes(view[pos:pos + n]).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"a key's {what} is not UTF-8") from None


def _restore_keys(engine: Engine, view: memoryview, n_keys: int) -> None:
    """Reads the keys section into the engine (pass 1: every record checked, as tc_snap_scan
    does; pass 2: the keys that fit max_keys built, in file order)."""
    ring = engine._panes + engine._lead
    event, lead, closed = engine._event, engine._lead, engine._closed
    alpha = engine._alpha
    records = []
    pos, end = 0, len(view)
    for _ in range(n_keys):
        if end - pos < KEY_HEAD.size:
            raise _bad("a key record runs past the keys section")
        dlen, slen, ulen, n_panes, flags, seq, newest, last, last_ts, nfts = \
            KEY_HEAD.unpack_from(view, pos)
        pos += KEY_HEAD.size
        frozen = 0.0
        if event and lead > 0:
            if end - pos < F64.size:
                raise _bad("a key record runs past the keys section")
            frozen = F64.unpack_from(view, pos)[0]
            pos += F64.size
        if flags & ~(KEY_HAS_UNIT | KEY_HAS_SEQ) or (ulen and not flags & KEY_HAS_UNIT):
            raise _bad(f"key flags {flags:#x} with unit length {ulen}")
        if n_panes > ring:
            raise _bad(f"{n_panes} panes in a ring of {ring}")
        if newest == snap.NO_INTERVAL:
            if n_panes:
                raise _bad("panes in a key without data")
        elif abs(newest) > MAX_INTERVAL or (engine._started and newest > closed + lead):
            raise _bad(f"a key's newest interval {newest} is out of range")
        if n_panes and not all(map(math.isfinite, (last, last_ts, nfts, frozen))):
            raise _bad("a key's times or last value are not finite")
        if end - pos < dlen + slen + ulen:
            raise _bad("a key's names run past the keys section")
        device = _name(view, pos, dlen, "device")
        sensor = _name(view, pos + dlen, slen, "sensor")
        unit = _name(view, pos + dlen + slen, ulen, "unit") if flags & KEY_HAS_UNIT else None
        pos += dlen + slen + ulen
        panes = []
        prev_age = ring
        for _ in range(n_panes):
            if end - pos < PANE.size:
                raise _bad("a pane runs past the keys section")
            age, count, *stats = PANE.unpack_from(view, pos)
            pos += PANE.size
            if age >= prev_age or count == 0:
                raise _bad("pane ages out of order or an empty pane")
            if not _pane_sound(stats):
                raise _bad("a pane's statistics are not finite or not ordered")
            prev_age = age
            j = newest - age
            times = None
            if event and closed <= j < newest:
                if end - pos < OPEN_PANE.size:
                    raise _bad("a pane runs past the keys section")
                times = OPEN_PANE.unpack_from(view, pos)
                pos += OPEN_PANE.size
                if not all(map(math.isfinite, times)):
                    raise _bad("an open pane's times are not finite")
            sketch = None
            if alpha is not None:
                sketch, pos = _read_sketch(view, pos, end, count, alpha)
            panes.append((j, count, stats, times, sketch))
        records.append((device, sensor, unit, seq if flags & KEY_HAS_SEQ else None,
                        None if newest == snap.NO_INTERVAL else newest, last, last_ts, nfts,
                        frozen, panes))
    if pos != end:
        raise _bad(f"{end - pos} bytes after the last key record")
    keep = snap.keep_mask([r[6] for r in records], engine.max_keys)
    for i, (device, sensor, unit, seq, newest, last, last_ts, nfts, frozen, panes) in \
            enumerate(records):
        if keep is not None and not keep[i]:
            engine._evicted += 1
            continue
        key = _Key(device, sensor, ring, alpha)
        key.unit, key.seq, key.newest = unit, seq, newest
        key.last, key.last_ts, key.newest_first_ts = last, last_ts, nfts
        for j, count, (total, m2, mn, mx, first), times, sketch in panes:
            if key.sketches is not None and sketch is not None:
                key.sketches[j % ring] = sketch
            p = key.panes[j % ring]
            p.count, p.sum, p.m2, p.min, p.max, p.first = count, total, m2, mn, mx, first
            if not event:
                continue
            if times is not None:
                p.first_ts, p.last, p.last_ts = times
            elif j == newest:
                p.first_ts, p.last, p.last_ts = nfts, last, last_ts
            else:  # closed: only the newest such pane's last is ever read (aggregate_event)
                p.first_ts, p.last, p.last_ts = 0.0, frozen if lead > 0 else last, 0.0
        if (device, sensor) in engine._keys:  # checked as tc_snap_build does: among kept keys
            raise _bad("a key appears twice")
        engine._keys[(device, sensor)] = key


def run_ring_loop(drain, ring, seconds: float, batch_records: int) -> bool:
    """Engine.run_ring of the twin, over any ``drain(ring, max_records) -> int`` (the latency
    probe of perf/ reuses it). The compiled loop is the same, in C between its drains."""
    deadline = time.monotonic() + max(seconds, 0.0)
    while True:
        n = drain(ring, batch_records)
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if n >= batch_records:
            continue   # busy: a kick waits for the next park (at most one batch away)
        if ring.park(left) == PARK_KICKED:
            return True
