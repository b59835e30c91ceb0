"""`telemetry-cy run`: MQTT in, window aggregates out to NATS, bounded everywhere.

Threads (docs/architecture.md): [1] the MQTT network thread (MqttSource) writes records into the
ring; [2] the engine thread drains it and ticks; [3] the NATS thread publishes tick batches. This
module is the main thread: it starts them (and, with metrics_port, the metrics server thread of
service/metrics.py), logs a stats line every stats_every, and on SIGTERM or SIGINT stops them in
data-flow order so nothing accepted goes unaccounted: stop reading MQTT, drain the ring, run the
final tick (windows that have closed by then), count the readings of the interval still open
(`open_readings`: in no aggregate), flush NATS within the deadline, print the final counters as
one JSON object on stdout. The stats line and the final counters come from one
PipelineSnapshot (service/pipeline_snapshot.py), as do the metrics. A second signal exits at
once. Under systemd (Type=notify) it reports readiness, status, watchdog pings and stopping
through $NOTIFY_SOCKET (SystemdNotifier). With state_dir, the windows are restored at start from
the state file and checkpointed to it by a writer thread (service/checkpoints.py, docs/state.md).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

from telemetry_cy import __version__
from telemetry_cy.backend import ACTIVE
from telemetry_cy.service import logs
from telemetry_cy.service.checkpoints import BadState, CheckpointWriter, StateFile, restore
from telemetry_cy.service.config import Config, EngineSettings, MqttSettings, NatsSettings
from telemetry_cy.service.pipeline_snapshot import PipelineSnapshot

# Exit codes (docs/deploy-raspberry-pi.md)
EXIT_OK = 0
EXIT_CONFIG = 2          # a setting is invalid, or the metrics port cannot be opened
EXIT_UNREACHABLE = 3     # MQTT or NATS not connected within start_timeout
EXIT_INTERNAL = 4        # a pipeline thread died
EXIT_BAD_STATE = 5       # the state file cannot be restored (on_bad_state = fail)
EXIT_SIGNAL_TWICE = 130  # a second SIGINT/SIGTERM during shutdown


def _pow2_at_least(n: int) -> int:
    return 1 << max(12, (n - 1).bit_length())


class SystemdNotifier:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET (deploy/telemetry-cy.service
    runs us as Type=notify). READY=1 once started, STATUS= with each stats line, WATCHDOG=1 while
    the engine thread keeps looping (when the unit sets WatchdogSec), STOPPING=1 on a signal.
    Without NOTIFY_SOCKET every call is a no-op."""

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock = None
        watchdog_pid = env.get("WATCHDOG_PID", "")
        usec = env.get("WATCHDOG_USEC", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        #: ping period: a quarter of the unit's WatchdogSec (0: no watchdog)
        self.watchdog_every = int(usec) / 4e6 if usec.isdigit() and mine and self._addr else 0.0
        self._next_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, message: str) -> bool:
        if not self._addr:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(message.encode("utf-8", "replace"), self._addr)
            return True
        except OSError:  # systemd gone or the socket not ours: nothing to tell
            return False

    def watchdog(self, alive: bool) -> None:
        """Pings at most every watchdog_every; never when the pipeline is not alive, so
        systemd restarts a stalled process after WatchdogSec."""
        if not self.watchdog_every or not alive:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self.notify("WATCHDOG=1")
            self._next_ping = now + self.watchdog_every

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


#: Late readings the engine keeps between two ticks for --late-subject; beyond, they are still
#: counted `late` (and `late_unrouted`), not published.
LATE_CAPACITY = 65536


def engine_settings(engine: EngineSettings, mqtt: MqttSettings, route_late: bool = False) -> dict:
    """The Engine's keyword arguments; max_payload_bytes is the source's limit, which the engine
    enforces again for payloads that reach it another way. With route_late (a late_subject is
    set) it keeps late readings for the emitter."""
    return dict(window=engine.window, emit_every=engine.emit_every, max_keys=engine.max_keys,
                key_ttl=engine.key_ttl, max_payload_bytes=mqtt.max_payload_bytes,
                max_name_bytes=engine.max_name_bytes, time=engine.time,
                allowed_lateness=engine.allowed_lateness, idle_timeout=engine.idle_timeout,
                max_future=engine.max_future, late_capacity=LATE_CAPACITY if route_late else 0,
                quantiles=engine.quantiles, quantile_accuracy=engine.quantile_accuracy)


