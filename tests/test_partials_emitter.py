"""The partials emitter's hand-off (sink/partials_emitter.py, sink/handoff.py) with a real
nats-server: a loop that is stuck, absent, stopped or gone refuses or loses batches and counts
them, messages and panes, under ``backlog``; at every reading made == sent + dropped + backlog
(and the same for panes); what was refused never reaches the stream, and the merge counts each
refused message as a gap, as it counts one dropped from the queue."""

from __future__ import annotations

import collections
import os
import signal
import threading
from types import SimpleNamespace

from support.brokers import wait_for
from support.scaleout import EMIT, LATENESS, WINDOW, stream
from telemetry_cy.engine import _engine_py
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.instance_partials import InstancePartials
from telemetry_cy.engine.pane_merge import PaneMerger
from telemetry_cy.service.metrics import Buckets, Health, PipelineCollector
from telemetry_cy.service.pipeline_snapshot import PipelineSnapshot
from telemetry_cy.sink.partials_emitter import KINDS, PartialsEmitter
from telemetry_cy.sink.partials_stream import STREAM

SETTINGS = pf.window_settings(WINDOW, EMIT, "event", LATENESS)
PARTITIONS = 2

Batch = list[tuple[int, bytes]]


def instance_batches(seed: int, instance: str, n: int = 150) -> tuple[list[Batch], Batch]:
    """What an instance's engine thread submits: a batch per collect that closed panes, in
    order; and its last one (the clock closed past every reading, then `leave`), which carries
    a message for every partition, so a gap before it shows in each."""
    engine = _engine_py.Engine(window=WINDOW, emit_every=EMIT, time="event",
                               allowed_lateness=LATENESS, key_ttl=1e6, idle_timeout=1.0,
                               partials=True)
    out = InstancePartials(engine, SETTINGS, instance, PARTITIONS)
    batches = []
    for device, sensor, value, t in stream(seed, n, 5):
        engine.push_reading(device, sensor, value, t, unit="u", t=t)
        batch = out.collect()
        if batch:
            batches.append(batch)
    engine.tick(1e9)
    return batches, out.collect() + out.leave()


def read_all(batches: list[Batch]) -> list[pf.Partial]:
    return [pf.read(data) for batch in batches for _part, data in batch]


def panes_in(batches: list[Batch]) -> int:
    return sum(len(m.panes) for m in read_all(batches))


def assert_balanced(p: dict) -> None:
    assert p["messages"] == sum(p["made"].values()), p
    assert p["messages"] == p["sent"] + sum(p["drops"].values()) + p["backlog"], p
    assert p["panes"] == p["panes_sent"] + sum(p["pane_drops"].values()) + p["panes_backlog"], p


def assert_made(p: dict, batches: list[Batch]) -> None:
    """Made by kind and panes, as the reader reads the messages handed to submit."""
    msgs = read_all(batches)
    kinds = collections.Counter(KINDS[m.kind] for m in msgs)
    assert p["made"] == {name: kinds[name] for name in KINDS.values()}, (p, kinds)
    assert p["panes"] == sum(len(m.panes) for m in msgs), p


def assert_all_dropped(p: dict, batches: list[Batch]) -> None:
    """Nothing sent, nothing waiting: every message handed to submit dropped, with its panes."""
    assert_made(p, batches)
    assert_balanced(p)
    assert p["sent"] == p["backlog"] == p["panes_backlog"] == 0, p
    assert p["drops"] == {"backlog": len(read_all(batches))}, p
    assert p["pane_drops"] == {"backlog": panes_in(batches)}, p


def stored_ids(admin) -> list[tuple[int, int]]:
    return [(m.partition, m.seq) for m in (pf.read(s.data) for s in admin.stream_msgs(STREAM))]


def ids(batches: list[Batch]) -> list[tuple[int, int]]:
    return [(m.partition, m.seq) for m in read_all(batches)]


def start(url: str, instance: str, **kw) -> PartialsEmitter:
    em = PartialsEmitter([url], instance, **kw)
    em.start()
    return em


