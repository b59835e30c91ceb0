"""Shared fixtures. Every compiled module has a pure-Python twin; suites that take the `impl`
fixture run once against each."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest


def _qualified(name: str) -> str:
    stage = {"_ring": "source", "_frames": "source", "_decode": "engine", "_engine": "engine", "_wire": "sink"}[name.removesuffix("_py")]
    return f"telemetry_cy.{stage}.{name}"


pytest_plugins = ["support.brokers", "support.daemon", "support.emitters"]


def _engine_impl(name: str) -> SimpleNamespace:
    module = importlib.import_module(_qualified(name))
    return SimpleNamespace(name=name, Engine=module.Engine, Aggregate=module.Aggregate)


@pytest.fixture(params=["_engine", "_engine_py"], ids=["compiled", "pure"])
def impl(request) -> SimpleNamespace:
    """The engine implementation under test: compiled, then the pure-Python twin."""
    return _engine_impl(request.param)
