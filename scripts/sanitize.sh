#!/usr/bin/env bash
# Sanitizer job: fuzz the C readers under AddressSanitizer + UBSan, stress the ring under
# ThreadSanitizer, and run the compiled modules' tests against an ASan + UBSan build of them.
# Everything is built in a temporary directory; the working tree (and its .so files) is untouched.
#
#   scripts/sanitize.sh                # all stages, about 2-3 minutes on a 2-core machine
#   scripts/sanitize.sh fuzz tsan      # only these stages (fuzz | tsan | python)
#   FUZZ_RUNS=1000000 scripts/sanitize.sh fuzz       # the 1M-inputs-per-target job (~1-2 min
#                                                    # per target with libFuzzer, see perf/fuzz.md)
#
# Settings (environment):
#   FUZZ_RUNS=N        generated inputs per fuzz target after the corpus (default 200000)
#   FUZZ_MAX_LEN=N     largest generated input (default 4096; corpus files are replayed whole)
#   FUZZ_TARGETS="..." fuzz targets to run (default "cbor frames sketch jsack snapshot partial")
#   FUZZ_SEED=N        seed (libFuzzer -seed / the stand-alone driver's PRNG; default 1)
#   FUZZ_ENGINE=libfuzzer|driver   default: libFuzzer when clang can link -fsanitize=fuzzer,
#                      else the stand-alone driver (tests/fuzz/fuzz_driver.c) with cc
#   TSAN_RECORDS=N     records per ThreadSanitizer run of the ring stress harness (default 400000)
#   KEEP=1             keep the temporary directory (new libFuzzer inputs, crash files)
#   PYTHON=...         interpreter for the python stage (default .venv/bin/python, else python3)
# Exit status: 0 when every stage passed; 1 otherwise (the failing stage's output says why).
# Crash inputs are copied to ./sanitize-artifacts/ for a bug report.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
INC=$ROOT/telemetry_cy/includes
FUZZ=$ROOT/tests/fuzz
FUZZ_RUNS=${FUZZ_RUNS:-200000}
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-4096}
FUZZ_SEED=${FUZZ_SEED:-1}
TSAN_RECORDS=${TSAN_RECORDS:-400000}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
CC=${CC:-cc}
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(fuzz tsan python)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tcy-sanitize.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT

log() { printf '[sanitize] %s\n' "$*" >&2; }
FAILED=()
fail() { log "FAILED: $*"; FAILED+=("$*"); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

save_artifacts() {   # $1: directory holding crash-*/timeout-*/leak-* files
    local found=0
    for f in "$1"/crash-* "$1"/timeout-* "$1"/leak-* "$1"/oom-*; do
        [ -e "$f" ] || continue
        mkdir -p "$ROOT/sanitize-artifacts"
        cp "$f" "$ROOT/sanitize-artifacts/"
        found=1
    done
    [ $found = 1 ] && log "crash inputs copied to sanitize-artifacts/"
    return 0
}

# ---- fuzz: the CBOR, MQTT frame, sketch, JetStream ack, snapshot (keys section) and partial readers ----

SAN_FLAGS=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
C_FLAGS=(-std=gnu11 -O1 -g -Wall -Wextra -I"$INC")

pick_engine() {
    if [ -n "${FUZZ_ENGINE:-}" ]; then echo "$FUZZ_ENGINE"; return; fi
    if command -v clang >/dev/null 2>&1; then
        printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n){(void)d;(void)n;return 0;}\n' \
            > "$TMP/probe.c"
        if clang -fsanitize=fuzzer,address,undefined "$TMP/probe.c" -o "$TMP/probe" >/dev/null 2>&1 \
            && "$TMP/probe" -runs=1 >/dev/null 2>&1; then
            echo libfuzzer; return
        fi
    fi
    echo driver
}

