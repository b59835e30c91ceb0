"""Record a live MQTT feed into a capture file, and replay it: into a broker, or through an Engine.

docs/capture.md describes the format and the commands. From Python::

    from telemetry_cy.capture import Capture, replay
    aggregates = replay("fleet.cap", Engine(window=60, emit_every=5))   # Columns
    df = aggregates.to_pandas()
    for msg in Capture("fleet.cap").messages(): ...
"""

from telemetry_cy.capture.format import CaptureError, Message
from telemetry_cy.capture.reader import Capture
from telemetry_cy.capture.replay_engine import replay

__all__ = ["Capture", "CaptureError", "Message", "replay"]
