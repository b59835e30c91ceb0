"""Hostile input and secrets, with `telemetry-cy run` as a process against real brokers.

- Device and sensor names with invalid UTF-8, control characters, NATS wildcards and separators,
  invisible characters and 64 KiB lengths, through both the C reader and the cbor2 fallback:
  each is either rejected and counted (schema_mismatch, oversize) or escaped and published on the
  one subject that parses back to exactly that name (a subscriber on `>` sees every subject).
- MQTT topics that are hostile (up to 64 KiB, control characters; invalid UTF-8 and wildcards,
  which the broker itself refuses): the daemon's connection stays up and nothing lands on a wrong
  subject.
- Names whose escaped subject would be longer than NATS accepts: dropped and counted
  (emit_backlog), the NATS connection survives, the next aggregates go out.
- Secrets (MQTT password, NATS token) never appear in the daemon's stdout, stderr or stats, from
  files, the environment, flags or URLs, and also not when they are wrong.

The C-level fuzzing of the same readers is in tests/fuzz/ (scripts/sanitize.sh).
"""

from __future__ import annotations

import json
import socket
import struct
import time
import urllib.parse

import cbor2
import paho.mqtt.client as mqtt
import pytest

from support.brokers import AUTH_USERS, NatsServer, NatsSubscriber, find_nats_server
from support.daemon import DaemonProc, assert_balanced
from telemetry_cy.sink.bodies import decode_body
from telemetry_cy.sink.subjects import parse_subject
from telemetry_cy.tools.mqtt_loadgen import RawPublisher, connect_frame, publish_frame

# ---- hand-made CBOR (cbor2 will not write invalid UTF-8) -----------------------------------------


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    if n < 65536:
        return bytes([major << 5 | 25]) + struct.pack(">H", n)
    return bytes([major << 5 | 26]) + struct.pack(">I", n)


def text(raw: bytes | str) -> bytes:
    """A definite CBOR text string holding these bytes, valid UTF-8 or not."""
    raw = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return _head(3, len(raw)) + raw


BIGNUM_5 = b"\xc2\x41\x05"   # tag 2 (positive bignum) on h'05': a value only cbor2 reads


def reading(device: bytes | str, sensor: bytes | str, value: bytes = b"\x01",
            fallback: bool = False) -> bytes:
    """{d, s, v} with raw name bytes; ``fallback`` puts a bignum in `v`, so the C reader hands
    the payload to cbor2 (docs/input.md), and the same names go through fallback.check_element."""
    return (b"\xa3" + text("d") + text(device) + text("s") + text(sensor) + text("v")
            + (BIGNUM_5 if fallback else value))


#: Names that are valid: each must come out on exactly the subject that parses back to it.
VALID_NAMES = [
    "a.b", ".", "..", "*", ">", "a*b", "a>b", "*.>", "%", "%41", "%%", "100%",
    " ", "a b", "\t", "\n", "\r\n", "\x00", "\x01", "\x1b[31mred", "\x7f", "\u0085",
    "\u00a0", "\u200b", "\u200d", "\u202e", "\ufeff", "\u2028", "\u3000",
    "Küche", "温度", "😀", "e\u0301", "\ufffe", "\U0010fffd", "$SYS", "_INBOX", "$JS.API",
    "a" * 256, "." * 256, "\u00e9" * 128, ">" * 85 + "a",
]
#: Names that must be rejected (schema_mismatch): invalid UTF-8, empty, longer than 256 bytes.
INVALID_NAMES = [
    b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"a\x80b",
    b"\xf8\x88\x80\x80\x80", b"ok\xed\xbf\xbf", b"", b"a" * 257, b"." * 60_000,
]


