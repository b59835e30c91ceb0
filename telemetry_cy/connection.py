"""One reconnect policy and one connection clock, for every connection the process keeps (the
MQTT source, the NATS emitter) and for the health check that reads them.

Ownership: a :class:`ConnectionClock` is written by the thread that owns the connection (``up()`` /
``down()``) and read from any thread (``state()``); a lock makes each read a consistent whole. A
:class:`Backoff` belongs to the one thread that reconnects.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


class Backoff:
    """Exponential backoff with jitter: attempt k waits uniform in [(1 - jitter)·d, d] with
    d = min(maximum, initial · 2**k). Jitter keeps a fleet of clients that lost the same broker
    from retrying in step. A connection that stayed up for `stable_after` seconds resets it; one
    that dies right after connecting keeps it growing."""

    def __init__(self, initial: float = 0.1, maximum: float = 30.0, *, jitter: float = 1.0,
                 stable_after: float = 1.0, rng: Callable[[float, float], float] | None = None,
                 name: str = "backoff"):
        # `name`: what the owner calls initial and maximum, for its configuration errors
        initial, maximum, jitter = float(initial), float(maximum), float(jitter)
        if not 0 < initial <= maximum:
            raise ValueError(f"{name}: need 0 < initial <= maximum, "
                             f"got {initial:g} and {maximum:g}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"{name}: jitter must be in [0, 1], got {jitter:g}")
        self.initial, self.maximum, self.jitter = initial, maximum, jitter
        self.stable_after = float(stable_after)
        self._uniform = rng or random.uniform
        self.attempt = 0

    def ceiling(self) -> float:
        """The longest wait of the next attempt."""
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 60))

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one failed attempt."""
        d = self.ceiling()
        self.attempt += 1
        return self._uniform(d * (1.0 - self.jitter), d)

    def connected_for(self, seconds: float) -> None:
        """A connection ended after `seconds` up: reset if it was stable, else keep growing."""
        if seconds >= self.stable_after:
            self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class ConnectionState:
    connected: bool
    ever_connected: bool
    connects: int            # times it came up
    disconnects: int         # times an established connection went down
    down_seconds: float      # length of the current outage (0 while connected)
    disconnected_seconds: float   # total time without a connection since the clock started
    last_error: str | None


class ConnectionClock:
    """Up/down bookkeeping of one connection. Starts down (nothing is connected at start, and
    that time counts as disconnected) -- from construction, or with ``started=False`` from
    ``start()``, for an owner whose time before it starts connecting is no outage."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 started: bool = True) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._connected = False
        self._ever = False
        self._connects = 0
        self._disconnects = 0
        self._down_since: float | None = clock() if started else None
        self._down_total = 0.0
        self._last_error: str | None = None

    def start(self) -> None:
        """The owner starts connecting: if down and not already timing an outage, one begins now."""
        with self._lock:
            if not self._connected and self._down_since is None:
                self._down_since = self._clock()

    def up(self) -> None:
        with self._lock:
            if self._connected:
                return
            now = self._clock()
            if self._down_since is not None:
                self._down_total += now - self._down_since
                self._down_since = None
            self._connected = True
            self._ever = True
            self._connects += 1

    def down(self, error: str | None = None) -> None:
        with self._lock:
            if error is not None:
                self._last_error = error
            if not self._connected:
                return
            self._connected = False
            self._disconnects += 1
            self._down_since = self._clock()

    def note_error(self, error: str) -> None:
        with self._lock:
            self._last_error = error

    def stop(self) -> None:
        """The owner stopped: the outage in progress ends here (the total stops growing)."""
        with self._lock:
            if self._down_since is not None:
                self._down_total += self._clock() - self._down_since
                self._down_since = None
            self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def ever_connected(self) -> bool:
        return self._ever

    def state(self) -> ConnectionState:
        with self._lock:
            now = self._clock()
            down = 0.0 if self._down_since is None else now - self._down_since
            return ConnectionState(
                connected=self._connected, ever_connected=self._ever, connects=self._connects,
                disconnects=self._disconnects, down_seconds=down,
                disconnected_seconds=self._down_total + down, last_error=self._last_error)
