"""The merge side of scale-out (docs/scale-out.md), pure Python: partials of several instances in,
the aggregates one instance fed every reading would give out.

``PaneMerger`` keeps, per key, the merged pane of each interval (count, sum, m2 by Chan's
pairwise update, min, max, first/last by their times, the sketch) and, per instance, its
progress. Window T (intervals [T-P, T-1]) is final once every live instance's progress is at
least T; it is then built from the merged panes exactly as the engine builds a window from its
pane ring (``_engine_py._Key._merge``: oldest pane first, Chan's update, first of the oldest
non-empty pane, last of the newest), so count, min, max, first, last and quantiles equal the
single engine's, sum and m2 up to the order of float additions.

Membership: an instance is live from its first message until it leaves (a ``leave`` message:
everything it held has been sent) or is silent for ``instance_timeout`` seconds (it died: what
it held in open panes is lost). A death makes every window that spans an interval from its last
progress up to the frontier of the others at that moment, plus the lead, unpublishable: those
(key, window) pairs are counted ``incomplete`` and never emitted.

Gaps: a message missing from an instance's sequence on a partition (dropped by its emitter's
backlog, or panes its engine could not keep, sent as a skipped number) may have held panes of
any key of the partition, of an interval from the instance's progress before the gap up to the
first progress it sends after (``heartbeat`` and ``leave`` carry one too): every pane below a
progress was sent before it. Those intervals are lost as a death's are (the same ``_lost``
ranges), and the instance holds the windows back at its progress before the gap until that
progress comes, so no window spanning them goes out short.

``sketch_py.QuantileSketch`` is the sketch of both sides here: the compiled engine writes the
same bytes (docs/quantiles.md), so a merge worker reads either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from telemetry_cy.engine._engine_py import merge_panes
from telemetry_cy.engine.partial_format import (
    KIND_HEARTBEAT,
    KIND_LEAVE,
    KIND_PANES,
    KIND_PROGRESS,
    NO_DATA,
    PanePartial,
    Partial,
    PartialError,
    WindowSettings,
    check_settings,
)
from telemetry_cy.engine.rules import quantile_name
from telemetry_cy.engine.sketch_py import QuantileSketch


class _Merged:
    """One key's pane of one interval, merged over instances."""

    __slots__ = ("count", "sum", "m2", "min", "max", "first", "first_ts", "last", "last_ts",
                 "unit", "unit_ts", "sketch")

    def __init__(self, p: PanePartial) -> None:
        self.count, self.sum, self.m2 = p.count, p.sum, p.m2
        self.min, self.max = p.min, p.max
        self.first, self.first_ts, self.last, self.last_ts = p.first, p.first_ts, p.last, \
            p.last_ts
        # the unit of the key's latest reading by time, as the engine keeps it
        self.unit, self.unit_ts = p.unit, p.last_ts
        self.sketch = None if p.sketch is None else p.sketch.copy()

    def add(self, p: PanePartial) -> None:
        na, nb = float(self.count), float(p.count)
        delta = p.sum / nb - self.sum / na
        self.m2 += p.m2 + delta * delta * (na * nb / (na + nb))
        self.sum += p.sum
        self.count += p.count
        # min()/max() as comparisons (the same result, NaN included: min(a, b) is b only if
        # b < a), without two builtin calls a pane: the merge worker's hot path
        if p.min < self.min:
            self.min = p.min
        if p.max > self.max:
            self.max = p.max
        if p.first_ts < self.first_ts:
            self.first, self.first_ts = p.first, p.first_ts
        if p.last_ts >= self.last_ts:
            self.last, self.last_ts = p.last, p.last_ts
            self.unit, self.unit_ts = p.unit, p.last_ts
        if self.sketch is not None and p.sketch is not None:
            self.sketch.merge(p.sketch)


@dataclass
class _Instance:
    progress: int            # every pane below this interval has arrived
    joined: int              # the interval of its first message
    heard: float             # the merger's clock at its last message
    seq: dict = field(default_factory=dict)   # partition -> next expected seq
    # a gap seen and its loss not yet bounded: the lowest interval the lost panes may have
    # (its next progress bounds them from above); None: no gap open
    gap_from: int | None = None


