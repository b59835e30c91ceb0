"""A takeover's replay from the committed floor (service/replay_floor.py, docs/scale-out.md
"Ownership and failover"), without brokers: one partition's messages in stream order, an owner
merging them and committing (last tick, floor) after each turn, and at any turn a new owner that
resumes at that tick and is fed the messages from the floor on (all at once: the caught-up
replay), then both go on. The new owner must publish exactly what the old one would have
published after that turn, so the windows of the two owners together are one engine's: none
lost, none twice. And the floor moves: the replay is shorter than the stream."""

from __future__ import annotations

import random

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from support.scaleout import EMIT, LATENESS, WINDOW, assert_same_windows, stream
from telemetry_cy.engine import _engine_py
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.instance_partials import InstancePartials
from telemetry_cy.engine.pane_merge import PaneMerger
from telemetry_cy.service.merge_worker import MergeWorker, emitted_entry, read_emitted_entry
from telemetry_cy.service.replay_floor import ReplayFloor


def engine(partials: bool = False):
    return _engine_py.Engine(window=WINDOW, emit_every=EMIT, time="event",
                             allowed_lateness=LATENESS, key_ttl=1e6, partials=partials)


def partial_stream(seed: int, instances: int, n: int, stall: float = 1.0, drop: float = 0.0):
    """The partition's messages in stream order (one partition: every key's), the turns (how
    many messages were in the stream at each), and one engine's windows. From ``stall`` (a
    fraction of the readings) on, instance 0 gets no readings: its clock stands, its open panes
    wait, and it only sends heartbeats (as the daemon does at each tick when nothing closed),
    holding the windows back until it leaves. The messages as bytes: ``partial_bytes``."""
    ws, datas, turns, want = partial_bytes(seed, instances, n, stall, drop)
    return ws, [pf.read(data) for data in datas], turns, want


def partial_bytes(seed: int, instances: int, n: int, stall: float = 1.0, drop: float = 0.0):
    """``partial_stream`` with each message as the bytes the stream holds. ``drop``: each message
    but an instance's first and its leave never reaches the stream with that probability (a full
    emitter backlog), so the stream has gaps."""
    ws = pf.window_settings(WINDOW, EMIT, "event", LATENESS)
    rng = random.Random(seed)
    lossy = random.Random(seed ^ 0x6A95)
    engines = [engine(partials=True) for _ in range(instances)]
    outs = [InstancePartials(e, ws, f"inst{i}", 1) for i, e in enumerate(engines)]
    single = engine()
    msgs: list[bytes] = []
    turns: list[int] = []
    for j, (device, sensor, value, t) in enumerate(stream(seed, n, 6)):
        stalled = instances > 1 and j >= stall * n
        i = rng.randrange(1 if stalled else 0, instances)
        engines[i].push_reading(device, sensor, value, t, unit="u", t=t)
        single.push_reading(device, sensor, value, t, unit="u", t=t)
        msgs += [data for _p, data in outs[i].collect()]
        if rng.random() < 0.1:
            if stalled:
                msgs += [data for _p, data in outs[0].heartbeat()]
            turns.append(len(msgs))
    end = n + 1e4
    for e, o in zip(engines, outs):
        e.tick(end)
        msgs += [data for _p, data in o.collect() + o.leave()]
    turns.append(len(msgs))
    if drop:
        kept, first = [], set()
        for data in msgs:
            m = pf.read(data)
            if m.instance in first and m.kind != pf.KIND_LEAVE and lossy.random() < drop:
                continue
            first.add(m.instance)
            kept.append(data)
        turns = _renumber(msgs, kept, turns)
        msgs = kept
    return ws, msgs, turns, [a.as_dict() for a in single.tick(end)]


def _renumber(before: list[bytes], kept: list[bytes], turns: list[int]) -> list[int]:
    """The turns (message counts) of ``before`` as counts of ``kept``, a subsequence of it."""
    out, k, at = [], 0, 0
    for turn in turns:
        while at < turn:
            if k < len(kept) and kept[k] is before[at]:
                k += 1
            at += 1
        out.append(k)
    return sorted(set(out))


def take(merger: PaneMerger, floor: ReplayFloor, msg: pf.Partial, seq: int) -> None:
    floor.note(msg.instance, msg.interval if msg.kind == pf.KIND_PANES else None, seq)
    merger.take(msg, 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), instances=st.integers(1, 3), cut=st.floats(0.05, 0.95),
       stall=st.sampled_from([1.0, 0.3, 0.6]))
