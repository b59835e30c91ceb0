"""The reconnect policy (`Backoff`) and the up/down clock (`ConnectionClock`) shared by the MQTT
source, the NATS emitter and the health check: checked against plain-Python models, with the
clock and the random draw injected (no sleeps, nothing timed)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_cy.connection import Backoff, ConnectionClock, ConnectionState


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def draws(log: list):
    """An rng that records each (low, high) it is asked for and answers a point chosen by the
    test: 0 = low, 1 = high."""
    where = {"at": 1.0}

    def uniform(low: float, high: float) -> float:
        log.append((low, high))
        return low + (high - low) * where["at"]
    return uniform, where


# ---- Backoff ------------------------------------------------------------------------------------


def test_backoff_doubles_from_initial_to_the_cap():
    log: list = []
    rng, _ = draws(log)
    b = Backoff(0.1, 1.0, jitter=1.0, rng=rng)
    delays = [b.next_delay() for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert [low for low, _ in log] == [0.0] * 7    # full jitter: each wait drawn from [0, d]


def test_backoff_partial_jitter_keeps_a_floor():
    log: list = []
    rng, where = draws(log)
    where["at"] = 0.0
    b = Backoff(0.25, 5.0, jitter=0.5, rng=rng)
    assert [b.next_delay() for _ in range(3)] == pytest.approx([0.125, 0.25, 0.5])
    assert log == [(0.125, 0.25), (0.25, 0.5), (0.5, 1.0)]   # powers of two: exact


def test_backoff_reset_only_after_a_stable_connection():
    rng, _ = draws([])
    b = Backoff(1.0, 100.0, stable_after=2.0, rng=rng)
    for _ in range(3):
        b.next_delay()
    b.connected_for(1.999)          # died right after connecting: keeps growing
    assert b.next_delay() == 8.0
    b.connected_for(2.0)            # stayed up: starts over
    assert b.next_delay() == 1.0
    b.next_delay()
    b.reset()
    assert b.attempt == 0 and b.ceiling() == 1.0


def test_backoff_a_huge_attempt_count_stays_at_the_cap():
    rng, _ = draws([])
    b = Backoff(0.001, 3.0, rng=rng)
    b.attempt = 10_000              # 2**10000 would overflow a float
    assert b.next_delay() == 3.0


@pytest.mark.parametrize("initial, maximum, jitter", [
    (0, 1, 1.0), (-1, 1, 1.0), (2, 1, 1.0), (0.1, 1, -0.1), (0.1, 1, 1.5)])
def test_backoff_rejects_a_bad_policy_in_its_owners_words(initial, maximum, jitter):
    with pytest.raises(ValueError, match="^backoff_initial, backoff_max: "):
        Backoff(initial, maximum, jitter=jitter, name="backoff_initial, backoff_max")


@settings(max_examples=200, deadline=None)
@given(initial=st.floats(0.001, 10.0), factor=st.floats(1.0, 1000.0), jitter=st.floats(0.0, 1.0),
       stable_after=st.floats(0.0, 5.0), seed=st.integers(0, 2**32 - 1),
       events=st.lists(st.one_of(st.just("fail"), st.floats(0.0, 10.0)), max_size=60))
def test_backoff_matches_a_model(initial, factor, jitter, stable_after, seed, events):
    """Model: k failed attempts since the last stable connection; the next wait lies in
    [(1 - jitter) * d, d] with d = min(maximum, initial * 2**k)."""
    maximum = initial * factor
    b = Backoff(initial, maximum, jitter=jitter, stable_after=stable_after,
                rng=random.Random(seed).uniform)
    k = 0
    for event in events:
        if event == "fail":
            d = min(maximum, initial * 2.0 ** k)
            wait = b.next_delay()
            assert d * (1.0 - jitter) - 1e-9 <= wait <= d + 1e-9
            k += 1
        else:
            b.connected_for(event)
            if event >= stable_after:
                k = 0
        assert b.attempt == k


# ---- ConnectionClock ----------------------------------------------------------------------------


def test_clock_starts_down_and_counts_the_time_before_the_first_connection():
    t = FakeClock()
    c = ConnectionClock(t)
    t.t += 3.0
    s = c.state()
    assert (s.connected, s.ever_connected, s.connects, s.disconnects) == (False, False, 0, 0)
    assert s.down_seconds == 3.0 and s.disconnected_seconds == 3.0 and s.last_error is None


def test_clock_up_down_stop():
    t = FakeClock()
    c = ConnectionClock(t)
    t.t += 1.0
    c.up()
    t.t += 10.0
    s = c.state()
    assert s.connected and s.ever_connected and s.connects == 1
    assert s.down_seconds == 0.0 and s.disconnected_seconds == 1.0
    c.down("reset by peer")
    t.t += 2.0
    s = c.state()
    assert not s.connected and s.disconnects == 1 and s.last_error == "reset by peer"
    assert s.down_seconds == 2.0 and s.disconnected_seconds == 3.0
    c.stop()
    t.t += 50.0                     # stopped: the outage no longer grows
    s = c.state()
    assert s.down_seconds == 0.0 and s.disconnected_seconds == 3.0 and s.disconnects == 1


def test_clock_repeated_up_or_down_counts_once_and_keeps_the_error():
    t = FakeClock()
    c = ConnectionClock(t)
    c.up()
    c.up()
    c.down()
    c.down("refused")               # not connected: an error, but no second disconnect
    c.note_error("timeout")
    s = c.state()
    assert (s.connects, s.disconnects, s.last_error) == (1, 1, "timeout")


def test_clock_not_started_is_no_outage_until_start():
    t = FakeClock()
    c = ConnectionClock(t, started=False)
    t.t += 7.0
    assert c.state().disconnected_seconds == 0.0
    c.start()
    t.t += 1.5
    s = c.state()
    assert s.down_seconds == 1.5 and s.disconnected_seconds == 1.5
    c.start()                       # already timing: the outage keeps its beginning
    assert c.state().down_seconds == 1.5


OPS = st.sampled_from(["up", "down", "stop", "start", "error"])


@settings(max_examples=300, deadline=None)
@given(started=st.booleans(),
       steps=st.lists(st.tuples(st.integers(0, 1000), OPS), max_size=40))
def test_clock_matches_a_model(started, steps):
    """Model: the clock's state rebuilt from the event list by plain arithmetic."""
    t = FakeClock(0.0)
    c = ConnectionClock(t, started=started)
    connected = ever = False
    connects = disconnects = 0
    down_since = 0 if started else None
    down_total = 0
    error = None
    for i, (dt, op) in enumerate(steps):
        t.t += dt                   # whole numbers: sums compare exactly
        if op == "up" and not connected:
            if down_since is not None:
                down_total += t.t - down_since
                down_since = None
            connected = ever = True
            connects += 1
        elif op == "down" and connected:
            connected = False
            disconnects += 1
            down_since = t.t
        elif op == "stop":
            if down_since is not None:
                down_total += t.t - down_since
                down_since = None
            connected = False
        elif op == "start" and not connected and down_since is None:
            down_since = t.t
        elif op == "error":
            error = f"error {i}"
        {"up": c.up, "down": c.down, "stop": c.stop, "start": c.start,
         "error": lambda i=i: c.note_error(f"error {i}")}[op]()
        down = 0 if down_since is None else t.t - down_since
        assert c.state() == ConnectionState(
            connected=connected, ever_connected=ever, connects=connects,
            disconnects=disconnects, down_seconds=down, disconnected_seconds=down_total + down,
            last_error=error)
        assert c.connected == connected and c.ever_connected == ever
