"""What the compiled engine and its pure-Python twin share: configuration checks and the
aggregate field list. Kept in Python so both twins reject the same settings with the same words."""

from __future__ import annotations

import math
import numbers
from decimal import Decimal
from typing import NamedTuple

from telemetry_cy.engine.cbor_fallback import check_element

#: The fields of an aggregate, in order: the one list. The compiled ``Aggregate`` (a cdef class,
#: checked against this by tests/test_aggregate_fields.py), its stub, the pure twin's dataclass,
#: the message bodies and the wire encoder's layout all follow it.
AGGREGATE_FIELDS: tuple[str, ...] = (
    "device", "sensor", "unit", "window_start", "window_end", "count", "sum", "mean", "min",
    "max", "stddev", "first", "last",
)
#: With quantiles on, an aggregate also carries one field per configured q, named by
#: quantile_name (p50, p99, p99.9): the engine's ``quantile_names`` (shared by all its
#: aggregates) and the window's ``quantile_values`` in the same order, both () when off. as_dict()
#: and the message bodies put them after AGGREGATE_FIELDS as top-level fields, and ``a.p99`` reads
#: one (docs/windows.md, "Quantiles").
QUANTILE_ATTRIBUTES: tuple[str, ...] = ("quantile_names", "quantile_values")
#: Fields that are not floats (seconds or statistics of the readings' values).
_NOT_FLOAT: dict[str, object] = {"device": str, "sensor": str, "unit": str | None, "count": int}


def present_fields(a) -> dict:
    """An aggregate's fields as a dict: AGGREGATE_FIELDS in order, then its quantiles by name:
    what as_dict() returns and what the bodies carry."""
    out = {name: getattr(a, name) for name in AGGREGATE_FIELDS}
    out.update(zip(a.quantile_names, a.quantile_values))
    return out


def aggregate_args(fields: dict) -> tuple:
    """An Aggregate's constructor arguments from a dict as present_fields gives it (the
    statistics, then the quantiles by name): the inverse of as_dict()."""
    names = tuple(name for name in fields if name not in _FIELD_SET)
    return (*(fields[name] for name in AGGREGATE_FIELDS), names,
            tuple(fields[name] for name in names))


_FIELD_SET = frozenset(AGGREGATE_FIELDS)


def quantile_field(a, name: str) -> float:
    """``a.<name>`` for a quantile field (both twins' __getattr__); AttributeError otherwise."""
    if not name.startswith("p") or name in QUANTILE_ATTRIBUTES:
        raise AttributeError(name)
    try:
        return a.quantile_values[a.quantile_names.index(name)]
    except ValueError:
        raise AttributeError(f"this aggregate has no quantile {name!r} (its quantiles: "
                             f"{', '.join(a.quantile_names) or 'none'})") from None


def aggregate_field_type(name: str) -> object:
    """The Python type of an aggregate field: ``unit`` is None when no reading had one."""
    if name not in AGGREGATE_FIELDS:
        raise KeyError(name)
    return _NOT_FLOAT.get(name, float)


def quantile_name(q: float) -> str:
    """The field of quantile q: ``p`` and the percentage without trailing zeros, from q's
    shortest repr (so distinct q never share a name): 0.5 -> p50, 0.999 -> p99.9, 0.05 -> p5."""
    return "p" + format((Decimal(repr(float(q))) * 100).normalize(), "f")


#: The relative accuracy alpha of the quantile sketch: allowed range and default
#: (TC_SKETCH_MIN_ALPHA / TC_SKETCH_MAX_ALPHA in tc_sketch.h).
QUANTILE_ACCURACY_MIN = 0.005
QUANTILE_ACCURACY_MAX = 0.05
QUANTILE_ACCURACY_DEFAULT = 0.01
#: At most this many quantiles per engine (tc_qs_quantiles reads them in one walk of the sketch).
MAX_QUANTILES = 8


class QuantileConfig(NamedTuple):
    qs: tuple[float, ...]          # the q chosen, ascending, distinct; () = off
    names: tuple[str, ...]         # their fields (quantile_name), same order
    accuracy: float


