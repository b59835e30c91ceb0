"""Broker fixtures (mosquitto, nats-server) on free loopback ports."""
