"""The example notebook runs from top to bottom, headless, and its numbers are the engine's.

examples/replay_capture.ipynb is executed by nbclient in a real Jupyter kernel (matplotlib on its
"Agg" backend) against the committed capture examples/data/fleet-10min.cap, which
examples/make_capture.py regenerates byte for byte.
"""

from __future__ import annotations

import ast
import os
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NOTEBOOK = EXAMPLES / "replay_capture.ipynb"
CAPTURE = EXAMPLES / "data" / "fleet-10min.cap"


def _outputs(cell) -> str:
    text = []
    for out in cell.get("outputs", []):
        text.append(out.get("text", ""))
        text.append(out.get("data", {}).get("text/plain", ""))
    return "".join(text)


def test_notebook_runs_and_shows_the_replayed_aggregates(monkeypatch, tmp_path):
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib", "pandas", "pyarrow"):
        pytest.importorskip(module)
    import nbformat
    from nbclient import NotebookClient

    from telemetry_cy import Engine, replay

    # the kernel is a child process: it finds this checkout and draws without a display
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel's connection file and IPython's profile: in the test's own directory, not $HOME
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook without outputs"
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]

    engine = Engine(window=60.0, emit_every=5.0, quantiles=[0.5, 0.9, 0.99])
    cols = replay(CAPTURE, engine)
    stats = engine.stats()
    summary = _outputs(code[1])
    assert (f"{stats['received']} messages, {stats['readings']} readings, {len(cols)} aggregates"
            in summary)
    plotted = ast.literal_eval(_outputs(code[2]).strip().splitlines()[-1])
    p99 = [q for d, s, q in zip(cols.column("device"), cols.column("sensor"), cols.column("p99"))
           if (d, s) == ("dev-00001", "temp")]
    assert plotted["points"] == len(p99) > 0
    assert plotted["p99_points"] == sum(1 for q in p99 if q == q) == len(p99)   # none NaN
    drops = _outputs(code[3])
    assert stats["drops"]["decode_error"] > 0
    for reason, n in stats["drops"].items():
        assert f"{reason}" in drops and str(n) in drops


def test_the_capture_is_what_make_capture_writes(tmp_path):
    ns = runpy.run_path(str(EXAMPLES / "make_capture.py"), run_name="make_capture")
    ns["write"](tmp_path / "again.cap")
    assert (tmp_path / "again.cap").read_bytes() == CAPTURE.read_bytes()
