"""`telemetry-cy demo` runs headless: private brokers, the fleet, the daemon, the subscriber."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.brokers import find_mosquitto, find_nats_server

REPO = Path(__file__).resolve().parent.parent
SHOW = 5
AGGREGATE = re.compile(r"aggregate (?P<device>[^/ ]+)/(?P<sensor>\S+) "
                       r"window=(?P<start>[\d:.]+)-(?P<end>[\d:.]+) count=(?P<count>\d+) "
                       r"mean=(?P<mean>\S+) min=(?P<min>\S+) max=(?P<max>\S+) stddev=\S+"
                       r"( p50=(?P<p50>\S+) p90=(?P<p90>\S+) p99=(?P<p99>\S+))?"
                       r"( unit=\S+)?")


needs_brokers = pytest.mark.skipif(find_mosquitto() is None or find_nats_server() is None,
                                   reason="the demo needs mosquitto and nats-server")


def _seconds(clock: str) -> float:
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def run_demo(duration: int, rate: int, *flags: str) -> list[str]:
    """`telemetry-cy demo` with 20 devices, 2 s windows every 1 s, and `flags`, from this
    checkout; it must exit 0. Its stdout, line by line (not a terminal: plain lines)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "telemetry_cy.service.cli", "demo", "--duration", str(duration),
         "--rate", str(rate), "--devices", "20", "--window", "2s", "--emit-every", "1s", *flags],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


@needs_brokers
def test_demo_runs_headless_and_aggregates_reach_nats_and_stdout():
    lines = run_demo(8, 1500, "--show", str(SHOW))
    # not a terminal: plain progress lines, then the summary
    assert any(line.startswith("rate=") for line in lines)
    # ... and after each tick a few of its aggregates: key, window, statistics
    ticks = [i for i, line in enumerate(lines) if line.startswith("tick ")]
    assert len(ticks) >= 3, lines[-30:]
    for i in ticks:
        m = re.fullmatch(r"tick \S+: (\d+) aggregates seen on NATS, showing (\d+)", lines[i])
        assert m, lines[i]
        seen, shown = map(int, m.groups())
        assert shown == min(SHOW, seen) and seen > 0
        block = lines[i + 1:i + 1 + shown]
        keys = []
        for line in block:
            a = AGGREGATE.fullmatch(line)
            assert a, line
            keys.append((a["device"], a["sensor"]))
            start, end = (_seconds(a[t]) for t in ("start", "end"))
            assert (end - start) % 86400 == 2          # --window 2s
            count = int(a["count"])
            low, mean, high = (float(a[k]) for k in ("min", "mean", "max"))
            assert count > 0 and low <= mean <= high
            # the demo shows p50, p90, p99 by default: ordered, and within alpha of the range
            p50, p90, p99 = (float(a[k]) for k in ("p50", "p90", "p99"))
            slack = 0.01 * max(abs(low), abs(high)) + 1e-3
            assert low - slack <= p50 <= p90 <= p99 <= high + slack, line
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert sum(line.startswith("aggregate ") for line in lines) == \
        sum(min(SHOW, int(lines[i].split()[2])) for i in ticks)
    summary = lines[-1]
    m = re.search(r"received (\d+), readings (\d+), aggregates (\d+), published (\d+), "
                  r"seen by the subscriber (\d+)", summary)
    assert m, summary
    received, readings, aggregates, published, seen = map(int, m.groups())
    assert received > 5000 and readings > 0.9 * received
    assert aggregates > 0 and published == aggregates and seen == published


def _agg(device: str, sensor: str, end: float, count: int = 3) -> dict:
    return {"device": device, "sensor": sensor, "unit": "C", "window_start": end - 2.0,
            "window_end": end, "count": count, "sum": 3.0 * count, "mean": 3.0, "min": 1.0,
            "max": 5.0, "stddev": 1.5, "first": 1.0, "last": 5.0}


def test_plain_ticks_are_printed_once_settled_and_bounded():
    from telemetry_cy.tools.demo import TickLines

    lines = TickLines(show=2)
    latest = {("d1", "t"): _agg("d1", "t", 100.0)}
    assert lines.lines({}) == []
    assert lines.lines(latest) == []                  # first look: the batch may be arriving
    latest[("d0", "t")] = _agg("d0", "t", 100.0)
    assert lines.lines(latest) == []                  # it was: one more came
    latest[("d2", "t")] = _agg("d2", "t", 98.0)       # an older tick's key does not count
    out = lines.lines(latest)
    assert out[0].endswith(": 2 aggregates seen on NATS, showing 2")
    assert [AGGREGATE.fullmatch(line)["device"] for line in out[1:]] == ["d0", "d1"]
    assert lines.lines(latest) == []                  # printed once
    for d in ("d0", "d1", "d2"):
        latest[(d, "t")] = _agg(d, "t", 101.0, count=7)
    assert lines.lines(latest) == []
    out = lines.lines(latest)
    assert out[0].endswith(": 3 aggregates seen on NATS, showing 2") and len(out) == 3
    assert all(AGGREGATE.fullmatch(line)["count"] == "7" for line in out[1:])


def test_event_time_fleet_buffers_flushes_and_skews():
    """The event-time fleet: every reading has `t`; the buffering devices hold their readings
    while their uplink is down and flush them, oldest first, when it is back; the skewed device
    runs ten minutes ahead. Without event time the fleet's bytes do not change."""
    import cbor2

    from telemetry_cy.tools import fleet_sim
    plain = fleet_sim.Fleet(devices=10, seed=4).messages(1.7e9, 200)
    assert plain == fleet_sim.Fleet(devices=10, seed=4, buffering=2, skewed=1).messages(1.7e9,
                                                                                          200)
    fleet = fleet_sim.Fleet(devices=10, seed=4, event_time=True, buffering=2, skewed=1,
                            malformed_share=0.0)
    assert len(fleet.buffering) == 2 and len(fleet.skewed) == 1
    start = 1.7e9 - 1.7e9 % fleet_sim.BUFFER_EVERY_S  # the uplink goes down
    held_t, flushed = [], []
    for k in range(30):
        now = start + k * 0.5
        for _topic, p in fleet.messages(now, 40):
            r = cbor2.loads(p)
            assert set(r) >= {"d", "s", "v", "t"}
            if r["d"] in fleet.skewed:
                assert r["t"] == now + fleet_sim.SKEW_S
            elif r["d"] in fleet.buffering:
                (held_t if now < start + fleet_sim.BUFFER_S else flushed).append((r["t"], now))
            else:
                assert r["t"] == now
    assert not held_t  # nothing of theirs got through while the uplink was down
    late = [t for t, at in flushed if at - t >= fleet_sim.BUFFER_S - 1.0]
    assert late and [t for t, _ in flushed[:len(late)]] == sorted(t for t, _ in flushed[:len(late)])


@needs_brokers
def test_demo_event_time_counts_the_skewed_clock():
    summary = run_demo(6, 1000, "--time", "event", "--allowed-lateness", "3s", "--plain")[-1]
    m = re.search(r"aggregates (\d+), published (\d+).*drops: .*future=(\d+).*event time: "
                  r"watermark \S+, late published (\d+)", summary)
    assert m, summary
    aggregates, published, future, _late = map(int, m.groups())
    assert aggregates > 0 and published == aggregates and future > 0
