"""One reading of the whole pipeline's counters: what the stats line, the final counters, the
Prometheus metrics, /healthz and the demo all show.

Read downstream first (NATS emitter, engine thread, ring, MQTT source): each stage counts an item
before it hands it on, so a counter further down is never read later than one upstream of it and a
snapshot never shows more out than in (published <= aggregates, payloads <= received). Each part's
``stats()`` is itself a consistent copy made by the thread that owns the counters, so the snapshot
needs no lock.

Drop reasons are merged here and nowhere else. The set is closed (telemetry_cy/reasons.py); a
reason outside it is a bug in a stage, not bad input, so it is counted under its own name (nothing
is lost) and logged once per name rather than crashing the process that reports it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from telemetry_cy.reasons import DROP_REASONS

log = logging.getLogger("telemetry_cy.service.pipeline_snapshot")

_reported_unknown: set[str] = set()


class _Stats(Protocol):
    def stats(self) -> dict: ...


class Pipeline(Protocol):
    """What a snapshot reads: the Daemon, or anything shaped like it."""

    @property
    def source(self) -> _Stats: ...
    @property
    def engine_thread(self) -> _Stats: ...
    @property
    def emitter(self) -> _Stats: ...
    @property
    def ring(self) -> Any: ...   # used_bytes and capacity


def merge_drops(*parts: Mapping[str, Any]) -> tuple[dict[str, int], tuple[str, ...]]:
    """The drops of every part summed by reason: each reason of DROP_REASONS (0 when none), then
    any other reason under its own name. Returns them and the names that were not known."""
    drops = dict.fromkeys(DROP_REASONS, 0)
    unknown: list[str] = []
    for part in parts:
        for reason, n in (part.get("drops") or {}).items():
            if reason not in drops:
                drops[reason] = 0
                unknown.append(reason)
            drops[reason] += n
    for reason in unknown:
        if reason not in _reported_unknown:
            _reported_unknown.add(reason)
            log.warning("unknown drop reason: counted under its own name",
                        extra={"fields": {"reason": reason}})
    return drops, tuple(unknown)


@dataclass(frozen=True)
class MqttState:
    connected: bool
    connects: int                  # CONNACKs received
    disconnects: int               # established connections lost or closed
    disconnected_seconds: float    # total time without a connection since start
    down_seconds: float            # length of the current outage (0 when connected)


@dataclass(frozen=True)
class NatsState:
    connected: bool
    reconnects: int
    disconnected_seconds: float
    stalled_flushes: int           # flushes that timed out on a live connection
    too_large: int                 # bodies longer than the server's max_payload
    down_seconds: float


@dataclass(frozen=True)
class JetStreamState:
    """The JetStream publisher's counters (docs/jetstream.md); None in core NATS mode."""

    acks: int                      # answers "stored"
    duplicates: int                # answers "stored before" (a retry the stream deduplicated)
    resent: int                    # messages sent again by a retry
    publish_errors: Mapping[str, int]   # refused or unanswered messages, by reason
    in_flight: int                 # messages sent and not answered yet
    in_flight_bytes: int
    in_flight_high_water: int
    in_flight_bytes_high_water: int
    last_publish_error: str

    @classmethod
    def from_stats(cls, js: Mapping[str, Any] | None) -> JetStreamState | None:
        if js is None:
            return None
        return cls(acks=_int(js, "acks"), duplicates=_int(js, "duplicates"),
                   resent=_int(js, "resent"),
                   publish_errors={k: int(v) for k, v in (js.get("publish_errors") or {}).items()},
                   in_flight=_int(js, "in_flight"), in_flight_bytes=_int(js, "in_flight_bytes"),
                   in_flight_high_water=_int(js, "in_flight_high_water"),
                   in_flight_bytes_high_water=_int(js, "in_flight_bytes_high_water"),
                   last_publish_error=str(js.get("last_publish_error") or ""))

    def as_dict(self) -> dict[str, Any]:
        return {"acks": self.acks, "duplicates": self.duplicates, "resent": self.resent,
                "publish_errors": dict(self.publish_errors), "in_flight": self.in_flight,
                "in_flight_bytes": self.in_flight_bytes,
                "in_flight_high_water": self.in_flight_high_water,
                "in_flight_bytes_high_water": self.in_flight_bytes_high_water,
                "last_publish_error": self.last_publish_error}


