"""Type stubs for the compiled NATS wire encoder and JetStream ack reader (``_wire.pyx``);
``_wire_py.py`` is its twin."""

from collections.abc import Iterable

DEFAULT_CHUNK_BYTES: int  # 262144
#: the kinds of answer AckWindow counts, in tc_wire.h's order
ACK_KINDS: tuple[str, ...]

def encode_batch(
    aggregates: Iterable[object],
    prefix: str,
    format: str,
    max_subject_bytes: int,
    chunk_bytes: int = ...,
    max_body_bytes: int = ...,
) -> tuple[list[bytes], int, int, int]:
    """One tick batch of aggregates as NATS protocol bytes: ``(chunks, encoded, too_long, nbytes)``.

    Each aggregate, in order, becomes ``PUB <subject> <len(body)>\\r\\n<body>\\r\\n`` with
    ``subject = subjects.subject_for(prefix, a.device, a.sensor)`` (UTF-8) and ``body =
    bodies.encode_json(a)`` or ``bodies.encode_cbor(a)`` -- unless the subject is longer than
    ``max_subject_bytes`` UTF-8 bytes, or the body longer than ``max_body_bytes`` (default: no
    limit; the emitter passes the server's ``max_payload``): then it is skipped and counted in
    ``too_long``.

    ``chunks``: the messages concatenated and cut at message boundaries; a chunk is at most
    ``chunk_bytes`` long unless it is one message larger than that. ``encoded``: messages
    written. ``nbytes``: sum of ``len(subject) + len(body)`` over them (subject in characters,
    as the emitter counts backlog bytes).

    Raises ValueError for a format other than "json"/"cbor" (bodies.encoder_for's message), a
    prefix ``subjects.validate_prefix`` rejects, ``max_subject_bytes < 0``, ``chunk_bytes < 1``
    or ``max_body_bytes < 0``; TypeError for a prefix that is not a str or non-int sizes.
    Whatever subject_for or the body encoder raises for an aggregate propagates (e.g. cbor2 on a
    lone surrogate in a name).
    """

def encode_jetstream(
    aggregates: Iterable[object],
    prefix: str,
    format: str,
    max_subject_bytes: int,
    reply_prefix: str,
    first_index: int = 0,
    expected_stream: str | None = None,
    chunk_bytes: int = ...,
    max_body_bytes: int = ...,
    chunk_messages: int = ...,
) -> tuple[list[bytes], list[int], int, int, int]:
    """As `encode_batch`, for JetStream: ``(chunks, counts, encoded, too_long, nbytes)``.

    Each aggregate becomes ``HPUB <subject> <reply_prefix>.<i> <len(header)> <len(header) +
    len(body)>\\r\\n<header><body>\\r\\n``, where ``i`` counts the messages written from
    ``first_index`` on and ``header`` is ``NATS/1.0\\r\\nNats-Msg-Id: <id>\\r\\n\\r\\n`` with
    ``id = subjects.msg_id(a.device, a.sensor, a.window_end)`` (and ``Nats-Expected-Stream:
    <expected_stream>\\r\\n`` before the blank line when a stream is given). The payload limit
    ``max_body_bytes`` counts header and body. A chunk holds at most ``chunk_messages``
    messages; ``counts`` has the number of messages of each chunk. ``nbytes`` counts
    ``len(subject) + len(header) + len(body)``.

    Raises as `encode_batch`, and ValueError/TypeError for a reply_prefix that is not a valid
    literal subject str, ``first_index < 0``, ``chunk_messages < 1``, or an expected_stream that
    is not a stream name (printable ASCII without '.', '*', '>', '/', '\\\\').
    """

def subject_order(aggregates: Iterable[object]) -> list[object]:
    """The aggregates in the order of their subjects' device token (``subjects.escape_token``
    of ``a.device``, as UTF-8 bytes; a device that is not an exact str counts as ``b""``), and
    in their given order when it is the same: a stable sort. JetStream stores a tick batch in
    this order markedly faster than in the engine's hash order (docs/jetstream.md)."""

def float_text(x: float) -> str:
    """``repr(float(x))``, as the JSON bodies write a float: the encoder's own formatter
    (includes/tc_repr.h, Ryu's shortest digits in repr's layout), exposed so the tests can hold
    it to repr on any double; "nan", "inf" and "-inf" for the non-finite ones."""

class AckWindow:
    """The answers to one emitter's JetStream publishes, read from the connection's bytes
    (tc_wire.h's tc_acks_*: that comment has the rules). A batch's messages carry the reply
    subjects ``<inbox>.<serial>.<index>``; ``sid`` is the id of the one subscription on
    ``<inbox>.>``. Not thread-safe: one owner thread."""

    inbox: str
    sid: int
    @property
    def serial(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def in_flight(self) -> int:
        """Messages SENT and not answered yet."""
    @property
    def acked(self) -> int:
        """Messages of the current batch in state ACKED."""
    @property
    def answers(self) -> int:
        """Answers applied to the current batch since `begin`."""
    @property
    def stale(self) -> int:
        """Answers read for no current batch (another serial, an unknown subject)."""
    @property
    def repeats(self) -> int:
        """Positive answers for a message already ACKED."""
    def __init__(self, inbox: str) -> None:
        """``inbox``: a literal subject (subjects.validate_prefix), without the trailing dot."""
    def begin(self, serial: int, state: bytearray) -> None:
        """Starts an attempt on a batch: ``state`` has one byte per message (kept by the caller
        between attempts); whatever is not ACKED becomes unsent again."""
    def end(self) -> None:
        """The attempt is over: answers now count as stale."""
    def send(self, first: int, last: int) -> int:
        """Messages [first, last) are being sent: those not ACKED become SENT. Returns how many
        were not in flight yet (0 when no batch is begun)."""
    def acked_range(self, first: int, last: int) -> bool:
        """Every message in [first, last) is ACKED (ValueError without a batch)."""
    def sent_in(self, first: int, last: int) -> int:
        """Messages in [first, last) that are SENT (ValueError without a batch)."""
    def answer(self, subject: bytes, header: bytes, body: bytes) -> None:
        """One answer that came another way (a message object of the client library):
        ``header`` is the raw header block (``b""`` for none)."""
    def feed(self, data: bytes, pos: int = ...) -> tuple[int, int]:
        """Reads the server's bytes from ``data[pos:]``: ``(used, next)``. ``used`` bytes were
        whole answers of subscription ``sid``, applied. ``next`` is the length of the whole
        frame that follows when it is not one (hand exactly that to the client library), 0
        when nothing follows or the next frame is incomplete (call again with more bytes), -1
        when it cannot be read here (hand the rest to the client library)."""
    def counts(self) -> dict[str, int]:
        """Every answer read so far, by kind (ACK_KINDS)."""
    def last_error(self) -> str:
        """The last error answer, e.g. ``stream_full: maximum messages exceeded (code 503,
        err_code 10077)``; "" when none came."""
