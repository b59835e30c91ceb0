"""The MQTT broker URL: ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://...`` (TLS).

Errors quote the URL with its password redacted: they end up in logs and on the console.
"""

from __future__ import annotations

import urllib.parse

from telemetry_cy.service.logs import redact_url

__all__ = ["parse_url"]


def parse_url(url: str) -> tuple[bool, str, int, str | None, str | None]:
    """``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://...`` -> (tls, host, port, user, password).

    Default ports 1883 / 8883. User and password are percent-decoded.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL scheme must be mqtt:// or mqtts://, got {redact_url(url)!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"MQTT URL must not have a path, query or fragment: {redact_url(url)!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"MQTT URL has no host: {redact_url(url)!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in MQTT URL {redact_url(url)!r}: {exc}") from None
    tls = scheme == "mqtts"
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return tls, host, port or (8883 if tls else 1883), user, password
