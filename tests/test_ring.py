"""The SPSC byte ring: compiled (``_ring``) and pure-Python twin (``_ring_py``), one suite for both.

Single-threaded tests pin the exact byte accounting (record size, wrap padding, fullness, drops) and
check the two implementations against each other step by step. Multi-threaded behaviour is checked
by ``stress()`` (a real producer pthread against a consumer, both without the GIL) and by the C
harness ``tests/c/spsc_stress.c`` under ThreadSanitizer.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.c_build import compile_c, need_cc, run_tsan_harness

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "c" / "spsc_stress.c"

HEADER = 24


def rsize(tlen: int, plen: int) -> int:
    return (HEADER + tlen + plen + 7) & ~7


def content(n: int, salt: int) -> bytes:
    return random.Random(salt).randbytes(n)


def advance_to(ring, offset: int) -> None:
    """Move an empty ring's head and tail to byte ``offset`` without any wrap.

    Head offsets 8 and 16 never occur (every record is >= 24 bytes and starts at 0 after a wrap), so
    0 and 24..capacity-8 are all of them; capacity >= 128 lets us reach each with records <= limit.
    """
    assert ring.used_bytes == 0 and ring.capacity >= 128
    rem = offset
    while rem:
        size = rem if rem <= ring.max_record_bytes else min(ring.max_record_bytes, rem - HEADER)
        assert ring.try_push(0.0, b"", bytes(size - HEADER))
        assert ring.pop() == (0.0, b"", bytes(size - HEADER))
        rem -= size


# ---- construction and constants ------------------------------------------------------------------


@pytest.mark.parametrize("cap", [64, 128, 4096, 1 << 20])
def test_properties_of_a_new_ring(backend, cap):
    ring = backend.ByteRing(cap)
    assert ring.capacity == cap
    assert ring.max_record_bytes == cap // 2 - 8
    assert ring.used_bytes == 0
    assert ring.drops_full == 0
    assert ring.pop() is None
    assert ring.pop_many(10) == []


@pytest.mark.parametrize("cap", [0, 1, 32, 63, 100, 3000, -64, (1 << 31) + 1, 1 << 32])
def test_bad_capacity_is_a_value_error(backend, cap):
    with pytest.raises(ValueError, match="power of two"):
        backend.ByteRing(cap)


@pytest.mark.parametrize("cap", [64.0, "64", True, None])
def test_capacity_must_be_an_int(backend, cap):
    with pytest.raises(TypeError):
        backend.ByteRing(cap)


def test_constants_and_record_size(backend):
    mod = backend.ring
    assert (mod.HEADER_SIZE, mod.ALIGN, mod.MIN_CAPACITY, mod.MAX_CAPACITY) == (24, 8, 64, 1 << 31)
    for t in range(0, 20):
        for p in range(0, 20):
            assert mod.record_size(t, p) == rsize(t, p)
            assert mod.record_size(t, p) % 8 == 0
    with pytest.raises(ValueError):
        mod.record_size(-1, 0)


def test_wrong_argument_types(backend):
    ring = backend.ByteRing(256)
    with pytest.raises(TypeError):
        ring.try_push(0.0, "topic", b"")
    with pytest.raises(TypeError):
        ring.try_push(0.0, b"topic", bytearray(b"x"))
    with pytest.raises(TypeError):
        ring.try_push("0", b"topic", b"")
    with pytest.raises(ValueError):
        ring.pop_many(-1)
    assert ring.used_bytes == 0 and ring.drops_full == 0


# ---- FIFO and content ----------------------------------------------------------------------------


def test_fifo_order_and_content(backend):
    ring = backend.ByteRing(1 << 16)
    recs = [(i * 0.25, content(i % 40, i), content((i * 37) % 300, -i)) for i in range(150)]
    for r in recs:
        assert ring.try_push(*r)
    assert ring.used_bytes == sum(rsize(len(t), len(p)) for _, t, p in recs)
    assert ring.pop_many(50) == recs[:50]
    assert [ring.pop() for _ in range(50)] == recs[50:100]
    assert ring.pop_many(1000) == recs[100:]
    assert ring.pop() is None
    assert ring.used_bytes == 0


def test_ts_round_trips_exactly(backend):
    ring = backend.ByteRing(4096)
    for ts in (0.0, -0.0, 1e-300, 1.7e9 + 0.123456789, float("inf"), -1.5):
        assert ring.try_push(ts, b"t", b"p")
        got = ring.pop()
        assert got is not None and repr(got[0]) == repr(ts)
    ring.try_push(float("nan"), b"", b"")
    got = ring.pop()
    assert got is not None and got[0] != got[0]


def test_long_interleaved_run_keeps_fifo(backend):
    """Many laps around a small ring with a lagging consumer: order and bytes survive every wrap."""
    ring = backend.ByteRing(512)
    rng = random.Random(5)
    sent: list[tuple[float, bytes, bytes]] = []
    got: list[tuple[float, bytes, bytes]] = []
    for i in range(5000):
        rec = (float(i), content(rng.randrange(0, 20), i), content(rng.randrange(0, 180), ~i))
        if ring.try_push(*rec):
            sent.append(rec)
        if rng.random() < 0.45:
            got.extend(ring.pop_many(rng.randrange(1, 4)))
    got.extend(ring.pop_many(1 << 30))
    assert got == sent
    assert ring.drops_full == 5000 - len(sent) > 0
    assert ring.used_bytes == 0


def test_empty_topic_and_payload(backend):
    ring = backend.ByteRing(64)
    for _ in range(20):  # 24-byte records: laps around a 64-byte ring, with 16-byte wrap padding
        assert ring.try_push(1.0, b"", b"")
        assert ring.pop() == (1.0, b"", b"")
    assert ring.used_bytes == 0


def test_huge_topic(backend):
    """Topics are not limited to MQTT's 65535 bytes by the ring; only the record size is."""
    ring = backend.ByteRing(1 << 18)
    topic = content(100_000, 1)
    assert ring.try_push(2.0, topic, b"")
    assert ring.try_push(3.0, topic[:70_000], content(30_000, 2))
    assert ring.pop() == (2.0, topic, b"")
    assert ring.pop() == (3.0, topic[:70_000], content(30_000, 2))


