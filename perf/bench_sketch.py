"""pyperf benchmarks of the quantile sketch (includes/tc_sketch.h via ``_sketch``, and its twin).

What each benchmark times, exactly (values are the time per unit named in the last column):

=========================  ========================================================  ============
benchmark                  one loop is ...                                           per
=========================  ========================================================  ============
add_sensor                 ``add_many(array('d'))`` of 10,000 sensor-like values     value
                           (+-20 % around a level) into a sketch that already
                           covers their range: the C loop, no Python per value
add_sensor_new_pane        ``clear()`` + ``add_many`` of the 50 values of one pane   value
                           (10 readings/s, 5 s): the range grows from empty
                           (reshapes, no allocation: clear keeps the buffer)
add_wide                   ``add_many`` of 10,000 values of random sign and          value
                           magnitude in [1e-9, 1e300]: full stores, collapse
add_edges                  ``add_many`` of 10,000 bucket edges B(k): every value     value
                           takes the pow() check of tc_sketch_index
add_python_call            10,000 calls of ``add(v)``: the Python call overhead      value
merge_12_panes             ``clear()`` + 12 ``merge`` of one key's panes (sensor-    key
                           like, 1,000 values each), for 100 keys in turn
merge_12_empty_panes       the same with 12 empty panes: the Python calls alone      key
                           (merge cost in C = merge_12_panes - this)
quantiles_3                ``quantiles((0.5, 0.9, 0.99))`` of a merged window, 100    key
                           keys in turn
to_bytes / from_bytes      one pane sketch (~21 buckets) to its layout and back       pane
pure_add_sensor            the twin's ``add_many`` (list) of the 10,000 values        value
pure_merge_12_panes        the twin's 12 merges per key                               key
pure_quantiles_3           the twin's three quantiles per key                         key
=========================  ========================================================  ============

Alpha is 0.01 throughout. Each setup checks (untimed) that the compiled and the pure sketch hold
the same counts and report the same quantiles, so a broken sketch cannot show up as a fast one.

Run (from the repo root; about a minute with --fast on the 2-core VM)::

    TELEMETRY_CY_ONLY=_sketch .venv/bin/python setup.py build_ext --inplace
    PYTHONPATH=$PWD .venv/bin/python perf/bench_sketch.py --fast -o bench_sketch.json
    PYTHONPATH=$PWD .venv/bin/python perf/bench_sketch.py memory   # bytes per pane and key

``memory`` prints (no timing) the buckets a pane of sensor-like data uses at each alpha and rate,
and what 12 panes cost per key in the two layouts of docs/quantiles.md. Options of our own:
``--only REGEX``. All of pyperf's options work as usual.
"""

from __future__ import annotations

import array
import hashlib
import math
import random
import re
import sys
import time

import pyperf

from bench_wire import Lazy  # perf/ is the script's directory: the same lazy time function

ALPHA = 0.01
QS3 = (0.5, 0.9, 0.99)
N_VALUES = 10_000
KEYS = 100
PANES = 12


class BenchError(RuntimeError):
    pass


def sensor_values(n: int, seed: int, level: float = 21.5, per_second: int = 10) -> list[float]:
    """`n` readings at `per_second`: uniform within +-20 % of a level that drifts slowly (a random
    walk of 0.1 % per second, whatever the rate)."""
    rng = random.Random(seed)
    step = 0.001 / math.sqrt(per_second)
    out = []
    for _ in range(n):
        level *= 1 + rng.gauss(0.0, step)
        out.append(level * (1 + rng.uniform(-0.2, 0.2)))
    return out


def wide_values(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.choice((1.0, -1.0)) * 10 ** rng.uniform(-9, 300) for _ in range(n)]


def edge_values(n: int) -> list[float]:
    from telemetry_cy.engine.sketch_py import mapping
    m = mapping(ALPHA)
    start = m.index(1e-3)
    return [m.edge(start + k % 2000) for k in range(n)]


def classes():
    from telemetry_cy.engine import _sketch, sketch_py
    return _sketch.QuantileSketch, sketch_py.QuantileSketch


