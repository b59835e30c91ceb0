"""The aggregate's fields are defined once, in rules.AGGREGATE_FIELDS: the compiled class (which
cannot import its layout), its stub, the pure twin and the bodies all hold exactly those, in that
order and with the same types."""

from __future__ import annotations

import ast
import dataclasses
import json
import types
from pathlib import Path

import cbor2
import pytest

from telemetry_cy.engine import _engine_py
from telemetry_cy.engine.rules import AGGREGATE_FIELDS, QUANTILE_FIELDS, aggregate_field_type
from telemetry_cy.sink.bodies import decode_body, encode_cbor, encode_json

STUB = Path(_engine_py.__file__).with_name("_engine.pyi")


def _distinct_values() -> tuple:
    """One value per field, each different and of the field's type, so a field read from the
    wrong position shows."""
    out: list[object] = []
    for i, name in enumerate(AGGREGATE_FIELDS):
        kind = aggregate_field_type(name)
        if kind is float or kind == float | None:
            out.append(i + 0.5)
        elif kind is int:
            out.append(i)
        else:   # names, and the unit
            out.append(f"{name}-{i}")
    return tuple(out)


def _annotation(kind: object) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind)


def test_the_compiled_class_has_exactly_those_fields_in_that_order(compiled_backend):
    cls = compiled_backend.Aggregate
    attributes = {name for name in dir(cls)
                  if isinstance(getattr(cls, name), types.GetSetDescriptorType)}
    assert attributes == set(AGGREGATE_FIELDS)
    values = _distinct_values()
    a = cls(*values)   # positional: __init__ takes them in AGGREGATE_FIELDS order
    assert tuple(getattr(a, name) for name in AGGREGATE_FIELDS) == values
    assert list(a.as_dict()) == list(AGGREGATE_FIELDS)


def test_each_backend_aggregate_round_trips_through_the_bodies(backend):
    a = backend.Aggregate(*_distinct_values())
    for fmt, encode in (("json", encode_json), ("cbor", encode_cbor)):
        body = decode_body(fmt, encode(a))
        assert list(body) == list(AGGREGATE_FIELDS), fmt
        assert body == a.as_dict(), fmt
    assert list(json.loads(encode_json(a))) == list(cbor2.loads(encode_cbor(a)))


def test_the_pure_twin_is_a_frozen_dataclass_of_those_fields():
    fields = dataclasses.fields(_engine_py.Aggregate)
    assert [f.name for f in fields] == list(AGGREGATE_FIELDS)
    assert [f.type for f in fields] == [aggregate_field_type(n) for n in AGGREGATE_FIELDS]
    a = _engine_py.Aggregate(*_distinct_values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.count = 3  # type: ignore[misc]


def test_the_stub_declares_exactly_those_fields_with_their_types():
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef)
              and node.name == "Aggregate"]
    declared = [(node.target.id, ast.unparse(node.annotation)) for node in cls.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    assert declared == [(n, _annotation(aggregate_field_type(n))) for n in AGGREGATE_FIELDS]
    (init,) = [node for node in cls.body if isinstance(node, ast.FunctionDef)
               and node.name == "__init__"]
    params = [(arg.arg, ast.unparse(arg.annotation)) for arg in init.args.args[1:]]
    assert params == declared
    # the quantiles, and only they, default to None
    assert [ast.unparse(d) for d in init.args.defaults] == ["None"] * len(QUANTILE_FIELDS)
    assert [p for p, _ in params[-len(QUANTILE_FIELDS):]] == [n for n, _ in QUANTILE_FIELDS]


def test_quantiles_not_computed_are_none_and_left_out(backend):
    """Quantiles off: the 13 statistics alone make an Aggregate; p50/p90/p99 are None and absent
    from as_dict() and both bodies. Any subset may be present."""
    values = _distinct_values()[:13]
    a = backend.Aggregate(*values)
    names = [n for n, _ in QUANTILE_FIELDS]
    assert [getattr(a, n) for n in names] == [None, None, None]
    expected = [n for n in AGGREGATE_FIELDS if n not in names]
    assert list(a.as_dict()) == expected
    for fmt, encode in (("json", encode_json), ("cbor", encode_cbor)):
        assert list(decode_body(fmt, encode(a))) == expected, fmt
    b = backend.Aggregate(*values, p90=12.25)
    assert b.p50 is None and b.p90 == 12.25 and b.p99 is None
    assert list(b.as_dict()) == expected + ["p90"]
    for fmt, encode in (("json", encode_json), ("cbor", encode_cbor)):
        assert decode_body(fmt, encode(b)) == b.as_dict(), fmt


def test_field_types_are_asked_by_name():
    with pytest.raises(KeyError):
        aggregate_field_type("median")
