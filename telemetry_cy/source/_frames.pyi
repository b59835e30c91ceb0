"""Type stubs for the compiled MQTT frame reader (``_frames.pyx``); twin: ``_frames_py.py``."""

from typing import Protocol, TypedDict, type_check_only

from telemetry_cy.source._ring import ByteRing

MIN_BUFFER_BYTES: int  # 64
MAX_BUFFER_BYTES: int  # 2**30

# pump()'s results (why it returned)
PUMP_DEADLINE: int  # `until` passed: the caller's own turn is due
PUMP_PACKETS: int  # a read owes PUBACKs or brought packets for paho: they come with it
PUMP_WAKE: int  # the wake-up descriptor became readable
PUMP_CLOSED: int  # the peer closed the connection
PUMP_ERROR: int  # recv failed; the errno comes with it
# pump()'s coalescing nap
NAP_SKIP_FILL: float  # no nap after a read filling this share of the buffer (behind)
NAP_TARGET_RECORDS: int  # a nap long enough for this many records at the measured rate ...
NAP_FLOOR_S: float  # ... but not shorter than this, nor longer than the caller's ceiling
RATE_GAIN: float  # weight of the newest read in the smoothed rate
LEND_MAX_RECORDS: int  # a turn of at most this many records is drained into a lent engine

class FrameError(ValueError):
    """Protocol error: the connection must be dropped. ``acks``/``packets``: produced before it."""

    acks: bytes | None
    packets: list[tuple[int, bytes]]
    def __init__(
        self, message: str, acks: bytes | None = ..., packets: list[tuple[int, bytes]] | None = ...
    ) -> None: ...

@type_check_only
class _HasFileno(Protocol):
    def fileno(self) -> int: ...

@type_check_only  # counters() returns a plain dict
class FrameCounters(TypedDict):
    received: int  # PUBLISH QoS 0/1 frames parsed: written + oversize + ingest_full
    written: int  # records committed to the ring
    payload_bytes: int  # payload bytes of the written records
    oversize: int  # payload > max_payload_bytes, record > ring max, or packet > buffer
    ingest_full: int  # the ring was full
    acked: int  # PUBACKs handed out (QoS 1 frames, whatever their fate)
    protocol_errors: int
    bytes: int  # bytes fed (everything read from the socket)

class FrameReader:
    """Parses MQTT 3.1.1/5 packets from one receive buffer; PUBLISH QoS 0/1 go into ``ring``.

    Belongs to one thread (the network thread), which must also be the ring's only producer.
    ``counters()`` may be called from any thread.
    """

    ring: ByteRing
    # The arguments go to __cinit__ (Cython's tp_new), so the stub declares __new__.
    def __new__(
        cls,
        ring: ByteRing,
        *,
        protocol: int = 5,  # 5, or 4 (3.1.1) / 3 (3.1): no properties block in PUBLISH
        max_payload_bytes: int = 65536,
        buffer_bytes: int = 1 << 20,  # receive buffer in [MIN_BUFFER_BYTES, MAX_BUFFER_BYTES]
    ) -> FrameReader: ...
    def writable(self) -> memoryview:
        """The free part of the receive buffer (after the kept partial packet); never empty."""
    def feed(self, nbytes: int, ts: float,
             notify: bool = True) -> tuple[bytes | None, list[tuple[int, bytes]]]:
        """Parse the ``nbytes`` just written into ``writable()``, every record stamped ``ts``.

        Returns ``(acks, packets)``: the PUBACK blob (4 bytes per QoS 1 PUBLISH of this read, in
        arrival order, or None) to send now that the records are in the ring, and every other
        packet as ``(first header byte, body after the remaining length)`` in arrival order.
        Raises FrameError on a protocol error (then again on every feed until ``reset()``).
        With ``notify=False`` the ring's doorbell is not rung: the caller must call ``notify()``
        before it next sleeps (the network thread does, so that the consumer wakes while it
        naps, not while it holds the GIL).
        """
    def notify(self) -> None:
        """Hand off the records of earlier ``feed(..., notify=False)``, if any: drained into a
        lent engine (at most LEND_MAX_RECORDS), else the doorbell rung."""
    def pump(self, sock: _HasFileno, wake: _HasFileno, ceiling: float, until: float
             ) -> tuple[int, int, bytes | None, list[tuple[int, bytes]], int, int]:
        """Read turns on a plain TCP socket without the GIL until Python is needed.

        Each turn: poll ``sock`` and ``wake`` (or, after a nap, read at once), one read (two
        after a nap), parse into the ring; TCP_QUICKACK before any sleep or return, so the
        broker's Nagle holds nothing back for a delayed ACK; before every sleep and before
        returning, the turn's records are handed off: drained into the engine when it is
        parked and lent and they are at most LEND_MAX_RECORDS (includes/tc_park.h), else the
        doorbell rung.
        Dense traffic (the data was there, or came within ``ceiling`` seconds of the poll; a
        read under NAP_SKIP_FILL of the buffer) is followed by a timed nap of
        NAP_TARGET_RECORDS at the smoothed rate, within [NAP_FLOOR_S, ``ceiling``]; 0 = none
        (``interrupt()`` ends the pump after the nap, with PUMP_WAKE, as ``wake`` ends a poll).
        Returns ``(why, errno, acks, packets, nbytes, naps)`` when ``until``
        (``time.monotonic()``) passes (PUMP_DEADLINE), a read owes PUBACKs or brings other
        packets (PUMP_PACKETS, with them, as ``feed`` returns them), ``wake`` is readable
        (PUMP_WAKE), the peer closed (PUMP_CLOSED) or recv failed (PUMP_ERROR, with errno).
        ``nbytes``: bytes read; ``naps``: naps taken. Raises FrameError like ``feed``.
        """
    def interrupt(self) -> None:
        """Make a napping ``pump()`` return PUMP_WAKE after its nap (any thread)."""
    def nap(self, fd: int, timeout: float) -> bool:
        """``notify()``, then sleep up to ``timeout`` seconds (milliseconds rounded up) or until
        ``fd`` is readable, without the GIL; True when ``fd`` is readable."""
    def reset(self) -> None:
        """New connection: forget the partial packet and any pending skip; clear the error."""
    @property
    def protocol(self) -> int: ...
    @property
    def buffer_bytes(self) -> int: ...
    @property
    def max_payload_bytes(self) -> int: ...
    @property
    def fill(self) -> int:
        """Bytes of an incomplete packet kept at the front of the buffer."""
    @property
    def skip_pending(self) -> int:
        """Bytes of an over-long PUBLISH (larger than the buffer) still to be discarded."""
    @property
    def broken(self) -> bool: ...
    def counters(self) -> FrameCounters: ...
