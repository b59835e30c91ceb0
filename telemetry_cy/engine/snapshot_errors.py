"""The one error a snapshot reader raises (docs/state.md): a ValueError that names its reason."""

from __future__ import annotations

#: Why a snapshot was refused: a short word for logs and metrics, the message says the rest.
SNAPSHOT_REASONS: tuple[str, ...] = (
    "empty",      # no bytes at all
    "foreign",    # not a telemetry-cy snapshot (the magic differs)
    "version",    # a format version this build does not read (a newer writer)
    "truncated",  # shorter (or longer) than its header says
    "checksum",   # the crc32 over the file does not match: corrupted
    "malformed",  # the checksum matches but a field breaks the format's rules
    "settings",   # made with other window, emit_every, time or quantile settings
)


class SnapshotError(ValueError):
    """A snapshot that cannot be restored. ``reason`` is one of SNAPSHOT_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in SNAPSHOT_REASONS:
            raise AssertionError(f"unknown snapshot reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
