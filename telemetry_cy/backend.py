"""Compiled or pure: decided here, once, for every component.

Each compiled module has a pure-Python twin with the same API and the same results (the twin is the
test oracle). A :class:`Backend` is a matched set of them: the compiled engine drains only the
compiled ring, the compiled frame reader writes only into the compiled ring, so a component never
mixes the two. The process-wide choice is :data:`ACTIVE`: the compiled set unless
``TELEMETRY_CY_PURE=1`` (or the compiled modules are not built, in which case importing the
package says how to build them). Tests load either set by name with :func:`load`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, Literal

BackendName = Literal["compiled", "pure"]

#: piece -> (compiled module, pure twin)
MODULES: dict[str, tuple[str, str]] = {
    "decode": ("telemetry_cy.engine._decode", "telemetry_cy.engine._decode_py"),
    "engine": ("telemetry_cy.engine._engine", "telemetry_cy.engine._engine_py"),
    "ring": ("telemetry_cy.source._ring", "telemetry_cy.source._ring_py"),
    "frames": ("telemetry_cy.source._frames", "telemetry_cy.source._frames_py"),
    "wire": ("telemetry_cy.sink._wire", "telemetry_cy.sink._wire_py"),
    "sketch": ("telemetry_cy.engine._sketch", "telemetry_cy.engine.sketch_py"),
    # the reader of the partial format (its writer is pure Python only)
    "partial": ("telemetry_cy.engine._partial", "telemetry_cy.engine.partial_format"),
}

NOT_BUILT = (
    "telemetry-cy's compiled modules are not built: install with 'pip install .' (or "
    "'python setup.py build_ext --inplace' in a checkout), or set TELEMETRY_CY_PURE=1 to use "
    "the pure-Python twins")


class BackendUnavailable(ImportError):
    """The compiled set was asked for on an install that does not have it."""


@dataclass(frozen=True)
class Backend:
    name: BackendName
    decode: ModuleType
    engine: ModuleType
    ring: ModuleType
    frames: ModuleType
    wire: ModuleType
    sketch: ModuleType
    partial: ModuleType

    # The classes and functions components use, so no component names a module.
    @property
    def Engine(self) -> Any:  # noqa: N802 - a class, named as one
        return self.engine.Engine

    @property
    def Aggregate(self) -> Any:  # noqa: N802
        return self.engine.Aggregate

    @property
    def ByteRing(self) -> Any:  # noqa: N802
        return self.ring.ByteRing

    @property
    def FrameReader(self) -> Any:  # noqa: N802
        return self.frames.FrameReader

    @property
    def FrameError(self) -> type[Exception]:  # noqa: N802
        return self.frames.FrameError

    @property
    def encode_batch(self) -> Any:
        return self.wire.encode_batch

    @property
    def read_partial(self) -> Any:
        """partial_format.read, or its compiled twin: what a merge worker reads messages with."""
        return self.partial.read

    @property
    def compiled(self) -> bool:
        return self.name == "compiled"


@cache
def load(name: BackendName) -> Backend:
    """The matched set `name`; raises :class:`BackendUnavailable` for "compiled" when not built."""
    if name not in ("compiled", "pure"):
        raise ValueError(f"backend must be 'compiled' or 'pure', got {name!r}")
    index = 0 if name == "compiled" else 1
    modules = {}
    for piece, names in MODULES.items():
        try:
            modules[piece] = importlib.import_module(names[index])
        except ImportError as exc:
            if name == "pure":
                raise
            raise BackendUnavailable(f"{NOT_BUILT} ({names[index]}: {exc})") from exc
    return Backend(name=name, **modules)


def available() -> list[BackendName]:
    """The sets this install can load: ["compiled", "pure"], or ["pure"] without a compiler."""
    names: list[BackendName] = []
    try:
        load("compiled")
        names.append("compiled")
    except BackendUnavailable:
        pass
    names.append("pure")
    return names


def backend_of(ring: object) -> Backend:
    """The set a ring belongs to: a source writing into `ring` must use that set's frame reader."""
    for name in available():
        b = load(name)
        if isinstance(ring, b.ByteRing):
            return b
    raise TypeError(f"not a telemetry-cy ring: {type(ring).__name__}")


PURE: bool = os.environ.get("TELEMETRY_CY_PURE", "") not in ("", "0")

#: The process-wide set: every component takes its classes from here.
ACTIVE: Backend = load("pure" if PURE else "compiled")
