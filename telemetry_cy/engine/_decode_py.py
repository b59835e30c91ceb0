"""Pure-Python twin of the fixed-schema CBOR payload reader (``includes/cbor_reader.h``).

This module is the reference (the oracle the compiled reader is tested against) and the decoder
that runs with ``TELEMETRY_CY_PURE=1``. It follows the C reader rule for rule and step for step;
change both together. The rules below are the specification.

Payload format
--------------
A payload is a CBOR map with text keys ``d`` (device, text), ``s`` (sensor, text), ``v`` (value:
any CBOR integer or float, half, single or double precision), optional ``u`` (unit, text),
``n`` (sequence, unsigned int) and ``t`` (event time in seconds since the Unix epoch: any CBOR
integer or float, or either inside tag 1; tag 0, RFC 3339 text, through cbor2); keys in any
order; unknown text keys are ignored (their values skipped). A payload may also be a CBOR array
of such maps, each element its own reading.
Definite and indefinite lengths both decode (maps, arrays, and strings inside ignored values).

Payload level: ``decode_error`` (no readings, counts 0)
-------------------------------------------------------
When the bytes are not one well-formed CBOR item: truncated; reserved additional info 28-30 (and
ai 31 on majors 0, 1, 6; a two-byte simple value below 32); a break in the wrong place; a chunk
of an indefinite string of the wrong major type or itself indefinite; trailing bytes after the
top-level item; a length or count larger than the bytes that remain (rejected at once); a data
item enclosed by more than ``MAX_DEPTH`` = 256 arrays, maps and tags (counted as cbor2 counts
``max_depth``: a definite empty container encloses nothing, an indefinite one counts, the top
55799 tag counts); or a duplicate key in a map that is read for a reading (the top-level map or an
element map of a top-level array). A malformed byte anywhere makes the whole payload
decode_error, so the payload is walked to its end before any reading counts. Text strings that
are not read (ignored keys and values) are not checked for UTF-8: that is validity, not
well-formedness, and cbor2 does not check it either (``str_errors='surrogateescape'``).

Reading level, per element (or the single top-level map)
--------------------------------------------------------
``schema_mismatch`` when the element is not a map; ``d`` or ``s`` is missing, not text, empty,
invalid UTF-8 (strict, as ``bytes.decode('utf-8')``) or longer than ``max_name_bytes`` bytes;
``v`` is missing or not a CBOR integer/float (true/false/null/undefined/simple values/strings/
arrays/maps are mismatches); ``u`` is present but not text, invalid UTF-8 or longer than
``max_name_bytes`` (an empty unit is allowed); ``n`` is present but not an unsigned integer
(major type 0); ``t`` is present but not a number (or tag 1 on a number, or a datetime cbor2
built from tag 0 or 1), or is NaN or +-Inf. ``non_finite`` when ``v`` is NaN or +-Inf; schema
checks come first, so a reading with both problems is a schema_mismatch. A top-level item that
is neither map nor array is one reading with schema_mismatch. An empty array is an OK payload
with no readings.

Values: major 0 -> the integer as a double (one correctly rounded conversion); major 1 -> -1-n
as a double, the +1 done in integers (n = 2**64-1 gives exactly -2**64); half floats per RFC 8949
Appendix D (subnormals included), single and double floats as they are.

Native reader and fallback
--------------------------
The native reader decodes definite and indefinite maps and arrays with definite text keys, and
skips anything inside ignored values (tags, bignums, nested containers, chunked strings) with
the same well-formedness checks. Tag 55799 directly on the top-level item is skipped natively.
It answers ``fallback`` (only after the whole payload proved well-formed: malformed always wins)
when a map read for a reading has a non-text key, a chunked text key, more than 32 pairs, or a
tag or chunked string (text or bytes) as the value of ``d``, ``s``, ``v``, ``u`` or ``n``, or as
the value of ``t`` anything but tag 1 on a number; or when
an element of a top-level array or the top-level item carries a tag (other than the one 55799).
Duplicate keys are found natively by comparing the raw bytes of all definite text keys of the map
read so far; once a map is known to go to the fallback, the rest of it is only skipped (cbor2
finds any remaining duplicate). ``decode`` resolves ``fallback`` with
``fallback.decode_with_cbor2``, which applies the same reading rules through
``fallback.check_element`` (shared with this module); there a bignum ``v`` is accepted, one beyond
the double range is ``non_finite``, ``n`` must be an int in [0, 2**64-1], and a ``t`` that cbor2
made a datetime (tags 0 and 1) is its ``timestamp()``, to the microsecond (a date cbor2 rejects
makes the payload decode_error, as for any tag it rejects).

API
---
``decode(payload, max_name_bytes=256) -> Decoded`` and ``decode_native(payload,
max_name_bytes=256) -> 'ok' | 'decode_error' | 'fallback'`` (the raw verdict of the native
reader, before any fallback), the same in ``telemetry_cy.engine._decode``.
"""

