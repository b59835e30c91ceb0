"""The columnar tick against the row tick at many keys, and the columns to pandas.

For ``--keys`` keys (default 1,000,000) with every key's panes filled (``--rounds`` intervals of
one reading per key), each rep feeds one more interval and closes it twice over, alternately:

- ``tick_s``: ``Engine.tick`` building one ``Aggregate`` per key (and the list of them);
- ``tick_columns_s``: ``Engine.tick_columns`` filling the column buffers in C and handing them
  out as a ``Columns`` (the call, including filling every column);
- ``to_arrow_s``: ``Columns.to_arrow()`` (zero-copy ``pyarrow.Array.from_buffers``);
- ``to_pandas_s``: ``Columns.to_pandas()`` (through Arrow; strings as ``string[pyarrow]``);
- ``to_polars_s``: ``Columns.to_polars()``, when polars is installed;
- once, ``rows_to_pandas_s``: the row path a notebook used before,
  ``pandas.DataFrame([a.as_dict() for a in engine.tick(...)])`` after the tick.

Each rep drops everything it made (the Columns, the table, the frames) before the next one, as a
consumer that handles a tick and moves on does: the engine then fills the memory of the previous
columns again (``_ColumnBuilder._reclaim``). ``--kept`` more ticks follow whose columns are all
kept alive, so each one fills fresh memory (``tick_columns_kept_s``): what a notebook that holds
every tick pays.

Two identical engines are fed the same readings, one ticked with ``tick``, the other with
``tick_columns``, in alternating order from rep to rep, so both see the same table state and the
same machine load. Times are this thread's CPU time (``time.thread_time``; ``--clock wall`` for
wall time): the machine is shared. Medians of ``--reps``, ratio = median tick / median
tick_columns, printed and written as JSON::

    PYTHONPATH=$PWD .venv/bin/python perf/columns_tick.py --keys 1000000 -o /tmp/columns.json

``--quantiles 0.5,0.9,0.99`` runs the same with engines that compute those quantiles. (Event time
is not measured here: there the watermark, moved by the readings, closes the windows while they
are pushed, so the aggregates are built inside ``push_many`` and a tick call only hands them
over.)

Not a pyperf benchmark: one measurement is a whole tick of up to a second.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # PYTHONPATH (a snapshot of the package) wins over the working tree
sys.path.insert(0, str(ROOT / "perf"))

from payloads import PayloadSet  # noqa: E402
from telemetry_cy.engine._engine import Engine  # noqa: E402
from tick_to_wire import EMIT_EVERY, T0, WINDOW, feed_interval  # noqa: E402


def timed(clock, fn, *args):
    t0 = clock()
    out = fn(*args)
    return out, clock() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="intervals fed before the timed ticks")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kept", type=int, default=3, help="ticks whose columns are all kept")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--quantiles", default="",
                    help="the engines' quantiles, e.g. 0.5,0.9,0.99 (default: none)")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    try:
        import polars  # noqa: F401
        have_polars = True
    except ImportError:
        have_polars = False
    import pandas as pd

    ps = PayloadSet.cached(args.keys, 1)
    config = dict(window=WINDOW, emit_every=EMIT_EVERY, max_keys=args.keys + 1,
                  quantiles=[float(q) for q in args.quantiles.split(",") if q])
    rows_engine, cols_engine = Engine(**config), Engine(**config)
    engines = (rows_engine, cols_engine)
    interval = 0
    for interval in range(args.rounds):
        feed_interval(engines, ps, args.keys, interval)
        rows_engine.tick(T0 + EMIT_EVERY * (interval + 1))
        cols_engine.tick_columns(T0 + EMIT_EVERY * (interval + 1))
    reps = []
    for rep in range(args.reps + 1):        # the last one: the row path to pandas, once
        interval += 1
        feed_interval(engines, ps, args.keys, interval)
        now = T0 + EMIT_EVERY * (interval + 1)
        gc.collect()
        if rep == args.reps:
            aggregates, t_tick = timed(clock, rows_engine.tick, now)
            _, t_df = timed(clock, lambda: pd.DataFrame([a.as_dict() for a in aggregates]))
            cols_engine.tick_columns(now)
            rows_to_pandas = t_tick + t_df
            print(f"row path to pandas: tick {t_tick:.3f} s + DataFrame of dicts {t_df:.3f} s",
                  flush=True)
            del aggregates
            break
        order = ("rows", "cols") if rep % 2 == 0 else ("cols", "rows")
        row: dict[str, float] = {}
        for which in order:
            if which == "rows":
                aggregates, row["tick_s"] = timed(clock, rows_engine.tick, now)
                n_rows = len(aggregates)
                del aggregates
            else:
                cols, row["tick_columns_s"] = timed(clock, cols_engine.tick_columns, now)
                n_cols = len(cols)
        if n_rows != args.keys or n_cols != args.keys:
            raise SystemExit(f"rep {rep}: {n_rows} / {n_cols} aggregates, want {args.keys}")
        table, row["to_arrow_s"] = timed(clock, cols.to_arrow)
        del table
        df, row["to_pandas_s"] = timed(clock, cols.to_pandas)
        assert len(df) == args.keys
        del df
        if have_polars:
            pl_df, row["to_polars_s"] = timed(clock, cols.to_polars)
            del pl_df
        del cols
        reps.append(row)
        print(f"rep {rep}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    kept, kept_times = [], []
    for _ in range(args.kept):
        interval += 1
        feed_interval((cols_engine,), ps, args.keys, interval)
        gc.collect()
        cols, t = timed(clock, cols_engine.tick_columns, T0 + EMIT_EVERY * (interval + 1))
        kept.append(cols)
        kept_times.append(t)
    del kept
    med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    if kept_times:
        med["tick_columns_kept_s"] = statistics.median(kept_times)
        print(f"tick_columns with every Columns kept: {', '.join(f'{t:.4f}' for t in kept_times)}")
    ratio = med["tick_s"] / med["tick_columns_s"]
    print(f"{args.keys:,} keys, {args.clock} time, medians of {args.reps}: tick "
          f"{med['tick_s']:.3f} s, tick_columns {med['tick_columns_s']:.3f} s "
          f"({ratio:.1f}x), to_arrow {med['to_arrow_s'] * 1e3:.2f} ms, to_pandas "
          f"{med['to_pandas_s']:.3f} s, tick_columns + to_pandas "
          f"{med['tick_columns_s'] + med['to_pandas_s']:.3f} s"
          + (f", to_polars {med['to_polars_s']:.3f} s" if have_polars else "")
          + f"; row path to pandas {rows_to_pandas:.3f} s"
          + (f"; tick_columns, columns kept {med['tick_columns_kept_s']:.3f} s "
             f"({med['tick_s'] / med['tick_columns_kept_s']:.1f}x)" if kept_times else ""))
    if args.output:
        Path(args.output).write_text(json.dumps({
            "keys": args.keys, "clock": args.clock, "quantiles": config["quantiles"],
            "reps": reps, "medians": med,
            "tick_over_tick_columns": ratio, "rows_to_pandas_s": rows_to_pandas,
            "tick_columns_kept_s": kept_times,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version(), "load": os.getloadavg()}},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
