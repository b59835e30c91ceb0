"""The capture file format, version 1: its byte layout, in one place (docs/capture.md).

Every writer and reader of the binary format goes through the structs and functions here; the
record encoders (``_encode.pyx`` and its twin ``_encode_py.py``) produce a block's two columns,
this module frames them.

A capture is one or more segment files ``FILE``, ``FILE.1``, ``FILE.2``, ... (``FILE`` the oldest,
the highest number the newest). Each segment is a segment header followed by blocks. All integers
are little-endian except inside the records, which are MQTT PUBLISH packets (big-endian, as on
the wire).

Segment header (32 bytes, then the metadata and its checksum)::

    0   8  magic      89 'T' 'C' 'C' 'A' 'P' 0D 0A
    8   2  version    1
    10  2  reserved   0
    12  4  segment    0 for FILE, k for FILE.k
    16  8  created    float64, unix seconds
    24  4  meta_len   bytes of metadata after the header (<= MAX_META)
    28  4  head_crc   crc32 of bytes 0..27
    32  .  metadata   UTF-8 JSON object (where the capture came from; informational)
    .   4  meta_crc   crc32 of the metadata

Block (24 bytes + body)::

    0   4  magic      'T' 'C' 'B' 'K'
    4   4  n_records  >= 1
    8   4  frames_len bytes of the records column (<= MAX_FRAMES)
    12  4  flags      bit 0 ("plain"): every record is QoS 0 without DUP or RETAIN, so the
                      records column is a stream of MQTT PUBLISH packets to send as it is;
                      other bits 0
    16  4  body_crc   crc32 of the body
    20  4  head_crc   crc32 of bytes 0..19
    24  .  body       n_records float64 arrival times, then frames_len bytes of records

A record is the MQTT PUBLISH packet the broker delivered, in 3.1.1 form and without its packet
identifier (identifiers belong to a connection; a replayer assigns its own): byte 0 is
``0x30 | DUP << 3 | QoS << 1 | RETAIN``, then the remaining length (MQTT variable byte integer),
the topic length (uint16, big-endian), the topic and the payload.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from typing import NamedTuple

SEGMENT_MAGIC = b"\x89TCCAP\r\n"
BLOCK_MAGIC = b"TCBK"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sHHIdII")
BLOCK_HEADER = struct.Struct("<4sIIIII")
assert SEGMENT_HEADER.size == 32 and BLOCK_HEADER.size == 24
#: Largest metadata a reader accepts (a writer writes a few hundred bytes).
MAX_META = 1 << 16
#: Largest records column a reader accepts; a block holds at least one record, so this also bounds
#: the largest payload a capture can hold (an MQTT packet is at most 256 MiB anyway).
MAX_FRAMES = 1 << 29
#: MQTT's largest remaining length (4 bytes of variable byte integer).
MAX_REMAINING = 268_435_455
#: Block flag: every record is QoS 0 without DUP or RETAIN (the column can be sent as it is).
BLOCK_PLAIN = 0x1
#: Smallest record: packet type, one byte of remaining length, the topic length.
MIN_RECORD = 4

_TS_LITTLE = sys.byteorder == "little"


class CaptureError(ValueError):
    """A capture that cannot be read: not a capture, a newer version, or corrupted bytes.

    ``path`` and ``offset`` (bytes from the start of that file; for text, ``line``) say where.
    A torn tail (the last block or line cut short, as a recorder killed mid-write leaves it) is
    not an error: readers report it and stop there.
    """

    def __init__(self, message: str, path: str = "", offset: int | None = None,
                 line: int | None = None) -> None:
        where = path
        if line is not None:
            where += f":{line}"
        elif offset is not None:
            where += f" at byte {offset}"
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.offset, self.line = path, offset, line


class TornTail(Exception):
    """Internal: the bytes end inside a block or header. Readers turn it into a report."""

    def __init__(self, why: str, offset: int) -> None:
        super().__init__(why)
        self.why, self.offset = why, offset


class Message(NamedTuple):
    """One captured message. ``ts``: arrival time (unix seconds); ``dup``: the broker set DUP."""

    ts: float
    topic: bytes
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True)
class SegmentHeader:
    version: int
    segment: int
    created: float
    meta: bytes

    @property
    def size(self) -> int:
        """Bytes from the start of the file to the first block."""
        return SEGMENT_HEADER.size + len(self.meta) + 4


def encode_segment_header(segment: int, created: float, meta: bytes) -> bytes:
    if len(meta) > MAX_META:
        raise ValueError(f"capture metadata of {len(meta)} bytes exceeds {MAX_META}")
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, VERSION, 0, segment, created, len(meta), 0)[:28]
    return b"".join((head, struct.pack("<I", zlib.crc32(head)), meta,
                     struct.pack("<I", zlib.crc32(meta))))


def decode_segment_header(head: bytes, read, path: str = "") -> SegmentHeader:
    """``head``: the first 32 bytes; ``read(n)`` returns the next n bytes (fewer at EOF)."""
    magic, version, reserved, segment, created, meta_len, crc = SEGMENT_HEADER.unpack(head)
    if magic != SEGMENT_MAGIC:
        raise CaptureError("not a telemetry-cy capture segment (bad magic)", path, 0)
    if version != VERSION:
        # before the checksum: a newer writer may have changed what follows the version
        raise CaptureError(f"capture format version {version}; this reader reads version "
                           f"{VERSION}", path, 8)
    if zlib.crc32(head[:28]) != crc:
        raise CaptureError("segment header checksum mismatch", path, 0)
    if reserved != 0 or meta_len > MAX_META:
        raise CaptureError("segment header fields out of range", path, 0)
    meta = read(meta_len + 4)
    if len(meta) < meta_len + 4:
        raise TornTail("segment header cut short", 0)
    if zlib.crc32(meta[:meta_len]) != struct.unpack("<I", meta[meta_len:])[0]:
        raise CaptureError("segment metadata checksum mismatch", path, SEGMENT_HEADER.size)
    return SegmentHeader(version, segment, created, meta[:meta_len])


def encode_block(n_records: int, ts_column: bytes, frames: bytes, plain: bool) -> bytes:
    """A whole block: header, arrival times, records (from a record encoder's ``take()``)."""
    if len(frames) > MAX_FRAMES:
        raise ValueError(f"a block's records column is limited to {MAX_FRAMES} bytes")
    crc = zlib.crc32(frames, zlib.crc32(ts_column))
    head = BLOCK_HEADER.pack(BLOCK_MAGIC, n_records, len(frames), BLOCK_PLAIN if plain else 0,
                             crc, 0)[:20]
    return b"".join((head, struct.pack("<I", zlib.crc32(head)), ts_column, frames))


@dataclass(frozen=True)
class BlockHeader:
    n_records: int
    frames_len: int
    plain: bool
    body_crc: int

    @property
    def body_len(self) -> int:
        return 8 * self.n_records + self.frames_len


def decode_block_header(head: bytes, path: str, offset: int) -> BlockHeader:
    magic, n, frames_len, flags, body_crc, head_crc = BLOCK_HEADER.unpack(head)
    if magic != BLOCK_MAGIC:
        raise CaptureError("no block starts here (bad magic)", path, offset)
    if zlib.crc32(head[:20]) != head_crc:
        raise CaptureError("block header checksum mismatch", path, offset)
    if n == 0 or frames_len > MAX_FRAMES or n > frames_len // MIN_RECORD or flags & ~BLOCK_PLAIN:
        raise CaptureError("block header fields out of range", path, offset)
    return BlockHeader(n, frames_len, bool(flags & BLOCK_PLAIN), body_crc)


@dataclass(frozen=True)
class Block:
    """One checked block: ``ts`` (n arrival times) and ``frames`` (the records column)."""

    ts: array
    frames: bytes
    plain: bool

    def __len__(self) -> int:
        return len(self.ts)

    def records(self, path: str = "", offset: int = 0) -> list[tuple[int, int, int, int, int]]:
        """(start, end, flags, topic_start, topic_end) per record, offsets into ``frames``
        (the payload is [topic_end, end)). Raises CaptureError unless the column holds exactly
        ``len(ts)`` well-formed records."""
        out = []
        buf, pos, end = self.frames, 0, len(self.frames)
        for _ in range(len(self.ts)):
            if end - pos < MIN_RECORD:
                raise CaptureError("records column ends inside a record", path, offset + pos)
            cmd = buf[pos]
            if cmd >> 4 != 3 or (cmd >> 1) & 3 == 3:
                raise CaptureError(f"not a PUBLISH record (first byte 0x{cmd:02x})", path,
                                   offset + pos)
            rl, p = 0, pos + 1
            for i in range(4):
                if p >= end:
                    raise CaptureError("records column ends inside a record", path, offset + pos)
                b = buf[p]
                p += 1
                rl |= (b & 0x7F) << (7 * i)
                if not b & 0x80:
                    break
            else:
                raise CaptureError("record length longer than 4 bytes", path, offset + pos)
            if rl < 2 or rl > end - p:
                raise CaptureError("record length out of range", path, offset + pos)
            topic_end = p + 2 + ((buf[p] << 8) | buf[p + 1])
            if topic_end > p + rl:
                raise CaptureError("topic longer than its record", path, offset + pos)
            out.append((pos, p + rl, cmd & 0x0F, p + 2, topic_end))
            pos = p + rl
        if pos != end:
            raise CaptureError("records column longer than its records", path, offset + pos)
        return out

    def messages(self, path: str = "", offset: int = 0) -> list[Message]:
        buf, ts = self.frames, self.ts
        return [Message(ts[i], buf[t0:t1], buf[t1:end], (f >> 1) & 3, bool(f & 1), bool(f & 8))
                for i, (_start, end, f, t0, t1) in enumerate(self.records(path, offset))]


def ts_column(raw: bytes) -> array:
    col = array("d")
    col.frombytes(raw)
    if not _TS_LITTLE:  # pragma: no cover - the format is little-endian; so are our targets
        col.byteswap()
    return col
