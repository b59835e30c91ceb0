"""Type stubs for the compiled capture block encoder (``_encode.pyx``); ``_encode_py.py`` is its
pure twin (the same API; it takes either ring, the compiled one only the compiled ring)."""

from typing import Any

class BlockEncoder:
    """Moves ring records into one capture block (docs/capture.md) until it holds about
    ``block_bytes`` bytes of body. Belongs to the ring's consumer thread."""

    block_bytes: int
    skipped: int  # records no MQTT PUBLISH could carry (topic > 65,535 B, > 256 MiB, QoS 3)

    # The arguments go to __cinit__ (Cython's tp_new), so the stub declares __new__.
    def __new__(cls, block_bytes: int = 1 << 18) -> BlockEncoder:
        """``block_bytes`` in [64, 2**28], else ValueError. A record larger than that still
        makes a block of its own."""
    @property
    def n_records(self) -> int: ...
    @property
    def nbytes(self) -> int:
        """Body bytes so far: 8 per arrival time plus the records."""
    @property
    def full(self) -> bool:
        """The last fill() stopped at a record that does not fit: take() the block."""
    def fill(self, ring: Any, max_records: int = 1 << 16) -> int:
        """Moves up to ``max_records`` ring records into the block, in order; returns how many."""
    def discard(self) -> int:
        """Drops the block and the records popped for the next one; returns how many."""
    def take(self) -> tuple[int, bytes, bytes, bool] | None:
        """``(n_records, ts_column, records_column, plain)`` and a fresh block; None when empty."""
