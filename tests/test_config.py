"""Settings: defaults < TOML < environment < flags, clear one-line errors, secrets kept out."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from telemetry_cy.service import config as cfg


def parse(argv=(), environ=None):
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return cfg.load(parser.parse_args(list(argv)), environ or {})


def test_defaults():
    c = parse()
    assert (c.engine.window, c.engine.emit_every, c.engine.key_ttl, c.mqtt.qos) == \
        (60.0, 5.0, 300.0, 1)
    assert c.mqtt.topics == ("site/+/sensor/+",)
    assert c.sources["window"] == "default"
    assert c == cfg.Config()   # the sections' own defaults are the settings' defaults


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("5s", 5.0), ("1m", 60.0),
                                           ("2h", 7200.0), ("1.5", 1.5), (3, 3.0)])
def test_durations(text, seconds):
    assert cfg.parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [("65536", 65536), ("64KiB", 65536), ("16MiB", 16 << 20),
                                        ("1g", 1 << 30), ("2kb", 2000)])
def test_sizes(text, size):
    assert cfg.parse_size(text) == size


def test_layers_override_in_order(tmp_path: Path):
    path = tmp_path / "t.toml"
    path.write_text('window = "2m"\nemit_every = "10s"\n[mqtt]\nurl = "mqtt://127.0.0.1:1999"\n'
                    'topics = ["a/#", "b/+"]\n[nats]\nurl = "nats://127.0.0.1:5222"\n')
    c = parse(["--config", str(path)])
    assert (c.engine.window, c.engine.emit_every, c.mqtt.url, c.nats.url) == \
        (120.0, 10.0, "mqtt://127.0.0.1:1999", "nats://127.0.0.1:5222")
    assert c.mqtt.topics == ("a/#", "b/+")
    c = parse(["--config", str(path)], {"TELEMETRY_CY_WINDOW": "30s",
                                        "TELEMETRY_CY_TOPIC": "x/#, y/#"})
    assert c.engine.window == 30.0 and c.mqtt.topics == ("x/#", "y/#")
    assert c.sources["window"] == "environment TELEMETRY_CY_WINDOW"
    c = parse(["--config", str(path), "--window", "20s", "--topic", "z/1", "--topic", "z/2"],
              {"TELEMETRY_CY_WINDOW": "30s"})
    assert c.engine.window == 20.0 and c.mqtt.topics == ("z/1", "z/2")
    assert c.sources["window"] == "flag --window"


@pytest.mark.parametrize("argv, words", [
    (["--window", "soon"], r"^setting window \(flag --window\): expected a duration"),
    (["--emit-every", "7s"], r"^settings window/emit_every/key_ttl: .*whole multiple"),
    (["--key-ttl", "10s"], r"key_ttl .* must be >= window"),
    (["--qos", "2"], r"^setting qos \(flag --qos\): expected one of 0, 1"),
    (["--max-keys", "0"], r"^setting max_keys .*at least 1"),
    (["--format", "xml"], r"^setting format"),
    (["--mqtt-url", "http://x"], r"^setting mqtt_url"),
    (["--session-expiry", "1h"], r"^setting session_expiry: .*client_id"),
    (["--ring-bytes", "lots"], r"^setting ring_bytes"),
    (["--jetstream", "true", "--expected-stream", "A.B"], r"^setting expected_stream .*'\.'"),
    (["--expected-stream", "AGG"], r"^setting expected_stream: only JetStream"),
    (["--jetstream", "true", "--max-in-flight", "0"], r"^setting max_in_flight .*at least 1"),
    (["--max-in-flight-bytes", "512"], r"^setting max_in_flight_bytes .*at least 1024"),
    (["--partials-max-bytes", "0"], r"^setting partials_max_bytes .*between 1 and"),
])
def test_bad_values_name_the_setting(argv, words):
    with pytest.raises(cfg.ConfigError) as err:
        parse(argv)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(words, message), message


def test_unknown_and_broken_config_files(tmp_path: Path):
    path = tmp_path / "t.toml"
    path.write_text("windw = 5\n")
    with pytest.raises(cfg.ConfigError, match="unknown setting 'windw'"):
        parse(["--config", str(path)])
    path.write_text("window = \n")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        parse(["--config", str(path)])
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        parse(["--config", str(tmp_path / "missing.toml")])


def test_secrets_from_files_and_never_shown(tmp_path: Path):
    secret = "s3cr3t-Zq9"
    (tmp_path / "pw").write_text(secret + "\n")
    c = parse(["--mqtt-password-file", str(tmp_path / "pw")],
              {"TELEMETRY_CY_NATS_TOKEN": secret})
    assert c.mqtt.password == secret and c.nats.token == secret
    assert c.sources["mqtt_password"] == f"file {tmp_path / 'pw'}"
    assert secret not in repr(c.redacted())
    with pytest.raises(cfg.ConfigError) as err:
        parse([], {"TELEMETRY_CY_NATS_PASSWORD": secret, "TELEMETRY_CY_WINDOW": "x"})
    assert secret not in str(err.value)


def test_every_setting_is_documented():
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for s in cfg.SETTINGS:
        assert f"`{s.name}`" in doc, s.name
        assert s.flag in doc and s.env in doc, s.name
    # the table is the generated one, word for word
    assert cfg.markdown_reference().strip() in doc


def test_sections_are_typed_frozen_and_hold_each_setting_once():
    c = parse(["--window", "2m", "--emit-every", "10s", "--qos", "0", "--jetstream", "yes",
               "--metrics-port", "9000", "--log-format", "json"])
    assert isinstance(c.mqtt, cfg.MqttSettings) and isinstance(c.nats, cfg.NatsSettings)
    assert (c.engine.window, c.mqtt.qos, c.nats.jetstream, c.metrics.port, c.log.format) == \
        (120.0, 0, True, 9000, "json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.engine.window = 1.0  # type: ignore[misc]
    # every setting lives in exactly one section field, and every section field is a setting
    places = [(s.section, s.attr) for s in cfg.SETTINGS]
    assert len(set(places)) == len(places) == len({s.name for s in cfg.SETTINGS})
    section_fields = {(f.name, g.name) for f in dataclasses.fields(cfg.Config)
                      if dataclasses.is_dataclass(f.default_factory)
                      for g in dataclasses.fields(f.default_factory)}
    assert section_fields == set(places)
    for s in cfg.SETTINGS:
        assert c.value(s.name) == getattr(getattr(c, s.section), s.attr)
    assert c.redacted()["window"] == 120.0 and set(c.redacted()) == set(cfg.BY_NAME)


def test_overrides_come_last_and_are_checked():
    c = cfg.load(None, {"TELEMETRY_CY_WINDOW": "30s"},
                 overrides={"window": 10.0, "emit_every": 5.0, "topic": ["a/#"]})
    assert c.engine.window == 10.0 and c.mqtt.topics == ("a/#",)
    assert c.sources["window"] == "set by the program"
    with pytest.raises(cfg.ConfigError, match="whole multiple"):
        cfg.load(None, {}, overrides={"window": 7.0})
    with pytest.raises(cfg.ConfigError, match="unknown setting 'windw'"):
        cfg.load(None, {}, overrides={"windw": 7.0})


def test_partials_max_bytes_is_the_engines_limit():
    from telemetry_cy.engine.rules import DEFAULT_PARTIALS_MAX_BYTES, MAX_PARTIALS_MAX_BYTES

    assert parse().nats.partials_max_bytes == DEFAULT_PARTIALS_MAX_BYTES
    assert parse(["--partials-max-bytes", "64KiB"]).nats.partials_max_bytes == 65536
    with pytest.raises(cfg.ConfigError, match="partials_max_bytes"):
        parse([], {"TELEMETRY_CY_PARTIALS_MAX_BYTES": str(MAX_PARTIALS_MAX_BYTES + 1)})


def test_nats_credentials_and_tls_reach_every_nats_client(tmp_path: Path, tls_certs):
    """run's aggregate emitter, run's partials emitter and merge take the same settings through
    the same code (sink/nats_options.connect_options)."""
    import ssl

    from telemetry_cy.service.daemon import make_emitter, make_partials
    from telemetry_cy.sink.nats_options import connect_options

    (tmp_path / "pw").write_text("s3cr3t\n")
    flags = ["--nats-url", "tls://127.0.0.1:4222", "--nats-user", "u", "--nats-password-file",
             str(tmp_path / "pw"), "--nats-ca-file", tls_certs.ca_file, "--nats-cert-file",
             tls_certs.client_cert, "--nats-key-file", tls_certs.client_key]
    run = parse([*flags, "--time", "event", "--output", "partials"])
    merge = parse_merge(flags)
    assert run.nats.auth == merge.nats.auth and merge.nats.password == "s3cr3t"
    opts = connect_options(merge.nats.servers, **merge.nats.auth)
    partials = make_partials(run)[2].connect_opts
    aggregates = make_emitter(run.nats)._connect_opts
    for got in (opts, partials, aggregates):
        assert (got["user"], got["password"], got["token"], got["user_credentials"]) == \
            ("u", "s3cr3t", None, None)
        assert isinstance(got["tls"], ssl.SSLContext) and got["tls"].check_hostname
    # a bad combination fails at start, for merge as for run, with the setting's words
    for load in (parse, parse_merge):
        with pytest.raises(cfg.ConfigError, match="either a token or user/password"):
            load([*flags, "--nats-token", "t"])
        with pytest.raises(cfg.ConfigError, match="nats_ca_file"):
            load(["--nats-ca-file", str(tmp_path / "missing.pem")])


def test_nats_servers_split_on_commas():
    c = parse(["--nats-url", "nats://127.0.0.1:4222, nats://127.0.0.1:4223,"])
    assert c.nats.servers == ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]


def test_jetstream_settings_reach_the_emitter():
    """The settings the emitter takes, with the emitter's own defaults when unset."""
    from telemetry_cy.service.daemon import make_emitter
    from telemetry_cy.sink.nats_emitter import JS_MAX_IN_FLIGHT, JS_MAX_IN_FLIGHT_BYTES

    c = parse(["--jetstream", "true"])
    assert (c.nats.expected_stream, c.nats.max_in_flight, c.nats.max_in_flight_bytes) == \
        ("", JS_MAX_IN_FLIGHT, JS_MAX_IN_FLIGHT_BYTES)
    c = parse(["--jetstream", "true", "--expected-stream", " AGG ", "--max-in-flight", "4_096"],
              {"TELEMETRY_CY_MAX_IN_FLIGHT_BYTES": "2MiB"})
    assert (c.nats.expected_stream, c.nats.max_in_flight, c.nats.max_in_flight_bytes) == \
        ("AGG", 4096, 2 << 20)
    em = make_emitter(c.nats)
    assert em._js is not None and em._encoder.expected_stream == "AGG"
    assert (em._js.max_msgs, em._js.max_bytes) == (4096, 2 << 20)
    assert make_emitter(parse().nats)._encoder.expected_stream is None


