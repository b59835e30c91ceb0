"""The JetStream stream that carries partials (docs/scale-out.md): its name, subjects and bounds,
shared by the instances that publish to it and the merge workers that read it."""

from __future__ import annotations

import nats
from nats.js.api import RetentionPolicy, StreamConfig

STREAM = "PARTIALS"
SUBJECT_PREFIX = "partials"
#: the stream's bounds: limits retention, the oldest partials go first past either
STREAM_MAX_BYTES = 1 << 30
STREAM_MAX_AGE_S = 3600.0


async def ensure_stream(nc, replicas: int = 1) -> None:
    """The partials stream, created when missing (whoever comes second finds it there; one an
    operator made with other bounds is used as it is)."""
    js = nc.jetstream()
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(
            name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"], retention=RetentionPolicy.LIMITS,
            max_bytes=STREAM_MAX_BYTES, max_age=STREAM_MAX_AGE_S, num_replicas=replicas))