def test_hostile_names_are_escaped_or_counted_never_misrouted(tmp_path, mosquitto, nats_server,
                                                              spawn):
    sub = NatsSubscriber(nats_server.url, subject=">")
    d = spawn(mosquitto.url, nats_server.url, topic="hostile/#")
    d.wait_up()
    payloads: list[bytes] = []
    expected: dict[tuple[str, str], int] = {}
    mismatches = 0
    for path in (False, True):                      # the C reader, then the cbor2 fallback
        for name in VALID_NAMES:
            for key in ((name, "s"), ("dev", name)):
                payloads.append(reading(*key, fallback=path))
                expected[key] = expected.get(key, 0) + 1
        for bad in INVALID_NAMES:
            payloads += [reading(bad, "s", fallback=path), reading("dev", bad, fallback=path)]
            mismatches += 2
    # a unit with the same problems: control characters are fine (JSON escapes them), invalid
    # UTF-8 is a mismatch
    payloads.append(cbor2.dumps({"d": "unit", "s": "ok", "v": 1, "u": "\x00\x1b\n\"\\"}))
    expected[("unit", "ok")] = 1
    payloads.append(b"\xa4" + text("d") + text("unit") + text("s") + text("bad") + text("v")
                    + b"\x01" + text("u") + text(b"\xff\xfe"))
    mismatches += 1
    oversize = [reading("x" * 70_000, "s"), reading("dev", "y" * 66_000)]
    pub = RawPublisher(mosquitto.host, mosquitto.port, "tcy-hostile-names")
    pub.send(publish_frame("hostile/names", p) for p in payloads + oversize)
    pub.sent += len(payloads) + len(oversize)
    pub.close()
    total = len(payloads) + len(oversize)
    assert d.wait_stats(lambda s: s.get("received", 0) >= total, 20.0), d.tail()
    time.sleep(2.5)
    code, final = d.stop()
    assert code == 0, d.tail()
    assert_balanced(final)
    drops = final["drops"]
    assert final["received"] == total
    assert drops["oversize"] == len(oversize)
    assert drops["schema_mismatch"] == mismatches, final
    assert drops["decode_error"] == 0 and drops["emit_backlog"] == 0, final
    assert final["readings"] == sum(expected.values())
    sub.wait_count(final["published"], 15.0)
    time.sleep(0.3)
    got: dict[tuple[str, str], int] = {}
    for msg in list(sub.msgs):
        body = decode_body("json", msg.data)
        key = parse_subject("agg", msg.subject)          # raises on a subject we never make
        assert key == (body["device"], body["sensor"]), (msg.subject, body)
        assert msg.subject.count(".") == 2 and "*" not in msg.subject \
            and ">" not in msg.subject and not any(c.isspace() for c in msg.subject), msg.subject
        got[key] = got.get(key, 0) + body["count"]
    sub.close()
    assert got == expected
    assert len(sub.msgs) == final["published"]


def _raw_publish(broker, topic: bytes, body: bytes, client_id: str) -> bool:
    """One PUBLISH with raw topic bytes on its own connection. True if the broker kept the
    connection open afterwards (it accepted the packet), False if it closed it."""
    with socket.create_connection((broker.host, broker.port), timeout=5) as s:
        s.sendall(connect_frame(client_id))
        assert s.recv(4)[:1] == b"\x20"
        s.sendall(publish_frame(topic, body) + b"\xc0\x00")   # PUBLISH, then PINGREQ
        s.settimeout(3)
        try:
            return s.recv(2) == b"\xd0\x00"                  # PINGRESP: still talking to us
        except OSError:
            return False


