"""Prometheus metrics and a health check for `telemetry-cy run --metrics-port N` (docs/metrics.md).

Nothing here runs on the hot path. The pipeline threads already publish their counters as
snapshots (`MqttSource.stats()`, `EngineThread.stats()`, `NatsEmitter.stats()`); a custom
collector reads them, as one PipelineSnapshot (service/pipeline_snapshot.py), when Prometheus
scrapes, so a scrape costs three dict copies and the message path costs nothing. The two
histograms take one observation per tick (tick duration, on the engine thread) and one per
published tick batch (delay, on the NATS thread), never per message.

One HTTP server thread serves `/metrics` and `/healthz` on the same port. It is the standard
library's single-threaded `HTTPServer`, not prometheus_client's `start_http_server`: that one is
a WSGI server that starts a thread per request and serves only its own app (a second route means
wrapping it), while a scraper and a health probe every few seconds need neither. Each
connection is closed after its response (HTTP/1.0) and a silent client is cut after
`REQUEST_TIMEOUT_S`, so one bad client cannot hold the port for long.
"""

from __future__ import annotations

import bisect
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from telemetry_cy.service.pipeline_snapshot import PipelineSnapshot

log = logging.getLogger("telemetry_cy.service.metrics")

#: Tick duration buckets (seconds): a few hundred microseconds for a thousand keys, about half a
#: second for a million (docs/performance.md), more on a Raspberry Pi or with the pure twin.
TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0)
#: Window end to NATS confirmation (seconds): normally well under the engine's 0.1 s park plus a
#: flush round trip; minutes while NATS is down and the backlog holds the batches.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 300.0, 900.0)
#: How often serve_forever looks for a shutdown request: bounds how long stop() waits.
POLL_S = 0.25
REQUEST_TIMEOUT_S = 10.0


class Buckets:
    """A histogram's counts with one writer thread and any number of readers.

    ``observe`` replaces one immutable ``(counts, sum)`` tuple, so a reader always sees a
    consistent pair (count == +Inf bucket, sum of the same observations) without a lock."""

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(sorted(float(b) for b in bounds))
        self._state: tuple[tuple[int, ...], float] = ((0,) * (len(self.bounds) + 1), 0.0)

    def observe(self, value: float) -> None:
        counts, total = self._state
        i = bisect.bisect_left(self.bounds, value)  # le is inclusive: value <= bound
        new = list(counts)
        new[i] += 1
        self._state = (tuple(new), total + value)

    def snapshot(self) -> tuple[list[tuple[str, int]], float, int]:
        """Cumulative buckets as ``[(le, count)]`` ending with ``+Inf``, the sum, the count."""
        counts, total = self._state
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out, total, running


# ---- health -------------------------------------------------------------------------------------


class Health:
    """Healthy unless MQTT or NATS has been down, or the engine thread has not looped (its stats
    heartbeat), for longer than ``stale_after`` seconds; or the engine thread died; or the
    daemon is stopping. An outage's length is the part's own ``down_seconds`` (its
    ConnectionClock, telemetry_cy/connection.py), so health keeps no state of its own."""

    def __init__(self, read: Callable[[], PipelineSnapshot], engine_thread, stale_after: float,
                 stopping: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic):
        self.read = read
        self.engine_thread = engine_thread
        self.stale_after = float(stale_after)
        self.stopping = stopping
        self.clock = clock
        self.created = clock()

    def heartbeat_age(self, snap: PipelineSnapshot, now: float) -> float:
        beat = snap.heartbeat
        return max(0.0, now - (self.created if beat is None else beat))

    def check(self, snap: PipelineSnapshot | None = None) -> tuple[bool, dict]:
        snap = self.read() if snap is None else snap
        now = self.clock()
        problems = []
        mqtt_down, nats_down = snap.mqtt.down_seconds, snap.nats.down_seconds
        if mqtt_down > self.stale_after:
            problems.append(f"MQTT down for {mqtt_down:.1f} s")
        if nats_down > self.stale_after:
            problems.append(f"NATS down for {nats_down:.1f} s")
        age = self.heartbeat_age(snap, now)
        thread = self.engine_thread
        alive = thread.is_alive()
        if getattr(thread, "error", None) is not None:
            problems.append("engine thread failed")
        elif not alive and thread.ident is not None:
            problems.append("engine thread stopped")
        elif age > self.stale_after:
            problems.append(f"engine thread has not looped for {age:.1f} s")
        if self.stopping():
            problems.append("stopping")
        body = {
            "status": "unhealthy" if problems else "ok",
            "problems": problems,
            "mqtt": {"connected": snap.mqtt.connected, "down_seconds": round(mqtt_down, 3)},
            "nats": {"connected": snap.nats.connected, "down_seconds": round(nats_down, 3)},
            "engine": {"alive": alive, "heartbeat_age_seconds": round(age, 3)},
            "stale_after_seconds": self.stale_after,
        }
        return not problems, body


