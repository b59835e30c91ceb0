"""Reads the blocks of binary capture segments (docs/capture.md), checking every checksum.

Corruption (bad magic, a checksum mismatch, fields out of range, records that do not add up) is a
``CaptureError`` naming the file and byte offset. A torn tail, a header or block cut short by the
end of the file as a recorder killed mid-write leaves it, is not an error: the blocks before it are
returned and the tail is reported in ``torn``.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from telemetry_cy.capture.format import (
    BLOCK_HEADER,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    Block,
    CaptureError,
    Message,
    SegmentHeader,
    TornTail,
    decode_block_header,
    decode_segment_header,
    ts_column,
)
from telemetry_cy.capture.writer import segment_path


@dataclass(frozen=True)
class Torn:
    """A file that ends inside a header or block: ``offset`` is where that piece starts, ``size``
    the file's size; the bytes from ``offset`` on were not read."""

    path: str
    offset: int
    size: int
    why: str

    def __str__(self) -> str:
        return (f"{self.path}: torn tail at byte {self.offset} ({self.why}); the last "
                f"{self.size - self.offset} bytes were skipped")


@dataclass(frozen=True)
class PlacedBlock:
    """A block and where it is: its file and the byte offset of its header there."""

    path: Path
    offset: int
    block: Block

    @property
    def frames_offset(self) -> int:
        """Where the block's records column starts in its file (for error messages)."""
        return self.offset + BLOCK_HEADER.size + 8 * len(self.block)

    def messages(self) -> list[Message]:
        return self.block.messages(str(self.path), self.frames_offset)


def _read(f: BinaryIO, n: int) -> bytes:
    return f.read(n) or b""


class SegmentFile:
    """One segment file: ``header`` (None when the file ends inside it) and its ``blocks()``."""

    def __init__(self, f: BinaryIO, path: str, torn: list[Torn]) -> None:
        self.f, self.path, self.torn = f, path, torn
        self.size = os.fstat(f.fileno()).st_size
        self.header: SegmentHeader | None = None
        head = _read(f, SEGMENT_HEADER.size)
        if len(head) < SEGMENT_HEADER.size:
            if not SEGMENT_MAGIC.startswith(head[:len(SEGMENT_MAGIC)]):
                raise CaptureError("not a telemetry-cy capture segment (bad magic)", path, 0)
            torn.append(Torn(path, 0, self.size, "segment header cut short"))
            return
        try:
            self.header = decode_segment_header(head, lambda n: _read(f, n), path)
        except TornTail as t:
            torn.append(Torn(path, t.offset, self.size, t.why))

    def blocks(self) -> Iterator[tuple[int, Block]]:
        """(offset, block) for every whole block, in order."""
        if self.header is None:
            return
        f, path, size = self.f, self.path, self.size
        offset = self.header.size
        while True:
            head = _read(f, BLOCK_HEADER.size)
            if not head:
                return
            if len(head) < BLOCK_HEADER.size:
                self.torn.append(Torn(path, offset, size, "block header cut short"))
                return
            h = decode_block_header(head, path, offset)
            # compared with the size first: a torn block must not make us allocate its length
            body = _read(f, h.body_len) if h.body_len <= size - offset - len(head) else b""
            if len(body) < h.body_len:
                self.torn.append(Torn(path, offset, size, "block cut short"))
                return
            if zlib.crc32(body) != h.body_crc:
                raise CaptureError("block checksum mismatch", path, offset)
            ts_end = 8 * h.n_records
            yield offset, Block(ts_column(body[:ts_end]), body[ts_end:], h.plain)
            offset += len(head) + h.body_len


def read_blocks(first: str | os.PathLike, torn: list[Torn]) -> Iterator[PlacedBlock]:
    """The blocks of ``first`` and of the segments after it (``FILE.1``, ``FILE.2``, ... while
    they exist), in order. ``first`` may be a later segment ``FILE.k``: reading starts there."""
    first = Path(first)
    base, index, path = first, 0, first
    while True:
        with open(path, "rb") as f:
            seg = SegmentFile(f, str(path), torn)
            if seg.header is not None:
                number = seg.header.segment
                if path == first and number:
                    suffix = f".{number}"
                    if not first.name.endswith(suffix):
                        raise CaptureError(f"segment {number} under a name that does not end in "
                                           f"{suffix}", str(path), 12)
                    base, index = first.with_name(first.name[:-len(suffix)]), number
                elif number != index:
                    raise CaptureError(f"segment number {number}, expected {index}", str(path), 12)
            for offset, block in seg.blocks():
                yield PlacedBlock(path, offset, block)
        index += 1
        path = segment_path(base, index)
        if not path.exists():
            return
