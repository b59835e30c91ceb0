"""A capture through an Engine, the way the daemon feeds it: ``replay(FILE, engine)``.

The daemon's engine thread drains the ingest ring (each record at its own arrival time, its topic
kept for the drop offenders) and ticks on the aligned clock. Here the capture's records go through
a private ring of the engine's own set and ``engine.drain``, in capture order, and the engine
ticks at each aligned time the capture's arrival times pass, so the engine sees what the live
daemon saw. At the end it ticks far enough past the last arrival to close every window that holds
a reading. The aggregates come back as columns (``Engine.tick_columns``): ``.to_pandas()``,
``.to_arrow()``, ``.to_polars()`` or ``.to_dicts()``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from telemetry_cy.backend import Backend, available, load
from telemetry_cy.capture.reader import Capture
from telemetry_cy.engine.column_buffers import Columns

#: Records drained per engine.drain call (the daemon's EngineThread default).
BATCH_RECORDS = 8192
_LARGEST_TOPIC = 0xFFFF


def _backend_of(engine: object) -> Backend:
    """The set an engine belongs to: the compiled engine drains only the compiled ring."""
    for name in available():
        if isinstance(engine, load(name).Engine):
            return load(name)
    raise TypeError(f"not a telemetry-cy Engine: {type(engine).__name__}")


def _ring_for(backend: Backend, engine) -> Any:
    """A ring that takes any record the engine does not drop as oversize anyway."""
    need = backend.ring.record_size(_LARGEST_TOPIC, engine.max_payload_bytes)
    capacity = 1 << 20
    while capacity // 2 - 8 < need:
        capacity *= 2
    return backend.ByteRing(capacity)


def closing_tick(last_ts: float, engine) -> int:
    """The aligned tick (as a count of emit_every) past every window that holds a reading that
    arrived at ``last_ts``."""
    every = engine.emit_every
    return math.floor(last_ts / every) + 1 + math.ceil(engine.window / every)


def replay(path: str | os.PathLike, engine) -> Columns:
    """Runs the capture at ``path`` (binary, or mosquitto_sub ``%U %t %x`` text) through
    ``engine`` with the capture's arrival times and returns every aggregate it emits, oldest
    first, up to the windows that hold the last reading, as columns (``Columns``: the rows
    ``engine.tick`` would have returned, in the same order). The engine keeps its counters
    (``engine.stats()``: drops by reason, ...). Raises CaptureError on a corrupted capture; a torn
    tail ends the replay there (``Capture(path).torn`` tells).
    """
    backend = _backend_of(engine)
    ring = _ring_for(backend, engine)
    every = engine.emit_every
    out: list[Columns] = []
    started = False
    next_k = 0            # the next live tick, at next_k * emit_every (the daemon's form)
    last_ts = 0.0

    def drain_all() -> None:
        while engine.drain(ring, BATCH_RECORDS):
            pass

    def ticks_until(ts: float) -> None:
        """The live ticks at the aligned times <= ts, each after what arrived before it (the
        live tick lag ensures that). Once every window is closed, a quiet stretch has nothing to
        emit: its ticks are jumped over to the last one, which expires keys as they would."""
        nonlocal next_k
        drain_all()
        due, closed = math.floor(ts / every), closing_tick(last_ts, engine)
        while next_k <= due:
            out.append(engine.tick_columns(next_k * every))
            next_k = due if closed <= next_k < due else next_k + 1

    for chunk in Capture(path).chunks():
        for msg in chunk.messages():
            ts = msg.ts
            if not started:
                started, next_k = True, math.floor(ts / every) + 1
            elif ts >= next_k * every:
                ticks_until(ts)
            try:
                if not ring.try_push(ts, msg.topic, msg.payload):
                    drain_all()
                    ring.try_push(ts, msg.topic, msg.payload)
            except ValueError:
                # larger than the ring takes: larger than the engine takes too; it counts it
                drain_all()
                engine.push(msg.payload, ts)
            last_ts = ts
    drain_all()
    if started:
        out.append(engine.tick_columns(closing_tick(last_ts, engine) * every))
    return Columns.concat(out)
