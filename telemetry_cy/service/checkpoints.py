"""Window state on disk: the state file, its checkpoint writer thread, the restore at start.

docs/state.md ("State files in the daemon"). The engine thread takes each snapshot itself (it
owns the engine) when ``due()`` says so, and hands the bytes over with ``submit()``, which never
blocks: a one-slot hand-off where the newest snapshot replaces one not yet written (counted as
``skipped``). The writer thread owns the file: temp file, write, fsync, rename over the state
file, fsync of the directory, so a crash at any point leaves the old file or the new one, whole.
At most two snapshots are in memory (the one being written and the one waiting).

Counters are a dict swapped in whole (``stats()``), read by the pipeline snapshot like every
other stage's.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry_cy.engine import snapshot_format
from telemetry_cy.engine.snapshot_errors import SnapshotError

log = logging.getLogger("telemetry_cy.service.checkpoints")

#: The state file in --state-dir; a refused one is moved aside as STATE_FILE.bad-<UTC time>.
STATE_FILE = "engine.state"


class StateFile:
    """The state file in a directory (created if missing, mode 0700)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        self.path = self.dir / STATE_FILE
        self._tmp = self.dir / f".{STATE_FILE}.tmp"

    def ensure_dir(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def read(self) -> tuple[bytes, float] | None:
        """(bytes, age in seconds by the file's modification time), or None without a file."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return data, max(0.0, time.time() - mtime)

    def write(self, data: bytes) -> None:
        """Replaces the state file atomically and durably."""
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        # the rename is only durable once the directory entry is
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def move_aside(self) -> Path:
        """Renames a refused state file out of the way; returns its new path."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.dir / f"{STATE_FILE}.bad-{stamp}"
        n = 1
        while target.exists():
            target = self.dir / f"{STATE_FILE}.bad-{stamp}.{n}"
            n += 1
        os.replace(self.path, target)
        return target


@dataclass(frozen=True)
class Restored:
    """What the start found in the state directory."""

    path: Path
    age_s: float
    keys_in_file: int
    engine: Any  # the restored Engine (of the backend the caller gave)


class BadState(Exception):
    """The state file was refused; ``reason`` is a SnapshotError reason."""

    def __init__(self, path: Path, error: SnapshotError) -> None:
        super().__init__(f"{path}: {error}")
        self.path = path
        self.reason = error.reason
        self.error = error


def restore(state: StateFile, engine_cls, settings: dict) -> Restored | None:
    """The engine held in the state file, built with `settings`; None when there is no file.
    Raises BadState for a file that cannot be restored (docs/state.md, "Reading").

    The file is mapped, not read: the restore reads it in place from the page cache, so a
    start does not first copy (and fault in) a second state-sized buffer."""
    try:
        f = open(state.path, "rb")
    except FileNotFoundError:
        return None
    with f:
        st = os.fstat(f.fileno())
        age = max(0.0, time.time() - st.st_mtime)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else None
    try:
        data = mapped if mapped is not None else b""
        try:
            keys_in_file = snapshot_format.open_snapshot(data).n_keys
            engine = engine_cls.from_snapshot(data, **settings)
        except SnapshotError as exc:
            raise BadState(state.path, exc) from None
    finally:
        if mapped is not None:
            try:
                mapped.close()
            except BufferError:  # a view still held somewhere: the collector closes it later
                pass
    return Restored(state.path, age, keys_in_file, engine)


class CheckpointWriter(threading.Thread):
    """Writes the snapshots the engine thread submits; one file, replaced atomically."""

    def __init__(self, state: StateFile, every: float, name: str = "telemetry-cy-state"):
        super().__init__(name=name, daemon=True)
        self.state = state
        self.every = every
        self._cond = threading.Condition()
        self._slot: tuple[bytes, float, float] | None = None  # data, snapshot seconds, taken at
        self._busy = False
        self._stopping = False
        self._next_due = time.monotonic() + every   # read and moved by the engine thread only
        self._written = self._failures = self._skipped = 0
        self._bad_files = 0
        self._last_ok_unix: float | None = None
        self._last_bytes = 0
        self._last_snapshot_s = self._last_write_s = 0.0
        self._last_error = ""
        self._stats: dict = {}
        self._publish()

    # ---- the engine thread's side ----

    def due(self, mono: float) -> bool:
        return mono >= self._next_due

    def submit(self, data: bytes, snapshot_seconds: float) -> None:
        """Hands a snapshot over; never blocks (a snapshot still waiting is replaced)."""
        self._next_due = time.monotonic() + self.every
        with self._cond:
            if self._slot is not None:
                self._skipped += 1
            self._slot = (data, snapshot_seconds, time.time())
            self._cond.notify()

    # ---- the writer thread ----

    def run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stopping:
                    self._cond.wait()
                if self._slot is None:
                    return
                data, snap_s, taken = self._slot
                self._slot = None
                self._busy = True
            started = time.perf_counter()
            try:
                self.state.write(data)
            except OSError as exc:
                with self._cond:
                    self._failures += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                log.error("checkpoint failed", extra={"fields": {
                    "file": str(self.state.path), "error": self._last_error}})
            else:
                with self._cond:
                    self._written += 1
                    self._last_ok_unix = taken
                    self._last_bytes = len(data)
                    self._last_snapshot_s = snap_s
                    self._last_write_s = time.perf_counter() - started
            finally:
                with self._cond:
                    self._busy = False
                    self._publish()
                    self._cond.notify_all()

    def stop(self, timeout: float = 30.0) -> bool:
        """Writes what is waiting (the final snapshot), then ends. True when all was written."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.is_alive():
            self.join(timeout)
        with self._cond:
            return self._slot is None and not self._busy

    # ---- counters ----

    def count_bad_file(self) -> None:
        with self._cond:
            self._bad_files += 1
            self._publish()

    def _publish(self) -> None:
        self._stats = {
            "checkpoints": self._written,
            "failures": self._failures,
            "skipped": self._skipped,
            "bad_state_files": self._bad_files,
            "last_unix": self._last_ok_unix,
            "last_bytes": self._last_bytes,
            "last_snapshot_seconds": self._last_snapshot_s,
            "last_write_seconds": self._last_write_s,
            "last_error": self._last_error,
        }

    def stats(self) -> dict:
        return dict(self._stats)
