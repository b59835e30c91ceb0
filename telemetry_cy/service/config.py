"""Settings of `telemetry-cy run` and `telemetry-cy merge`: typed sections, one table per
command, four layers.

Each setting is declared once, as a field of the section that the component using it receives
(``MqttSettings`` for the MQTT source, ``NatsSettings`` for the NATS emitter, ``EngineSettings`` for
the window engine, ...). ``SETTINGS``, the flags, the environment variables and the table in
``docs/configuration.md`` are all derived from those fields.

Each setting has a default, may be set in the TOML file given with ``--config`` (top-level keys, or
grouped in tables such as ``[mqtt]`` whose keys are prefixed with the table name), overridden by an
environment variable ``TELEMETRY_CY_<NAME>``, overridden by a command-line flag ``--<name>``.
A bad value stops the program at start with one line naming the setting and where it came from.
``docs/configuration.md`` holds the table ``python -m telemetry_cy.service.config`` prints (a test
keeps the two in step).

``merge`` (docs/scale-out.md) goes through the same machinery with its own root (``MergeConfig``,
``MERGE``): the window settings it shares with ``run`` are the same declarations (``same_as``), so
one TOML file, one set of ``TELEMETRY_CY_*`` variables can feed both roles; its own settings may
sit in a ``[merge]`` table of that file. Each command skips the keys only the other one knows and
refuses a key neither knows.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    from telemetry_cy.sink.nats_options import NatsAuth


class ConfigError(ValueError):
    """A setting has a bad value; the message names it."""


# ---- value parsers -------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*([0-9]+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6,
               "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def parse_duration(value: Any) -> float:
    """Seconds from 500ms, 5s, 1m, 2h or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s or 1m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"expected a duration such as 500ms, 5s or 1m, got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a non-negative duration, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from 65536, 64KiB, 16MiB, 1GiB (k/m/g are binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 65536 or 16MiB")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"expected a size such as 65536 or 16MiB, got {value!r}")
        size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower() or None]
    if size < 0:
        raise ValueError(f"expected a non-negative size, got {value!r}")
    return size


def parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).replace("_", ""))
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def parse_list(value: Any) -> tuple[str, ...]:
    """A TOML array of strings, or a comma-separated string (environment variables)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ValueError(f"expected a list of strings, got {value!r}")
    items = [v for v in items if v]
    if not items:
        raise ValueError("expected at least one value")
    return tuple(items)


def parse_quantiles(value: Any) -> tuple[float, ...]:
    """Quantiles as q values, from "0.5,0.9,0.99,0.999" or a TOML array of numbers; empty = off;
    each 0 < q < 1, at most engine/rules.MAX_QUANTILES of them."""
    from telemetry_cy.engine.rules import QUANTILE_ACCURACY_DEFAULT, check_quantiles

    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"expected quantiles such as 0.5,0.9,0.99, got {value!r}")
    qs = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"expected a number such as 0.99, got {item!r}")
        try:
            qs.append(float(item))
        except (TypeError, ValueError):
            raise ValueError(f"expected a number such as 0.99, got {item!r}") from None
    try:
        return check_quantiles(qs, QUANTILE_ACCURACY_DEFAULT).qs
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def parse_accuracy(value: Any) -> float:
    """The quantile sketch's relative accuracy: a number in [0.005, 0.05]."""
    from telemetry_cy.engine.rules import check_quantiles

    try:
        return check_quantiles((), float(value)).accuracy
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def parse_port(value: Any) -> int:
    port = parse_int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"expected a TCP port 0..65535, got {value!r}")
    return port


