"""NATS protocol bytes for a tick batch of aggregates: the pure-Python twin of ``_wire.pyx``.

It's made of the same functions the emitter uses one aggregate at a time (`subjects.subject_for`,
`bodies.encoder_for`), so it's the oracle the compiled version is tested against byte for byte.
A message is ``PUB <subject> <body length>\\r\\n<body>\\r\\n``, the core-NATS publish without a
reply subject. Messages are concatenated and cut into chunks at message boundaries.
"""

from __future__ import annotations

import sys

from telemetry_cy.sink.bodies import encoder_for
from telemetry_cy.sink.subjects import subject_for, validate_prefix

DEFAULT_CHUNK_BYTES = 262144


def _check_args(prefix, format, max_subject_bytes, chunk_bytes, max_body_bytes):
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
                             ("max_body_bytes", max_body_bytes, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
        if not low <= value <= sys.maxsize:
            raise ValueError(f"{name} must be between {low} and {sys.maxsize}, got {value}")
    return encode


def encode_batch(aggregates: list, prefix: str, format: str, max_subject_bytes: int,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 max_body_bytes: int = sys.maxsize) -> tuple[list[bytes], int, int, int]:
    """See ``_wire.pyi``."""
    encode = _check_args(prefix, format, max_subject_bytes, chunk_bytes, max_body_bytes)
    chunks: list[bytes] = []
    parts: list[bytes] = []
    size = encoded = too_long = nbytes = 0
    for a in aggregates:
        subject = subject_for(prefix, a.device, a.sensor)
        subject_b = subject.encode()
        if len(subject_b) > max_subject_bytes:
            too_long += 1
            continue
        body = encode(a)
        if len(body) > max_body_bytes:
            too_long += 1
            continue
        msg = b"PUB %s %d\r\n%s\r\n" % (subject_b, len(body), body)
        if size and size + len(msg) > chunk_bytes:
            chunks.append(b"".join(parts))
            parts, size = [], 0
        parts.append(msg)
        size += len(msg)
        encoded += 1
        nbytes += len(subject) + len(body)  # as the emitter counts backlog bytes
    if parts:
        chunks.append(b"".join(parts))
    return chunks, encoded, too_long, nbytes