stage_fuzz() {
    local engine; engine=$(pick_engine)
    log "fuzz: engine=$engine runs=$FUZZ_RUNS per target, max_len=$FUZZ_MAX_LEN, seed=$FUZZ_SEED"
    for target in ${FUZZ_TARGETS:-cbor frames sketch jsack snapshot partial}; do
        local exe=$TMP/fuzz_$target work=$TMP/work_$target art=$TMP/art_$target
        mkdir -p "$work" "$art"
        if [ "$engine" = libfuzzer ]; then
            clang "${C_FLAGS[@]}" -fsanitize=fuzzer "${SAN_FLAGS[@]}" \
                "$FUZZ/fuzz_$target.c" -o "$exe" -lm || { fail "build fuzz_$target"; continue; }
        else
            "$CC" "${C_FLAGS[@]}" "${SAN_FLAGS[@]}" "$FUZZ/fuzz_$target.c" "$FUZZ/fuzz_driver.c" \
                -o "$exe" -lm || { fail "build fuzz_$target"; continue; }
        fi
        local t0; t0=$(now)
        local out=$TMP/fuzz_$target.log
        # detect_leaks: a leak per input would show within the first runs
        if (cd "$art" && ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
                UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
                "$exe" -runs="$FUZZ_RUNS" -max_len="$FUZZ_MAX_LEN" -seed="$FUZZ_SEED" \
                -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art/" \
                "$work" "$FUZZ/corpus/$target") >"$out" 2>&1; then
            local line
            line=$(grep -E '^Done [0-9]+ runs' "$out" | tail -1 || true)
            local cov
            cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$out" | tail -1 || true)
            log "fuzz_$target: ok in $(since "$t0") s: ${line:-?} ${cov:+($cov)}"
        else
            tail -60 "$out" >&2
            save_artifacts "$art"
            fail "fuzz_$target (log above)"
        fi
        if grep -q "runtime error" "$out"; then
            grep -m5 "runtime error" "$out" >&2
            fail "fuzz_$target: UBSan report"
        fi
    done
}

# ---- tsan: the C stress harnesses of the SPSC ring and of the lend protocol (tests/c/) -----------

# One TSan harness run: tsan_run NAME EXE SUMMARY_REGEX "ARGS". Passes when it exits 0, TSan
# warns of nothing and it prints errors=0; logs the part of its output SUMMARY_REGEX matches.
tsan_run() {
    local name=$1 exe=$2 summary=$3 args=$4
    local t0; t0=$(now)
    local out rc
    # shellcheck disable=SC2086
    out=$(TSAN_OPTIONS="halt_on_error=1 exitcode=66" "$exe" $args 2>&1) && rc=0 || rc=$?
    if grep -q "unexpected memory mapping" <<<"$out"; then
        # high ASLR entropy (newer kernels) breaks older TSan runtimes: retry without ASLR
        # shellcheck disable=SC2086
        out=$(TSAN_OPTIONS="halt_on_error=1 exitcode=66" setarch "$(uname -m)" -R "$exe" $args 2>&1) \
            && rc=0 || rc=$?
    fi
    if [ "$rc" = 0 ] && ! grep -q "WARNING: ThreadSanitizer" <<<"$out" && grep -q "errors=0" <<<"$out"; then
        log "tsan $name $args: ok in $(since "$t0") s: $(grep -o "$summary" <<<"$out" | head -1)"
    else
        printf '%s\n' "$out" | tail -40 >&2
        fail "tsan $name $args"
    fi
}

stage_tsan() {
    local exe=$TMP/spsc_stress_tsan
    if ! "$CC" -std=gnu11 -fsanitize=thread -O1 -g -pthread -I"$INC" "$ROOT/tests/c/spsc_stress.c" \
            -o "$exe"; then
        fail "tsan: build (on Debian the gcc package ships libtsan)"; return
    fi
    local n=$TSAN_RECORDS
    # records seed capacity max_payload delay_every yield_on_full (see spsc_stress.c)
    local configs=("$n 1 4096 200 0 1" "$n 2 65536 100 0 1" "$n 3 65536 100 0 0"
                   "$((n / 2)) 4 16384 64 500 1" "$((n / 4)) 5 1048576 2000 0 0")
    for args in "${configs[@]}"; do
        tsan_run spsc_stress "$exe" 'received=[0-9]* dropped=[0-9]*' "$args"
    done
    # the lend protocol (tc_park.h): producer, consumer and kicker threads, the consumer's state
    # handed back and forth; -Wno-tsan: TSan does not model the doorbell's seq_cst fences, the
    # lend word's acquire/release is what this run checks
    local lend=$TMP/lend_stress_tsan
    if ! "$CC" -std=gnu11 -fsanitize=thread -O1 -g -pthread -Wno-tsan -I"$INC" \
            "$ROOT/tests/c/lend_stress.c" -o "$lend"; then
        fail "tsan: build lend_stress"; return
    fi
    # records seed capacity gil_every kick_us (see lend_stress.c)
    local lend_configs=("$((n / 2)) 1 65536 37 300" "$((n / 2)) 2 4096 0 50"
                        "$((n / 4)) 3 1048576 5 1000")
    for args in "${lend_configs[@]}"; do
        tsan_run lend_stress "$lend" 'by_lender=[0-9]* lends=[0-9]*' "$args"
    done
}

# ---- python: the compiled modules built with ASan + UBSan, their tests run against that build -------

stage_python() {
    local build=$TMP/py
    mkdir -p "$build"
    cp "$ROOT/setup.py" "$ROOT/pyproject.toml" "$build/"
    # the package without the working tree's compiled files. Its Cython-generated .c files come
    # along (tar keeps their times): the generated C does not depend on the sanitizer flags, and
    # cythonize regenerates any that is older than its .pyx, .pxd or headers; so the build only
    # compiles, and compiles the C the main suite ran.
    (cd "$ROOT" && tar cf - --exclude='*.so' --exclude='__pycache__' telemetry_cy) \
        | (cd "$build" && tar xf -)
    local t0; t0=$(now)
    if ! (cd "$build" && TELEMETRY_CY_SANITIZE=address,undefined "$PY" setup.py -q build_ext \
            --inplace -j "$(nproc 2>/dev/null || echo 2)" >"$TMP/build.log" 2>&1); then
        tail -40 "$TMP/build.log" >&2
        fail "python: ASan build"; return
    fi
    log "python: ASan+UBSan build of the compiled modules in $(since "$t0") s"
    local asan; asan=$(gcc -print-file-name=libasan.so)
    if [ ! -e "$asan" ]; then fail "python: libasan.so not found (gcc -print-file-name)"; return; fi
    t0=$(now)
    # Python itself is not instrumented: preload the runtime, no leak check (the interpreter's own
    # allocations would all be reported), stop on the first real error.
    local env=(LD_PRELOAD="$asan" PYTHONPATH="$build"
               ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0
               UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
               PYTHONDONTWRITEBYTECODE=1)
    local which
    which=$(cd "$build" && env "${env[@]}" "$PY" -c 'import telemetry_cy.engine._decode as m; print(m.__file__)')
    case "$which" in "$build"/*) ;; *) fail "python: the ASan build is not the one imported ($which)"; return;; esac
    # cwd = the build dir, so `telemetry_cy` resolves there and not in the working tree. Left
    # out here, where every test costs several times more, and run in the main suite: the cases
    # of the pure twins alone (ids with `pure` and without `compiled`), which run no compiled
    # code; the seed corpora checked against their generators (pure Python); and the C fuzz
    # targets' corpus replays (`c_target_replays`, `fuzz_target_replays`: plain C programs the
    # test builds with ASan+UBSan itself, which the fuzz stage above runs on the same corpora
    # with 200,000 generated inputs each).
    # -n auto: one worker per CPU (each inherits the preload), as in the main suite
    if (cd "$build" && env "${env[@]}" "$PY" -m pytest -q -p no:cacheprovider -x \
            -n auto --dist worksteal \
            --rootdir "$ROOT" -c "$ROOT/pyproject.toml" \
            "$ROOT/tests/test_decode.py" "$ROOT/tests/test_frames.py" "$ROOT/tests/test_ring.py" \
            "$ROOT/tests/test_lend.py" \
            "$ROOT/tests/test_engine.py" "$ROOT/tests/test_engine_event.py" \
            "$ROOT/tests/test_snapshot.py" "$ROOT/tests/test_partials.py" \
            "$ROOT/tests/test_partial_reader.py" \
            "$ROOT/tests/test_engine_quantiles.py" "$ROOT/tests/test_columns.py" \
            "$ROOT/tests/test_wire.py" "$ROOT/tests/test_float_text.py" \
            "$ROOT/tests/test_sketch.py" \
            "$ROOT/tests/test_jetstream_acks.py" "$ROOT/tests/fuzz/test_fuzz_corpus.py" \
            -k "not thread_sanitizer and not strict_c11 and not (pure and not compiled) \
                and not corpus_is_what and not c_target_replays and not fuzz_target_replays" \
            >"$TMP/pytest.log" 2>&1) \
            && ! grep -qE "ERROR: AddressSanitizer|runtime error" "$TMP/pytest.log"; then
        log "python: $(tail -1 "$TMP/pytest.log") under ASan+UBSan in $(since "$t0") s"
    else
        grep -E -A30 "ERROR: AddressSanitizer|runtime error" "$TMP/pytest.log" | head -60 >&2 || true
        tail -30 "$TMP/pytest.log" >&2
        fail "python: tests under ASan+UBSan"
    fi
}

T0=$(now)
for stage in "${STAGES[@]}"; do
    case "$stage" in
        fuzz) stage_fuzz ;;
        tsan) stage_tsan ;;
        python) stage_python ;;
        *) log "unknown stage $stage (fuzz | tsan | python)"; exit 2 ;;
    esac
done
if [ ${#FAILED[@]} -gt 0 ]; then
    log "failed after $(since "$T0") s: ${FAILED[*]}"
    exit 1
fi
log "all passed in $(since "$T0") s (${STAGES[*]})"
