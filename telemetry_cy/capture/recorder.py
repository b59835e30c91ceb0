"""``telemetry-cy record``: a live MQTT feed into a capture, at the full ingest rate.

Two threads, the daemon's ingest path up to the ring:
  [1] the MQTT network thread (the daemon's ``MqttSource``: paho + the compiled frame reader)
      writes every PUBLISH into the ring with its arrival time and DUP/QoS/RETAIN flags; a full
      ring drops and counts ``ingest_full``, it never waits;
  [2] the calling thread is the ring's consumer: the block encoder moves records from the ring
      into a block without the GIL, and the writer appends whole blocks to the segment files.
The source subscribes for a faithful recording, each message with the QoS and retain flag its
publisher gave it: QoS 2, since a broker delivers min(published QoS, subscription QoS); and with
MQTT 5 "retain as published", since a broker otherwise clears RETAIN on live deliveries (MQTT
3.1.1 has no such option: there only the retained messages sent at subscribe time keep the flag).

A block goes out when it reaches ``block_bytes`` or ``flush_seconds`` after its first record, so a
killed recorder loses at most that much besides what is still in the ring.

Stopping (``stop`` set, e.g. by SIGINT/SIGTERM): the source disconnects first, then everything it
put into the ring is written, then the last segment is closed: the capture is complete.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Sequence

from telemetry_cy.backend import ACTIVE, Backend
from telemetry_cy.capture.writer import CaptureWriter, DiskFull
from telemetry_cy.service.logs import redact_url
from telemetry_cy.source.mqtt import MqttSource

EXIT_OK = 0
EXIT_USAGE = 2        # bad arguments, or the output exists
EXIT_UNREACHABLE = 3  # not connected and subscribed within start_timeout
EXIT_WRITE = 5        # the disk is full (or another write error): the capture ends before it

#: Largest MQTT topic: a ring record must take it beside the largest payload.
_MAX_TOPIC = 0xFFFF
#: Records the encoder takes per call before the loop looks at the clock again.
FILL_RECORDS = 1 << 16


def encoder_for(backend: Backend, block_bytes: int):
    """The block encoder of the ring's set (the compiled one reads the compiled ring's memory)."""
    name = "_encode" if backend.compiled else "_encode_py"
    return importlib.import_module(f"telemetry_cy.capture.{name}").BlockEncoder(block_bytes)


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


class Recorder:
    """Records ``topics`` from ``url`` into the capture ``out`` (and its rotated segments)."""

    def __init__(self, url: str, topics: Sequence[str], out: str, *, rotate_bytes: int = 0,
                 rotate_seconds: float = 0.0, overwrite: bool = False,
                 ring_bytes: int = 64 << 20, max_payload_bytes: int = 1 << 20,
                 block_bytes: int = 1 << 18, flush_seconds: float = 0.2, protocol: int = 5,
                 client_id: str | None = None, backend: Backend = ACTIVE,
                 **source_options) -> None:
        self.flush_seconds = float(flush_seconds)
        record = backend.ring.record_size(_MAX_TOPIC, max_payload_bytes)
        self.ring = backend.ByteRing(_pow2_at_least(max(ring_bytes, 2 * record + 16)))
        self.encoder = encoder_for(backend, block_bytes)
        meta = {"tool": "telemetry-cy record", "url": redact_url(url), "topics": list(topics),
                "protocol": protocol}
        # the writer first: an unusable output fails before anything connects
        self.writer = CaptureWriter(out, rotate_bytes=rotate_bytes, rotate_seconds=rotate_seconds,
                                    meta=meta, overwrite=overwrite)
        self.source = MqttSource(
            self.ring, url, list(topics), qos=2, retain_as_published=protocol == 5,
            protocol=protocol, client_id=client_id,
            max_payload_bytes=max_payload_bytes,
            recv_buffer_bytes=max(1 << 20, _pow2_at_least(max_payload_bytes + _MAX_TOPIC + 16)),
            **source_options)
        self.started_at = time.time()
        self.error: str | None = None
        self.unwritten = 0         # records in hand when the disk filled up
        self._block_since: float | None = None

    # ---- the writer side (this thread is the ring's consumer) ------------------------------------

    def _write_block(self) -> None:
        block = self.encoder.take()
        self._block_since = None
        if block is not None:
            try:
                self.writer.write_block(*block)
            except DiskFull:
                self.unwritten += block[0]
                raise

    def _pump(self) -> int:
        """Moves what the ring holds into blocks, writing each full one. Returns records moved."""
        moved = 0
        while True:
            n = self.encoder.fill(self.ring, FILL_RECORDS)
            moved += n
            if self.encoder.n_records and self._block_since is None:
                self._block_since = time.monotonic()
            if self.encoder.full:
                self._write_block()
            elif n < FILL_RECORDS:
                return moved

    def _flush_if_due(self) -> None:
        if (self._block_since is not None
                and time.monotonic() - self._block_since >= self.flush_seconds):
            self._write_block()

    def run(self, stop: threading.Event, start_timeout: float = 10.0,
            on_ready: Callable[[], None] | None = None) -> int:
        """Records until ``stop`` is set; returns the exit code (``error`` says what failed).
        ``on_ready`` is called once connected and subscribed."""
        self.source.start()
        try:
            code = self._wait_connected(stop, start_timeout)
            if code == EXIT_OK:
                if on_ready is not None and not stop.is_set():
                    on_ready()
                code = self._record(stop)
        finally:
            self.source.stop()
        if code == EXIT_OK:
            code = self._finish()
        else:
            self.writer.close()
        if code == EXIT_UNREACHABLE:
            self.writer.remove_if_empty()   # nothing recorded: leave no file to trip the next run
        return code

    def _wait_connected(self, stop: threading.Event, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self.source.wait_connected(0.05):
            if stop.is_set():
                return EXIT_OK
            if time.monotonic() >= deadline:
                last = self.source.stats().get("last_error") or "no answer"
                self.error = (f"not connected and subscribed to {self.source.url} within "
                              f"{timeout:g} s: {last}")
                return EXIT_UNREACHABLE
        return EXIT_OK

    def _record(self, stop: threading.Event) -> int:
        try:
            while not stop.is_set():
                if not self._pump():
                    self.ring.wait(min(0.05, self.flush_seconds))
                self._flush_if_due()
                self.writer.rotate_if_due()
        except DiskFull as exc:
            return self._disk_full(exc)
        return EXIT_OK

    def _finish(self) -> int:
        """After the source stopped: everything it put into the ring goes into the capture."""
        try:
            self._pump()
            self._write_block()
        except DiskFull as exc:
            return self._disk_full(exc)
        self.writer.close()
        return EXIT_OK

    def _disk_full(self, exc: DiskFull) -> int:
        self.source.stop()
        self.unwritten += self.encoder.discard()
        while batch := self.ring.pop_many(1 << 16):
            self.unwritten += len(batch)
        self.writer.close()
        self.error = (f"{exc.strerror}; the capture ends before it: {self.writer.records} "
                      f"messages in {self.writer.segment + 1} segment(s), complete and readable")
        return EXIT_WRITE

    # ---- counters --------------------------------------------------------------------------------

    def counters(self) -> dict:
        """The final JSON object: what was recorded, what was dropped and why."""
        src = self.source.stats()
        drops = dict(src["drops"])
        drops["oversize"] = drops.get("oversize", 0) + self.encoder.skipped
        out = {
            "recorded": self.writer.records,
            "received": src["received"],
            "drops": drops,
            "unwritten": self.unwritten,
            "segments": self.writer.segment + 1,
            "blocks": self.writer.blocks,
            "bytes": self.writer.bytes,
            "newest": str(self.writer.path),
            "seconds": round(time.time() - self.started_at, 3),
            "mqtt": {k: src.get(k) for k in ("connects", "disconnects", "protocol_errors")},
        }
        if self.error:
            out["error"] = self.error
        return out
