"""Result types and constants shared by the compiled reader, its pure-Python twin and the fallback.

Defined once here so ``_decode.decode(...) == _decode_py.decode(...)`` compares equal types.
The constants mirror ``includes/cbor_reader.h``; tests check that they agree.
"""

from typing import NamedTuple

#: A data item may be enclosed by at most this many arrays, maps and tags (TC_CBOR_MAX_DEPTH).
MAX_DEPTH = 256
#: A map read for a reading with more pairs goes to the fallback (TC_CBOR_MAX_READ_KEYS).
MAX_READ_KEYS = 32
#: Smallest encoded accepted reading (TC_MIN_READING_BYTES).
MIN_READING_BYTES = 12
#: Tag skipped natively when it is directly on the top-level item.
SELF_DESCRIBE_TAG = 55799

OK = "ok"
DECODE_ERROR = "decode_error"
#: Only returned by ``decode_native``: the payload is well-formed but cbor2 must decide.
FALLBACK = "fallback"


class Reading(NamedTuple):
    device: str
    sensor: str
    value: float
    unit: "str | None"
    seq: "int | None"
    t: "float | None" = None  # event time, seconds since the Unix epoch (docs/windows.md)


class Decoded(NamedTuple):
    status: str  # OK or DECODE_ERROR
    readings: "list[Reading]"
    schema_mismatch: int
    non_finite: int


def check_max_name_bytes(max_name_bytes: int) -> int:
    """The C API takes a uint32_t; both twins reject what it cannot hold the same way."""
    if isinstance(max_name_bytes, bool) or not isinstance(max_name_bytes, int):
        raise TypeError("max_name_bytes must be an int")
    if not 0 <= max_name_bytes <= 0xFFFFFFFF:
        raise ValueError("max_name_bytes must be in [0, 2**32 - 1]")
    return max_name_bytes