from __future__ import annotations

import math
import struct

from telemetry_cy.engine.cbor_fallback import (
    NON_FINITE,
    SCHEMA_MISMATCH,
    check_element,
    decode_error_result,
    decode_with_cbor2,
)
from telemetry_cy.engine.decode_types import (
    DECODE_ERROR,
    FALLBACK,
    MAX_DEPTH,
    MAX_READ_KEYS,
    MIN_READING_BYTES,
    OK,
    SELF_DESCRIBE_TAG,
    Decoded,
    Reading,
    check_max_name_bytes,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_READ_KEYS",
    "MIN_READING_BYTES",
    "Decoded",
    "Reading",
    "decode",
    "decode_native",
]

_BREAK = 0xFF
#: Stands for a field value of the wrong CBOR type; fails every check in check_element.
_WRONG_TYPE = object()
_UNPACK_F32 = struct.Struct(">f").unpack
_UNPACK_F64 = struct.Struct(">d").unpack


class _Malformed(Exception):
    """The payload is not one well-formed CBOR item (the C reader's `return 0`)."""


def _read_head(buf: bytes, pos: int) -> tuple[int, int, int, int]:
    """tc_cbor_read_head: returns (major, ai, arg, new_pos)."""
    if pos >= len(buf):
        raise _Malformed
    ib = buf[pos]
    pos += 1
    major = ib >> 5
    ai = ib & 31
    if ai < 24:
        return major, ai, ai, pos
    if ai <= 27:
        n = 1 << (ai - 24)
        if len(buf) - pos < n:
            raise _Malformed
        arg = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
        if major == 7 and ai == 24 and arg < 32:
            raise _Malformed
        return major, ai, arg, pos
    if ai == 31:
        if major <= 1 or major == 6:
            raise _Malformed
        return major, ai, 0, pos
    raise _Malformed


def _is_break(major: int, ai: int) -> bool:
    return major == 7 and ai == 31


def _advance(buf: bytes, pos: int, n: int) -> int:
    """tc_cur_skip."""
    if n > len(buf) - pos:
        raise _Malformed
    return pos + n


def _skip_chunks(buf: bytes, pos: int, major: int) -> int:
    """tc_cbor_skip_chunks."""
    while True:
        m, ai, arg, pos = _read_head(buf, pos)
        if _is_break(m, ai):
            return pos
        if m != major or ai == 31:
            raise _Malformed
        pos = _advance(buf, pos, arg)


def _skip(buf: bytes, pos: int, depth: int) -> int:
    """tc_cbor_skip: skips one data item enclosed by `depth` levels; returns the new position."""
    # one entry per open level: [items owed (a map owes 2 per pair), indefinite, is_map, odd]
    stack: list[list[int]] = []
    if depth > MAX_DEPTH:
        raise _Malformed
    while True:
        major, ai, arg, pos = _read_head(buf, pos)
        if major == 2 or major == 3:
            if ai == 31:
                pos = _skip_chunks(buf, pos, major)
            else:
                pos = _advance(buf, pos, arg)
        elif major == 4 or major == 5:
            is_map = 1 if major == 5 else 0
            if not (ai != 31 and arg == 0):  # a definite empty container is complete at once
                if ai != 31 and arg > ((len(buf) - pos) >> is_map):
                    raise _Malformed
                if depth + len(stack) >= MAX_DEPTH:
                    raise _Malformed
                stack.append([0 if ai == 31 else arg << is_map, ai == 31, is_map, 0])
                continue
        elif major == 6:
            if depth + len(stack) >= MAX_DEPTH:
                raise _Malformed
            stack.append([1, False, 0, 0])
            continue
        elif major == 7 and ai == 31:
            if not stack or not stack[-1][1] or stack[-1][3]:
                raise _Malformed
            stack.pop()
        # one item completed: charge it to the enclosing levels, closing those it fills
        while True:
            if not stack:
                return pos
            top = stack[-1]
            if top[1]:
                top[3] ^= top[2]
                break
            top[0] -= 1
            if top[0] != 0:
                break
            stack.pop()


