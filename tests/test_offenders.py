"""Top offenders in bounded memory: the space-saving summary (includes/tc_topn.h and its twin
``_engine_py.TopN``) and what the engine feeds it (``stats()["offenders"]``).

The summary's guarantees (Metwally et al.), checked on streams with known true weights: every name
heavier than total / capacity holds a slot, and each slot's count is an upper bound that is off by
at most its error, itself at most total / capacity. The two twins must hold the same slots after
any stream of updates.
"""

from __future__ import annotations

import random

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_cy.engine import rules

CAP = 32


def check_guarantees(summary, truth: dict) -> None:
    """The space-saving guarantees against the true weights (names already cut)."""
    total = sum(truth.values())
    assert summary.total == total
    entries = summary.entries()
    assert len(entries) == min(CAP, len(truth))
    assert sum(count for _name, count, _err in entries) == total   # every update lands somewhere
    held = {name: (count, err) for name, count, err in entries}
    for name, (count, err) in held.items():
        assert count - err <= truth.get(name, 0) <= count, name
        assert err * CAP <= total
    for name, weight in truth.items():
        if weight * CAP > total:
            assert name in held, (name, weight, total)


# ---- the summary on its own --------------------------------------------------------------------

def test_capacity_and_name_budget_agree(compiled_backend, pure_backend):
    compiled, pure = compiled_backend.engine.TopN, pure_backend.engine.TopN
    assert compiled.capacity == pure.capacity == rules.TOPN_CAPACITY == CAP
    assert compiled.name_bytes == pure.name_bytes == rules.TOPN_NAME_BYTES == 96


def test_exact_until_full_then_takeover_of_the_smallest(backend):
    t = backend.engine.TopN()
    for i in range(CAP):
        t.add(f"k{i:02d}".encode(), i + 2)
    t.add(b"k05", 3)
    assert all(err == 0 for _n, _c, err in t.entries())
    t.add(b"new", 1)                     # takes the slot of k00 (count 2, the smallest)
    entries = t.entries()
    assert entries[0] == (b"new", 3, 2)
    t.add(b"newer", 1)                   # k01 (3) and new (3) tie: the lowest slot goes
    assert t.entries()[0] == (b"newer", 4, 3) and t.entries()[1] == (b"k01", 3, 0)
    assert t.top(3) == [("k31", 33, 0), ("k30", 32, 0), ("k29", 31, 0)]


def test_weights_must_be_positive_ints(backend):
    t = backend.engine.TopN()
    with pytest.raises(ValueError):
        t.add(b"x", 0)
    with pytest.raises((ValueError, OverflowError)):
        t.add(b"x", -1)
    with pytest.raises(TypeError):
        t.add("x", 1)
    assert t.total == 0 and t.entries() == []


def test_names_are_cut_at_a_utf8_boundary(backend):
    t = backend.engine.TopN()
    t.add(b"a" * 95 + "ü".encode() + b"tail")          # ü straddles byte 96: cut before it
    t.add(b"b" * 96 + "ü".encode())                     # exactly 96, then ü: cut at 96
    t.add("€".encode() * 40)                            # 3-byte characters: 32 of them fit
    t.add(b"\x80" * 200)                                # not UTF-8: at most 3 bytes back
    t.add_pair(b"d" * 60, b"s" * 60)
    t.add_pair(b"d" * 120, b"s")
    assert [name for name, _c, _e in t.entries()] == [
        b"a" * 95, b"b" * 96, "€".encode() * 32, b"\x80" * 93, b"d" * 60 + b"/" + b"s" * 35,
        b"d" * 96]
    assert ("\ufffd" * 93, 1, 0) in t.top(10)           # shown with U+FFFD for each bad byte


def test_names_sharing_the_budget_are_one_entry(backend):
    t = backend.engine.TopN()
    t.add(b"x" * 96 + b"one")
    t.add(b"x" * 96 + b"two")
    assert t.entries() == [(b"x" * 96, 2, 0)]