def parse_stream_name(value: Any) -> str:
    """A JetStream stream name, or empty for none (the wire encoder's own check)."""
    from telemetry_cy.sink._wire_py import check_stream_name

    text = parse_str(value).strip()
    if text:
        try:
            check_stream_name(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
    return text


def parse_partials_max_bytes(value: Any) -> int:
    """A size the engine takes as its partial buffer's limit (engine/rules.check_partials)."""
    from telemetry_cy.engine.rules import check_partials

    try:
        return check_partials(True, parse_size(value), True)[1]
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text
    parse.__doc__ = " | ".join(options)
    return parse


def _coalesce(value: Any) -> float:
    seconds = parse_duration(value)
    if not 0.0 <= seconds <= 0.1:
        raise ValueError(f"must be between 0 and 100ms, got {value!r}")
    return seconds


def at_least(parse: Callable[[Any], Any], low) -> Callable[[Any], Any]:
    def checked(value: Any):
        result = parse(value)
        if result < low:
            raise ValueError(f"must be at least {low}, got {value!r}")
        return result
    return checked


# ---- the table -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    kind: str = "str"           # shown in --help and the docs: str, int, duration, size, ...
    secret: bool = False        # never printed: not in logs, stats, errors or --print-config
    repeatable: bool = False    # a flag that may be given several times (lists)
    group: str = "general"      # the heading it is listed under (its section's GROUP)
    section: str = ""           # where it lives: config.<section>.<attr>
    attr: str = ""

    @property
    def env(self) -> str:
        return "TELEMETRY_CY_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_SPEC = "telemetry_cy.setting"


def setting(name: str, parse: Callable[[Any], Any], default: Any, help: str, kind: str = "str",
            *, secret: bool = False, repeatable: bool = False) -> Any:
    """A section field that is a setting: its external name (flag, environment variable, TOML
    key), parser, default and help, declared in this one place."""
    spec = Setting(name, parse, default, help, kind, secret=secret, repeatable=repeatable)
    return field(default=default, metadata={_SPEC: spec})


def same_as(section: type, attr: str, **changes: Any) -> Any:
    """Another command's field holding the same setting as ``section.attr`` (its name, parser,
    default and help, unless ``changes`` says otherwise): a setting both commands take is
    declared once."""
    spec = next(f.metadata[_SPEC] for f in fields(section) if f.name == attr)
    spec = replace(spec, **changes)
    return field(default=spec.default, metadata={_SPEC: spec})


# Sections: one per component, handed to it whole. GROUP is the heading in --help and the docs.
# Field order is the order of the table in docs/configuration.md.

@dataclass(frozen=True)
class MqttSettings:
    """The MQTT source (source/mqtt.py) and the ingest ring it writes into."""

    GROUP: ClassVar[str] = "mqtt"
    url: str = setting("mqtt_url", parse_str, "mqtt://127.0.0.1:1883",
                       "broker URL: mqtt://host:port or mqtts://host:port (TLS)")
    topics: tuple[str, ...] = setting(
        "topic", parse_list, ("site/+/sensor/+",), "topic filter to subscribe to; repeat for "
        "several; $share/group/... for shared subscriptions", "list", repeatable=True)
    qos: int = setting("qos", lambda v: int(choice("0", "1")(v)), 1, "subscription QoS (0 or 1)",
                       "0|1")
    client_id: str = setting("client_id", parse_str, "", "MQTT client id; needed for a "
                             "persistent session (empty: a generated one)")
    session_expiry: float = setting(
        "session_expiry", parse_duration, 0.0, "keep the broker session this long after a "
        "disconnect so queued QoS 1 messages survive a restart (0 = clean session)", "duration")
    protocol: str = setting("mqtt_protocol", choice("5", "3.1.1"), "5", "MQTT protocol version",
                            "5|3.1.1")
    keepalive: float = setting("mqtt_keepalive", at_least(parse_duration, 1.0), 30.0,
                               "MQTT keepalive", "duration")
    coalesce: float = setting("mqtt_coalesce", _coalesce, 0.004, "under dense traffic the "
                              "network thread naps up to this long between reads (shorter at "
                              "high rates), so one read and one engine wake-up carry many "
                              "messages (adds at most this latency; 0 = read every message as "
                              "it comes; at most 100ms)", "duration")
    username: str = setting("mqtt_username", parse_str, "", "MQTT user name")
    password: str = setting("mqtt_password", parse_str, "", "MQTT password (prefer "
                            "mqtt_password_file)", secret=True)
    password_file: str = setting("mqtt_password_file", parse_str, "", "file holding the MQTT "
                                 "password", "path")
    ca_file: str = setting("mqtt_ca_file", parse_str, "", "CA bundle to verify the broker (TLS)",
                           "path")
    cert_file: str = setting("mqtt_cert_file", parse_str, "", "client certificate (TLS)", "path")
    key_file: str = setting("mqtt_key_file", parse_str, "", "client key (TLS)", "path")
    max_payload_bytes: int = setting("max_payload_bytes", at_least(parse_size, 1), 65536,
                                     "larger payloads are dropped and counted as oversize", "size")
    ring_bytes: int = setting("ring_bytes", at_least(parse_size, 4096), 16 << 20,
                              "ingest ring between the network and engine threads (rounded up to "
                              "a power of two)", "size")


class _NatsClient:
    """What both commands' NATS sections give their clients: the server list, and the
    credentials and TLS settings as sink/nats_options.connect_options takes them."""

    url: str
    user: str
    password: str
    token: str
    creds_file: str
    ca_file: str
    cert_file: str
    key_file: str

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def auth(self) -> NatsAuth:
        return {"user": self.user, "password": self.password, "token": self.token,
                "creds_file": self.creds_file, "tls_ca_file": self.ca_file,
                "tls_cert_file": self.cert_file, "tls_key_file": self.key_file}


@dataclass(frozen=True)
class NatsSettings(_NatsClient):
    """The NATS emitter (sink/nats_emitter.py) and its backlog."""

    GROUP: ClassVar[str] = "nats"
    url: str = setting("nats_url", parse_str, "nats://127.0.0.1:4222",
                       "NATS server URL(s), comma-separated; tls:// for TLS")
    subject_prefix: str = setting("subject_prefix", parse_str, "agg",
                                  "subjects are <prefix>.<device>.<sensor>")
    format: str = setting("format", choice("json", "cbor"), "json", "aggregate body encoding",
                          "json|cbor")
    jetstream: bool = setting("jetstream", parse_bool, False, "publish with JetStream acks and "
                              "Nats-Msg-Id deduplication", "bool")
    expected_stream: str = setting("expected_stream", parse_stream_name, "", "JetStream: the "
                                   "stream every message must land in (Nats-Expected-Stream "
                                   "header); another stream refuses it, counted as wrong_stream "
                                   "(empty: any stream)")
    max_in_flight: int = setting("max_in_flight", at_least(parse_int, 1), 16384, "JetStream: "
                                 "most messages sent and not yet acked; a full window holds new "
                                 "ticks in the backlog", "int")
    max_in_flight_bytes: int = setting("max_in_flight_bytes", at_least(parse_size, 1024),
                                       16 << 20, "JetStream: most bytes of messages sent and not "
                                       "yet acked", "size")
    user: str = setting("nats_user", parse_str, "", "NATS user name")
    password: str = setting("nats_password", parse_str, "", "NATS password (prefer "
                            "nats_password_file)", secret=True)
    password_file: str = setting("nats_password_file", parse_str, "", "file holding the NATS "
                                 "password", "path")
    token: str = setting("nats_token", parse_str, "", "NATS token (prefer nats_token_file)",
                         secret=True)
    token_file: str = setting("nats_token_file", parse_str, "", "file holding the NATS token",
                              "path")
    creds_file: str = setting("nats_creds_file", parse_str, "", "NATS credentials file (JWT + "
                              "nkey)", "path")
    ca_file: str = setting("nats_ca_file", parse_str, "", "CA bundle to verify the NATS server "
                           "(TLS)", "path")
    cert_file: str = setting("nats_cert_file", parse_str, "", "client certificate for NATS (TLS)",
                             "path")
    key_file: str = setting("nats_key_file", parse_str, "", "client key for NATS (TLS)", "path")
    backlog_batches: int = setting("emit_backlog_batches", at_least(parse_int, 1), 64,
                                   "tick batches held while NATS is slow or down; beyond: drop "
                                   "the oldest (emit_backlog)", "int")
    backlog_bytes: int = setting("emit_backlog_bytes", at_least(parse_size, 1024), 64 << 20,
                                 "bytes held while NATS is slow or down", "size")
    output: str = setting("output", choice("aggregates", "partials"), "aggregates",
                          "aggregates: windows to <prefix>.<device>.<sensor>; partials: the "
                          "closed panes to the PARTIALS JetStream stream for telemetry-cy merge "
                          "(event time; docs/scale-out.md)", "aggregates|partials")
    partitions: int = setting("partitions", at_least(parse_int, 1), 16, "output partials: the "
                              "key partitions (the merge workers' --partitions)", "int")
    # the engine's own default (rules.DEFAULT_PARTIALS_MAX_BYTES, test_config holds them equal)
    partials_max_bytes: int = setting(
        "partials_max_bytes", parse_partials_max_bytes, 1 << 30, "output partials: most bytes "
        "of closed panes the engine holds until the next tick takes them (about one interval's "
        "worth); a pane past it is not sent, counted as a pane drop partial_buffer_full, and "
        "the merge workers see a sequence gap", "size")
    late_subject: str = setting("late_subject", parse_str, "", "event time: publish late readings "
                                "as JSON to <late_subject>.<device>.<sensor> (empty: count them "
                                "only)")


@dataclass(frozen=True)
class EngineSettings:
    """The window engine (engine/_engine.pyx or its twin); max_payload_bytes is MqttSettings'."""

    GROUP: ClassVar[str] = "windows"
    window: float = setting("window", parse_duration, 60.0, "window length (a whole multiple of "
                            "emit_every)", "duration")
    emit_every: float = setting("emit_every", parse_duration, 5.0, "tick period: aggregates are "
                                "emitted at multiples of it", "duration")
    max_keys: int = setting("max_keys", at_least(parse_int, 1), 1_000_000, "most live (device, "
                            "sensor) keys; new keys beyond are dropped (key_limit)", "int")
    key_ttl: float = setting("key_ttl", parse_duration, 300.0, "a key idle this long is evicted "
                             "(>= window)", "duration")
    max_name_bytes: int = setting("max_name_bytes", at_least(parse_int, 1), 256, "longest device, "
                                  "sensor or unit name in bytes (longer: schema_mismatch)", "int")
    time: str = setting("time", choice("arrival", "event"), "arrival", "which clock puts a reading "
                        "in its window: its arrival, or its own time `t` (docs/windows.md)",
                        "arrival|event")
    allowed_lateness: float = setting("allowed_lateness", parse_duration, 0.0, "event time: a "
                                      "window is emitted once the newest event time is this far "
                                      "past its end; readings for emitted windows are late",
                                      "duration")
    idle_timeout: float = setting("idle_timeout", at_least(parse_duration, 0.001), 30.0, "event "
                                  "time: when no reading has moved the newest event time for "
                                  "this long, windows close by the wall clock", "duration")
    max_future: float = setting("max_future", parse_duration, 60.0, "event time: a reading whose "
                                "t is further ahead of its arrival is dropped (future)",
                                "duration")
    quantiles: tuple[float, ...] = setting(
        "quantiles", parse_quantiles, (), "quantiles each aggregate carries, each q in (0, 1), "
        "up to 8, e.g. 0.5,0.9,0.99,0.999 (fields p50, p90, p99, p99.9; empty = off: no cost, "
        "no memory)", "list")
    quantile_accuracy: float = setting(
        "quantile_accuracy", parse_accuracy, 0.01, "relative accuracy alpha of the quantiles, "
        "0.005 to 0.05 (docs/windows.md, Quantiles)", "float")


@dataclass(frozen=True)
class StateSettings:
    """Window state kept across restarts (service/checkpoints.py, docs/state.md)."""

    GROUP: ClassVar[str] = "windows"
    dir: str = setting("state_dir", parse_str, "", "directory of the state file: windows are "
                       "checkpointed there and restored at start (empty = off)", "path")
    checkpoint_every: float = setting("checkpoint_every", at_least(parse_duration, 0.1), 30.0,
                                      "period of the state checkpoints (and one at stop); a "
                                      "crash loses at most this much of accepted readings",
                                      "duration")
    on_bad_state: str = setting("on_bad_state", choice("fail", "fresh"), "fail", "a state file "
                                "that cannot be restored: fail = exit with code 5; fresh = move "
                                "it aside and start empty", "fail|fresh")


@dataclass(frozen=True)
class LogSettings:
    """Log lines and the periodic stats line (service/logs.py, the daemon's main thread)."""

    GROUP: ClassVar[str] = "operations"
    stats_every: float = setting("stats_every", parse_duration, 10.0, "period of the structured "
                                 "stats log line (0 = never)", "duration")
    format: str = setting("log_format", choice("text", "json"), "text", "log line format",
                          "text|json")


@dataclass(frozen=True)
class LifecycleSettings:
    """Start and stop of the daemon (service/daemon.py)."""

    GROUP: ClassVar[str] = "operations"
    start_timeout: float = setting("start_timeout", parse_duration, 0.0, "exit with code 3 when "
                                   "MQTT or NATS is not connected this long after start (0 = keep "
                                   "retrying with backoff)", "duration")
    shutdown_deadline: float = setting("shutdown_deadline", parse_duration, 10.0, "on SIGTERM, how "
                                       "long to wait for the final flush to NATS", "duration")


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus /metrics and /healthz (service/metrics.py); stale_after also gates the systemd
    watchdog ping."""

    GROUP: ClassVar[str] = "operations"
    port: int = setting("metrics_port", parse_port, 0, "serve Prometheus /metrics and /healthz on "
                        "this TCP port (0 = off)", "int")
    host: str = setting("metrics_host", parse_str, "127.0.0.1", "address the metrics port listens "
                        "on (0.0.0.0 or :: for every interface)")
    stale_after: float = setting("health_stale_after", at_least(parse_duration, 1.0), 30.0,
                                 "/healthz answers 503 when MQTT or NATS has been down, or the "
                                 "engine thread has not looped, for longer than this", "duration")


class _Root:
    """What the roots of both commands offer: a setting's value by name, a dict safe to log."""

    COMMAND: ClassVar[str]

    def value(self, name: str) -> Any:
        """A setting's value by its name (``mqtt_url``, ``window``, ...)."""
        s = COMMANDS[self.COMMAND].by_name[name]
        return getattr(getattr(self, s.section), s.attr)

    def redacted(self) -> dict[str, Any]:
        """Every setting by name, with each secret replaced: safe to log."""
        return {s.name: ("***" if s.secret and v else v)
                for s in COMMANDS[self.COMMAND].settings for v in (self.value(s.name),)}


@dataclass(frozen=True)
class Config(_Root):
    """Every section of ``run``, plus where each setting's value came from (by setting name)."""

    COMMAND: ClassVar[str] = "run"
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    state: StateSettings = field(default_factory=StateSettings)
    log: LogSettings = field(default_factory=LogSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)


# ---- telemetry-cy merge (docs/scale-out.md) ---------------------------------------------------

def parse_own(text: str, partitions: int) -> list[int] | None:
    """The ``own`` setting: None for ``auto`` (leases), else the sorted partitions, all of them
    when empty."""
    text = text.strip()
    if text == "auto":
        return None
    if not text:
        return list(range(partitions))
    out: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"expected auto, or partitions such as 0-7 or 1,3,5, got {text!r}") \
            from None
    if not out or min(out) < 0 or max(out) >= partitions:
        raise ValueError(f"{text!r}: partitions are 0..{partitions - 1}")
    return sorted(out)


