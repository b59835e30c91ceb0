"""Stub of the compiled partial reader; its pure twin is ``partial_format.read``."""

from telemetry_cy.engine.partial_format import Partial

def read(data: bytes | bytearray | memoryview) -> Partial: ...