def test_hostile_topics_never_reach_a_wrong_subject(mosquitto, nats_server, spawn):
    sub = NatsSubscriber(nats_server.url, subject=">")
    d = spawn(mosquitto.url, nats_server.url, topic="hostile/#")
    d.wait_up()
    cases = {
        "long": b"hostile/" + b"x" * 65_000,                   # close to the 65,535 maximum
        "control": b"hostile/\x01\x1b[0m\x7f/t",
        "dots-wildcards-ish": b"hostile/a.b/*/>/%41",
        "nul": b"hostile/a\x00b",                              # not allowed in a topic
        "invalid-utf8": b"hostile/\xff\xfe",                   # not allowed
        "surrogate": b"hostile/\xed\xa0\x80",                  # not allowed
        "plus": b"hostile/+/x",                                # no wildcards in PUBLISH
        "hash": b"hostile/#",
    }
    accepted = {}
    for i, (name, topic) in enumerate(cases.items()):
        accepted[name] = _raw_publish(mosquitto, topic, reading(f"topic-{name}", "t"),
                                      f"tcy-hostile-topic-{i}")
    # what MQTT forbids, the broker refuses (and drops that publisher; mosquitto refuses control
    # characters too); the rest is ordinary data to the daemon, which never reads the topic
    assert accepted["long"] and accepted["dots-wildcards-ish"], accepted
    assert not any(accepted[k] for k in ("nul", "invalid-utf8", "surrogate", "plus", "hash")), \
        accepted
    n_ok = sum(accepted.values())
    assert d.wait_stats(lambda s: s.get("readings", 0) >= n_ok, 15.0), d.tail()
    time.sleep(2.5)
    code, final = d.stop()
    assert code == 0, d.tail()
    assert_balanced(final)
    assert final["received"] == n_ok and final["readings"] == n_ok, final
    assert final["mqtt"]["connects"] == 1 and final["mqtt"]["disconnects"] == 0
    sub.wait_count(final["published"], 15.0)
    keys = {parse_subject("agg", m.subject) for m in sub.msgs}
    sub.close()
    assert keys == {(f"topic-{k}", "t") for k, ok in accepted.items() if ok}


def test_subject_too_long_is_dropped_and_counted(mosquitto, nats_server, spawn):
    """With --max-name-bytes 4096 a name can escape to a subject longer than the PUB line NATS
    accepts: that aggregate is dropped and counted as emit_backlog, the connection stays up,
    and the aggregates around it are published."""
    sub = NatsSubscriber(nats_server.url, subject=">")
    d = spawn(mosquitto.url, nats_server.url, "--max-name-bytes", "4096", topic="hostile/#")
    d.wait_up()
    too_long = [("." * 1500, "s"), ("a" * 4000, "s"), ("dev", "\t" * 1100)]
    fits = [("a" * 1000, "b" * 1000), ("." * 1000, "s"), ("plain", "s")]
    pub = RawPublisher(mosquitto.host, mosquitto.port, "tcy-hostile-long")
    pub.send(publish_frame("hostile/long", reading(dv, sn)) for dv, sn in too_long + fits)
    pub.close()
    n = len(too_long) + len(fits)
    assert d.wait_stats(lambda s: s.get("readings", 0) >= n, 15.0), d.tail()
    time.sleep(2.5)
    # and once more after the drop: the NATS connection still works
    pub = RawPublisher(mosquitto.host, mosquitto.port, "tcy-hostile-long-2")
    pub.send([publish_frame("hostile/long", reading("after", "s"))])
    pub.close()
    assert d.wait_stats(lambda s: s.get("published", 0) >= len(fits) + 1, 15.0), d.tail()
    code, final = d.stop()
    assert code == 0, d.tail()
    assert_balanced(final)
    assert final["drops"]["emit_backlog"] == len(too_long) == final["nats"]["too_large"], final
    assert final["nats"]["reconnects"] == 0, final
    sub.wait_count(final["published"], 15.0)
    keys = {parse_subject("agg", m.subject) for m in sub.msgs}
    sub.close()
    assert keys == set(fits) | {("after", "s")}


# ---- secrets -------------------------------------------------------------------------------------

TOKEN = "tok-Zq81xWv0-secret"
MQTT_USER = "alice"
MQTT_PASSWORD = AUTH_USERS[MQTT_USER]


@pytest.fixture
def nats_token_server(tmp_path):
    if find_nats_server() is None:
        pytest.skip("nats-server not found")
    server = NatsServer(tmp_path / "nats-auth", jetstream=False, args=("--auth", TOKEN))
    server.start()
    yield server
    server.kill()


def _forms(secret: str) -> list[str]:
    """The secret as it could leak: plain, URL-quoted, repr-escaped, JSON-escaped."""
    return sorted({secret, urllib.parse.quote(secret, safe=""), repr(secret)[1:-1],
                   json.dumps(secret)[1:-1]})


