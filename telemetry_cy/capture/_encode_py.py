"""Pure-Python twin of ``telemetry_cy.capture._encode``: ring records -> a capture block's columns.

Same blocks, byte for byte, as the compiled encoder for the same records
(``tests/test_capture_format.py`` holds both to one reference model); it is the oracle for the
compiled one and the encoder itself when the ring is a pure ring (``TELEMETRY_CY_PURE=1``). The
layout of the two columns is docs/capture.md's: float64 little-endian arrival times, and each
record as an MQTT PUBLISH packet without packet identifier.

Thread rule: an encoder belongs to the ring's consumer thread (it consumes records).
"""

from __future__ import annotations

import struct

from telemetry_cy.capture.format import MAX_REMAINING
from telemetry_cy.tools.mqtt_loadgen import remaining_length

_TS = struct.Struct("<d")
#: Topic lengths an MQTT PUBLISH can carry (a uint16 on the wire).
MAX_TOPIC = 0xFFFF


def record_bytes(topic: bytes, payload: bytes, flags: int) -> bytes:
    """One record: the PUBLISH packet with the header flags ``flags`` and no packet identifier."""
    rl = 2 + len(topic) + len(payload)
    return b"".join((bytes((0x30 | (flags & 0x0F),)), remaining_length(rl),
                     len(topic).to_bytes(2, "big"), topic, payload))


def _check_block_bytes(block_bytes: object) -> None:
    if not isinstance(block_bytes, int) or isinstance(block_bytes, bool) or not (
            64 <= block_bytes <= 1 << 28):
        raise ValueError(f"block_bytes must be an int in [64, 2**28], got {block_bytes!r}")


class BlockEncoder:
    """Moves ring records into one block until it holds about ``block_bytes``. See the .pyi."""

    def __init__(self, block_bytes: int = 1 << 18) -> None:
        _check_block_bytes(block_bytes)
        self.block_bytes = block_bytes
        self._ts: list[bytes] = []
        self._frames: list[bytes] = []
        self._nbytes = 0
        self._plain = True
        self._carry: list[tuple] = []   # popped, not yet in a block; the next is last
        self._full = False
        self.skipped = 0

    @property
    def n_records(self) -> int:
        return len(self._ts)

    @property
    def nbytes(self) -> int:
        """Bytes of the block's body so far (8 per arrival time + the records)."""
        return self._nbytes

    @property
    def full(self) -> bool:
        """The last fill() stopped at a record that does not fit: take() the block."""
        return self._full

    def _add(self, rec: tuple) -> bool:
        ts, topic, payload, flags = rec
        if (len(topic) > MAX_TOPIC or 2 + len(topic) + len(payload) > MAX_REMAINING
                or flags & 0x06 == 0x06):
            # not a PUBLISH MQTT could carry (QoS 3 included): cannot come from a broker
            self.skipped += 1
            return True
        frame = record_bytes(topic, payload, flags)
        size = 8 + len(frame)
        if self._ts and self._nbytes + size > self.block_bytes:
            self._full = True
            return False
        self._ts.append(_TS.pack(ts))
        self._frames.append(frame)
        self._nbytes += size
        if flags & 0x0F:
            self._plain = False
        return True

    def fill(self, ring, max_records: int = 1 << 16) -> int:
        """Moves up to ``max_records`` ring records into the block, in order; stops early when
        the next one would take the block past ``block_bytes`` (it goes into the next block).
        Returns the records moved (skipped ones included)."""
        if max_records < 0:
            raise ValueError("max_records must be >= 0")
        moved = 0
        while moved < max_records:
            if not self._carry:
                # The compiled encoder peeks and leaves a record that does not fit in the ring;
                # this one pops batches, so what did not fit waits here, in order.
                self._carry = ring.pop_many_flagged(min(max_records - moved, 256))[::-1]
                if not self._carry:
                    break
            if not self._add(self._carry[-1]):
                break
            self._carry.pop()
            moved += 1
        return moved

    def discard(self) -> int:
        """Drops the block and the records popped for the next one; returns how many."""
        n = len(self._ts) + len(self._carry)
        self.take()
        self._carry = []
        return n

    def take(self) -> tuple[int, bytes, bytes, bool] | None:
        """The block so far as ``(n_records, ts_column, records_column, plain)`` and a fresh
        block; None when empty."""
        if not self._ts:
            return None
        out = (len(self._ts), b"".join(self._ts), b"".join(self._frames), self._plain)
        self._ts, self._frames, self._nbytes, self._plain, self._full = [], [], 0, True, False
        return out