# ---- size limits and fullness --------------------------------------------------------------------


@pytest.mark.parametrize("cap", [64, 256, 4096])
def test_too_big_is_rejected_not_counted(backend, cap):
    ring = backend.ByteRing(cap)
    limit = ring.max_record_bytes
    tlen = min(3, limit - HEADER)
    assert ring.try_push(0.0, b"x" * tlen, bytes(limit - HEADER - tlen))  # exactly the limit: ok
    assert ring.pop() == (0.0, b"x" * tlen, bytes(limit - HEADER - tlen))
    too_big = [(b"", bytes(limit - HEADER + 1)), (bytes(limit), b""), (b"", bytes(cap))]
    for topic, payload in too_big:
        with pytest.raises(ValueError, match="max_record_bytes"):
            ring.try_push(0.0, topic, payload)
    assert ring.drops_full == 0  # oversize is the caller's "oversize", not "ingest_full"
    assert ring.used_bytes == 0
    assert ring.pop() is None


@pytest.mark.parametrize("cap", [128, 256, 1024])
def test_largest_record_fits_an_empty_ring_at_every_offset(backend, cap):
    """Why the limit is < capacity/2: whatever the wrap padding, an empty ring takes any record."""
    for off in [0, *range(HEADER, cap, 8)]:
        ring = backend.ByteRing(cap)
        advance_to(ring, off)
        big = content(ring.max_record_bytes - HEADER, off)
        assert ring.try_push(9.0, b"", big), off
        assert ring.pop() == (9.0, b"", big)
        assert ring.drops_full == 0