# ---- the collector -------------------------------------------------------------------------------


def _counter(name: str, doc: str, value) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value or 0))


def _gauge(name: str, doc: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value or 0))


def _histogram(name: str, doc: str, buckets: Buckets) -> HistogramMetricFamily:
    counts, total, _ = buckets.snapshot()
    return HistogramMetricFamily(name, doc, buckets=counts, sum_value=total)


class PipelineCollector(Collector):
    """Reads one pipeline snapshot at scrape time (docs/metrics.md lists every metric)."""

    def __init__(self, read: Callable[[], PipelineSnapshot], health: Health,
                 tick_seconds: Buckets, delay_seconds: Buckets, version: str = "",
                 engine_kind: str = ""):
        self.read = read
        self.health = health
        self.tick_seconds = tick_seconds
        self.delay_seconds = delay_seconds
        self.version = version
        self.engine_kind = engine_kind

    def describe(self):
        return []  # names are checked by the tests, not at registration (no scrape at start)

    def collect(self):
        snap = self.read()
        healthy, body = self.health.check(snap)
        now = self.health.clock()

        f = CounterMetricFamily("telemetry_cy_drops", "Messages not processed, by reason "
                                "(per payload, reading or aggregate: docs/metrics.md).",
                                labels=["reason"])
        for reason, n in snap.drops.items():
            f.add_metric([reason], float(n))
        yield f

        yield _counter("telemetry_cy_received", "MQTT PUBLISH messages received.",
                       snap.received)
        yield _counter("telemetry_cy_mqtt_payload_bytes", "Payload bytes of the MQTT PUBLISH "
                       "messages received.", snap.payload_bytes)
        yield _counter("telemetry_cy_payloads", "Payloads decoded into readings.",
                       snap.payloads)
        yield _counter("telemetry_cy_readings", "Readings accepted into windows.",
                       snap.readings)
        yield _counter("telemetry_cy_aggregates", "Aggregates emitted by ticks.",
                       snap.aggregates)
        yield _counter("telemetry_cy_published", "Aggregates NATS confirmed (flush or "
                       "JetStream ack).", snap.published)
        yield _counter("telemetry_cy_keys_evicted", "Keys evicted after key_ttl without "
                       "readings.", snap.evicted)
        event_time = snap.event_time
        if event_time is not None:  # docs/windows.md, "Event time"
            yield _counter("telemetry_cy_no_event_time", "Readings without `t`: their arrival "
                           "was their event time.", event_time.get("no_event_time"))
            yield _counter("telemetry_cy_late_published", "Late readings NATS confirmed on "
                           "the late subject.", event_time.get("late_published"))
            yield _counter("telemetry_cy_late_unrouted", "Late readings counted but not "
                           "published (routing off, or dropped on the way).",
                           (event_time.get("late_unrouted") or 0)
                           + (event_time.get("late_dropped") or 0))
            if event_time.get("watermark") is not None:
                yield _gauge("telemetry_cy_watermark_seconds", "Newest event time minus the "
                             "allowed lateness.", event_time["watermark"])
        seq = snap.seq
        if seq is not None:  # engines with sequence accounting (the optional `n` field)
            yield _counter("telemetry_cy_sequence_gaps", "Sequence numbers skipped between two "
                           "accepted readings of a stream (docs/windows.md).", seq.get("gaps"))
            for kind, what in (("duplicates", "repeated the stream's last n"),
                               ("reorders", "came up to 1,024 below the stream's last n"),
                               ("restarts", "restarted the stream's sequence")):
                yield _counter(f"telemetry_cy_sequence_{kind}", f"Accepted readings whose n "
                               f"{what} (docs/windows.md).", seq.get(kind))

        yield _gauge("telemetry_cy_ring_used_bytes", "Bytes in use in the ingest ring.",
                     snap.ring_used_bytes)
        yield _gauge("telemetry_cy_ring_capacity_bytes", "Size of the ingest ring.",
                     snap.ring_capacity)
        yield _gauge("telemetry_cy_nats_backlog_batches", "Tick batches waiting for NATS.",
                     snap.backlog_batches)
        yield _gauge("telemetry_cy_nats_backlog_aggregates", "Aggregates waiting for NATS.",
                     snap.backlog_aggregates)
        yield _gauge("telemetry_cy_nats_backlog_bytes", "Encoded bytes waiting for NATS.",
                     snap.backlog_bytes)
        yield _gauge("telemetry_cy_live_keys", "Live (device, sensor) keys.",
                     snap.live_keys)
        yield _gauge("telemetry_cy_state_bytes", "Memory held by the window state (with "
                     "partial mode's buffer).", snap.state_bytes)

        yield _gauge("telemetry_cy_mqtt_connected", "1 when connected and subscribed to MQTT.",
                     1 if snap.mqtt.connected else 0)
        yield _counter("telemetry_cy_mqtt_connects", "MQTT connections accepted (CONNACK).",
                       snap.mqtt.connects)
        yield _counter("telemetry_cy_mqtt_disconnects", "MQTT connections lost or closed.",
                       snap.mqtt.disconnects)
        yield _counter("telemetry_cy_mqtt_disconnected_seconds", "Time without an MQTT "
                       "connection since start.", snap.mqtt.disconnected_seconds)
        yield _gauge("telemetry_cy_mqtt_down_seconds", "How long the current MQTT outage has "
                     "lasted (0 when connected).", body["mqtt"]["down_seconds"])
        yield _gauge("telemetry_cy_nats_connected", "1 when connected to NATS.",
                     1 if snap.nats.connected else 0)
        yield _counter("telemetry_cy_nats_reconnects", "NATS reconnections after a lost "
                       "connection.", snap.nats.reconnects)
        yield _counter("telemetry_cy_nats_stalled_flushes", "NATS flushes that timed out on a "
                       "live connection (the server is not reading).",
                       snap.nats.stalled_flushes)
        yield _counter("telemetry_cy_nats_disconnected_seconds", "Time without a NATS "
                       "connection since start.", snap.nats.disconnected_seconds)
        yield _gauge("telemetry_cy_nats_down_seconds", "How long the current NATS outage has "
                     "lasted (0 when connected).", body["nats"]["down_seconds"])

        js = snap.jetstream
        if js is not None:   # JetStream mode only (docs/jetstream.md)
            yield _counter("telemetry_cy_jetstream_acks", "JetStream messages the stream "
                           "acknowledged as stored.", js.acks)
            yield _counter("telemetry_cy_jetstream_duplicates", "JetStream messages the stream "
                           "acknowledged as stored before (a retry it deduplicated).",
                           js.duplicates)
            yield _counter("telemetry_cy_jetstream_resent", "JetStream messages sent again by "
                           "a retry, with the same Nats-Msg-Id.", js.resent)
            f = CounterMetricFamily("telemetry_cy_jetstream_publish_errors", "JetStream "
                                    "messages refused or left unanswered, by reason; they stay "
                                    "in the backlog and are retried.", labels=["reason"])
            for reason, n in js.publish_errors.items():
                f.add_metric([reason], float(n))
            yield f
            yield _gauge("telemetry_cy_jetstream_in_flight", "JetStream messages sent and not "
                         "answered yet.", js.in_flight)
            yield _gauge("telemetry_cy_jetstream_in_flight_bytes", "Bytes of JetStream messages "
                         "sent and not answered yet.", js.in_flight_bytes)

        ck = snap.checkpoint
        if ck is not None:   # with state_dir (docs/state.md)
            yield _counter("telemetry_cy_checkpoints", "Window state snapshots written to the "
                           "state file.", ck.checkpoints)
            yield _counter("telemetry_cy_checkpoint_failures", "State file writes that failed "
                           "(the previous file stays).", ck.failures)
            yield _counter("telemetry_cy_state_files_refused", "State files refused at start "
                           "and moved aside (on_bad_state = fresh).", ck.bad_state_files)
            age = ck.age_s(time.time())
            if age is not None:
                yield _gauge("telemetry_cy_checkpoint_age_seconds", "Time since the last "
                             "written snapshot was taken: what a crash now would lose.", age)
            yield _gauge("telemetry_cy_checkpoint_bytes", "Size of the last written snapshot.",
                         ck.last_bytes)
            yield _gauge("telemetry_cy_checkpoint_duration_seconds", "The last checkpoint: "
                         "snapshot on the engine thread plus write and fsyncs.",
                         ck.last_snapshot_seconds + ck.last_write_seconds)

        p = snap.partials
        if p is not None:   # output = partials (docs/metrics.md, "Partial mode")
            f = CounterMetricFamily("telemetry_cy_partials", "Partial messages made for the "
                                    "merge workers, by kind.", labels=["kind"])
            for kind, n in sorted((p.get("made") or {}).items()):
                f.add_metric([kind], float(n))
            yield f
            yield _counter("telemetry_cy_partials_sent", "Partial messages the partials stream "
                           "acknowledged.", p.get("sent"))
            yield _counter("telemetry_cy_partial_panes", "Panes the engine closed with data "
                           "(one per key and interval).", p.get("panes"))
            yield _counter("telemetry_cy_partial_panes_sent", "Panes in the partial messages "
                           "sent.", p.get("panes_sent"))
            f = CounterMetricFamily("telemetry_cy_partial_panes_dropped", "Panes not sent, by "
                                    "reason: partial_buffer_full (the engine's partial buffer "
                                    "was full), backlog (in a dropped message).",
                                    labels=["reason"])
            for reason, n in sorted((p.get("pane_drops") or {}).items()):
                f.add_metric([reason], float(n))
            yield f
            yield _gauge("telemetry_cy_partial_panes_backlog", "Panes in the partial messages "
                         "waiting for the stream's ack.", p.get("panes_backlog"))
            yield _counter("telemetry_cy_partials_retries", "Partial publishes retried (with "
                           "the same Nats-Msg-Id).", p.get("retries"))
            f = CounterMetricFamily("telemetry_cy_partials_dropped", "Partial messages "
                                    "dropped, by reason (the merge sees a sequence gap).",
                                    labels=["reason"])
            for reason, n in sorted((p.get("drops") or {}).items()):
                f.add_metric([reason], float(n))
            yield f
            yield _gauge("telemetry_cy_partials_backlog", "Partial messages waiting for the "
                         "stream's ack.", p.get("backlog"))
            yield _counter("telemetry_cy_partials_local_windows", "Windows the engine closed "
                           "here and did not publish (the merge workers publish them).",
                           p.get("local_windows"))
            yield _gauge("telemetry_cy_partial_buffer_bytes", "Memory held by the engine's "
                         "partial buffer (counted in telemetry_cy_state_bytes too).",
                         p.get("buffer_bytes"))

        yield _gauge("telemetry_cy_engine_heartbeat_age_seconds", "Time since the engine "
                     "thread last published its stats from its loop.",
                     self.health.heartbeat_age(snap, now))
        yield _gauge("telemetry_cy_healthy", "1 when /healthz answers 200.", 1 if healthy else 0)
        info = GaugeMetricFamily("telemetry_cy_build_info", "Version and engine "
                                 "implementation (compiled or pure); always 1.",
                                 labels=["version", "engine"])
        info.add_metric([self.version, self.engine_kind], 1.0)
        yield info

        yield _histogram("telemetry_cy_tick_duration_seconds", "Duration of each tick: closing "
                         "the due windows and handing the batch to the NATS thread.",
                         self.tick_seconds)
        yield _histogram("telemetry_cy_publish_delay_seconds", "Per published tick batch: NATS "
                         "confirmation time minus the batch's window end.", self.delay_seconds)


