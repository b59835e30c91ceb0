from collections.abc import Iterable

from telemetry_cy._ring import ByteRing


class Aggregate:
    device: str
    sensor: str
    unit: str | None
    window_start: float
    window_end: float
    count: int
    sum: float
    mean: float
    min: float
    max: float
    stddev: float
    first: float
    last: float
    def __init__(self, device: str, sensor: str, unit: str | None, window_start: float,
                 window_end: float, count: int, sum: float, mean: float, min: float, max: float,
                 stddev: float, first: float, last: float) -> None: ...
    def as_dict(self) -> dict[str, object]: ...

class Engine:
    window: float
    emit_every: float
    key_ttl: float
    max_payload_bytes: int
    max_name_bytes: int
    @property
    def max_keys(self) -> int: ...
    def __init__(self, window: float = 60.0, emit_every: float = 5.0, max_keys: int = 1_000_000,
                 key_ttl: float = 300.0, max_payload_bytes: int = 65536,
                 max_name_bytes: int = 256) -> None: ...
    def push(self, payload: bytes | bytearray | memoryview, ts: float) -> int: ...
    def push_many(self, payloads: Iterable[bytes | bytearray | memoryview], ts: float) -> int: ...
    def drain(self, ring: ByteRing, max_records: int = 4096) -> int: ...
    def push_reading(self, device: str, sensor: str, value: float, ts: float,
                     unit: str | None = None) -> None: ...
    def tick(self, now: float) -> list[Aggregate]: ...
    def stats(self) -> dict[str, object]: ...