def _assert_no_secret(d: DaemonProc, *secrets: str) -> None:
    out = d.stdout_text() + d.stderr_text()
    for secret in secrets:
        for form in _forms(secret):
            assert form not in out, f"secret leaked as {form!r}:\n" + "\n".join(
                line for line in out.splitlines() if form in line)[:3000]


def _run_with_auth(d: DaemonProc, mosquitto_auth, n: int = 50) -> dict:
    d.wait_up()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tcy-hostile-auth-pub")
    client.username_pw_set("bob", AUTH_USERS["bob"])
    client.connect(mosquitto_auth.host, mosquitto_auth.port)
    client.loop_start()
    try:
        for i in range(n):
            info = client.publish("site/a/sensor/b", reading(f"auth{i}", "t"), qos=1)
        info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    assert d.wait_stats(lambda s: s.get("readings", 0) >= n, 15.0), d.tail()
    code, final = d.stop()
    assert code == 0, d.tail()
    assert final["readings"] == n
    return final


def test_secrets_from_files_and_environment_never_printed(tmp_path, mosquitto_auth,
                                                          nats_token_server, spawn):
    pw_file = tmp_path / "mqtt-password"
    pw_file.write_text(MQTT_PASSWORD + "\n")
    d = spawn(mosquitto_auth.url, nats_token_server.url, "--mqtt-username", MQTT_USER,
              "--mqtt-password-file", str(pw_file), env={"TELEMETRY_CY_NATS_TOKEN": TOKEN})
    _run_with_auth(d, mosquitto_auth)
    _assert_no_secret(d, MQTT_PASSWORD, TOKEN)


def test_secrets_in_flags_never_printed(tmp_path, mosquitto_auth, nats_token_server, spawn):
    d = spawn(mosquitto_auth.url, nats_token_server.url, "--mqtt-username", MQTT_USER,
              "--mqtt-password", MQTT_PASSWORD, "--nats-token", TOKEN)
    _run_with_auth(d, mosquitto_auth)
    _assert_no_secret(d, MQTT_PASSWORD, TOKEN)


def test_secrets_in_urls_never_printed(tmp_path, mosquitto_auth, nats_token_server, spawn):
    """mqtt://user:password@host and nats://TOKEN@host (the start line once printed them raw;
    fixed by logs.redact_url)."""
    mqtt_url = (f"mqtt://{MQTT_USER}:{urllib.parse.quote(MQTT_PASSWORD, safe='')}@"
                f"{mosquitto_auth.host}:{mosquitto_auth.port}")
    nats_url = f"nats://{TOKEN}@{nats_token_server.host}:{nats_token_server.port}"
    d = spawn(mqtt_url, nats_url)
    _run_with_auth(d, mosquitto_auth)
    _assert_no_secret(d, MQTT_PASSWORD, TOKEN)


def test_wrong_secrets_never_printed_in_errors(tmp_path, mosquitto_auth, nats_token_server,
                                               spawn):
    wrong_pw, wrong_token = "wrong-pw-Q7v2x9", "wrong-tok-P3k8m1"
    d = spawn(mosquitto_auth.url, nats_token_server.url, "--mqtt-username", MQTT_USER,
              "--mqtt-password", wrong_pw, "--nats-token", wrong_token, "--start-timeout", "3s")
    d.proc.wait(60)
    assert d.proc.returncode == 3, d.tail()
    text_out = d.stdout_text() + d.stderr_text()
    assert "not connected within start_timeout" in text_out
    _assert_no_secret(d, wrong_pw, wrong_token)


def test_config_error_never_prints_the_password_in_a_url(tmp_path, spawn):
    d = spawn(f"mqttx://{MQTT_USER}:{MQTT_PASSWORD}@127.0.0.1:1", "nats://127.0.0.1:1")
    d.proc.wait(30)
    assert d.proc.returncode == 2, d.tail()
    _assert_no_secret(d, MQTT_PASSWORD)