# ---- publication times ---------------------------------------------------------------------------


def watch_publications(emitter, observe: Callable[[float], None],
                       clock: Callable[[], float] = time.time) -> bool:
    """Calls ``observe(confirmed_at - window_end)`` on the NATS thread for every tick batch the
    emitter publishes successfully (``window_end``: the oldest tick in the batch). Returns
    whether the emitter offers the hook."""
    if not hasattr(emitter, "on_published"):
        return False
    emitter.on_published = lambda n, window_end: observe(clock() - window_end)
    return True


# ---- the HTTP server -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = REQUEST_TIMEOUT_S
    server_version = "telemetry-cy"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path in ("/metrics", "/"):
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            body = encoder(self.server.registry)
            self._send(200, content_type, body)
        elif path == "/healthz":
            healthy, state = self.server.health.check()
            self._send(200 if healthy else 503, "application/json",
                       json.dumps(state, separators=(",", ":")).encode() + b"\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(HTTPServer):
    def __init__(self, address, registry: CollectorRegistry, health: Health):
        self.registry = registry
        self.health = health
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        log.warning("metrics request from %s failed", client_address[0], exc_info=True)


class MetricsServer:
    """`/metrics` and `/healthz` for a running Daemon (anything with ``source``,
    ``engine_thread``, ``emitter``, ``ring`` and ``stop_requested``).

    Made before the pipeline threads start: it hooks the tick and publication observations in.
    ``start()`` binds the port (OSError when it cannot) and starts the server thread."""

    def __init__(self, pipeline, host: str, port: int, stale_after: float,
                 engine_kind: str = "", version: str = ""):
        self.address = (host, port)
        self.tick_seconds = Buckets(TICK_BUCKETS)
        self.delay_seconds = Buckets(DELAY_BUCKETS)

        def read() -> PipelineSnapshot:
            return PipelineSnapshot.read(pipeline)

        stop = getattr(pipeline, "stop_requested", None)
        self.health = Health(read, pipeline.engine_thread, stale_after,
                             stopping=stop.is_set if stop is not None else (lambda: False))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PipelineCollector(read, self.health, self.tick_seconds,
                                                 self.delay_seconds, version, engine_kind))
        ProcessCollector(registry=self.registry)   # process_cpu_seconds_total, RSS, fds, ...
        pipeline.engine_thread.on_tick = self.tick_seconds.observe
        self.publish_delay_hooked = watch_publications(pipeline.emitter,
                                                       self.delay_seconds.observe)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2] if self._server else self.address
        host = str(host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> "MetricsServer":
        self._server = _Server(self.address, self.registry, self.health)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": POLL_S},
                                        name="telemetry-cy-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()        # returns once serve_forever has left its loop
        server.server_close()
        if self._thread is not None:
            self._thread.join(REQUEST_TIMEOUT_S)
