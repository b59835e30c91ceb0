"""NATS decentralized (operator/JWT) auth material for the tests, made with `nkeys` alone.

What `nsc` would make: an operator, accounts signed by it, users signed by an account, and for
each user a credentials file (the user JWT plus the user's nkey seed). nkeys 0.2 has no key
creation, so a key pair is 32 random bytes through ``nkeys.encode_seed``. The JWTs follow the
nats-jwt v2 format: header ``{"typ":"JWT","alg":"ed25519-nkey"}``, base64url without padding,
claims ``jti iat iss sub name nats{...,type,version:2}``, and the ed25519 signature of
``header.payload`` by the issuer's key; ``jti`` is the base32 SHA-512/256 of the claims with an
empty ``jti``, like nats-jwt's (a unique id; the server does not recompute it).

The server side is a config file for nats-server in operator mode with the MEMORY resolver:
``operator``, ``system_account``, ``resolver: MEMORY`` and ``resolver_preload`` holding the
account JWTs (see `server_config`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys

#: nats-jwt's "no limit"
NO_LIMIT = -1


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Key:
    """An nkey pair: ``seed`` (S..., secret) and ``public`` (O..., A... or U...)."""

    seed: str
    public: str

    @classmethod
    def new(cls, prefix: int) -> "Key":
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        kp = nkeys.from_seed(bytearray(self.seed.encode()))
        try:
            return kp.sign(data)
        finally:
            kp.wipe()


def operator_key() -> Key:
    return Key.new(nkeys.PREFIX_BYTE_OPERATOR)


def account_key() -> Key:
    return Key.new(nkeys.PREFIX_BYTE_ACCOUNT)


def user_key() -> Key:
    return Key.new(nkeys.PREFIX_BYTE_USER)


def encode_jwt(issuer: Key, subject: str, name: str, nats: dict,
               expires: int | None = None) -> str:
    """A v2 JWT for ``subject`` signed by ``issuer``."""
    claims: dict = {"jti": "", "iat": int(time.time()), "iss": issuer.public, "name": name,
                    "sub": subject, "nats": {**nats, "version": 2}}
    if expires is not None:
        claims["exp"] = expires
    body = json.dumps(claims, separators=(",", ":")).encode()
    claims["jti"] = base64.b32encode(hashlib.new("sha512_256", body).digest()).decode().rstrip("=")
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"},
                                separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{_b64url(issuer.sign(signing_input))}"


def operator_jwt(operator: Key, name: str = "TCY-OP", system_account: str | None = None) -> str:
    nats: dict = {"type": "operator"}
    if system_account:
        nats["system_account"] = system_account
    return encode_jwt(operator, operator.public, name, nats)


def account_jwt(operator: Key, account: Key, name: str) -> str:
    limits = {"subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, "imports": NO_LIMIT,
              "exports": NO_LIMIT, "wildcards": True, "conn": NO_LIMIT, "leaf": NO_LIMIT}
    return encode_jwt(operator, account.public, name, {
        "limits": limits, "default_permissions": {"pub": {}, "sub": {}}, "type": "account"})


def user_jwt(account: Key, user: Key, name: str, expires: int | None = None) -> str:
    return encode_jwt(account, user.public, name, {
        "pub": {}, "sub": {}, "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
        "type": "user"}, expires=expires)


def creds_text(jwt: str, seed: str) -> str:
    """A credentials file as `nsc generate creds` writes it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n")


def write_creds(path: str | os.PathLike, jwt: str, seed: str) -> str:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.touch(mode=0o600)
    p.write_text(creds_text(jwt, seed))
    return str(p)


@dataclass
class User:
    name: str
    key: Key
    jwt: str
    creds: str  # path of the credentials file


class Operator:
    """An operator with a system account and any number of accounts and users."""

    def __init__(self, workdir: str | os.PathLike, name: str = "TCY-OP") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key = operator_key()
        self.system = account_key()
        self.jwt = operator_jwt(self.key, name, self.system.public)
        self.accounts: dict[str, tuple[Key, str]] = {}  # name -> (key, jwt)
        self.account("SYS", self.system)

    def account(self, name: str, key: Key | None = None) -> Key:
        key = key or account_key()
        self.accounts[name] = (key, account_jwt(self.key, key, name))
        return key

    def user(self, account: str | Key, name: str, expires: int | None = None) -> User:
        """A user of ``account`` (a name of ours, or the key of an account from elsewhere, for a
        user the server must refuse) and its credentials file."""
        acct = self.accounts[account][0] if isinstance(account, str) else account
        key = user_key()
        jwt = user_jwt(acct, key, name, expires)
        return User(name, key, jwt, write_creds(self.workdir / f"{name}.creds", jwt, key.seed))

    def server_config(self) -> str:
        """nats-server configuration: operator mode, every account preloaded in memory."""
        preload = "\n".join(f"  {key.public}: {jwt}" for key, jwt in self.accounts.values())
        return (f"operator: {self.jwt}\n"
                f"system_account: {self.system.public}\n"
                "resolver: MEMORY\n"
                f"resolver_preload: {{\n{preload}\n}}\n")

    def write_server_config(self, name: str = "nats-operator.conf") -> str:
        path = self.workdir / name
        path.write_text(self.server_config())
        return str(path)
