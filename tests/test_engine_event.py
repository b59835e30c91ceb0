"""Event time: random streams through both engine twins and the plain event-time model.

The model (tests/support/model.py, ``EventModel``) keeps every reading with its own `t` and
recomputes each window from scratch; the engines keep panes, a watermark and open-pane slots.
Streams have bounded disorder (every reading within the allowed lateness: all land in their
windows, none is late), unbounded disorder (late readings: counted, routed, never aggregated),
readings without `t`, clocks far in the future, idle gaps closed by tick(now), the key limit and
TTL eviction. Counters must balance: every reading offered is in an aggregate, still open, late,
or a counted drop.
"""

from __future__ import annotations

import math
import random

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.model import EventModel, close_enough

DEVICES = ["a", "b", "gw-01", "ü"]
SENSORS = ["t", "rh"]

_props = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _order(agg: dict):
    return (agg["window_end"], agg["device"], agg["sensor"])


def _config(rng: random.Random, **over) -> dict:
    emit_every = rng.choice([1.0, 2.5, 0.5])
    panes = rng.randint(1, 4)
    config = dict(window=emit_every * panes, emit_every=emit_every,
                  allowed_lateness=emit_every * rng.choice([0, 0.5, 1, 2, 3.5]),
                  idle_timeout=rng.choice([3.0, 30.0]), max_future=rng.choice([0.0, 5.0, 60.0]),
                  max_keys=rng.choice([3, 100]))
    config["key_ttl"] = config["window"] * rng.choice([1.0, 4.0]) + 10.0
    if rng.random() < 0.5:
        # quantiles: their pane sketches follow the open panes too (tc_window_qs.h)
        config["quantiles"] = sorted(rng.sample([0.5, 0.9, 0.99], rng.randint(1, 3)))
        config["quantile_accuracy"] = rng.choice([0.005, 0.01, 0.05])
    config.update(over)
    return config


def _stream(rng: random.Random, disorder: float, n_steps: int = 60, unit_of=None):
    """Events: ("push", arrival, [reading...]) where a reading is (d, s, v, unit, t, n), and
    ("tick", now). Event times trail the arrival clock by up to `disorder` seconds (a few
    readings lead it, by up to 2 s, or by 10 minutes); some have no `t`, some tie."""
    now = 1_700_000_000.0 + rng.random()
    events = []
    for _ in range(n_steps):
        now += rng.choice([0.0, 0.05, 0.3, 1.0, 2.0])
        if rng.random() < 0.05:
            now += rng.choice([6.0, 40.0])  # an idle stretch
        if rng.random() < 0.2:
            events.append(("tick", now))
            continue
        batch = []
        for _ in range(rng.randint(1, 5)):
            d, s = rng.choice(DEVICES), rng.choice(SENSORS)
            r = rng.random()
            if r < 0.06:
                t = None
            elif r < 0.09:
                t = now + 600.0  # a clock ten minutes ahead
            elif r < 0.12:
                t = now + rng.uniform(0.0, 2.0)
            else:
                t = now - rng.uniform(0.0, disorder)
                if rng.random() < 0.2:
                    t = math.floor(t * 4) / 4  # ties on a coarse grid
            v = rng.choice([rng.uniform(-50, 50), float(rng.randint(-5, 5)), 1e-300, -0.0])
            unit = unit_of(d, s) if unit_of else rng.choice([None, "C", "K"])
            n = rng.randrange(20) if rng.random() < 0.2 else None
            batch.append((d, s, v, unit, t, n))
        events.append(("push", now, batch))
    return events


