"""Settings of `telemetry-cy run`: typed sections, one table, four layers.

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
from typing import Any, ClassVar, cast


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


@dataclass(frozen=True)
class NatsSettings:
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
    late_subject: str = setting("late_subject", parse_str, "", "event time: publish late readings "
                                "as JSON to <late_subject>.<device>.<sensor> (empty: count them "
                                "only)")

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


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


@dataclass(frozen=True)
class Config:
    """Every section, plus where each setting's value came from (by setting name)."""

    mqtt: MqttSettings = field(default_factory=MqttSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    state: StateSettings = field(default_factory=StateSettings)
    log: LogSettings = field(default_factory=LogSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def value(self, name: str) -> Any:
        """A setting's value by its name (``mqtt_url``, ``window``, ...)."""
        s = BY_NAME[name]
        return getattr(getattr(self, s.section), s.attr)

    def redacted(self) -> dict[str, Any]:
        """Every setting by name, with each secret replaced: safe to log."""
        return {s.name: ("***" if s.secret and v else v)
                for s in SETTINGS for v in (self.value(s.name),)}


def _section_settings() -> tuple[Setting, ...]:
    found: list[Setting] = []
    for section in fields(Config):
        cls = section.default_factory
        if not is_dataclass(cls):
            continue  # sources
        for f in fields(cls):
            found.append(replace(f.metadata[_SPEC], group=cls.GROUP, section=section.name,
                                 attr=f.name))
    return tuple(found)


SETTINGS: tuple[Setting, ...] = _section_settings()
BY_NAME = {s.name: s for s in SETTINGS}


def _build(values: Mapping[str, Any], sources: Mapping[str, str]) -> Config:
    sections: dict[str, dict[str, Any]] = {}
    for s in SETTINGS:
        sections.setdefault(s.section, {})[s.attr] = values[s.name]
    built: dict[str, Any] = {}
    for f in fields(Config):
        if f.name in sections:
            make = cast(Callable[..., Any], f.default_factory)   # the section's class
            built[f.name] = make(**sections[f.name])
    return Config(**built, sources=dict(sources))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in SETTINGS:
        group = groups.get(s.group) or groups.setdefault(
            s.group, parser.add_argument_group(f"{s.group} settings"))
        help_text = f"{s.help} [{s.kind}; default: {_default_text(s)}; env {s.env}]"
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


def _toml_name(name: str) -> str:
    # [mqtt] url = ... reads as mqtt_url; [nats] url as nats_url; plain names stay plain
    return name if name in BY_NAME else {"mqtt_topics": "topic", "topics": "topic"}.get(name, name)


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Resolves every setting: default < TOML file < environment < flags < ``overrides`` (a
    program's own choices by setting name, e.g. the demo's private brokers), then checks them."""
    environ = os.environ if environ is None else environ
    raw: dict[str, tuple[Any, str]] = {s.name: (s.default, "default") for s in SETTINGS}
    path = getattr(args, "config", None) if args is not None else None
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
        for name, value in _flatten_toml(data).items():
            name = _toml_name(name)
            if name not in BY_NAME:
                raise ConfigError(f"config: unknown setting {name!r} in {path}")
            raw[name] = (value, f"config file {path}")
    for s in SETTINGS:
        if s.env in environ:
            raw[s.name] = (environ[s.env], f"environment {s.env}")
    if args is not None:
        for s in SETTINGS:
            value = getattr(args, s.name, None)
            if value is not None:
                raw[s.name] = (value, f"flag {s.flag}")
    for name, value in (overrides or {}).items():
        if name not in BY_NAME:
            raise ConfigError(f"unknown setting {name!r}")
        raw[name] = (value, "set by the program")
    values, sources = {}, {}
    for s in SETTINGS:
        value, source = raw[s.name]
        try:
            values[s.name] = s.parse(value)
        except ValueError as exc:
            # a secret's value never reaches a message, not even a wrong one
            reason = "invalid value" if s.secret else str(exc)
            raise ConfigError(f"setting {s.name} ({source}): {reason}") from None
        sources[s.name] = source
    _read_secret_files(values, sources)
    config = _build(values, sources)
    _check_creds_file(config)
    _check_together(config)
    return config


def _read_secret_files(values: dict[str, Any], sources: dict[str, str]) -> None:
    for secret, path_name in (("mqtt_password", "mqtt_password_file"),
                              ("nats_password", "nats_password_file"),
                              ("nats_token", "nats_token_file")):
        path = values[path_name]
        if not path:
            continue
        try:
            values[secret] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"setting {path_name}: cannot read {path}: {exc.strerror}") from None
        sources[secret] = f"file {path}"


def _check_creds_file(config: Config) -> None:
    """A bad credentials file fails at start, not at every connect (emitter.check_creds_file)."""
    path = config.nats.creds_file
    if not path:
        return
    from telemetry_cy.sink.nats_emitter import check_creds_file
    try:
        check_creds_file(path)
    except ValueError as exc:
        raise ConfigError(f"setting nats_creds_file: {exc}") from None


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


def markdown_reference() -> str:
    """The settings table of docs/configuration.md (``python -m telemetry_cy.service.config``)."""
    lines = []
    for group in dict.fromkeys(s.group for s in SETTINGS):
        lines += [f"### {group.capitalize()}", "",
                  "| setting | flag | environment | type | default | meaning |",
                  "|---|---|---|---|---|---|"]
        for s in (s for s in SETTINGS if s.group == group):
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
    print(markdown_reference())