def test_a_replay_from_the_floor_publishes_what_the_old_owner_would_have(seed, instances, cut,
                                                                          stall):
    ws, msgs, turns, want = partial_stream(seed, instances, 500, stall)
    old, old_floor = PaneMerger(ws), ReplayFloor()
    before: list[dict] = []
    at = turns[int(cut * (len(turns) - 1))]      # the turn after which the old owner dies
    fed, committed = 0, (None, None)
    for turn in turns:
        if turn > at:
            break
        for seq in range(fed + 1, turn + 1):     # stream sequences start at 1
            take(old, old_floor, msgs[seq - 1], seq)
        fed = turn
        before += old.emit()
        tick, live, lost = old.replay_needs(0)
        if tick is not None:                      # what the owner writes to EMITTED
            committed = read_emitted_entry(emitted_entry(
                tick, old_floor.floor(tick, ws.panes, live, lost)))
    tick, from_seq = committed
    # the new owner: resumes at the tick, replays from the floor to what the stream holds now
    new, new_floor = PaneMerger(ws), ReplayFloor(from_seq)
    new.resume(0, tick)
    start = from_seq or 1
    for seq in range(start, fed + 1):
        take(new, new_floor, msgs[seq - 1], seq)
    after = new.emit()
    for turn in [t for t in turns if t > at]:
        for seq in range(fed + 1, turn + 1):
            take(new, new_floor, msgs[seq - 1], seq)
        fed = turn
        after += new.emit()
    assert_same_windows(want, before + after, ())    # none lost, none twice, all right
    assert new.stats.gaps == 0 and new.stats.incomplete == 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), instances=st.integers(1, 3), cut=st.floats(0.05, 0.95),
       drop=st.sampled_from([0.02, 0.05, 0.1]))
def test_a_replay_from_the_floor_with_gaps_publishes_no_short_window(seed, instances, cut, drop):
    """Messages missing from the stream (issue #14): a replay from the committed floor still sees
    every gap whose loss a window to come spans (the floor holds while one is open or bounded),
    so the two owners' windows are each one engine's, none twice, and every one they do not
    publish is counted incomplete by one of them (if either was given a pane of it)."""
    ws, msgs, turns, want = partial_stream(seed, instances, 500, drop=drop)
    old, old_floor = PaneMerger(ws), ReplayFloor()
    got: list[dict] = []
    at = turns[int(cut * (len(turns) - 1))]
    fed, committed = 0, (None, None)
    for turn in [t for t in turns if t <= at]:
        for seq in range(fed + 1, turn + 1):
            take(old, old_floor, msgs[seq - 1], seq)
        fed = turn
        got += old.emit()
        tick, live, lost = old.replay_needs(0)
        if tick is not None:
            committed = read_emitted_entry(emitted_entry(
                tick, old_floor.floor(tick, ws.panes, live, lost)))
    tick, from_seq = committed
    new, new_floor = PaneMerger(ws), ReplayFloor(from_seq)
    new.resume(0, tick)
    for seq in range(from_seq or 1, len(msgs) + 1):
        take(new, new_floor, msgs[seq - 1], seq)
    got += new.emit()
    w = {(a["device"], a["sensor"], a["window_end"]): a for a in want}
    published = {(g["device"], g["sensor"], g["window_end"]) for g in got}
    assert len(published) == len(got)                       # none twice
    assert_same_windows([w[k] for k in published], got, ())  # each whole
    given_panes = {(p.device, p.sensor, m.interval) for m in msgs for p in m.panes}
    seen = {k for k in set(w) - published
            if any((k[0], k[1], j) in given_panes
                   for j in range(round(k[2] / EMIT) - ws.panes, round(k[2] / EMIT)))}
    assert old.stats.incomplete + new.stats.incomplete == len(seen)


def refused(kind: str, valid: bytes) -> tuple[bytes, str]:
    """A message a merge worker refuses, made from a valid one, and the reason it counts."""
    if kind == "foreign":
        return b"not a partial", "foreign"
    if kind == "checksum":
        damaged = bytearray(valid)
        damaged[len(damaged) // 2] ^= 0xFF
        return bytes(damaged), "checksum"
    other = pf.window_settings(2 * WINDOW, EMIT, "event", LATENESS)   # kind "settings"
    return pf.write(pf.KIND_PROGRESS, other, "stranger", 0, 0, 0, 1), "settings"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), instances=st.integers(1, 3), cut=st.floats(0.05, 0.9),
       kind=st.sampled_from(["foreign", "checksum", "settings"]))
