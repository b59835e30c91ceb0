"""The pane merge's two-lane division (``tc_div2`` in includes/tc_window.h: SSE2 on x86-64, NEON
on aarch64) gives the bits of the scalar division. tests/c/merge_digest.c digests many merges of
a random stream; built with the lanes and with the scalar fallback (``-DTC_SCALAR_DIV``), the
digests agree, and on aarch64 too (under qemu, when a cross compiler and qemu-aarch64 are at
hand). The property tests hold the compiled engine to the pure twin; this holds the two C paths
to each other, whichever one a build takes."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INCLUDES = ROOT / "telemetry_cy" / "includes"
SOURCE = ROOT / "tests" / "c" / "merge_digest.c"
# the build flags of setup.py that bear on floating point
FLAGS = ["-std=gnu11", "-O2", "-fno-strict-aliasing", "-ffp-contract=off"]
SEEDS = ("1", "2", "3")


def _digests(cc: list[str], out: Path, extra: list[str], run: list[str]) -> list[str]:
    built = subprocess.run([*cc, *FLAGS, *extra, f"-I{INCLUDES}", str(SOURCE), "-o", str(out),
                            "-lm"], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    digests = []
    for seed in SEEDS:
        done = subprocess.run([*run, str(out), seed], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        digests.append(done.stdout.strip())
    return digests


def _native_cc() -> list[str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return [cc]


def test_lanes_and_scalar_division_give_the_same_bits(tmp_path):
    cc = _native_cc()
    lanes = _digests(cc, tmp_path / "lanes", [], [])
    assert lanes == _digests(cc, tmp_path / "scalar", ["-DTC_SCALAR_DIV"], [])
    assert len(set(lanes)) == len(SEEDS)      # the seeds give different streams


def test_aarch64_lanes_give_the_same_bits(tmp_path):
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64-static")
    if cross is None or qemu is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64-static on an x86-64 host")
    arm = _digests([cross], tmp_path / "arm", ["-static"], [qemu])
    assert arm == _digests(_native_cc(), tmp_path / "native", [], [])
