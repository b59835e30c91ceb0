"""``telemetry-cy merge`` on a 3-node NATS cluster (docs/scale-out.md).

Three instances (pure engines with their partials, in this process, so the test controls each
message; tests/test_scaleout_run.py runs the daemons) split one stream at random and publish
their partials to the replicated JetStream stream, each through another node of the cluster;
two merge worker processes own half of the partitions each. The aggregates that come out on
``agg.>`` are the windows one engine fed the whole stream gives.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request

from support.brokers import NatsSubscriber, free_port, wait_for
from support.daemon import REPO
from support.scaleout import EMIT, LATENESS, WINDOW, assert_same_windows, stream
from telemetry_cy.engine import _engine_py
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.instance_partials import InstancePartials
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.sink.partials_stream import STREAM, SUBJECT_PREFIX

PARTITIONS = 4


def engine():
    return _engine_py.Engine(window=WINDOW, emit_every=EMIT, time="event",
                             allowed_lateness=LATENESS, key_ttl=1e6, idle_timeout=1.0,
                             partials=True)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def start_worker(tmp_path, cluster, name, own, *extra):
    err = open(tmp_path / f"{name}.stderr", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "telemetry_cy.service.cli", "merge", "--nats-url", cluster.url,
         "--worker-id", name, "--window", f"{WINDOW}s", "--emit-every", f"{EMIT}s",
         "--allowed-lateness", f"{LATENESS}s", "--partitions", str(PARTITIONS), "--own", own,
         *extra],
        stdout=subprocess.PIPE, stderr=err, cwd=REPO, stdin=subprocess.DEVNULL,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    err.close()
    return proc


def test_two_workers_merge_three_instances_into_one_engines_windows(tmp_path, nats_cluster):
    admins = [NatsSubscriber(url, subject=None) for url in nats_cluster.urls]
    sub = NatsSubscriber(nats_cluster.urls[2], subject="agg.>")
    workers = []
    want: list = []
    try:
        admins[0].add_stream(STREAM, subjects=(f"{SUBJECT_PREFIX}.>",), num_replicas=3,
                             max_bytes=1 << 26)
        admins[0].add_stream("AGG", subjects=("agg.>",), num_replicas=3, max_bytes=1 << 26)
        # one worker publishes through JetStream with message ids, the other on core NATS
        metrics_port = free_port()
        workers = [start_worker(tmp_path, nats_cluster, "wA", "0-1", "--jetstream",
                                "--metrics-port", str(metrics_port)),
                   start_worker(tmp_path, nats_cluster, "wB", "2-3")]
        # a worker is ready once it has subscribed: it says so on stderr
        assert wait_for(lambda: all(b'"ready"' in (tmp_path / f"{n}.stderr").read_bytes()
                                    for n in ("wA", "wB")), 15.0), \
            [(tmp_path / f"{n}.stderr").read_text()[-2000:] for n in ("wA", "wB")]

        readings = stream(11, 600, 12)
        ws = pf.window_settings(WINDOW, EMIT, "event", LATENESS)
        engines = [engine() for _ in range(3)]
        outs = [InstancePartials(e, ws, f"inst{i}", PARTITIONS) for i, e in enumerate(engines)]
        single = engine()

        def publish(i, msgs):
            async def go():
                js = admins[i].nc.jetstream()
                for part, data in msgs:
                    await js.publish(f"{SUBJECT_PREFIX}.{part}", data)
            if msgs:
                admins[i].call(go())

        # partials of another window setting, and bytes that are no partial: refused, counted
        other = pf.window_settings(2 * WINDOW, EMIT, "event", LATENESS)
        publish(0, [(0, pf.write(pf.KIND_PROGRESS, other, "stranger", 0, 0, 0, PARTITIONS)),
                    (1, b"not a partial")])
        rng = random.Random(3)
        for j, (device, sensor, value, t) in enumerate(readings):
            i = j if j < 3 else rng.randrange(3)
            engines[i].push_reading(device, sensor, value, t, unit="u", t=t)
            single.push_reading(device, sensor, value, t, unit="u", t=t)
            publish(i, outs[i].collect())
        end = readings[-1][3] + 100.0
        for i, (e, o) in enumerate(zip(engines, outs)):
            e.tick(end)
            publish(i, o.collect() + o.leave())
        want = [a.as_dict() for a in single.tick(end)]
        assert single.stats()["drops"]["late"] == 0

        assert wait_for(lambda: len(sub.msgs) >= len(want), 20.0), (len(sub.msgs), len(want))
        time.sleep(0.5)   # and no more (a window twice would show)
        got = [decode_body("json", m.data) for m in sub.msgs]
        for g in got:
            g.setdefault("quantile_names", ())
            g.setdefault("quantile_values", ())
        assert_same_windows(want, got, ())
        # the stream holds every window once, each with its (key, window) message id
        stored = admins[1].stream_msgs("AGG")
        assert len(stored) == len(want)
        ids = [m.headers.get("Nats-Msg-Id") for m in stored if m.headers]
        assert len(set(ids)) == len(ids) and ids    # the JetStream worker's, all distinct
        # its metrics say the same (the snapshot of its last turn)
        assert wait_for(lambda: f"telemetry_cy_merge_published_total {float(len(ids))}"
                        in scrape(metrics_port), 5.0), scrape(metrics_port)
        text = scrape(metrics_port)
        assert "telemetry_cy_merge_owned_partitions 2.0" in text
        assert 'telemetry_cy_merge_refused_total{reason="settings"} 1.0' in text
        assert "telemetry_cy_merge_too_large_total 0.0" in text
    finally:
        for w in workers:
            w.terminate()
        finals = []
        for w in workers:
            out, _ = w.communicate(timeout=20)
            finals.append(out)
        sub.close()
        for a in admins:
            a.close()
    stats = [json.loads(out.decode().splitlines()[-1]) for out in finals]
    for st in stats:
        assert st["incomplete"] == st["stale"] == st["gaps"] == 0, st
    assert stats[0]["refused"] == {"settings": 1, "foreign": 1}, stats[0]
    assert stats[1]["refused"] == {}, stats[1]
    assert sum(st["published"] for st in stats) == len(want)


def worker_stats(tmp_path, name) -> dict:
    lines = [json.loads(line) for line in (tmp_path / f"{name}.stderr").read_text().splitlines()
             if line.startswith("{")]
    return lines[-1] if lines else {}


def test_a_killed_worker_loses_no_window_and_the_stream_holds_each_once(tmp_path, nats_cluster):
    admins = [NatsSubscriber(url, subject=None) for url in nats_cluster.urls]
    workers: dict = {}
    try:
        admins[0].add_stream(STREAM, subjects=(f"{SUBJECT_PREFIX}.>",), num_replicas=3,
                             max_bytes=1 << 26)
        admins[0].add_stream("AGG", subjects=("agg.>",), num_replicas=3, max_bytes=1 << 26)
        auto = ("--lease", "2s", "--jetstream", "--instance-timeout", "60s", "--replicas", "3")
        for name in ("wA", "wB"):
            workers[name] = start_worker(tmp_path, nats_cluster, name, "auto", *auto)
        # both own a share: leases taken, the first comer handing the extra over
        assert wait_for(lambda: all(worker_stats(tmp_path, n).get("own") for n in workers)
                        and sum(len(worker_stats(tmp_path, n)["own"]) for n in workers)
                        == PARTITIONS, 20.0), [worker_stats(tmp_path, n) for n in workers]

        readings = stream(23, 900, 12)
        ws = pf.window_settings(WINDOW, EMIT, "event", LATENESS)
        engines = [engine() for _ in range(2)]
        outs = [InstancePartials(e, ws, f"inst{i}", PARTITIONS) for i, e in enumerate(engines)]
        single = engine()

        def publish(i, msgs):
            async def go():
                js = admins[i].nc.jetstream()
                for part, data in msgs:
                    await js.publish(f"{SUBJECT_PREFIX}.{part}", data)
            if msgs:
                admins[i].call(go())

        def feed(part):
            for j, (device, sensor, value, t) in part:
                i = j % 2
                engines[i].push_reading(device, sensor, value, t, unit="u", t=t)
                single.push_reading(device, sensor, value, t, unit="u", t=t)
                publish(i, outs[i].collect())
        items = list(enumerate(readings))
        feed(items[:450])
        # some windows are out, then one worker dies without a word
        assert wait_for(lambda: len(admins[1].stream_msgs("AGG")) > 20, 15.0)
        workers["wA"].kill()
        workers["wA"].wait(10)
        feed(items[450:])
        end = readings[-1][3] + 100.0
        for i, (e, o) in enumerate(zip(engines, outs)):
            e.tick(end)
            publish(i, o.collect() + o.leave())
        want = [a.as_dict() for a in single.tick(end)]
        assert single.stats()["drops"]["late"] == 0

        # the survivor takes the dead one's partitions over and replays them from the stream
        assert wait_for(lambda: len(admins[1].stream_msgs("AGG")) >= len(want), 30.0), \
            (len(admins[1].stream_msgs("AGG")), len(want), worker_stats(tmp_path, "wB"))
        time.sleep(1.0)
        stored = admins[1].stream_msgs("AGG")
        ids = [m.headers["Nats-Msg-Id"] for m in stored]
        assert len(ids) == len(set(ids)) == len(want)     # every window, each once
        got = [decode_body("json", m.data) for m in stored]
        for g in got:
            g.setdefault("quantile_names", ())
            g.setdefault("quantile_values", ())
        assert_same_windows(want, got, ())
        st = worker_stats(tmp_path, "wB")
        assert st["own"] == list(range(PARTITIONS)) and st["takeovers"] >= 1, st
        # the replays began at the floor wA committed, past what was merged and emitted: each
        # skipped a part of its partition's partials (and replayed at most the rest)
        partials = admins[2].stream_msgs(STREAM)
        assert st["replay_from"] and st["replayed"] > 0, st
        skipped = 0
        for p, from_seq in st["replay_from"].items():
            seqs = [m.seq for m in partials if m.subject == f"{SUBJECT_PREFIX}.{p}"]
            assert from_seq is not None and from_seq > seqs[0], (p, from_seq, seqs[:5])
            skipped += sum(seq < from_seq for seq in seqs)
        assert skipped > 0 and st["replayed"] < sum(
            m.subject in {f"{SUBJECT_PREFIX}.{p}" for p in st["replay_from"]}
            for m in partials), (skipped, st)
    finally:
        for w in workers.values():
            if w.poll() is None:
                w.terminate()
            w.communicate(timeout=20)
        for a in admins:
            a.close()


def test_print_nats_config_names_the_stream_the_workers_read():
    out = subprocess.run([sys.executable, "-m", "telemetry_cy.service.cli", "merge",
                          "--print-nats-config", "--replicas", "3"], capture_output=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                         timeout=60, check=True).stdout.decode()
    add = [line for line in out.splitlines() if line.startswith(f"nats stream add {STREAM} ")]
    assert len(add) == 1 and f"'{SUBJECT_PREFIX}.>'" in add[0] and "--replicas 3" in add[0]


def test_a_workers_windows_go_out_as_the_body_encoder_writes_them_and_a_too_long_one_counts(
        nats_server):
    # the core NATS emit path (the wire encoder's PUB chunks) against a real server: subjects
    # and bodies as subject_for/encode_json give them, in order; a subject longer than a server
    # takes is not sent but counted
    import asyncio

    import nats

    from telemetry_cy.service.merge_worker import Aggregate, MergeWorker
    from telemetry_cy.sink.bodies import encode_json
    from telemetry_cy.sink.subjects import subject_for

    sub = NatsSubscriber(nats_server.url)
    try:
        ws = pf.window_settings(WINDOW, EMIT, "event", LATENESS)
        worker = MergeWorker([nats_server.url], "w-encode", ws, PARTITIONS, [0])
        aggs = [Aggregate(device, "temp", "C", 0.0, 5.0, 3, 6.5, 6.5 / 3, 1.0, 3.5, 0.75, 1.0,
                          2.0) for device in ("dev.1", "d" * 4000, "dév 2")]

        async def go() -> None:
            nc = await nats.connect(nats_server.url)
            try:
                await worker._publish(nc, aggs)
                await nc.flush()
            finally:
                await nc.close()
        asyncio.run(go())
        got = sub.wait_count(2)
        assert [(m.subject, m.data) for m in got] == [
            (subject_for("agg", a.device, a.sensor), encode_json(a)) for a in (aggs[0], aggs[2])]
        assert (worker.published, worker.too_large) == (2, 1)
        assert worker.stats()["too_large"] == 1
    finally:
        sub.close()
