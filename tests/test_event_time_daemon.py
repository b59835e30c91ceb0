"""Event time end to end: a real mosquitto, a real nats-server, `telemetry-cy run --time event`.

`--allowed-lateness 2s --window 3s --emit-every 1s --late-subject late`. Keys send readings whose
event time `t` trails the newest one by less than the lateness (out of order): every window they
fall in is recomputed here from the readings alone and must match what NATS receives. Then
readings 8 s behind the newest event time (late: counted, published on late.<device>.<sensor>,
in no aggregate) and readings ten minutes ahead of their arrival (future: dropped, moving
nothing). One last reading far enough ahead closes every window the others are in; at SIGTERM
it is the one reading still open, and the final counters balance.
"""

from __future__ import annotations

import json
import math
import random
import time

from support.brokers import NatsSubscriber
from support.daemon import assert_balanced, paho_publisher, payload, publish_all
from support.model import event_windows
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.sink.subjects import parse_subject

DEVICES = [f"dev-{i}" for i in range(4)] + ["gw.1 ü"]  # one name that needs escaping
WINDOW, EVERY, LATENESS = 3.0, 1.0, 2.0


def test_event_time_done_when(tmp_path, mosquitto, nats_server, spawn):
    rng = random.Random(11)
    aggs = NatsSubscriber(nats_server.url, subject="agg.>")
    late_sub = NatsSubscriber(nats_server.url, subject="late.>")
    d = spawn(mosquitto.url, nats_server.url, "--time", "event", "--allowed-lateness", "2s",
              "--late-subject", "late", window="3s", emit_every="1s")
    try:
        d.wait_up()
        pub = paho_publisher(mosquitto, "tcy-event-pub")
        base = math.floor(time.time()) + 0.5
        # in time: event times rise by 0.05 s per reading, each trailing the newest by < 1.8 s
        in_time: dict[str, list[tuple[float, float]]] = {dev: [] for dev in DEVICES}
        items, newest = [], -math.inf
        for i in range(400):
            dev = DEVICES[i % len(DEVICES)]
            t = base + i * 0.05 - rng.uniform(0.0, 1.8) + rng.random() * 1e-6  # distinct t
            t = max(t, newest - 1.8)
            newest = max(newest, t)
            v = rng.uniform(-100.0, 100.0)
            in_time[dev].append((t, v))
            items.append((f"site/{i % 7}/sensor/{i}", payload(dev, "temp", v, u="C", t=t)))
        # ten minutes ahead of their arrival: dropped as future, for keys that have windows
        future = [(f"site/f/sensor/{i}", payload(DEVICES[i % 3], "temp", 1e6,
                                                  t=time.time() + 600.0 + i))
                  for i in range(5)]
        items[100:100] = future
        publish_all(pub, items)
        # 8 s behind the newest event time: late
        late = [(DEVICES[i % len(DEVICES)], newest - 8.0 + i * 0.01, -7.0 - i) for i in range(6)]
        publish_all(pub, [(f"site/l/sensor/{i}", payload(dev, "temp", v, u="C", t=t, n=i))
                          for i, (dev, t, v) in enumerate(late)])
        # the watermark passes the end of every window the readings above are in
        closer_t = newest + WINDOW + LATENESS + 2 * EVERY
        publish_all(pub, [("site/c/sensor/c", payload("closer", "temp", 0.0, t=closer_t))])
        n_readings = sum(len(v) for v in in_time.values()) + 1
        assert d.wait_stats(lambda s: s.get("readings", 0) >= n_readings
                            and s.get("drops", {}).get("late", 0) >= len(late), 30.0), d.tail()
        pub.disconnect()
        pub.loop_stop()
        code, final = d.stop()
    finally:
        d.cleanup()

    assert code == 0, d.tail()
    want = {(dev, end): w for dev, rs in in_time.items()
            for end, w in event_windows(rs, WINDOW, EVERY).items()}
    msgs = aggs.wait_count(len(want), 15.0)
    got = {}
    for msg in msgs:
        body = decode_body("json", msg.data)
        key = (body["device"], body["sensor"])
        assert parse_subject("agg", msg.subject) == key
        assert body["device"] != "closer", body  # its windows are still open
        got[(body["device"], body["window_end"])] = body
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        for name in ("count", "min", "max", "first", "last", "window_start"):
            assert g[name] == w[name], (key, name, g[name], w[name])
        for name, scale in (("sum", w["magnitude"]), ("mean", w["magnitude"] / w["count"]),
                            ("stddev", w["magnitude"] / w["count"])):
            assert abs(g[name] - w[name]) <= 1e-9 * scale, (key, name)
        assert g["unit"] == "C"

    late_msgs = late_sub.wait_count(len(late), 15.0)
    bodies = sorted((json.loads(m.data) for m in late_msgs), key=lambda b: b["n"])
    assert [(b["device"], b["t"], b["value"]) for b in bodies] == late
    for m, b in zip(sorted(late_msgs, key=lambda m: json.loads(m.data)["n"]), bodies):
        assert parse_subject("late", m.subject) == (b["device"], "temp")
        assert set(b) == {"device", "sensor", "value", "unit", "t", "n", "arrival"}
        assert b["unit"] == "C" and abs(b["arrival"] - time.time()) < 120

    drops = final["drops"]
    assert drops["late"] == len(late) and drops["future"] == len(future), final
    assert final["readings"] == n_readings and final["open_readings"] == 1, final
    ev = final["event_time"]
    assert ev["no_event_time"] == 0 and ev["late_unrouted"] == 0, final
    assert ev["late_routed"] == ev["late_published"] == len(late), final
    assert ev["late_dropped"] == ev["late_backlog"] == 0, final
    assert final["published"] == final["aggregates"] == len(want), final
    assert_balanced(final)
    aggs.close()
    late_sub.close()