names = st.one_of(
    st.sampled_from([b"a", b"b", b"c", b"dev-1/temp", "ü/t".encode(), b"-"]),
    st.binary(min_size=0, max_size=8),
    st.binary(min_size=90, max_size=110),
    st.text(min_size=30, max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(0, 200).map(lambda i: f"k{i}".encode()),
    st.integers(0, 200).map(lambda i: f"k{i}".encode()),    # often: the summary fills up
)
weights = st.one_of(st.integers(1, 3), st.integers(1, 2**20))   # small ones make ties
updates = st.lists(st.one_of(
    st.tuples(st.just("add"), names, weights),
    st.tuples(st.just("pair"), st.tuples(names, names), weights),
), min_size=40, max_size=400)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(updates)
def test_compiled_and_pure_summaries_are_identical(compiled_backend, pure_backend, stream):
    c, p = compiled_backend.engine.TopN(), pure_backend.engine.TopN()
    for i, (op, name, w) in enumerate(stream):
        if op == "add":
            c.add(name, w)
            p.add(name, w)
        else:
            c.add_pair(*name, w)
            p.add_pair(*name, w)
        if i % 50 == 0:
            assert c.entries() == p.entries()
    assert c.entries() == p.entries()
    assert c.total == p.total
    assert c.top() == p.top() and c.top(40) == p.top(40)


@st.composite
def heavy_streams(draw):
    """A few heavy hitters over a long tail of light names, shuffled; weights 1 or random."""
    heavy = draw(st.integers(1, 6))
    light = draw(st.integers(CAP, 400))
    weighted = draw(st.booleans())
    events = []
    for i in range(light):
        events += [(f"light-{i}".encode(), draw(st.integers(1, 5)) if weighted else 1)]
    light_total = sum(w for _n, w in events)
    for h in range(heavy):
        # comfortably above total / CAP whatever the other heavies weigh
        target = light_total // 4 + draw(st.integers(1, 50))
        while target > 0:
            w = min(target, draw(st.integers(1, 20)) if weighted else 1)
            events.append((f"HEAVY-{h}".encode(), w))
            target -= w
    rng = random.Random(draw(st.integers(0, 2**32)))
    rng.shuffle(events)
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heavy_streams())
def test_heavy_hitters_are_always_reported(backend, events):
    truth: dict = {}
    for name, w in events:
        truth[name] = truth.get(name, 0) + w
    t = backend.engine.TopN()
    for name, w in events:
        t.add(name, w)
    check_guarantees(t, truth)
    heavy = {n for n in truth if n.startswith(b"HEAVY")}
    reported = {name.encode() for name, _c, _e in t.top(10)}
    assert heavy <= reported


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 100)), max_size=600))
def test_guarantees_hold_on_any_stream(backend, stream):
    t = backend.engine.TopN()
    truth: dict = {}
    for i, w in stream:
        # a skewed pool: small indices come up far more often
        name = f"n{i * i // 300}".encode()
        t.add(name, w)
        truth[name] = truth.get(name, 0) + w
    check_guarantees(t, truth)


# ---- what the engine reports -------------------------------------------------------------------

def reading(d="dev", s="temp", v=1.0, n=None) -> bytes:
    m = {"d": d, "s": s, "v": v}
    if n is not None:
        m["n"] = n
    return cbor2.dumps(m)


def offenders(eng) -> dict:
    return eng.stats()["offenders"]


def test_stats_shape(backend):
    stats = backend.Engine().stats()
    assert stats["seq"] == {"gaps": 0, "duplicates": 0, "reorders": 0, "restarts": 0}
    assert stats["offenders"] == {"drops": [], "gaps": [], "late": []}


def test_who_is_named_for_what(backend):
    eng = backend.Engine(window=5.0, emit_every=5.0, max_keys=2, max_payload_bytes=100)
    eng.push_many([reading("a"), reading("b")], 100.0)
    eng.push_many([reading("c", "rh")] * 3, 100.0)                        # key_limit
    eng.push(b"\xff", 100.0)                                                # decode_error
    eng.push(b"\x00" * 101, 100.0)                                          # oversize
    eng.push(cbor2.dumps([{"d": "a", "s": "temp", "v": float("nan")}, {"d": 1}]), 100.0)
    eng.push_reading("a", "temp", float("inf"), 100.0)                    # non_finite
    eng.push(reading("a", n=1), 100.0)
    eng.push(reading("a", n=9), 100.0)                                      # gap of 7
    eng.tick(106.0)
    eng.push_many([reading("a"), reading("b"), reading("a")], 101.0)       # late
    assert offenders(eng) == {
        "drops": [("-", 5, 0), ("c/rh", 3, 0)],
        "gaps": [("a/temp", 7, 0)],
        "late": [("a/temp", 2, 0), ("b/temp", 1, 0)],
    }
    d = eng.stats()["drops"]
    assert (d["key_limit"], d["decode_error"], d["oversize"], d["non_finite"],
            d["schema_mismatch"], d["late"]) == (3, 1, 1, 2, 1, 3)


