"""telemetry-cy: exact sliding-window aggregates over CBOR sensor readings.

The compiled engine is used when it is built; ``TELEMETRY_CY_PURE=1`` selects the pure-Python twin
(same behaviour, slower), for machines without a C compiler and for checking one against the other.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

PURE = os.environ.get("TELEMETRY_CY_PURE", "") not in ("", "0")

if PURE:
    from telemetry_cy._engine_py import Aggregate, Engine
else:
    try:
        from telemetry_cy._engine import Aggregate, Engine
    except ImportError as exc:  # a source checkout that was never built
        raise ImportError(
            "telemetry-cy's compiled modules are not built: install with 'pip install .' (or "
            "'python setup.py build_ext --inplace' in a checkout), or set TELEMETRY_CY_PURE=1 "
            "to use the pure-Python engine") from exc

from telemetry_cy.reasons import DROP_REASONS

__all__ = ["Aggregate", "Engine", "DROP_REASONS", "PURE", "__version__"]
