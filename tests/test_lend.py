"""Lending the parked engine to the network thread (includes/tc_park.h, docs/ingest.md).

While the compiled engine's run_ring parks, the compiled reader's hand-off (FrameReader.notify,
nap, pump) drains a small turn's records into it on the producer's thread instead of waking the
engine thread; a record that needs the GIL (a payload for cbor2, data moving the clock, an
event-time payload to route) is left in the ring with everything after it, and the doorbell rung.

Only the compiled twins lend (the pure ring wakes its consumer on every push, the pure engine
cannot run without the GIL), so the oracle is the pure engine fed the same payloads with push():
every reading lands exactly once, counters and windows equal. Nothing here asserts on timing.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.c_build import compile_c, run_tsan_harness
from telemetry_cy.backend import BackendUnavailable, load
from telemetry_cy.tools.mqtt_loadgen import publish_frame

try:
    C = load("compiled")
except BackendUnavailable:   # pragma: no cover - the compiled build is what this file tests
    pytest.skip("the compiled modules are not built", allow_module_level=True)
P = load("pure")

TOPIC = "site/d/sensor/s"
COUNTERS = ("received", "payloads", "readings", "drops", "live_keys", "evicted", "ticks")
LEND_MAX = P.frames.LEND_MAX_RECORDS


def reading(d="dev1", s="temp", v=1.0, **extra) -> bytes:
    return cbor2.dumps({"d": d, "s": s, "v": v, **extra})


FALLBACK = cbor2.dumps({"d": "x", "s": "y", "v": 2**70})   # a bignum (tag 2): cbor2 reads it


def wait_for(predicate, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.0005)
    return False


def as_dicts(aggs) -> list[dict]:
    return sorted((a.as_dict() for a in aggs), key=lambda a: (a["window_end"], a["device"],
                                                              a["sensor"]))


class Producer:
    """The network thread's side without a socket: a turn's PUBLISH frames parsed by the compiled
    reader into the ring (feed(notify=False)), then handed off as pump() does before it sleeps
    (notify(): a lent drain for at most LEND_MAX records, else the doorbell)."""

    def __init__(self, ring) -> None:
        self.reader = C.FrameReader(ring, protocol=4)

    def turn(self, payloads: list[bytes], ts: float) -> None:
        data = b"".join(publish_frame(TOPIC, p) for p in payloads)
        buf = self.reader.writable()
        buf[:len(data)] = data
        acks, packets = self.reader.feed(len(data), ts, False)
        assert acks is None and packets == []
        self.reader.notify()


class Consumer(threading.Thread):
    """The engine thread's loop: run_ring until stop() (a kick), as EngineThread runs it."""

    def __init__(self, engine, ring, seconds: float, batch: int, lend: bool = True) -> None:
        super().__init__(daemon=True)
        self.engine, self.ring, self.seconds, self.batch, self.lend = (engine, ring, seconds,
                                                                        batch, lend)
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.engine.run_ring(self.ring, self.seconds, self.batch, self.lend)
        except BaseException as exc:   # reported by the test
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.ring.wake()
        self.join(60.0)
        assert not self.is_alive(), "a kick must end a lent park"
        assert self.error is None, self.error


def finish(eng, ring) -> None:
    """What EngineThread.stop does after the loop: drain what is left, on this thread."""
    while eng.drain(ring, 256):
        pass
    assert ring.used_bytes == 0


def check_against_pure(eng, ref) -> None:
    a, b = eng.stats(), ref.stats()
    assert {k: a[k] for k in COUNTERS} == {k: b[k] for k in COUNTERS}
    assert as_dicts(eng.tick(10_000.0)) == as_dicts(ref.tick(10_000.0))


# ---- deterministic cases -----------------------------------------------------------------------

def lent_consumer(eng, ring, batch=64):
    """A consumer parked (and lent) for an hour: only the producer's ring or a kick wakes it."""
    c = Consumer(eng, ring, 3600.0, batch)
    c.start()
    assert wait_for(lambda: ring.lent)
    return c


def lent_after_one_reading(ring_bytes=1 << 20, **engine_kw):
    """(ring, eng, ref, prod, consumer): the compiled engine and its pure reference (window 10 s,
    tick 5 s) with one reading at ts 100.0 each, the engine's consumer parked and lent."""
    ring = C.ByteRing(ring_bytes)
    kw = dict(window=10.0, emit_every=5.0, **engine_kw)
    eng, ref = C.Engine(**kw), P.Engine(**kw)
    prod = Producer(ring)
    prod.turn([reading()], 100.0)
    ref.push(reading(), 100.0)
    return ring, eng, ref, prod, lent_consumer(eng, ring)


