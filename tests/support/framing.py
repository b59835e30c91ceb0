"""The frame of the formats we checksum (snapshots, partials: ``... | crc32``): a changed message
made to pass the frame checks again, so that the field checks are what sees the change."""

from __future__ import annotations

import struct
import zlib


def reseal(data: bytes | bytearray, length_at: int | None = None) -> bytes:
    """data with its length field (u64 at `length_at`; None: left as it is) set to its length
    and its crc32 (zlib's, of all but the last 4 bytes) made right again."""
    b = bytearray(data)
    if length_at is not None:
        struct.pack_into("<Q", b, length_at, len(b))
    struct.pack_into("<I", b, len(b) - 4, zlib.crc32(bytes(b[:-4])))
    return bytes(b)
