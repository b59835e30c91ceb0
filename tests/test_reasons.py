"""The drop reasons are one closed set on both sides of the C boundary: the compiled stages count
into arrays indexed by ``enum tc_reason`` (includes/tc_reasons.h) and report them under the names
of ``reasons.DROP_REASONS``, so the enum must list the same reasons, in the same order, from 0.
Reads the header as text: it holds in a pure-only install too."""

from __future__ import annotations

import re
from pathlib import Path

import telemetry_cy
from telemetry_cy.reasons import DROP_REASONS, ENGINE_REASONS, PAYLOAD_REASONS

HEADER = Path(telemetry_cy.__file__).with_name("includes") / "tc_reasons.h"


def _enum() -> list[tuple[str, int]]:
    body = re.search(r"enum\s+tc_reason\s*\{(.*?)\}", HEADER.read_text(), re.S)
    assert body, f"no enum tc_reason in {HEADER}"
    members = re.findall(r"TC_DROP_([A-Z_]+)\s*=\s*(\d+)", body.group(1))
    return [(name.lower(), int(value)) for name, value in members]


def test_the_c_enum_is_drop_reasons_in_order():
    members = _enum()
    assert members[-1] == ("n_reasons", len(DROP_REASONS))
    assert members[:-1] == [(reason, i) for i, reason in enumerate(DROP_REASONS)]


def test_reason_subsets_are_drawn_from_the_one_set():
    assert len(set(DROP_REASONS)) == len(DROP_REASONS)
    assert ENGINE_REASONS == DROP_REASONS[:len(ENGINE_REASONS)]
    assert PAYLOAD_REASONS <= set(DROP_REASONS)