@dataclass(frozen=True)
class MergeNatsSettings(_NatsClient):
    """Where a merge worker reads partials and publishes windows (service/merge_worker.py), and
    how it connects: run's credentials and TLS settings."""

    GROUP: ClassVar[str] = "nats"
    url: str = same_as(NatsSettings, "url")
    subject_prefix: str = same_as(NatsSettings, "subject_prefix")
    jetstream: bool = same_as(NatsSettings, "jetstream", help="publish the windows with "
                              "JetStream acks and Nats-Msg-Id <device>|<sensor>|<window_end>: a "
                              "window a takeover emits again is stored once")
    replicas: int = setting("replicas", at_least(parse_int, 1), 1, "replicas of the partials "
                            "stream and the lease buckets when this worker creates them", "int")
    user: str = same_as(NatsSettings, "user")
    password: str = same_as(NatsSettings, "password")
    password_file: str = same_as(NatsSettings, "password_file")
    token: str = same_as(NatsSettings, "token")
    token_file: str = same_as(NatsSettings, "token_file")
    creds_file: str = same_as(NatsSettings, "creds_file")
    ca_file: str = same_as(NatsSettings, "ca_file")
    cert_file: str = same_as(NatsSettings, "cert_file")
    key_file: str = same_as(NatsSettings, "key_file")


