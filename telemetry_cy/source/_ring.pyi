"""Type stubs for the compiled SPSC byte ring (``_ring.pyx``); ``_ring_py.py`` is its pure twin."""

from typing import TypedDict, type_check_only

HEADER_SIZE: int  # 24: uint32 total_len, uint32 topic_len, double ts, uint32 payload_len,
#                   uint32 flags
ALIGN: int  # 8: every record starts and ends on an 8-byte boundary
MIN_CAPACITY: int  # 64
MAX_CAPACITY: int  # 2**31
PARK_TIMEOUT: int  # 0: ByteRing.park's timeout passed, nobody rang
PARK_RECORDS: int  # 1: a producer rang, or records were already there
PARK_KICKED: int  # 2: wake(), records or not

def record_size(topic_len: int, payload_len: int) -> int:
    """Bytes one record occupies: (24 + topic_len + payload_len) rounded up to 8."""

@type_check_only  # stress() returns a plain dict
class StressResult(TypedDict):
    produced: int  # == n_records
    received: int
    dropped: int  # refused because the ring was full; received + dropped == produced
    errors: int  # bad records + accounting mismatches; 0 on success
    elapsed_s: float

class ByteRing:
    """Single-producer single-consumer ring of ``(ts, topic, payload)`` records.

    ``try_push`` belongs to one producer thread, ``pop``/``pop_many`` to one consumer thread.
    """

    # The arguments go to __cinit__ (Cython's tp_new), so the stub declares __new__.
    def __new__(cls, capacity_bytes: int) -> ByteRing:
        """``capacity_bytes``: a power of two in [MIN_CAPACITY, MAX_CAPACITY], else ValueError."""
    @property
    def capacity(self) -> int: ...
    @property
    def max_record_bytes(self) -> int:
        """Largest accepted ``record_size(len(topic), len(payload))``: capacity // 2 - 8."""
    @property
    def parks(self) -> int:
        """The consumer's ``wait()``/``park()`` calls so far (any thread may read it)."""
    @property
    def lent(self) -> bool:
        """The consumer is parked and lent to the producer right now (a gauge; twin: False)."""
    @property
    def lends(self) -> int:
        """Drains the producer ran for the parked, lent consumer (the compiled engine's
        ``run_ring`` with the compiled reader's ``pump``): wake-ups saved. Always 0 in the twin."""
    @property
    def used_bytes(self) -> int:
        """Bytes in use, wrap padding included (exact when neither side is running)."""
    @property
    def drops_full(self) -> int:
        """Pushes refused because the ring was full."""
    def try_push(self, ts: float, topic: bytes, payload: bytes, flags: int = 0) -> bool:
        """False (counted in ``drops_full``) when full; ValueError when the record is too big.
        ``flags``: a 32-bit word carried with the record (MQTT: the PUBLISH header's DUP, QoS and
        RETAIN bits); TypeError when not an int, ValueError outside [0, 2**32)."""
    def wait(self, timeout: float) -> bool:
        """Consumer: sleep until a producer rings or timeout seconds pass (True: maybe records)."""
    def park(self, timeout: float) -> int:
        """Consumer: ``wait()`` saying why it ended: PARK_TIMEOUT, PARK_RECORDS or PARK_KICKED."""
    def wake(self) -> None:
        """Any thread: the consumer's current ``wait()`` returns now, or its next one at once."""
    def pop(self) -> tuple[float, bytes, bytes] | None: ...
    def pop_many(self, max_records: int) -> list[tuple[float, bytes, bytes]]: ...
    def pop_many_flagged(self, max_records: int) -> list[tuple[float, bytes, bytes, int]]:
        """Like ``pop_many``, each record as ``(ts, topic, payload, flags)``."""

def stress(
    n_records: int,
    seed: int,
    capacity_bytes: int,
    max_payload: int,
    consumer_delay_every: int = 0,
    *,
    yield_on_full: bool = False,
) -> StressResult:
    """Producer thread against a consumer on the calling thread; checks order and every byte.

    ``consumer_delay_every=K``: the consumer sleeps briefly after every K records (forces drops).
    ``yield_on_full=True``: the producer calls sched_yield() after each drop, so most records pass.
    """
