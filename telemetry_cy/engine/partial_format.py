"""The partial format (docs/scale-out.md): what a ``run --output partials`` instance sends a merge
worker. Pure Python; the writer and the reader, and the oracle of any compiled one.

One message is ``header | quantiles | instance id | body | crc32``. Its kind says what it holds:

* ``panes``: the closed panes of one interval, one per key with data, of the keys that hash to
  one partition. A pane is the snapshot's pane encoding (docs/state.md, "Keys section": the
  46-byte pane, then the open-pane times ``first_ts, last, last_ts``, then the sketch block when
  quantiles are on), with age 0. The times are always there: merging panes of several instances
  needs them to decide first and last.
* ``progress``: "every pane of an interval below ``interval`` has been sent to this partition".
* ``heartbeat``: progress repeated on a timer while the clock stands still (event time with no
  data), so that a merge worker tells a quiet instance from a dead one.
* ``leave``: the instance stops; it sends nothing after this (its progress is final).

The reader checks, in this order: empty, magic, version, length, checksum; then every field
(``malformed``); ``check_settings`` then compares the window settings (``settings``). Every
refusal is a PartialError naming its reason, never another exception.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from telemetry_cy.engine import snapshot_format as snap
from telemetry_cy.engine._engine_py import OPEN_PANE, PANE, PANE_KEY, _read_sketch, pane_record
from telemetry_cy.engine.rules import (
    DEFAULT_ALLOWED_LATENESS,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LATE_CAPACITY,
    DEFAULT_MAX_FUTURE,
    MAX_INTERVAL,
    MAX_QUANTILES,
    QUANTILE_ACCURACY_DEFAULT,
    check_config,
    check_event_config,
    check_quantiles,
)
from telemetry_cy.engine.sketch_py import QuantileSketch
from telemetry_cy.engine.snapshot_errors import SNAPSHOT_REASONS, SnapshotError

MAGIC = b"TCYPARTL"
VERSION = 1

KIND_PANES, KIND_PROGRESS, KIND_HEARTBEAT, KIND_LEAVE = 1, 2, 3, 4
KINDS = {KIND_PANES: "panes", KIND_PROGRESS: "progress", KIND_HEARTBEAT: "heartbeat",
         KIND_LEAVE: "leave"}

#: The progress of an instance whose clock has not started: it holds no pane, so it holds no
#: window back (its heartbeats say it is alive all the same)
NO_DATA = int(MAX_INTERVAL)

FLAG_EVENT = 1       # time="event"
FLAG_QUANTILES = 2   # every pane carries a sketch block

#: magic, version, kind, flags, length | window, emit_every, panes, lead, allowed_lateness,
#: quantile_accuracy | n_quantiles, instance id length | interval, seq | partition, partitions
HEADER = struct.Struct("<8sIHHQ" "ddIIdd" "II" "qQ" "II")
assert HEADER.size == 96
KEY = PANE_KEY   # device, sensor, unit lengths; 1 when the key has a unit
CRC = struct.Struct("<I")
_U32, _F64 = struct.Struct("<I"), struct.Struct("<d")
MAX_INSTANCE_BYTES = 255

#: Why a message was refused: the snapshot reader's words (the same checks in the same order).
PARTIAL_REASONS = SNAPSHOT_REASONS


class PartialError(ValueError):
    """A message that is not a sound partial. ``reason`` is one of PARTIAL_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in PARTIAL_REASONS:
            raise AssertionError(f"unknown partial reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class WindowSettings(NamedTuple):
    """The settings that shape panes: a merge worker takes only partials made with its own."""

    window: float
    emit_every: float
    panes: int
    event: bool
    lead: int                 # 0 in arrival time
    allowed_lateness: float   # 0.0 in arrival time
    quantiles: tuple          # ascending, () when off
    quantile_accuracy: float  # 0.0 when off


def window_settings(window: float, emit_every: float, time: str = "event",
                    allowed_lateness: float = DEFAULT_ALLOWED_LATENESS, quantiles=None,
                    quantile_accuracy: float = QUANTILE_ACCURACY_DEFAULT) -> WindowSettings:
    """The WindowSettings of an Engine built with these keyword arguments (the engine's own
    checks, so a setting the engine refuses raises the same ValueError)."""
    cfg = check_config(window, emit_every, 1, max(window, 1.0) * 2, 65536, 256)
    ev = check_event_config(time, allowed_lateness, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FUTURE,
                            DEFAULT_LATE_CAPACITY, cfg.emit_every, cfg.panes)
    qcfg = check_quantiles(quantiles, quantile_accuracy)
    qs, acc = snap.quantile_settings(tuple(sorted(qcfg.qs)), qcfg.accuracy)
    return WindowSettings(cfg.window, cfg.emit_every, cfg.panes, ev.event,
                          ev.lead if ev.event else 0, ev.allowed_lateness if ev.event else 0.0,
                          qs, acc)


@dataclass(frozen=True, slots=True)
class PanePartial:
    """One key's pane of one interval, with everything an exact merge needs."""

    device: str
    sensor: str
    unit: str | None
    count: int
    sum: float
    m2: float
    min: float
    max: float
    first: float
    first_ts: float
    last: float
    last_ts: float
    sketch: QuantileSketch | None


class Partial(NamedTuple):
    kind: int
    settings: WindowSettings
    instance: str
    seq: int          # per (instance, partition): 0, 1, 2, ... a gap is a lost message
    interval: int     # panes: the panes' interval; progress/heartbeat/leave: the first open one
    partition: int
    partitions: int
    panes: tuple[PanePartial, ...]


def partition_of(device: str, sensor: str, partitions: int) -> int:
    """The partition of a key: crc32 of ``device NUL sensor`` (UTF-8) modulo the count; every
    instance and worker computes the same."""
    return zlib.crc32(device.encode() + b"\0" + sensor.encode()) % partitions


# ---- writing -------------------------------------------------------------------------------------


def write(kind: int, settings: WindowSettings, instance: str, seq: int, interval: int,
          partition: int, partitions: int, panes=()) -> bytes:
    """One message. Raises ValueError for arguments the reader would refuse."""
    if kind != KIND_PANES and panes:
        raise ValueError("only a panes message holds panes")
    if settings.quantiles and any(p.sketch is None for p in panes):
        raise ValueError("quantiles on: every pane needs its sketch")
    records = b"".join(
        pane_record(p.device.encode(), p.sensor.encode(), p.unit, p.count, p.sum, p.m2, p.min,
                    p.max, p.first, p.first_ts, p.last, p.last_ts,
                    p.sketch if settings.quantiles else None)
        for p in panes)
    return write_records(kind, settings, instance, seq, interval, partition, partitions,
                         len(panes), records)


def write_records(kind: int, settings: WindowSettings, instance: str, seq: int, interval: int,
                  partition: int, partitions: int, n: int = 0, records: bytes = b"") -> bytes:
    """``write`` with the panes already encoded: `records` holds n pane records as
    ``_engine_py.pane_record`` writes them (an engine's ``take_closed_panes`` hands them out
    so). Raises ValueError for arguments the reader would refuse."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind}")
    if kind != KIND_PANES and (n or records):
        raise ValueError("only a panes message holds panes")
    inst = instance.encode("utf-8")
    if not 0 < len(inst) <= MAX_INSTANCE_BYTES:
        raise ValueError(f"instance id of {len(inst)} bytes (1 to {MAX_INSTANCE_BYTES})")
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} of {partitions}")
    s = settings
    flags = (FLAG_EVENT if s.event else 0) | (FLAG_QUANTILES if s.quantiles else 0)
    out = [b"", *(_F64.pack(q) for q in s.quantiles), inst]
    if kind == KIND_PANES:
        out += [_U32.pack(n), records]
    length = HEADER.size + sum(map(len, out)) + CRC.size
    out[0] = HEADER.pack(MAGIC, VERSION, kind, flags, length, s.window, s.emit_every, s.panes,
                         s.lead, s.allowed_lateness, s.quantile_accuracy, len(s.quantiles),
                         len(inst), interval, seq, partition, partitions)
    body = b"".join(out)
    return body + CRC.pack(zlib.crc32(body))


# ---- reading -------------------------------------------------------------------------------------


def _bad(what: str) -> PartialError:
    return PartialError("malformed", what)


def read(data) -> Partial:
    """Checks and decodes one message. Raises PartialError."""
    view = memoryview(data).cast("B")
    n = len(view)
    snap.check_frame(view, MAGIC, VERSION, HEADER.size, PartialError, "partial")
    (_, _, kind, flags, length, window, emit_every, panes, lead, lateness, q_acc, n_q, inst_len,
     interval, seq, partition, partitions) = HEADER.unpack_from(view, 0)
    snap.check_length_and_crc(view, length, PartialError, "message")
    if kind not in KINDS:
        raise _bad(f"unknown kind {kind}")
    if flags & ~(FLAG_EVENT | FLAG_QUANTILES):
        raise _bad(f"unknown flags {flags:#x}")
    if bool(n_q) != bool(flags & FLAG_QUANTILES) or n_q > MAX_QUANTILES:
        raise _bad(f"{n_q} quantiles with the quantiles flag "
                   f"{'set' if flags & FLAG_QUANTILES else 'clear'}")
    if not (math.isfinite(emit_every) and emit_every > 0 and panes >= 1 and math.isfinite(window)
            and abs(window / emit_every - panes) <= 1e-9 * panes
            and math.isfinite(lateness) and lateness >= 0):
        raise _bad("window, emit_every or allowed_lateness out of range")
    if not flags & FLAG_EVENT and (lead or lateness):
        raise _bad("lead or allowed_lateness in arrival time")
    if abs(interval) > MAX_INTERVAL or not 0 <= partition < partitions:
        raise _bad(f"interval {interval} or partition {partition} of {partitions} out of range")
    end = n - CRC.size
    pos = HEADER.size
    if end - pos < 8 * n_q + inst_len:
        raise _bad("the quantiles or instance id run past the message")
    qs = struct.unpack_from(f"<{n_q}d", view, pos)
    pos += 8 * n_q
    if not all(0.0 < q < 1.0 for q in qs) or list(qs) != sorted(set(qs)):
        raise _bad(f"quantiles {qs} are not ascending values in (0, 1)")
    if n_q and not (0.0 < q_acc < 1.0):
        raise _bad(f"quantile accuracy {q_acc}")
    if not n_q and q_acc != 0.0:
        raise _bad("a quantile accuracy without quantiles")
    if not 0 < inst_len <= MAX_INSTANCE_BYTES:
        raise _bad(f"instance id of {inst_len} bytes")
    instance = _text(view, pos, inst_len, "instance id")
    pos += inst_len
    settings = WindowSettings(window, emit_every, panes, bool(flags & FLAG_EVENT), lead,
                              lateness, tuple(qs), q_acc)
    out: list[PanePartial] = []
    if kind == KIND_PANES:
        out, pos = _read_panes(view, pos, end, settings, interval)
    if pos != end:
        raise _bad(f"{end - pos} bytes after the last field")
    return Partial(kind, settings, instance, seq, interval, partition, partitions, tuple(out))


def _text(view: memoryview, pos: int, n: int, what: str) -> str:
    try:
        return bytes(view[pos:pos + n]).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"{what} is not UTF-8") from None


def _read_panes(view: memoryview, pos: int, end: int, settings: WindowSettings,
                interval: int) -> tuple[list[PanePartial], int]:
    if end - pos < _U32.size:
        raise _bad("the pane count runs past the message")
    count_keys = _U32.unpack_from(view, pos)[0]
    pos += _U32.size
    # a pane holds readings of its interval only: their times lie in [lo, hi)
    lo, hi = interval * settings.emit_every, (interval + 1) * settings.emit_every
    alpha = settings.quantile_accuracy if settings.quantiles else None
    seen = set()
    out = []
    for _ in range(count_keys):
        if end - pos < KEY.size:
            raise _bad("a key runs past the message")
        dlen, slen, ulen, has_unit = KEY.unpack_from(view, pos)
        pos += KEY.size
        if has_unit > 1 or (ulen and not has_unit) or not dlen or not slen:
            raise _bad("a key's names or unit flag are malformed")
        if end - pos < dlen + slen + ulen + PANE.size + OPEN_PANE.size:
            raise _bad("a key runs past the message")
        device = _text(view, pos, dlen, "a device")
        sensor = _text(view, pos + dlen, slen, "a sensor")
        unit = _text(view, pos + dlen + slen, ulen, "a unit") if has_unit else None
        pos += dlen + slen + ulen
        if (device, sensor) in seen:
            raise _bad(f"key {device}/{sensor} twice in one message")
        seen.add((device, sensor))
        age, count, total, m2, mn, mx, first = PANE.unpack_from(view, pos)
        pos += PANE.size
        first_ts, last, last_ts = OPEN_PANE.unpack_from(view, pos)
        pos += OPEN_PANE.size
        values = (total, m2, mn, mx, first, first_ts, last, last_ts)
        if age != 0 or count == 0 or not all(map(math.isfinite, values)):
            raise _bad("a pane with an age, no reading, or a value that is not finite")
        if not (m2 >= 0.0 and mn <= first <= mx and mn <= last <= mx
                and lo <= first_ts <= last_ts < hi):
            raise _bad("a pane's statistics or times are inconsistent")
        sketch = None
        if alpha is not None:
            try:
                sketch, pos = _read_sketch(view, pos, end, count, alpha)
            except SnapshotError as exc:
                raise _bad(str(exc)) from None
        out.append(PanePartial(device, sensor, unit, count, total, m2, mn, mx, first, first_ts,
                               last, last_ts, sketch))
    return out, pos


def check_settings(made: WindowSettings, merger: WindowSettings) -> None:
    """Refuses a partial made with settings that shape panes differently."""
    if made != merger:
        raise PartialError("settings", f"made with {made}; this merge worker has {merger}")
