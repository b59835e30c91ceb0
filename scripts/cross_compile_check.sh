#!/usr/bin/env bash
# CI step: nothing x86-only in the C code. Compiles it for aarch64 (the Raspberry Pi 5) with Debian's
# cross compiler, warnings as errors, on any x86_64 Debian machine; a minute at most. The full check on
# an emulated arm64 Debian (build, tests, wheel) is scripts/arm64_check.sh; docs/aarch64.md has both.
#
#   scripts/cross_compile_check.sh              both stages
#   scripts/cross_compile_check.sh headers      each telemetry_cy/includes/*.h alone, every function
#                                               emitted (-fkeep-inline-functions), -Wall -Wextra -Werror
#   scripts/cross_compile_check.sh modules      the Cython-generated C of every compiled module, with
#                                               setup.py's flags plus -Wall -Werror, against Debian 12's
#                                               arm64 Python headers, linked as shared objects
# Both stages then check the machine code: the ring's acquire/release accesses are aarch64
# load-acquire/store-release instructions (LDAR/STLR), and nothing needs libatomic (a lock-based
# fallback would mean an atomic that is not lock-free on the Pi).
#
# Settings (environment):
#   PYTHON=...          interpreter with Cython, for the modules stage (default .venv/bin/python, else python3)
#   DEBIAN_MIRROR=URL   where the arm64 Python headers come from (default http://deb.debian.org/debian)
#   KEEP=1              keep the temporary directory (objects, generated C)
# Installs gcc-aarch64-linux-gnu with apt-get when missing (through sudo when not root). The arm64
# Python headers are fetched with a private apt state in the temporary directory: the host's dpkg
# architectures and package lists are left alone.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
INC=$ROOT/telemetry_cy/includes
CC=aarch64-linux-gnu-gcc
OBJDUMP=aarch64-linux-gnu-objdump
NM=aarch64-linux-gnu-nm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(headers modules)