@dataclass(frozen=True)
class MergeWindowSettings:
    """The instances' window settings: a partial made with other ones is refused (reason
    settings), so both roles read the same declarations."""

    GROUP: ClassVar[str] = "windows"
    window: float = same_as(EngineSettings, "window")
    emit_every: float = same_as(EngineSettings, "emit_every")
    time: str = same_as(EngineSettings, "time", parse=choice("event"), default="event",
                        kind="event", help="partials exist in event time only")
    allowed_lateness: float = same_as(EngineSettings, "allowed_lateness")
    quantiles: tuple[float, ...] = same_as(EngineSettings, "quantiles")
    quantile_accuracy: float = same_as(EngineSettings, "quantile_accuracy")


@dataclass(frozen=True)
class WorkerSettings:
    """A merge worker's partitions and its view of the instances (service/merge_worker.py)."""

    GROUP: ClassVar[str] = "merge"
    worker_id: str = setting("worker_id", parse_str, "", "this worker's name in logs, stats "
                             "and leases (needed)")
    partitions: int = same_as(NatsSettings, "partitions", help="the instances' partitions "
                              "setting: how many partitions there are in all")
    own: str = setting("own", parse_str, "", "the partitions this worker merges, e.g. 0-7 or "
                       "1,3,5 (empty: all); auto: shared with the other workers through "
                       "JetStream KV leases, with failover")
    lease: float = setting("lease", at_least(parse_duration, 0.2), 5.0, "own = auto: a lease's "
                           "life; a dead worker's partitions move within it plus a quarter of "
                           "it", "duration")
    instance_timeout: float = setting("instance_timeout", at_least(parse_duration, 0.1), 10.0,
                                      "an instance silent this long is dead: the windows it "
                                      "held open are counted incomplete", "duration")

    @property
    def own_partitions(self) -> list[int] | None:
        """None: by leases (own = auto)."""
        return parse_own(self.own, self.partitions)


