"""Stub of the compiled partial reader; its pure twin is ``partial_format.read``."""

from typing import Any

# Returns a partial_format.Partial. Not imported here: that module imports the engine twin, whose
# untyped __init__ makes mypy print notes, and stubtest refuses to check a build with any output.
def read(data: bytes | bytearray | memoryview) -> Any: ...