def test_a_small_turn_is_drained_by_the_producer_and_the_engine_sleeps_on():
    ring = C.ByteRing(1 << 20)
    eng, ref = C.Engine(window=10.0, emit_every=5.0), P.Engine(window=10.0, emit_every=5.0)
    prod = Producer(ring)
    first = [reading(d=f"d{i}", v=float(i)) for i in range(3)]   # starts the clock: GIL, rung
    prod.turn(first, 100.0)
    for p in first:
        ref.push(p, 100.0)
    c = lent_consumer(eng, ring)
    parks = ring.parks
    for k in range(20):
        batch = [reading(d=f"d{i}", v=float(k * 10 + i)) for i in range(10)]
        prod.turn(batch, 101.0 + k * 0.01)
        for p in batch:
            ref.push(p, 101.0 + k * 0.01)
        # drained on this thread, before notify() returned: nothing left, nobody woken
        assert ring.used_bytes == 0
    assert ring.lends == 20 and ring.parks == parks and ring.lent
    c.stop()
    finish(eng, ring)
    check_against_pure(eng, ref)


def test_a_turn_bigger_than_the_lend_limit_wakes_the_engine_thread():
    ring, eng, ref, prod, c = lent_after_one_reading(1 << 22)
    lends, parks = ring.lends, ring.parks
    big = [reading(d=f"d{i % 7}", v=float(i)) for i in range(LEND_MAX + 1)]
    prod.turn(big, 100.5)
    for p in big:
        ref.push(p, 100.5)
    assert wait_for(lambda: ring.used_bytes == 0 and ring.parks > parks)
    assert ring.lends == lends   # rung, not lent: at high rates both threads work
    c.stop()
    finish(eng, ring)
    check_against_pure(eng, ref)


@pytest.mark.parametrize("needs_gil", ["fallback", "clock"])
def test_a_lent_drain_stops_before_a_record_that_needs_the_gil(needs_gil):
    """The lent drain applies the records before it, leaves it and the rest in the ring (rewound:
    none of them counted yet) and rings; the engine thread takes them with the GIL."""
    ring, eng, ref, prod, c = lent_after_one_reading()
    parks = ring.parks
    if needs_gil == "fallback":
        turn = [(reading(v=2.0), 101.0), (reading(v=3.0), 101.0), (FALLBACK, 101.0),
                (reading(v=4.0), 101.0)]
    else:   # 106.0 is in the next interval: the first such record moves the clock (a tick)
        turn = [(reading(v=2.0), 101.0), (reading(v=5.0), 106.0), (reading(v=6.0), 106.0)]
    data_by_ts: dict[float, list[bytes]] = {}
    for p, ts in turn:
        data_by_ts.setdefault(ts, []).append(p)
        ref.push(p, ts)
    # one feed per arrival time (a socket read each), one hand-off for the turn, as pump() does
    for ts, ps in data_by_ts.items():
        data = b"".join(publish_frame(TOPIC, p) for p in ps)
        prod.reader.writable()[:len(data)] = data
        prod.reader.feed(len(data), ts, False)
    prod.reader.notify()
    assert ring.lends >= 1
    assert wait_for(lambda: ring.used_bytes == 0 and ring.parks > parks)   # rung
    c.stop()
    finish(eng, ring)
    check_against_pure(eng, ref)


def test_a_stop_ends_a_lent_park_while_the_producer_keeps_lending():
    ring = C.ByteRing(1 << 20)
    eng = C.Engine(window=3600.0, emit_every=3600.0, key_ttl=3600.0)
    prod = Producer(ring)
    prod.turn([reading()], 1000.0)
    c = lent_consumer(eng, ring)
    done = threading.Event()
    sent = [1]

    def produce():
        while not done.is_set():
            prod.turn([reading(d=f"d{sent[0] % 9}")] * 5, 1000.0)
            sent[0] += 5

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    assert wait_for(lambda: ring.lends >= 50)
    c.stop()   # returns although the producer borrows the engine again and again
    done.set()
    t.join(30.0)
    finish(eng, ring)
    assert eng.stats()["readings"] == sent[0]


def test_run_ring_without_lend_is_never_lent():
    ring = C.ByteRing(1 << 20)
    eng = C.Engine(window=10.0, emit_every=5.0)
    prod = Producer(ring)
    prod.turn([reading()], 100.0)
    c = Consumer(eng, ring, 3600.0, 64, lend=False)
    c.start()
    assert wait_for(lambda: ring.parks >= 1 and ring.used_bytes == 0)
    for k in range(10):
        prod.turn([reading(v=float(k))], 100.5)
        assert not ring.lent
    assert wait_for(lambda: ring.used_bytes == 0 and ring.parks >= 2)   # rung: woken, parked
    assert ring.lends == 0
    c.stop()
    assert eng.stats()["readings"] == 11


