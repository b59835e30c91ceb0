"""What the NATS emitter checks before it connects, and the secrets it keeps out of its output.

Everything here runs at construction, on the caller's thread, so a bad credentials file or TLS
setting is a clear ValueError at start rather than a connection loop that never succeeds.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

_CREDS_SECTIONS = ((b"BEGIN NATS USER JWT", "user JWT"), (b"BEGIN USER NKEY SEED", "nkey seed"))


def check_creds_file(path: str) -> None:
    """ValueError, naming the path but never the contents, unless `path` is a readable NATS
    credentials file with a user JWT and a seed section, and nkeys (which nats-py signs with)
    is installed. Checked before connecting because nats-py 2.16 spins its event loop forever
    on a file without the JWT section and gives up for good on one without a seed."""
    try:
        import nkeys  # noqa: F401
    except ImportError:
        raise ValueError("a NATS credentials file needs the 'nkeys' package: "
                         "pip install 'telemetry-cy[creds]' (or pip install nkeys)") from None
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    for marker, what in _CREDS_SECTIONS:
        # nats-py reads the line after the marker as the value
        if not any(marker in line and i + 1 < len(lines) and lines[i + 1].strip()
                   for i, line in enumerate(lines)):
            raise ValueError(f"{path} is not a NATS credentials file: no {what} section "
                             f"('-----{marker.decode()}-----' and the line after it)")


def check_auth(user: str | None, password: str | None, token: str | None,
               creds_file: str | None) -> None:
    """ValueError on an authentication setting nats-py would only fail on when connecting."""
    if token and (user or password):
        raise ValueError("NATS auth: give either a token or user/password, not both")
    if creds_file:
        check_creds_file(creds_file)


def tls_context(servers: Sequence[str], ca_file: str | None, cert_file: str | None,
                key_file: str | None) -> ssl.SSLContext | None:
    """The client TLS context, or None when nothing asks for TLS. Verification stays on
    (CERT_REQUIRED, hostname checked); a private CA is added, never trusted instead of checking."""
    if key_file and not cert_file:
        raise ValueError("NATS TLS: tls_key_file needs tls_cert_file")
    if not (ca_file or cert_file or any(u.startswith("tls://") for u in servers)):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class Redactor:
    """Replaces every secret the emitter was given (password, token, and the user info of the
    server URLs: ``nats://TOKEN@host`` puts a token there) by ``***`` in a text, so that stats,
    errors and logs never carry one."""

    def __init__(self, servers: Sequence[str], *secrets: str | None) -> None:
        found = set(secrets)
        for url in servers:
            parts = urlsplit(url if "://" in url else "nats://" + url)
            found.update((parts.username, parts.password))
        # longest first: a secret that contains another is replaced whole
        self._secrets = sorted((s for s in found if s), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