@dataclass
class MergeStats:
    partials: int = 0         # messages taken
    panes: int = 0            # panes merged
    refused: dict = field(default_factory=dict)   # reason -> messages refused
    stale: int = 0            # panes of windows already emitted (a late joiner)
    gaps: int = 0             # messages missing from an instance's sequence
    incomplete: int = 0       # (key, window) pairs never published: an instance died in them,
    #                           or a message of one that may have held their panes is missing
    windows: int = 0          # aggregates emitted
    joins: int = 0            # (instance, partition) pairs that joined
    leaves: int = 0           # and that left
    deaths: int = 0           # instances declared dead


class PaneMerger:
    """Merges the partials of the partitions it is given. ``clock`` is seconds (monotonic) given
    to ``take`` and ``expire``; nothing here reads a clock itself, so tests drive time.

    Each partition is merged on its own (``_Partition``): an instance's messages to one
    partition are ordered (one subject), across partitions they are not, so progress is per
    (instance, partition)."""

    def __init__(self, settings: WindowSettings, instance_timeout: float = 10.0) -> None:
        self.settings = settings
        self.instance_timeout = instance_timeout
        self.stats = MergeStats()
        self._parts: dict[int, _Partition] = {}

    def take(self, msg: Partial, clock: float) -> None:
        """One decoded partial. A message made with other settings is refused and counted."""
        try:
            check_settings(msg.settings, self.settings)
        except PartialError as exc:
            self.stats.refused[exc.reason] = self.stats.refused.get(exc.reason, 0) + 1
            return
        part = self._parts.get(msg.partition)
        if part is None:
            part = self._parts[msg.partition] = _Partition(self.settings, self.instance_timeout,
                                                           self.stats)
        part.take(msg, clock)

    def expire(self, clock: float) -> list[str]:
        """Declares dead every instance silent for instance_timeout; returns their ids."""
        dead = sorted({name for part in self._parts.values() for name in part.expire(clock)})
        self.stats.deaths += len(dead)
        return dead

    @property
    def instances(self) -> dict[str, int]:
        """Live instance -> its smallest progress over the partitions."""
        out: dict[str, int] = {}
        for part in self._parts.values():
            for name, progress in part.instances.items():
                out[name] = min(progress, out.get(name, progress))
        return out

    def resume(self, partition: int, emitted: int | None) -> None:
        """A partition taken over: its windows through tick `emitted` were published by the
        previous owner, so they are not emitted again while its partials are replayed."""
        part = self._parts[partition] = _Partition(self.settings, self.instance_timeout,
                                                   self.stats)
        part._emitted = emitted
        # with a tick emitted the replay starts at that owner's floor: the messages below it
        # are not needed, so an instance's first message there may have any seq
        part._resumed = emitted is not None

    def drop(self, partition: int) -> None:
        """A partition this worker no longer owns: its state goes."""
        self._parts.pop(partition, None)

    def replay_needs(self, partition: int) -> tuple[int | None, frozenset[str], bool]:
        """What a new owner's replay of ``partition`` must see (service/replay_floor.py): the
        last tick emitted there, its live instances (their progress holds the windows back),
        and whether a loss (a death's, or a gap's, open or bounded) still spans a window to
        come: then the messages that reveal it must be replayed as well, so the floor must not
        move."""
        part = self._parts.get(partition)
        if part is None:
            return None, frozenset(), False
        pending = bool(part._lost) or any(i.gap_from is not None
                                          for i in part._instances.values())
        return part._emitted, frozenset(part._instances), pending

    def emitted(self) -> dict[int, int]:
        """Partition -> the last tick emitted there."""
        return {p: part._emitted for p, part in self._parts.items()
                if part._emitted is not None}

    def emit(self, hold: frozenset[int] | set[int] = frozenset()) -> list[dict]:
        """Every window made final since the last call: partition by partition, oldest tick
        first within one. Partitions in ``hold`` emit nothing yet (a takeover's replay that has
        not caught up: service/replay_floor.py)."""
        return [agg for p, part in sorted(self._parts.items()) if p not in hold
                for agg in part.emit()]


