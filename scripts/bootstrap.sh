#!/usr/bin/env bash
# One entry point for a fresh Debian / Raspberry Pi OS machine (or CI, as root without sudo):
#   scripts/bootstrap.sh test   install everything, build, run the test suite
#   scripts/bootstrap.sh demo   install everything, build, run the demo (the main job)
#   scripts/bootstrap.sh install
# It installs the OS packages it needs (through sudo when not root), makes .venv, and installs the
# project into it with its dev extras. Re-running it is cheap: it skips what is already there, and
# installs the project again only when pyproject.toml or setup.py changed (see install_state).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${TELEMETRY_CY_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

log() { printf '[bootstrap] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else log "need root for: $* (no sudo found)"; return 1; fi
}

have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }

python_ready() {
    command -v "$PY" >/dev/null 2>&1 || return 1
    # venv with ensurepip (python3-venv) and the C headers (python3-dev)
    "$PY" - <<'PYEOF' >/dev/null 2>&1
import ensurepip, os, sysconfig, venv
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
PYEOF
}

install_os_packages() {
    local missing=()
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    python_ready || missing+=(python3 python3-dev python3-venv)
    have_mosquitto || missing+=(mosquitto)
    command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # TLS test certificates
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing OS packages: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    # The package starts a system broker on 1883; the project never relies on it (tests and the
    # demo start their own brokers on free ports), so leave it as the distribution configured it.
}

# The project is installed into the venv again only when what the install depends on changed
# since the last one that finished: pyproject.toml or setup.py (the dependencies and the build)
# newer than the stamp or with other bytes, or another checkout path (the editable install points
# at it), venv Python, or the project no longer installed in the venv; the stamp holds a hash of
# all of them. A fresh clone has no stamp, and a `git pull` that changes the dependencies writes
# a newer pyproject.toml: both install.
STAMP=$VENV/.telemetry-cy-install

install_state() {
    {
        cat pyproject.toml setup.py
        printf '%s\n' "$ROOT"
        "$VENV/bin/python" - <<'PYEOF'
import importlib.metadata, sys, sysconfig
try:
    importlib.metadata.distribution("telemetry-cy")
    installed = "installed"
except importlib.metadata.PackageNotFoundError:
    installed = "missing"
print(sys.version, sysconfig.get_config_var("EXT_SUFFIX"), installed)
PYEOF
    } | sha256sum | cut -d' ' -f1
}

# Between installs a pull or an edit may change only the compiled modules' sources: they are
# rebuilt in place when a module is missing or any .pyx, .pxd or C header is newer than the stamp
# (build_ext itself then skips the modules that are up to date), and the stamp is touched after.
modules_stale() {
    local suffix pyx
    suffix=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    while IFS= read -r pyx; do
        [ -e "${pyx%.pyx}$suffix" ] || return 0
    done < <(find telemetry_cy -name '*.pyx')
    [ -n "$(find telemetry_cy -newer "$STAMP" \( -name '*.pyx' -o -name '*.pxd' -o -name '*.h' \) \
            -print -quit)" ]
}

install_python_env() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PY" -m venv "$VENV"
    fi
    local state
    state=$(install_state)
    # a newer pyproject.toml or setup.py counts as changed even with the same bytes, as in make
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$state" ] \
            && [ ! pyproject.toml -nt "$STAMP" ] && [ ! setup.py -nt "$STAMP" ]; then
        if modules_stale; then
            log "rebuilding the compiled modules that are missing or whose sources changed"
            "$VENV/bin/python" setup.py -q build_ext --inplace -j "$(nproc 2>/dev/null || echo 2)"
            touch "$STAMP"
        else
            log "telemetry-cy is installed and up to date in $VENV"
        fi
        return
    fi
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip setuptools wheel
    log "building and installing telemetry-cy (dev extras)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
    # written last, and only after a complete install (set -e): an interrupted one runs again
    install_state > "$STAMP.tmp"
    mv "$STAMP.tmp" "$STAMP"
}

cmd=${1:-install}
shift || true
install_os_packages
install_python_env
case "$cmd" in
    install) log "done: activate with 'source $VENV/bin/activate'" ;;
    # one worker per CPU, each test to whichever worker is free (worksteal); `-n 0` after it
    # runs the suite in one process
    test) exec "$VENV/bin/python" -m pytest -n auto --dist worksteal "$@" ;;
    demo) exec "$VENV/bin/telemetry-cy" demo "$@" ;;
    *) log "unknown command: $cmd (install | test | demo)"; exit 2 ;;
esac
