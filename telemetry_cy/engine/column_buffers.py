"""A tick's aggregates as columns: ``Engine.tick_columns(now)`` returns a ``Columns``.

One column per field of an aggregate, each as Arrow's buffers, so pyarrow (and through it pandas
and polars) can take them without a copy and without a Python object per aggregate
(``telemetry_cy.columns``). The columns are ``rules.AGGREGATE_FIELDS`` but for the quantile
fields, then one ``float64`` column per quantile the engine computes, in the engine's order
(its list of quantile field names; ``column_layout``): a quantile the engine does not compute
has no column, as it has no key in ``Aggregate.as_dict()``. This module holds the buffers only:
it imports neither pyarrow nor numpy, which a daemon on a Pi does not have.

Buffers, in Arrow's order (``Columns.buffers(name)``):

- float field (``float64``): ``(validity, values)``, values a memoryview of C doubles (a
  quantile is NaN where the window held more values than its sketch counts, never null);
- ``count`` (``int64``): ``(validity, values)``, values a memoryview of int64;
- device, sensor, unit (``large_string``): ``(validity, offsets, data)``: row i is
  ``data[offsets[i]:offsets[i + 1]]`` (UTF-8), offsets int64 (``n + 1`` of them, from 0).

``validity`` is None when the column has no null (every column but ``unit``, and ``unit`` when
every key had one); otherwise an Arrow bitmap: bit ``i % 8`` (least significant first) of byte
``i // 8`` is 1 when row i has a value. A null row's value is 0 and its string is empty.

``ColumnBuilder`` is the pure-Python filler (the pure twin's tick, and the slow paths of the
compiled one); the compiled engine fills the same buffers in C (``_engine.pyx``).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from telemetry_cy.engine.rules import AGGREGATE_FIELDS, aggregate_field_type

FLOAT64, INT64, STRING = "float64", "int64", "large_string"

#: One column: (name, kind, nullable).
Column = tuple[str, str, bool]


def field_kind(name: str) -> tuple[str, bool]:
    """``(kind, nullable)`` of an aggregate field's column: kind is FLOAT64, INT64 or STRING."""
    t = aggregate_field_type(name)
    for kind, base in ((STRING, str), (INT64, int), (FLOAT64, float)):
        if t is base:
            return kind, False
        if t == base | None:
            return kind, True
    raise TypeError(f"aggregate field {name!r} has no column type ({t})")


#: The columns every tick has: the statistics (AGGREGATE_FIELDS).
COLUMNS: tuple[Column, ...] = tuple((name, *field_kind(name)) for name in AGGREGATE_FIELDS)


def column_layout(quantile_names: Sequence[str] = ()) -> tuple[Column, ...]:
    """The columns of an engine that computes the quantile fields ``quantile_names`` (the
    engine's own list, in its order): COLUMNS, then one float64 column per quantile."""
    return COLUMNS + tuple((name, FLOAT64, False) for name in quantile_names)


