"""Writes capture blocks to segment files, rotating by size and by age (docs/capture.md).

Segments: ``FILE`` first, then ``FILE.1``, ``FILE.2``, ...; the highest number is the newest. A
segment is never renamed or reopened once closed, so a reader may read the closed ones while the
recorder writes the newest.

Every block goes to the file with one ``write`` per attempt; a block either lands whole or, when
the disk is full, the segment is cut back to the block's start, so what was written before stays a
complete, readable capture (``DiskFull`` says where it stopped).

Ownership: a writer belongs to one thread (the recorder's writer thread).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from telemetry_cy.capture.format import encode_block, encode_segment_header

#: errno values that mean "no room": the disk, the user's quota, or the file size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(OSError):
    """No room for the next block (ENOSPC, EDQUOT or EFBIG); the capture ends before it."""


def segment_path(base: str | os.PathLike, index: int) -> Path:
    """``FILE`` for segment 0, ``FILE.<index>`` after it."""
    base = Path(base)
    return base if index == 0 else base.with_name(f"{base.name}.{index}")


def existing_segments(base: str | os.PathLike) -> list[Path]:
    """The segment files of ``base`` that exist, in order, up to the first gap."""
    out: list[Path] = []
    while (p := segment_path(base, len(out))).exists():
        out.append(p)
    return out


class CaptureWriter:
    """Appends blocks to ``base`` (segment 0), ``base.1``, ...

    ``rotate_bytes``: start a new segment before a block would take the current one past this
    size (a segment always holds at least one block, so a single larger block makes a larger
    segment). ``rotate_seconds``: start a new segment once the current one is that old
    (checked at each block and by ``rotate_if_due``). ``meta``: a JSON-able dict written into every
    segment header. ``overwrite``: remove an existing capture of that name first; without it an
    existing ``base`` is an error (a reader would chain old and new segments).
    """

    def __init__(self, base: str | os.PathLike, *, rotate_bytes: int = 0,
                 rotate_seconds: float = 0.0, meta: dict | None = None,
                 overwrite: bool = False, clock: Callable[[], float] = time.time) -> None:
        if rotate_bytes < 0 or rotate_seconds < 0:
            raise ValueError("rotate_bytes and rotate_seconds must be >= 0 (0: no rotation)")
        self.base = Path(base)
        self.rotate_bytes = int(rotate_bytes)
        self.rotate_seconds = float(rotate_seconds)
        self.clock = clock
        self._meta = json.dumps(meta or {}, separators=(",", ":"), sort_keys=True).encode()
        old = existing_segments(self.base)
        for p in old:
            if not p.is_file() or p.is_symlink():
                raise FileExistsError(errno.EEXIST, f"{p} exists and is not a regular file",
                                      str(p))
        if old and not overwrite:
            raise FileExistsError(
                errno.EEXIST, f"{self.base} exists (a capture of {len(old)} segment(s)); "
                "remove it, pick another name, or overwrite it", str(self.base))
        for p in old:
            p.unlink()
        # segment files left beyond a gap would never be read; they are not ours to remove
        self.segment = -1
        self.fd = -1
        self.size = 0            # bytes in the current segment
        self.opened_at = 0.0
        self.blocks_in_segment = 0
        self.blocks = self.records = self.bytes = 0
        self._open_next()

    @property
    def path(self) -> Path:
        """The segment being written."""
        return segment_path(self.base, self.segment)

    def _open_next(self) -> None:
        index = self.segment + 1
        path = segment_path(self.base, index)
        now = self.clock()
        head = encode_segment_header(index, now, self._meta)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            self._write_all(fd, head)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)   # a segment without a whole header is no segment
            if exc.errno in NO_ROOM:
                raise DiskFull(exc.errno, f"no room for a new segment {path}: {exc.strerror}",
                               str(path)) from None
            raise
        if self.fd >= 0:
            self._close_fd()
        self.fd, self.segment, self.size = fd, index, len(head)
        self.opened_at = now
        self.blocks_in_segment = 0

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def _due(self, next_block: int) -> bool:
        if not self.blocks_in_segment:
            return False
        if self.rotate_bytes and self.size + next_block > self.rotate_bytes:
            return True
        return bool(self.rotate_seconds) and self.clock() - self.opened_at >= self.rotate_seconds

    def rotate_if_due(self) -> bool:
        """Starts a new segment when the current one has reached its age (idle recorders call
        this now and then, so a quiet feed still gets its segments closed in time)."""
        if self._due(0):
            self._open_next()
            return True
        return False

    def write_block(self, n_records: int, ts_column: bytes, frames: bytes, plain: bool) -> None:
        """Appends one block (the columns from a record encoder's ``take()``). Raises DiskFull
        (the segment cut back to its last whole block) when there is no room."""
        block = encode_block(n_records, ts_column, frames, plain)
        if self._due(len(block)):
            self._open_next()
        try:
            self._write_all(self.fd, block)
        except OSError as exc:
            # whatever part of the block landed goes again: the segment ends at a whole block
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass   # the reader reports the torn tail instead
            if exc.errno in NO_ROOM:
                raise DiskFull(exc.errno, f"no room in {self.path}: {exc.strerror}",
                               str(self.path)) from None
            raise
        self.size += len(block)
        self.blocks_in_segment += 1
        self.blocks += 1
        self.records += n_records
        self.bytes += len(block)

    def _close_fd(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError:
            pass   # fsync is for durability across a crash; the data is written either way
        os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            self._close_fd()

    def remove_if_empty(self) -> bool:
        """After close(): removes a capture that holds no block (its one segment header)."""
        if self.blocks or self.segment != 0 or self.fd >= 0:
            return False
        self.path.unlink(missing_ok=True)
        return True

    def stats(self) -> dict:
        return {"segments": self.segment + 1, "blocks": self.blocks, "records": self.records,
                "bytes": self.bytes, "path": str(self.path)}
