"""Reads the text ``mosquitto_sub -F '%U %t %x'`` prints: one message per line.

    1796236693.253515599 site/dev-1/sensor/temp a46164...

``%U`` is the unix time with nanoseconds (mosquitto 2.0: seconds, a dot, nine digits; any 1-9
fractional digits are accepted), ``%t`` the topic (it may contain spaces: the time is the first
field and the payload the last), ``%x`` the payload in hex (empty for an empty payload). The text
carries no QoS or retain flag: those messages read as QoS 0, not retained. A line that does not
parse is a ``CaptureError`` naming its number; a last line without its newline (mosquitto_sub
killed mid-write) is a torn tail, reported and skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from telemetry_cy.capture.binary_reader import Torn
from telemetry_cy.capture.format import CaptureError, Message

_TIME = re.compile(rb"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_HEX = re.compile(rb"(?:[0-9a-fA-F]{2})*")
#: Messages per chunk handed out (bounds memory on a large file).
CHUNK = 4096


def parse_line(line: bytes, path: str = "", number: int | None = None) -> Message:
    """One line without its newline."""
    stamp, sep, rest = line.partition(b" ")
    topic, sep2, hexed = rest.rpartition(b" ")
    if not (sep and sep2):
        raise CaptureError("expected '<unix time> <topic> <payload hex>' "
                           "(mosquitto_sub -F '%U %t %x')", path, line=number)
    if not _TIME.fullmatch(stamp):
        raise CaptureError(f"bad time {stamp[:40]!r} (expected %U: seconds.nanoseconds)", path,
                           line=number)
    if not topic:
        raise CaptureError("empty topic", path, line=number)
    if not _HEX.fullmatch(hexed):
        raise CaptureError("bad payload hex", path, line=number)
    return Message(float(stamp), topic, bytes.fromhex(hexed.decode("ascii")))


def read_text(path: str | os.PathLike, torn: list[Torn]) -> Iterator[list[Message]]:
    """The messages of a mosquitto_sub text capture, in chunks of up to CHUNK, in order."""
    path = Path(path)
    chunk: list[Message] = []
    offset = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                torn.append(Torn(str(path), offset, size, "last line has no newline"))
                break
            offset += len(line)
            body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            chunk.append(parse_line(body, str(path), number))
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
