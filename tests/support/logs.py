"""The ``log_capture`` fixture: pytest's ``caplog`` listening on the ``telemetry_cy`` logger.

A pytest plugin (``tests/conftest.py`` lists it in ``pytest_plugins``). The daemon's logging setup
stops propagation at ``telemetry_cy``, so caplog's root handler would miss records once any test
in the process has run it: the handler is attached there directly, at DEBUG.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def log_capture(caplog):
    logger = logging.getLogger("telemetry_cy")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    yield caplog
    logger.removeHandler(caplog.handler)
