"""The ``emitters`` fixture: NatsEmitter instances with short timeouts, stopped at teardown.

A pytest plugin (``tests/conftest.py`` lists it in ``pytest_plugins``). The timings are short so
that a test of a refused or lost connection sees the emitter give up or reconnect within seconds;
``FAST`` is the set, for tests that build an emitter of their own.
"""

from __future__ import annotations

import pytest

from telemetry_cy.sink.nats_emitter import NatsEmitter

FAST = dict(connect_timeout=1.0, flush_timeout=2.0, reconnect_time_wait=0.05,
            max_reconnect_wait=0.3)


@pytest.fixture
def emitters():
    """emitters(url, **options) makes a NatsEmitter with ``FAST`` under ``options``."""
    made = []

    def make(*args, **kwargs):
        e = NatsEmitter(*args, **{**FAST, **kwargs})
        made.append(e)
        return e
    yield make
    for e in made:
        e.stop(1.0)