@dataclass(frozen=True)
class MergeOperationsSettings:
    """The merge worker's start and its Prometheus /metrics (service/merge_worker.py,
    service/merge_metrics.py)."""

    GROUP: ClassVar[str] = "operations"
    start_timeout: float = same_as(LifecycleSettings, "start_timeout", help="exit with code 3 "
                                   "when NATS is not connected this long after start (0 = keep "
                                   "retrying)")
    port: int = same_as(MetricsSettings, "port", help="serve Prometheus /metrics on this TCP "
                        "port (0 = off)")
    host: str = same_as(MetricsSettings, "host")


@dataclass(frozen=True)
class MergeConfig(_Root):
    """Every section of ``merge``, plus where each value came from."""

    COMMAND: ClassVar[str] = "merge"
    nats: MergeNatsSettings = field(default_factory=MergeNatsSettings)
    windows: MergeWindowSettings = field(default_factory=MergeWindowSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    operations: MergeOperationsSettings = field(default_factory=MergeOperationsSettings)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)


# ---- the machinery both commands share --------------------------------------------------------

def _section_settings(root: type) -> tuple[Setting, ...]:
    found: list[Setting] = []
    for section in fields(root):
        cls = section.default_factory
        if not is_dataclass(cls):
            continue  # sources
        for f in fields(cls):
            found.append(replace(f.metadata[_SPEC], group=cls.GROUP, section=section.name,
                                 attr=f.name))
    return tuple(found)


