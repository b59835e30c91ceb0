"""The snapshot format's header and engine section (docs/state.md), shared by both engines.

A snapshot is ``header | engine section | keys section | crc32``. Both engines write and read the
header and the engine section here (they are small: counters, offender summaries, aggregates
not yet returned); each writes and reads the keys section itself, the compiled engine in C
(``includes/tc_snapshot.h``), the pure twin in Python, to the same bytes.

The reader checks, in this order: empty, magic, version, length, checksum; then every field as it
parses (``malformed``); the caller then compares the settings (``settings``).
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import NamedTuple

from telemetry_cy.engine.rules import (
    AGGREGATE_FIELDS,
    MAX_INTERVAL,
    MAX_QUANTILES,
    LateReading,
    aggregate_field_type,
)
from telemetry_cy.engine.snapshot_errors import SnapshotError

MAGIC = b"TCYSTATE"
VERSION = 1

FLAG_EVENT = 1       # time="event"
FLAG_QUANTILES = 2   # every pane carries a sketch block
FLAG_STARTED = 4     # the clock has started (a reading or tick() came)

#: magic, version, flags, file_len, engine_len, n_keys | window, emit_every, panes, lead,
#: allowed_lateness, quantile_accuracy, n_quantiles, reserved | max_keys, key_ttl,
#: idle_timeout, max_future, late_capacity, max_name_bytes, max_payload_bytes, reserved
HEADER = struct.Struct("<8sIIQQQ" "ddIIddII" "QdddIIII")
CLOCK = struct.Struct("<qqdd")          # closed, newest_data, max_t, max_t_arrival
COUNTERS = struct.Struct("<16Q")        # 6 counters, 6 seq classes, seq_gaps, 2 event, reserved
CRC = struct.Struct("<I")
NO_INTERVAL = -(1 << 63)                # INT64_MIN: newest_data / a key's newest before any data

_U8, _U32, _U64, _F64 = (struct.Struct(f) for f in ("<B", "<I", "<Q", "<d"))
# the tags of a pending aggregate's values, and those each field type takes
_NONE, _STR, _INT, _FLOAT = range(4)
_TAGS_OF: dict[object, tuple[int, ...]] = {
    str: (_STR,), str | None: (_STR, _NONE), int: (_INT,), float: (_FLOAT,),
    float | None: (_FLOAT, _NONE)}


class Settings(NamedTuple):
    """What a snapshot was made with. The first group must match the restoring engine's; the
    second may differ (docs/state.md, "Restoring with other settings")."""

    window: float
    emit_every: float
    panes: int
    event: bool
    lead: int                 # 0 in arrival mode
    allowed_lateness: float   # 0.0 in arrival mode
    quantiles: tuple[float, ...]  # the q computed, ascending; () when off
    quantile_accuracy: float  # 0.0 when off
    max_keys: int
    key_ttl: float
    idle_timeout: float
    max_future: float
    late_capacity: int
    max_name_bytes: int
    max_payload_bytes: int


class EngineState(NamedTuple):
    """Everything of an engine but its keys: the clock, the counters, the offender summaries, and
    what it holds for the caller (aggregates not yet returned by tick(), late readings not yet
    taken)."""

    started: bool
    closed: int
    newest_data: int          # NO_INTERVAL: no data yet
    max_t: float
    max_t_arrival: float
    counters: tuple[int, ...]  # received, payloads, readings, evicted, ticks, aggregates
    seq_events: tuple[int, ...]  # by class, TC_SEQ_FIRST .. TC_SEQ_RESTART
    seq_gaps: int
    no_event_time: int
    late_unrouted: int
    drops: dict[str, int]
    # (total, [(name bytes, count, error), ...] in slot order) for drops, gaps, late
    offenders: tuple[tuple[int, list[tuple[bytes, int, int]]], ...]
    # aggregates: AGGREGATE_FIELDS by name, and their quantile values (the engine's q order)
    pending: list[tuple[dict, tuple[float, ...]]]
    late: list[LateReading]


class Opened(NamedTuple):
    settings: Settings
    state: EngineState
    n_keys: int
    keys_start: int           # the keys section is data[keys_start:keys_end]
    keys_end: int


# ---- writing -------------------------------------------------------------------------------------


def _str(out: list[bytes], s: str) -> None:
    b = s.encode("utf-8")
    out.append(_U32.pack(len(b)))
    out.append(b)


def _opt_str(out: list[bytes], s: str | None) -> None:
    out.append(_U8.pack(s is not None))
    if s is not None:
        _str(out, s)


def _tagged(out: list[bytes], v: object) -> None:
    if v is None:
        out.append(_U8.pack(_NONE))
    elif isinstance(v, str):
        out.append(_U8.pack(_STR))
        _str(out, v)
    elif isinstance(v, int):
        out.append(_U8.pack(_INT) + _U64.pack(v))
    else:
        out.append(_U8.pack(_FLOAT) + _F64.pack(float(v)))  # type: ignore[arg-type]


def engine_section(settings: Settings, state: EngineState) -> bytes:
    out = [struct.pack(f"<{len(settings.quantiles)}d", *settings.quantiles),
           CLOCK.pack(state.closed, state.newest_data, state.max_t, state.max_t_arrival),
           COUNTERS.pack(*state.counters, *state.seq_events, state.seq_gaps,
                         state.no_event_time, state.late_unrouted, 0)]
    out.append(_U8.pack(len(state.drops)))
    for reason, count in state.drops.items():
        nb = reason.encode("ascii")
        out += [_U8.pack(len(nb)), nb, _U64.pack(count)]
    for total, entries in state.offenders:
        out += [_U64.pack(total), _U8.pack(len(entries))]
        for name, count, error in entries:
            out += [_U8.pack(len(name)), name, _U64.pack(count), _U64.pack(error)]
    out.append(_U8.pack(len(AGGREGATE_FIELDS)))
    for field in AGGREGATE_FIELDS:
        out += [_U8.pack(len(field)), field.encode("ascii")]
    out.append(_U32.pack(len(state.pending)))
    for agg, qvalues in state.pending:
        for field in AGGREGATE_FIELDS:
            _tagged(out, agg.get(field))
        out.append(_U8.pack(len(qvalues)))
        out.append(struct.pack(f"<{len(qvalues)}d", *qvalues))
    out.append(_U32.pack(len(state.late)))
    for r in state.late:
        _str(out, r.device)
        _str(out, r.sensor)
        out.append(_F64.pack(r.value))
        _opt_str(out, r.unit)
        out += [_F64.pack(r.t), _U8.pack(r.n is not None), _U64.pack(r.n or 0),
                _F64.pack(r.arrival)]
    return b"".join(out)


def prefix(settings: Settings, state: EngineState, n_keys: int, keys_len: int) -> bytes:
    """Header and engine section of a snapshot whose keys section is keys_len bytes long."""
    body = engine_section(settings, state)
    s = settings
    flags = ((FLAG_EVENT if s.event else 0) | (FLAG_QUANTILES if s.quantiles else 0)
             | (FLAG_STARTED if state.started else 0))
    file_len = HEADER.size + len(body) + keys_len + CRC.size
    head = HEADER.pack(MAGIC, VERSION, flags, file_len, len(body), n_keys,
                       s.window, s.emit_every, s.panes, s.lead, s.allowed_lateness,
                       s.quantile_accuracy, len(s.quantiles), 0,
                       s.max_keys, s.key_ttl, s.idle_timeout, s.max_future, s.late_capacity,
                       s.max_name_bytes, s.max_payload_bytes, 0)
    return head + body


def checksum(data) -> int:
    """crc32 (zlib's, as the capture format) of everything before the last 4 bytes."""
    return zlib.crc32(memoryview(data)[:-CRC.size])


def assemble(settings: Settings, state: EngineState, n_keys: int, keys: bytes) -> bytes:
    """A whole snapshot from its keys section (the pure twin's path; the compiled engine fills
    one buffer in place)."""
    data = bytearray(prefix(settings, state, n_keys, len(keys)))
    data += keys
    data += b"\0" * CRC.size
    CRC.pack_into(data, len(data) - CRC.size, checksum(data))
    return bytes(data)


# ---- reading -------------------------------------------------------------------------------------


class _Cursor:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: memoryview, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int, what: str) -> memoryview:
        if n > self.end - self.pos:
            raise SnapshotError("malformed", f"{what} runs past the engine section")
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return v

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        return st.unpack(self.take(st.size, what))

    def u8(self, what: str) -> int:
        return self.unpack(_U8, what)[0]

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)[0]

    def u64(self, what: str) -> int:
        return self.unpack(_U64, what)[0]

    def f64(self, what: str) -> float:
        return self.unpack(_F64, what)[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.u32(what), what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SnapshotError("malformed", f"{what} is not UTF-8") from None

    def opt_string(self, what: str) -> str | None:
        flag = self.u8(what)
        if flag > 1:
            raise SnapshotError("malformed", f"{what}: bad presence flag {flag}")
        return self.string(what) if flag else None


def check_frame(view: memoryview, magic: bytes, version: int, header_size: int, error,
                noun: str) -> None:
    """The checks a stored or shipped format of ours opens with (snapshots, partials): not
    empty, its magic, its version — before anything after it, which a newer writer may have
    changed — and room for a header and the crc32. Raises `error(reason, message)`."""
    n = len(view)
    if n == 0:
        raise error("empty", f"the {noun} is empty (0 bytes)")
    if n < len(magic) or bytes(view[:len(magic)]) != magic:
        raise error("foreign", f"not a telemetry-cy {noun} (no {magic.decode()} magic)")
    if n < len(magic) + 4:
        raise error("truncated", f"{n} bytes, shorter than a {noun} header")
    found = _U32.unpack_from(view, len(magic))[0]
    if found != version:
        raise error("version", f"format version {found}; this build reads version "
                               f"{version} (written by a newer telemetry-cy?)")
    if n < header_size + CRC.size:
        raise error("truncated", f"{n} bytes, shorter than a {noun} header")


def check_length_and_crc(view: memoryview, length: int, error, noun: str) -> None:
    """The header's length against the bytes there are, then the crc32 of all but its own last
    4 bytes (checksum). Raises `error(reason, message)`."""
    n = len(view)
    if length != n:
        raise error("truncated", f"{n} bytes where the header says {length}")
    if CRC.unpack_from(view, n - CRC.size)[0] != checksum(view):
        raise error("checksum", f"the crc32 does not match: the {noun} is corrupted")


def open_snapshot(data) -> Opened:
    """Checks a snapshot's frame (magic, version, length, checksum) and reads its header and
    engine section. Raises SnapshotError."""
    view = memoryview(data).cast("B")
    n = len(view)
    check_frame(view, MAGIC, VERSION, HEADER.size, SnapshotError, "snapshot")
    (_, _, flags, file_len, engine_len, n_keys, window, emit_every, panes, lead, lateness,
     q_acc, n_q, reserved1, max_keys, key_ttl, idle, future, late_cap, max_name, max_payload,
     reserved2) = HEADER.unpack_from(view, 0)
    check_length_and_crc(view, file_len, SnapshotError, "file")
    if flags & ~(FLAG_EVENT | FLAG_QUANTILES | FLAG_STARTED) or reserved1 or reserved2:
        raise SnapshotError("malformed", f"unknown flags {flags:#x} or reserved fields not 0")
    keys_start = HEADER.size + engine_len
    if engine_len > n - HEADER.size - CRC.size:
        raise SnapshotError("malformed", "the engine section runs past the file")
    if n_q > MAX_QUANTILES or bool(n_q) != bool(flags & FLAG_QUANTILES):
        raise SnapshotError("malformed", f"{n_q} quantiles, or the quantiles flag disagrees")
    cur = _Cursor(view, HEADER.size, keys_start)
    qs = cur.unpack(struct.Struct(f"<{n_q}d"), "quantiles")
    settings = Settings(window, emit_every, panes, bool(flags & FLAG_EVENT), lead, lateness,
                        tuple(qs), q_acc, max_keys, key_ttl, idle, future, late_cap, max_name,
                        max_payload)
    state = _engine_state(cur, bool(flags & FLAG_STARTED), n_q)
    if cur.pos != keys_start:
        raise SnapshotError("malformed", "the engine section is longer than its fields")
    _check_clock(state, settings, n_keys)
    return Opened(settings, state, n_keys, keys_start, n - CRC.size)


def _engine_state(cur: _Cursor, started: bool, n_q: int) -> EngineState:
    closed, newest_data, max_t, max_t_arrival = cur.unpack(CLOCK, "clock")
    c = cur.unpack(COUNTERS, "counters")
    drops = {}
    for _ in range(cur.u8("drops")):
        reason = bytes(cur.take(cur.u8("drop name"), "drop name")).decode("ascii", "replace")
        drops[reason] = cur.u64("drop count")
    offenders: list[tuple[int, list[tuple[bytes, int, int]]]] = []
    for _ in range(3):
        total = cur.u64("offenders")
        entries: list[tuple[bytes, int, int]] = []
        for _ in range(cur.u8("offenders")):
            name = bytes(cur.take(cur.u8("offender name"), "offender name"))
            entries.append((name, cur.u64("offender count"), cur.u64("offender error")))
        offenders.append((total, entries))
    fields = [bytes(cur.take(cur.u8("field name"), "field name")).decode("ascii", "replace")
              for _ in range(cur.u8("aggregate fields"))]
    unknown = set(fields) - set(AGGREGATE_FIELDS)
    if unknown:
        raise SnapshotError("malformed", f"pending aggregates have unknown fields {unknown}")
    pending = []
    allowed = {field: _TAGS_OF[aggregate_field_type(field)] for field in fields}
    for _ in range(cur.u32("pending aggregates")):
        agg: dict[str, object] = {}
        for field in fields:
            tag = cur.u8("aggregate value")
            if tag not in allowed[field]:
                raise SnapshotError("malformed", f"aggregate field {field} with value tag {tag}")
            if tag == _NONE:
                agg[field] = None
            elif tag == _STR:
                agg[field] = cur.string(field)
            elif tag == _INT:
                agg[field] = cur.u64(field)
            elif tag == _FLOAT:
                agg[field] = cur.f64(field)
            else:
                raise SnapshotError("malformed", f"aggregate value tag {tag}")
        nq = cur.u8("aggregate quantiles")
        if nq not in (0, n_q):
            raise SnapshotError("malformed", f"an aggregate with {nq} of {n_q} quantiles")
        pending.append((agg, cur.unpack(struct.Struct(f"<{nq}d"), "aggregate quantiles")))
    late = []
    for _ in range(cur.u32("late readings")):
        device, sensor = cur.string("late device"), cur.string("late sensor")
        value = cur.f64("late value")
        unit = cur.opt_string("late unit")
        t, has_n, n, arrival = cur.f64("late t"), cur.u8("late n"), cur.u64("late n"), \
            cur.f64("late arrival")
        late.append(LateReading(device, sensor, value, unit, t, n if has_n else None, arrival))
    if not started and (closed != 0 or c[2]):
        raise SnapshotError("malformed", "a clock that never started holds data")
    if math.isnan(max_t):
        raise SnapshotError("malformed", "max_t is NaN")
    return EngineState(started, closed, newest_data, max_t, max_t_arrival, c[0:6], c[6:12],
                       c[12], c[13], c[14], drops, tuple(offenders), pending, late)


def _check_clock(state: EngineState, settings: Settings, n_keys: int) -> None:
    """The clock's values must be intervals the engine can hold: a crafted file (checksum and
    all) must not hand the engines an infinite or out-of-range time to convert."""
    def interval_ok(q: int) -> bool:
        return abs(q) <= MAX_INTERVAL

    if not (settings.emit_every > 0 and math.isfinite(settings.emit_every)):
        raise SnapshotError("malformed", "emit_every is not a positive number")
    if not state.started and n_keys:
        raise SnapshotError("malformed", "keys in an engine whose clock never started")
    if not interval_ok(state.closed) or not (state.newest_data == NO_INTERVAL
                                             or interval_ok(state.newest_data)):
        raise SnapshotError("malformed", "the closed tick or newest interval is out of range")
    if not (state.max_t == -math.inf or (math.isfinite(state.max_t)
                                         and abs(state.max_t / settings.emit_every)
                                         <= MAX_INTERVAL)):
        raise SnapshotError("malformed", "max_t is out of range")
    if not math.isfinite(state.max_t_arrival):
        raise SnapshotError("malformed", "max_t_arrival is not finite")


# ---- settings ------------------------------------------------------------------------------------


def quantile_settings(qs: tuple[float, ...], accuracy: float) -> tuple[tuple[float, ...], float]:
    """(quantiles, accuracy) as the snapshot holds them: ((), 0.0) when quantiles are off (the
    accuracy then shapes nothing)."""
    return (tuple(float(q) for q in qs), float(accuracy)) if qs else ((), 0.0)


def pending_of(aggregates) -> list[tuple[dict, tuple[float, ...]]]:
    """An engine's aggregates not yet returned, as EngineState.pending holds them."""
    return [({name: getattr(a, name) for name in AGGREGATE_FIELDS}, tuple(a.quantile_values))
            for a in aggregates]


def _describe(s: Settings) -> str:
    parts = [f"window={s.window:g}s", f"emit_every={s.emit_every:g}s",
             f"time={'event' if s.event else 'arrival'}"]
    if s.event:
        parts.append(f"allowed_lateness={s.allowed_lateness:g}s")
    parts.append(f"quantiles={','.join(f'{q:g}' for q in s.quantiles)}"
                 f" at accuracy {s.quantile_accuracy:g}" if s.quantiles else "quantiles=off")
    return ", ".join(parts)


def check_settings(made: Settings, engine: Settings) -> None:
    """Refuses a snapshot made with settings that shape the windows differently (window,
    emit_every, time, allowed_lateness in event time, quantiles). max_keys, key_ttl and the
    rest may change."""
    same = (made.window == engine.window and made.emit_every == engine.emit_every
            and made.panes == engine.panes and made.event == engine.event
            and made.quantiles == engine.quantiles
            and made.quantile_accuracy == engine.quantile_accuracy
            and (not made.event or (made.allowed_lateness == engine.allowed_lateness
                                    and made.lead == engine.lead)))
    if not same:
        raise SnapshotError("settings", f"made with {_describe(made)}; this engine has "
                                        f"{_describe(engine)}")
    if made.lead != engine.lead:
        raise SnapshotError("malformed", f"lead {made.lead} in arrival time")


def keep_mask(last_ts: list[float], max_keys: int) -> list[bool] | None:
    """Which keys a restore keeps when more than max_keys are in the snapshot: the most recently
    seen (largest last_ts), ties in file order. None: all fit."""
    if len(last_ts) <= max_keys:
        return None
    threshold = sorted(last_ts, reverse=True)[max_keys - 1]
    ties = max_keys - sum(1 for t in last_ts if t > threshold)
    keep = []
    for t in last_ts:
        if t > threshold:
            keep.append(True)
        elif t == threshold and ties > 0:
            keep.append(True)
            ties -= 1
        else:
            keep.append(False)
    return keep


def late_kept(state: EngineState, late_capacity: int) -> tuple[list[LateReading], int]:
    """The late readings a restore keeps under the engine's late_capacity (oldest first), and
    the new late_unrouted (the rest are counted there, as when the buffer is full)."""
    kept = state.late[:late_capacity]
    return kept, state.late_unrouted + len(state.late) - len(kept)
