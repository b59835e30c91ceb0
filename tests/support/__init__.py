"""Helpers shared by the test modules, apart from the tests themselves.

    brokers      real mosquitto and nats-server on free loopback ports (fixtures), NatsSubscriber
    daemon       `telemetry-cy run` as a process (DaemonProc, the `spawn` fixture), the balance
                 rules on its final counters, MQTT publishing helpers
    nats_faults  a steady MQTT load and the checks after a NATS fault
    emitters     the `emitters` fixture (NatsEmitter with short timeouts)
    model        the plain-Python model of the window semantics (the engines' oracle)
    nats_jwt     operator/account/user keys, JWTs and creds files for NATS operator mode

tests/conftest.py registers the modules that define fixtures (``pytest_plugins``); test modules
import helpers from here and never from one another.
"""
