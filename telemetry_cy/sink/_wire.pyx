"""Compiled NATS wire encoder: a tick batch of aggregates -> ready ``PUB`` (core NATS) or ``HPUB``
(JetStream) protocol chunks; and `AckWindow`, the reader of the JetStream acks (tc_wire.h).

Byte for byte what the twin ``_wire_py.py`` (built from ``subjects.subject_for`` and
``bodies.encoder_for``) produces; the API is in ``_wire.pyi``. A compiled-engine ``Aggregate`` is
read field by field and its subject and body are written in C into one growing buffer, with no
Python object per aggregate. Whatever the C path does not cover goes, per aggregate and per part,
to the Python functions, so the escaping and encoding rules live in one place:

- subject token: a name that is not plain printable ASCII (``tc_wire_plain_token``) goes through
  ``escape_token`` (cached there); names that are not exact ``str``, and items that are not
  compiled ``Aggregate`` objects (e.g. the pure engine's), through ``subject_for``.
- body: a non-finite float (JSON writes null, cbor2 a half float), a name or unit that is not
  valid UTF-8 (lone surrogates: JSON then escapes the whole body as ASCII), or one that is not an
  exact ``str`` (unit: or None) -> ``encode_json`` / ``encode_cbor``.

JSON floats are ``float.__repr__`` (what json writes), written by ``tc_repr_double``
(includes/tc_repr.h: Ryu's shortest digits in repr's layout, the same text for every finite
double) without a call into Python, an allocation or dtoa's bignum arithmetic; `float_text`
exposes it (with put_repr's spelling of the non-finite values) to the tests.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_Clear
from libc.stdlib cimport free, malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DATA, PyUnicode_GET_LENGTH
from libc.math cimport isfinite
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memchr, memset, strlen

from telemetry_cy.engine._engine cimport Aggregate

import sys

from telemetry_cy.engine.rules import AGGREGATE_FIELDS
from telemetry_cy.sink._wire_py import ACK_KINDS, DEFAULT_CHUNK_BYTES, _check_args, _describe
from telemetry_cy.sink.subjects import escape_token, id_token, msg_id, subject_for, validate_prefix

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object s)
    # Not cpython.unicode's declaration (except NULL): a name that is not valid UTF-8 makes that
    # body a Python fallback, not an error.
    const char *utf8_or_null "PyUnicode_AsUTF8AndSize"(object s, Py_ssize_t *size)

# put_body writes the fields in this order; a change of the field list must change it too.
if tuple(AGGREGATE_FIELDS) != ("device", "sensor", "unit", "window_start", "window_end", "count",
                               "sum", "mean", "min", "max", "stddev", "first", "last"):
    raise ImportError("telemetry_cy.sink._wire is out of date with AGGREGATE_FIELDS")

cdef enum:
    N_FIELDS = 13        # without the quantiles, which follow them by name when present
    # Upper bound of a body apart from its strings (6 bytes per string byte, JSON worst case):
    # keys (~125 bytes), nine floats of at most 24 characters, a 20-digit count, quotes, null.
    BODY_FIXED = 512
    # and per quantile: its name (p + a float's repr digits, < 30 bytes), a float, punctuation
    BODY_PER_QUANTILE = 64


cdef struct text:
    const char *p
    Py_ssize_t n        # UTF-8 bytes
    Py_ssize_t chars    # code points (len() of the str)


cdef int reserve(tc_wbuf *b, size_t n) except -1:
    if tc_wbuf_reserve(b, n):
        raise MemoryError()
    return 0


cdef object token_of(str name, text *t):
    """The subject token of a name: t points at its UTF-8. Returns the str that owns the bytes
    (an escaped token may leave escape_token's cache while we still use it)."""
    if PyUnicode_IS_ASCII(name):
        t.p = <const char *>PyUnicode_DATA(name)
        t.n = t.chars = PyUnicode_GET_LENGTH(name)
        if tc_wire_plain_token(t.p, <size_t>t.n):
            return name
    token = escape_token(name)
    t.p = PyUnicode_AsUTF8AndSize(token, &t.n)  # always valid: surrogates come out escaped
    t.chars = PyUnicode_GET_LENGTH(token)
    return token


cdef bint body_text(object s, text *t):
    """t = the UTF-8 of an exact str, else False (and no exception set)."""
    if type(s) is not str:
        return False
    if PyUnicode_IS_ASCII(s):
        t.p = <const char *>PyUnicode_DATA(s)
        t.n = PyUnicode_GET_LENGTH(s)
        return True
    t.p = utf8_or_null(s, &t.n)
    if t.p == NULL:
        PyErr_Clear()
        return False
    return True


cdef inline bint quantiles_ok(Aggregate a) noexcept:
    """Names and values pair up, each name an ASCII str, each value an exact, finite float."""
    cdef tuple names = a.quantile_names, values = a.quantile_values
    cdef Py_ssize_t i
    if names is None or values is None or len(names) != len(values):
        return False
    for i in range(len(names)):
        if type(names[i]) is not str or not PyUnicode_IS_ASCII(names[i]):
            return False
        if type(values[i]) is not float or not isfinite(<double>values[i]):
            return False
    return True


cdef inline bint all_finite(Aggregate a) noexcept:
    return (isfinite(a.window_start) and isfinite(a.window_end) and isfinite(a.sum)
            and isfinite(a.mean) and isfinite(a.min) and isfinite(a.max) and isfinite(a.stddev)
            and isfinite(a.first) and isfinite(a.last) and quantiles_ok(a))


cdef inline void put_key(tc_wbuf *b, bint cbor, const char *name, bint first) noexcept:
    put_key_n(b, cbor, name, strlen(name), first)


cdef inline void put_key_n(tc_wbuf *b, bint cbor, const char *name, size_t n,
                           bint first) noexcept:
    if cbor:
        tc_wire_put_cbor_head(b, 3, n)
        tc_wire_put(b, name, n)
    else:
        tc_wire_put(b, b'{"' if first else b',"', 2)
        tc_wire_put(b, name, n)
        tc_wire_put(b, b'":', 2)


cdef inline void put_text(tc_wbuf *b, bint cbor, const text *t) noexcept:
    if t.p == NULL:
        if cbor:
            tc_wire_put(b, b"\xf6", 1)
        else:
            tc_wire_put(b, b"null", 4)
    elif cbor:
        tc_wire_put_cbor_head(b, 3, <uint64_t>t.n)
        tc_wire_put(b, t.p, <size_t>t.n)
    else:
        tc_wire_put_json_str(b, t.p, <size_t>t.n)


cdef inline void put_double(tc_wbuf *b, bint cbor, double x) noexcept:
    """A finite x: CBOR float64, or repr(x) as json writes it. Reserve TC_REPR_MAX (24)."""
    if cbor:
        tc_wire_put_cbor_f64(b, x)
    else:
        b.len += tc_repr_double(b.p + b.len, x)


cdef int put_body(tc_wbuf *b, bint cbor, Aggregate a, const text *dev, const text *sen,
                  const text *unit) except -1:
    cdef tuple qnames = a.quantile_names, qvalues = a.quantile_values
    cdef Py_ssize_t i, nq = len(qnames), qlen
    cdef const char *qname
    reserve(b, BODY_FIXED + BODY_PER_QUANTILE * <size_t>nq + 6 * <size_t>(dev.n + sen.n + unit.n))
    if cbor:
        tc_wire_put_cbor_head(b, 5, N_FIELDS + nq)
    put_key(b, cbor, b"device", True)
    put_text(b, cbor, dev)
    put_key(b, cbor, b"sensor", False)
    put_text(b, cbor, sen)
    put_key(b, cbor, b"unit", False)
    put_text(b, cbor, unit)
    put_key(b, cbor, b"window_start", False)
    put_double(b, cbor, a.window_start)
    put_key(b, cbor, b"window_end", False)
    put_double(b, cbor, a.window_end)
    put_key(b, cbor, b"count", False)
    if cbor:
        tc_wire_put_cbor_head(b, 0, a.count)
    else:
        tc_wire_put_u64(b, a.count)
    put_key(b, cbor, b"sum", False)
    put_double(b, cbor, a.sum)
    put_key(b, cbor, b"mean", False)
    put_double(b, cbor, a.mean)
    put_key(b, cbor, b"min", False)
    put_double(b, cbor, a.min)
    put_key(b, cbor, b"max", False)
    put_double(b, cbor, a.max)
    put_key(b, cbor, b"stddev", False)
    put_double(b, cbor, a.stddev)
    put_key(b, cbor, b"first", False)
    put_double(b, cbor, a.first)
    put_key(b, cbor, b"last", False)
    put_double(b, cbor, a.last)
    for i in range(nq):
        # all_finite checked them: ASCII names (their UTF-8 is the str's own buffer, no copy)
        qname = PyUnicode_AsUTF8AndSize(qnames[i], &qlen)
        put_key_n(b, cbor, qname, <size_t>qlen, False)
        put_double(b, cbor, <double>qvalues[i])
    if not cbor:
        tc_wire_put(b, b"}", 1)
    return 0


cdef inline size_t decimal_digits(size_t v) noexcept:
    cdef size_t n = 1
    while v >= 10:
        v //= 10
        n += 1
    return n


cdef object id_of(str name, text *t):
    """The name as a message-id token (subjects.id_token): t points at its ASCII bytes. Returns
    the str that owns them."""
    if PyUnicode_IS_ASCII(name):
        t.p = <const char *>PyUnicode_DATA(name)
        t.n = t.chars = PyUnicode_GET_LENGTH(name)
        if tc_wire_plain_token(t.p, <size_t>t.n) and memchr(t.p, ord("|"), <size_t>t.n) == NULL:
            return name
    token = id_token(name)
    t.p = <const char *>PyUnicode_DATA(token)    # ASCII by construction
    t.n = t.chars = PyUnicode_GET_LENGTH(token)
    return token


cdef inline void put_repr(tc_wbuf *b, double x) noexcept:
    """repr(x), for every double. Reserve TC_REPR_MAX (24)."""
    if isfinite(x):
        b.len += tc_repr_double(b.p + b.len, x)
    elif x != x:
        tc_wire_put(b, b"nan", 3)     # whatever the NaN's sign and payload, as float.__repr__
    elif x > 0:
        tc_wire_put(b, b"inf", 3)
    else:
        tc_wire_put(b, b"-inf", 4)


def float_text(double x):
    """See ``_wire.pyi``."""
    cdef char out[TC_REPR_MAX]
    cdef tc_wbuf b
    b.p = out
    b.len = 0
    b.cap = TC_REPR_MAX
    put_repr(&b, x)
    return out[:b.len].decode("ascii")


cdef object encode_messages(aggregates, str prefix, str format, Py_ssize_t max_subject,
                            Py_ssize_t chunk_max, Py_ssize_t max_body, object encode,
                            object reply_prefix, Py_ssize_t first_index, object expected_stream,
                            Py_ssize_t chunk_messages, list counts):
    """The one loop of both encoders: PUB messages, or with a reply_prefix HPUB messages with a
    Nats-Msg-Id header (counts then gets the messages of each chunk)."""
    cdef bint cbor = format == "cbor"
    cdef bint hpub = reply_prefix is not None
    cdef text pre, dev, sen, unit, fb, rep, stream, dev_id, sen_id
    pre.p = PyUnicode_AsUTF8AndSize(prefix, &pre.n)  # validated: no surrogates
    pre.chars = PyUnicode_GET_LENGTH(prefix)
    rep.p = NULL
    rep.n = 0
    stream.p = NULL
    stream.n = 0
    if hpub:
        rep.p = PyUnicode_AsUTF8AndSize(reply_prefix, &rep.n)
        if expected_stream is not None:
            stream.p = PyUnicode_AsUTF8AndSize(expected_stream, &stream.n)
    cdef tc_wbuf out, sub, body, hdr
    memset(&out, 0, sizeof(out))
    memset(&sub, 0, sizeof(sub))
    memset(&body, 0, sizeof(body))
    memset(&hdr, 0, sizeof(hdr))
    cdef Aggregate a
    cdef Py_ssize_t encoded = 0, too_long = 0, nbytes = 0, subject_chars, in_chunk = 0
    cdef size_t body_n, msg_n, total
    cdef const char *body_p
    cdef bint fast
    chunks = []
    try:
        for obj in aggregates:
            # subject -> sub
            sub.len = 0
            a = <Aggregate>obj if type(obj) is Aggregate else None
            fast = a is not None and type(a.device) is str and type(a.sensor) is str
            if fast:
                own_d = token_of(a.device, &dev)
                own_s = token_of(a.sensor, &sen)
                reserve(&sub, <size_t>(pre.n + dev.n + sen.n + 2))
                tc_wire_put(&sub, pre.p, <size_t>pre.n)
                tc_wire_put(&sub, b".", 1)
                tc_wire_put(&sub, dev.p, <size_t>dev.n)
                tc_wire_put(&sub, b".", 1)
                tc_wire_put(&sub, sen.p, <size_t>sen.n)
                subject_chars = pre.chars + dev.chars + sen.chars + 2
            else:
                subject = subject_for(prefix, obj.device, obj.sensor)
                fb.p = PyUnicode_AsUTF8AndSize(subject, &fb.n)
                reserve(&sub, <size_t>fb.n)
                tc_wire_put(&sub, fb.p, <size_t>fb.n)
                subject_chars = PyUnicode_GET_LENGTH(subject)
            if <Py_ssize_t>sub.len > max_subject:
                too_long += 1
                continue

            # body -> body_p, body_n
            unit.p = NULL
            unit.n = 0
            if (a is not None and all_finite(a) and body_text(a.device, &dev)
                    and body_text(a.sensor, &sen)
                    and (a.unit is None or body_text(a.unit, &unit))):
                body.len = 0
                put_body(&body, cbor, a, &dev, &sen, &unit)
                body_p = body.p
                body_n = body.len
            else:
                fallback_body = <bytes?>encode(obj)
                body_p = PyBytes_AS_STRING(fallback_body)
                body_n = <size_t>PyBytes_GET_SIZE(fallback_body)

            # JetStream: NATS/1.0\r\nNats-Msg-Id: <id>\r\n[Nats-Expected-Stream: <s>\r\n]\r\n
            total = body_n
            if hpub:
                hdr.len = 0
                if fast:
                    own_di = id_of(a.device, &dev_id)
                    own_si = id_of(a.sensor, &sen_id)
                    reserve(&hdr, <size_t>(96 + dev_id.n + sen_id.n + stream.n))
                    tc_wire_put(&hdr, b"NATS/1.0\r\nNats-Msg-Id: ", 23)
                    tc_wire_put(&hdr, dev_id.p, <size_t>dev_id.n)
                    tc_wire_put(&hdr, b"|", 1)
                    tc_wire_put(&hdr, sen_id.p, <size_t>sen_id.n)
                    tc_wire_put(&hdr, b"|", 1)
                    put_repr(&hdr, a.window_end)
                else:
                    fallback_id = msg_id(obj.device, obj.sensor, obj.window_end)
                    fb.p = PyUnicode_AsUTF8AndSize(fallback_id, &fb.n)
                    reserve(&hdr, <size_t>(96 + fb.n + stream.n))
                    tc_wire_put(&hdr, b"NATS/1.0\r\nNats-Msg-Id: ", 23)
                    tc_wire_put(&hdr, fb.p, <size_t>fb.n)
                reserve(&hdr, <size_t>(28 + stream.n))
                tc_wire_put(&hdr, b"\r\n", 2)
                if stream.p != NULL:
                    tc_wire_put(&hdr, b"Nats-Expected-Stream: ", 22)
                    tc_wire_put(&hdr, stream.p, <size_t>stream.n)
                    tc_wire_put(&hdr, b"\r\n", 2)
                tc_wire_put(&hdr, b"\r\n", 2)
                total = hdr.len + body_n
            if <Py_ssize_t>total > max_body:
                too_long += 1
                continue

            # PUB <subject> <n>\r\n<body>\r\n, or HPUB <subject> <reply>.<index> <h> <n>\r\n
            # <header><body>\r\n; in a new chunk if it would overflow this one
            if hpub:
                msg_n = (5 + sub.len + 1 + <size_t>rep.n + 1
                         + decimal_digits(<size_t>(first_index + encoded)) + 1
                         + decimal_digits(hdr.len) + 1 + decimal_digits(total) + 2 + total + 2)
            else:
                msg_n = 4 + sub.len + 1 + decimal_digits(body_n) + 2 + body_n + 2
            if out.len and (out.len + msg_n > <size_t>chunk_max or in_chunk == chunk_messages):
                chunks.append(PyBytes_FromStringAndSize(out.p, <Py_ssize_t>out.len))
                if counts is not None:
                    counts.append(in_chunk)
                out.len = 0
                in_chunk = 0
            reserve(&out, msg_n)
            if hpub:
                tc_wire_put(&out, b"HPUB ", 5)
                tc_wire_put(&out, sub.p, sub.len)
                tc_wire_put(&out, b" ", 1)
                tc_wire_put(&out, rep.p, <size_t>rep.n)
                tc_wire_put(&out, b".", 1)
                tc_wire_put_u64(&out, <uint64_t>(first_index + encoded))
                tc_wire_put(&out, b" ", 1)
                tc_wire_put_u64(&out, hdr.len)
                tc_wire_put(&out, b" ", 1)
                tc_wire_put_u64(&out, total)
                tc_wire_put(&out, b"\r\n", 2)
                tc_wire_put(&out, hdr.p, hdr.len)
            else:
                tc_wire_put(&out, b"PUB ", 4)
                tc_wire_put(&out, sub.p, sub.len)
                tc_wire_put(&out, b" ", 1)
                tc_wire_put_u64(&out, body_n)
                tc_wire_put(&out, b"\r\n", 2)
            tc_wire_put(&out, body_p, body_n)
            tc_wire_put(&out, b"\r\n", 2)
            encoded += 1
            in_chunk += 1
            nbytes += subject_chars + <Py_ssize_t>total
        if out.len:
            chunks.append(PyBytes_FromStringAndSize(out.p, <Py_ssize_t>out.len))
            if counts is not None:
                counts.append(in_chunk)
    finally:
        tc_wbuf_free(&out)
        tc_wbuf_free(&sub)
        tc_wbuf_free(&body)
        tc_wbuf_free(&hdr)
    return chunks, encoded, too_long, nbytes


def encode_batch(aggregates, prefix, format, max_subject_bytes,
                 chunk_bytes=DEFAULT_CHUNK_BYTES, max_body_bytes=sys.maxsize):
    """See ``_wire.pyi``."""
    encode = _check_args(prefix, format, max_subject_bytes, chunk_bytes, max_body_bytes)
    return encode_messages(aggregates, prefix, format, max_subject_bytes, chunk_bytes,
                           max_body_bytes, encode, None, 0, None, sys.maxsize, None)


def encode_jetstream(aggregates, prefix, format, max_subject_bytes, reply_prefix, first_index=0,
                     expected_stream=None, chunk_bytes=DEFAULT_CHUNK_BYTES,
                     max_body_bytes=sys.maxsize, chunk_messages=sys.maxsize):
    """See ``_wire.pyi``."""
    encode = _check_args(prefix, format, max_subject_bytes, chunk_bytes, max_body_bytes,
                         reply_prefix, first_index, expected_stream, chunk_messages)
    counts = []
    chunks, encoded, too_long, nbytes = encode_messages(
        aggregates, prefix, format, max_subject_bytes, chunk_bytes, max_body_bytes, encode,
        reply_prefix, first_index, expected_stream, chunk_messages, counts)
    return chunks, counts, encoded, too_long, nbytes


cdef inline double give_gil(double last, double every) noexcept:
    """Lets the other threads run if `every` seconds passed since `last`; returns the new mark.

    Not more often: a thread waiting for the GIL asks for it only after waiting the switch
    interval (5 ms), and each release wakes it and restarts that wait, so a loop that releases
    every millisecond could keep it waiting for good. Spaced by more than the interval, each
    release finds the request made and hands the GIL over."""
    cdef double now = tc_wire_now()
    if now - last < every:
        return last
    with nogil:
        pass
    return tc_wire_now()


def subject_order(aggregates):
    """See ``_wire.pyi``. The sort runs without the GIL, and the passes over the aggregates give
    it up every switch interval (+1 ms), so a million-key tick never holds it for long (the
    output list is filled in sorted order, scattered in memory: ~40 ns an item)."""
    items = list(aggregates)
    cdef Py_ssize_t n = len(items), i
    cdef tc_sort_key *keys = <tc_sort_key *>malloc(<size_t>max(n, 1) * sizeof(tc_sort_key))
    if keys == NULL:
        raise MemoryError()
    cdef text t
    cdef double every = sys.getswitchinterval() + 0.001, mark = tc_wire_now()
    owners = []   # escaped tokens: their UTF-8 must outlive the sort (a plain name is its own)
    try:
        for i in range(n):
            obj = items[i]
            device = (<Aggregate>obj).device if type(obj) is Aggregate else obj.device
            if type(device) is str:
                token = token_of(device, &t)
                if token is not device:
                    owners.append(token)
                tc_sort_key_set(&keys[i], t.p, <size_t>t.n, <size_t>i)
            else:
                tc_sort_key_set(&keys[i], NULL, 0, <size_t>i)
            if i % 1024 == 1023:
                mark = give_gil(mark, every)
        with nogil:
            tc_sort_keys(keys, <size_t>n)
        mark = tc_wire_now()
        out = [None] * n
        for i in range(n):
            out[i] = items[tc_sort_key_index(&keys[i])]
            if i % 1024 == 1023:
                mark = give_gil(mark, every)
        return out
    finally:
        free(keys)


# ---- JetStream acks ------------------------------------------------------------------------------

cdef class AckWindow:
    """The answers to one emitter's JetStream publishes: tc_wire.h's tc_acks (see its comment and
    ``_wire.pyi``). Used by the emitter's loop thread only."""

    cdef tc_acks w
    cdef bytes _prefix        # w.inbox points into it
    cdef bytearray _state     # w.state points into it while a batch is begun
    cdef readonly str inbox

    def __init__(self, inbox):
        if type(inbox) is not str:
            raise TypeError(f"inbox must be a str, got {type(inbox).__name__}")
        validate_prefix(inbox)
        self.inbox = inbox
        self._prefix = inbox.encode() + b"."
        memset(&self.w, 0, sizeof(self.w))
        self.w.inbox = PyBytes_AS_STRING(self._prefix)
        self.w.inbox_len = <size_t>PyBytes_GET_SIZE(self._prefix)

    @property
    def sid(self):
        return self.w.sid

    @sid.setter
    def sid(self, uint64_t value):
        self.w.sid = value

    @property
    def serial(self):
        return self.w.serial

    @property
    def batch_size(self):
        return self.w.n

    @property
    def in_flight(self):
        return self.w.in_flight

    @property
    def acked(self):
        return self.w.acked

    @property
    def answers(self):
        return self.w.answers

    @property
    def stale(self):
        return self.w.stale

    @property
    def repeats(self):
        return self.w.repeats

    def begin(self, uint64_t serial, state):
        if type(state) is not bytearray:
            raise TypeError("state must be a bytearray")
        self._state = state
        tc_acks_begin(&self.w, serial, <unsigned char *>PyByteArray_AS_STRING(state),
                      <size_t>PyByteArray_GET_SIZE(state))

    def end(self):
        tc_acks_end(&self.w)
        self._state = None

    def send(self, Py_ssize_t first, Py_ssize_t last):
        if self._state is None:
            return 0
        if first < 0 or last < first:
            raise ValueError("need 0 <= first <= last")
        return tc_acks_send(&self.w, <size_t>first, <size_t>last)

    def acked_range(self, Py_ssize_t first, Py_ssize_t last):
        if self._state is None or first < 0 or last < first:
            raise ValueError("no batch, or not 0 <= first <= last")
        cdef Py_ssize_t i, end = min(last, <Py_ssize_t>self.w.n)
        for i in range(first, end):
            if self.w.state[i] != TC_MSG_ACKED:
                return False
        return True

    def sent_in(self, Py_ssize_t first, Py_ssize_t last):
        if self._state is None or first < 0 or last < first:
            raise ValueError("no batch, or not 0 <= first <= last")
        cdef Py_ssize_t i, k = 0, end = min(last, <Py_ssize_t>self.w.n)
        for i in range(first, end):
            k += self.w.state[i] == TC_MSG_SENT
        return k

    def answer(self, bytes subject, bytes header, bytes body):
        cdef tc_ack_result r
        cdef uint64_t serial = 0, index = 0
        tc_ack_classify(PyBytes_AS_STRING(header), <size_t>PyBytes_GET_SIZE(header),
                        PyBytes_AS_STRING(body), <size_t>PyBytes_GET_SIZE(body), &r)
        cdef int have = tc_ack_token(&self.w, PyBytes_AS_STRING(subject),
                                     <size_t>PyBytes_GET_SIZE(subject), &serial, &index) == 0
        if not have:
            r.kind = TC_ACK_BAD
        tc_acks_apply(&self.w, have, serial, index, &r)

    def feed(self, bytes data, Py_ssize_t pos=0):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef int64_t nxt = 0
        cdef size_t used
        if pos < 0 or pos > n:
            raise ValueError("pos out of range")
        used = tc_acks_feed(&self.w, PyBytes_AS_STRING(data) + pos, <size_t>(n - pos), &nxt)
        return used, nxt

    def counts(self):
        return {kind: self.w.kinds[i] for i, kind in enumerate(ACK_KINDS)}

    def last_error(self):
        if self.w.last_kind == 0:
            return ""
        return _describe(self.w.last_kind, self.w.last_code, self.w.last_err_code,
                         PyBytes_FromStringAndSize(self.w.last_desc,
                                                   <Py_ssize_t>self.w.last_desc_len))
