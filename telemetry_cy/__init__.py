"""telemetry-cy: exact sliding-window aggregates over CBOR sensor readings.

The compiled engine is used when it is built; ``TELEMETRY_CY_PURE=1`` selects the pure-Python twins
(same behaviour, slower), for machines without a C compiler and for checking one against the other.
The choice is made once, in :mod:`telemetry_cy.backend`.

Where a reading goes, by subpackage: ``source`` (MQTT, frame reader, ingest ring) -> ``engine``
(decode, window engine, engine thread) -> ``sink`` (wire encoder, NATS emitter) ; ``service`` runs
them as the daemon; ``tools`` holds the demo, the simulated fleet and the load generator.

``replay(FILE, engine)`` runs a capture (``telemetry-cy record``, or ``mosquitto_sub -F '%U %t
%x'`` text) through an Engine and returns its aggregates as ``Columns`` (``.to_pandas()``, ...).
"""

from __future__ import annotations

from telemetry_cy.backend import ACTIVE, PURE
from telemetry_cy.capture.replay_engine import replay
from telemetry_cy.engine.column_buffers import Columns
from telemetry_cy.reasons import DROP_REASONS

__version__ = "0.1.0"

Engine = ACTIVE.Engine
Aggregate = ACTIVE.Aggregate

__all__ = ["Aggregate", "Columns", "Engine", "DROP_REASONS", "PURE", "replay", "__version__"]