def make_engine(engine: EngineSettings, mqtt: MqttSettings, route_late: bool = False):
    """The window engine of the active backend (engine_settings)."""
    return ACTIVE.Engine(**engine_settings(engine, mqtt, route_late))


def make_emitter(nats: NatsSettings):
    from telemetry_cy.sink.nats_emitter import NatsEmitter

    # an empty setting means "not set": the emitter takes None for that
    return NatsEmitter(
        servers=nats.servers, subject_prefix=nats.subject_prefix, format=nats.format,
        jetstream=nats.jetstream, expected_stream=nats.expected_stream or None,
        max_in_flight=nats.max_in_flight, max_in_flight_bytes=nats.max_in_flight_bytes,
        max_backlog_batches=nats.backlog_batches,
        max_backlog_bytes=nats.backlog_bytes, **nats.auth,
        late_subject=nats.late_subject or None)


#: a `now` past any reading: the last tick of an instance that leaves closes every pane
FAR_FUTURE_S = 1e12


def _discard(aggregates: list, now: float) -> None:
    """output partials: the instance's own windows are not published (the merge makes them)."""


def make_partials(c: Config):
    """output partials (docs/scale-out.md): the active engine in partial mode (its clock hands
    each pane over as it closes), its partials, their emitter."""
    import os
    import secrets
    import socket

    from telemetry_cy.engine.instance_partials import InstancePartials
    from telemetry_cy.engine.partial_format import window_settings
    from telemetry_cy.sink.nats_options import connect_options
    from telemetry_cy.sink.partials_emitter import PartialsEmitter

    e = c.engine
    engine = ACTIVE.Engine(**engine_settings(e, c.mqtt), partials=True,
                           partials_max_bytes=c.nats.partials_max_bytes)
    ws = window_settings(e.window, e.emit_every, e.time, e.allowed_lateness,
                         e.quantiles or None, e.quantile_accuracy)
    # unique per process: a restarted instance is a new member, its seq starts again at 0
    instance = f"{c.mqtt.client_id or socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    partials = InstancePartials(engine, ws, instance, c.nats.partitions)
    return engine, partials, PartialsEmitter(
        c.nats.servers, instance, connect_opts=connect_options(c.nats.servers, **c.nats.auth))


def make_source(ring, mqtt: MqttSettings):
    from telemetry_cy.source.mqtt import MqttSource

    return MqttSource(
        ring, url=mqtt.url, topics=mqtt.topics, qos=mqtt.qos, client_id=mqtt.client_id or None,
        session_expiry=mqtt.session_expiry, username=mqtt.username or None,
        password=mqtt.password or None, ca_file=mqtt.ca_file or None,
        cert_file=mqtt.cert_file or None, key_file=mqtt.key_file or None,
        protocol=5 if mqtt.protocol == "5" else 4, max_payload_bytes=mqtt.max_payload_bytes,
        keepalive=mqtt.keepalive, coalesce=mqtt.coalesce)