def test_a_stuck_loop_refuses_past_the_bound_and_the_merge_counts_the_gaps(nats_server,
                                                                            nats_admin):
    batches, last = instance_batches(3, "inst-stuck")
    assert len(batches) > 8
    em = start(nats_server.url, "inst-stuck", max_in_flight=4)
    gate = threading.Event()
    try:
        assert em.wait_connected(10.0)
        # the loop runs this before any batch below and takes nothing while it waits: stuck
        em._loop.call_soon_threadsafe(gate.wait)
        for batch in batches:
            em.submit(batch)
        waiting, refused = batches[:4], batches[4:]
        p = em.stats()["partials"]
        assert p["sent"] == p["panes_sent"] == 0, p
        assert p["backlog"] == len(read_all(waiting)), p
        assert p["panes_backlog"] == panes_in(waiting), p
        assert p["drops"] == {"backlog": len(read_all(refused))}, p
        assert p["pane_drops"] == {"backlog": panes_in(refused)}, p
        assert panes_in(refused) > 0
        assert_made(p, batches)
        assert_balanced(p)
        gate.set()
        # the loop takes what waited and sends it; the bound lets the next batch in again
        assert wait_for(lambda: em.stats()["partials"]["sent"] == len(read_all(waiting)), 10.0)
        em.submit(last)
        sent = waiting + [last]
        assert wait_for(lambda: em.stats()["partials"]["sent"] == len(read_all(sent)), 10.0)
    finally:
        gate.set()
        em.stop()
    p = em.stats()["partials"]
    assert_made(p, batches + [last])
    assert_balanced(p)
    assert p["backlog"] == p["panes_backlog"] == 0, p
    assert p["drops"] == {"backlog": len(read_all(refused))}, p
    assert p["panes_sent"] == panes_in(sent), p
    # the stream holds what was handed over, once each, in order; nothing refused
    assert stored_ids(nats_admin) == ids(sent)
    # the merge sees every refused message as a gap in the instance's sequence
    merger = PaneMerger(SETTINGS)
    for m in read_all(sent):
        merger.take(m, 0.0)
    assert merger.stats.gaps == len(read_all(refused))
    assert merger.stats.partials == len(read_all(sent)) and not merger.stats.refused


def test_an_absent_or_stopped_loop_refuses_every_batch_and_counts_it(nats_server, nats_admin):
    batches, last = instance_batches(5, "inst-never")
    never = PartialsEmitter([nats_server.url], "inst-never")   # never started: no loop
    for batch in batches:
        never.submit(batch)
    never.stop()
    p = never.stats()["partials"]
    assert_all_dropped(p, batches)

    em = start(nats_server.url, "inst-stopped")
    try:
        assert em.wait_connected(10.0)
        em.submit(batches[0])
        assert wait_for(lambda: em.stats()["partials"]["sent"] == len(batches[0]), 10.0)
    finally:
        em.stop()
    for batch in batches[1:] + [last]:   # after stop: refused, the loop closed or closing
        em.submit(batch)
    p = em.stats()["partials"]
    assert_made(p, batches + [last])
    assert_balanced(p)
    assert p["sent"] == len(batches[0]) and p["backlog"] == 0, p
    assert p["drops"] == {"backlog": len(read_all(batches[1:] + [last]))}, p
    assert p["pane_drops"] == {"backlog": panes_in(batches[1:] + [last])}, p
    assert stored_ids(nats_admin) == ids(batches[:1])


def test_what_a_gone_loop_never_sent_is_counted_at_stop(nats_server, monkeypatch):
    """stop() while the loop is stuck leaves what waits counted as backlog (the thread may still
    take it); once the loop thread is gone, what it never sent is dropped."""
    batches, _ = instance_batches(7, "inst-gone")
    em = start(nats_server.url, "inst-gone")
    gate, ended = threading.Event(), []
    # the loop thread's end below is the test's doing: recorded, not reported as a failure
    monkeypatch.setattr(threading, "excepthook", ended.append)

    def stuck_then_gone():
        gate.wait()
        raise SystemExit   # ends the publisher, and the thread, before any batch is sent

    try:
        assert em.wait_connected(10.0)
        em._loop.call_soon_threadsafe(stuck_then_gone)
        for batch in batches[:3]:
            em.submit(batch)
        em.stop(0.2)   # stuck: the thread is still there after the deadline
        p = em.stats()["partials"]
        assert p["backlog"] == len(read_all(batches[:3])) and p["drops"] == {"backlog": 0}, p
        assert_balanced(p)
    finally:
        gate.set()
        em._thread.join(10.0)
    assert not em._thread.is_alive() and [e.exc_type for e in ended] == [SystemExit]
    em.stop()   # the thread is gone: what it never sent is lost, and counted
    p = em.stats()["partials"]
    assert_all_dropped(p, batches[:3])
    em.stop()   # counted once
    assert em.stats()["partials"] == p


