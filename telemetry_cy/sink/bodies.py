"""Message bodies for aggregates: JSON (default) or CBOR.

Both carry the `Aggregate` fields under their own names (`AGGREGATE_FIELDS`, in that order),
then its quantiles, if the engine computes any, by their names (`p50`, `p99.9`, ...).
JSON is compact UTF-8; numbers are plain JSON numbers (Python's shortest round-trip repr for
floats). Values are finite in practice, but a window sum can overflow to inf (and its stddev to
NaN) with readings near 1e308, which JSON cannot express: such a value is written as `null`
rather than the non-standard `Infinity`/`NaN`. CBOR carries inf/NaN natively.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import cbor2

from telemetry_cy.engine.rules import present_fields

FORMATS = ("json", "cbor")

_json_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                               allow_nan=False).encode
_json_dumps_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _fields(a) -> dict:
    # attribute reads, not dataclasses.asdict: that deep-copies and is several times slower
    return present_fields(a)


def _finite_or_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


def encode_json(a) -> bytes:
    d = _fields(a)
    try:
        text = _json_dumps(d)
    except ValueError:  # a non-finite float (overflowed sum): see the module docstring
        d = _finite_or_none(d)
        text = _json_dumps(d)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate in a name (not valid UTF-8): fall back to \\uXXXX escapes
        return _json_dumps_ascii(d).encode("ascii")


def encode_cbor(a) -> bytes:
    return cbor2.dumps(_fields(a))


def encoder_for(format: str) -> Callable[[object], bytes]:
    """The body encoder for 'json' or 'cbor'; ValueError for anything else."""
    if format == "json":
        return encode_json
    if format == "cbor":
        return encode_cbor
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")


def decode_body(format: str, body: bytes) -> dict:
    """For subscribers and tests: the field dict of one message body."""
    if format == "json":
        return json.loads(body)
    if format == "cbor":
        return cbor2.loads(body)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