def test_payload_drops_are_named_by_topic_through_drain(backend, ring_backend):
    ring = ring_backend.ByteRing(1 << 16)
    eng = backend.Engine(max_payload_bytes=100)
    if backend.compiled and not ring_backend.compiled:
        with pytest.raises(TypeError):  # the compiled engine reads the C ring directly
            eng.drain(ring)
        return
    long_topic = ("site/" + "ü" * 60).encode()
    for topic, payload in [(b"site/1/t", b"\xff"), (b"site/1/t", b"\xfe"),
                           (b"site/2/t", b"\x00" * 101),
                           (b"site/3/t", reading(v=float("nan"))),
                           (b"site/3/t", cbor2.dumps({1: "fallback", "d": 1})),
                           (long_topic, b"\xff"),
                           (b"site/4/t", reading())]:
        assert ring.try_push(100.0, topic, payload)
    assert eng.drain(ring) == 7
    # push after drain: no topic again
    eng.push(b"\xff", 100.0)
    assert offenders(eng)["drops"] == [
        ("site/1/t", 2, 0), ("site/3/t", 2, 0), ("-", 1, 0), ("site/2/t", 1, 0),
        ("site/" + "ü" * 45, 1, 0)]   # ties by name bytes


def test_heavy_hitters_among_many_key_limit_drops(backend):
    """Thousands of refused keys, three of them far more often than the rest: those three are
    the top three, each count an upper bound within its error."""
    rng = random.Random(5)
    eng = backend.Engine(max_keys=1)
    eng.push(reading("live"), 100.0)
    truth: dict = {}
    payloads = []
    for _ in range(6000):
        if rng.random() < 0.3:
            d = rng.choice(["noisy-1", "noisy-2", "noisy-3"])
        else:
            d = f"dev-{rng.randrange(3000)}"
        truth[d] = truth.get(d, 0) + 1
        payloads.append(reading(d))
    for i in range(0, len(payloads), 500):
        eng.push_many(payloads[i:i + 500], 100.0)
    top = offenders(eng)["drops"]
    assert len(top) == 10
    assert {name for name, _c, _e in top[:3]} == {"noisy-1/temp", "noisy-2/temp", "noisy-3/temp"}
    for name, count, err in top:
        assert count - err <= truth[name.split("/")[0]] <= count
        assert err * CAP <= 6000
    assert [c for _n, c, _e in top] == sorted((c for _n, c, _e in top), reverse=True)


# random engine streams: both twins name the same offenders with the same counts

DEVICES = ["a", "b", "c", "ü" * 40]
events = st.lists(st.one_of(
    st.tuples(st.just("good"), st.sampled_from(DEVICES), st.sampled_from(["t", "rh"]),
              st.one_of(st.none(), st.integers(0, 40))),
    st.tuples(st.just("nan"), st.sampled_from(DEVICES), st.just("t"), st.none()),
    st.tuples(st.just("junk"), st.binary(max_size=6), st.just(""), st.none()),
    st.tuples(st.just("big"), st.just(""), st.just(""), st.none()),
), min_size=1, max_size=12)


@st.composite
def engine_streams(draw):
    steps = []
    t = 1000.0
    for _ in range(draw(st.integers(1, 25))):
        t += draw(st.sampled_from([0.0, 0.5, 3.0, 7.0, -6.0]))     # -6: late readings
        steps.append((t, draw(st.sampled_from(["push_many", "drain"])), draw(events),
                      draw(st.sampled_from([b"site/x", b"site/y", "site/ü".encode() * 20]))))
    return draw(st.integers(1, 5)), steps


def payload_of(kind, d, s, n):
    if kind == "good":
        return reading(d, s, 2.0, n)
    if kind == "nan":
        return reading(d, s, float("nan"), n)
    if kind == "junk":
        return b"\xff" + d
    return b"\x00" * 300


def run_engine(engine_cls, ring_cls, max_keys, steps):
    eng = engine_cls(window=10.0, emit_every=5.0, key_ttl=20.0, max_keys=max_keys,
                     max_payload_bytes=200)
    ring = ring_cls(1 << 16)
    for t, how, evs, topic in steps:
        payloads = [payload_of(*e) for e in evs]
        if how == "push_many":
            eng.push_many(payloads, t)
        else:
            for p in payloads:
                assert ring.try_push(t, topic, p)
            eng.drain(ring)
        if t % 7 == 0:
            eng.tick(t)
    stats = eng.stats()
    del stats["state_bytes"]        # C bytes vs Python objects
    return stats


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(engine_streams())
def test_engines_report_the_same_offenders(compiled_backend, pure_backend, case):
    max_keys, steps = case
    # both drain the compiled ring (the pure engine reads any ring), so only the engines differ
    ring = compiled_backend.ByteRing
    assert run_engine(compiled_backend.Engine, ring, max_keys, steps) == \
        run_engine(pure_backend.Engine, ring, max_keys, steps)