def _half_to_float(half: int) -> float:
    """RFC 8949 Appendix D, as tc_half_to_double."""
    exp = (half >> 10) & 0x1F
    mant = half & 0x3FF
    if exp == 0:
        val = math.ldexp(mant, -24)
    elif exp != 31:
        val = math.ldexp(mant + 1024, exp - 25)
    else:
        val = math.inf if mant == 0 else math.nan
    return -val if half & 0x8000 else val


def _head_number(major: int, ai: int, arg: int) -> int | float | None:
    """tc_head_number: a number head's value (ints stay exact; check_element rounds once)."""
    if major == 0:
        return arg
    if major == 1:
        return -1 - arg
    if major == 7 and ai == 25:
        return _half_to_float(arg)
    if major == 7 and ai == 26:
        return _UNPACK_F32(arg.to_bytes(4, "big"))[0]
    if major == 7 and ai == 27:
        return _UNPACK_F64(arg.to_bytes(8, "big"))[0]
    return None


def _read_time(buf: bytes, pos: int, lvl: int) -> tuple[int, object, bool]:
    """tc_read_time_field: (new_pos, value or _WRONG_TYPE, fallback)."""
    start = pos
    major, ai, arg, pos = _read_head(buf, pos)
    fb = False
    if major == 6 and arg == 1:
        major, ai, arg, pos = _read_head(buf, pos)
        value = _head_number(major, ai, arg)
        if value is not None:
            return pos, value, False
        fb = True
    else:
        value = _head_number(major, ai, arg)
        if value is not None:
            return pos, value, False
        fb = _needs_fallback(major, ai)
    return _skip(buf, start, lvl), _WRONG_TYPE, fb


def _needs_fallback(major: int, ai: int) -> bool:
    """tc_needs_fallback: a tag, or a chunked string."""
    return major == 6 or ((major == 2 or major == 3) and ai == 31)


class _Out:
    """tc_decoded: OK readings are stored, mismatches only counted."""

    __slots__ = ("readings", "schema_mismatch", "non_finite")

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.schema_mismatch = 0
        self.non_finite = 0


