"""Columnar aggregates (``Engine.tick_columns``, ``telemetry_cy.replay``) to Arrow, pandas, polars.

Needs the optional extra: ``pip install 'telemetry-cy[notebook]'`` (pyarrow and pandas; polars if
you want it). Nothing in the daemon imports this module.

- ``to_arrow(cols)``: a ``pyarrow.Table`` over the engine's own buffers (``Array.from_buffers``,
  no copy): float64 columns, int64 ``count``, ``large_string`` device / sensor / unit (unit null
  where the key's latest reading had none), a float64 column per quantile the engine computes.
- ``to_pandas(cols)``: through Arrow. Strings become pandas' Arrow-backed string dtype
  (``pd.StringDtype("pyarrow")``, missing = ``pd.NA``): the strings stay in Arrow's buffers, where
  the default ``object`` columns would make three Python ``str`` per aggregate, which is the
  very cost the columns avoid (docs/choices.md). Numbers become plain numpy float64 / int64.
- ``to_polars(cols)``: ``polars.from_arrow``, when polars is installed.
"""

from __future__ import annotations

from typing import Any

from telemetry_cy.engine.column_buffers import FLOAT64, INT64, Columns


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:
        raise ImportError("columnar aggregates to Arrow need pyarrow: "
                          "pip install 'telemetry-cy[notebook]'") from exc
    return pyarrow


def to_arrow(cols: Columns) -> Any:
    """A ``pyarrow.Table`` with one column per aggregate field, sharing the buffers of ``cols``
    (they stay alive as long as the table does)."""
    pa = _pyarrow()
    types = {FLOAT64: pa.float64(), INT64: pa.int64()}
    arrays = []
    for name, kind, _ in cols.layout:
        buffers = [None if b is None else pa.py_buffer(b) for b in cols.buffers(name)]
        arrays.append(pa.Array.from_buffers(types.get(kind, pa.large_string()), len(cols),
                                            buffers, null_count=cols.null_count(name)))
    return pa.Table.from_arrays(arrays, names=list(cols.names))


def to_pandas(cols: Columns) -> Any:
    """A ``pandas.DataFrame``: numbers as numpy columns, strings as ``string[pyarrow]``."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("columnar aggregates to pandas need pandas and pyarrow: "
                          "pip install 'telemetry-cy[notebook]'") from exc
    pa = _pyarrow()
    strings = pd.StringDtype("pyarrow")
    mapping = {pa.large_string(): strings, pa.string(): strings}
    # split_blocks: one block per column, so pandas does not copy the floats into a 2-D block
    return to_arrow(cols).to_pandas(types_mapper=mapping.get, split_blocks=True)


def to_polars(cols: Columns) -> Any:
    """A ``polars.DataFrame`` (polars reads the Arrow table; its strings become polars' own)."""
    try:
        import polars as pl
    except ImportError as exc:
        raise ImportError("columnar aggregates to polars need polars and pyarrow: "
                          "pip install polars 'telemetry-cy[notebook]'") from exc
    return pl.from_arrow(to_arrow(cols))
