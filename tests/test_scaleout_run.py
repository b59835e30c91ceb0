"""The whole scale-out path with real brokers (docs/scale-out.md): mosquitto spreads one stream
over three ``telemetry-cy run --output partials`` instances (a ``$share`` group), their partials go
to the replicated stream of a 3-node NATS cluster, two ``telemetry-cy merge`` workers own half
of the partitions each. The windows that come out are those one engine fed the whole stream
gives (event time)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

from support.brokers import NatsSubscriber, free_port, wait_for
from support.daemon import REPO, assert_balanced, paho_publisher, payload, publish_all
from support.scaleout import EMIT, LATENESS, WINDOW, assert_same_windows
from telemetry_cy.engine import _engine_py
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.pane_merge import PaneMerger
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.sink.partials_stream import STREAM, SUBJECT_PREFIX

PARTITIONS = 4
SETTINGS = ("--window", f"{WINDOW}s", "--emit-every", f"{EMIT}s",
            "--allowed-lateness", f"{LATENESS}s")


def publish_once(mosquitto, client_id: str, items) -> None:
    """Publishes items (topic, payload) at QoS 1 and waits for every PUBACK."""
    pub = paho_publisher(mosquitto, client_id)
    try:
        publish_all(pub, items)
    finally:
        pub.loop_stop()
        pub.disconnect()


def start_worker(tmp_path, cluster, name, own, *extra):
    err = open(tmp_path / f"{name}.stderr", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "telemetry_cy.service.cli", "merge", "--nats-url", cluster.url,
         "--worker-id", name, *SETTINGS, "--partitions", str(PARTITIONS), "--own", own,
         *extra],
        stdout=subprocess.PIPE, stderr=err, cwd=REPO, stdin=subprocess.DEVNULL,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    err.close()
    return proc


def test_shared_subscription_instances_and_merge_workers_give_one_engines_windows(
        tmp_path, mosquitto, nats_cluster, spawn):
    admin = NatsSubscriber(nats_cluster.urls[0], subject=None)
    sub = NatsSubscriber(nats_cluster.urls[2], subject="agg.>")
    workers = []
    try:
        admin.add_stream(STREAM, subjects=(f"{SUBJECT_PREFIX}.>",), num_replicas=3,
                         max_bytes=1 << 26)
        workers = [start_worker(tmp_path, nats_cluster, "wA", "0-1"),
                   start_worker(tmp_path, nats_cluster, "wB", "2-3")]
        instances = [spawn(mosquitto.url, nats_cluster.url, "--time", "event",
                           "--allowed-lateness", f"{LATENESS}s", "--output", "partials",
                           "--partitions", str(PARTITIONS), name=f"inst{i}",
                           topic="$share/tcy/site/+/sensor/+", window=f"{WINDOW}s",
                           emit_every=f"{EMIT}s")
                     for i in range(3)]
        for d in instances:
            d.wait_up()
        assert wait_for(lambda: all(b'"ready"' in (tmp_path / f"{n}.stderr").read_bytes()
                                    for n in ("wA", "wB")), 15.0)

        # event times in the recent past, in order but for a small disorder within the
        # allowed lateness: nothing is late for one engine, nor for any instance
        base = time.time() - 30.0
        items, single = [], _engine_py.Engine(window=WINDOW, emit_every=EMIT, time="event",
                                              allowed_lateness=LATENESS, key_ttl=1e6)
        for i in range(600):
            device, value = f"dev{i % 12}", float((i * 37) % 101) - 50.0
            t = base + i * 0.02 - (0.3 if i % 7 == 0 else 0.0)
            items.append((f"site/{device}/sensor/temp",
                          payload(device, "temp", value, t=t, u="C")))
            single.push_reading(device, "temp", value, t, unit="C", t=t)
        publish_once(mosquitto, "scaleout-pub", items)
        finals = [d.stop()[1] for d in instances]
        received = [f["received"] for f in finals]
        assert sum(received) == len(items) and all(received), received
        want = [a.as_dict() for a in single.tick(base + 1e6)]
        assert single.stats()["drops"]["late"] == 0

        assert wait_for(lambda: len(sub.msgs) >= len(want), 20.0), (len(sub.msgs), len(want))
        time.sleep(0.5)   # and no more (a window twice would show)
        got = [decode_body("json", m.data) for m in sub.msgs]
        for g in got:
            g.setdefault("quantile_names", ())
            g.setdefault("quantile_values", ())
        assert_same_windows(want, got, ())
    finally:
        for w in workers:
            w.terminate()
        outs = [w.communicate(timeout=20)[0] for w in workers]
        sub.close()
        admin.close()
    stats = [json.loads(out.decode().splitlines()[-1]) for out in outs]
    for st in stats:
        assert st["incomplete"] == st["stale"] == st["gaps"] == 0 and not st["refused"], st


def test_an_instance_killed_mid_run_gives_incomplete_windows_never_wrong_ones(
        tmp_path, mosquitto, nats_cluster, spawn):
    admin = NatsSubscriber(nats_cluster.urls[0], subject=None)
    sub = NatsSubscriber(nats_cluster.urls[1], subject="agg.>")
    workers = []
    try:
        admin.add_stream(STREAM, subjects=(f"{SUBJECT_PREFIX}.>",), num_replicas=3,
                         max_bytes=1 << 26)
        workers = [start_worker(tmp_path, nats_cluster, f"w{i}", own, "--instance-timeout", "2s")
                   for i, own in enumerate(("0-1", "2-3"))]
        instances = [spawn(mosquitto.url, nats_cluster.url, "--time", "event",
                           "--allowed-lateness", f"{LATENESS}s", "--output", "partials",
                           "--partitions", str(PARTITIONS), name=f"inst{i}",
                           topic="$share/tcy/site/+/sensor/+", window=f"{WINDOW}s",
                           emit_every=f"{EMIT}s")
                     for i in range(3)]
        for d in instances:
            d.wait_up()
        base = time.time() - 60.0
        single = _engine_py.Engine(window=WINDOW, emit_every=EMIT, time="event",
                                   allowed_lateness=LATENESS, key_ttl=1e6)
        halves: list[list] = [[], []]
        for i in range(1200):
            device, value = f"dev{i % 12}", float((i * 37) % 101) - 50.0
            t = base + i * 0.02
            halves[i >= 600].append((f"site/{device}/sensor/temp",
                                     payload(device, "temp", value, t=t, u="C")))
            single.push_reading(device, "temp", value, t, unit="C", t=t)
        pub = paho_publisher(mosquitto, "scaleout-kill-pub")
        try:
            publish_all(pub, halves[0])
            time.sleep(1.5)           # a tick or so: its partials so far are out
            instances[2].kill9()      # and then it is gone, with what its open panes held
            publish_all(pub, halves[1])
        finally:
            pub.loop_stop()
            pub.disconnect()
        # the workers declare it dead (2 s of silence) while the others still send heartbeats
        assert wait_for(lambda: all(b'"deaths": 1' in (tmp_path / f"w{i}.stderr").read_bytes()
                                    for i in range(2)), 15.0)
        for d in instances[:2]:
            d.stop()
        want = {(a.device, a.sensor, a.window_end): a.as_dict()
                for a in single.tick(base + 1e6)}
        time.sleep(2.0)
        got = [decode_body("json", m.data) for m in sub.msgs]
    finally:
        for w in workers:
            w.terminate()
        outs = [w.communicate(timeout=20)[0] for w in workers]
        sub.close()
        admin.close()
    stats = [json.loads(out.decode().splitlines()[-1]) for out in outs]
    assert sum(st["incomplete"] for st in stats) > 0, stats
    seen = set()
    for g in got:    # whatever is published is the single engine's window, once
        k = (g["device"], g["sensor"], g["window_end"])
        assert k not in seen
        seen.add(k)
        a = want[k]
        assert (a["count"], a["min"], a["max"], a["first"], a["last"]) == \
            (g["count"], g["min"], g["max"], g["first"], g["last"]), (k, a, g)
    assert got and len(got) < len(want)


def test_an_instance_counts_partials_under_their_own_name_and_balances(
        tmp_path, mosquitto, nats_server, spawn):
    """Partial mode's counters (docs/metrics.md, "Partial mode"): no aggregate published, the
    partial messages by kind, sent and their panes as the stream holds them, the balance."""
    admin = NatsSubscriber(nats_server.url, subject=None)
    port = free_port()
    try:
        d = spawn(mosquitto.url, nats_server.url, "--time", "event", "--allowed-lateness",
                  f"{LATENESS}s", "--output", "partials", "--partitions", str(PARTITIONS),
                  "--metrics-port", str(port), name="inst", window=f"{WINDOW}s",
                  emit_every=f"{EMIT}s")
        d.wait_up()
        base = time.time() - 30.0
        items = [(f"site/dev{i % 5}/sensor/temp",
                  payload(f"dev{i % 5}", "temp", float(i), t=base + i * 0.05, u="C"))
                 for i in range(300)]
        publish_once(mosquitto, "partials-count-pub", items)
        # heartbeats and progress go out while it runs, the engine's partial buffer holds the
        # panes it took; the stats line says so
        line = d.wait_stats(lambda s: s.get("partials", {}).get("panes", 0) > 0
                            and s["partials"]["progress"] > 0
                            and s["partials"]["buffer_bytes"] > 0, 20.0)
        assert line is not None, d.tail()
        assert line["published"] == 0 and line["emitted"] == 0, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'telemetry_cy_partials_total{kind="progress"}' in text, text
        assert "telemetry_cy_partials_sent_total" in text and \
            "telemetry_cy_published_total 0.0" in text
        # the partial buffer keeps its memory once it took panes, inside state_bytes too
        gauges = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
                  if ln.startswith(("telemetry_cy_partial_buffer_bytes ",
                                    "telemetry_cy_state_bytes "))}
        assert 0 < gauges["telemetry_cy_partial_buffer_bytes"] < \
            gauges["telemetry_cy_state_bytes"], gauges
        assert line["partials"]["buffer_bytes"] < line["state_bytes"], line
        code, final = d.stop()
        assert code == 0, d.tail()
        stored = [pf.read(m.data) for m in admin.stream_msgs(STREAM)]
    finally:
        admin.close()
    p = final["partials"]
    assert_balanced(final)    # the aggregate path balances at 0 == 0 + 0 + 0
    assert final["aggregates"] == final["published"] == 0, final
    assert final["readings"] == len(items) and p["local_windows"] > 0, final
    assert p["messages"] == p["sent"] + sum(p["drops"].values()) + p["backlog"], p
    assert p["backlog"] == 0 and p["drops"] == {"backlog": 0}, p
    assert p["pane_drops"] == {"backlog": 0, "partial_buffer_full": 0}, p
    assert p["panes"] == p["panes_sent"] and p["panes_backlog"] == 0, p
    assert 0 < p["buffer_bytes"] < final["state_bytes"], final
    # what it says it sent is what the stream holds: by kind, message for message, pane for pane
    assert p["sent"] == len(stored), (p, len(stored))
    kinds = {name: sum(m.kind == k for m in stored)
             for k, name in ((pf.KIND_PANES, "panes"), (pf.KIND_PROGRESS, "progress"),
                             (pf.KIND_HEARTBEAT, "heartbeat"), (pf.KIND_LEAVE, "leave"))}
    assert p["made"] == kinds and kinds["leave"] == PARTITIONS, (p, kinds)
    assert p["panes_sent"] == sum(len(m.panes) for m in stored)
    # every accepted reading is in exactly one pane sent
    assert sum(pane.count for m in stored for pane in m.panes) == len(items)


def test_panes_past_the_partial_buffer_are_counted_dropped_and_leave_sequence_gaps(
        tmp_path, mosquitto, nats_server, spawn):
    """partials_max_bytes tiny: many panes close between two ticks (a burst spanning many
    intervals of event time), most find the engine's partial buffer full. Each is counted
    (pane_drops[partial_buffer_full], in the stats line, the metrics and the final counters),
    the panes balance, and every partition's sequence skips where they would have been, so the
    merge workers count the gap."""
    admin = NatsSubscriber(nats_server.url, subject=None)
    port = free_port()
    try:
        d = spawn(mosquitto.url, nats_server.url, "--time", "event", "--allowed-lateness",
                  f"{LATENESS}s", "--output", "partials", "--partitions", str(PARTITIONS),
                  "--partials-max-bytes", "300", "--metrics-port", str(port), name="inst",
                  window=f"{WINDOW}s", emit_every=f"{EMIT}s")
        d.wait_up()
        base = time.time() - 60.0
        # 8 keys over 40 s of event time, published at once: far more than 300 bytes of panes
        # close before the engine thread's next tick drains them
        items = [(f"site/dev{i % 8}/sensor/temp",
                  payload(f"dev{i % 8}", "temp", float(i), t=base + i * 0.1, u="C"))
                 for i in range(400)]
        publish_once(mosquitto, "partials-lost-pub", items)
        line = d.wait_stats(lambda s: s.get("partials", {}).get("pane_drops", {})
                            .get("partial_buffer_full", 0) > 0, 20.0)
        assert line is not None, d.tail()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        lost_metric = [ln for ln in text.splitlines() if ln.startswith(
            'telemetry_cy_partial_panes_dropped_total{reason="partial_buffer_full"}')]
        assert lost_metric and float(lost_metric[0].split()[-1]) > 0, text
        code, final = d.stop()
        assert code == 0, d.tail()
        stored = [pf.read(m.data) for m in admin.stream_msgs(STREAM)]
    finally:
        admin.close()
    p = final["partials"]
    assert_balanced(final)
    lost = p["pane_drops"]["partial_buffer_full"]
    assert lost > 0 and p["pane_drops"]["backlog"] == 0, p
    # the panes balance, and the messages still do
    assert p["panes"] == p["panes_sent"] + sum(p["pane_drops"].values()) + p["panes_backlog"], p
    assert p["messages"] == p["sent"] + sum(p["drops"].values()) + p["backlog"], p
    assert p["sent"] == len(stored) and p["panes_sent"] == sum(len(m.panes) for m in stored)
    # what was sent is short of the readings by what the lost panes held, never more
    sent_readings = sum(pane.count for m in stored for pane in m.panes)
    assert 0 < sent_readings < final["readings"] == len(items), (sent_readings, final)
    # every partition's sequence skips where panes were lost: the merge sees a gap there
    for part in range(PARTITIONS):
        seqs = [m.seq for m in stored if m.partition == part]
        assert seqs == sorted(seqs) and seqs[-1] + 1 > len(seqs), (part, seqs)
    # merged, those gaps give incomplete windows, never short ones (issue #14): every window
    # published is the single engine's, every other one the merger was given a pane of is
    # counted incomplete
    single = _engine_py.Engine(window=WINDOW, emit_every=EMIT, time="event",
                               allowed_lateness=LATENESS, key_ttl=1e6)
    for i in range(len(items)):
        single.push_reading(f"dev{i % 8}", "temp", float(i), base + i * 0.1, unit="C",
                            t=base + i * 0.1)
    want = {(a.device, a.sensor, a.window_end): a.as_dict() for a in single.tick(base + 1e6)}
    merger = PaneMerger(pf.window_settings(WINDOW, EMIT, "event", LATENESS))
    for m in stored:
        merger.take(m, 0.0)
    got = merger.emit()
    for g in got:
        a = want[(g["device"], g["sensor"], g["window_end"])]
        assert (a["count"], a["min"], a["max"], a["first"], a["last"]) == \
            (g["count"], g["min"], g["max"], g["first"], g["last"]), (a, g)
    given = {(pane.device, pane.sensor, m.interval) for m in stored for pane in m.panes}
    panes = round(WINDOW / EMIT)
    missing = {k for k in set(want) - {(g["device"], g["sensor"], g["window_end"]) for g in got}
               if any((k[0], k[1], j) in given
                      for j in range(round(k[2] / EMIT) - panes, round(k[2] / EMIT)))}
    assert merger.stats.gaps > 0 and merger.stats.incomplete == len(missing) > 0, merger.stats


def test_demo_scale_out_runs_the_deployment_and_aggregates_come_out():
    out = subprocess.run(
        [sys.executable, "-m", "telemetry_cy.service.cli", "demo", "--scale-out", "--duration",
         "8", "--rate", "400", "--window", "4", "--emit-every", "1", "--allowed-lateness", "1"],
        capture_output=True, cwd=REPO, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}).stdout.decode()
    lines = [ln for ln in out.splitlines() if ln.startswith("sent ")]
    assert lines, out
    last = lines[-1]
    # both workers own partitions, and windows reached agg.>
    assert last.count("own=[]") == 0 and int(last.rsplit(" ", 1)[1]) > 0, out
