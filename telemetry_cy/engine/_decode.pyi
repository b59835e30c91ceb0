"""Stub of the compiled CBOR payload reader; the pure twin ``_decode_py`` has the same API."""

from typing import Literal

from telemetry_cy.engine.decode_types import Decoded as Decoded
from telemetry_cy.engine.decode_types import Reading as Reading

__all__ = [
    "MAX_DEPTH",
    "MAX_READ_KEYS",
    "MIN_READING_BYTES",
    "Decoded",
    "Reading",
    "decode",
    "decode_native",
]

MAX_DEPTH: int
MAX_READ_KEYS: int
MIN_READING_BYTES: int
C_MAX_DEPTH: int
C_MAX_READ_KEYS: int
C_MIN_READING_BYTES: int

def decode(payload: bytes | bytearray | memoryview, max_name_bytes: int = 256) -> Decoded: ...
def decode_native(
    payload: bytes | bytearray | memoryview, max_name_bytes: int = 256
) -> Literal["ok", "decode_error", "fallback"]: ...
def _decode_with_cap(payload: bytes, cap: int) -> tuple[int, int]: ...