def same(compiled, pure) -> None:
    if compiled.buckets() != pure.buckets() or compiled.to_bytes() != pure.to_bytes():
        raise BenchError("compiled and pure sketches differ")
    if compiled.count and compiled.quantiles(QS3) != pure.quantiles(QS3):
        raise BenchError("compiled and pure quantiles differ")


def timed(one, loops: int) -> float:
    clock = time.perf_counter
    t0 = clock()
    for _ in range(loops):
        one()
    return clock() - t0


def add_bench(values_of, kind: str):
    def setup():
        C, P = classes()
        values = values_of()
        c, p = C(ALPHA), P(ALPHA)
        c.add_many(values)
        p.add_many(values)
        same(c, p)
        buf = array.array("d", values)
        if kind == "compiled":
            s = C(ALPHA)
            s.add_many(buf)       # warm: the range is covered
            return lambda loops: timed(lambda: s.add_many(buf), loops)
        if kind == "python_call":
            s = C(ALPHA)
            s.add_many(buf)
            add = s.add

            def calls():
                for v in values:
                    add(v)
            return lambda loops: timed(calls, loops)
        s = P(ALPHA)
        s.add_many(values)
        return lambda loops: timed(lambda: s.add_many(values), loops)
    return setup


def new_pane_bench():
    def setup():
        C, P = classes()
        values = sensor_values(50, 3)
        buf = array.array("d", values)
        s = C(ALPHA)

        def one():
            s.clear()
            s.add_many(buf)
        one()
        p = P(ALPHA)
        p.add_many(values)
        same(s, p)
        return lambda loops: timed(one, loops)
    return setup


def key_panes(cls, empty: bool) -> list[list]:
    out = []
    for key in range(KEYS):
        level = 10 ** random.Random(key).uniform(-2, 4)
        out.append([cls(ALPHA) if empty else _pane(cls, key, i, level) for i in range(PANES)])
    return out


def _pane(cls, key: int, i: int, level: float):
    s = cls(ALPHA)
    s.add_many(sensor_values(1000, key * 100 + i, level))
    return s


def merge_bench(kind: str, empty: bool = False):
    def setup():
        C, P = classes()
        cls = P if kind == "pure" else C
        keys = key_panes(cls, empty)
        w = cls(ALPHA)
        if not empty:   # check: merged compiled == merged pure for one key
            c, p = C(ALPHA), P(ALPHA)
            for i in range(PANES):
                c.merge(_pane(C, 0, i, 10 ** random.Random(0).uniform(-2, 4)))
                p.merge(_pane(P, 0, i, 10 ** random.Random(0).uniform(-2, 4)))
            same(c, p)

        def one():
            for panes in keys:
                w.clear()
                for pane in panes:
                    w.merge(pane)
        return lambda loops: timed(one, loops)
    return setup


def quantiles_bench(kind: str):
    def setup():
        C, P = classes()
        windows = []
        for cls in (C, P):
            ws = []
            for panes in key_panes(cls, False):
                w = cls(ALPHA)
                for pane in panes:
                    w.merge(pane)
                ws.append(w)
            windows.append(ws)
        for c, p in zip(*windows):
            same(c, p)
        ws = windows[1] if kind == "pure" else windows[0]

        def one():
            for w in ws:
                w.quantiles(QS3)
        return lambda loops: timed(one, loops)
    return setup


def bytes_bench(direction: str):
    def setup():
        C, P = classes()
        s = _pane(C, 1, 1, 21.5)
        data = s.to_bytes()
        if P.from_bytes(data).to_bytes() != data:
            raise BenchError("the twin reads the compiled bytes differently")
        if direction == "to":
            return lambda loops: timed(s.to_bytes, loops)
        return lambda loops: timed(lambda: C.from_bytes(data), loops)
    return setup