@dataclass(frozen=True)
class Command:
    """One command's settings: its root class, the TOML table of its own settings (empty: the
    top level), and what runs after parsing (``prepare`` on the values: secret files; ``check``
    on the built root: rules that tie settings together)."""

    name: str
    root: type
    table: str
    prepare: Callable[[dict[str, Any], dict[str, str]], None]
    check: Callable[[Any], None]

    @property
    def settings(self) -> tuple[Setting, ...]:
        return _SETTINGS[self.name]

    @property
    def by_name(self) -> dict[str, Setting]:
        return {s.name: s for s in self.settings}


SETTINGS: tuple[Setting, ...] = _section_settings(Config)
BY_NAME = {s.name: s for s in SETTINGS}
_SETTINGS = {"run": SETTINGS, "merge": _section_settings(MergeConfig)}


def _build(command: Command, values: Mapping[str, Any], sources: Mapping[str, str]) -> Any:
    sections: dict[str, dict[str, Any]] = {}
    for s in command.settings:
        sections.setdefault(s.section, {})[s.attr] = values[s.name]
    built: dict[str, Any] = {}
    for f in fields(command.root):
        if f.name in sections:
            make = cast(Callable[..., Any], f.default_factory)   # the section's class
            built[f.name] = make(**sections[f.name])
    return command.root(**built, sources=dict(sources))


