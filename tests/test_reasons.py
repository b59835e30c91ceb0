"""The closed set of drop reasons: reasons.py and includes/tc_reasons.h list the same reasons in
the same order, and the engine reports exactly the engine's share of them."""

from __future__ import annotations

import re
from pathlib import Path

from telemetry_cy.reasons import DROP_REASONS, ENGINE_REASONS, PAYLOAD_REASONS

HEADER = Path(__file__).resolve().parents[1] / "telemetry_cy" / "includes" / "tc_reasons.h"


def test_header_and_python_agree():
    enum = re.findall(r"TC_DROP_(\w+) = (\d+)", HEADER.read_text())
    names = [(name.lower(), int(value)) for name, value in enum if name != "N_REASONS"]
    assert names == [(reason, i) for i, reason in enumerate(DROP_REASONS)]
    assert dict(enum)["N_REASONS"] == str(len(DROP_REASONS))


def test_engine_reports_its_reasons(backend):
    eng = backend.Engine()
    assert tuple(eng.stats()["drops"]) == ENGINE_REASONS
    assert "future" in ENGINE_REASONS and "late" in ENGINE_REASONS
    assert PAYLOAD_REASONS <= set(DROP_REASONS)
