"""`telemetry-cy run`: MQTT in, window aggregates out to NATS, bounded everywhere.

Threads (docs/architecture.md): [1] the MQTT network thread (MqttSource) writes records into the
ring; [2] the engine thread drains it and ticks; [3] the NATS thread publishes tick batches. This
module is the main thread: it starts them, logs a stats line every stats_every, and on SIGTERM or
SIGINT stops them in data-flow order so nothing accepted is lost: stop reading MQTT, drain the
ring, run the final tick, flush NATS within the deadline, print the final counters as one JSON
object on stdout. A second signal exits at once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from telemetry_cy import Engine, logs
from telemetry_cy.reasons import DROP_REASONS

# Exit codes (docs/operations.md)
EXIT_OK = 0
EXIT_CONFIG = 2          # a setting is invalid
EXIT_UNREACHABLE = 3     # MQTT or NATS not connected within start_timeout
EXIT_INTERNAL = 4        # a pipeline thread died
EXIT_SIGNAL_TWICE = 130  # a second SIGINT/SIGTERM during shutdown


def _pow2_at_least(n: int) -> int:
    return 1 << max(12, (n - 1).bit_length())


class Daemon:
    def __init__(self, config, source_factory=None, emitter_factory=None):
        from telemetry_cy._ring import ByteRing
        from telemetry_cy.emitter import NatsEmitter
        from telemetry_cy.engine_thread import EngineThread
        from telemetry_cy.mqtt import MqttSource

        c = self.config = config
        self.log = logs.get("daemon")
        self.started_at = time.time()
        self.ring = ByteRing(_pow2_at_least(c.ring_bytes))
        self.engine = Engine(window=c.window, emit_every=c.emit_every, max_keys=c.max_keys,
                             key_ttl=c.key_ttl, max_payload_bytes=c.max_payload_bytes,
                             max_name_bytes=c.max_name_bytes)
        self.emitter = (emitter_factory or NatsEmitter)(
            servers=[u.strip() for u in c.nats_url.split(",") if u.strip()],
            subject_prefix=c.subject_prefix, format=c.format, jetstream=c.jetstream,
            max_backlog_batches=c.emit_backlog_batches, max_backlog_bytes=c.emit_backlog_bytes,
            user=c.nats_user or None, password=c.nats_password or None,
            token=c.nats_token or None, creds_file=c.nats_creds_file or None,
            tls_ca_file=c.nats_ca_file or None, tls_cert_file=c.nats_cert_file or None,
            tls_key_file=c.nats_key_file or None)
        self.engine_thread = EngineThread(self.engine, self.ring, self.emitter.submit)
        self.source = (source_factory or MqttSource)(
            self.ring, url=c.mqtt_url, topics=c.topic, qos=c.qos,
            client_id=c.client_id or None, session_expiry=c.session_expiry,
            username=c.mqtt_username or None, password=c.mqtt_password or None,
            ca_file=c.mqtt_ca_file or None, cert_file=c.mqtt_cert_file or None,
            key_file=c.mqtt_key_file or None, protocol=5 if c.mqtt_protocol == "5" else 4,
            max_payload_bytes=c.max_payload_bytes, keepalive=c.mqtt_keepalive)
        self.stop_requested = threading.Event()
        self.signals = 0

    # ---- lifecycle ----

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1
        if self.signals > 1:
            # the operator insists: no drain, no flush
            os._exit(EXIT_SIGNAL_TWICE)
        self.log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        self.stop_requested.set()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        c = self.config
        self.log.info("starting", extra={"fields": {
            "mqtt": c.mqtt_url, "topics": ",".join(c.topic), "nats": c.nats_url,
            "window_s": c.window, "emit_every_s": c.emit_every}})
        self.start()
        code = self._wait_for_connections()
        if code == EXIT_OK:
            code = self._serve()
        self.shutdown()
        return code

    def start(self) -> None:
        """Starts the threads, downstream first, so each has a consumer when data arrives."""
        self.emitter.start()
        self.engine_thread.start()
        self.source.start()

    def _wait_for_connections(self) -> int:
        timeout = self.config.start_timeout
        if timeout <= 0:
            return EXIT_OK
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            if self.source.stats().get("connected") and self.emitter.stats().get("connected"):
                return EXIT_OK
            time.sleep(0.05)
        if self.stop_requested.is_set():
            return EXIT_OK
        missing = [name for name, part in (("MQTT", self.source), ("NATS", self.emitter))
                   if not part.stats().get("connected")]
        self.log.error("not connected within start_timeout", extra={"fields": {
            "missing": ",".join(missing), "start_timeout_s": timeout}})
        return EXIT_UNREACHABLE

    def _serve(self) -> int:
        every = self.config.stats_every
        next_stats = time.monotonic() + every if every > 0 else float("inf")
        while not self.stop_requested.is_set():
            self.stop_requested.wait(min(0.5, max(0.0, next_stats - time.monotonic())))
            if self.engine_thread.error is not None:
                self.log.error("engine thread failed", exc_info=self.engine_thread.error)
                return EXIT_INTERNAL
            if time.monotonic() >= next_stats:
                self.log.info("stats", extra={"fields": self.stats_line()})
                next_stats += every
        return EXIT_OK

    def shutdown(self) -> None:
        """Stops in data-flow order; each stage finishes what the previous one handed over."""
        self.source.stop()
        self.engine_thread.stop()
        self.emitter.stop(self.config.shutdown_deadline)

    # ---- counters ----

    def counters(self) -> dict:
        """Whole-pipeline counters. Balance rules (docs/operations.md):
        received == payloads + drops[oversize] + drops[decode_error] + drops[ingest_full]
        readings of decoded payloads == readings + schema_mismatch + non_finite + key_limit + late
        aggregates == published + drops[emit_backlog] + backlog"""
        src, eng, emi = self.source.stats(), self.engine_thread.stats(), self.emitter.stats()
        drops = dict.fromkeys(DROP_REASONS, 0)
        for part in (src, eng, emi):
            for reason, n in part.get("drops", {}).items():
                drops[reason] += n
        return {
            "received": src.get("received", 0),
            "payloads": eng.get("payloads", 0),
            "readings": eng.get("readings", 0),
            "drops": drops,
            "aggregates": eng.get("aggregates", 0),
            "published": emi.get("published", 0),
            "backlog": emi.get("backlog_aggregates", 0),
            "live_keys": eng.get("live_keys", 0),
            "evicted": eng.get("evicted", 0),
            "state_bytes": eng.get("state_bytes", 0),
            "uptime_s": round(time.time() - self.started_at, 3),
            "mqtt": {k: src.get(k) for k in ("connected", "connects", "disconnects",
                                             "disconnected_seconds")},
            "nats": {k: emi.get(k) for k in ("connected", "reconnects", "disconnected_seconds")},
        }

    def stats_line(self) -> dict:
        c = self.counters()
        return {
            "received": c["received"], "decoded": c["payloads"], "readings": c["readings"],
            "emitted": c["aggregates"], "published": c["published"],
            "drops": {k: v for k, v in c["drops"].items() if v},
            "ring_bytes": self.ring.used_bytes, "backlog": c["backlog"],
            "live_keys": c["live_keys"], "state_bytes": c["state_bytes"],
            "mqtt": "up" if c["mqtt"]["connected"] else "down",
            "nats": "up" if c["nats"]["connected"] else "down",
        }


def main(config) -> int:
    logs.setup(config.log_format)
    daemon = Daemon(config)
    code = daemon.run()
    print(json.dumps(daemon.counters(), separators=(",", ":")), flush=True)
    return code
