"""What the NATS fault tests share: a steady MQTT load, and the checks after a NATS fault.

``Load`` publishes QoS 0 at a set rate round-robin over a set of keys; ``recover_and_stop``
waits until publishing resumes by itself, stops the load and the daemon and checks the final
counters; ``stream_check`` compares what a JetStream stream on the server stored with what the
daemon says it published; ``logged_backlog_drops`` sums the aggregates the daemon's log says it
dropped from its NATS backlog. Used by tests/test_faults_nats.py and tests/test_faults_tls.py.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

from support.daemon import assert_balanced, payload
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, paced, publish_frame


def logged_backlog_drops(d) -> int:
    """Aggregates the daemon logged as dropped from the NATS backlog (each warning names them)."""
    return sum(int(r.get("aggregates", 0)) for r in d.records()
               if r.get("reason") == "emit_backlog")


def aggregates_by_tick(msgs) -> dict[float, collections.Counter]:
    """window_end -> Counter of (device, sensor) over the received aggregates."""
    ticks: dict[float, collections.Counter] = collections.defaultdict(collections.Counter)
    for m in msgs:
        body = decode_body("json", m.data)
        ticks[body["window_end"]][(body["device"], body["sensor"])] += 1
    return ticks


@dataclasses.dataclass
class Recovery:
    resumed: dict     # the first stats line with NATS up and publishing again
    later: dict       # a stats line further on: drops after the recovery would show against it
    seconds: float    # from `since` to `resumed`
    sent: int
    final: dict


def recover_and_stop(d, load, published_before: int, keys: int, since: float,
                     later_batches: int = 2) -> Recovery:
    """After a NATS fault: publishing resumes by itself (NATS up, two more tick batches of
    `keys` published), goes on (`later_batches` more), then the load stops and the daemon
    stops cleanly: every message sent became a reading, no ingest_full, the counters balance.
    The load is stopped whatever happens."""
    try:
        resumed = d.wait_stats(lambda s: s.get("nats") == "up"
                               and s.get("published", 0) >= published_before + 2 * keys, 30.0)
        assert resumed is not None, f"publishing did not resume:\n{d.tail()}"
        seconds = time.monotonic() - since
        later = d.wait_stats(
            lambda s: s.get("published", 0) >= resumed["published"] + later_batches * keys, 15.0)
        assert later is not None, d.tail()
    finally:
        sent = load.stop()
    assert d.wait_stats(lambda s: s.get("readings", 0) >= sent, 15.0), d.tail()
    time.sleep(1.2)   # the last windows close
    code, final = d.stop()
    assert code == 0, d.tail()
    assert_balanced(final)
    assert final["received"] == sent and final["readings"] == sent, final
    assert final["drops"]["ingest_full"] == 0, final
    return Recovery(resumed, later, seconds, sent, final)


def stream_check(stored: list, final: dict, d, keys: int) -> tuple[int, int, bool]:
    """What the server received across NATS faults (a JetStream stream on agg.>; the daemon
    publishes core NATS): exactly `published` distinct aggregates, none twice -- except that a
    batch cut by a lost connection (a `publish failed` line in the log) may be there twice, or
    although counted as dropped when the stop cut it. Returns (distinct, twice, cut)."""
    ticks = aggregates_by_tick(stored)
    distinct = sum(len(c) for c in ticks.values())
    twice = sum(n - 1 for c in ticks.values() for n in c.values())
    cut = any("publish failed" in str(r.get("msg")) for r in d.records())
    if cut:
        assert final["published"] <= distinct <= final["published"] + keys, (distinct, final)
        assert twice <= keys, twice
    else:
        assert distinct == final["published"] and twice == 0, (distinct, twice, final)
    return distinct, twice, cut


class Load:
    """A QoS 0 publisher thread sending `rate` msg/s round-robin over `keys` keys."""

    def __init__(self, broker, client_id: str, keys: int, rate: float, prefix: str):
        self.frames = [publish_frame(f"site/{prefix}/sensor/t", payload(f"{prefix}{k:03d}",
                                                                         value=k))
                       for k in range(keys)]
        self.pub = RawPublisher(broker.host, broker.port, client_id)
        self._stop = threading.Event()
        n = len(self.frames)
        self._t = threading.Thread(target=paced, args=(self.pub, lambda now, m: [
            self.frames[(self.pub.sent + j) % n] for j in range(m)], rate, 0.0, self._stop),
            daemon=True)
        self._t.start()

    @property
    def sent(self) -> int:
        return self.pub.sent

    def stop(self) -> int:
        self._stop.set()
        self._t.join(10)
        self.pub.close()
        return self.pub.sent
