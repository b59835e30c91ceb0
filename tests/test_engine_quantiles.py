"""Quantiles in the engine (docs/windows.md, "Quantiles"): random streams through both engine
twins and the plain model (tests/support/model.py), whose exact rank quantiles hold every
reported p50/p90/p99 to the proven bound

    x_lo - alpha|x_lo| <= reported <= x_hi + alpha|x_hi|,

x_lo and x_hi the window's sorted values of ranks floor(q(n-1)) and ceil(q(n-1)) (|x| < 1e-9 as
0). The compiled engine and the twin must agree bit for bit; with quantiles off the fields are
absent and the state is what it was without them."""

from __future__ import annotations

import math
import random
import struct

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.model import Model, close_enough, rank_quantile, rank_quantiles
from telemetry_cy.engine import _engine_py
from telemetry_cy.engine.rules import MAX_QUANTILES, quantile_name
from telemetry_cy.engine.sketch_py import MAX_COUNT

QS = (0.5, 0.9, 0.99, 0.999)
#: the fields of QS: p50, p90, p99, p99.9
QUANTILE_FIELDS = [(quantile_name(q), q) for q in QS]
NAMES = [name for name, _ in QUANTILE_FIELDS]
#: q the property test draws from, besides arbitrary ones
Q_POOL = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999)
ALPHAS = (0.005, 0.01, 0.02, 0.05)


# ---- streams: each family keeps the values of one sign within 1,000x of each other ---------

def family_values(family: str, base: float, rnd: random.Random, n: int) -> list[float]:
    def lognormal() -> float:
        return base * min(max(rnd.lognormvariate(0.0, 1.5), 1 / 30), 30.0)

    make = {
        "uniform": lambda: base * rnd.uniform(1.0, 2.0),
        "sensor": lambda: base * rnd.uniform(0.8, 1.2),
        "lognormal": lognormal,
        "bimodal": lambda: base * rnd.choice((1.0, 500.0)) * rnd.uniform(0.95, 1.05),
        "heavy": lambda: base * min(rnd.paretovariate(1.2), 1000.0),
        "negative": lambda: -lognormal(),
        "mixed": lambda: rnd.choice((-1.0, 1.0)) * lognormal(),
        "with_zero": lambda: rnd.choice((0.0, -0.0, lognormal(), -lognormal())),
        "constant": lambda: base,
        # below 1e-9 counts as zero; the rest within 1,000x of 1e-9
        "tiny": lambda: rnd.choice((rnd.uniform(0.0, 1e-9), rnd.uniform(1e-9, 1e-6),
                                    -rnd.uniform(0.0, 1e-9))),
    }[family]
    return [make() for _ in range(n)]


FAMILIES = ("uniform", "sensor", "lognormal", "bimodal", "heavy", "negative", "mixed",
            "with_zero", "constant", "tiny")
# bases up to 1e150: the model's exact sums and variances stay finite (1e300: a test below)
BASES = (1e-6, 1e-3, 0.37, 1.0, 21.5, 1e4, 3.3e9, 1e50, 1e150)


@st.composite
def scenarios(draw):
    emit_every = draw(st.sampled_from([1.0, 5.0]))
    panes = draw(st.integers(1, 4))
    window = emit_every * panes
    config = dict(window=window, emit_every=emit_every, key_ttl=window * 2,
                  quantiles=draw(st.sets(st.sampled_from(Q_POOL)
                                         | st.floats(1e-6, 1 - 1e-6), min_size=1,
                                         max_size=MAX_QUANTILES).map(sorted)),
                  quantile_accuracy=draw(st.sampled_from(ALPHAS)))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    bases = {key: draw(st.sampled_from(BASES)) for key in ("a", "b")}
    families = {key: draw(st.sampled_from(FAMILIES)) for key in ("a", "b")}
    t = 1_700_000_000.0
    events = []
    for _ in range(draw(st.integers(1, 25))):
        t += draw(st.sampled_from([0.0, 0.3 * emit_every, emit_every, 3 * window]))
        if draw(st.integers(0, 4)) == 0:
            events.append(("tick", t))
            continue
        key = draw(st.sampled_from(["a", "b"]))
        values = family_values(families[key], bases[key], rnd, draw(st.integers(1, 30)))
        events.append(("push", t, key, values))
    return config, events