def _read_reading(
    buf: bytes, pos: int, ai: int, arg: int, lvl: int, max_name_bytes: int, out: _Out
) -> tuple[int, bool]:
    """tc_read_reading: the map head (ai, arg) was just read; returns (new_pos, fallback)."""
    keys: list[bytes] = []
    fields: dict[str, object] = {}  # what check_element sees: the six keys, as decoded values
    indef = ai == 31
    pairs_left = arg
    pairs = 0
    map_fb = False
    if not indef and pairs_left > ((len(buf) - pos) >> 1):
        raise _Malformed
    while True:
        if indef:
            if pos < len(buf) and buf[pos] == _BREAK:
                pos += 1
                break
        else:
            if pairs_left == 0:
                break
            pairs_left -= 1
        pairs += 1
        if pairs > MAX_READ_KEYS:
            map_fb = True

        kstart = pos
        major, kai, karg, pos = _read_head(buf, pos)
        if map_fb or major != 3 or kai == 31:
            map_fb = True
            pos = _skip(buf, kstart, lvl)
            pos = _skip(buf, pos, lvl)
            continue
        kend = _advance(buf, pos, karg)
        key = buf[pos:kend]
        pos = kend
        if key in keys:  # raw bytes, all definite text keys of this map so far
            raise _Malformed
        keys.append(key)

        name = key.decode("latin-1") if len(key) == 1 else ""
        if name in ("d", "s", "u"):
            start = pos
            major, vai, varg, pos = _read_head(buf, pos)
            if major == 3 and vai != 31:
                end = _advance(buf, pos, varg)
                # validated (strictly) by check_element: invalid UTF-8 becomes lone surrogates
                fields[name] = buf[pos:end].decode("utf-8", "surrogateescape")
                pos = end
            else:
                if _needs_fallback(major, vai):
                    map_fb = True
                fields[name] = _WRONG_TYPE
                pos = _skip(buf, start, lvl)
        elif name == "v":
            start = pos
            major, vai, varg, pos = _read_head(buf, pos)
            if major == 0:
                fields["v"] = varg  # int; check_element converts once, correctly rounded
            elif major == 1:
                fields["v"] = -1 - varg  # exact in Python ints (-2**64 for n = 2**64-1)
            elif major == 7 and vai == 25:
                fields["v"] = _half_to_float(varg)
            elif major == 7 and vai == 26:
                fields["v"] = _UNPACK_F32(varg.to_bytes(4, "big"))[0]
            elif major == 7 and vai == 27:
                fields["v"] = _UNPACK_F64(varg.to_bytes(8, "big"))[0]
            else:
                if _needs_fallback(major, vai):
                    map_fb = True
                fields["v"] = _WRONG_TYPE
                pos = _skip(buf, start, lvl)
        elif name == "t":
            pos, t_value, t_fb = _read_time(buf, pos, lvl)
            fields["t"] = t_value
            map_fb = map_fb or t_fb
        elif name == "n":
            start = pos
            major, vai, varg, pos = _read_head(buf, pos)
            if major == 0:
                fields["n"] = varg
            else:
                if _needs_fallback(major, vai):
                    map_fb = True
                fields["n"] = _WRONG_TYPE
                pos = _skip(buf, start, lvl)
        else:
            pos = _skip(buf, pos, lvl)

    if map_fb:
        return pos, True
    r = check_element(fields, max_name_bytes)
    if isinstance(r, Reading):
        out.readings.append(r)
    elif r is SCHEMA_MISMATCH:
        out.schema_mismatch += 1
    elif r is NON_FINITE:
        out.non_finite += 1
    return pos, False


def _decode_payload(buf: bytes, max_name_bytes: int) -> tuple[str, _Out]:
    """tc_decode_payload: returns (verdict, out); out is empty unless the verdict is OK."""
    out = _Out()
    fb = False
    depth = 0
    try:
        start = 0
        major, ai, arg, pos = _read_head(buf, 0)
        if major == 6 and arg == SELF_DESCRIBE_TAG:
            depth = 1
            start = pos
            major, ai, arg, pos = _read_head(buf, pos)
        if major == 5:
            pos, fb = _read_reading(buf, pos, ai, arg, depth + 1, max_name_bytes, out)
        elif major == 4:
            indef = ai == 31
            left = arg
            if not indef and left > len(buf) - pos:
                raise _Malformed
            while True:
                if indef:
                    if pos < len(buf) and buf[pos] == _BREAK:
                        pos += 1
                        break
                else:
                    if left == 0:
                        break
                    left -= 1
                el = pos
                major, eai, earg, pos = _read_head(buf, pos)
                if major == 5:
                    pos, el_fb = _read_reading(
                        buf, pos, eai, earg, depth + 2, max_name_bytes, out
                    )
                    fb = fb or el_fb
                else:
                    if major == 6:
                        fb = True
                    else:
                        out.schema_mismatch += 1
                    pos = _skip(buf, el, depth + 1)
        else:
            if major == 6:
                fb = True
            else:
                out.schema_mismatch += 1
            pos = _skip(buf, start, depth)
        if pos != len(buf):
            raise _Malformed
    except _Malformed:
        return DECODE_ERROR, _Out()
    if fb:
        return FALLBACK, _Out()
    return OK, out


def decode_native(payload: bytes, max_name_bytes: int = 256) -> str:
    """The raw verdict of the native reader: 'ok', 'decode_error' or 'fallback'."""
    check_max_name_bytes(max_name_bytes)
    return _decode_payload(bytes(payload), max_name_bytes)[0]


def decode(payload: bytes, max_name_bytes: int = 256) -> Decoded:
    """Decodes one payload; a FALLBACK verdict is resolved with cbor2."""
    check_max_name_bytes(max_name_bytes)
    payload = bytes(payload)
    verdict, out = _decode_payload(payload, max_name_bytes)
    if verdict == OK:
        return Decoded(OK, out.readings, out.schema_mismatch, out.non_finite)
    if verdict == FALLBACK:
        return decode_with_cbor2(payload, max_name_bytes)
    return decode_error_result()
