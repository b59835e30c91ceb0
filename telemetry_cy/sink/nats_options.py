"""How every NATS client of the project authenticates and sets up TLS, checked before it
connects, and the secrets it keeps out of its output. The clients: the aggregate emitter
(sink/nats_emitter.py), the partials emitter (sink/partials_emitter.py), the merge worker
(service/merge_worker.py); each takes ``connect_options`` whole, so the settings mean the same
and fail the same way in all of them.

Everything here runs at construction, on the caller's thread, so a bad credentials file or TLS
setting is a clear ValueError at start rather than a connection loop that never succeeds.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any, TypedDict
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


class NatsAuth(TypedDict):
    """The credentials and TLS settings, by ``connect_options``' parameter names (service/config.py
    gives them so: empty strings for what is not set)."""

    user: str
    password: str
    token: str
    creds_file: str
    tls_ca_file: str
    tls_cert_file: str
    tls_key_file: str


def connect_options(servers: Sequence[str], user: str | None = None,
                    password: str | None = None, token: str | None = None,
                    creds_file: str | None = None, tls_ca_file: str | None = None,
                    tls_cert_file: str | None = None,
                    tls_key_file: str | None = None) -> dict[str, Any]:
    """The credentials and TLS keyword arguments of nats-py's ``connect`` (``user``,
    ``password``, ``token``, ``user_credentials``, ``tls``), checked (check_auth, tls_context):
    ValueError on a bad setting. An empty string means not set, as in the settings."""
    user, password, token, creds_file = (v or None for v in (user, password, token, creds_file))
    check_auth(user, password, token, creds_file)
    return {"user": user, "password": password, "token": token, "user_credentials": creds_file,
            "tls": tls_context(servers, tls_ca_file or None, tls_cert_file or None,
                               tls_key_file or None)}


class Redactor:
    """Replaces every secret the emitter was given (password, token, and the user info of the
    server URLs: ``nats://TOKEN@host`` puts a token there) by ``***`` in a text, so that stats,
    errors and logs never carry one."""

    @classmethod
    def of(cls, servers: Sequence[str], options: dict[str, Any]) -> Redactor:
        """The redactor of a client connecting with ``connect_options``' ``options``."""
        return cls(servers, options.get("password"), options.get("token"))

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