def test_quantiles_from_flags_environment_and_toml(tmp_path: Path):
    assert parse().engine.quantiles == () and parse().engine.quantile_accuracy == 0.01
    c = parse(["--quantiles", "0.99, 0.5,0.9,0.999", "--quantile-accuracy", "0.02"])
    assert c.engine.quantiles == (0.5, 0.9, 0.99, 0.999) and c.engine.quantile_accuracy == 0.02
    assert parse(environ={"TELEMETRY_CY_QUANTILES": "0.9"}).engine.quantiles == (0.9,)
    assert parse(["--quantiles", ""]).engine.quantiles == ()
    path = tmp_path / "q.toml"
    path.write_text("quantiles = [0.5, 0.99]\nquantile_accuracy = 0.005\n")
    c = parse(["--config", str(path)])
    assert c.engine.quantiles == (0.5, 0.99) and c.engine.quantile_accuracy == 0.005


@pytest.mark.parametrize("argv, words", [
    (["--quantiles", "0.5,1"], "setting quantiles"),
    (["--quantiles", "1.5"], "between 0 and 1 (exclusive)"),
    (["--quantiles", "0.5,median"], "expected a number such as 0.99"),
    (["--quantile-accuracy", "0.5"], "quantile_accuracy must be between 0.005 and 0.05"),
    (["--quantile-accuracy", "x"], "setting quantile_accuracy"),
])
def test_bad_quantile_settings_name_the_setting(argv, words):
    with pytest.raises(cfg.ConfigError) as err:
        parse(argv)
    assert words in str(err.value)


