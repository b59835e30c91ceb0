"""The emitter's backlog without a server: bounds, drop-oldest and the `emit_backlog` count,
against a plain-Python model of a bounded FIFO."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_cy.sink.backlog import Backlog, Batch


def batch(tag: int, n: int = 1, nbytes: int = 10) -> Batch:
    # `window_end` carries the tag: the test follows each batch by it
    return Batch([tag], n, nbytes, float(tag))


def tags(batches) -> list[int]:
    return [int(b.window_end) for b in batches]


def test_over_the_batch_bound_the_oldest_go_and_their_aggregates_count():
    b = Backlog(max_batches=2, max_bytes=10**6)
    assert b.add(batch(1, n=5)) == 0 and b.add(batch(2, n=7)) == 0
    assert b.add(batch(3, n=11)) == 5
    assert b.add(batch(4, n=13)) == 7
    assert (b.batches, b.aggregates, b.nbytes, b.dropped) == (2, 24, 20, 12)
    assert tags([b.take_oldest()]) == [3]


def test_over_the_byte_bound_the_oldest_go_but_the_newest_always_stays():
    b = Backlog(max_batches=100, max_bytes=100)
    b.add(batch(1, n=2, nbytes=60))
    assert b.add(batch(2, n=3, nbytes=60)) == 2
    assert b.add(batch(3, n=4, nbytes=500)) == 3      # alone over the bound: kept
    assert (b.waiting, b.aggregates, b.nbytes, b.dropped) == (1, 4, 500, 5)


def test_the_batch_in_flight_is_outside_the_bounds_until_given_back():
    b = Backlog(max_batches=2, max_bytes=10**6)
    b.add(batch(1, n=3))
    assert tags([b.take_oldest()]) == [1]
    assert b.add(batch(2)) == 0 and b.add(batch(3)) == 0   # two waiting + one in flight
    assert (b.batches, b.waiting, b.aggregates) == (3, 2, 5)
    # given back it is the oldest again, so it is the one the bound drops
    assert b.give_back() == 3
    assert tags([b.take_oldest(), b.confirm()]) == [2, 2]
    assert b.dropped == 3


def test_drop_all_counts_what_was_waiting_and_in_flight():
    b = Backlog(max_batches=4, max_bytes=10**6)
    for i, n in enumerate((2, 3, 4)):
        b.add(batch(i, n=n))
    b.take_oldest()
    assert b.drop_all() == 9
    assert b.idle and (b.batches, b.aggregates, b.nbytes, b.dropped) == (0, 0, 0, 9)


def test_misuse_is_an_error_not_a_lost_batch():
    with pytest.raises(ValueError):
        Backlog(0, 10)
    with pytest.raises(ValueError):
        Backlog(10, 0)
    b = Backlog(2, 100)
    assert b.take_oldest() is None
    with pytest.raises(RuntimeError):
        b.confirm()
    with pytest.raises(RuntimeError):
        b.give_back()
    b.add(batch(1))
    b.add(batch(2))
    b.take_oldest()
    with pytest.raises(RuntimeError):     # one in flight at a time
        b.take_oldest()
    assert b.batches == 2


class Model:
    """A bounded FIFO in plain lists: what the backlog must do."""

    def __init__(self, max_batches: int, max_bytes: int) -> None:
        self.max_batches, self.max_bytes = max_batches, max_bytes
        self.waiting: list[tuple[int, int, int]] = []   # (tag, aggregates, bytes)
        self.in_flight: tuple[int, int, int] | None = None
        self.dropped = 0

    def trim(self) -> int:
        dropped = 0
        while len(self.waiting) > 1 and (len(self.waiting) > self.max_batches
                                         or sum(w[2] for w in self.waiting) > self.max_bytes):
            dropped += self.waiting.pop(0)[1]
        self.dropped += dropped
        return dropped


OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 50), st.integers(1, 400)),
    st.tuples(st.just("take")), st.tuples(st.just("confirm")), st.tuples(st.just("give_back")),
    st.tuples(st.just("drop_all"))), max_size=80)


@settings(max_examples=300, deadline=None)
@given(max_batches=st.integers(1, 6), max_bytes=st.integers(1, 1500), ops=OPS)
def test_backlog_matches_the_model(max_batches, max_bytes, ops):
    b, m = Backlog(max_batches, max_bytes), Model(max_batches, max_bytes)
    added = confirmed = 0
    confirmed_tags: list[int] = []
    for tag, op in enumerate(ops):
        if op[0] == "add":
            _, n, nbytes = op
            m.waiting.append((tag, n, nbytes))
            assert b.add(batch(tag, n, nbytes)) == m.trim()
            added += n
        elif op[0] == "take" and m.in_flight is None:
            m.in_flight = m.waiting.pop(0) if m.waiting else None
            got = b.take_oldest()
            assert (None if got is None else int(got.window_end)) == (m.in_flight or (None,))[0]
        elif op[0] in ("confirm", "give_back") and m.in_flight is not None:
            if op[0] == "confirm":
                assert int(b.confirm().window_end) == m.in_flight[0]
                confirmed += m.in_flight[1]
                confirmed_tags.append(m.in_flight[0])
            else:
                m.waiting.insert(0, m.in_flight)
                m.in_flight = None
                assert b.give_back() == m.trim()
                continue
            m.in_flight = None
        elif op[0] == "drop_all":
            n = sum(w[1] for w in m.waiting) + (m.in_flight[1] if m.in_flight else 0)
            m.waiting, m.in_flight = [], None
            m.dropped += n
            assert b.drop_all() == n

        held = m.waiting + ([m.in_flight] if m.in_flight else [])
        assert b.waiting == len(m.waiting) and b.batches == len(held)
        assert b.aggregates == sum(h[1] for h in held) and b.nbytes == sum(h[2] for h in held)
        assert b.dropped == m.dropped and b.idle == (not held)
        # the bounds, checked apart from the model: over one only with a single batch waiting
        over = b.waiting > max_batches or sum(w[2] for w in m.waiting) > max_bytes
        assert not over or b.waiting == 1
        # nothing lost, nothing counted twice: the emitter's balance, on the backlog's share
        assert added == confirmed + b.dropped + b.aggregates
        # oldest first: batches reach the server in the order they were added
        assert confirmed_tags == sorted(confirmed_tags)