def check_quantiles(quantiles, accuracy) -> QuantileConfig:
    """The settings ``quantiles`` (None or a sequence of up to MAX_QUANTILES q, each with
    0 < q < 1; empty = off) and ``quantile_accuracy`` (alpha in [0.005, 0.05])."""
    chosen: set[float] = set()
    if quantiles is not None:
        if isinstance(quantiles, (str, bytes)) or not hasattr(quantiles, "__iter__"):
            raise TypeError("quantiles must be a sequence of numbers such as [0.5, 0.9, 0.99], "
                            f"got {type(quantiles).__name__}")
        for q in quantiles:
            if isinstance(q, bool) or not isinstance(q, numbers.Real):
                raise TypeError(f"a quantile must be a number, got {type(q).__name__}")
            if not 0.0 < float(q) < 1.0:
                raise ValueError(f"a quantile must be between 0 and 1 (exclusive), got {q!r}")
            chosen.add(float(q))
        if len(chosen) > MAX_QUANTILES:
            raise ValueError(f"at most {MAX_QUANTILES} quantiles, got {len(chosen)}")
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
        raise TypeError(f"quantile_accuracy must be a number, got {type(accuracy).__name__}")
    accuracy = float(accuracy)
    if not QUANTILE_ACCURACY_MIN <= accuracy <= QUANTILE_ACCURACY_MAX:
        raise ValueError(f"quantile_accuracy must be between {QUANTILE_ACCURACY_MIN} and "
                         f"{QUANTILE_ACCURACY_MAX}, got {accuracy!r}")
    qs = tuple(sorted(chosen))
    return QuantileConfig(qs=qs, names=tuple(quantile_name(q) for q in qs), accuracy=accuracy)


#: A window longer than this many emit intervals would make each key's pane ring large; the
#: per-key state budget (docs/performance.md) assumes the default 12.
MAX_PANES = 4096
#: Dense indices are 32-bit in the compiled table.
MAX_KEYS_LIMIT = 2**32 - 2


class EngineConfig(NamedTuple):
    window: float
    emit_every: float
    panes: int
    max_keys: int
    key_ttl: float
    max_payload_bytes: int
    max_name_bytes: int


def _positive_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return value


