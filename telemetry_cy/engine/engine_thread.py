"""Thread [2] of the pipeline: owns the Engine, drains the ingest ring, runs the aligned ticks.

Ownership: the Engine and everything in it belong to this thread alone. Other threads see its
counters only through `stats()`, a snapshot this thread publishes (a dict swapped in whole, so a
reader never sees a half-updated one). Aggregates leave through `emit(aggregates, now)`, called
on this thread; a bounded hand-off to the publisher is the emitter's business (it must not block).

For metrics and health (telemetry_cy/service/metrics.py): each snapshot carries ``heartbeat``, the
``time.monotonic()`` of the loop iteration that published it (snapshots are published every
SNAPSHOT_EVERY_S from inside the loop, busy or idle, so an old heartbeat means the loop is stuck),
and ``on_tick(seconds)``, if given, is called on this thread after each tick with its duration
(engine tick, snapshot, hand-off) -- once per emit_every, never per message.

With ``checkpoints`` (service/checkpoints.py: ``due(mono)`` and ``submit(bytes, seconds)``), this
thread takes an engine snapshot whenever one is due and once more when it stops, after the final
tick (so the open interval is in it), and hands the bytes to the writer thread: the engine is
only ever read by the thread that owns it, and the disk is never waited on here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

#: No spinning in Python (it cost the GIL, futex and clock calls: the perf rig measured 0.27
#: CPU-s per 100k messages at 200k msg/s with 200 spins, 0.10 with none): the engine's run_ring
#: parks after the first short batch, and the park polls the ring briefly, in C without the GIL,
#: only when the last wait was short (ByteRing.park).
#: A clock tick at T waits until the clock reads T + TICK_LAG_S. The network thread stamps a whole
#: socket read with one clock reading before it parses and commits the records; the lag (far
#: longer than a read takes to parse) lets every record stamped before T reach the ring, and the
#: engine drains the ring before it ticks, so no record stamped before T is found `late`.
TICK_LAG_S = 0.05
#: Longest run_ring call: bounds how late a tick (on a clock that jumps), a stats snapshot or a
#: due checkpoint is noticed. A stop request wakes the ring and is noticed at once.
MAX_PARK_S = 0.1
SNAPSHOT_EVERY_S = 0.25


class EngineThread(threading.Thread):
    def __init__(self, engine, ring, emit: Callable[[list, float], None],
                 clock: Callable[[], float] = time.time, batch_records: int = 8192,
                 name: str = "telemetry-cy-engine",
                 on_tick: Callable[[float], None] | None = None,
                 emit_late: Callable[[list], None] | None = None, checkpoints=None,
                 after_tick: Callable[[], None] | None = None):
        super().__init__(name=name, daemon=True)
        self.engine = engine
        self.ring = ring
        self.emit = emit
        self.clock = clock
        self.batch_records = batch_records
        self.on_tick = on_tick
        # event time: the late readings the engine kept (Engine.take_late) leave here, at each
        # tick, after the tick's aggregates (docs/windows.md, "Event time")
        self.emit_late = emit_late
        self.checkpoints = checkpoints
        # output partials: turns the panes the tick closed into messages (docs/scale-out.md)
        self.after_tick = after_tick
        self.last_tick_seconds = 0.0
        self._stop_requested = threading.Event()
        self._snapshot: dict = {}
        self.open_readings = 0  # set once, when the thread stops
        self.error: BaseException | None = None

    @property
    def parks(self) -> int:
        """How often this thread parked on the ring so far (the ring counts its consumer's)."""
        return self.ring.parks

    def _next_tick(self, now: float) -> float:
        every = self.engine.emit_every
        return (math.floor(now / every) + 1) * every

    def run(self) -> None:
        ring, drain, run_ring = self.ring, self.engine.drain, self.engine.run_ring
        next_tick = self._next_tick(self.clock())
        next_snapshot = 0.0
        try:
            while not self._stop_requested.is_set():
                now = self.clock() - TICK_LAG_S
                if now >= next_tick:
                    self._drain_all()
                    self._tick(now)
                    next_tick = self._next_tick(now)
                mono = time.monotonic()
                if mono >= next_snapshot:
                    self._publish_stats(mono)
                    next_snapshot = mono + SNAPSHOT_EVERY_S
                if self.checkpoints is not None and self.checkpoints.due(mono):
                    self._checkpoint()
                # Drain, park, drain ... in the engine (compiled: in C, parked without the GIL)
                # until the tick is due or MAX_PARK_S passed (stats and checkpoints are looked at
                # then) or stop() woke the ring: one Python turn per return, not one per park.
                # Each park arms the doorbell before it looks at the ring (tc_doorbell.h), so no
                # record waits for the deadline. While parked, the compiled engine is lent to the
                # network thread, which at moderate rates drains a turn's few records into it
                # itself instead of waking this thread (includes/tc_park.h): this thread then
                # wakes for its own deadlines and for stop().
                run_ring(ring, min(max(next_tick - now, 0.0), MAX_PARK_S), self.batch_records)
            # stop: what reached the ring is processed, then the windows that have closed
            while drain(ring, self.batch_records):
                pass
            self._tick(self.clock())
            # what no tick will ever cover now: counted, so a stop hides nothing it accepted
            self.open_readings = self.engine.open_readings()
            if self.checkpoints is not None:
                self._checkpoint()   # the final one: the open interval survives the restart
        except BaseException as exc:  # the owner watches .error and shuts the pipeline down
            self.error = exc
        finally:
            self._publish_stats()

    def _drain_all(self) -> None:
        """Processes what the ring holds now (bounded: at most one ring's worth of records, so a
        producer that never pauses cannot hold a tick back)."""
        most = self.ring.capacity // 32 // self.batch_records + 2  # 32 B: the smallest record
        for _ in range(most):
            if self.engine.drain(self.ring, self.batch_records) < self.batch_records:
                return

    def _tick(self, now: float) -> None:
        started = time.perf_counter()
        aggregates = self.engine.tick(now)
        if aggregates:
            # the snapshot goes out before the hand-off: a reader that sees an aggregate
            # published (or dropped) downstream then sees it counted here too
            self._publish_stats()
            self.emit(aggregates, now)
        if self.emit_late is not None:
            late = self.engine.take_late()
            if late:
                self.emit_late(late)
        if self.after_tick is not None:
            self.after_tick()
        self.last_tick_seconds = elapsed = time.perf_counter() - started
        if self.on_tick is not None:
            self.on_tick(elapsed)

    def _checkpoint(self) -> None:
        started = time.perf_counter()
        data = self.engine.snapshot()
        self.checkpoints.submit(data, time.perf_counter() - started)

    def _publish_stats(self, mono: float | None = None) -> None:
        stats = self.engine.stats()
        stats["parks"] = self.parks
        # drains the network thread ran for this thread while it was parked (tc_park.h)
        stats["lends"] = self.ring.lends
        stats["open_readings"] = self.open_readings
        stats["ring_used_bytes"] = self.ring.used_bytes
        stats["heartbeat"] = time.monotonic() if mono is None else mono
        self._snapshot = stats

    def stats(self) -> dict:
        """The latest snapshot published by the engine thread (at most ~0.25 s old)."""
        return dict(self._snapshot)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Asks the thread to drain the ring, close due windows and exit; waits for it."""
        self._stop_requested.set()
        # A parked thread wakes now, not at the end of its park: the ring's wake() is a kick of
        # the doorbell that the park cannot miss (tc_doorbell.h), set after the flag above.
        self.ring.wake()
        if self.is_alive():
            self.join(timeout)
