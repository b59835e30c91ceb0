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
