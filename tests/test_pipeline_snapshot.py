"""The pipeline snapshot: read downstream first, drops merged once, unknown reasons kept."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_cy.reasons import DROP_REASONS
from telemetry_cy.service.pipeline_snapshot import PipelineSnapshot, merge_drops


class _FlowingPipeline:
    """A pipeline that moves items on every time anybody looks at it, as the real threads do
    between two reads: each stats() call first lets `steps` pop the next (stage, n) move. Stage k
    may only pass on what stage k-1 has counted, so at every instant
    received >= payloads >= aggregates >= published."""

    def __init__(self, steps: list[tuple[int, int]]):
        self.steps = list(steps)
        self.counts = [0, 0, 0, 0]   # received, payloads, aggregates, published
        self.reads: list[str] = []
        self.source = SimpleNamespace(stats=lambda: self._look("source"))
        self.engine_thread = SimpleNamespace(stats=lambda: self._look("engine"))
        self.emitter = SimpleNamespace(stats=lambda: self._look("emitter"))
        self.ring = self

    @property
    def used_bytes(self) -> int:
        self._look("ring")
        return 0

    capacity = 4096

    def _look(self, who: str) -> dict:
        self.reads.append(who)
        if self.steps:
            stage, n = self.steps.pop(0)
            if stage == 0:
                self.counts[0] += n
            else:
                self.counts[stage] += min(n, self.counts[stage - 1] - self.counts[stage])
        c = self.counts
        return {"source": {"received": c[0]}, "engine": {"payloads": c[1], "aggregates": c[2]},
                "emitter": {"published": c[3]}, "ring": {}}[who]


moves = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(moves)
def test_a_snapshot_never_shows_more_out_than_in(steps):
    pipeline = _FlowingPipeline([(0, 100), (1, 100), (2, 100)] + steps)
    for _ in range(3):
        snap = PipelineSnapshot.read(pipeline)
        assert snap.received >= snap.payloads
        assert snap.payloads >= snap.aggregates >= snap.published
    assert pipeline.reads[:4] == ["emitter", "engine", "ring", "source"]


def test_reading_upstream_first_would_show_more_out_than_in():
    """The property above can fail: the same flow read in the other order breaks it."""
    pipeline = _FlowingPipeline([(0, 0), (0, 5), (1, 5), (2, 5), (3, 5)])
    src = pipeline.source.stats()
    for _ in range(3):          # the threads move on while the reader goes downstream
        pipeline.ring.used_bytes
    emi = pipeline.emitter.stats()
    assert emi["published"] > src["received"]


def test_drops_are_merged_once_over_every_stage():
    drops, unknown = merge_drops({"drops": {"oversize": 2, "ingest_full": 1}},
                                 {"drops": {"late": 3, "oversize": 1}},
                                 {"drops": {"emit_backlog": 4}}, {})
    assert list(drops)[:len(DROP_REASONS)] == list(DROP_REASONS)
    assert drops == {**dict.fromkeys(DROP_REASONS, 0), "oversize": 3, "ingest_full": 1,
                     "late": 3, "emit_backlog": 4}
    assert unknown == ()


def test_an_unknown_reason_is_counted_under_its_name_and_said_once(caplog):
    src = {"drops": {"oversize": 1, "gremlins-1": 2}}
    emi = {"drops": {"gremlins-1": 3, "emit_backlog": 1}}
    with caplog.at_level(logging.WARNING, logger="telemetry_cy"):
        snap = PipelineSnapshot.from_stats(src, {}, emi)
        again = PipelineSnapshot.from_stats(src, {}, emi)
    assert snap.drops["gremlins-1"] == 5 and snap.unknown_reasons == ("gremlins-1",)
    assert snap.drops["oversize"] == 1 and snap.drops["emit_backlog"] == 1
    assert again.drops == snap.drops
    said = [r for r in caplog.records if "unknown drop reason" in r.getMessage()]
    assert len(said) == 1 and said[0].fields == {"reason": "gremlins-1"}
    assert snap.counters(1.0)["drops"]["gremlins-1"] == 5
    assert snap.stats_line()["drops"] == {"oversize": 1, "emit_backlog": 1, "gremlins-1": 5}


def test_final_counters_and_stats_line_fields():
    src = {"received": 10, "connected": True, "connects": 1, "disconnects": 0,
           "disconnected_seconds": 0.5, "drops": {"oversize": 1}}
    eng = {"payloads": 9, "readings": 9, "aggregates": 3, "live_keys": 3, "evicted": 1,
           "open_readings": 2, "state_bytes": 100, "drops": {"late": 0},
           "seq": {"gaps": 2, "duplicates": 0}, "offenders": {"drops": [("d/s", 4, 0)],
                                                               "late": []}}
    emi = {"published": 2, "backlog_aggregates": 1, "connected": False, "reconnects": 2,
           "disconnected_seconds": 1.25, "stalled_flushes": 0, "too_large": 0,
           "drops": {"emit_backlog": 0}}
    snap = PipelineSnapshot.from_stats(src, eng, emi, ring_used_bytes=64, ring_capacity=4096)
    c = snap.counters(12.3456)
    assert list(c) == ["received", "payloads", "readings", "drops", "aggregates", "published",
                       "backlog", "live_keys", "evicted", "open_readings", "state_bytes",
                       "uptime_s", "mqtt", "nats", "seq", "offenders"]
    assert (c["received"], c["payloads"], c["backlog"], c["uptime_s"]) == (10, 9, 1, 12.346)
    assert c["mqtt"] == {"connected": True, "connects": 1, "disconnects": 0,
                         "disconnected_seconds": 0.5}
    assert c["nats"] == {"connected": False, "reconnects": 2, "disconnected_seconds": 1.25,
                         "stalled_flushes": 0, "too_large": 0}
    line = snap.stats_line()
    assert line == {"received": 10, "decoded": 9, "readings": 9, "emitted": 3, "published": 2,
                    "drops": {"oversize": 1}, "ring_bytes": 64, "backlog": 1, "live_keys": 3,
                    "state_bytes": 100, "mqtt": "up", "nats": "down", "seq": {"gaps": 2},
                    "top_drops": {"d/s": 4}}
    bare = PipelineSnapshot.from_stats({}, {}, {})
    assert "seq" not in bare.counters(0.0) and bare.mqtt.down_seconds == 0.0


def test_jetstream_counters_only_in_jetstream_mode():
    core = PipelineSnapshot.from_stats({}, {}, {"published": 3})
    assert core.jetstream is None
    assert "jetstream" not in core.counters(1.0) and "jetstream" not in core.stats_line()
    js = {"acks": 5, "duplicates": 2, "resent": 4, "in_flight": 3, "in_flight_bytes": 900,
          "in_flight_high_water": 8, "in_flight_bytes_high_water": 2000,
          "publish_errors": {"stream_full": 0, "wrong_stream": 7, "ack_timeout": 0},
          "last_publish_error": "wrong_stream: expected stream does not match"}
    snap = PipelineSnapshot.from_stats({}, {}, {"published": 7, "jetstream": js})
    assert snap.counters(1.0)["jetstream"] == js
    # the stats line keeps what an operator watches, errors only when there are some
    assert snap.stats_line()["jetstream"] == {"acks": 5, "duplicates": 2, "resent": 4,
                                              "errors": {"wrong_stream": 7}, "in_flight": 3}


def test_partial_mode_shows_the_partial_buffers_memory():
    # the engine's partial_buffer_bytes, already inside its state_bytes, shown on its own where
    # partial mode's figures are (docs/metrics.md, "Partial mode")
    eng = {"state_bytes": 5000, "partial_buffer_bytes": 1200, "aggregates": 4}
    emi = {"partials": {"sent": 2, "panes": 3, "panes_sent": 3}}
    snap = PipelineSnapshot.from_stats({}, eng, emi)
    final = snap.counters(1.0)
    assert final["state_bytes"] == 5000 and final["partials"]["buffer_bytes"] == 1200
    assert snap.stats_line()["partials"]["buffer_bytes"] == 1200
    plain = PipelineSnapshot.from_stats({}, {"state_bytes": 5000, "partial_buffer_bytes": 0}, {})
    assert plain.partials is None and plain.counters(1.0)["state_bytes"] == 5000