class Daemon:
    def __init__(self, config: Config, source_factory=make_source, emitter_factory=make_emitter):
        from telemetry_cy.engine.engine_thread import EngineThread

        c = self.config = config
        self.log = logs.get("daemon")
        self.started_at = time.time()
        self.ring = ACTIVE.ByteRing(_pow2_at_least(c.mqtt.ring_bytes))
        route_late = c.engine.time == "event" and bool(c.nats.late_subject)
        self.checkpoints: CheckpointWriter | None = None
        self.bad_state: BadState | None = None   # on_bad_state = fail: run() exits with it
        self.state_dir_error: OSError | None = None   # state_dir unusable: run() exits 2
        self.partials = None
        if c.nats.output == "partials":
            self.engine, self.partials, self.emitter = make_partials(c)
            self.engine_thread = EngineThread(self.engine, self.ring, _discard,
                                              after_tick=self._send_partials)
        else:
            self.engine = self._restore_or_make(engine_settings(c.engine, c.mqtt, route_late))
            self.emitter = emitter_factory(c.nats)
            self.engine_thread = EngineThread(
                self.engine, self.ring, self.emitter.submit,
                emit_late=getattr(self.emitter, "submit_late", None) if route_late else None,
                checkpoints=self.checkpoints)
        self.source = source_factory(self.ring, c.mqtt)
        self.stop_requested = threading.Event()
        self.signals = 0
        self.systemd = SystemdNotifier()
        self.metrics = None
        if c.metrics.port:
            from telemetry_cy.service.metrics import MetricsServer
            self.metrics = MetricsServer(self, c.metrics.host, c.metrics.port,
                                         c.metrics.stale_after, version=__version__,
                                         engine_kind=ACTIVE.name)

    def _send_partials(self) -> None:
        """On the engine thread after each tick: the panes it closed, or a heartbeat."""
        assert self.partials is not None
        self.emitter.submit(self.partials.collect() or self.partials.heartbeat())

    def _finish_partials(self) -> None:
        """At stop, the engine thread gone: every pane closed and sent, then `leave`, so the
        merge workers know all this instance held is in (docs/scale-out.md)."""
        assert self.partials is not None
        self.engine.tick(FAR_FUTURE_S)
        self.emitter.submit(self.partials.collect() + self.partials.leave())

    def _restore_or_make(self, settings: dict):
        """The engine restored from --state-dir, or a new one (docs/state.md, "State files in
        the daemon"): one log line either way."""
        c = self.config
        if not c.state.dir:
            return ACTIVE.Engine(**settings)
        state = StateFile(c.state.dir)
        checkpoints = self.checkpoints = CheckpointWriter(state, c.state.checkpoint_every)
        try:
            state.ensure_dir()
            restored = restore(state, ACTIVE.Engine, settings)
        except OSError as exc:   # cannot create or read it: a setting to fix, like a bad path
            self.state_dir_error = exc
            return ACTIVE.Engine(**settings)
        except BadState as exc:
            if c.state.on_bad_state == "fail":
                self.bad_state = exc
                return ACTIVE.Engine(**settings)
            aside = state.move_aside()
            checkpoints.count_bad_file()
            self.log.warning("state file refused, moved aside; starting with empty windows",
                             extra={"fields": {"file": str(exc.path), "reason": exc.reason,
                                               "error": str(exc.error), "moved_to": str(aside)}})
            return ACTIVE.Engine(**settings)
        if restored is None:
            self.log.info("no state file: starting with empty windows",
                          extra={"fields": {"file": str(state.path)}})
            return ACTIVE.Engine(**settings)
        engine = restored.engine
        st = engine.stats()
        self.log.info("state restored", extra={"fields": {
            "file": str(restored.path), "age_s": round(restored.age_s, 3),
            "keys": st["live_keys"], "keys_in_file": restored.keys_in_file,
            "received": st["received"], "readings": st["readings"],
            "aggregates": st["aggregates"], "pending": st["pending"],
            "closed_tick": st["closed_tick"], "watermark": st["event_time"]["watermark"]}})
        return engine

    # ---- lifecycle ----

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1
        if self.signals > 1:
            # the operator insists: no drain, no flush
            os._exit(EXIT_SIGNAL_TWICE)
        self.log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        self.systemd.notify("STOPPING=1")
        self.stop_requested.set()

    def run(self) -> int:
        if self.state_dir_error is not None:
            self.log.error("state_dir cannot be used", extra={"fields": {
                "state_dir": self.config.state.dir, "error": str(self.state_dir_error),
                "exit": EXIT_CONFIG}})
            return EXIT_CONFIG
        if self.bad_state is not None:
            # one line naming the file and why; a restart would read the same file, so the unit
            # lists this code in RestartPreventExitStatus (no crash loop)
            self.log.error("state file cannot be restored", extra={"fields": {
                "file": str(self.bad_state.path), "reason": self.bad_state.reason,
                "error": str(self.bad_state.error), "exit": EXIT_BAD_STATE}})
            return EXIT_BAD_STATE
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        c = self.config
        self.log.info("starting", extra={"fields": {
            "mqtt": logs.redact_url(c.mqtt.url), "topics": ",".join(c.mqtt.topics),
            "nats": ",".join(logs.redact_url(u) for u in c.nats.url.split(",")),
            "window_s": c.engine.window, "emit_every_s": c.engine.emit_every,
            "time": c.engine.time}})
        if self.metrics is not None:
            try:
                self.metrics.start()
            except OSError as exc:
                self.log.error("cannot listen on the metrics port", extra={"fields": {
                    "host": c.metrics.host, "port": c.metrics.port, "error": exc.strerror}})
                return EXIT_CONFIG
            self.log.info("metrics listening", extra={"fields": {
                "url": self.metrics.url + "/metrics", "health": self.metrics.url + "/healthz"}})
        self.start()
        code = self._wait_for_connections()
        if code == EXIT_OK:
            # with start_timeout 0 that is right away: MQTT and NATS connect in the background
            self.systemd.notify("READY=1\nSTATUS=running")
            code = self._serve()
        self.systemd.notify("STOPPING=1")
        self.shutdown()
        self.systemd.close()
        return code

    def start(self) -> None:
        """Starts the threads, downstream first, so each has a consumer when data arrives."""
        if self.checkpoints is not None:
            self.checkpoints.start()
        self.emitter.start()
        if self.config.nats.jetstream:
            # once NATS is up, one line: the stream that captures our subjects, or a warning
            # that none does (every publish would wait for one)
            self.emitter.check_stream()
        self.engine_thread.start()
        self.source.start()

    def _wait_for_connections(self) -> int:
        timeout = self.config.lifecycle.start_timeout
        if timeout <= 0:
            return EXIT_OK
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            snap = self.snapshot()
            if snap.mqtt.connected and snap.nats.connected:
                return EXIT_OK
            time.sleep(0.05)
        if self.stop_requested.is_set():
            return EXIT_OK
        snap = self.snapshot()
        missing = [name for name, up in (("MQTT", snap.mqtt.connected),
                                         ("NATS", snap.nats.connected)) if not up]
        self.log.error("not connected within start_timeout", extra={"fields": {
            "missing": ",".join(missing), "start_timeout_s": timeout}})
        return EXIT_UNREACHABLE

    def _serve(self) -> int:
        every = self.config.log.stats_every
        next_stats = time.monotonic() + every if every > 0 else float("inf")
        while not self.stop_requested.is_set():
            self.stop_requested.wait(min(0.5, max(0.0, next_stats - time.monotonic())))
            if self.engine_thread.error is not None:
                self.log.error("engine thread failed", exc_info=self.engine_thread.error)
                return EXIT_INTERNAL
            if self.systemd.watchdog_every:
                self.systemd.watchdog(self._engine_looping())
            if time.monotonic() >= next_stats:
                line = self.stats_line()
                self.log.info("stats", extra={"fields": line})
                if self.systemd.enabled:
                    status = " ".join(f"{k}={line[k]}" for k in ("received", "published",
                                                                 "live_keys", "mqtt", "nats"))
                    self.systemd.notify(f"STATUS={status} drops={sum(line['drops'].values())}")
                next_stats += every
        return EXIT_OK

    def _engine_looping(self) -> bool:
        """The engine thread is alive and has published a stats snapshot (it does so from its
        loop every 0.25 s) within health_stale_after."""
        if not self.engine_thread.is_alive():
            return False
        beat = self.engine_thread.stats().get("heartbeat")
        return beat is None or time.monotonic() - beat <= self.config.metrics.stale_after

    def shutdown(self) -> None:
        """Stops in data-flow order; each stage finishes what the previous one handed over."""
        self.source.stop()
        self.engine_thread.stop()   # its last act: the final snapshot, handed to the writer
        if self.partials is not None:
            self._finish_partials()
        if self.checkpoints is not None and not self.checkpoints.stop():
            self.log.error("the final checkpoint was not written", extra={"fields": {
                "file": str(self.checkpoints.state.path)}})
        self.emitter.stop(self.config.lifecycle.shutdown_deadline)
        if self.metrics is not None:  # served until here: the drain can be watched
            self.metrics.stop()

    # ---- counters ----

    def snapshot(self) -> PipelineSnapshot:
        return PipelineSnapshot.read(self)

    def counters(self) -> dict:
        """Whole-pipeline counters, the final JSON object (PipelineSnapshot.counters)."""
        return self.snapshot().counters(time.time() - self.started_at)

    def stats_line(self) -> dict:
        return self.snapshot().stats_line()


def main(config: Config) -> int:
    logs.setup(config.log.format)
    daemon = Daemon(config)
    code = daemon.run()
    print(json.dumps(daemon.counters(), separators=(",", ":")), flush=True)
    return code
