#!/usr/bin/env bash
# telemetry-cy on aarch64 (Raspberry Pi 5 class) from an x86_64 Debian host, without an aarch64 machine:
# an arm64 Debian 12 root (debootstrap + qemu-user-static), the package built in it as a wheel, the
# compiled modules' test suites run against that installed wheel, and the wheel installed into a fresh
# arm64 root that has no C compiler. docs/aarch64.md records a run and what emulation does not prove.
#
#   scripts/arm64_check.sh              test, then wheel (the whole check)
#   scripts/arm64_check.sh test         build the wheel in the build root, run the test modules against it
#   scripts/arm64_check.sh wheel        build the wheel (if this source has none yet), install it in a
#                                       fresh root, run `telemetry-cy --version` and a short Engine run
#   scripts/arm64_check.sh shell        a shell in the build root (the venv is /opt/tcy/venv)
#   scripts/arm64_check.sh clean        unmount and remove everything under --dir
#
# Options:
#   --dir DIR            roots, wheels, pip cache (default /var/tmp/telemetry-cy-arm64). Keep it outside
#                        the repository: the roots are ~1 GB and the tests must not see the source tree.
#   --source head|tree   what goes into the root: `git archive HEAD` (default) or the working tree
#                        (tracked files plus untracked ones that are not ignored)
#   --examples PCT       every hypothesis max_examples scaled to PCT % (default 25; 100 = as written),
#                        but never below 100 (or the written value, when lower): under ~100 examples
#                        Hypothesis generates differently and its health checks flake.
#   --tests "FILES"      test modules, relative to the repository (default: the compiled modules' suites)
#   --mirror URL         Debian mirror (default http://deb.debian.org/debian)
#   --rebuild            make the build root again (after a Debian point release, or when in doubt)
#   --ca-bundle FILE     CA certificates pip trusts inside the roots (default: the host's
#                        /etc/ssl/certs/ca-certificates.crt, so a TLS-inspecting proxy the host trusts
#                        works there too); "root" for the arm64 root's own
#
# Needs root (debootstrap, chroot, mounts); re-runs itself through sudo otherwise. Installs
# qemu-user-static, debootstrap and binfmt-support with apt-get when missing. Reuses what exists:
# a Debian base tarball (made once) from which the build root (made once) and every fresh root are
# unpacked. Exit status: 0 when every step passed.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
DIR=/var/tmp/telemetry-cy-arm64
SOURCE=head
EXAMPLES=25
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
REBUILD=0
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
TESTS="tests/test_decode.py tests/test_engine.py tests/test_ring.py tests/test_frames.py tests/test_wire.py
tests/test_seq.py tests/test_offenders.py tests/test_engine_props.py"

log() { printf '[arm64] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s; }

CMD=all
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR=$2; shift 2 ;;
        --source) SOURCE=$2; shift 2 ;;
        --examples) EXAMPLES=$2; shift 2 ;;
        --tests) TESTS=$2; shift 2 ;;
        --mirror) MIRROR=$2; shift 2 ;;
        --rebuild) REBUILD=1; shift ;;
        --ca-bundle) CA_BUNDLE=$2; shift 2 ;;
        all | test | wheel | shell | clean) CMD=$1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$SOURCE" in head | tree) ;; *) die "--source must be head or tree" ;; esac
case "$EXAMPLES" in '' | *[!0-9]*) die "--examples must be a whole percentage" ;; esac
[ "$CA_BUNDLE" = root ] || [ -r "$CA_BUNDLE" ] || die "--ca-bundle $CA_BUNDLE: not a readable file"

if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "needs root (debootstrap, chroot, mounts) and there is no sudo"
    exec sudo -- "$0" --dir "$DIR" --source "$SOURCE" --examples "$EXAMPLES" --tests "$TESTS" \
        --mirror "$MIRROR" --ca-bundle "$CA_BUNDLE" $([ "$REBUILD" = 1 ] && echo --rebuild) "$CMD"
fi

