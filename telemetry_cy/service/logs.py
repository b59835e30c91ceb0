"""Log lines: plain text for a terminal, one JSON object per line for log shippers.

Structured fields travel in ``extra={"fields": {...}}`` and are rendered as ``key=value`` pairs in
text and as top-level keys in JSON, so the stats line is machine-readable either way.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from urllib.parse import urlsplit

LOGGER_NAME = "telemetry_cy"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():<5} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def redact_url(url: str) -> str:
    """The URL with its whole user-info part replaced by ``***``: a password, and also a token
    given as the user name (nats://TOKEN@host), never reach a log line, a stat or an error."""
    try:
        parts = urlsplit(url if "://" in url else "//" + url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    return url.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1)


def setup(log_format: str = "text", level: int = logging.INFO, stream=None) -> logging.Logger:
    """Logs go to stderr; stdout is kept for the final counters (one JSON object)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return logger


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)
