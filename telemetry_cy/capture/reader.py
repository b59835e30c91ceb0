"""Opens a capture, whichever kind it is: recognised by its first bytes, never by its name.

- ``89 54 43 43 41 50 0d 0a`` (the segment magic): a binary capture, read with its later
  segments (binary_reader.py);
- an ASCII digit: ``mosquitto_sub -F '%U %t %x'`` text (text_reader.py);
- an empty file: a capture of no messages;
- anything else: ``CaptureError``.

Everything that reads captures (``replay`` into an engine, ``telemetry-cy replay``) goes through
``Capture``, so both kinds work everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from telemetry_cy.capture.binary_reader import PlacedBlock, Torn, read_blocks
from telemetry_cy.capture.format import SEGMENT_MAGIC, CaptureError, Message
from telemetry_cy.capture.text_reader import read_text

BINARY, TEXT, EMPTY = "binary", "mosquitto_sub", "empty"


class Chunk:
    """A run of messages in capture order: up to text_reader.CHUNK lines of a text capture."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages

    def messages(self) -> list[Message]:
        return self._messages

    def publish_stream(self) -> bytes | None:
        """The chunk as MQTT PUBLISH packets ready to send, when every message is QoS 0 without
        DUP or RETAIN (a binary block's records column as it is); None otherwise."""
        return None

    def __len__(self) -> int:
        return len(self._messages)


class BlockChunk(Chunk):
    """One binary block: its records are parsed only when asked for."""

    def __init__(self, placed: PlacedBlock) -> None:
        super().__init__([])
        self._placed = placed
        self._parsed = False

    def messages(self) -> list[Message]:
        if not self._parsed:
            self._messages = self._placed.messages()
            self._parsed = True
        return self._messages

    def publish_stream(self) -> bytes | None:
        block = self._placed.block
        return block.frames if block.plain else None

    def __len__(self) -> int:
        return len(self._placed.block)


class Capture:
    """A capture file (and, for a binary capture, the segments after it).

    ``chunks()`` / ``messages()`` read it from the start each time they are called; ``torn``
    lists the torn tails met so far (a recorder killed mid-write), which are skipped, not errors.
    Corrupted or foreign bytes raise ``CaptureError`` while reading.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.torn: list[Torn] = []
        with open(self.path, "rb") as f:
            head = f.read(len(SEGMENT_MAGIC))
        if not head:
            self.kind = EMPTY
        elif head[:1] == SEGMENT_MAGIC[:1]:
            self.kind = BINARY   # the segment reader checks the rest of the magic
        elif head[:1].isdigit():
            self.kind = TEXT
        else:
            raise CaptureError("neither a telemetry-cy capture (magic 89 54 43 43 41 50 0d 0a) "
                               "nor mosquitto_sub -F '%U %t %x' text", str(self.path), 0)

    def chunks(self) -> Iterator[Chunk]:
        self.torn.clear()
        if self.kind == BINARY:
            for placed in read_blocks(self.path, self.torn):
                yield BlockChunk(placed)
        elif self.kind == TEXT:
            for messages in read_text(self.path, self.torn):
                yield Chunk(messages)

    def messages(self) -> Iterator[Message]:
        for chunk in self.chunks():
            yield from chunk.messages()

    def __repr__(self) -> str:
        return f"<Capture {self.path} kind={self.kind}>"