@dataclass(frozen=True)
class CheckpointState:
    """The checkpoint writer's counters (docs/state.md)."""

    checkpoints: int               # snapshots written to the state file
    failures: int                  # writes that failed (the previous file stays)
    skipped: int                   # snapshots replaced by a newer one before being written
    bad_state_files: int           # refused state files moved aside at start (on_bad_state=fresh)
    last_unix: float | None        # when the last written snapshot was taken (None: none yet)
    last_bytes: int
    last_snapshot_seconds: float   # engine.snapshot() on the engine thread
    last_write_seconds: float      # write + fsync + rename + fsync of the directory
    last_error: str

    @classmethod
    def from_stats(cls, ck: Mapping[str, Any]) -> CheckpointState:
        last = ck.get("last_unix")
        return cls(checkpoints=_int(ck, "checkpoints"), failures=_int(ck, "failures"),
                   skipped=_int(ck, "skipped"), bad_state_files=_int(ck, "bad_state_files"),
                   last_unix=None if last is None else float(last),
                   last_bytes=_int(ck, "last_bytes"),
                   last_snapshot_seconds=_float(ck, "last_snapshot_seconds"),
                   last_write_seconds=_float(ck, "last_write_seconds"),
                   last_error=str(ck.get("last_error") or ""))

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the last written snapshot was taken; None before the first."""
        if self.last_unix is None:
            return None
        return round(max(0.0, (time.time() if now is None else now) - self.last_unix), 3)

    def as_dict(self) -> dict[str, Any]:
        return {"checkpoints": self.checkpoints, "failures": self.failures,
                "skipped": self.skipped, "bad_state_files": self.bad_state_files,
                "age_s": self.age_s(), "last_bytes": self.last_bytes,
                "last_snapshot_seconds": round(self.last_snapshot_seconds, 6),
                "last_write_seconds": round(self.last_write_seconds, 6),
                "last_error": self.last_error}


@dataclass(frozen=True)
class PipelineSnapshot:
    # MQTT source
    received: int
    payload_bytes: int
    mqtt: MqttState
    # ingest ring
    ring_used_bytes: int
    ring_capacity: int
    # engine thread
    payloads: int
    readings: int
    aggregates: int
    live_keys: int
    evicted: int
    open_readings: int
    state_bytes: int
    heartbeat: float | None        # time.monotonic() of the engine loop's last snapshot
    seq: Mapping[str, int] | None  # engines with sequence accounting (docs/windows.md)
    offenders: Mapping[str, list] | None
    # event time (docs/windows.md): the engine's no_event_time, late_unrouted and watermark, and
    # the emitter's late messages (late_routed == late_published + late_dropped + late_backlog);
    # None from an engine without event time
    event_time: Mapping[str, Any] | None
    # NATS emitter
    published: int
    backlog_batches: int
    backlog_aggregates: int
    backlog_bytes: int
    nats: NatsState
    jetstream: JetStreamState | None
    # all stages
    drops: Mapping[str, int]
    unknown_reasons: tuple[str, ...]
    # state checkpoints (service/checkpoints.py): None without a state_dir
    checkpoint: CheckpointState | None = None
    # output = partials (docs/scale-out.md): the partial messages (sink/partials_emitter.py)
    # plus local_windows, the windows the instance's engine closed and did not publish (the
    # merge workers do), in pane_drops[partial_buffer_full] the panes the engine's bounded
    # partial buffer could not keep (engine/instance_partials.py), and in buffer_bytes the memory
    # that buffer holds (part of state_bytes); None in aggregate mode
    partials: Mapping[str, Any] | None = None

    @classmethod
    def read(cls, pipeline: Pipeline) -> PipelineSnapshot:
        emi = pipeline.emitter.stats()
        checkpoints = getattr(pipeline, "checkpoints", None)
        ckpt = None if checkpoints is None else checkpoints.stats()
        eng = pipeline.engine_thread.stats()
        ring_used = pipeline.ring.used_bytes
        src = pipeline.source.stats()
        # the engine thread's count, read after the emitter's like the engine's own (downstream
        # first): a pane is counted lost before any message made after it
        partials = getattr(pipeline, "partials", None)
        lost = 0 if partials is None else partials.lost_panes
        return cls.from_stats(src, eng, emi, ring_used, pipeline.ring.capacity, ckpt, lost)

    @classmethod
    def from_stats(cls, src: Mapping[str, Any], eng: Mapping[str, Any],
                   emi: Mapping[str, Any], ring_used_bytes: int = 0,
                   ring_capacity: int = 0,
                   ckpt: Mapping[str, Any] | None = None,
                   lost_panes: int = 0) -> PipelineSnapshot:
        """From the parts' ``stats()`` dicts, already read downstream first; ``lost_panes``:
        partial mode's panes the engine could not keep (``InstancePartials.lost_panes``)."""
        drops, unknown = merge_drops(src, eng, emi)
        aggregates, partials = _int(eng, "aggregates"), emi.get("partials")
        if partials is not None:
            # partial mode: no aggregate leaves this process, so the aggregate path balances at
            # 0 (aggregates == published + emit_backlog + backlog); what the engine closed is
            # named for what it is. A lost pane never became part of a message: it is a pane
            # drop of its own reason, and the panes closed are those made into messages plus
            # those lost (docs/metrics.md, "Partial mode")
            pane_drops = {**(partials.get("pane_drops") or {}), "partial_buffer_full": lost_panes}
            partials = {**partials, "local_windows": aggregates, "pane_drops": pane_drops,
                        "panes": _int(partials, "panes") + lost_panes,
                        "buffer_bytes": _int(eng, "partial_buffer_bytes")}
            aggregates = 0
        return cls(
            received=_int(src, "received"), payload_bytes=_int(src, "payload_bytes"),
            mqtt=MqttState(
                connected=bool(src.get("connected")), connects=_int(src, "connects"),
                disconnects=_int(src, "disconnects"),
                disconnected_seconds=_float(src, "disconnected_seconds"),
                down_seconds=_float(src, "down_seconds")),
            ring_used_bytes=ring_used_bytes, ring_capacity=ring_capacity,
            payloads=_int(eng, "payloads"), readings=_int(eng, "readings"),
            aggregates=aggregates, live_keys=_int(eng, "live_keys"),
            evicted=_int(eng, "evicted"), open_readings=_int(eng, "open_readings"),
            state_bytes=_int(eng, "state_bytes"), heartbeat=_optional_float(eng, "heartbeat"),
            seq=eng.get("seq"), offenders=eng.get("offenders"),
            event_time=_event_time(eng, emi),
            published=_int(emi, "published"), backlog_batches=_int(emi, "backlog_batches"),
            backlog_aggregates=_int(emi, "backlog_aggregates"),
            backlog_bytes=_int(emi, "backlog_bytes"),
            nats=NatsState(
                connected=bool(emi.get("connected")), reconnects=_int(emi, "reconnects"),
                disconnected_seconds=_float(emi, "disconnected_seconds"),
                stalled_flushes=_int(emi, "stalled_flushes"), too_large=_int(emi, "too_large"),
                down_seconds=_float(emi, "down_seconds")),
            jetstream=JetStreamState.from_stats(emi.get("jetstream")),
            drops=drops, unknown_reasons=unknown,
            checkpoint=None if ckpt is None else CheckpointState.from_stats(ckpt),
            partials=partials)

    def counters(self, uptime_s: float) -> dict[str, Any]:
        """The final counters printed on stop (one JSON object). Balance rules
        (docs/architecture.md):
        received == payloads + drops[oversize] + drops[decode_error] + drops[ingest_full]
        readings of decoded payloads == readings + schema_mismatch + non_finite + key_limit + late
        + sketch_full
        aggregates == published + drops[emit_backlog] + backlog
        partial mode (``partials``): aggregates == published == 0, and
        partials[messages] == partials[sent] + sum(partials[drops]) + partials[backlog]
        partials[panes] == partials[panes_sent] + sum(partials[pane_drops]) +
        partials[panes_backlog]
        at stop, open_readings = readings of the interval no tick closed (in no aggregate); with
        window == emit_every: readings == sum of published counts + open_readings + (readings of
        aggregates dropped as emit_backlog)"""
        out: dict[str, Any] = {
            "received": self.received,
            "payloads": self.payloads,
            "readings": self.readings,
            "drops": dict(self.drops),
            "aggregates": self.aggregates,
            "published": self.published,
            "backlog": self.backlog_aggregates,
            "live_keys": self.live_keys,
            "evicted": self.evicted,
            "open_readings": self.open_readings,
            "state_bytes": self.state_bytes,
            "uptime_s": round(uptime_s, 3),
            "mqtt": {"connected": self.mqtt.connected, "connects": self.mqtt.connects,
                     "disconnects": self.mqtt.disconnects,
                     "disconnected_seconds": self.mqtt.disconnected_seconds},
            "nats": {"connected": self.nats.connected, "reconnects": self.nats.reconnects,
                     "disconnected_seconds": self.nats.disconnected_seconds,
                     "stalled_flushes": self.nats.stalled_flushes,
                     "too_large": self.nats.too_large},
        }
        if self.jetstream is not None:
            out["jetstream"] = self.jetstream.as_dict()
        if self.seq is not None:
            out["seq"] = self.seq
        if self.offenders is not None:
            out["offenders"] = self.offenders
        if self.event_time is not None:
            out["event_time"] = dict(self.event_time)
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint.as_dict()
        if self.partials is not None:
            out["partials"] = dict(self.partials)
        return out

    def stats_line(self) -> dict[str, Any]:
        """The fields of the periodic stats log line."""
        line: dict[str, Any] = {
            "received": self.received, "decoded": self.payloads, "readings": self.readings,
            "emitted": self.aggregates, "published": self.published,
            "drops": {k: v for k, v in self.drops.items() if v},
            "ring_bytes": self.ring_used_bytes, "backlog": self.backlog_aggregates,
            "live_keys": self.live_keys, "state_bytes": self.state_bytes,
            "mqtt": "up" if self.mqtt.connected else "down",
            "nats": "up" if self.nats.connected else "down",
        }
        js = self.jetstream
        if js is not None:   # what an operator watches: acks, retries, refusals, the window
            line["jetstream"] = {
                "acks": js.acks, "duplicates": js.duplicates, "resent": js.resent,
                "errors": {k: v for k, v in js.publish_errors.items() if v},
                "in_flight": js.in_flight}
        seq = {k: v for k, v in (self.seq or {}).items() if v}
        if seq:
            line["seq"] = seq
        event_time = {k: v for k, v in (self.event_time or {}).items() if v}
        if event_time:
            line["event_time"] = event_time
        for kind, top in (self.offenders or {}).items():
            if top:  # the three heaviest names, as name: count
                line[f"top_{kind}"] = {entry[0]: entry[1] for entry in top[:3]}
        p = self.partials
        if p is not None:   # what the instance sends the merge workers, and what it lost
            made = p.get("made") or {}
            line["partials"] = {
                "sent": p.get("sent", 0), "panes": p.get("panes_sent", 0),
                "progress": made.get("progress", 0), "heartbeats": made.get("heartbeat", 0),
                "backlog": p.get("backlog", 0), "buffer_bytes": p.get("buffer_bytes", 0),
                "drops": {k: v for k, v in (p.get("drops") or {}).items() if v},
                "pane_drops": {k: v for k, v in (p.get("pane_drops") or {}).items() if v}}
        ck = self.checkpoint
        if ck is not None:
            line["checkpoint"] = {"age_s": ck.age_s(), "bytes": ck.last_bytes,
                                  "failures": ck.failures}
        return line


def _event_time(eng: Mapping[str, Any], emi: Mapping[str, Any]) -> dict[str, Any] | None:
    engine_part = eng.get("event_time")
    if engine_part is None:
        return None
    out = dict(engine_part)
    for key, value in (emi.get("late") or {}).items():
        out[f"late_{key}"] = value
    return out


def _int(part: Mapping[str, Any], key: str) -> int:
    return int(part.get(key) or 0)


def _float(part: Mapping[str, Any], key: str) -> float:
    return float(part.get(key) or 0.0)


def _optional_float(part: Mapping[str, Any], key: str) -> float | None:
    value = part.get(key)
    return None if value is None else float(value)
