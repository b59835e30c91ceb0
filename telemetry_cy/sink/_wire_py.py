"""NATS protocol bytes for a tick batch of aggregates, and the reader of JetStream publish acks:
the pure-Python twin of ``_wire.pyx``.

It's made of the same functions the emitter uses one aggregate at a time (`subjects.subject_for`,
`subjects.msg_id`, `bodies.encoder_for`), so it's the oracle the compiled version is tested
against byte for byte. A core message is ``PUB <subject> <body length>\\r\\n<body>\\r\\n``; a
JetStream message is ``HPUB <subject> <reply> <header length> <total length>\\r\\n<header><body>
\\r\\n`` with a ``Nats-Msg-Id`` header. Messages are concatenated and cut into chunks at message
boundaries. `AckWindow` is ``tc_wire.h``'s ack reader (tc_acks_*) line for line; its comment there
says what it does and why.
"""

from __future__ import annotations

import sys
from typing import Any

from telemetry_cy.sink.bodies import encoder_for
from telemetry_cy.sink.subjects import escape_token, msg_id, subject_for, validate_prefix

DEFAULT_CHUNK_BYTES = 262144


def _check_args(prefix, format, max_subject_bytes, chunk_bytes, max_body_bytes,
                reply_prefix=None, first_index=0, expected_stream=None, chunk_messages=1):
    """Shared by both twins: the same errors in the same words. Returns the body encoder."""
    encode = encoder_for(format)
    # The chunks go to the socket without nats-py's per-publish subject check, so the one part
    # of the subject not escaped here must not be able to inject protocol (spaces, CR/LF).
    # Exact str: the compiled twin copies its bytes, a subclass could format differently.
    if type(prefix) is not str:
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    validate_prefix(prefix)
    for name, value, low in (("max_subject_bytes", max_subject_bytes, 0),
                             ("chunk_bytes", chunk_bytes, 1),
                             ("max_body_bytes", max_body_bytes, 0),
                             ("first_index", first_index, 0),
                             ("chunk_messages", chunk_messages, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
        if not low <= value <= sys.maxsize:
            raise ValueError(f"{name} must be between {low} and {sys.maxsize}, got {value}")
    if reply_prefix is not None:
        # written into the HPUB line as it is, like the prefix
        if type(reply_prefix) is not str:
            raise TypeError(f"reply_prefix must be a str, got {type(reply_prefix).__name__}")
        validate_prefix(reply_prefix)
        if expected_stream is not None:
            check_stream_name(expected_stream)
    return encode


def check_stream_name(name) -> str:
    """A JetStream stream name as a header value: printable ASCII without '.', '*', '>', '/' or
    '\\' (nats-server refuses such names), so it cannot break the header block either."""
    if type(name) is not str:
        raise TypeError(f"stream name must be a str, got {type(name).__name__}")
    if not name or any(not ("!" <= ch <= "~") or ch in ".*>/\\" for ch in name):
        raise ValueError(f"stream name must be printable ASCII without spaces, '.', '*', '>', "
                         f"'/' or '\\', got {name!r}")
    return name


def encode_batch(aggregates: list, prefix: str, format: str, max_subject_bytes: int,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 max_body_bytes: int = sys.maxsize) -> tuple[list[bytes], int, int, int]:
    """See ``_wire.pyi``."""
    encode = _check_args(prefix, format, max_subject_bytes, chunk_bytes, max_body_bytes)
    chunks, _, encoded, too_long, nbytes = _encode(aggregates, prefix, encode, max_subject_bytes,
                                                   chunk_bytes, max_body_bytes, sys.maxsize)
    return chunks, encoded, too_long, nbytes


def encode_jetstream(aggregates, prefix: str, format: str, max_subject_bytes: int,
                     reply_prefix: str, first_index: int = 0, expected_stream: str | None = None,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_body_bytes: int = sys.maxsize,
                     chunk_messages: int = sys.maxsize
                     ) -> tuple[list[bytes], list[int], int, int, int]:
    """See ``_wire.pyi``."""
    encode = _check_args(prefix, format, max_subject_bytes, chunk_bytes, max_body_bytes,
                         reply_prefix, first_index, expected_stream, chunk_messages)
    return _encode(aggregates, prefix, encode, max_subject_bytes, chunk_bytes, max_body_bytes,
                   chunk_messages, (reply_prefix, first_index, expected_stream))


def _encode(aggregates, prefix, encode, max_subject_bytes, chunk_bytes, max_body_bytes,
            chunk_messages, jetstream=None) -> tuple[list[bytes], list[int], int, int, int]:
    """The one loop of both encoders (as _wire.pyx's encode_messages): PUB messages, or HPUB
    with a Nats-Msg-Id header when `jetstream` is (reply_prefix, first_index, stream)."""
    if jetstream is not None:
        reply_prefix, first_index, stream = jetstream
        reply = reply_prefix.encode()
        stream_line = (b"Nats-Expected-Stream: " + stream.encode() + b"\r\n"
                       if stream is not None else b"")
    chunks: list[bytes] = []
    counts: list[int] = []
    parts: list[bytes] = []
    size = encoded = too_long = nbytes = 0
    for a in aggregates:
        subject = subject_for(prefix, a.device, a.sensor)
        subject_b = subject.encode()
        if len(subject_b) > max_subject_bytes:
            too_long += 1
            continue
        body = encode(a)
        header = b""
        if jetstream is not None:
            header = (b"NATS/1.0\r\nNats-Msg-Id: "
                      + msg_id(a.device, a.sensor, a.window_end).encode() + b"\r\n"
                      + stream_line + b"\r\n")
        total = len(header) + len(body)
        if total > max_body_bytes:
            too_long += 1
            continue
        if jetstream is not None:
            msg = b"HPUB %s %s.%d %d %d\r\n%s%s\r\n" % (
                subject_b, reply, first_index + encoded, len(header), total, header, body)
        else:
            msg = b"PUB %s %d\r\n%s\r\n" % (subject_b, len(body), body)
        if size and (size + len(msg) > chunk_bytes or len(parts) == chunk_messages):
            chunks.append(b"".join(parts))
            counts.append(len(parts))
            parts, size = [], 0
        parts.append(msg)
        size += len(msg)
        encoded += 1
        nbytes += len(subject) + total  # subject in characters, as the emitter counts bytes
    if parts:
        chunks.append(b"".join(parts))
        counts.append(len(parts))
    return chunks, counts, encoded, too_long, nbytes


def subject_order(aggregates) -> list:
    """See ``_wire.pyi``."""
    def key(a) -> bytes:
        device = a.device
        return escape_token(device).encode() if type(device) is str else b""
    return sorted(aggregates, key=key)


def float_text(x: float) -> str:
    """See ``_wire.pyi``: repr itself, which json.dumps writes for a float."""
    return repr(float(x))


# ---- JetStream publish acks: tc_wire.h's tc_acks_*, line for line -------------------------------

#: the kinds of answer, in tc_wire.h's order (TC_ACK_*)
ACK_KINDS = ("ok", "duplicate", "no_responders", "stream_full", "wrong_stream",
             "too_many_requests", "other_error", "bad")
OK, DUPLICATE, NO_RESPONDERS, STREAM_FULL, WRONG_STREAM, TOO_MANY, OTHER_ERROR, BAD = range(8)
#: per-message states in a batch's state array (TC_MSG_*)
UNSENT, SENT, FAILED, ACKED = 0, 1, 2, 3
ACK_DESC_MAX = 160
ACK_MAX_LINE = 1 << 20
_JSON_DEPTH = 16
_WS = b" \t\r\n"
_DIGITS = b"0123456789"
_ONE_LINE_OPS = (b"PING", b"PONG", b"+OK", b"-ERR", b"INFO")


class _Bad(Exception):
    pass


class _Json:
    """tc_json: a strict JSON reader over bytes (see tc_wire.h)."""

    def __init__(self, b: bytes) -> None:
        self.b, self.p = b, 0

    def ws(self) -> None:
        b, p = self.b, self.p
        while p < len(b) and b[p] in _WS:
            p += 1
        self.p = p

    def peek(self) -> int:
        return self.b[self.p] if self.p < len(self.b) else -1

    def lit(self, word: bytes) -> None:
        if self.b[self.p:self.p + len(word)] != word:
            raise _Bad
        self.p += len(word)

    def string(self) -> bytes:
        b = self.b
        if self.peek() != 0x22:
            raise _Bad
        self.p += 1
        start = self.p
        while self.p < len(b):
            c = b[self.p]
            if c == 0x22:
                self.p += 1
                return b[start:self.p - 1]
            if c < 0x20:
                raise _Bad
            if c == 0x5C:
                if len(b) - self.p < 2:
                    raise _Bad
                self.p += 1
            self.p += 1
        raise _Bad

    def number(self) -> int:
        b, start = self.b, self.p
        neg = 1 if self.peek() == 0x2D else 0
        integral, digits, v = 1, 0, 0
        if neg:
            self.p += 1
        while self.p < len(b) and b[self.p] in _DIGITS:
            if digits < 18:
                v = v * 10 + b[self.p] - 0x30
            else:
                integral = 0
            digits += 1
            self.p += 1
        if digits == 0 or (digits > 1 and b[start + neg] == 0x30):
            raise _Bad
        if self.peek() == 0x2E:
            integral = 0
            self.p += 1
            f = self.p
            while self.p < len(b) and b[self.p] in _DIGITS:
                self.p += 1
            if self.p == f:
                raise _Bad
        if self.peek() in (0x65, 0x45):
            integral = 0
            self.p += 1
            if self.peek() in (0x2B, 0x2D):
                self.p += 1
            e = self.p
            while self.p < len(b) and b[self.p] in _DIGITS:
                self.p += 1
            if self.p == e:
                raise _Bad
        return (-v if neg else v) if integral else 0

    def obj(self, depth: int, member=None) -> None:
        if depth > _JSON_DEPTH or self.peek() != 0x7B:
            raise _Bad
        self.p += 1
        self.ws()
        if self.peek() == 0x7D:
            self.p += 1
            return
        while True:
            self.ws()
            key = self.string()
            self.ws()
            if self.peek() != 0x3A:
                raise _Bad
            self.p += 1
            self.ws()
            if member is not None:
                member(key, depth + 1)
            else:
                self.skip(depth + 1)
            self.ws()
            c = self.peek()
            if c == 0x7D:
                self.p += 1
                return
            if c != 0x2C:
                raise _Bad
            self.p += 1

    def skip(self, depth: int) -> None:
        if depth > _JSON_DEPTH or self.p >= len(self.b):
            raise _Bad
        c = self.peek()
        if c == 0x7B:
            self.obj(depth)
        elif c == 0x5B:
            self.p += 1
            self.ws()
            if self.peek() == 0x5D:
                self.p += 1
                return
            while True:
                self.ws()
                self.skip(depth + 1)
                self.ws()
                c = self.peek()
                if c == 0x5D:
                    self.p += 1
                    return
                if c != 0x2C:
                    raise _Bad
                self.p += 1
        elif c == 0x22:
            self.string()
        elif c == 0x74:
            self.lit(b"true")
        elif c == 0x66:
            self.lit(b"false")
        elif c == 0x6E:
            self.lit(b"null")
        else:
            self.number()


def _status(h: bytes) -> int:
    if len(h) < 10 or h[:8] != b"NATS/1.0":
        return -1
    if h[8] == 0x0D:
        return 0
    if h[8] != 0x20 or len(h) < 14:
        return -1
    if not all(c in _DIGITS for c in h[9:12]):
        return -1
    return int(h[9:12]) if h[12] in (0x0D, 0x20) else -1


def classify(header: bytes, body: bytes) -> tuple[int, int, int, bytes | None]:
    """(kind, code, err_code, description) of one answer (tc_ack_classify)."""
    status = 0
    if header:
        status = _status(header)
        if status < 0:
            return BAD, 0, 0, None
    if not body:
        return (NO_RESPONDERS if status == 503 else OTHER_ERROR if status else BAD), status, 0, None
    f: dict[str, Any] = {"stream": 0, "seq": 0, "duplicate": 0, "error": 0, "code": 0,
                         "err_code": 0, "desc": None}
    s = _Json(body)

    def error_member(key: bytes, depth: int) -> None:
        c = s.peek()
        if key == b"code" and c not in (-1, 0x22, 0x7B, 0x5B):
            f["code"] = s.number()
        elif key == b"err_code" and c not in (-1, 0x22, 0x7B, 0x5B):
            f["err_code"] = s.number()
        elif key == b"description" and c == 0x22:
            f["desc"] = s.string()
        else:
            s.skip(depth)

    def member(key: bytes, depth: int) -> None:
        c = s.peek()
        if key == b"stream" and c == 0x22:
            f["stream"] = len(s.string()) > 0
        elif key == b"seq" and (c in _DIGITS or c == 0x2D):
            s.number()
            f["seq"] = 1
        elif key == b"duplicate" and c == 0x74:
            f["duplicate"] = 1
            s.lit(b"true")
        elif key == b"error" and c == 0x7B:
            f["error"] = 1
            s.obj(depth, error_member)
        else:
            s.skip(depth)

    try:
        s.ws()
        s.obj(0, member)
        s.ws()
        if s.p != len(body):
            raise _Bad
    except _Bad:
        return BAD, 0, 0, None
    if f["error"]:
        code = f["code"] or status
        err_code = f["err_code"]
        if err_code in (10077, 10047, 10028):
            kind = STREAM_FULL
        elif err_code == 10060:
            kind = WRONG_STREAM
        elif err_code == 10167 or code == 429:
            kind = TOO_MANY
        else:
            kind = OTHER_ERROR
        return kind, code, err_code, f["desc"]
    if status and status != 200:
        return BAD, status, 0, None
    if not (f["stream"] and f["seq"]):
        return BAD, 0, 0, None
    return (DUPLICATE if f["duplicate"] else OK), 0, 0, None


def _u64(b: bytes) -> int | None:
    if not 0 < len(b) <= 19 or (len(b) > 1 and b[0] == 0x30) or not all(c in _DIGITS for c in b):
        return None
    return int(b)


class AckWindow:
    """The answers to one emitter's JetStream publishes (see ``_wire.pyi``)."""

    def __init__(self, inbox: str) -> None:
        if type(inbox) is not str:
            raise TypeError(f"inbox must be a str, got {type(inbox).__name__}")
        validate_prefix(inbox)
        self.inbox = inbox
        self._prefix = inbox.encode() + b"."
        self.sid = 0
        self.serial = 0
        self._state: bytearray | None = None
        self.in_flight = self.acked = self.answers = self.stale = self.repeats = 0
        self._kinds = [0] * len(ACK_KINDS)
        self._last: tuple[int, int, int, bytes] | None = None

    @property
    def batch_size(self) -> int:
        return len(self._state) if self._state is not None else 0

    def begin(self, serial: int, state: bytearray) -> None:
        if type(state) is not bytearray:
            raise TypeError("state must be a bytearray")
        if not 0 <= serial < 2**64:
            raise OverflowError("serial out of range")
        self.serial, self._state = serial, state
        self.in_flight = self.acked = self.answers = 0
        for i, st in enumerate(state):
            if st == ACKED:
                self.acked += 1
            else:
                state[i] = UNSENT

    def end(self) -> None:
        self._state = None
        self.in_flight = 0

    def send(self, first: int, last: int) -> int:
        state = self._state
        if state is None:
            return 0
        if first < 0 or last < first:
            raise ValueError("need 0 <= first <= last")
        k = 0
        for i in range(first, min(last, len(state))):
            if state[i] != ACKED and state[i] != SENT:
                state[i] = SENT
                k += 1
        self.in_flight += k
        return k

    def acked_range(self, first: int, last: int) -> bool:
        """Every message in [first, last) is ACKED."""
        state = self._state
        if state is None or first < 0 or last < first:
            raise ValueError("no batch, or not 0 <= first <= last")
        return all(st == ACKED for st in state[first:min(last, len(state))])

    def sent_in(self, first: int, last: int) -> int:
        """How many messages in [first, last) wait for their answer (SENT)."""
        state = self._state
        if state is None or first < 0 or last < first:
            raise ValueError("no batch, or not 0 <= first <= last")
        return state.count(SENT, first, min(last, len(state)))

    def _apply(self, token: tuple[int, int] | None, kind: int, code: int, err_code: int,
               desc: bytes | None) -> None:
        self._kinds[kind] += 1
        if kind >= NO_RESPONDERS:
            self._last = (kind, code, err_code, (desc or b"")[:ACK_DESC_MAX])
        state = self._state
        if token is None or state is None or token[0] != self.serial or token[1] >= len(state):
            self.stale += 1
            return
        self.answers += 1
        i = token[1]
        if kind in (OK, DUPLICATE):
            if state[i] == ACKED:
                self.repeats += 1
                return
            if state[i] == SENT:
                self.in_flight -= 1
            state[i] = ACKED
            self.acked += 1
        elif state[i] == SENT:
            self.in_flight -= 1
            state[i] = FAILED

    def _token(self, subject: bytes) -> tuple[int, int] | None:
        pre = self._prefix
        if len(subject) <= len(pre) or not subject.startswith(pre):
            return None
        serial, dot, index = subject[len(pre):].partition(b".")
        if not dot:
            return None
        s, i = _u64(serial), _u64(index)
        return None if s is None or i is None else (s, i)

    def answer(self, subject: bytes, header: bytes, body: bytes) -> None:
        """One answer that arrived another way (a message object of the client library)."""
        kind, code, err_code, desc = classify(header, body)
        token = self._token(subject)
        self._apply(token, BAD if token is None else kind, code, err_code, desc)

    def feed(self, data: bytes, pos: int = 0) -> tuple[int, int]:
        n = len(data)
        if not 0 <= pos <= n:
            raise ValueError("pos out of range")
        start = pos
        while pos < n:
            avail = n - pos
            lf = data.find(b"\n", pos, pos + min(avail, ACK_MAX_LINE))
            if lf < 0:
                return pos - start, (-1 if avail >= ACK_MAX_LINE else 0)
            line_n = lf - pos + 1
            if line_n < 2 or data[lf - 1] != 0x0D:
                return pos - start, -1
            line = data[pos:lf - 1]
            op = line
            for k, c in enumerate(line):
                if c in (0x20, 0x09):
                    op = line[:k]
                    break
            if op not in (b"MSG", b"HMSG"):
                return pos - start, (line_n if op in _ONE_LINE_OPS else -1)
            fields = [f for f in line.replace(b"\t", b" ").split(b" ") if f]
            if len(fields) > 6:
                return pos - start, -1
            base = 4 if op == b"MSG" else 5
            if len(fields) not in (base, base + 1):
                return pos - start, -1
            sid, size = _u64(fields[2]), _u64(fields[-1])
            hsize = _u64(fields[-2]) if op == b"HMSG" else 0
            if sid is None or size is None or hsize is None or hsize > size or size > 1 << 40:
                return pos - start, -1
            frame = line_n + size + 2
            if frame > avail:
                return pos - start, 0
            payload = pos + line_n
            if data[payload + size:payload + size + 2] != b"\r\n":
                return pos - start, -1
            if sid != self.sid or self.sid == 0:
                return pos - start, frame
            kind, code, err_code, desc = classify(data[payload:payload + hsize],
                                                  data[payload + hsize:payload + size])
            token = self._token(fields[1])
            self._apply(token, BAD if token is None else kind, code, err_code, desc)
            pos += frame
        return pos - start, 0

    def counts(self) -> dict[str, int]:
        return dict(zip(ACK_KINDS, self._kinds))

    def last_error(self) -> str:
        if self._last is None:
            return ""
        kind, code, err_code, desc = self._last
        return _describe(kind, code, err_code, desc)


def _describe(kind: int, code: int, err_code: int, desc: bytes) -> str:
    text = desc.decode("utf-8", "replace")
    return (f"{ACK_KINDS[kind]}" + (f": {text}" if text else "")
            + (f" (code {code}" + (f", err_code {err_code}" if err_code else "") + ")"
               if code else ""))