class Columns:
    """Aggregates as columns (one per ``names``, ``len(self)`` rows), oldest tick first and, in
    a tick, in the same order as ``Engine.tick``'s list."""

    __slots__ = ("layout", "names", "_kinds", "_n", "_buffers", "_nulls")

    def __init__(self, n: int, buffers: dict[str, tuple], nulls: dict[str, int],
                 layout: tuple[Column, ...] = COLUMNS) -> None:
        self.layout = layout   # (name, kind, nullable) of each column, in order
        self.names: tuple[str, ...] = tuple(name for name, _, _ in layout)
        self._kinds = {name: kind for name, kind, _ in layout}
        self._n = n
        self._buffers = buffers
        self._nulls = nulls

    def __len__(self) -> int:
        return self._n

    @property
    def num_rows(self) -> int:
        return self._n

    def buffers(self, name: str) -> tuple:
        """Arrow's buffers of column ``name``: ``(validity, values)`` or, for a string column,
        ``(validity, offsets, data)`` (module docstring)."""
        return self._buffers[name]

    def null_count(self, name: str) -> int:
        return self._nulls[name]

    def column(self, name: str) -> list:
        """Column ``name`` as Python values (None for a null): one object per row, for tests
        and small results; use ``to_arrow``/``to_pandas``/``to_polars`` for large ones."""
        kind = self._kinds[name]
        bufs = self._buffers[name]
        validity = bufs[0]
        if kind == STRING:
            offsets, data = bufs[1], bufs[2]
            raw = bytes(data)
            out: list = [raw[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(self._n)]
        else:
            out = bufs[1].tolist()
        if validity is not None:
            out = [v if validity[i >> 3] >> (i & 7) & 1 else None for i, v in enumerate(out)]
        return out

    def rows(self) -> list[tuple]:
        """Each aggregate as a tuple of its values in ``names`` order."""
        return list(zip(*(self.column(name) for name in self.names))) if self._n else []

    def to_dicts(self) -> list[dict[str, Any]]:
        """Each aggregate as a dict, equal to ``Aggregate.as_dict()`` of the row tick."""
        return [dict(zip(self.names, row)) for row in self.rows()]

    def to_arrow(self):
        """A ``pyarrow.Table`` over these buffers, no copy (``telemetry_cy.columns``)."""
        from telemetry_cy.columns import to_arrow
        return to_arrow(self)

    def to_pandas(self):
        """A ``pandas.DataFrame`` through Arrow (``telemetry_cy.columns.to_pandas``)."""
        from telemetry_cy.columns import to_pandas
        return to_pandas(self)

    def to_polars(self):
        """A ``polars.DataFrame`` through Arrow (``telemetry_cy.columns.to_polars``)."""
        from telemetry_cy.columns import to_polars
        return to_polars(self)

    @staticmethod
    def concat(parts: Iterable[Columns]) -> Columns:
        """The rows of ``parts``, in order, as one Columns (a copy, unless one part holds all
        the rows). The parts have one layout (they came from one engine)."""
        every = list(parts)
        parts = [p for p in every if len(p)]
        if len(parts) == 1 or (not parts and every):
            return parts[0] if parts else every[0]
        layout = parts[0].layout if parts else COLUMNS
        if any(p.layout != layout for p in parts):
            raise ValueError("Columns.concat: the parts have different columns")
        n = sum(len(p) for p in parts)
        buffers: dict[str, tuple] = {}
        nulls: dict[str, int] = {}
        for name, kind, _ in layout:
            nulls[name] = sum(p.null_count(name) for p in parts)
            validity = memoryview(_concat_bits(parts, name, n)) if nulls[name] else None
            if kind == STRING:
                offsets, data = array("q", [0]), bytearray()
                for p in parts:
                    _, offs, chars = p.buffers(name)
                    base = len(data)
                    offsets.extend(o + base for o in offs[1:])
                    data += chars
                buffers[name] = (validity, memoryview(offsets), memoryview(data))
            else:
                values = array("d" if kind == FLOAT64 else "q")
                for p in parts:
                    values.frombytes(p.buffers(name)[1].cast("B"))
                buffers[name] = (validity, memoryview(values))
        return Columns(n, buffers, nulls, layout)

    def __repr__(self) -> str:
        return f"Columns({self._n} rows: {', '.join(self.names)})"


def _concat_bits(parts: list[Columns], name: str, n: int) -> bytearray:
    bits = bytearray((n + 7) // 8)
    at = 0
    for p in parts:
        v = p.buffers(name)[0]
        for j in range(len(p)):
            if v is None or v[j >> 3] >> (j & 7) & 1:
                bits[(at + j) >> 3] |= 1 << ((at + j) & 7)
        at += len(p)
    return bits


class _Column:
    """One column being filled: values (or offsets and data) and the validity bitmap."""

    __slots__ = ("kind", "nullable", "values", "data", "validity", "nulls")

    def __init__(self, kind: str, nullable: bool) -> None:
        self.kind, self.nullable = kind, nullable
        self.values = array("d") if kind == FLOAT64 else array("q", [0] if kind == STRING else [])
        self.data = bytearray()
        # kept for nullable columns even while nothing is null; dropped at take() if unused
        self.validity = bytearray()
        self.nulls = 0


class ColumnBuilder:
    """Fills the columns of ``layout`` row by row (pure Python): the pure twin's
    ``tick_columns``."""

    def __init__(self, layout: tuple[Column, ...] = COLUMNS) -> None:
        self.layout = layout
        self._n = 0
        self._cols = [_Column(kind, nullable) for _, kind, nullable in layout]

    def __len__(self) -> int:
        return self._n

    def append(self, row: Sequence) -> None:
        """One aggregate: its values in the layout's order (None for a null)."""
        i = self._n
        for col, v in zip(self._cols, row, strict=True):
            if col.nullable:
                if i & 7 == 0:
                    col.validity.append(0)
                if v is not None:
                    col.validity[-1] |= 1 << (i & 7)
            if v is None:
                if not col.nullable:
                    raise TypeError("a null in a column that takes none")
                col.nulls += 1
            if col.kind == STRING:
                if v is not None:
                    col.data += v.encode("utf-8")
                col.values.append(len(col.data))
            else:
                col.values.append(0 if v is None else v)
        self._n = i + 1

    def take(self) -> Columns:
        """The rows appended so far, as Columns; the builder starts empty again."""
        buffers: dict[str, tuple] = {}
        nulls: dict[str, int] = {}
        for (name, kind, _), col in zip(self.layout, self._cols):
            validity = memoryview(col.validity) if col.nulls else None
            if kind == STRING:
                buffers[name] = (validity, memoryview(col.values), memoryview(col.data))
            else:
                buffers[name] = (validity, memoryview(col.values))
            nulls[name] = col.nulls
        out = Columns(self._n, buffers, nulls, self.layout)
        self.__init__(self.layout)   # type: ignore[misc]
        return out
