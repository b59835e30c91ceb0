#!/usr/bin/env bash
# The pure-only install, checked: the test suite with TELEMETRY_CY_PURE=1 on a copy of the checkout
# that has no compiled modules, as on a machine without a C compiler. Every test must pass on the
# pure-Python twins or skip saying it needs the compiled set (or a tool that is not there).
#
#   scripts/test_pure_only.sh                 the whole suite, slow tests included
#   scripts/test_pure_only.sh -m "not slow"   any pytest arguments, e.g. a subset of modules
#
# The whole suite took 7 min on 2 cores of an AMD EPYC (most of it the daemon fault tests, which
# wait on brokers); about half the tests skip. Too long for every CI run; run it after touching
# the backend switch, a twin or the test fixtures.
#
# The copy holds the files git knows in the working tree (tracked or new, not ignored), so it tests
# uncommitted edits too and never a build product (*.so, build/, the generated .c files). It is
# made in a temporary directory and removed afterwards. Uses .venv (or $PYTHON) for pytest and the
# dependencies; the editable install of the checkout is shadowed by PYTHONPATH, checked below.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
log() { printf '[pure-only] %s\n' "$*" >&2; }

COPY=$(mktemp -d "${TMPDIR:-/tmp}/telemetry-cy-pure-only.XXXXXX")
trap 'rm -rf "$COPY"' EXIT

cd "$ROOT"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -C "$COPY" -xf -

built=$(find "$COPY" -name '*.so' -print -quit)
if [ -n "$built" ]; then log "the copy holds a compiled module: $built"; exit 1; fi

cd "$COPY"
export PYTHONPATH=$COPY TELEMETRY_CY_PURE=1
# The package must come from the copy, and the compiled set must really be missing there.
"$PY" - "$COPY" <<'EOF'
import sys

import telemetry_cy
from telemetry_cy.backend import ACTIVE, BackendUnavailable, available, load

copy = sys.argv[1]
assert telemetry_cy.__file__.startswith(copy + "/"), f"telemetry_cy from {telemetry_cy.__file__}"
assert ACTIVE.name == "pure" and available() == ["pure"], available()
try:
    load("compiled")
except BackendUnavailable:
    pass
else:
    raise AssertionError("the compiled set loads in the copy")
print(f"[pure-only] telemetry_cy from {telemetry_cy.__file__}; backends: {available()}",
      file=sys.stderr)
EOF

start=$SECONDS
set +e
"$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
log "pytest exit $rc after $((SECONDS - start)) s"
exit $rc