@pytest.mark.parametrize("cap", [128, 256])
def test_wrap_at_every_offset(backend, cap):
    """Every reachable head offset x every record size: the wrap padding is counted exactly."""
    for off in [0, *range(HEADER, cap, 8)]:
        for size in range(HEADER, cap // 2 - 8 + 1, 8):
            ring = backend.ByteRing(cap)
            advance_to(ring, off)
            tlen = min(5, size - HEADER)
            rec = (float(off), content(tlen, size), content(size - HEADER - tlen, off))
            assert ring.try_push(*rec)
            pad = cap - off if cap - off < size else 0
            assert ring.used_bytes == pad + size, (off, size)
            # A second record right behind it (may wrap in turn), then both come out intact.
            tlen2 = min(1, size - HEADER)
            rec2 = (-1.0, b"t"[:tlen2], content(size - HEADER - tlen2, ~off))
            contig = cap - (off + pad + size) % cap
            pad2 = contig if contig < size else 0
            fits = pad + size + pad2 + size <= cap
            assert ring.try_push(*rec2) is fits
            assert ring.used_bytes == pad + size + (pad2 + size if fits else 0)
            assert ring.pop() == rec
            assert ring.used_bytes == (pad2 + size if fits else 0)
            assert ring.pop() == (rec2 if fits else None)
            assert ring.used_bytes == 0
            assert ring.drops_full == (0 if fits else 1)


@pytest.mark.parametrize("size", [24, 32, 56, 120])
def test_fullness_is_exact(backend, size):
    """Fill until refused: refused exactly when pad + size would exceed the free bytes."""
    cap = 256
    ring = backend.ByteRing(cap)
    payload = bytes(size - HEADER)
    used = head = 0
    for lap in range(200):
        off = head % cap
        pad = cap - off if cap - off < size else 0
        fits = used + pad + size <= cap
        assert ring.try_push(float(lap), b"", payload) is fits
        if fits:
            used += pad + size
            head += pad + size
        else:
            # Refusal is counted once per refused record, and nothing changes.
            drops = ring.drops_full
            assert ring.try_push(0.0, b"", payload) is False
            assert ring.drops_full == drops + 1
            assert ring.used_bytes == used
            # Free the oldest record (and the padding in front of it, if any) and go on.
            before = ring.used_bytes
            assert ring.pop() is not None
            used = ring.used_bytes
            assert before - used >= size
        assert ring.used_bytes == used


def test_pop_many_releases_the_whole_batch(backend):
    ring = backend.ByteRing(256)
    for i in range(6):
        assert ring.try_push(float(i), b"", bytes(16))  # 40 bytes each -> 240
    assert ring.try_push(6.0, b"", bytes(16)) is False
    assert ring.pop_many(3) == [(float(i), b"", bytes(16)) for i in range(3)]
    assert ring.used_bytes == 120
    assert ring.pop_many(0) == []
    assert ring.used_bytes == 120
    # 16 bytes left before the end: the next record wraps and its padding is accounted.
    assert ring.try_push(7.0, b"", bytes(16))
    assert ring.used_bytes == 120 + 16 + 40


# ---- compiled vs. pure, step by step -------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("push"), st.integers(0, 70), st.integers(0, 600)),
    st.tuples(st.just("pop")),
    st.tuples(st.just("pop_many"), st.integers(0, 6)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cap=st.sampled_from([64, 128, 256, 512, 1024]), ops=st.lists(_op, max_size=120))
def test_compiled_and_pure_agree(compiled_backend, pure_backend, cap, ops):
    a, b = compiled_backend.ByteRing(cap), pure_backend.ByteRing(cap)
    for i, op in enumerate(ops):
        if op[0] == "push":
            rec = (i / 7.0, content(op[1], i), content(op[2], -i))
            outcome = []
            for ring in (a, b):
                try:
                    outcome.append(ring.try_push(*rec))
                except ValueError:
                    outcome.append("too big")
            assert outcome[0] == outcome[1]
            assert (outcome[0] == "too big") == (rsize(op[1], op[2]) > cap // 2 - 8)
        elif op[0] == "pop":
            assert a.pop() == b.pop()
        else:
            assert a.pop_many(op[1]) == b.pop_many(op[1])
        assert a.used_bytes == b.used_bytes
        assert a.drops_full == b.drops_full
        assert 0 <= a.used_bytes <= cap
    assert a.pop_many(1 << 20) == b.pop_many(1 << 20)
    assert a.used_bytes == b.used_bytes == 0


# ---- threads -------------------------------------------------------------------------------------


def _check_stress(res: dict, n: int) -> None:
    assert res["errors"] == 0, res
    assert res["produced"] == n
    assert res["received"] + res["dropped"] == n, res
    assert res["received"] > 0, res


@pytest.mark.parametrize(
    "n, seed, cap, max_payload, delay, yield_on_full",
    [
        (3_000_000, 1, 1 << 16, 100, 0, True),    # small records, most get through
        (2_000_000, 2, 1 << 12, 200, 0, True),    # tiny ring: wraps and a full ring all the time
        (300_000, 3, 1 << 12, 1900, 0, True),     # records up to the size limit
        (2_000_000, 4, 1 << 16, 100, 0, False),   # overload: producer never pauses, drops most
        (1_000_000, 5, 1 << 14, 64, 300, True),   # slowed consumer: many drops, all counted
    ],
    ids=["small", "tiny-ring", "max-records", "overload", "slow-consumer"],
)
def test_stress_compiled(compiled_backend, n, seed, cap, max_payload, delay, yield_on_full):
    # Timing (and so the split between received and dropped) depends on the machine and its load;
    # the accounting and the bytes must be exact whatever it is.
    res = compiled_backend.ring.stress(n, seed, cap, max_payload, consumer_delay_every=delay,
                                       yield_on_full=yield_on_full)
    _check_stress(res, n)
    if delay:
        assert res["dropped"] > 0, res


def test_stress_pure(pure_backend):
    _check_stress(pure_backend.ring.stress(10_000, 7, 1 << 12, 64, yield_on_full=True), 10_000)
    _check_stress(pure_backend.ring.stress(5_000, 8, 1 << 10, 100, consumer_delay_every=50), 5_000)


def test_stress_rejects_bad_arguments(backend):
    with pytest.raises(ValueError, match="max_payload"):
        backend.ring.stress(10, 1, 256, 200)       # 24 + 48 + 200 > 120
    with pytest.raises(ValueError, match="power of two"):
        backend.ring.stress(10, 1, 1000, 10)
    with pytest.raises(ValueError):
        backend.ring.stress(-1, 1, 4096, 10)


def test_stress_zero_records(backend):
    assert {k: v for k, v in backend.ring.stress(0, 1, 4096, 10).items() if k != "elapsed_s"} == {
        "produced": 0, "received": 0, "dropped": 0, "errors": 0,
    }


# ---- the C harness: strict C11, and ThreadSanitizer ----------------------------------------------


def test_c_harness_strict_c11(tmp_path):
    """The headers are plain ISO C11: no warnings with -Wall -Wextra -pedantic, and the harness
    passes."""
    cc = need_cc()
    exe = tmp_path / "spsc_stress"
    flags = ["-std=c11", "-O2", "-pthread", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    r = compile_c(cc, exe, [HARNESS], flags)
    assert r.returncode == 0, r.stderr
    run = subprocess.run([str(exe), "500000", "11", "4096", "200", "0", "1"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def tsan_harness(tsan_cc, tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("tsan") / "spsc_stress_tsan"
    flags = ["-std=gnu11", "-fsanitize=thread", "-O1", "-g", "-pthread"]
    r = compile_c(tsan_cc, exe, [HARNESS], flags)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.parametrize(
    "args",
    [
        ("300000", "1", "4096", "200", "0", "1"),     # tiny ring, full most of the time
        ("300000", "2", "65536", "100", "0", "1"),    # roomy ring, consumer mostly keeps up
        ("300000", "3", "65536", "100", "0", "0"),    # overload: producer never pauses
        ("200000", "4", "16384", "64", "500", "1"),   # slowed consumer
    ],
    ids=["tiny-ring", "roomy-ring", "overload", "slow-consumer"],
)
def test_c_harness_under_thread_sanitizer(tsan_harness, args):
    run_tsan_harness(tsan_harness, args, timeout=120)


# ---- doorbell: the consumer parks while empty and wakes promptly --------------------------------

def test_wait_returns_at_once_when_records_are_there(backend):
    ring = backend.ByteRing(4096)
    assert ring.try_push(1.0, b"t", b"p")
    assert ring.wait(10.0) is True


def test_wait_times_out_when_empty(backend):
    ring = backend.ByteRing(4096)
    assert ring.wait(0.01) is False


def test_wait_wakes_when_a_producer_pushes(backend):
    import threading
    ring = backend.ByteRing(4096)
    woke = []

    def consumer():
        woke.append(ring.wait(30.0))
        woke.append(ring.pop())

    t = threading.Thread(target=consumer)
    t.start()
    threading.Event().wait(0.05)
    assert ring.try_push(2.0, b"topic", b"payload")
    t.join(30.0)
    assert not t.is_alive()
    assert woke == [True, (2.0, b"topic", b"payload")]


def test_wake_ends_a_wait_without_records(backend):
    """wake() (another thread asking the consumer to stop) ends a wait that no record would end:
    the thread is joined long before its hour-long wait would have timed out."""
    import threading
    ring = backend.ByteRing(4096)
    woke = []
    t = threading.Thread(target=lambda: woke.append(ring.wait(3600.0)))
    t.start()
    threading.Event().wait(0.05)
    ring.wake()
    t.join(30.0)
    assert not t.is_alive() and woke == [True]
    assert ring.pop() is None


def test_a_wake_before_the_wait_is_not_lost_and_counts_once(backend):
    """A kick that comes before the consumer parks makes its next wait return at once (the
    consumer looks at the kick after arming, as at the ring's head); the one after sleeps."""
    ring = backend.ByteRing(4096)
    ring.wake()
    assert ring.wait(3600.0) is True
    assert ring.wait(0.01) is False
