"""The notebook guide's cells run and agree with the engine's own accounting."""

from __future__ import annotations

import runpy
from pathlib import Path

GUIDE = Path(__file__).resolve().parent.parent / "examples" / "notebook_guide.py"


def test_notebook_guide_cells_run():
    ns = runpy.run_path(str(GUIDE), run_name="guide")  # not __main__: no plotting
    stats, aggregates, recording = ns["eng"].stats(), ns["aggregates"], ns["recording"]
    drops = stats["drops"]
    assert stats["received"] == len(recording)
    assert stats["received"] == stats["payloads"] + drops["decode_error"] + drops["oversize"]
    assert stats["aggregates"] == len(aggregates) > 0
    assert ns["temp"] and all(a.sensor == "temp" for a in ns["temp"])