def add_arguments(parser: argparse.ArgumentParser, command: Command | None = None) -> None:
    command = command or RUN
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in command.settings:
        group = groups.get(s.group) or groups.setdefault(
            s.group, parser.add_argument_group(f"{s.group} settings"))
        help_text = f"{s.help} [{s.kind}; default: {_default_text(s)}; env {s.env}]"
        if s.kind == "bool":
            # --jetstream alone means true; --jetstream false still says it
            group.add_argument(s.flag, dest=s.name, metavar="BOOL", help=help_text,
                               nargs="?", const="true", default=None)
            continue
        group.add_argument(s.flag, dest=s.name, metavar=s.kind.upper(), help=help_text,
                           action="append" if s.repeatable else "store", default=None)


def _default_text(s: Setting) -> str:
    return ", ".join(s.default) if isinstance(s.default, tuple) else str(s.default)


def _flatten_toml(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, dict):
            flat.update(_flatten_toml(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


_ALIASES = {"mqtt_topics": "topic", "topics": "topic"}


def _toml_name(name: str, command: Command | None = None) -> str | None:
    """The setting a flattened TOML key names for ``command``, or None when the key is another
    command's (a file may hold both roles' settings). [mqtt] url = ... reads as mqtt_url,
    [nats] url as nats_url, [merge] own as own (for merge); plain names stay plain."""
    command = command or RUN
    known = command.by_name
    name = _ALIASES.get(name, name)
    if name in known:
        return name
    if command.table and name.startswith(command.table + "_"):
        inner = _ALIASES.get(name[len(command.table) + 1:], name[len(command.table) + 1:])
        if inner in known:
            return inner
    for other in COMMANDS.values():
        if other is command:
            continue
        if name in other.by_name or (other.table and name.startswith(other.table + "_")):
            return None
    return name   # unknown to every command: the caller says so


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None, command: Command | None = None) -> Any:
    """Resolves every setting of ``command`` (``run`` by default: a ``Config``; ``MERGE``: a
    ``MergeConfig``): default < TOML file < environment < flags < ``overrides`` (a program's own
    choices by setting name, e.g. the demo's private brokers), then checks them."""
    command = command or RUN
    settings, known = command.settings, command.by_name
    environ = os.environ if environ is None else environ
    raw: dict[str, tuple[Any, str]] = {s.name: (s.default, "default") for s in settings}
    path = getattr(args, "config", None) if args is not None else None
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
        for key, value in _flatten_toml(data).items():
            name = _toml_name(key, command)
            if name is None:
                continue   # the other command's
            if name not in known:
                raise ConfigError(f"config: unknown setting {name!r} in {path}")
            raw[name] = (value, f"config file {path}")
    for s in settings:
        if s.env in environ:
            raw[s.name] = (environ[s.env], f"environment {s.env}")
    if args is not None:
        for s in settings:
            value = getattr(args, s.name, None)
            if value is not None:
                raw[s.name] = (value, f"flag {s.flag}")
    for name, value in (overrides or {}).items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        raw[name] = (value, "set by the program")
    values, sources = {}, {}
    for s in settings:
        value, source = raw[s.name]
        try:
            values[s.name] = s.parse(value)
        except ValueError as exc:
            # a secret's value never reaches a message, not even a wrong one
            reason = "invalid value" if s.secret else str(exc)
            raise ConfigError(f"setting {s.name} ({source}): {reason}") from None
        sources[s.name] = source
    command.prepare(values, sources)
    config = _build(command, values, sources)
    command.check(config)
    return config


def _read_secret_files(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Each ``*_file`` secret setting the command has, read into its secret."""
    for secret, path_name in (("mqtt_password", "mqtt_password_file"),
                              ("nats_password", "nats_password_file"),
                              ("nats_token", "nats_token_file")):
        path = values.get(path_name)
        if not path:
            continue
        try:
            values[secret] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"setting {path_name}: cannot read {path}: {exc.strerror}") from None
        sources[secret] = f"file {path}"


def _check_nats_auth(config: Config | MergeConfig) -> None:
    """Bad credentials or TLS settings fail at start, not at every connect
    (sink/nats_options.connect_options, what every NATS client of both commands takes)."""
    from telemetry_cy.sink.nats_options import check_creds_file, connect_options

    nats = config.nats
    if nats.creds_file:
        try:
            check_creds_file(nats.creds_file)
        except ValueError as exc:
            raise ConfigError(f"setting nats_creds_file: {exc}") from None
    try:
        connect_options(nats.servers, **nats.auth)
    except ValueError as exc:
        raise ConfigError(f"NATS settings: {exc}") from None
    except OSError as exc:   # a CA, certificate or key file that cannot be read or used
        raise ConfigError(f"settings nats_ca_file/nats_cert_file/nats_key_file: "
                          f"{exc.strerror or exc}") from None


def _check_together(config: Config) -> None:
    """Rules that tie settings together, checked with the engine's own validation."""
    from telemetry_cy.engine.rules import check_config, check_event_config
    from telemetry_cy.service.logs import redact_url

    e, mqtt = config.engine, config.mqtt
    try:
        check_config(e.window, e.emit_every, e.max_keys, e.key_ttl, mqtt.max_payload_bytes,
                     e.max_name_bytes)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"settings window/emit_every/key_ttl: {exc}") from None
    try:
        check_event_config(e.time, e.allowed_lateness, e.idle_timeout, e.max_future, 0,
                           e.emit_every, round(e.window / e.emit_every))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"settings time/allowed_lateness/idle_timeout/max_future: {exc}") \
            from None
    if config.nats.late_subject:
        from telemetry_cy.sink.subjects import validate_prefix
        try:
            validate_prefix(config.nats.late_subject)
        except ValueError as exc:
            raise ConfigError(f"setting late_subject: {exc}") from None
    if config.nats.output == "partials":
        # what partials need and what the partial path does not carry (docs/scale-out.md)
        if e.time != "event":
            raise ConfigError("setting output: partials need time = event (docs/scale-out.md)")
        if config.state.dir or config.nats.late_subject or config.nats.jetstream:
            raise ConfigError("setting output: partials go without state_dir, late_subject "
                              "and jetstream (the partials stream is always JetStream)")
    if not mqtt.url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(f"setting mqtt_url: expected mqtt://host:port or mqtts://host:port, "
                          f"got {redact_url(mqtt.url)!r}")
    if config.nats.expected_stream and not config.nats.jetstream:
        # a header only JetStream reads: without it the setting would silently do nothing
        raise ConfigError("setting expected_stream: only JetStream checks the stream (set "
                          "--jetstream true, or leave expected_stream empty)")
    if float(mqtt.session_expiry) > 0 and not mqtt.client_id:
        raise ConfigError("setting session_expiry: a persistent session needs a fixed "
                          "client_id (set --client-id)")


