"""Compiled reader of the partial format (docs/scale-out.md): ``read`` over includes/tc_partial.h.

Its twin is ``partial_format.read``: the same Partial and PanePartial values (sketches are
``sketch_py.QuantileSketch``, as the twin's, since the merge worker merges them in Python) and
the same PartialError reason for every message it refuses. tc_partial.h checks the frame and
every field in C; this module turns the checked fields into those values and makes the one check
the header leaves to its caller: a key twice in one message, found with the set of keys built
here anyway.
"""

from cpython.object cimport PyObject_GenericSetAttr
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t

import dataclasses

from telemetry_cy.engine import partial_format as _pf
from telemetry_cy.engine.partial_format import Partial, PanePartial, PartialError, WindowSettings
from telemetry_cy.engine.sketch_py import QuantileSketch, mapping


cdef tuple _reason_names():
    cdef int i
    return tuple([tc_partial_reason_names[i].decode() for i in range(<int>TC_PARTIAL_MALFORMED)])


# The header states the format's constants again; one that disagrees reads another format.
if (TC_PARTIAL_HEADER, TC_PARTIAL_VERSION, TC_PARTIAL_MAX_INSTANCE, TC_PARTIAL_FLAG_EVENT,
        TC_PARTIAL_FLAG_QUANTILES, TC_PARTIAL_PANES, TC_PARTIAL_LEAVE) != (
        _pf.HEADER.size, _pf.VERSION, _pf.MAX_INSTANCE_BYTES, _pf.FLAG_EVENT,
        _pf.FLAG_QUANTILES, _pf.KIND_PANES, _pf.KIND_LEAVE) or \
        _reason_names() != _pf.PARTIAL_REASONS[:<int>TC_PARTIAL_MALFORMED]:
    raise ImportError("telemetry_cy.engine._partial is out of date with partial_format")

cdef object _new_sketch = QuantileSketch.__new__
cdef object _new_pane = PanePartial.__new__

# A PanePartial is a frozen dataclass: its __init__ sets each of the 13 fields through
# object.__setattr__, 2.4 us a pane here, most of a read. The fields are slots; setting them the
# way object.__setattr__ does (the generic setter, past the frozen class's __setattr__) makes the
# same value for a tenth of that. Only as long as __init__ does nothing more: checked here.
cdef tuple _PANE_FIELDS = tuple([f.name for f in dataclasses.fields(PanePartial)])
if (_PANE_FIELDS != ("device", "sensor", "unit", "count", "sum", "m2", "min", "max", "first",
                     "first_ts", "last", "last_ts", "sketch")
        or hasattr(PanePartial, "__post_init__") or "__dict__" in dir(PanePartial)):
    raise ImportError("telemetry_cy.engine._partial is out of date with PanePartial")


cdef object _error(tc_partial_reason rc, const char *why, Py_ssize_t n):
    reason = tc_partial_reason_names[<int>rc - 1].decode()
    text = why.decode()
    if reason == "truncated":
        text = f"{n} bytes: {text}"
    return PartialError(reason, text)


cdef inline str _text(const uint8_t *p, uint32_t n):
    # tc_partial.h checked the bytes: strict UTF-8, as bytes.decode('utf-8') takes it
    return PyUnicode_DecodeUTF8(<const char *>p, n, NULL)


cdef list _counts(const uint8_t *p, uint32_t n):
    cdef uint32_t k
    return [tc_partial_u32(p + 4 * <size_t>k) for k in range(n)]


cdef object _sketch(object m, const tc_partial_pane *p):
    """The pane's sketch as sketch_py.QuantileSketch.from_bytes makes it (mapping, stores and
    count), without its byte layout in between."""
    sk = _new_sketch(QuantileSketch)
    sk._m = m
    sk._pos_min = p.sketch.pos_min
    sk._pos = _counts(p.counts, p.sketch.pos_len)
    sk._neg_min = p.sketch.neg_min
    sk._neg = _counts(p.counts + 4 * <size_t>p.sketch.pos_len, p.sketch.neg_len)
    sk._n = p.sketch.n
    return sk


cdef object _pane(str device, str sensor, object unit, const tc_partial_pane *p, object sketch):
    """PanePartial(device, sensor, unit, count, ..., sketch), as its __init__ makes it."""
    pane = _new_pane(PanePartial)
    cdef tuple values = (device, sensor, unit, p.count, p.sum, p.m2, p.min, p.max, p.first,
                         p.first_ts, p.last, p.last_ts, sketch)
    cdef Py_ssize_t i
    for i in range(13):
        PyObject_GenericSetAttr(pane, _PANE_FIELDS[i], values[i])
    return pane


def read(data):
    """Checks and decodes one message, as partial_format.read. Raises PartialError."""
    # The GIL stays held: the reader's caller is the merge worker's one asyncio thread, and
    # a read of 1,000 panes is ~1 ms, most of it making the Python values.
    cdef const uint8_t[::1] buf
    cdef const uint8_t *ptr
    cdef Py_ssize_t n
    if type(data) is bytes:    # a NATS message's payload: no buffer to take
        ptr = <const uint8_t *><const char *>data
        n = len(<bytes>data)
    else:
        buf = memoryview(data).cast("B")   # what the twin accepts, the twin's way
        n = buf.shape[0]
        ptr = &buf[0] if n else <const uint8_t *>b""
    cdef tc_partial m
    cdef tc_partial_pane p
    cdef const char *why = NULL
    cdef tc_partial_reason rc = tc_partial_open(&m, ptr, <size_t>n, &why)
    if rc != TC_PARTIAL_OK:
        raise _error(rc, why, n)
    cdef uint32_t i
    qs = tuple([tc_partial_f64(m.quantiles + 8 * i) for i in range(m.n_quantiles)])
    settings = WindowSettings(m.window, m.emit_every, m.panes,
                              bool(m.flags & TC_PARTIAL_FLAG_EVENT), m.lead, m.allowed_lateness,
                              qs, m.quantile_accuracy)
    instance = _text(m.instance, m.instance_len)
    panes = []
    seen = set()
    qmap = mapping(m.quantile_accuracy) if m.qmap != NULL else None
    for i in range(m.n_panes):
        rc = tc_partial_next(&m, &p, &why)
        if rc != TC_PARTIAL_OK:
            raise _error(rc, why, n)
        device, sensor = _text(p.dev, p.dlen), _text(p.sen, p.slen)
        key = (device, sensor)
        if key in seen:
            raise PartialError("malformed", f"key {device}/{sensor} twice in one message")
        seen.add(key)
        panes.append(_pane(device, sensor, None if p.unit == NULL else _text(p.unit, p.ulen),
                           &p, None if p.counts == NULL else _sketch(qmap, &p)))
    rc = tc_partial_end(&m, &why)
    if rc != TC_PARTIAL_OK:
        raise _error(rc, why, n)
    return Partial(m.kind, settings, instance, m.seq, m.interval, m.partition, m.partitions,
                   tuple(panes))