def run(engine_cls, config, events):
    eng = engine_cls(**config)
    out = []
    for event in events:
        if event[0] == "tick":
            out += [a.as_dict() for a in eng.tick(event[1])]
        else:
            _, t, key, values = event
            # through the decoder: the compiled engine's hot path (prefetch pipeline included)
            eng.push_many([cbor2.dumps({"d": key, "s": "x", "v": v}) for v in values], t)
    out += [a.as_dict() for a in eng.tick(events[-1][1] + 10 * config["window"])]
    return out, eng.stats()


def run_model(config, events):
    model = Model(**config)
    out = []
    for event in events:
        if event[0] == "tick":
            out += model.tick(event[1])
        else:
            _, t, key, values = event
            for v in values:
                model.offer(key, "x", v, t)
    out += model.tick(events[-1][1] + 10 * config["window"])
    return out


def bits(aggs: list[dict]) -> list[dict]:
    """Aggregates with every float as its bit pattern: equality is bit-identity."""
    return [{k: struct.pack("<d", v) if isinstance(v, float) else v for k, v in a.items()}
            for a in aggs]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_window_meets_the_bound_and_the_twins_agree(compiled_backend, pure_backend,
                                                          scenario):
    config, events = scenario
    compiled, c_stats = run(compiled_backend.Engine, config, events)
    pure, p_stats = run(pure_backend.Engine, config, events)
    assert bits(compiled) == bits(pure)
    assert c_stats["drops"] == p_stats["drops"]
    want = run_model(config, events)
    assert len(compiled) == len(want)
    for got, exp in zip(compiled, want):
        assert close_enough(got, exp, exp["magnitude"]) == [], (got, exp)
        assert [k for k in got if k.startswith("p")] == [quantile_name(q)
                                                          for q in config["quantiles"]]


# ---- the limits of the range ---------------------------------------------------------------------

@pytest.mark.parametrize("alpha", ALPHAS)
def test_the_bound_holds_at_the_top_of_the_double_range(backend, alpha):
    """Magnitudes up to DBL_MAX (sums overflow to inf there; quantiles do not)."""
    rnd = random.Random(7)
    eng = backend.Engine(window=10.0, emit_every=5.0, quantiles=QS, quantile_accuracy=alpha)
    values = [rnd.choice((-1.0, 1.0)) * rnd.uniform(1.8e305, 1.7976931348623157e308)
              for _ in range(400)] + [1.7976931348623157e308, -1.7976931348623157e308]
    for i, v in enumerate(values):
        eng.push_reading("d", "s", v, 100.0 + i / 100)
    agg = [a for a in eng.tick(200.0) if a.count == len(values)][0]
    for name, q in QUANTILE_FIELDS:
        assert rank_quantile(values, q).admits(getattr(agg, name), alpha), name


def test_a_span_beyond_the_store_collapses_the_lowest_values_only(compiled_backend, pure_backend):
    """Positive values from 1e-8 to 1e290 at alpha = 0.05 exceed the 1,024 buckets of a store:
    the lowest buckets fold into the lowest kept one. Upper quantiles keep the bound, every
    quantile keeps its lower bound, and the twins still agree."""
    rnd = random.Random(3)
    values = [10.0 ** rnd.uniform(-8, 290) for _ in range(2000)] + [1e-8] * 1000
    out = []
    for b in (compiled_backend, pure_backend):
        eng = b.Engine(window=5.0, emit_every=5.0, quantiles=QS, quantile_accuracy=0.05)
        eng.push_many([cbor2.dumps({"d": "d", "s": "s", "v": v}) for v in values], 10.0)
        (agg,) = eng.tick(20.0)
        out.append(agg.as_dict())
    assert bits([out[0]]) == bits([out[1]])
    agg = out[0]
    for name, q in QUANTILE_FIELDS:
        bounds = rank_quantile(values, q)
        assert agg[name] >= bounds.lo * (1 - 0.05), name
    assert rank_quantile(values, 0.99).admits(agg["p99"], 0.05)
    assert rank_quantile(values, 0.9).admits(agg["p90"], 0.05)
    # a third of the values are 1e-8, folded far up: the median is reported too high
    assert agg["p50"] > rank_quantile(values, 0.5).hi * 1.05


