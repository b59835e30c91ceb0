"""Writes the seed corpus of fuzz_partial.c (deterministic; the files are checked in).

    python tests/fuzz/make_partial_corpus.py    # rewrites tests/fuzz/corpus/partial/

corpus/partial/<name>.bin: the target's mode byte (1: reseal, so that mutants reach the field
checks; 0: the bytes as they are) then a message of partial_format.write: every kind, arrival and
event time, quantiles off and on at several accuracies, no pane to 12, names and units in and out
of ASCII (tests/support/partial_messages.py makes them, as for tests/test_partial_reader.py), and
a few refused ones (a key twice, truncated, a bad checksum).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))      # tests/: the support package
sys.path.insert(0, str(HERE))

from make_snapshot_corpus import write_corpus  # noqa: E402

from support.partial_messages import random_message, random_panes  # noqa: E402
from telemetry_cy.engine import partial_format as pf  # noqa: E402

PARTIAL_DIR = HERE / "corpus" / "partial"
RESEAL, RAW = b"\x01", b"\x00"


def seeds() -> dict[str, bytes]:
    out = {}
    for kind, name in sorted(pf.KINDS.items()):
        for i in range(3):
            rng = random.Random(f"{name}-{i}")
            out[f"{name}-{i}"] = RESEAL + random_message(rng, kind, n_panes=rng.choice([0, 3, 12]),
                                                         wide=i == 0)
    for q, acc in ((None, 0.01), ((0.5,), 0.005), ((0.1, 0.5, 0.9, 0.99), 0.05)):
        ws = pf.window_settings(10.0, 5.0, "event", 5.0, q, acc)
        rng = random.Random(f"panes-{acc}")
        panes = random_panes(rng, ws, 7, 8, wide=False)
        data = pf.write(pf.KIND_PANES, ws, "instance-é", 3, 7, 1, 4, panes)
        tag = f"q{len(q)}-{acc}" if q else "noq"
        out[f"panes-{tag}"] = RESEAL + data
        out[f"panes-{tag}-raw"] = RAW + data
        twice = pf.write(pf.KIND_PANES, ws, "i", 3, 7, 1, 4, [panes[0], panes[1], panes[0]])
        out[f"panes-{tag}-twice"] = RESEAL + twice
    # an instance id of 256 bytes, the message built around it (the writer refuses one)
    leave = bytearray(pf.write(pf.KIND_LEAVE, ws, "x" * 255, 0, 7, 0, 1))
    leave[pf.HEADER.size + 8 * len(ws.quantiles):pf.HEADER.size + 8 * len(ws.quantiles)] = b"y"
    leave[68:72] = (256).to_bytes(4, "little")
    out["instance-256"] = RESEAL + bytes(leave)   # resealed by the target
    data = out["panes-noq"][1:]
    out["truncated"] = RAW + data[:-9]
    out["checksum"] = RAW + data[:-1] + bytes([data[-1] ^ 1])
    # whole seeds: libFuzzer cuts corpus files to -max_len (scripts/sanitize.sh: 4096)
    assert max(map(len, out.values())) <= 4096
    return out


def main() -> int:
    return write_corpus(PARTIAL_DIR, seeds())


if __name__ == "__main__":
    sys.exit(main())