log() { printf '[cross] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else log "need root for: $* (no sudo found)"; return 1; fi
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tcy-cross.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT

install_cross_compiler() {
    command -v "$CC" >/dev/null 2>&1 && return 0
    log "installing gcc-aarch64-linux-gnu"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu >/dev/null
}

# setup.py's compile_flags() for a release build; keep the two in step.
PROJECT_CFLAGS=(-std=gnu11 -fno-strict-aliasing -ffp-contract=off -Wno-unused-function -O2 -DNDEBUG)

# The ring (spsc_ring.h, and mqtt_frames.h writing into it) publishes records with release stores and
# reads them with acquire loads; on aarch64 those must be LDAR/STLR (or LDAPR), which plain ISO C11
# atomics give. Checked on the object code because a plain load here would pass every test under
# emulation (an x86 host runs the emulated code with its own stronger ordering).
check_ordering() {   # $1 object, $2 what it is
    local asm
    asm=$("$OBJDUMP" -d --no-show-raw-insn "$1")
    grep -qE '\s(ldar|ldapr)\s' <<<"$asm" || die "$2: no load-acquire instruction (LDAR/LDAPR) in the ring's code"
    grep -qE '\sstlr\s' <<<"$asm" || die "$2: no store-release instruction (STLR) in the ring's code"
}

check_no_libatomic() {   # $1 object or shared object
    if "$NM" -u "$1" | grep -E '\s__atomic_' >/dev/null; then
        die "$(basename "$1") calls libatomic ($("$NM" -u "$1" | grep -oE '__atomic_[a-z_0-9]+' | sort -u | tr '\n' ' ')): an atomic is not lock-free on aarch64"
    fi
}

stage_headers() {
    local h name n=0
    mkdir -p "$TMP/headers"
    for h in "$INC"/*.h; do
        name=$(basename "$h" .h)
        printf '#include "%s.h"\n' "$name" >"$TMP/headers/$name.c"
        # -Wno-unused-function: a header's plain static helpers are unused in a file of their own.
        "$CC" "${PROJECT_CFLAGS[@]}" -Wall -Wextra -Werror -fkeep-inline-functions -fPIC -I"$INC" \
            -c "$TMP/headers/$name.c" -o "$TMP/headers/$name.o" || die "$name.h does not compile for aarch64"
        check_no_libatomic "$TMP/headers/$name.o"
        n=$((n + 1))
    done
    check_ordering "$TMP/headers/spsc_ring.o" spsc_ring.h
    check_ordering "$TMP/headers/mqtt_frames.o" mqtt_frames.h
    log "headers: $n compiled for aarch64 with -Wall -Wextra -Werror; ring uses LDAR/STLR; no libatomic"
}

fetch_python_headers() {   # Debian 12's libpython3.11-dev for arm64, unpacked in $TMP/pyarm64
    local apt=$TMP/apt deb
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts" "$TMP/pyarm64"
    : >"$apt/status"
    cat >"$apt/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-updates main
EOF
    local opts=(-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::State::status=$apt/status"
        -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
        -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update -qq || die "apt-get update (arm64 lists, private state) failed"
    (cd "$TMP" && apt-get "${opts[@]}" download -qq libpython3.11-dev) || die "could not download libpython3.11-dev:arm64"
    deb=$(ls "$TMP"/libpython3.11-dev_*_arm64.deb)
    dpkg-deb -x "$deb" "$TMP/pyarm64"
    PYINC=(-I"$TMP/pyarm64/usr/include/python3.11" -I"$TMP/pyarm64/usr/include")
    log "arm64 Python headers: $(basename "$deb")"
}

generate_c() {   # the Cython C of this checkout, made by setup.py's own cythonize() call, in $TMP/src
    "$PY" -c 'import Cython' 2>/dev/null \
        || die "$PY has no Cython (run scripts/bootstrap.sh install, or set PYTHON)"
    mkdir -p "$TMP/src"
    git ls-files -z --cached --others --exclude-standard -- setup.py pyproject.toml telemetry_cy \
        | tar --null --ignore-failed-read -T - -cf - | tar -C "$TMP/src" -xf -
    # Run setup.py with setup() stubbed out: its extensions() cythonizes with the project's directives
    # and nothing is compiled for the host.
    (cd "$TMP/src" && "$PY" -c '
import runpy, setuptools
setuptools.setup = lambda **kwargs: None
runpy.run_path("setup.py", run_name="__main__")
' >/dev/null) || die "cythonize failed"
}

stage_modules() {
    local c name sos=()
    fetch_python_headers
    generate_c
    mapfile -t CFILES < <(cd "$TMP/src" && find telemetry_cy -name '*.c' | sort)
    [ ${#CFILES[@]} -gt 0 ] || die "cythonize produced no C files"
    # One compiler per module, two at a time: the generated files are large.
    printf '%s\n' "${CFILES[@]}" | (cd "$TMP/src" && xargs -P 2 -I{} "$CC" "${PROJECT_CFLAGS[@]}" -Wall -Werror \
        -fPIC "${PYINC[@]}" -I telemetry_cy/includes -c {} -o {}.o) || die "a compiled module does not build for aarch64"
    for c in "${CFILES[@]}"; do
        name=$(basename "$c" .c)
        # Linked like setuptools links an extension: Python's symbols stay undefined (the interpreter
        # provides them); libgcc's outline atomics and libm must resolve.
        "$CC" -shared -o "$TMP/src/$c.so" "$TMP/src/$c.o" -lm -lpthread || die "$name does not link for aarch64"
        check_no_libatomic "$TMP/src/$c.so"
        sos+=("$name")
    done
    check_ordering "$(ls "$TMP"/src/telemetry_cy/source/_ring.c.o)" "_ring (spsc_ring.h)"
    log "modules: ${sos[*]} compiled (-Wall -Werror) and linked for aarch64; _ring uses LDAR/STLR; no libatomic"
}

install_cross_compiler
for stage in "${STAGES[@]}"; do
    case "$stage" in
        headers) stage_headers ;;
        modules) stage_modules ;;
        *) die "unknown stage: $stage (headers | modules)" ;;
    esac
done
log "passed: ${STAGES[*]} ($("$CC" --version | head -n 1))"
