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
from telemetry_cy.engine.rules import AGGREGATE_FIELDS, QUANTILE_ATTRIBUTES, aggregate_field_type
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
    assert attributes == set(AGGREGATE_FIELDS) | set(QUANTILE_ATTRIBUTES)
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
    assert [f.name for f in fields] == list(AGGREGATE_FIELDS + QUANTILE_ATTRIBUTES)
    assert [f.type for f in fields[:len(AGGREGATE_FIELDS)]] == [
        aggregate_field_type(n) for n in AGGREGATE_FIELDS]
    assert [f.default for f in fields[len(AGGREGATE_FIELDS):]] == [(), ()]
    a = _engine_py.Aggregate(*_distinct_values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.count = 3  # type: ignore[misc]


def test_the_stub_declares_exactly_those_fields_with_their_types():
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef)
              and node.name == "Aggregate"]
    declared = [(node.target.id, ast.unparse(node.annotation)) for node in cls.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    assert declared[:len(AGGREGATE_FIELDS)] == [(n, _annotation(aggregate_field_type(n)))
                                                for n in AGGREGATE_FIELDS]
    assert [n for n, _ in declared[len(AGGREGATE_FIELDS):]] == list(QUANTILE_ATTRIBUTES)
    (init,) = [node for node in cls.body if isinstance(node, ast.FunctionDef)
               and node.name == "__init__"]
    params = [(arg.arg, ast.unparse(arg.annotation)) for arg in init.args.args[1:]]
    assert params[:len(AGGREGATE_FIELDS)] == declared[:len(AGGREGATE_FIELDS)]
    # the quantiles, and only they, default to ()
    assert [p for p, _ in params[len(AGGREGATE_FIELDS):]] == list(QUANTILE_ATTRIBUTES)
    assert [ast.unparse(d) for d in init.args.defaults] == ["()"] * len(QUANTILE_ATTRIBUTES)


def test_quantiles_follow_the_statistics_by_name(backend):
    """Quantiles off: the 13 statistics alone make an Aggregate and its bodies. On: each
    quantile after them under its name, in as_dict(), both bodies and as an attribute."""
    values = _distinct_values()
    a = backend.Aggregate(*values)
    assert a.quantile_names == a.quantile_values == ()
    assert list(a.as_dict()) == list(AGGREGATE_FIELDS)
    with pytest.raises(AttributeError):
        a.p50  # noqa: B018
    b = backend.Aggregate(*values, ("p90", "p99.9"), (12.25, -3.5))
    assert b.p90 == 12.25 and getattr(b, "p99.9") == -3.5
    assert list(b.as_dict()) == list(AGGREGATE_FIELDS) + ["p90", "p99.9"]
    for fmt, encode in (("json", encode_json), ("cbor", encode_cbor)):
        assert decode_body(fmt, encode(b)) == b.as_dict(), fmt
    with pytest.raises(ValueError, match="differ in length"):
        backend.Aggregate(*values, ("p90",), ())


def test_field_types_are_asked_by_name():
    with pytest.raises(KeyError):
        aggregate_field_type("median")
