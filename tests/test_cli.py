"""The `telemetry-cy` command itself: `--version` (what a wheel check on a new platform runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep +
                   os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-m", "telemetry_cy", *args], capture_output=True,
                          text=True, timeout=60, env=environ, cwd=REPO)


@pytest.mark.parametrize("pure, backend", [("0", "compiled"), ("1", "pure")])
def test_version_names_the_release_and_the_backend(pure, backend):
    if backend == "compiled":
        from telemetry_cy import backend as backends
        if "compiled" not in backends.available():
            pytest.skip("compiled set needed: not built")
    release = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    proc = _run("--version", TELEMETRY_CY_PURE=pure)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"telemetry-cy {release} ({backend})\n"


def test_a_command_is_required():
    proc = _run()
    assert proc.returncode == 2 and "required: command" in proc.stderr