class _Partition:
    """The merge of one partition."""

    def __init__(self, settings: WindowSettings, instance_timeout: float,
                 stats: MergeStats) -> None:
        self.settings = settings
        self.instance_timeout = instance_timeout
        self._keys: dict[tuple[str, str], dict[int, _Merged]] = {}
        self._instances: dict[str, _Instance] = {}
        self._emitted: int | None = None     # the last tick emitted
        self._lost: list[tuple[int, int]] = []   # interval ranges [lo, hi) a dead instance held
        self._departed: int | None = None        # the progress of those that left, the newest
        # a takeover's replay from a floor: an instance first seen past seq 0 joined before it
        self._resumed = False
        self.stats = stats
        self._quantile_names = tuple(quantile_name(q) for q in settings.quantiles)

    # ---- in ----

    def take(self, msg: Partial, clock: float) -> None:
        self.stats.partials += 1
        inst = self._instances.get(msg.instance)
        joined = inst is None
        if inst is None:
            start = msg.interval
            inst = self._instances[msg.instance] = _Instance(start, start, clock)
            self.stats.joins += 1
        inst.heard = clock
        expected = inst.seq.get(msg.partition, 0)
        if msg.seq > expected and (not joined or not self._resumed):
            # a first message past seq 0 is a gap too (its first messages were lost, or the
            # stream no longer holds them), unless a takeover's replay floor vouches that what
            # came before it is not needed (service/replay_floor.py)
            self.stats.gaps += msg.seq - expected
            self._open_gap(inst, None if joined else inst.progress)
        inst.seq[msg.partition] = msg.seq + 1
        if msg.kind == KIND_PANES:
            # it holds data from here on (after NO_DATA, or as a first message)
            inst.progress = min(inst.progress, msg.interval)
            self._take_panes(msg)
        elif msg.kind in (KIND_PROGRESS, KIND_HEARTBEAT):
            # one subject per partition: an instance's messages here come in order
            self._close_gap(inst, msg.interval)
            inst.progress = msg.interval
        elif msg.kind == KIND_LEAVE:
            self._close_gap(inst, msg.interval)
            # all it had is sent: with nobody else live, its progress is the frontier
            left = self._instances.pop(msg.instance).progress
            if msg.interval != NO_DATA:
                self._departed = max(left if left != NO_DATA else msg.interval, msg.interval,
                                     self._departed if self._departed is not None
                                     else msg.interval)
            self.stats.leaves += 1

    def _take_panes(self, msg: Partial) -> None:
        k = msg.interval
        # a pane that no window to come spans (window T spans intervals [T-P, T-1])
        if self._emitted is not None and k < self._emitted - self.settings.panes + 1:
            self.stats.stale += len(msg.panes)
            return
        keys = self._keys
        for p in msg.panes:
            panes = keys.get((p.device, p.sensor))
            if panes is None:
                panes = keys[p.device, p.sensor] = {}
            merged = panes.get(k)
            if merged is None:
                panes[k] = _Merged(p)
            else:
                merged.add(p)
        self.stats.panes += len(msg.panes)

    # ---- gaps ----

    def _open_gap(self, inst: _Instance, since: int | None) -> None:
        """A message of ``inst`` is missing. Its panes (if it had any) are of intervals at or
        above ``since``, the instance's progress before it: each pane goes out after the
        progress below it. Without one (None: its first messages are missing; NO_DATA: its
        first data may be what went missing) they may be of any interval a window to come
        spans. The instance's progress stays there, holding the windows back, until its next
        progress bounds the loss (``_close_gap``)."""
        if inst.gap_from is not None:
            return   # one open already, from an older progress: it covers this one
        if since is not None and since != NO_DATA:
            inst.gap_from = since
        elif self._emitted is not None:
            inst.gap_from = self._emitted + 1 - self.settings.panes
        else:
            inst.gap_from = -NO_DATA   # nothing emitted yet: every interval
        inst.progress = min(inst.progress, inst.gap_from)

    def _close_gap(self, inst: _Instance, interval: int) -> None:
        """``inst``'s progress after a gap: every pane it lost is of an interval below it, so
        the loss is [gap_from, interval), lost as a death's is: every window of the partition
        spanning it (of every key: the lost message's keys are unknown) is counted incomplete.
        NO_DATA (a heartbeat of an instance that never held data): nothing was lost."""
        if inst.gap_from is None:
            return
        if interval != NO_DATA and interval > inst.gap_from:
            self._lost.append((inst.gap_from, interval))
        inst.gap_from = None

    # ---- membership ----

    def expire(self, clock: float) -> list[str]:
        """Declares dead every instance silent for instance_timeout; returns their ids."""
        dead = [name for name, i in self._instances.items()
                if clock - i.heard >= self.instance_timeout]
        for name in dead:
            lost_from = self._instances.pop(name).progress
            if lost_from == NO_DATA:
                continue   # it never held a pane
            others = [i.progress for i in self._instances.values() if i.progress != NO_DATA]
            if self._departed is not None:
                others.append(self._departed)
            # what it held in open panes is gone: from its progress to where the others are now
            # (those that left included: a bound that may be far, never short), plus the lead
            # (readings that late were still accepted there)
            lost_to = max([lost_from, *others]) + self.settings.lead + 1
            self._lost.append((lost_from, lost_to))
        return dead

    @property
    def instances(self) -> dict[str, int]:
        """Live instance -> its progress."""
        return {name: i.progress for name, i in self._instances.items()}

    def frontier(self) -> int | None:
        """The last tick final: every live instance's progress; with none live, that of the
        newest that left (None: none ever left either)."""
        if not self._instances:
            return self._departed
        return min(i.progress for i in self._instances.values())

    # ---- out ----

    def emit(self) -> list[dict]:
        """Every window made final since the last call, oldest tick first, each as the engine's
        aggregate fields (plus ``quantile_names``/``quantile_values``)."""
        frontier = self.frontier()
        if frontier is None:
            return []
        s = self.settings
        start = self._emitted + 1 if self._emitted is not None else self._first_tick()
        if start is None:
            return []
        out: list[dict] = []
        # past the newest pane + P no window holds data: those ticks are final and empty
        newest = max((max(p) for p in self._keys.values() if p), default=start - s.panes)
        last = min(frontier, newest + s.panes)
        for tick in range(start, last + 1):
            lost = any(lo <= tick - 1 and tick - s.panes < hi for lo, hi in self._lost)
            for (device, sensor), panes in self._keys.items():
                agg = self._window(device, sensor, panes, tick)
                if agg is None:
                    continue
                if lost:
                    self.stats.incomplete += 1
                else:
                    out.append(agg)
                    self.stats.windows += 1
            self._emitted = tick
        if last >= start:
            # ticks past the newest pane + P are empty: done, without marking them (an instance
            # without data yet, NO_DATA, must not push the mark to the end of time)
            self._emitted = last
        self._forget()
        return out

    def _first_tick(self) -> int | None:
        oldest = [min(p) for p in self._keys.values() if p]
        return min(oldest) + 1 if oldest else None

    def _forget(self) -> None:
        """Drops panes no window to come spans, and keys left without panes."""
        if self._emitted is None:
            return
        floor = self._emitted - self.settings.panes + 1
        for name in list(self._keys):
            panes = self._keys[name]
            for k in [k for k in panes if k < floor]:
                del panes[k]
            if not panes:
                del self._keys[name]
        self._lost = [(lo, hi) for lo, hi in self._lost if hi + self.settings.panes > floor]

    def _window(self, device: str, sensor: str, panes: dict[int, _Merged],
                tick: int) -> dict | None:
        s = self.settings
        held = [p for p in (panes.get(j) for j in range(tick - s.panes, tick)) if p is not None]
        merged = merge_panes(held)
        if merged is None:
            return None
        n, total, m2, mn, mx, first, newest = merged
        sketch = QuantileSketch(s.quantile_accuracy) if s.quantiles else None
        if sketch is not None:
            for p in held:
                if p.sketch is not None:
                    sketch.merge(p.sketch)
        return {
            "device": device, "sensor": sensor, "unit": newest.unit,
            "window_start": float(tick - s.panes) * s.emit_every,
            "window_end": float(tick) * s.emit_every,
            "count": n, "sum": total, "mean": total / float(n), "min": mn, "max": mx,
            "stddev": math.sqrt(m2 / float(n)), "first": first, "last": newest.last,
            "quantile_names": self._quantile_names,
            "quantile_values": (tuple(sketch.quantile(q) for q in s.quantiles)
                                if sketch is not None else ()),
        }
