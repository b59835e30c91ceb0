"""The fuzz seed corpora on every test run (a few seconds; the long fuzzing: scripts/sanitize.sh).

1. The C fuzz targets (fuzz_cbor.c, fuzz_frames.c, fuzz_snapshot.c, fuzz_partial.c with the
   stand-alone driver)
   are built with the system compiler -- with AddressSanitizer + UBSan when the compiler can --
   and replay the corpus plus a few thousand mutants: no crash, no invariant violated.
2. The compiled readers and their pure-Python twins agree on every corpus input: the CBOR reader
   payload by payload (status, readings, counters), the frame reader stream by stream with the
   same cuts into socket reads (acks, packets, records, counters, errors), the partial reader
   message by message (values, or the reason of its refusal).
3. The corpus is what make_corpus.py (make_snapshot_corpus.py, make_partial_corpus.py) writes
   (nobody edited one side only).

Files found by a fuzzer (crash-*, or a libFuzzer corpus directory) are added under corpus/ by hand
after the bug is fixed, so they are replayed here from then on.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.c_build import build_fuzz_target, need_cc

HERE = Path(__file__).resolve().parent
CBOR = sorted((HERE / "corpus" / "cbor").glob("*.bin"))
FRAMES = sorted((HERE / "corpus" / "frames").glob("*.bin"))
PARTIAL = sorted((HERE / "corpus" / "partial").glob("*.bin"))
C_TARGETS = ["cbor", "frames", "snapshot", "partial"]


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory) -> dict[str, Path]:
    cc = need_cc()
    d = tmp_path_factory.mktemp("fuzz")
    return {target: build_fuzz_target(cc, target, d / f"fuzz_{target}") for target in C_TARGETS}


@pytest.mark.parametrize("target", C_TARGETS)
def test_c_target_replays_corpus_and_mutants(harnesses, target, tmp_path):
    corpus = HERE / "corpus" / target
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    run = subprocess.run([str(harnesses[target]), "-runs=20000", "-seed=7", str(corpus)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Done 20000 runs" in run.stderr, run.stderr[-2000:]
    assert "runtime error" not in run.stderr, run.stderr[-4000:]


def test_corpus_is_what_make_corpus_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_corpus", HERE / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for directory, seeds in ((HERE / "corpus" / "cbor", mod.cbor_seeds()),
                             (HERE / "corpus" / "frames", mod.frames_seeds())):
        on_disk = {p.stem: p.read_bytes() for p in directory.glob("*.bin")}
        assert on_disk == seeds, f"{directory}: run python tests/fuzz/make_corpus.py"
    assert len(CBOR) > 200 and len(FRAMES) > 100


@pytest.mark.parametrize("target", ["snapshot", "partial"])
def test_corpus_is_what_its_generator_writes(target):
    spec = importlib.util.spec_from_file_location(f"make_{target}_corpus",
                                                  HERE / f"make_{target}_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    on_disk = {p.stem: p.read_bytes() for p in (HERE / "corpus" / target).glob("*.bin")}
    assert on_disk == mod.seeds(), f"run python tests/fuzz/make_{target}_corpus.py"


# ---- compiled == pure on the corpus --------------------------------------------------------------


def test_cbor_corpus_compiled_equals_pure(compiled_backend, pure_backend):
    compiled, pure = compiled_backend.decode, pure_backend.decode
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for path in CBOR:
        data = path.read_bytes()
        for max_name in (256, 4):
            assert compiled.decode(data, max_name) == pure.decode(data, max_name), path.name


def _frames_run(twin, data: bytes):
    conf, seed, stream = data[0], data[1], data[2:]
    cap = (64, 256, 4096, 65536)[conf & 3]
    v5 = (conf >> 2) & 1
    max_payload = (0, 16, 200, 65536)[(conf >> 3) & 3]
    ring = twin.ByteRing((64, 512, 4096, 65536)[(conf >> 5) & 3])
    try:
        reader = twin.FrameReader(ring, protocol=5 if v5 else 4,
                                  max_payload_bytes=max_payload, buffer_bytes=cap)
    except ValueError as exc:    # e.g. a max payload that cannot fit that ring: same both sides
        return ("refused", str(exc))
    events = []
    rng = 0x9E3779B9 ^ ((seed * 0x01000193) & 0xFFFFFFFF)
    pos = 0
    while pos < len(stream):
        rng = (rng * 1664525 + 1013904223) & 0xFFFFFFFF
        view = reader.writable()
        room = len(view)
        want = room if (rng >> 8) % 4 == 0 else 1 + (rng >> 12) % 97
        n = min(want, room, len(stream) - pos)
        view[:n] = stream[pos:pos + n]
        pos += n
        try:
            acks, packets = reader.feed(n, 1.5)
            events.append(("ok", acks, packets))
        except twin.FrameError as exc:
            events.append(("error", exc.acks, exc.packets))
            reader.reset()
        events.append(("records", ring.pop_many(1 << 20)))
    counters = reader.counters()
    return events, counters


def test_frames_corpus_compiled_equals_pure(compiled_backend, pure_backend):
    for path in FRAMES:
        data = path.read_bytes()
        assert _frames_run(compiled_backend, data) == _frames_run(pure_backend, data), path.name


def test_partial_corpus_compiled_equals_pure(compiled_backend, pure_backend):
    """Each seed as fuzz_partial.c reads it (resealed when its mode byte says so)."""
    from support.partial_messages import outcome, reseal

    kinds = set()
    for path in PARTIAL:
        data = path.read_bytes()
        msg = reseal(data[1:]) if data[0] & 1 and len(data) > 100 else data[1:]
        got = outcome(compiled_backend.read_partial, msg)
        assert got == outcome(pure_backend.read_partial, msg), path.name
        kinds.add(got[1] if got[0] == "refused" else got[1].kind)
    assert kinds >= {1, 2, 3, 4, "malformed", "truncated", "checksum"}