DIR=$(realpath -m "$DIR")
case "$DIR/" in "$REPO"/*) die "--dir must be outside the repository ($REPO)" ;; esac
case "$DIR" in / | /var | /var/tmp | /tmp | /usr | /home) die "--dir $DIR is too broad; give a directory of its own" ;; esac
BASE_TAR=$DIR/base-$SUITE-arm64.tar
BUILD=$DIR/build           # compiler, python3-dev, the venv with the test tools; reused
FRESH=$DIR/fresh           # unpacked from the base tarball for every wheel check; no compiler
PIP_CACHE=$DIR/pip-cache   # shared by both roots (downloaded wheels only)
WHEELS=$DIR/wheels
SUMMARY=$DIR/last-run.txt
VENV=/opt/tcy/venv         # inside the build root

# ---- mounts: only proc, a private /dev/shm and the pip cache, so nothing of the host's /dev is exposed --------

mounts_under() {   # mount points at or below $1, deepest first
    awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

unmount_under() {
    local m
    for m in $(mounts_under "$1"); do umount "$m" 2>/dev/null || umount -l "$m"; done
}

remove_tree() {   # never follows a mount into the host: unmount, check, then rm on one file system
    [ -e "$1" ] || return 0
    unmount_under "$1"
    [ -z "$(mounts_under "$1")" ] || die "still mounted under $1; not removing it"
    rm -rf --one-file-system "$1"
}

enter_root() {   # $1 root: mounts and resolver for a chroot into it
    local root=$1
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    mkdir -p "$root/dev/shm" "$root/var/cache/tcy-pip" "$PIP_CACHE"
    mountpoint -q "$root/dev/shm" || mount -t tmpfs -o size=256m,mode=1777 tmpfs "$root/dev/shm"
    mountpoint -q "$root/var/cache/tcy-pip" || mount --bind "$PIP_CACHE" "$root/var/cache/tcy-pip"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    if [ "$CA_BUNDLE" != root ]; then cp -L "$CA_BUNDLE" "$root/etc/ssl/certs/tcy-host-ca.crt"; fi
}

in_root() {   # $1 root, then a command run in it with a clean environment
    local root=$1
    shift
    enter_root "$root"
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CACHE_DIR=/var/cache/tcy-pip PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off \
        PIP_ROOT_USER_ACTION=ignore DEBIAN_FRONTEND=noninteractive \
        $([ "$CA_BUNDLE" != root ] && echo PIP_CERT=/etc/ssl/certs/tcy-host-ca.crt) "$@"
}

cleanup() { [ -d "$DIR" ] && unmount_under "$DIR"; return 0; }

# ---- host: qemu-user-static registered with binfmt_misc ------------------------------------------------------

host_setup() {
    local missing=()
    [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v update-binfmts >/dev/null 2>&1 || missing+=(binfmt-support)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing on the host: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Containers and minimal hosts often boot without binfmt_misc mounted; the arm64 root needs it
    # so the kernel hands aarch64 binaries to qemu.
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
        update-binfmts --enable qemu-aarch64 >/dev/null
    fi
    grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 is not enabled in binfmt_misc"
    # Without the F flag the interpreter is looked up inside the chroot: put it there too.
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || QEMU_IN_ROOT=1
}
QEMU_IN_ROOT=0

put_qemu() {   # $1 root
    if [ "$QEMU_IN_ROOT" = 1 ]; then cp /usr/bin/qemu-aarch64-static "$1/usr/bin/"; fi
}

# ---- roots ------------------------------------------------------------------------------------------------------

base_tarball() {
    [ -s "$BASE_TAR" ] && return 0
    local t0 tmp=$DIR/base.tmp
    t0=$(now)
    remove_tree "$tmp"
    log "debootstrap $SUITE arm64 (minbase + python3-venv); takes a while under emulation"
    # python3-venv only: the fresh root for the wheel check must not have a compiler.
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$tmp" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 \
        || { tail -n 30 "$DIR/debootstrap.log" >&2; die "debootstrap failed (log: $DIR/debootstrap.log)"; }
    chroot "$tmp" apt-get clean
    tar -C "$tmp" --numeric-owner -cf "$BASE_TAR.part" .
    mv "$BASE_TAR.part" "$BASE_TAR"
    remove_tree "$tmp"
    log "base tarball ready in $(($(now) - t0)) s"
}

unpack_base() {   # $1 root
    remove_tree "$1"
    mkdir -p "$1"
    tar -C "$1" --numeric-owner -xf "$BASE_TAR"
    put_qemu "$1"
}

build_root() {
    [ "$REBUILD" = 1 ] && remove_tree "$BUILD"
    [ -e "$BUILD/.ready" ] && return 0
    local t0
    t0=$(now)
    log "making the build root (compiler, python3-dev, venv with the test tools)"
    unpack_base "$BUILD"
    in_root "$BUILD" apt-get update -qq
    # Dpkg::Use-Pty=0: the root has no devpts, and dpkg's progress log would complain without one.
    in_root "$BUILD" apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends build-essential python3-dev >/dev/null
    in_root "$BUILD" apt-get clean
    in_root "$BUILD" python3 -m venv "$VENV"
    in_root "$BUILD" "$VENV/bin/pip" install -q -U pip
    in_root "$BUILD" "$VENV/bin/pip" install -q "pytest>=8" "hypothesis>=6.100"
    touch "$BUILD/.ready"
    log "build root ready in $(($(now) - t0)) s"
}

# ---- source, wheel ----------------------------------------------------------------------------------------------

REV=
copy_source() {
    local dst=$BUILD/opt/tcy/src
    remove_tree "$dst"
    mkdir -p "$dst"
    if [ "$SOURCE" = head ]; then
        REV=$(git -C "$REPO" rev-parse --short=12 HEAD)
        git -C "$REPO" archive --format=tar HEAD | tar -C "$dst" -xf -
    else
        REV="$(git -C "$REPO" rev-parse --short=12 HEAD)+tree"
        # Ignored files (.venv, *.so, generated .c, build/) stay out: the root builds from source.
        git -C "$REPO" ls-files -z --cached --others --exclude-standard \
            | (cd "$REPO" && tar --null --ignore-failed-read -T - -cf -) | tar -C "$dst" -xf -
    fi
    log "source: $SOURCE ($REV)"
}

wheel_is_current() {   # the build root's wheel was built from this very commit (HEAD mode only)
    [ "$SOURCE" = head ] && [ -f "$BUILD/opt/tcy/dist/.rev" ] && [ "$(cat "$BUILD/opt/tcy/dist/.rev")" = "$REV" ] \
        && ls "$BUILD"/opt/tcy/dist/telemetry_cy-*.whl >/dev/null 2>&1
}

WHEEL=
build_wheel() {
    local t0
    t0=$(now)
    if wheel_is_current; then
        WHEEL=$(cd "$BUILD/opt/tcy/dist" && ls telemetry_cy-*.whl)
        log "reusing $WHEEL, built from $REV"
        return 0
    fi
    log "pip wheel . in the arm64 root (build isolation: setuptools and Cython from PyPI)"
    rm -rf "$BUILD/opt/tcy/dist"
    in_root "$BUILD" /bin/sh -c "cd /opt/tcy/src && $VENV/bin/pip wheel -q --no-deps -w /opt/tcy/dist ." \
        || die "the wheel did not build in the arm64 root"
    WHEEL=$(cd "$BUILD/opt/tcy/dist" && ls telemetry_cy-*.whl)
    echo "$REV" >"$BUILD/opt/tcy/dist/.rev"
    [ "$(echo "$WHEEL" | wc -l)" = 1 ] || die "expected one wheel, found: $WHEEL"
    case "$WHEEL" in *linux_aarch64.whl) ;; *) die "not an aarch64 wheel: $WHEEL" ;; esac
    mkdir -p "$WHEELS"
    cp "$BUILD/opt/tcy/dist/$WHEEL" "$WHEELS/"
    T_WHEEL=$(($(now) - t0))
    log "built $WHEEL in $T_WHEEL s (copy in $WHEELS)"
}

# ---- tests against the installed wheel --------------------------------------------------------------------------

write_hypothesis_plugin() {   # $1: directory in the build root
    mkdir -p "$1"
    cat >"$1/tcy_emulated.py" <<PYEOF
"""pytest plugin for runs under emulation: hypothesis max_examples scaled to $EXAMPLES %, never below 100.

The test modules set max_examples in @settings decorators, which a settings profile cannot
override; this wraps settings() itself, before the test modules are imported (pytest -p). The
floor: below ~100 examples Hypothesis generates differently (fewer small cases) and its health
checks flake, so a written 300 becomes 100, and 100 or fewer stay as written."""
import hypothesis

PERCENT = $EXAMPLES
_init = hypothesis.settings.__init__


def _scaled(self, parent=None, **kwargs):
    n = kwargs.get("max_examples")
    if isinstance(n, int) and not isinstance(n, bool):
        kwargs["max_examples"] = max(min(n, 100), n * PERCENT // 100)
    _init(self, parent, **kwargs)


if PERCENT < 100:
    hypothesis.settings.__init__ = _scaled
PYEOF
}

T_WHEEL=0
T_TESTS=0
COUNTS=
run_tests() {
    local run=$BUILD/opt/tcy/run t0 f list=()
    for f in $TESTS; do
        [ -f "$BUILD/opt/tcy/src/$f" ] || die "no such test module in the source: $f"
        list+=("$f")
    done
    in_root "$BUILD" "$VENV/bin/pip" install -q --force-reinstall --no-deps "/opt/tcy/dist/$WHEEL"
    in_root "$BUILD" "$VENV/bin/pip" install -q "/opt/tcy/dist/$WHEEL"   # its dependencies
    # The tests run from a directory holding tests/ but not the package, so they import the
    # installed wheel, and must get the compiled set: a compiled-only test skipped for want of it
    # would make the run pass without proving anything. The C headers come along for the tests
    # that compile C harnesses (a directory without __init__.py: the wheel's package still wins).
    remove_tree "$run"
    mkdir -p "$run/telemetry_cy"
    cp -a "$BUILD/opt/tcy/src/tests" "$BUILD/opt/tcy/src/pyproject.toml" "$run/"
    cp -a "$BUILD/opt/tcy/src/telemetry_cy/includes" "$run/telemetry_cy/"
    write_hypothesis_plugin "$BUILD/opt/tcy/plugins"
    in_root "$BUILD" /bin/sh -c "cd /opt/tcy/run && $VENV/bin/python -c '
import platform, telemetry_cy
from telemetry_cy import backend
b = backend.load(\"compiled\")
assert \"site-packages\" in telemetry_cy.__file__, telemetry_cy.__file__
print(\"arm64 root:\", platform.machine(), platform.python_version(), \"compiled modules:\", b.engine.__file__)
'" || die "the compiled modules do not import from the installed wheel"
    t0=$(now)
    log "pytest (${#list[@]} modules, hypothesis examples at $EXAMPLES %)"
    local rc=0
    in_root "$BUILD" /bin/sh -c "cd /opt/tcy/run && PYTHONPATH=/opt/tcy/plugins $VENV/bin/python -m pytest \
        -q -p no:cacheprovider -p tcy_emulated -rs --junitxml=/opt/tcy/run/report.xml ${list[*]}" || rc=$?
    T_TESTS=$(($(now) - t0))
    [ -s "$run/report.xml" ] || die "pytest did not run the tests (exit $rc): see its output above"
    COUNTS=$(python3 - "$run/report.xml" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
s = root if root.tag == "testsuite" else root.find("testsuite")
n, f, e, sk = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"tests={n} passed={n - f - e - sk} failed={f} errors={e} skipped={sk}")
PYEOF
)
    log "pytest: $COUNTS in $T_TESTS s"
    [ "$rc" = 0 ] || die "tests failed in the arm64 root (exit $rc)"
    case "$COUNTS" in *" skipped=0") ;; *) die "tests were skipped in the arm64 root (see -rs above): every one must run here" ;; esac
}

# ---- the wheel in a fresh root ----------------------------------------------------------------------------------

T_FRESH=0
VERSION_LINE=
fresh_check() {
    local t0
    t0=$(now)
    [ -n "$WHEEL" ] || WHEEL=$(cd "$WHEELS" 2>/dev/null && ls -t telemetry_cy-*.whl 2>/dev/null | head -n 1)
    [ -n "$WHEEL" ] || die "no wheel yet: run '$0 test' first"
    log "fresh arm64 root from the base tarball (python3-venv, no compiler): installing $WHEEL"
    unpack_base "$FRESH"
    mkdir -p "$FRESH/opt/wheel"
    cp "$WHEELS/$WHEEL" "$FRESH/opt/wheel/"
    in_root "$FRESH" /bin/sh -c '! command -v cc && ! command -v gcc' >/dev/null \
        || die "the fresh root has a C compiler; it must not"
    in_root "$FRESH" python3 -m venv /opt/telemetry-cy
    in_root "$FRESH" /opt/telemetry-cy/bin/pip install -q "/opt/wheel/$WHEEL"
    if VERSION_LINE=$(in_root "$FRESH" /opt/telemetry-cy/bin/telemetry-cy --version 2>/dev/null); then
        VERSION_LINE="telemetry-cy --version: $VERSION_LINE"
    else
        # `--version` is newer than some revisions this script may check.
        VERSION_LINE="telemetry-cy --version not available in $REV; __version__ = $(in_root "$FRESH" \
            /opt/telemetry-cy/bin/python -c 'import telemetry_cy; print(telemetry_cy.__version__)')"
    fi
    log "$VERSION_LINE"
    case "$VERSION_LINE" in
        *--version:*"(compiled)"* | *"not available"*) ;;
        *) die "the installed wheel does not run its compiled modules: $VERSION_LINE" ;;
    esac
    cat >"$FRESH/opt/wheel/engine_run.py" <<'PYEOF'
"""A short Engine run on the installed wheel: CBOR readings in, one tick, the aggregates checked."""
import math
import platform
import statistics

import cbor2

import telemetry_cy
from telemetry_cy.backend import ACTIVE

assert ACTIVE.compiled, "the wheel's compiled modules did not load"
assert platform.machine() == "aarch64", platform.machine()
engine = telemetry_cy.Engine(window=10.0, emit_every=5.0, max_keys=1000, key_ttl=60.0)
values = {("gw-01", "temp"): [21.5, 22.0, 22.5, -3.25], ("gw-02", "rh"): [40, 41, 45]}
pushed = 0
for (device, sensor), vs in values.items():
    for i, v in enumerate(vs):
        pushed += engine.push(cbor2.dumps({"d": device, "s": sensor, "v": v, "u": "x", "n": i + 1}), 1.0 + i)
pushed += engine.push(cbor2.dumps([{"d": "gw-03", "s": "p", "v": 1013.25}, {"d": "gw-03", "s": "p", "v": 2.0**60}]), 2.0)
assert engine.push(b"\xff not cbor", 2.0) == 0
aggs = {(a.device, a.sensor): a for a in engine.tick(10.0)}
values[("gw-03", "p")] = [1013.25, 2.0**60]
assert set(aggs) == set(values), sorted(aggs)
for key, vs in values.items():
    a = aggs[key]
    assert a.count == len(vs) and a.sum == math.fsum(vs) and a.min == min(vs) and a.max == max(vs), a.as_dict()
    assert a.first == vs[0] and a.last == vs[-1], a.as_dict()
    assert math.isclose(a.stddev, statistics.pstdev(vs), rel_tol=1e-12, abs_tol=1e-12), (a.stddev, statistics.pstdev(vs))
drops = engine.stats()["drops"]
assert drops["decode_error"] == 1, drops
print(f"Engine run ok on {platform.machine()}: {pushed} readings, {len(aggs)} aggregates, drops {dict((k, v) for k, v in drops.items() if v)}")
PYEOF
    in_root "$FRESH" /opt/telemetry-cy/bin/python /opt/wheel/engine_run.py || die "the Engine run failed in the fresh root"
    T_FRESH=$(($(now) - t0))
    log "fresh-root check passed in $T_FRESH s"
}

# ---- main -----------------------------------------------------------------------------------------------------

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock -n 9 || die "another arm64_check.sh is running on $DIR"
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$CMD" = clean ]; then
    unmount_under "$DIR"
    for d in "$DIR"/*; do remove_tree "$d"; done
    log "removed everything under $DIR"
    exit 0
fi

T0=$(now)
host_setup
base_tarball
build_root
if [ "$CMD" = shell ]; then
    in_root "$BUILD" /bin/bash
    exit $?
fi
copy_source
case "$CMD" in
    all) build_wheel; run_tests; fresh_check ;;
    test) build_wheel; run_tests ;;
    wheel) build_wheel; fresh_check ;;
esac
TOTAL=$(($(now) - T0))
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "command: scripts/arm64_check.sh $CMD --source $SOURCE --examples $EXAMPLES"
    echo "source: $REV"
    echo "host CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) CPUs; $(/usr/bin/qemu-aarch64-static --version | head -n 1)"
    echo "wheel: $WHEEL built in $T_WHEEL s"
    [ -n "$COUNTS" ] && echo "tests: $COUNTS in $T_TESTS s"
    [ -n "$VERSION_LINE" ] && echo "fresh root: $VERSION_LINE; Engine run ok; $T_FRESH s"
    echo "total: $TOTAL s (roots reused where present)"
} | tee "$SUMMARY"