BENCHES = [   # name, setup, inner loops, unit
    ("add_sensor", add_bench(lambda: sensor_values(N_VALUES, 1), "compiled"), N_VALUES, "value"),
    ("add_sensor_new_pane", new_pane_bench(), 50, "value"),
    ("add_wide", add_bench(lambda: wide_values(N_VALUES, 2), "compiled"), N_VALUES, "value"),
    ("add_edges", add_bench(lambda: edge_values(N_VALUES), "compiled"), N_VALUES, "value"),
    ("add_python_call", add_bench(lambda: sensor_values(N_VALUES, 1), "python_call"), N_VALUES,
     "value"),
    ("merge_12_panes", merge_bench("compiled"), KEYS, "key"),
    ("merge_12_empty_panes", merge_bench("compiled", empty=True), KEYS, "key"),
    ("quantiles_3", quantiles_bench("compiled"), KEYS, "key"),
    ("to_bytes", bytes_bench("to"), 1, "pane"),
    ("from_bytes", bytes_bench("from"), 1, "pane"),
    ("pure_add_sensor", add_bench(lambda: sensor_values(N_VALUES, 1), "pure"), N_VALUES, "value"),
    ("pure_merge_12_panes", merge_bench("pure"), KEYS, "key"),
    ("pure_quantiles_3", quantiles_bench("pure"), KEYS, "key"),
]


# ---- memory (no timing) --------------------------------------------------------------------


def malloc_chunk(n: int) -> int:
    """glibc: a chunk is the request plus 8 bytes, rounded up to 16, at least 32."""
    return max(32, (n + 8 + 15) // 16 * 16)


def cap_class(n: int) -> int:
    """tc_sketch_cap_class: buffers of 2, 6, 10, ... buckets."""
    return min((n + 1) // 4 * 4 + 2, 2048)


def memory() -> None:
    from telemetry_cy.engine.sketch_py import QuantileSketch
    print("Sensor-like data: uniform within +-20 % of a level drifting 0.1 %/s, 12 panes of 5 s.")
    print("per pane: buckets used (mean / max over 200 keys x 12 panes);")
    print("per key, 12 panes: A = tc_sketch in the pane + its own trimmed buffer (32 B + chunk),")
    print("                   B = 16-byte tc_sketch_hdr per pane + counts kept in the key record")
    print()
    print("| alpha | readings/s | buckets/pane mean | max | A: bytes/key (max) "
          "| B: bytes/key (max) |")
    print("|---|---|---|---|---|---|")
    for alpha in (0.005, 0.01, 0.02, 0.05):
        for rate in (1, 10, 100, 10_000):
            per_pane = rate * 5
            used = []
            a_max = b_max = 0
            for key in range(200 if per_pane <= 500 else 10):
                level = 10 ** random.Random(key).uniform(-3, 6)
                a = b = 0
                for i in range(12):
                    s = QuantileSketch(alpha)
                    s.add_many(sensor_values(per_pane, key * 1000 + i, level, rate))
                    n = len(s.buckets()[2]) + len(s.buckets()[4])
                    used.append(n)
                    a += 32 + (malloc_chunk(4 * cap_class(n)) if n else 0)
                    b += 16 + 4 * n
                a_max, b_max = max(a_max, a), max(b_max, b)
            print(f"| {alpha} | {rate:,} | {sum(used) / len(used):.1f} | {max(used)} | "
                  f"{a_max:,} | {b_max:,} |")
    cap = 2 * 1024
    print()
    print(f"hard cap per pane: {cap} buckets = {4 * cap:,} B of counts; per key (12 panes): "
          f"A {12 * (32 + malloc_chunk(4 * cap)):,} B, B {12 * (16 + 4 * cap):,} B")


def _module_state() -> dict:
    import telemetry_cy.engine._sketch as sk
    with open(sk.__file__, "rb") as f:
        return {"sketch_so": hashlib.sha256(f.read()).hexdigest()[:16]}


def _add_cmdline_args(cmd, args):
    if args.only:
        cmd.extend(("--only", args.only))


def main() -> None:
    if sys.argv[1:] == ["memory"]:
        memory()
        return
    runner = pyperf.Runner(add_cmdline_args=_add_cmdline_args)
    runner.argparser.add_argument("--only", default="",
                                  help="run only the benchmarks whose name matches this regex")
    args = runner.parse_args()
    runner.metadata.update(_module_state())
    runner.metadata["alpha"] = str(ALPHA)
    only = re.compile(args.only) if args.only else None
    for name, setup, inner, unit in BENCHES:
        if only is not None and not only.search(name):
            continue
        runner.bench_time_func(name, Lazy(setup), inner_loops=inner,
                               metadata={"unit_of_work": unit})


if __name__ == "__main__":
    main()
