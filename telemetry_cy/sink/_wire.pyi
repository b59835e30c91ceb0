"""Type stubs for the compiled NATS wire encoder (``_wire.pyx``); ``_wire_py.py`` is its twin."""

from collections.abc import Iterable

DEFAULT_CHUNK_BYTES: int  # 262144

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
