"""The whole scale-out path with real brokers (docs/scale-out.md): mosquitto spreads one stream
over two ``telemetry-cy run --output partials`` instances (a ``$share`` group), their partials go
to the replicated stream of a 3-node NATS cluster, two ``telemetry-cy merge`` workers own half
of the partitions each. The windows that come out are those one engine fed the whole stream
gives (event time)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from support.brokers import NatsSubscriber, wait_for
from support.daemon import REPO, paho_publisher, payload, publish_all
from support.scaleout import EMIT, LATENESS, WINDOW, assert_same_windows
from telemetry_cy.engine import _engine_py
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.sink.partials_stream import STREAM, SUBJECT_PREFIX

PARTITIONS = 4
SETTINGS = ("--window", f"{WINDOW}s", "--emit-every", f"{EMIT}s",
            "--allowed-lateness", f"{LATENESS}s")


def start_worker(tmp_path, cluster, name, own):
    err = open(tmp_path / f"{name}.stderr", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "telemetry_cy.service.cli", "merge", "--nats-url", cluster.url,
         "--worker-id", name, *SETTINGS, "--partitions", str(PARTITIONS), "--own", own],
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
                     for i in range(2)]
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
        pub = paho_publisher(mosquitto, "scaleout-pub")
        try:
            publish_all(pub, items)
        finally:
            pub.loop_stop()
            pub.disconnect()
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