def _payloads(batch, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(batch):
        k = rng.choice([1, 1, 1, 2, 3])
        maps = []
        for d, s, v, unit, t, n in batch[i:i + k]:
            m = {"d": d, "s": s, "v": v}
            if unit is not None:
                m["u"] = unit
            if t is not None:
                m["t"] = cbor2.CBORTag(1, t) if rng.random() < 0.2 else t
            if n is not None:
                m["n"] = n
            maps.append(m)
        out.append(cbor2.dumps(maps[0] if len(maps) == 1 and rng.random() < 0.7 else maps))
        i += k
    return out


def _run_engine(engine_cls, config, events, seed, via_payloads=True):
    rng = random.Random(seed)
    eng = engine_cls(time="event", late_capacity=10_000, **config)
    out, late, opens = [], [], []
    for event in events:
        if event[0] == "tick":
            out.append(sorted((a.as_dict() for a in eng.tick(event[1])), key=_order))
        elif via_payloads:
            eng.push_many(_payloads(event[2], rng), event[1])
        else:
            for d, s, v, unit, t, n in event[2]:
                eng.push_reading(d, s, v, event[1], unit=unit, seq=n, t=t)
        late.extend(tuple(x) for x in eng.take_late())
        opens.append(eng.open_readings())
    return eng, out, late, opens


def _run_model(config, events):
    model = EventModel(**{k: v for k, v in config.items()})
    out, opens = [], []
    for event in events:
        if event[0] == "tick":
            out.append(sorted(model.tick(event[1]), key=_order))
        else:
            for d, s, v, unit, t, n in event[2]:
                model.offer_event(d, s, v, event[1], unit, t, n)
        opens.append(model.open_readings())
    return model, out, opens


def _check_against_model(backend, config, events, seed, via_payloads=True):
    model, want, want_open = _run_model(config, events)
    eng, got, late, opens = _run_engine(backend.Engine, config, events, seed, via_payloads)
    assert [len(tick) for tick in got] == [len(tick) for tick in want]
    for got_tick, want_tick in zip(got, want):
        for g, w in zip(got_tick, want_tick):
            assert close_enough(g, w, w["magnitude"]) == [], (g, w)
    stats = eng.stats()
    drops = stats["drops"]
    assert stats["readings"] == model.accepted
    for reason in ("late", "future", "key_limit"):
        assert drops[reason] == model.drops[reason], reason
    assert stats["event_time"]["no_event_time"] == model.no_event_time
    assert stats["event_time"]["late_unrouted"] == 0
    assert late == model.late  # every late reading routed, in order, with its arrival
    assert opens == want_open
    # the balance: every reading offered is in an aggregate, still open, late or dropped
    offered = sum(len(e[2]) for e in events if e[0] == "push")
    in_aggregates = stats["readings"] - eng.open_readings()
    assert offered == (in_aggregates + eng.open_readings() + drops["late"] + drops["future"]
                       + drops["key_limit"] + drops["schema_mismatch"] + drops["non_finite"])
    assert drops["schema_mismatch"] == drops["non_finite"] == 0
    return eng, model


@_props
@given(st.integers(0, 2**32 - 1))
def test_bounded_disorder_lands_exactly(backend, seed):
    """Every reading trails the newest event time by less than the lateness: none is late and
    every window is exactly the recomputed one."""
    rng = random.Random(seed)
    config = _config(rng, max_future=1e9, idle_timeout=1e6, max_keys=100)
    config["allowed_lateness"] = max(config["allowed_lateness"], config["emit_every"])
    disorder = config["allowed_lateness"] * 0.9
    events = [e for e in _stream(rng, disorder) if e[0] == "tick" or True]
    # keep the newest-minus-lateness bound: no reading ahead of the arrival clock
    events = [(e[0], e[1], [r for r in e[2] if r[4] is None or r[4] <= e[1]])
              if e[0] == "push" else e for e in events]
    eng, model = _check_against_model(backend, config, events, seed)
    assert eng.stats()["drops"]["late"] == 0


@_props
@given(st.integers(0, 2**32 - 1))
def test_unbounded_disorder_routes_late_readings(backend, seed):
    rng = random.Random(seed)
    config = _config(rng)
    _check_against_model(backend, config, _stream(rng, disorder=rng.choice([3.0, 12.0])), seed)


@_props
@given(st.integers(0, 2**32 - 1))
def test_push_reading_matches_the_model(backend, seed):
    rng = random.Random(seed)
    config = _config(rng)
    _check_against_model(backend, config, _stream(rng, disorder=8.0), seed, via_payloads=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_twins_agree_bit_for_bit(compiled_backend, pure_backend, seed):
    """Same aggregates to the bit, same counters, same routed late readings, in batches long
    enough to fill the compiled engine's prefetch pipeline."""
    rng = random.Random(seed)
    config = _config(rng)
    events = _stream(rng, disorder=6.0, n_steps=40)
    # long batches: merge consecutive pushes
    merged: list = []
    for e in events:
        if e[0] == "push" and merged and merged[-1][0] == "push" and len(merged[-1][2]) < 60:
            merged[-1] = ("push", e[1], merged[-1][2] + e[2])
        else:
            merged.append(e)
    c, c_out, c_late, c_open = _run_engine(compiled_backend.Engine, config, merged, seed)
    p, p_out, p_late, p_open = _run_engine(pure_backend.Engine, config, merged, seed)
    assert c_out == p_out
    assert c_late == p_late
    assert c_open == p_open
    cs, ps = c.stats(), p.stats()
    cs.pop("state_bytes"), ps.pop("state_bytes")
    assert cs == ps


def test_late_capacity_bounds_the_routed_readings(backend):
    eng = backend.Engine(window=2.0, emit_every=1.0, time="event", late_capacity=2)
    eng.push_reading("a", "x", 1.0, 100.0, t=100.0)
    eng.push_reading("a", "x", 2.0, 100.5, t=103.0)   # closes the windows up to 103
    for i in range(5):
        eng.push_reading("a", "x", float(i), 101.0, t=100.5)
    late = eng.take_late()
    assert [x.value for x in late] == [0.0, 1.0]
    assert late[0]._asdict() == dict(device="a", sensor="x", value=0.0, unit=None, t=100.5,
                                     n=None, arrival=101.0)
    stats = eng.stats()
    assert stats["drops"]["late"] == 5 and stats["event_time"]["late_unrouted"] == 3
    assert stats["offenders"]["late"] == [("a/x", 5, 0)]
    assert eng.take_late() == []


def test_without_routing_late_readings_are_counted_only(backend):
    eng = backend.Engine(window=2.0, emit_every=1.0, time="event")
    eng.push_many([cbor2.dumps({"d": "a", "s": "x", "v": 1.0, "t": 100.0}),
                   cbor2.dumps({"d": "a", "s": "x", "v": 1.0, "t": 110.0}),
                   cbor2.dumps({"d": "a", "s": "x", "v": 1.0, "t": 100.0})], 105.0)
    assert eng.take_late() == []
    assert eng.stats()["drops"]["late"] == 1


def test_future_readings_move_nothing(backend):
    eng = backend.Engine(window=3.0, emit_every=1.0, time="event", allowed_lateness=2.0)
    eng.push_reading("a", "x", 1.0, 100.0, t=100.0)
    eng.push_reading("bad", "clock", 9.0, 100.0, t=100.0 + 600)
    eng.push_reading("a", "x", 2.0, 100.0, t=99.5)
    assert eng.stats()["drops"]["future"] == 1
    assert eng.stats()["event_time"]["watermark"] == 98.0
    assert eng.tick(100.5) == []  # nothing closed: the watermark did not move
    assert eng.open_readings() == 2


def test_idle_clock_closes_windows(backend):
    """After readings stop, a window is emitted at most allowed_lateness + idle_timeout +
    emit_every of wall time after its end (ticks every quarter second here), and not before
    the stream has been idle for idle_timeout."""
    lateness, idle = 2.0, 5.0
    eng = backend.Engine(window=2.0, emit_every=1.0, time="event", allowed_lateness=lateness,
                         idle_timeout=idle)
    eng.push_reading("a", "x", 1.0, 1000.2, t=1000.2)
    emitted = {}
    for k in range(80):
        now = 1000.2 + k * 0.25
        for a in eng.tick(now):
            emitted[a.window_end] = (now, a.count)
    assert sorted(emitted) == [1001.0, 1002.0]
    for end, (now, count) in emitted.items():
        assert count == 1
        assert 1000.2 + idle <= now <= end + lateness + idle + 1.0
    assert eng.open_readings() == 0


def test_replay_of_old_data_closes_by_event_time(backend):
    """Old data replayed fast: windows close as the replayed times advance, not by the wall
    clock; once the replay stops, the idle clock closes the rest."""
    eng = backend.Engine(window=2.0, emit_every=1.0, time="event", allowed_lateness=1.0,
                         idle_timeout=5.0)
    wall = 1_800_000_000.0
    for i in range(100):
        eng.push_reading("a", "x", float(i), wall, t=1_700_000_000.0 + i * 0.1)
    got = eng.tick(wall)
    assert [a.window_end for a in got] == [1_700_000_000.0 + k for k in range(1, 9)]
    assert sum(a.count for a in got if a.window_end % 2 == 0) == 80  # disjoint halves
    got = eng.tick(wall + 5.0 + 3.0)
    assert [a.window_end for a in got] == [1_700_000_009.0, 1_700_000_010.0, 1_700_000_011.0]
    assert eng.open_readings() == 0


def test_no_event_time_uses_arrival(backend):
    eng = backend.Engine(window=1.0, emit_every=1.0, time="event")
    eng.push(cbor2.dumps([{"d": "a", "s": "x", "v": 1.0}, {"d": "a", "s": "x", "v": 2.0,
                                                           "t": 10.5}]), 10.25)
    assert eng.stats()["event_time"]["no_event_time"] == 1
    got = eng.tick(20.0 + 30.0)
    assert [(a.window_end, a.count, a.first, a.last) for a in got] == [(11.0, 2, 1.0, 2.0)]


def test_arrival_mode_ignores_t(backend):
    eng = backend.Engine(window=1.0, emit_every=1.0)
    eng.push(cbor2.dumps({"d": "a", "s": "x", "v": 1.0, "t": 5.0}), 10.25)
    assert [(a.window_end, a.count) for a in eng.tick(11.0)] == [(11.0, 1)]
    eng.push(cbor2.dumps({"d": "a", "s": "x", "v": 1.0, "t": "five"}), 11.5)
    assert eng.stats()["drops"]["schema_mismatch"] == 1
    assert eng.stats()["event_time"] == dict(no_event_time=0, late_unrouted=0, watermark=None)


@pytest.mark.parametrize("kw,error", [
    (dict(time="wall"), ValueError),
    (dict(allowed_lateness=-1.0), ValueError),
    (dict(idle_timeout=0.0), ValueError),
    (dict(max_future=math.inf), ValueError),
    (dict(allowed_lateness="1"), TypeError),
    (dict(late_capacity=-1), ValueError),
    (dict(allowed_lateness=5000.0), ValueError),
])
def test_bad_settings(backend, kw, error):
    with pytest.raises(error):
        backend.Engine(window=2.0, emit_every=1.0, **kw)


def test_memory_per_key_without_lateness_is_the_arrival_record(compiled_backend):
    """Zero allowed lateness adds nothing to a key's record; each emit interval of lateness
    adds one pane and one open-pane slot (docs/windows.md)."""
    def per_key(**kw):
        eng = compiled_backend.Engine(window=60.0, emit_every=5.0, **kw)
        before = eng.stats()["state_bytes"]
        for i in range(1000):
            eng.push_reading(f"dev-{i:04d}", "temperature", 1.0, 100.0, t=100.0)
        return (eng.stats()["state_bytes"] - before) / 1000
    arrival = per_key()
    assert per_key(time="event") == arrival
    assert per_key(time="event", allowed_lateness=5.0) == arrival + 48 + 48
