"""The cbor2 path for payloads the native reader hands back as FALLBACK, and the per-reading rules.

``check_element`` is the one implementation of the reading-level rules in Python: the pure twin
(``_decode_py``) feeds it the fields it read from the bytes, ``decode_with_cbor2`` feeds it what
cbor2 built. The C reader applies the same rules inline (``tc_read_reading`` in
``includes/cbor_reader.h``). The rules themselves are in the docstring of ``_decode_py``.

cbor2 is stricter than the native reader in places the native reader never looks at, and those
differences only show on payloads that reach the fallback: cbor2 rejects duplicate keys in *any*
map (the native reader checks only maps read for a reading) and rejects tags whose content does
not fit the tag's meaning (e.g. tag 2 on a text string, tag 29 with no shared value, tag 0 with a
bad date), even inside ignored values. Such a payload is decode_error on the fallback path.
"""

from __future__ import annotations

import datetime
import io
import math
from collections.abc import Mapping, Sequence
from typing import cast

import cbor2

from telemetry_cy.engine.decode_types import (
    DECODE_ERROR,
    MAX_DEPTH,
    OK,
    Decoded,
    Reading,
    check_max_name_bytes,
)

SCHEMA_MISMATCH = "schema_mismatch"
NON_FINITE = "non_finite"

_ABSENT = object()
_UINT64_MAX = (1 << 64) - 1


def _name_ok(name: object, max_name_bytes: int, allow_empty: bool) -> bool:
    if not isinstance(name, str):
        return False
    try:
        # Strict UTF-8: text that was not valid UTF-8 on the wire was decoded with
        # 'surrogateescape', so it holds lone surrogates and cannot be encoded back.
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return (allow_empty or size > 0) and size <= max_name_bytes


def check_element(elem: object, max_name_bytes: int) -> Reading | str:
    """Applies the reading-level rules to one element.

    Returns a ``Reading`` or the reason (``SCHEMA_MISMATCH`` / ``NON_FINITE``). ``elem`` is a map
    of key -> decoded value; keys other than the six text keys are ignored.
    """
    if not isinstance(elem, Mapping):
        return SCHEMA_MISMATCH
    device = elem.get("d", _ABSENT)
    sensor = elem.get("s", _ABSENT)
    value = elem.get("v", _ABSENT)
    unit = elem.get("u", _ABSENT)
    seq = elem.get("n", _ABSENT)
    t = elem.get("t", _ABSENT)
    if not _name_ok(device, max_name_bytes, False) or not _name_ok(sensor, max_name_bytes, False):
        return SCHEMA_MISMATCH
    # bool is an int subclass in Python, but CBOR true/false are simple values, not numbers.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return SCHEMA_MISMATCH
    if unit is not _ABSENT and not _name_ok(unit, max_name_bytes, True):
        return SCHEMA_MISMATCH
    if seq is not _ABSENT and (
        isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _UINT64_MAX
    ):
        return SCHEMA_MISMATCH
    event_time = None if t is _ABSENT else _event_time(t)
    if event_time is _BAD_TIME:
        return SCHEMA_MISMATCH
    try:
        fvalue = float(value)  # correctly rounded, like the C (double) conversion
    except OverflowError:  # an integer (bignum) beyond the double range
        return NON_FINITE
    if not math.isfinite(fvalue):
        return NON_FINITE
    return Reading(
        device,
        sensor,
        fvalue,
        None if unit is _ABSENT else unit,
        None if seq is _ABSENT else cast(int, seq),  # checked above: an int in [0, 2**64)
        cast("float | None", event_time),
    )


_BAD_TIME = object()


def _event_time(t: object) -> object:
    """`t` as float seconds, or _BAD_TIME. cbor2 turns tag 0 (RFC 3339 text) and tag 1 (epoch
    seconds) into a datetime: its timestamp() has microsecond resolution, while the native reader
    keeps tag 1's number as it is (docs/windows.md, "Event time")."""
    if isinstance(t, datetime.datetime):
        if t.tzinfo is None:  # RFC 3339 always has an offset; cbor2 may still leave none
            t = t.replace(tzinfo=datetime.timezone.utc)
        t = t.timestamp()
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        return _BAD_TIME
    try:
        ft = float(t)
    except OverflowError:  # a bignum beyond the double range
        return _BAD_TIME
    return ft if math.isfinite(ft) else _BAD_TIME


def collect(elements, max_name_bytes: int) -> Decoded:
    """Runs ``check_element`` over the elements of one well-formed payload."""
    readings: list[Reading] = []
    mismatch = non_finite = 0
    for elem in elements:
        r = check_element(elem, max_name_bytes)
        if isinstance(r, Reading):
            readings.append(r)
        elif r is SCHEMA_MISMATCH:
            mismatch += 1
        elif r is NON_FINITE:
            non_finite += 1
    return Decoded(OK, readings, mismatch, non_finite)


def decode_error_result() -> Decoded:
    """A fresh result each time: the readings list is the caller's to keep."""
    return Decoded(DECODE_ERROR, [], 0, 0)


def decode_with_cbor2(payload: bytes, max_name_bytes: int = 256) -> Decoded:
    """Decodes a payload with cbor2 and applies the reading rules.

    Used for what the native reader hands back as FALLBACK (non-text or chunked keys, more than
    32 pairs, tags or chunked strings in the read fields, tags on elements or on the top item).
    """
    check_max_name_bytes(max_name_bytes)
    payload = bytes(payload)
    fp = io.BytesIO(payload)
    try:
        # A CBORDecoder rather than cbor2.loads: loads silently ignores trailing bytes (6.3).
        obj = cbor2.CBORDecoder(
            fp,
            allow_duplicate_keys=False,
            str_errors="surrogateescape",
            max_depth=MAX_DEPTH,
        ).decode()
    except Exception:  # cbor2's tag decoders are not limited to CBORDecodeError on hostile input
        return decode_error_result()
    if fp.tell() != len(payload):
        return decode_error_result()
    elements: Sequence[object]
    if isinstance(obj, Mapping):
        elements = (obj,)
    elif isinstance(obj, Sequence) and not isinstance(obj, (str, bytes, bytearray)):
        elements = obj  # a list, or a tuple under tag 55799 (cbor2 then builds immutable values)
    else:
        elements = (obj,)  # neither map nor array: one reading, a schema mismatch
    return collect(elements, max_name_bytes)
