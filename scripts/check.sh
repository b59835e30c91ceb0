#!/usr/bin/env bash
# Static checks that keep the Python layer honest (CI runs them in .ci/run):
#   ruff     lint and import order of every Python file ([tool.ruff] in pyproject.toml)
#   mypy     types of telemetry_cy/ ([tool.mypy]); compiled modules through their .pyi stubs
#   stubtest each .pyi held to the compiled module it describes: names, signatures, final classes
# Needs the dev extras (scripts/bootstrap.sh install) and, for stubtest, the compiled modules.
# Runs every check and fails at the end if any failed, so one run shows all that is wrong.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

failed=()
run() {
    local name=$1; shift
    printf '[check] %s\n' "$name" >&2
    "$@" || failed+=("$name")
}

run ruff "$PY" -m ruff check .
run mypy "$PY" -m mypy

# Every .pyx is a compiled module and must have a .pyi that matches it (a missing stub fails).
compiled=$(find telemetry_cy -name '*.pyx' | sort | sed 's/\.pyx$//; s#/#.#g')
# A pure-only install (no compiler) has none of them built: then there is nothing to hold.
if TELEMETRY_CY_PURE=1 "$PY" -c 'from telemetry_cy.backend import load; load("compiled")' 2>/dev/null; then
    # --ignore-disjoint-bases: every cdef class is a disjoint base (PEP 800) by construction;
    # the allowlist names the runtime attributes a stub leaves out on purpose, and why.
    run stubtest "$PY" -m mypy.stubtest --ignore-disjoint-bases --mypy-config-file pyproject.toml \
        --allowlist scripts/stubtest-allowlist.txt $compiled
else
    printf '[check] stubtest skipped: the compiled modules are not built (pure-only install)\n' >&2
fi

if [ ${#failed[@]} -gt 0 ]; then
    printf '[check] FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '[check] all passed\n' >&2