def test_a_lent_drain_that_runs_out_of_keys_counts_like_push():
    """key_limit drops happen inside the lent drain (no GIL needed): counted as push counts them."""
    ring, eng, ref, prod, c = lent_after_one_reading(max_keys=4)
    for k in range(5):
        batch = [reading(d=f"k{k}-{i}") for i in range(4)]
        prod.turn(batch, 101.0)
        for p in batch:
            ref.push(p, 101.0)
    c.stop()
    finish(eng, ring)
    assert eng.stats()["drops"]["key_limit"] > 0
    check_against_pure(eng, ref)


# ---- property: random rates, batches, GIL records, a stop in the middle -----------------------

PAYLOAD = st.one_of(
    st.builds(lambda d, v: reading(d=f"d{d}", v=v), st.integers(0, 20),
              st.floats(-1e6, 1e6, allow_nan=False)),
    st.builds(lambda d, v: reading(d=f"d{d}", v=v), st.integers(0, 20),
              st.floats(-1e6, 1e6, allow_nan=False)),
    st.just(b"\xff"),                                    # decode_error
    st.just(FALLBACK),                                   # cbor2 (GIL)
    st.just(reading(v=float("nan"))),                    # non_finite
)
TURNS = st.lists(st.tuples(st.lists(PAYLOAD, min_size=1, max_size=LEND_MAX + 40),
                           st.floats(0.0, 1.5),           # ts step: crosses 5 s intervals
                           st.sampled_from([0.0, 0.0, 0.0003, 0.002])),   # pause after
                 min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns=TURNS, batch=st.sampled_from([1, 16, 8192]), seconds=st.sampled_from([0.005, 3600.0]),
       stop_at=st.floats(0.0, 1.0), event=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_every_reading_lands_exactly_once_as_in_the_pure_engine(turns, batch, seconds, stop_at,
                                                                 event, seed):
    kw = dict(window=10.0, emit_every=5.0, max_keys=50)
    if event:
        kw.update(time="event", allowed_lateness=1.0, late_capacity=16)
    ring = C.ByteRing(1 << 22)
    eng, ref = C.Engine(**kw), P.Engine(**kw)
    prod = Producer(ring)
    c = Consumer(eng, ring, seconds, batch)
    c.start()
    rnd = random.Random(seed)
    stop_after = int(stop_at * len(turns))
    ts = 100.0
    for k, (payloads, step, pause) in enumerate(turns):
        if k == stop_after:
            c.stop()   # the engine thread stops in the middle; the producer goes on
        ts += step
        if event:   # event time carried in the payload, sometimes late
            payloads = [cbor2.dumps({**cbor2.loads(p), "t": ts - rnd.choice([0.0, 0.5, 8.0])})
                        if p not in (b"\xff", FALLBACK) else p for p in payloads]
        prod.turn(payloads, ts)
        for p in payloads:
            ref.push(p, ts)
        if pause:
            time.sleep(pause)
    if c.is_alive():
        c.stop()
    finish(eng, ring)
    check_against_pure(eng, ref)
    if event:
        assert [r.t for r in eng.take_late()] == [r.t for r in ref.take_late()]


def test_the_property_run_exercises_lending():
    """The property above must not pass vacuously: small turns with pauses do get lent."""
    ring = C.ByteRing(1 << 20)
    eng = C.Engine(window=10.0, emit_every=5.0)
    prod = Producer(ring)
    c = Consumer(eng, ring, 0.005, 16)
    c.start()
    for k in range(200):
        prod.turn([reading(d=f"d{k % 3}")] * 3, 100.0 + k * 0.001)
        time.sleep(0.0005)
    c.stop()
    finish(eng, ring)
    assert ring.lends > 0 and eng.stats()["readings"] == 600


# ---- the protocol under ThreadSanitizer (tests/c/lend_stress.c) ----------------------------------

LEND_HARNESS = Path(__file__).resolve().parent / "c" / "lend_stress.c"


@pytest.fixture(scope="module")
def lend_harness(tsan_cc, tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("tsan_lend") / "lend_stress_tsan"
    # -Wno-tsan: TSan does not model the doorbell's seq_cst fences (the Dekker half of
    # tc_doorbell.h); the lend protocol it checks here is acquire/release on `lend` alone
    flags = ["-std=gnu11", "-fsanitize=thread", "-O1", "-g", "-pthread", "-Wno-tsan"]
    r = compile_c(tsan_cc, exe, [LEND_HARNESS], flags)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.parametrize(
    "args",
    [
        ("100000", "1", "65536", "37", "300"),     # some records left for the consumer
        ("100000", "2", "4096", "0", "50"),        # tiny ring, kicks racing every borrow
        ("50000", "3", "1048576", "5", "1000"),    # most lent drains stop early
    ],
    ids=["roomy", "tiny-ring-many-kicks", "early-stops"],
)
def test_lend_protocol_under_thread_sanitizer(lend_harness, args):
    """Producer, consumer and kicker threads: every record processed once and in order whoever
    drains it, and no race on the lent state (TSan)."""
    run_tsan_harness(lend_harness, args, timeout=300)
