"""Shared fixtures. Every compiled module has a pure-Python twin; suites that take the `impl`
fixture run once against each."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

pytest_plugins = ["brokers"]


def _engine_impl(name: str) -> SimpleNamespace:
    module = importlib.import_module(f"telemetry_cy.{name}")
    return SimpleNamespace(name=name, Engine=module.Engine, Aggregate=module.Aggregate)


@pytest.fixture(params=["_engine", "_engine_py"], ids=["compiled", "pure"])
def impl(request) -> SimpleNamespace:
    """The engine implementation under test: compiled, then the pure-Python twin."""
    return _engine_impl(request.param)
