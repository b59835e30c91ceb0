"""Prometheus metrics of a merge worker (`telemetry-cy merge --metrics-port N`,
docs/scale-out.md).

The worker's loop thread leaves a stats snapshot (a dict replaced whole) after each turn; the
collector reads that one at scrape time, so a scrape never touches the merge state. Served by
prometheus_client's own server thread: the worker has no health route to share the port with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_COUNTERS = (
    ("partials", "Partial messages merged."),
    ("panes", "Panes merged."),
    ("published", "Windows published."),
    ("too_large", "Windows not published: subject or body longer than the server takes."),
    ("incomplete", "(key, window) pairs never published: an instance died in them."),
    ("stale", "Panes no window to come spans (a late joiner, or replayed after a takeover)."),
    ("gaps", "Partial messages missing from an instance's sequence."),
    ("deaths", "Instances declared dead (silent for instance_timeout)."),
    ("takeovers", "Partitions taken over from a previous owner."),
    ("replayed", "Partial messages a takeover replayed (refused ones included), from the "
                 "previous owner's floor."),
)


class MergeCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        for name, doc in _COUNTERS:
            yield CounterMetricFamily(f"telemetry_cy_merge_{name}", doc,
                                      value=float(s.get(name) or 0))
        refused = CounterMetricFamily("telemetry_cy_merge_refused",
                                      "Partial messages refused, by reason.", labels=["reason"])
        for reason, n in sorted((s.get("refused") or {}).items()):
            refused.add_metric([reason], float(n))
        yield refused
        yield GaugeMetricFamily("telemetry_cy_merge_owned_partitions", "Partitions owned.",
                                value=float(len(s.get("own") or ())))
        yield GaugeMetricFamily("telemetry_cy_merge_instances", "Live instances.",
                                value=float(s.get("instances") or 0))
        lag = s.get("lag_s")
        if lag is not None:
            yield GaugeMetricFamily("telemetry_cy_merge_lag_seconds", "Wall clock minus the end "
                                    "of the newest window published.", value=float(lag))


def serve(snapshot: Callable[[], dict], port: int, host: str = "127.0.0.1") -> None:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MergeCollector(snapshot))
    start_http_server(port, addr=host, registry=registry)