def _check_merge(config: MergeConfig) -> None:
    """The window settings as the partial format checks them, and own within partitions."""
    from telemetry_cy.engine.partial_format import window_settings

    w = config.windows
    try:
        window_settings(w.window, w.emit_every, w.time, w.allowed_lateness, w.quantiles or None,
                        w.quantile_accuracy)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"settings window/emit_every/allowed_lateness/quantiles: {exc}") \
            from None
    try:
        config.worker.own_partitions
    except ValueError as exc:
        raise ConfigError(f"setting own: {exc}") from None
    _check_nats_auth(config)


def _check_run(config: Config) -> None:
    _check_nats_auth(config)
    _check_together(config)


RUN = Command("run", Config, "", _read_secret_files, _check_run)
MERGE = Command("merge", MergeConfig, "merge", _read_secret_files, _check_merge)
COMMANDS = {c.name: c for c in (RUN, MERGE)}


def markdown_reference(command: Command | None = None) -> str:
    """A settings table of docs/configuration.md (``python -m telemetry_cy.service.config
    [merge]``)."""
    command = command or RUN
    settings = command.settings
    lines = []
    for group in dict.fromkeys(s.group for s in settings):
        heading = group.capitalize() if command is RUN else f"`{command.name}`: {group}"
        lines += [f"### {heading}", "",
                  "| setting | flag | environment | type | default | meaning |",
                  "|---|---|---|---|---|---|"]
        for s in (s for s in settings if s.group == group):
            default = _default_text(s)
            default = "(empty)" if default == "" else f"`{default}`"
            meaning = s.help + (" Repeatable." if s.repeatable else "") + (
                " Secret: never printed." if s.secret else "")
            kind = s.kind.replace("|", " or ")
            lines.append(f"| `{s.name}` | `{s.flag}` | `{s.env}` | {kind} | {default} | "
                         f"{meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(markdown_reference(COMMANDS[sys.argv[1] if len(sys.argv) > 1 else "run"]))
