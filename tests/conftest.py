"""What every test module shares: the backend fixtures, and the support plugins.

Each compiled module has a pure-Python twin (telemetry_cy/backend.py). A test of a twin takes the
``backend`` fixture and runs once against each matched set, "compiled" and "pure" (with
``ring_backend`` as well: once per engine and ring pair); a test that compares the two sets, or
that only the compiled set can pass, takes ``compiled_backend`` (and ``pure_backend``). On an
install without the compiled modules (``TELEMETRY_CY_PURE=1``, no compiler) whatever needs them
skips, saying so, and the rest runs against the twins.

Helpers live in tests/support/ (brokers, the daemon as a process, the window model, ...). The
modules there that define fixtures are registered here, once; test modules import the helpers
from ``support``, never from each other.
"""

from __future__ import annotations

import pytest

from telemetry_cy import backend as backends

pytest_plugins = ["support.brokers", "support.c_build", "support.daemon", "support.emitters",
                  "support.logs", "support.nats_cluster"]


def _load(name: backends.BackendName) -> backends.Backend:
    try:
        return backends.load(name)
    except backends.BackendUnavailable as exc:
        pytest.skip(f"needs the compiled modules, not built here ({exc.__cause__})")


# Session scope: a Backend is a set of imported modules, safe to share across tests and across
# hypothesis examples.
@pytest.fixture(scope="session", params=["compiled", "pure"])
def backend(request) -> backends.Backend:
    """The matched set under test: compiled, then the pure-Python twins."""
    return _load(request.param)


@pytest.fixture(scope="session", params=["compiled", "pure"], ids=["compiled-ring", "pure-ring"])
def ring_backend(request) -> backends.Backend:
    """The set whose ring an engine under test drains (``backend``'s own, or the other one)."""
    return _load(request.param)


@pytest.fixture(scope="session")
def compiled_backend() -> backends.Backend:
    """The compiled set, for tests that compare it with the twins or that only it can pass."""
    return _load("compiled")


@pytest.fixture(scope="session")
def pure_backend() -> backends.Backend:
    """The pure-Python twins (every install has them)."""
    return _load("pure")
