"""Which JetStream streams capture the emitter's subjects (``<prefix>.<device>.<sensor>``).

The stream is the operator's (docs/jetstream.md shows how to create it): the emitter never creates
or changes one. Without a stream every JetStream publish is answered "no responders" and the
batches wait in the backlog, so the daemon asks once at start and says in one line when none
captures the subjects. Two JetStream API requests: ``$JS.API.STREAM.NAMES`` filtered by
``<prefix>.>`` (the streams whose subjects overlap ours), then ``$JS.API.STREAM.INFO.<name>`` of
each, to keep those whose subjects take every ``<prefix>.*.*`` (a stream on ``agg.dev1.*`` overlaps
but leaves most devices out).
"""

from __future__ import annotations

import json
from typing import Any

#: streams listed per page by nats-server's $JS.API.STREAM.NAMES
_PAGE = 1024


def covers(pattern: str, prefix: str) -> bool:
    """Whether a stream subject `pattern` matches every subject ``<prefix>.<a>.<b>``."""
    want = prefix.split(".") + ["*", "*"]
    tokens = pattern.split(".")
    for i, w in enumerate(want):
        if i >= len(tokens):
            return False
        t = tokens[i]
        if t == ">":
            return True
        if t == "*":
            continue
        if w == "*" or t != w:   # a literal token cannot take every device or sensor
            return False
    return len(tokens) == len(want)


async def _api(nc: Any, subject: str, request: dict, timeout: float) -> dict:
    msg = await nc.request(subject, json.dumps(request).encode(), timeout=timeout)
    reply = json.loads(msg.data)
    if "error" in reply:
        err = reply["error"]
        raise RuntimeError(f"{subject}: {err.get('description', err)} "
                           f"(err_code {err.get('err_code', '?')})")
    return reply


async def streams_capturing(nc: Any, prefix: str, timeout: float) -> list[str]:
    """Names of the streams that capture every subject of `prefix`. Raises what nats-py raises
    when the server does not answer (no JetStream: NoRespondersError; TimeoutError) and
    RuntimeError for an API error (e.g. not permitted)."""
    names: list[str] = []
    offset = 0
    while True:
        page = await _api(nc, "$JS.API.STREAM.NAMES", {"subject": f"{prefix}.>",
                                                       "offset": offset}, timeout)
        found = page.get("streams") or []
        names += found
        offset += len(found)
        if not found or offset >= page.get("total", 0) or len(found) < _PAGE:
            break
    out = []
    for name in names:
        info = await _api(nc, f"$JS.API.STREAM.INFO.{name}", {}, timeout)
        subjects = info.get("config", {}).get("subjects") or []
        if any(covers(s, prefix) for s in subjects):
            out.append(name)
    return out
