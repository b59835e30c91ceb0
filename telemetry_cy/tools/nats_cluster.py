"""A nats-server cluster with JetStream on loopback (the scale-out tests and demo).

Each node is a ``NatsServer`` (client port, JetStream store in its own directory) with a cluster
port; every node lists the others' cluster ports as routes, so the mesh forms whichever starts
first. Ports are free loopback ports chosen at construction (never fixed) and stay the same
across a node's restart, so a killed node comes back into the same cluster.

Ready means more than "the ports accept": JetStream in a cluster elects a meta leader first, and
until then stream requests fail. ``start`` waits until a JetStream API request answers on every
node and a stream replicated on all of them can be made (a deadline, never a hang).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from telemetry_cy.tools.local_brokers import START_TIMEOUT, NatsServer, free_port, wait_for

CLUSTER_NAME = "telemetry-cy-test"


class NatsCluster:
    """``size`` nats-server nodes routed to each other on loopback, JetStream on every node."""

    def __init__(self, workdir, size: int = 3, binary: str | None = None) -> None:
        workdir = Path(workdir)
        self.cluster_ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer] = []
        for i, cport in enumerate(self.cluster_ports):
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports if p != cport)
            node = NatsServer(workdir / f"node{i}", binary=binary, args=(
                "--cluster_name", CLUSTER_NAME,
                "--cluster", f"nats://127.0.0.1:{cport}",
                "--routes", routes))
            self.nodes.append(node)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what ``--nats-url`` takes for a cluster."""
        return ",".join(self.urls)

    def start(self, timeout: float = 3 * START_TIMEOUT) -> "NatsCluster":
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            if not wait_for(lambda n=node: _jetstream_ready(n.url), timeout, 0.2):
                raise RuntimeError(f"JetStream on {node.url} not ready within {timeout:.0f} s; "
                                   f"log:\n{node.log_text()[-3000:]}")
        # the meta leader may answer before it knows every peer: a stream replicated on all
        # nodes is the proof that the whole cluster is in
        if not wait_for(lambda: _placement_ready(self.urls[0], len(self.nodes)), timeout, 0.2):
            raise RuntimeError(f"no {len(self.nodes)}-replica stream within {timeout:.0f} s; "
                               f"logs:\n{self.log_text()}")
        return self

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def log_text(self) -> str:
        return "\n".join(f"--- {n.url}\n{n.log_text()[-2000:]}" for n in self.nodes)

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def _jetstream_ready(url: str) -> bool:
    """True when this node answers a JetStream account-info request (a meta leader exists and
    the node has joined it)."""
    async def ask() -> bool:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0,
                                allow_reconnect=False)
        try:
            msg = await nc.request("$JS.API.INFO", b"", timeout=1)
            return "error" not in json.loads(msg.data)
        finally:
            await nc.close()
    try:
        return asyncio.run(ask())
    except Exception:  # not up yet: any failure means "ask again"
        return False


def _placement_ready(url: str, replicas: int) -> bool:
    async def probe() -> bool:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0,
                                allow_reconnect=False)
        try:
            jsm = nc.jsm()
            await jsm.add_stream(name="CLUSTER_PROBE", subjects=["cluster-probe.>"],
                                 num_replicas=replicas, max_msgs=1)
            await jsm.delete_stream("CLUSTER_PROBE")
            return True
        finally:
            await nc.close()
    try:
        return asyncio.run(probe())
    except Exception:  # no quorum or peer list yet: ask again
        return False
