"""Each compiled module's .pyi describes its pure-Python twin as well.

scripts/check.sh holds every .pyi to its compiled module (mypy's stubtest). A compiled class built
with __cinit__ reports only ``(*args, **kwargs)`` for its constructor, so stubtest cannot check
those arguments; the twins are plain Python and can be. Checking the twins against the same .pyi
makes the stub the one statement of the API that both implementations are held to, and it runs
on a pure-only install too (it parses the stubs, it does not import the compiled modules).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from telemetry_cy.backend import MODULES

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

#: Stub names a twin has no counterpart for, and why.
COMPILED_ONLY = {
    # the C header's own limits, exposed so tests can compare them with the twin's constants
    "telemetry_cy.engine._decode": {"C_MAX_DEPTH", "C_MAX_READ_KEYS", "C_MIN_READING_BYTES"},
}

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional-only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.KEYWORD_ONLY: "keyword-only",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
}


def _stub_params(fn: ast.FunctionDef, method: bool) -> list[tuple[str, str]]:
    a = fn.args
    params = [(p.arg, "positional-only") for p in a.posonlyargs]
    params += [(p.arg, "positional") for p in a.args]
    if a.vararg:
        params.append((a.vararg.arg, "*args"))
    params += [(p.arg, "keyword-only") for p in a.kwonlyargs]
    if a.kwarg:
        params.append((a.kwarg.arg, "**kwargs"))
    return params[1:] if method else params  # self / cls


def _twin_params(owner: object, name: str, method: bool) -> list[tuple[str, str]]:
    obj = inspect.getattr_static(owner, name)
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__  # the function as written, cls included for a classmethod
    params = [(p.name, _KINDS[p.kind]) for p in inspect.signature(obj).parameters.values()]
    return params[1:] if method else params


def _decorated(node: ast.FunctionDef | ast.ClassDef, name: str) -> bool:
    return any(isinstance(d, ast.Name) and d.id == name for d in node.decorator_list)


def _api(compiled: str):
    """(kind, qualified name, stub node) for every public name the stub declares, in order."""
    stub = PACKAGE_ROOT / (compiled.replace(".", "/") + ".pyi")
    for node in ast.parse(stub.read_text(), str(stub)).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if not node.target.id.startswith("_"):
                yield "constant", node.target.id, node
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield "function", node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            if _decorated(node, "type_check_only"):
                continue  # a type for the checker only (e.g. the TypedDict of a stats dict)
            yield "class", node.name, node
            for item in node.body:
                if not isinstance(item, ast.FunctionDef) or _decorated(item, "property"):
                    continue
                if item.name.startswith("_") and item.name not in ("__init__", "__new__"):
                    continue
                yield "method", f"{node.name}.{item.name}", item


def _pairs() -> dict[str, str]:
    """compiled module -> its twin: the backend's pieces, and any other .pyx with an ``_x_py.py``
    beside it (e.g. a compiled helper the backend does not switch)."""
    pairs = dict(MODULES.values())
    for pyx in sorted((PACKAGE_ROOT / "telemetry_cy").rglob("*.pyx")):
        compiled = ".".join(pyx.relative_to(PACKAGE_ROOT).with_suffix("").parts)
        if compiled not in pairs and pyx.with_name(pyx.stem + "_py.py").exists():
            pairs[compiled] = compiled + "_py"
    return pairs


PAIRS = _pairs()


@pytest.mark.parametrize("compiled, twin", PAIRS.items(), ids=list(PAIRS))
def test_the_stub_describes_the_twin(compiled: str, twin: str) -> None:
    module = importlib.import_module(twin)
    skip = COMPILED_ONLY.get(compiled, set())
    problems = []
    checked = 0
    for kind, name, node in _api(compiled):
        if name in skip:
            continue
        owner, _, attr = name.rpartition(".")
        if kind == "method" and attr == "__new__":
            attr = "__init__"  # the compiled class takes its arguments in __cinit__
        target = getattr(module, owner) if owner else module
        if not hasattr(target, attr):
            problems.append(f"{twin}: no {kind} {name}")
            continue
        checked += 1
        if kind in ("function", "method"):
            assert isinstance(node, ast.FunctionDef)
            method = kind == "method" and not _decorated(node, "staticmethod")
            want, got = _stub_params(node, method), _twin_params(target, attr, method)
            if want != got:
                problems.append(f"{twin}.{name}: the stub has {want}, the twin {got}")
    assert not problems, "\n".join(problems)
    assert checked, f"nothing public found in the stub of {compiled}"