def test_a_replay_ending_on_a_refused_message_has_caught_up(seed, instances, cut, kind):
    """The old owner merges a turn's messages and dies before emitting them; the stream's last
    message when the new owner (a MergeWorker) takes over is one it refuses. That message is
    consumed all the same: the replay has caught up, and the new owner emits at once what the
    old one was about to, instead of holding the partition until the next valid message."""
    ws, datas, turns, want = partial_bytes(seed, instances, 300)
    msgs = [pf.read(d) for d in datas]
    at = turns[int(cut * (len(turns) - 1))]
    old, old_floor = PaneMerger(ws), ReplayFloor()
    before: list[dict] = []
    fed, committed = 0, None
    for turn in [t for t in turns if t <= at]:
        for seq in range(fed + 1, turn + 1):
            take(old, old_floor, msgs[seq - 1], seq)
        fed = turn
        would = old.emit()          # at turn `at` it dies before these go out
        if turn == at:
            break
        before += would
        tick, live, lost = old.replay_needs(0)
        if tick is not None:
            committed = emitted_entry(tick, old_floor.floor(tick, ws.panes, live, lost))
    assume(would and committed is not None)
    # the stream as the new owner finds it: the messages so far, then the refused one
    bad, reason = refused(kind, datas[fed - 1])
    stream_now = datas[:fed] + [bad]
    new = MergeWorker([], "new", ws, 1, None)
    start = new.resume(0, committed) or 1
    for seq in range(start, len(stream_now) + 1):
        new.consume(0, stream_now[seq - 1], seq, pending=len(stream_now) - seq)
    after = new.windows()
    assert_same_windows(would, after, ())      # not held: what the old owner had ready
    stats = new.stats()
    assert stats["refused"] == {reason: 1} and stats["replayed"] == len(stream_now) - start + 1
    # and on from there, the two owners' windows are one engine's
    for seq in range(fed + 1, len(datas) + 1):
        new.consume(0, datas[seq - 1], seq + 1, pending=len(datas) - seq)
    after += new.windows()
    assert_same_windows(want, before + after, ())


def test_a_message_on_another_partitions_subject_is_refused():
    ws = pf.window_settings(WINDOW, EMIT, "event", LATENESS)
    worker = MergeWorker([], "w", ws, 2, [0])
    # instance a's progress in partition 0, on partition 0's subject: merged
    worker.consume(0, pf.write(pf.KIND_PROGRESS, ws, "a", 0, 5, 0, 2), 1, pending=0)
    # its progress in partition 1, delivered on partition 0's subject: refused
    worker.consume(0, pf.write(pf.KIND_PROGRESS, ws, "a", 0, 5, 1, 2), 2, pending=0)
    stats = worker.stats()
    assert stats["refused"] == {"malformed": 1} and stats["partials"] == 1, stats


def test_the_floor_moves_past_the_start_and_never_back():
    ws, msgs, turns, _ = partial_stream(5, 3, 800)
    merger, floor = PaneMerger(ws), ReplayFloor()
    floors, fed = [], 0
    for turn in turns:
        for seq in range(fed + 1, turn + 1):
            take(merger, floor, msgs[seq - 1], seq)
        fed = turn
        merger.emit()
        tick, live, lost = merger.replay_needs(0)
        if tick is not None:
            floors.append(floor.floor(tick, ws.panes, live, lost))
    assert floors == sorted(floors) and floors[-1] > len(msgs) // 2, floors
    # once everyone left, nothing is needed: a replay would start after the last message
    assert floors[-1] == len(msgs) + 1


def test_the_floor_keeps_each_live_instances_last_message_and_the_panes_still_needed():
    def floor_for(emitted, live):
        f = ReplayFloor()
        f.note("a", None, 5)     # a's progress: it holds the windows back, seen again or not
        f.note("b", 10, 6)       # panes of interval 10
        return f.floor(emitted, 3, frozenset(live), loss_pending=False)
    assert floor_for(12, {"a", "b"}) == 5     # window 12 spans intervals 9..11: both needed
    assert floor_for(12, {"b"}) == 6          # a left: its messages are not
    assert floor_for(20, {"a", "b"}) == 5     # the panes are behind every window to come
    assert floor_for(20, {"b"}) == 6          # b's last message
    assert floor_for(20, set()) == 7          # nobody live, nothing needed: after the last


def test_a_pending_loss_holds_the_floor():
    floor = ReplayFloor(7)
    floor.note("a", 10, 20)
    assert floor.floor(12, 3, frozenset({"a"}), loss_pending=True) == 7
    assert floor.floor(12, 3, frozenset({"a"}), loss_pending=False) == 20
    assert floor.floor(None, 3, frozenset(), loss_pending=False) == 20


def test_emitted_entries_are_versioned_and_checked():
    assert read_emitted_entry(emitted_entry(42, 17)) == (42, 17)
    assert read_emitted_entry(emitted_entry(42, None)) == (42, None)
    for bad in (b'{"v":2,"tick":1,"from_seq":1}', b'{"v":1,"tick":"1","from_seq":1}',
                b'{"v":1,"tick":1,"from_seq":0}', b"[]", b"12"):
        try:
            read_emitted_entry(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
