from collections.abc import Iterable
from typing import TypedDict, final, type_check_only

from telemetry_cy.engine.column_buffers import Columns
from telemetry_cy.engine.rules import ClosedPanes, LateReading
from telemetry_cy.source._ring import ByteRing

# SeqStats, Offender and Offenders exist for the type checker only: stats() builds plain dicts.
@type_check_only
class SeqStats(TypedDict):
    """Sequence-number accounting over accepted readings with `n`, per (device, sensor) stream
    (docs/windows.md, "Sequence numbers and offenders")."""

    gaps: int  # numbers skipped between two readings of a stream (messages we never accepted)
    duplicates: int  # n equal to the stream's last
    reorders: int  # n a little below the stream's last (at most 1,024 back, and n > 1)
    restarts: int  # back to 0 or 1, more than 1,024 back, or more than 2**20 forward

#: (name, count, error_bound): the true count lies in [count - error_bound, count].
_Offender = tuple[str, int, int]

@type_check_only
class Offenders(TypedDict):
    drops: list[_Offender]  # key_limit by "device/sensor"; other drops by MQTT topic, or "-"
    gaps: list[_Offender]  # "device/sensor", weighted by the numbers skipped
    late: list[_Offender]  # "device/sensor"

@final
class TopN:
    """A space-saving summary of the heaviest names (includes/tc_topn.h): ``capacity`` slots,
    names cut to ``name_bytes`` bytes at a UTF-8 boundary. Every name whose weight is above
    ``total / capacity`` holds a slot; a slot's count over-estimates by at most its error."""

    capacity: int  # 32
    name_bytes: int  # 96
    def __init__(self) -> None: ...
    def add(self, name: bytes, weight: int = 1) -> None: ...
    def add_pair(self, a: bytes, b: bytes, weight: int = 1) -> None:
        """The name a + b"/" + b."""
    @property
    def total(self) -> int: ...
    def entries(self) -> list[tuple[bytes, int, int]]:
        """Every slot, in slot order: (name, count, error)."""
    def top(self, k: int = 10) -> list[_Offender]:
        """The k largest, by count then name."""


@final
class Aggregate:
    device: str
    sensor: str
    unit: str | None
    window_start: float
    window_end: float
    count: int
    sum: float
    mean: float
    min: float
    max: float
    stddev: float
    first: float
    last: float
    quantile_names: tuple[str, ...]  # p50, p99.9, ...: the engine's quantiles; () = off
    quantile_values: tuple[float, ...]  # this window's, in that order
    def __init__(self, device: str, sensor: str, unit: str | None, window_start: float,
                 window_end: float, count: int, sum: float, mean: float, min: float, max: float,
                 stddev: float, first: float, last: float,
                 quantile_names: Iterable[str] = (),
                 quantile_values: Iterable[float] = ()) -> None: ...
    def __getattr__(self, name: str) -> float:
        """A quantile by its field name: a.p99, getattr(a, "p99.9")."""
    def as_dict(self) -> dict[str, object]:
        """The fields by name, then the quantiles the engine computes (p50, p99.9, ...)."""

@type_check_only
class EventTimeStats(TypedDict):
    """Event-time accounting (docs/windows.md, "Event time")."""

    no_event_time: int  # readings without `t` (their arrival was their event time)
    late_unrouted: int  # late readings take_late() could not keep (late_capacity full)
    watermark: float | None  # max event time - allowed_lateness; None in arrival mode

@final
class Engine:
    window: float
    emit_every: float
    key_ttl: float
    max_payload_bytes: int
    max_name_bytes: int
    time: str  # "arrival" or "event"
    allowed_lateness: float
    idle_timeout: float
    max_future: float
    quantiles: tuple[float, ...]  # the q computed, ascending; () = off
    quantile_names: tuple[str, ...]  # their fields: p50, p99.9 (rules.quantile_name)
    quantile_accuracy: float  # the sketch's relative accuracy alpha
    partials: bool  # partial mode: the clock takes each closed pane (take_closed_panes)
    @property
    def max_keys(self) -> int: ...
    def __init__(self, window: float = 60.0, emit_every: float = 5.0, max_keys: int = 1_000_000,
                 key_ttl: float = 300.0, max_payload_bytes: int = 65536,
                 max_name_bytes: int = 256, time: str = "arrival",
                 allowed_lateness: float = 0.0, idle_timeout: float = 30.0,
                 max_future: float = 60.0, late_capacity: int = 0,
                 quantiles: Iterable[float] | None = None,
                 quantile_accuracy: float = 0.01, partials: bool = False,
                 partials_max_bytes: int = 1 << 30) -> None: ...
    def push(self, payload: bytes | bytearray | memoryview, ts: float) -> int: ...
    def push_many(self, payloads: Iterable[bytes | bytearray | memoryview], ts: float) -> int: ...
    def drain(self, ring: ByteRing, max_records: int = 4096) -> int: ...
    def run_ring(self, ring: ByteRing, seconds: float, batch_records: int = 8192,
                 lend: bool = True) -> bool:
        """Drains and parks (no GIL) until ``seconds`` pass or ``ring.wake()`` (then True);
        parked, lent to the network thread's pump when ``lend`` (``ring.lends`` counts it)."""
    def push_reading(self, device: str, sensor: str, value: float, ts: float,
                     unit: str | None = None, seq: int | None = None,
                     t: float | None = None) -> None: ...
    def tick(self, now: float) -> list[Aggregate]: ...
    def tick_columns(self, now: float) -> Columns:
        """``tick(now)`` with the aggregates as columns: the same rows, in the same order, in
        typed buffers (``column_buffers.Columns``) rather than one object per aggregate."""
    def open_readings(self) -> int:
        """Accepted readings of the intervals no tick has closed yet: in no aggregate so far."""
    def take_closed_panes(self, partitions: int) -> ClosedPanes:
        """Partial mode: the panes the clock closed since the last call, per (interval,
        partition) in the partial format's pane encoding, and the panes lost to a full buffer
        (docs/scale-out.md)."""
    def take_late(self) -> list[LateReading]:
        """Late readings kept since the last call (at most late_capacity), oldest first."""
    def snapshot(self) -> bytes:
        """The whole state as bytes (docs/state.md): keys, panes, clock, counters, offenders,
        aggregates and late readings not yet taken."""
    @classmethod
    def from_snapshot(cls, data: bytes | bytearray | memoryview, **settings: object) -> Engine:
        """An engine built with `settings` holding a snapshot's state; SnapshotError (a
        ValueError) names the reason a snapshot is refused."""
    def stats(self) -> dict[str, object]:
        """Counters and gauges. Besides the drop and window counters: ``stats()["seq"]`` is a
        ``SeqStats``, ``stats()["offenders"]`` an ``Offenders`` (top 10 of each summary, by
        count) and ``stats()["event_time"]`` an ``EventTimeStats``. ``state_bytes`` is the
        memory of the window state, the partial buffer's included; ``partial_buffer_bytes``
        that buffer's part (0 unless partials=True)."""