def test_what_nats_never_took_is_dropped_once_the_loop_is_gone(nats_server):
    """NATS went away and the emitter is stopped: its loop ends with messages still queued.
    They are dropped at stop, not left as a backlog nobody will send."""
    batches, _ = instance_batches(9, "inst-down")
    em = start(nats_server.url, "inst-down")
    try:
        assert em.wait_connected(10.0)
        nats_server.kill()
        assert wait_for(lambda: not em.stats()["connected"], 10.0)
        for batch in batches:
            em.submit(batch)
        # all taken into the queue: the loop only tries, and fails, to publish the first
        assert wait_for(lambda: em._lane.counts().waiting_batches == 0, 10.0)
        assert em.stats()["partials"]["backlog"] == len(read_all(batches))
    finally:
        em.stop(10.0)   # the publish under way fails, the loop sees it is closing and ends
    assert not em._thread.is_alive()
    p = em.stats()["partials"]
    assert_all_dropped(p, batches)


def test_a_full_queue_drops_the_oldest_waiting_message_never_the_one_in_flight(nats_server,
                                                                              nats_admin):
    """The queue fills while the stream has a publish to answer (the server paused with SIGSTOP):
    the message dropped is the oldest waiting one, and the one in flight, acked once the server
    resumes, is counted sent -- with its own panes, so the balances hold message for message."""
    batches, _ = instance_batches(13, "inst-flight")
    msgs = [(part, data) for batch in batches for part, data in batch]
    first = msgs[:1]   # sent before the pause: the stream is there and answers
    # a message with panes to go out while the server is paused, then two without
    at = next(i for i, (_, data) in enumerate(msgs) if i and pf.read(data).panes
              and not pf.read(msgs[i + 1][1]).panes)
    flying, waiting = msgs[at], msgs[at + 1:at + 3]
    em = start(nats_server.url, "inst-flight", max_backlog=2)   # the one in flight and one
    try:
        assert em.wait_connected(10.0)
        em.submit(first)
        assert wait_for(lambda: em.stats()["partials"]["sent"] == 1, 10.0)
        os.kill(nats_server.proc.pid, signal.SIGSTOP)
        try:
            em.submit([flying])
            assert wait_for(lambda: em._in_flight, 1.0)   # written, its ack not read yet
            for msg in waiting:
                em.submit([msg])
            # the second waiting message overflows the queue: the first waiting one goes
            assert wait_for(lambda: em.stats()["partials"]["drops"]["backlog"] == 1, 1.0)
        finally:
            os.kill(nats_server.proc.pid, signal.SIGCONT)
        sent = [first, [flying], waiting[1:]]
        assert wait_for(lambda: em.stats()["partials"]["sent"] == len(read_all(sent)), 10.0)
        p = em.stats()["partials"]   # before stop(), which would drop whatever is left
    finally:
        em.stop()
    assert em.stats()["partials"] == p
    assert_balanced(p)
    assert p["backlog"] == p["panes_backlog"] == 0, p
    assert p["drops"] == {"backlog": 1} and p["pane_drops"] == {"backlog": 0}, p
    assert p["panes_sent"] == panes_in(sent) > panes_in([first]), p
    assert stored_ids(nats_admin) == ids(sent)


def test_the_daemon_shows_the_refused_in_its_counters_stats_line_and_metrics():
    """What the daemon reports of the partials emitter (service/pipeline_snapshot.py,
    service/metrics.py) carries the refused messages and panes with the other drops."""
    batches, _ = instance_batches(11, "inst-report")
    em = PartialsEmitter(["nats://127.0.0.1:4222"], "inst-report")   # never started
    for batch in batches:
        em.submit(batch)
    snap = PipelineSnapshot.from_stats({}, {}, em.stats())
    n, panes = len(read_all(batches)), panes_in(batches)
    final = snap.counters(1.0)["partials"]
    assert final["drops"] == {"backlog": n}, final
    assert final["pane_drops"] == {"backlog": panes, "partial_buffer_full": 0}, final
    assert_balanced(final)
    line = snap.stats_line()["partials"]
    assert line["drops"] == {"backlog": n} and line["pane_drops"] == {"backlog": panes}, line
    engine_thread = SimpleNamespace(is_alive=lambda: True, error=None, ident=1)
    collector = PipelineCollector(lambda: snap, Health(lambda: snap, engine_thread, 30.0),
                                  Buckets([1.0]), Buckets([1.0]))
    samples = {(s.name, s.labels.get("reason")): s.value
               for family in collector.collect() for s in family.samples}
    assert samples[("telemetry_cy_partials_dropped_total", "backlog")] == n
    assert samples[("telemetry_cy_partial_panes_dropped_total", "backlog")] == panes
    assert samples[("telemetry_cy_partials_backlog", None)] == 0
