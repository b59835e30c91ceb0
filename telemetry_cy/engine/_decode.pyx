"""Python-level wrapper of the compiled CBOR payload reader (``includes/cbor_reader.h``).

For tests and notebooks; the engine calls ``tc_decode_payload`` directly (see ``_decode.pxd``).
Same API as the pure twin ``telemetry_cy.engine._decode_py``, whose docstring holds the rules.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport isnan
from libc.stdint cimport uint8_t, uint32_t

from telemetry_cy.engine.decode_types import (
    DECODE_ERROR,
    FALLBACK,
    MAX_DEPTH,
    MAX_READ_KEYS,
    MIN_READING_BYTES,
    OK,
    Decoded,
    Reading,
    check_max_name_bytes,
)
from telemetry_cy.engine.cbor_fallback import decode_error_result, decode_with_cbor2

__all__ = [
    "MAX_DEPTH",
    "MAX_READ_KEYS",
    "MIN_READING_BYTES",
    "Decoded",
    "Reading",
    "decode",
    "decode_native",
]

# Exposed so tests can check the header and the Python constants agree.
C_MAX_DEPTH = TC_CBOR_MAX_DEPTH
C_MAX_READ_KEYS = TC_CBOR_MAX_READ_KEYS
C_MIN_READING_BYTES = TC_MIN_READING_BYTES

# Payloads up to this many readings decode into a stack array; larger ones get a heap array.
cdef enum:
    _STACK_READINGS = 16


cdef inline object _text(const char *p, uint32_t n):
    # the reader validated the bytes as strict UTF-8 already
    return PyUnicode_DecodeUTF8(p, n, NULL)


cdef int _run(bytes payload, uint32_t max_name_bytes, tc_decoded *out) noexcept:
    return tc_decode_payload(<const uint8_t *>PyBytes_AS_STRING(payload),
                             <size_t>PyBytes_GET_SIZE(payload), max_name_bytes, out)


cdef object _native(object payload, object max_name_bytes, bint resolve):
    cdef bytes buf = payload if type(payload) is bytes else bytes(payload)
    cdef uint32_t max_name = check_max_name_bytes(max_name_bytes)
    cdef tc_reading stack_readings[_STACK_READINGS]
    cdef tc_decoded out
    cdef size_t cap = <size_t>PyBytes_GET_SIZE(buf) // TC_MIN_READING_BYTES + 1
    cdef size_t i
    cdef tc_reading *r
    cdef int rc
    out.readings = stack_readings
    out.cap = cap
    if cap > _STACK_READINGS:
        out.readings = <tc_reading *>PyMem_Malloc(cap * sizeof(tc_reading))
        if out.readings == NULL:
            raise MemoryError()
    try:
        rc = _run(buf, max_name, &out)
        if rc == TC_PAYLOAD_CAP_TOO_SMALL:
            raise AssertionError("tc_decode_payload: readings array too small")
        if not resolve:
            return OK if rc == TC_PAYLOAD_OK else (FALLBACK if rc == TC_PAYLOAD_FALLBACK else DECODE_ERROR)
        if rc == TC_PAYLOAD_FALLBACK:
            return decode_with_cbor2(buf, max_name_bytes)
        if rc != TC_PAYLOAD_OK:
            return decode_error_result()
        readings = []
        for i in range(out.n_readings):
            r = &out.readings[i]
            readings.append(Reading(
                _text(r.device, r.device_len),
                _text(r.sensor, r.sensor_len),
                r.value,
                _text(r.unit, r.unit_len) if r.unit != NULL else None,
                r.seq if r.has_seq else None,
                None if isnan(r.t) else r.t,
            ))
        return Decoded(OK, readings, out.schema_mismatch, out.non_finite)
    finally:
        if out.readings != stack_readings:
            PyMem_Free(out.readings)


def decode(payload, max_name_bytes=256):
    """Decodes one payload; a FALLBACK verdict is resolved with cbor2."""
    return _native(payload, max_name_bytes, True)


def decode_native(payload, max_name_bytes=256):
    """The raw verdict of the C reader: 'ok', 'decode_error' or 'fallback'."""
    return _native(payload, max_name_bytes, False)


def _decode_with_cap(bytes payload, size_t cap):
    """Test hook: tc_decode_payload with a caller-chosen cap; returns (return code, n_readings)."""
    cdef tc_decoded out
    cdef int rc
    out.cap = cap
    out.readings = <tc_reading *>PyMem_Malloc((cap if cap else 1) * sizeof(tc_reading))
    if out.readings == NULL:
        raise MemoryError()
    try:
        rc = _run(payload, 256, &out)
        return rc, out.n_readings
    finally:
        PyMem_Free(out.readings)
