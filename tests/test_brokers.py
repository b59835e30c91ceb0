"""The broker fixtures themselves (tests/support/brokers.py): loopback ports, restart on the same
port."""

from __future__ import annotations

import socket


def test_nats_server_restarts_on_the_same_port(nats_server):
    port = nats_server.port
    assert nats_server.url == f"nats://127.0.0.1:{port}"
    nats_server.stop()
    assert not nats_server.running
    nats_server.start()
    nats_server.kill()
    nats_server.start()
    assert nats_server.port == port and nats_server.running
    with socket.create_connection((nats_server.host, port), timeout=5) as s:
        s.settimeout(5)
        assert s.recv(4096).startswith(b"INFO")


def test_mosquitto_restarts_on_the_same_port(mosquitto):
    port = mosquitto.port
    assert mosquitto.url == f"mqtt://127.0.0.1:{port}"
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.port == port and mosquitto.running
    assert "listen" in mosquitto.log_text().lower()