# ---- rate and memory -----------------------------------------------------------------------------

def test_ten_thousand_readings_per_second_on_one_key_flat_memory(compiled_backend):
    """Sensor-like data (within +-20 % of a slowly moving level) at 10,000 readings/s on one key:
    the bound on every window, and state that stops growing once the window is full."""
    eng = compiled_backend.Engine(window=60.0, emit_every=5.0, quantiles=QS)
    rnd = random.Random(11)
    t0 = 1_700_000_000.0
    states = []
    # the oracle's readings, one list a second (all of a second share its ts), each sorted: the
    # window's sort then merges 60 runs, and the list of 600,000 is sorted once a tick, not once
    # a quantile
    seconds: list[tuple[float, list[float]]] = []
    for second in range(150):
        level = 20.0 * (1.0 + 0.001 * second)
        vals = [level * rnd.uniform(0.8, 1.2) for _ in range(10_000)]
        ts = t0 + second
        eng.push_many([cbor2.dumps({"d": "d", "s": "t", "v": v}) for v in vals], ts)
        seconds.append((ts, sorted(vals)))
        if second % 5 == 4:
            (agg,) = eng.tick(ts + 1.0)
            seconds = [(t, vs) for t, vs in seconds if t >= agg.window_start]
            window = [v for t, vs in seconds if t < agg.window_end for v in vs]
            assert agg.count == len(window)
            bounds = rank_quantiles(window, QS)
            for (name, _), b in zip(QUANTILE_FIELDS, bounds):
                assert b.admits(getattr(agg, name), 0.01), name
            states.append(eng.stats()["state_bytes"])
    # full window from 60 s on: flat from there
    assert len(set(states[13:])) == 1, states


def test_quantiles_off_leave_no_trace(backend):
    """Off (the default, None or empty): no p50/p90/p99 in the aggregates and the same state as
    an engine that has never heard of quantiles; on, the same statistics plus the quantiles."""
    engines = [backend.Engine(), backend.Engine(quantiles=None), backend.Engine(quantiles=[]),
               backend.Engine(quantiles=[0.9])]
    assert [e.quantiles for e in engines] == [(), (), (), (0.9,)]
    outs = []
    for eng in engines:
        for i in range(300):
            eng.push_reading(f"d{i % 7}", "t", 20.0 + i % 13, 1000.0 + i * 0.1)
        outs.append([a.as_dict() for a in eng.tick(1100.0)])
    assert outs[0] == outs[1] == outs[2]
    assert all(not any(k.startswith("p") for k in a) for a in outs[0])
    assert [{k: v for k, v in a.items() if k != "p90"} for a in outs[3]] == outs[0]
    assert all(isinstance(a["p90"], float) for a in outs[3])
    states = [e.stats()["state_bytes"] for e in engines]
    assert states[0] == states[1] == states[2]
    if backend.name == "compiled":
        assert states[3] > states[0]


def test_no_key_no_memory(compiled_backend):
    assert (compiled_backend.Engine(quantiles=QS).stats()["state_bytes"]
            == compiled_backend.Engine().stats()["state_bytes"])


# ---- settings and drops --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, words", [
    (dict(quantiles=[0.0]), ValueError, "a quantile must be between 0 and 1 (exclusive), got 0.0"),
    (dict(quantiles=[0.5, 1.0]), ValueError, "between 0 and 1 (exclusive), got 1.0"),
    (dict(quantiles=[math.nan]), ValueError, "between 0 and 1 (exclusive), got nan"),
    (dict(quantiles=[i / 10 for i in range(1, 10)]), ValueError, "at most 8 quantiles, got 9"),
    (dict(quantiles="0.5"), TypeError, "quantiles must be a sequence"),
    (dict(quantiles=[True]), TypeError, "a quantile must be a number"),
    (dict(quantiles=[0.5], quantile_accuracy=0.001), ValueError,
     "quantile_accuracy must be between 0.005 and 0.05"),
    (dict(quantile_accuracy=math.nan), ValueError, "quantile_accuracy must be between"),
    (dict(quantile_accuracy="0.01"), TypeError, "quantile_accuracy must be a number"),
])
def test_bad_settings_are_refused_alike(backend, kwargs, error, words):
    with pytest.raises(error, match=None) as info:
        backend.Engine(**kwargs)
    assert words in str(info.value)


