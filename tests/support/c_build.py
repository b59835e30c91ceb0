"""Building and running the tests' C programs: the compiler, a fuzz target with the sanitizers
(or without, where their runtime is missing), the ThreadSanitizer probe, one harness run under
TSan. One place for what every test that compiles C needs (the ring's and the lend protocol's
stress harnesses, the fuzz targets' corpus replays, the pump's floor)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INCLUDES = ROOT / "telemetry_cy" / "includes"
FUZZ = ROOT / "tests" / "fuzz"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer"]


def find_cc() -> str | None:
    """$CC, else cc, gcc or clang: the first on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def need_cc() -> str:
    """The compiler, or skip the test that needs one."""
    cc = find_cc()
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH")
    return cc


def compile_c(cc: str, out: Path, sources: list[Path], flags: list[str],
              timeout: float = 180) -> subprocess.CompletedProcess:
    """cc FLAGS -I<includes> SOURCES -o OUT -lm."""
    return subprocess.run([cc, *flags, f"-I{INCLUDES}", *map(str, sources), "-o", str(out),
                           "-lm"], capture_output=True, text=True, timeout=timeout)


def build_fuzz_target(cc: str, target: str, out: Path) -> Path:
    """tests/fuzz/fuzz_<target>.c with the stand-alone driver, under ASan + UBSan when this
    machine can build and run them, else plain (the checks the target makes itself still run)."""
    sources = [FUZZ / f"fuzz_{target}.c", FUZZ / "fuzz_driver.c"]
    flags = ["-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"]
    r = compile_c(cc, out, sources, [*flags, *SANITIZE])
    if r.returncode != 0 or subprocess.run([str(out), "-runs=0"], capture_output=True,
                                           timeout=60).returncode != 0:
        r = compile_c(cc, out, sources, flags)   # no sanitizer runtime here
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def tsan_cc(tmp_path_factory) -> str:
    """A compiler whose -fsanitize=thread binaries build and run here, or skip."""
    cc = need_cc()
    d = tmp_path_factory.mktemp("tsan_probe")
    probe = d / "probe.c"
    probe.write_text("#include <pthread.h>\nint main(void){return 0;}\n")
    r = compile_c(cc, d / "probe", [probe], ["-fsanitize=thread", "-pthread"])
    if r.returncode != 0:
        pytest.skip(f"{cc} cannot build with -fsanitize=thread (on Debian: the gcc package's "
                    f"libtsan): {r.stderr.strip()[:300]}")
    run = subprocess.run([str(d / "probe")], capture_output=True, text=True, timeout=30)
    if run.returncode != 0:
        # e.g. "FATAL: ThreadSanitizer: unexpected memory mapping" with high ASLR entropy
        pytest.skip(f"ThreadSanitizer binaries do not run here: {run.stderr.strip()[:300]}")
    return cc


def run_tsan_harness(exe: Path, args, timeout: float) -> None:
    """One run of a C harness built with -fsanitize=thread: no TSan warning, exit 0, errors=0."""
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 exitcode=66")
    run = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                         env=env)
    assert "WARNING: ThreadSanitizer" not in run.stderr, run.stderr[:4000]
    assert run.returncode == 0, run.stdout + run.stderr[:4000]
    assert "errors=0" in run.stdout, run.stdout