# ---- telemetry-cy merge: the same layers, its own table (docs/configuration.md) --------------

def parse_merge(argv=(), environ=None):
    from telemetry_cy.service import merge_worker

    parser = argparse.ArgumentParser()
    merge_worker.add_arguments(parser)
    return cfg.load(parser.parse_args(list(argv)), environ or {}, command=cfg.MERGE)


def test_merge_defaults_and_the_window_settings_are_runs_own():
    c = parse_merge()
    assert isinstance(c, cfg.MergeConfig) and c == cfg.MergeConfig()
    assert (c.windows.window, c.windows.emit_every, c.windows.time) == (60.0, 5.0, "event")
    assert (c.worker.partitions, c.worker.own_partitions, c.worker.lease) == \
        (16, list(range(16)), 5.0)
    run = {s.name: s for s in cfg.SETTINGS}
    for s in cfg.MERGE.settings:
        if s.name in run and s.name != "time":
            # one declaration: the same parser, default and meaning in both commands
            r = run[s.name]
            assert (s.parse, s.default, s.kind) == (r.parse, r.default, r.kind), s.name


def test_merge_layers_share_a_file_with_run(tmp_path: Path):
    path = tmp_path / "both.toml"
    path.write_text('window = "30s"\nemit_every = "5s"\nallowed_lateness = "5s"\nqos = 0\n'
                    '[mqtt]\nurl = "mqtt://127.0.0.1:1999"\n'
                    '[nats]\nurl = "nats://127.0.0.1:5222"\n'
                    '[merge]\nworker_id = "a"\nown = "auto"\nlease = "2s"\npartitions = 8\n')
    # run reads its part and skips [merge]; merge reads the shared keys and its table
    r = parse(["--config", str(path)])
    assert (r.engine.window, r.mqtt.qos, r.nats.url) == (30.0, 0, "nats://127.0.0.1:5222")
    c = parse_merge(["--config", str(path)])
    assert (c.windows.window, c.windows.allowed_lateness, c.nats.url) == \
        (30.0, 5.0, "nats://127.0.0.1:5222")
    assert (c.worker.worker_id, c.worker.own_partitions, c.worker.lease,
            c.worker.partitions) == ("a", None, 2.0, 8)
    assert c.sources["own"] == f"config file {path}"
    # environment over the file, flags over both
    c = parse_merge(["--config", str(path), "--own", "0-3", "--jetstream"],
                    {"TELEMETRY_CY_OWN": "1,2", "TELEMETRY_CY_WORKER_ID": "b",
                     "TELEMETRY_CY_WINDOW": "1m"})
    assert (c.worker.worker_id, c.worker.own_partitions, c.windows.window,
            c.nats.jetstream) == ("b", [0, 1, 2, 3], 60.0, True)
    assert c.sources["own"] == "flag --own" and c.sources["worker_id"] == \
        "environment TELEMETRY_CY_WORKER_ID"
    assert parse_merge(["--jetstream", "false"]).nats.jetstream is False
    # a key neither command knows is still an error, in both
    path.write_text('[merge]\nworkr_id = "a"\n')
    with pytest.raises(cfg.ConfigError, match="unknown setting 'merge_workr_id'"):
        parse_merge(["--config", str(path)])
    path.write_text('mqtt_urll = "x"\n')
    for load in (parse, parse_merge):
        with pytest.raises(cfg.ConfigError, match="unknown setting 'mqtt_urll'"):
            load(["--config", str(path)])


@pytest.mark.parametrize("argv, words", [
    (["--window", "7s"], r"^settings window/emit_every/allowed_lateness/quantiles: .*multiple"),
    (["--time", "arrival"], r"^setting time \(flag --time\): expected one of event"),
    (["--own", "9", "--partitions", "4"], r"^setting own: '9': partitions are 0..3"),
    (["--own", "x-y"], r"^setting own: expected auto, or partitions"),
    (["--lease", "0"], r"^setting lease .*at least 0.2"),
    (["--replicas", "0"], r"^setting replicas .*at least 1"),
    (["--quantiles", "2"], r"^setting quantiles"),
])
def test_merge_bad_values_name_the_setting(argv, words):
    with pytest.raises(cfg.ConfigError) as err:
        parse_merge(argv)
    assert "\n" not in str(err.value) and re.search(words, str(err.value)), str(err.value)


def test_merge_settings_are_documented():
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert cfg.markdown_reference(cfg.MERGE).strip() in doc
    assert cfg.markdown_reference(cfg.RUN).strip() in doc
