"""The event-time settings of `telemetry-cy run`: flags, checks, and what the daemon builds."""

from __future__ import annotations

import argparse

import pytest

from telemetry_cy.service import config as cfg
from telemetry_cy.service.daemon import LATE_CAPACITY, make_engine


def load(*argv: str, environ=None) -> cfg.Config:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return cfg.load(parser.parse_args(list(argv)), environ or {})


def test_defaults_are_arrival_time():
    c = load()
    assert (c.engine.time, c.engine.allowed_lateness, c.engine.idle_timeout,
            c.engine.max_future, c.nats.late_subject) == ("arrival", 0.0, 30.0, 60.0, "")


def test_flags_and_environment():
    c = load("--time", "event", "--allowed-lateness", "2s", "--idle-timeout", "500ms",
             "--max-future", "1m", "--late-subject", "late.readings",
             "--window", "3s", "--emit-every", "1s", "--key-ttl", "10s")
    assert (c.engine.time, c.engine.allowed_lateness, c.engine.idle_timeout,
            c.engine.max_future, c.nats.late_subject) == ("event", 2.0, 0.5, 60.0,
                                                          "late.readings")
    e = make_engine(c.engine, c.mqtt, route_late=True)
    assert (e.time, e.allowed_lateness, e.idle_timeout, e.max_future) == ("event", 2.0, 0.5, 60.0)
    e.push_reading("a", "x", 1.0, 100.0, t=100.0)
    e.push_reading("a", "x", 1.0, 100.0, t=110.0)
    e.push_reading("a", "x", 1.0, 111.0, t=100.0)
    assert len(e.take_late()) == 1 and LATE_CAPACITY > 0
    assert load(environ={"TELEMETRY_CY_TIME": "event"}).engine.time == "event"


@pytest.mark.parametrize("argv,words", [
    (["--time", "wall"], "setting time"),
    (["--allowed-lateness=-1s"], "setting allowed_lateness"),
    (["--idle-timeout", "0"], "setting idle_timeout"),
    (["--late-subject", "late.*"], "setting late_subject"),
    (["--late-subject", "a..b"], "setting late_subject"),
    (["--time", "event", "--allowed-lateness", "10h", "--window", "60s", "--emit-every", "1s"],
     "allowed_lateness"),
])
def test_bad_values_name_the_setting(argv, words):
    with pytest.raises(cfg.ConfigError, match=words):
        load(*argv)


def test_snapshot_carries_the_event_time_counters():
    from telemetry_cy.service.pipeline_snapshot import PipelineSnapshot

    eng = {"payloads": 10, "readings": 6, "drops": {"late": 3, "future": 1},
           "event_time": {"no_event_time": 2, "late_unrouted": 0, "watermark": 98.0}}
    emi = {"published": 0, "late": {"routed": 3, "published": 2, "dropped": 0, "backlog": 1}}
    snap = PipelineSnapshot.from_stats({"received": 10}, eng, emi)
    counters = snap.counters(1.0)
    assert counters["event_time"] == {"no_event_time": 2, "late_unrouted": 0, "watermark": 98.0,
                                      "late_routed": 3, "late_published": 2, "late_dropped": 0,
                                      "late_backlog": 1}
    assert counters["drops"]["late"] == 3 and counters["drops"]["future"] == 1
    line = snap.stats_line()
    assert line["event_time"] == {"no_event_time": 2, "watermark": 98.0, "late_routed": 3,
                                  "late_published": 2, "late_backlog": 1}
    assert line["drops"] == {"late": 3, "future": 1}
    # an engine without event-time stats (an older build, a stand-in): no block at all
    assert "event_time" not in PipelineSnapshot.from_stats({}, {}, {}).counters(0.0)
