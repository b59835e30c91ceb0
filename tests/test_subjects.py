"""Subject escaping: round-trips, yields valid NATS tokens, never maps two keys to one subject."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from telemetry_cy.sink import subjects
from telemetry_cy.sink.nats_emitter import msg_id
from telemetry_cy.sink.subjects import (
    escape_token,
    late_msg_id,
    parse_subject,
    subject_for,
    unescape_token,
    validate_prefix,
)

# every code point, lone surrogates included (Python strings can hold them)
any_char = st.characters(codec=None, categories=None, exclude_categories=())


def names_up_to(longest: int) -> st.SearchStrategy[str]:
    """Short names of any characters, names of the awkward ones, and long names (a short unit
    repeated) of up to ``longest`` characters."""
    return st.one_of(
        st.text(any_char, max_size=40),
        st.text(st.sampled_from(".*>% \t\r\n\x00\x7f\u00a0\u200b\u2028é温|"), max_size=20),
        st.builds(lambda unit, n: (unit * n)[:longest],
                  st.text(any_char, min_size=1, max_size=3), st.integers(1, longest)),
    )


# long names up to 64 KiB characters
names = names_up_to(65536)
# The injectivity properties take four names an example: long ones up to 4 * CACHE_NAME_MAX.
# Escaping is per character, and its one length-dependent path is the cache's (a name above
# CACHE_NAME_MAX is escaped each time, never cached), which these lengths take; names of up to
# 64 KiB are held to the rule by the round trips and AWKWARD. Four 64 KiB names cost ~0.1 s an
# example in the pure escaping, for nothing the shorter ones miss.
id_names = names_up_to(4 * subjects.CACHE_NAME_MAX)
AWKWARD = ["", ".", "*", ">", "%", "%25", "%2E", "a.b", "a b", "\t", "\x00", "\x1f", "\x7f",
           "\u00a0", "\u200b", "\u2028", "\ud800", "\udfff\ud800", "x" * 65536, "é" * 65536,
           "%" * 1000, "温度", "a|b"]


def valid_token(token: str) -> bool:
    """A literal NATS subject token: non-empty, no separator or wildcard, no whitespace (what the
    server splits on), and -- our own stricter rule -- no control, format, surrogate or separator
    characters, which would be invisible or unencodable in a subject."""
    return (bool(token) and not re.search(r"[.*>\s]", token)
            and not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zs", "Zl", "Zp")
                        for ch in token))


@given(names)
@example("")
@example("x" * 65536)
@example("\U0010ffff\u0085")
@settings(max_examples=500, deadline=None)
def test_token_round_trip_and_valid(raw):
    token = escape_token(raw)
    assert valid_token(token), token
    assert unescape_token(token) == raw


@pytest.mark.parametrize("raw", AWKWARD)
def test_awkward_names(raw):
    token = escape_token(raw)
    assert valid_token(token)
    assert unescape_token(token) == raw


@given(id_names, id_names, id_names, id_names)
@settings(max_examples=500, deadline=None)
def test_subjects_are_injective(d1, s1, d2, s2):
    a, b = subject_for("agg", d1, s1), subject_for("agg", d2, s2)
    assert (a == b) == ((d1, s1) == (d2, s2))
    assert (msg_id(d1, s1, 5.0) == msg_id(d2, s2, 5.0)) == ((d1, s1) == (d2, s2))


seqs = st.one_of(st.none(), st.integers(0, 2**64 - 1))
times = st.floats(allow_nan=False, allow_infinity=False)


@given(id_names, id_names, seqs, times, times, id_names, id_names, seqs, times, times)
@example("a|b", "c", 1, 2.0, 3.0, "a", "b|c", 1, 2.0, 3.0)
@example("d", "s", None, 0.0, 1.0, "d", "s", None, -0.0, 1.0)
@settings(max_examples=500, deadline=None)
def test_late_ids_are_injective_and_never_an_aggregate_id(d1, s1, n1, t1, v1,
                                                           d2, s2, n2, t2, v2):
    a, b = late_msg_id(d1, s1, n1, t1, v1), late_msg_id(d2, s2, n2, t2, v2)
    assert (a == b) == ((d1, s1, n1, repr(t1), repr(v1)) == (d2, s2, n2, repr(t2), repr(v2)))
    assert a.isascii() and not any(ch.isspace() for ch in a)
    assert a != msg_id(d1, s1, t1) and a != msg_id(d2, s2, t2)


@given(names, names)
@settings(max_examples=300, deadline=None)
def test_subject_round_trip(device, sensor):
    subject = subject_for("tele.agg", device, sensor)
    assert subject.startswith("tele.agg.")
    assert subject.count(".") == 3
    assert parse_subject("tele.agg", subject) == (device, sensor)


def test_readable_and_documented_examples():
    assert subject_for("agg", "dev-1", "temp") == "agg.dev-1.temp"
    assert subject_for("agg", "Küche", "温度") == "agg.Küche.温度"
    assert subject_for("agg", "a.b", "x*y>z") == "agg.a%2Eb.x%2Ay%3Ez"
    assert subject_for("agg", "100%", "") == "agg.100%25.%"
    assert subject_for("agg", "a b\tc", "\u00a0") == "agg.a%20b%09c.%C2%A0"


@pytest.mark.parametrize("token", ["", "%zz", "%2e", "%41", "a.b", "%2", "a%", "%%", "a b",
                                   "%C3", "%FF"])
def test_unescape_rejects_tokens_the_rule_cannot_produce(token):
    with pytest.raises(ValueError):
        unescape_token(token)


@pytest.mark.parametrize("prefix", ["", ".", "agg.", ".agg", "a..b", "agg.*", "agg.>", "a b",
                                    "a\tb", "agg>", "x\x00"])
def test_bad_prefix(prefix):
    with pytest.raises(ValueError, match="prefix"):
        validate_prefix(prefix)


@pytest.mark.parametrize("prefix", ["agg", "site-1.agg", "telemetry_cy.v1"])
def test_good_prefix(prefix):
    assert validate_prefix(prefix) == prefix


def test_parse_subject_rejects_foreign_subjects():
    for subject in ["other.a.b", "agg.a", "agg.a.b.c", "agg"]:
        with pytest.raises(ValueError):
            parse_subject("agg", subject)


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(subjects, "CACHE_MAX", 64)
    monkeypatch.setattr(subjects, "_cache", {})
    for i in range(1000):
        assert unescape_token(escape_token(f"k.{i}")) == f"k.{i}"
        assert len(subjects._cache) <= 64