def _count(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def check_config(window, emit_every, max_keys, key_ttl, max_payload_bytes,
                 max_name_bytes) -> EngineConfig:
    window = _positive_number("window", window)
    emit_every = _positive_number("emit_every", emit_every)
    key_ttl = _positive_number("key_ttl", key_ttl)
    ratio = window / emit_every
    panes = round(ratio)
    if panes < 1 or abs(ratio - panes) > 1e-9 * ratio:
        raise ValueError(
            f"window ({window:g} s) must be a whole multiple of emit_every ({emit_every:g} s)")
    if panes > MAX_PANES:
        raise ValueError(f"window / emit_every must be at most {MAX_PANES}, got {panes}")
    if key_ttl < window:
        raise ValueError(f"key_ttl ({key_ttl:g} s) must be >= window ({window:g} s)")
    return EngineConfig(
        window=window,
        emit_every=emit_every,
        panes=panes,
        max_keys=_count("max_keys", max_keys, 1, MAX_KEYS_LIMIT),
        key_ttl=key_ttl,
        max_payload_bytes=_count("max_payload_bytes", max_payload_bytes, 1, 2**31 - 1),
        max_name_bytes=_count("max_name_bytes", max_name_bytes, 1, 65535),
    )


# ---- event time (docs/windows.md, "Event time") -------------------------------------------------

#: The two clocks a reading's window can follow.
TIME_MODES: tuple[str, ...] = ("arrival", "event")
#: Defaults of the event-time settings, in seconds (the issue's bound: idle_timeout <= 30 s).
DEFAULT_ALLOWED_LATENESS = 0.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_FUTURE = 60.0
#: Late readings an engine keeps for take_late() by default (0: counted, not kept).
DEFAULT_LATE_CAPACITY = 0
MAX_LATE_CAPACITY = 1 << 24


class EventConfig(NamedTuple):
    event: bool  # time == "event"
    allowed_lateness: float
    idle_timeout: float
    max_future: float
    lead: int  # D = ceil(allowed_lateness / emit_every): open intervals ahead of the closed tick
    late_capacity: int


class LateReading(NamedTuple):
    """A reading whose first window was already emitted: in no aggregate, counted `late`, handed
    out by ``Engine.take_late()`` to be routed (``--late-subject``). Times in seconds."""

    device: str
    sensor: str
    value: float
    unit: "str | None"
    t: float  # its event time (its arrival when it had no `t`)
    n: "int | None"  # its sequence number, if any
    arrival: float


def _seconds(name: str, value, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        what = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {what}, finite number of seconds, got {value!r}")
    return value


def check_event_config(time, allowed_lateness, idle_timeout, max_future, late_capacity,
                       emit_every: float, panes: int) -> EventConfig:
    if time not in TIME_MODES:
        raise ValueError(f"time must be one of {', '.join(TIME_MODES)}, got {time!r}")
    lateness = _seconds("allowed_lateness", allowed_lateness, True)
    idle = _seconds("idle_timeout", idle_timeout, False)
    future = _seconds("max_future", max_future, True)
    ratio = lateness / emit_every
    lead = round(ratio) if abs(ratio - round(ratio)) <= 1e-9 * max(ratio, 1.0) else math.ceil(ratio)
    if panes + lead > MAX_PANES:
        raise ValueError(f"(window + allowed_lateness) / emit_every must be at most {MAX_PANES}, "
                         f"got {panes + lead}")
    return EventConfig(time == "event", lateness, idle, future, lead,
                       _count("late_capacity", late_capacity, 0, MAX_LATE_CAPACITY))


# ---- partial mode (docs/scale-out.md, "run --output partials") ---------------------------------

#: Bytes of closed panes an engine in partial mode holds for take_closed_panes() by default: as
#: much as the stream that carries them holds (PARTIALS, 1 GiB); a larger buffer buys nothing.
DEFAULT_PARTIALS_MAX_BYTES = 1 << 30
MAX_PARTIALS_MAX_BYTES = 1 << 40
#: A panes message's partition count is a u32 of the partial format.
MAX_PARTITIONS = (1 << 32) - 1


class ClosedPanes(NamedTuple):
    """What ``Engine.take_closed_panes(partitions)`` hands over: the panes the clock closed since
    the last call, already in the partial format's pane encoding (docs/scale-out.md)."""

    closed: "int | None"  # every interval below it is closed (None: the clock has not started)
    # (interval, partition, n, records): n pane records of one interval and partition, keys in
    # (device, sensor) order, ascending by interval then partition
    groups: "list[tuple[int, int, int, bytes]]"
    lost: int  # panes closed since the last call that found the buffer full: not in groups


def check_partials(partials, max_bytes, event: bool) -> tuple[bool, int]:
    """(partials on, the buffer's byte limit) of an Engine's partial-mode arguments."""
    if not isinstance(partials, bool):
        raise TypeError(f"partials must be True or False, got {type(partials).__name__}")
    if partials and not event:
        raise ValueError("partials need time='event': arrival-time windows are not mergeable "
                         "from panes (docs/scale-out.md)")
    return partials, _count("partials_max_bytes", max_bytes, 1, MAX_PARTIALS_MAX_BYTES)


def check_partitions(partitions) -> int:
    return _count("partitions", partitions, 1, MAX_PARTITIONS)


#: ts / emit_every must stay well inside an int64 interval index.
MAX_INTERVAL = 4.0e18


def interval_of(ts: float, emit_every: float) -> int:
    """The emit interval a timestamp falls in: floor(ts / emit_every) in IEEE double."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise TypeError(f"ts must be a number of seconds, got {type(ts).__name__}")
    ts = float(ts)
    if not math.isfinite(ts):
        raise ValueError(f"ts must be a finite number of seconds, got {ts!r}")
    q = math.floor(ts / emit_every)
    if abs(q) > MAX_INTERVAL:
        raise ValueError(f"ts {ts!r} is out of range")
    return q


def check_reading(device, sensor, value, unit, max_name_bytes: int, seq=None, t=None):
    """Validates a reading given as Python values (``Engine.push_reading``) by the same rules as
    a decoded payload element (``seq`` is its ``n``, ``t`` its event time). Returns a ``Reading``
    or the drop reason."""
    if not isinstance(device, str) or not isinstance(sensor, str):
        raise TypeError("device and sensor must be str")
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        value = float(value)  # numpy scalars and friends
    elem = {"d": device, "s": sensor, "v": value}
    if unit is not None:
        elem["u"] = unit
    if seq is not None:
        elem["n"] = seq
    if t is not None:
        if isinstance(t, numbers.Real) and not isinstance(t, (bool, int, float)):
            t = float(t)
        elem["t"] = t
    return check_element(elem, max_name_bytes)


# ---- sequence numbers and offenders (docs/windows.md, "Sequence numbers and offenders") ----------

#: A backward step of at most this much is a reorder (TC_SEQ_MAX_REORDER in tc_window.h).
SEQ_MAX_REORDER = 1024
#: A forward step skipping more numbers than this is a restart, not a gap (TC_SEQ_MAX_GAP).
SEQ_MAX_GAP = 1 << 20
#: Entries each space-saving summary keeps (TC_TOPN_CAP in tc_topn.h) ...
TOPN_CAPACITY = 32
#: ... the bytes of a name it keeps (TC_TOPN_NAME_BYTES) ...
TOPN_NAME_BYTES = 96
#: ... and how many of them ``stats()`` reports.
TOP_OFFENDERS = 10
#: The offender name of a payload-level drop that came without an MQTT topic.
NO_TOPIC = b"-"


def top_entries(entries, k: int) -> list[tuple[str, int, int]]:
    """The k largest summary entries as ``(name, count, error_bound)``: by count, ties by name
    bytes. Names are decoded as UTF-8 (device and sensor always are; a topic with bad bytes gets
    U+FFFD in their place)."""
    ranked = sorted(entries, key=lambda e: (-e[1], e[0]))[:k]
    return [(name.decode("utf-8", "replace"), count, error) for name, count, error in ranked]