def test_a_full_pane_sketch_is_a_counted_drop():
    """A pane's sketch holds at most 2**32 - 1 values: one more is a `sketch_full` drop, never a
    wrapped count. (Reaching it for real takes 2**32 readings; the twin's sketch is filled by
    hand, the compiled engine follows the same rule in tc_key_qs_add.)"""
    eng = _engine_py.Engine(window=10.0, emit_every=5.0, quantiles=QS)
    eng.push_reading("d", "s", 1.0, 100.0)
    key = eng._keys[("d", "s")]
    key.sketches[20 % 2]._n = MAX_COUNT
    eng.push_reading("d", "s", 2.0, 101.0)
    stats = eng.stats()
    assert stats["drops"]["sketch_full"] == 1 and stats["readings"] == 1
    assert stats["offenders"]["drops"] == [("d/s", 1, 0)]
    agg = eng.tick(110.0)[0]
    assert agg.count == 1 and agg.max == 1.0


def test_record_accounting_returns_to_zero(compiled_backend):
    """Every growth of a record (new bucket ranges, a longer unit moving the sketch block) is
    counted in state_bytes and given back at eviction: after every key is evicted, the engine
    with quantiles holds exactly what the one without does (the table's arrays)."""
    rnd = random.Random(5)
    engines = [compiled_backend.Engine(window=10.0, emit_every=5.0, key_ttl=10.0),
               compiled_backend.Engine(window=10.0, emit_every=5.0, key_ttl=10.0, quantiles=QS)]
    for eng in engines:
        for i in range(3000):
            unit = rnd.choice([None, "C", "degrees Celsius, calibrated"])
            eng.push_reading(f"d{i % 50}", "t", rnd.choice((-1, 1)) * 10 ** rnd.uniform(-12, 12),
                             100.0 + i / 100, unit)
        eng.tick(200.0)
        assert eng.stats()["live_keys"] == 0
    assert engines[0].stats()["state_bytes"] == engines[1].stats()["state_bytes"]
    # and with keys live, the bucket ranges show
    for eng in engines:
        eng.push_reading("d", "t", 1.0, 300.0)
        eng.push_reading("d", "t", 1e6, 300.5)
    assert engines[1].stats()["state_bytes"] > engines[0].stats()["state_bytes"]


# ---- the fields of any q -------------------------------------------------------------------------

@pytest.mark.parametrize("q, name", [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9"),
                                     (0.05, "p5"), (0.25, "p25"), (0.9999, "p99.99"),
                                     (1e-05, "p0.001"), (0.123, "p12.3")])
def test_a_quantile_field_is_p_and_the_percentage(q, name):
    assert quantile_name(q) == name


def test_any_quantile_is_a_field_by_name_in_order(backend):
    """Up to eight q, any order and repeats: the aggregate carries them ascending and distinct,
    by name in as_dict() and as attributes (a.p99, getattr(a, "p99.9")), bit-identical in the
    twins (the property test above covers their bounds)."""
    eng = backend.Engine(window=10.0, emit_every=5.0, quantiles=[0.999, 0.05, 0.5, 0.05, 0.75])
    assert eng.quantiles == (0.05, 0.5, 0.75, 0.999)
    assert eng.quantile_names == ("p5", "p50", "p75", "p99.9")
    values = [float(v) for v in range(1, 1001)]
    for i, v in enumerate(values):
        eng.push_reading("d", "s", v, 100.0 + i / 1000)
    agg = eng.tick(120.0)[0]
    assert agg.count == len(values)
    assert list(agg.as_dict())[-4:] == ["p5", "p50", "p75", "p99.9"]
    assert agg.quantile_names == eng.quantile_names
    for name, q in zip(eng.quantile_names, eng.quantiles):
        assert getattr(agg, name) == agg.as_dict()[name]
        assert rank_quantile(values, q).admits(getattr(agg, name), eng.quantile_accuracy)
    assert agg.p50 == agg.quantile_values[1]
    with pytest.raises(AttributeError, match="no quantile 'p90'"):
        agg.p90  # noqa: B018
    plain = backend.Aggregate(*[agg.as_dict()[n] for n in list(agg.as_dict())[:13]])
    assert plain.quantile_names == plain.quantile_values == () and "p50" not in plain.as_dict()
