"""The JetStream ack reader (``AckWindow``; tc_wire.h's tc_acks_*): compiled against its twin on
generated server streams cut at random points, both against a plain-Python model of what the
answers mean, the body classifier against a json-based oracle, and the C fuzz target
(tests/fuzz/fuzz_jsack.c) on its seed corpus under the sanitizers.

    python tests/test_jetstream_acks.py --write-corpus    # rewrite tests/fuzz/corpus/jsack/
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from support.c_build import build_fuzz_target, need_cc

HERE = Path(__file__).resolve().parent
FUZZ = HERE / "fuzz"
CORPUS = FUZZ / "corpus" / "jsack"

INBOX = "_I.x"
SID = 1
N = 16                       # messages of the batch under test
SERIAL = 7
UNSENT, SENT, FAILED, ACKED = 0, 1, 2, 3
KINDS = ("ok", "duplicate", "no_responders", "stream_full", "wrong_stream", "too_many_requests",
         "other_error", "bad")
ERROR_BODY = ('{"error":{"code":%d,"err_code":%d,"description":"%s"},"stream":"AGG",'
              '"seq":0}')
#: answer kind -> the server's bytes for it (as nats-server 2.15 writes them)
ANSWERS = {
    "ok": lambda: (b"", b'{"stream":"AGG","seq":12}'),
    "duplicate": lambda: (b"", b'{"stream":"AGG","seq":3,"duplicate": true}'),
    "no_responders": lambda: (b"NATS/1.0 503\r\nNats-Subject: agg.a.b\r\n\r\n", b""),
    "stream_full": lambda: (b"", (ERROR_BODY % (503, 10077, "maximum messages exceeded"))
                            .encode()),
    "wrong_stream": lambda: (b"", (ERROR_BODY % (400, 10060, "expected stream does not match"))
                             .encode()),
    "too_many_requests": lambda: (b"NATS/1.0 429 Too Many Requests\r\n\r\n",
                                  (ERROR_BODY % (429, 10167, "too many requests")).encode()),
    "other_error": lambda: (b"", (ERROR_BODY % (503, 10077 + 1, "x")).encode()),
    "bad": lambda: (b"", b"not json"),
}


def frame(subject: str, sid: int, header: bytes, body: bytes) -> bytes:
    if header:
        return (f"HMSG {subject} {sid} {len(header)} {len(header) + len(body)}\r\n".encode()
                + header + body + b"\r\n")
    return f"MSG {subject} {sid} {len(body)}\r\n".encode() + body + b"\r\n"


FOREIGN = [b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Permissions Violation for Publish'\r\n",
           b'INFO {"server_id":"x","max_payload":1048576}\r\n',
           frame("_INBOX.other.1", 9, b"", b"hello"),
           frame("_INBOX.other.2", 9, b"NATS/1.0\r\nA: b\r\n\r\n", b"x y")]


# ---- generated server streams -----------------------------------------------------------------

answers = st.tuples(st.just("answer"), st.sampled_from(KINDS),
                    st.sampled_from([SERIAL, SERIAL, SERIAL, SERIAL + 1]), st.integers(0, N + 1))
foreign = st.tuples(st.just("foreign"), st.sampled_from(FOREIGN))
garbage = st.tuples(st.just("garbage"), st.binary(max_size=40))
odd_subjects = st.tuples(st.just("odd"), st.sampled_from([
    f"{INBOX}.{SERIAL}", f"{INBOX}.{SERIAL}.01", f"{INBOX}.x.1", "_I.y.7.1", f"{INBOX}.{SERIAL}.",
    f"{INBOX}.{SERIAL}.1.2", f"{INBOX}.99999999999999999999.1"]))


def render(items) -> bytes:
    out = []
    for item in items:
        if item[0] == "answer":
            _, kind, serial, index = item
            out.append(frame(f"{INBOX}.{serial}.{index}", SID, *ANSWERS[kind]()))
        elif item[0] == "foreign":
            out.append(item[1])
        elif item[0] == "odd":
            out.append(frame(item[1], SID, *ANSWERS["ok"]()))
        else:
            out.append(item[1])
    return b"".join(out)


def initial_state() -> bytearray:
    return bytearray(i % 4 for i in range(N))


def drive(window, pieces: list[bytes]):
    """AckTap's loop (sink/jetstream.py) without nats-py: what it would hand over, in order,
    and the unread rest. After an unreadable frame everything is nats-py's."""
    handed, tail = [], b""
    for data in pieces:
        data = tail + data
        tail, pos = b"", 0
        while pos < len(data):
            used, nxt = window.feed(data, pos)
            pos += used
            if nxt > 0:
                handed.append(data[pos:pos + nxt])
                pos += nxt
            elif nxt == 0:
                tail = data[pos:]
                break
            else:
                return handed, ("unreadable", b"")
    return handed, ("tail", tail)


def begun(backend):
    w = backend.wire.AckWindow(INBOX)
    w.sid = SID
    state = initial_state()
    w.begin(SERIAL, state)
    w.send(0, N // 2)
    return w, state


def snapshot(w, state) -> tuple:
    return (bytes(state), w.in_flight, w.acked, w.answers, w.stale, w.repeats, w.counts(),
            w.last_error())


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(answers, answers, foreign, odd_subjects, garbage), max_size=25),
       st.lists(st.integers(0, 10**6), max_size=6))
@example([("answer", "ok", SERIAL, 1), ("foreign", b"PONG\r\n"), ("answer", "bad", SERIAL, 2)],
         [5, 30])
def test_twins_read_the_same_stream_alike_however_it_is_cut(compiled_backend, pure_backend,
                                                              items, points):
    data = render(items)
    results = []
    for backend in (compiled_backend, pure_backend):
        for pieces in ([data], cut(data, points)):
            w, state = begun(backend)
            handed, rest = drive(w, pieces)
            results.append((b"".join(handed), rest[0], snapshot(w, state)))
    assert all(r == results[0] for r in results[1:])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(answers, answers, foreign, odd_subjects), max_size=30),
       st.lists(st.integers(0, 10**6), max_size=6))
def test_answers_mean_what_the_model_says(backend, items, points):
    """A plain-Python model of the rules (tc_wire.h's comment), from the generated answers
    themselves rather than from bytes: every foreign frame is handed over whole and in order."""
    state = initial_state()
    for i in range(N):
        state[i] = ACKED if state[i] == ACKED else UNSENT
    for i in range(N // 2):
        if state[i] != ACKED:
            state[i] = SENT
    counts = dict.fromkeys(KINDS, 0)
    stale = repeats = answered = 0
    handed = []
    for item in items:
        if item[0] == "foreign":
            handed.append(item[1])
            continue
        if item[0] == "odd":
            counts["bad"] += 1
            stale += 1
            continue
        _, kind, serial, index = item
        counts[kind] += 1
        if serial != SERIAL or index >= N:
            stale += 1
            continue
        answered += 1
        if kind in ("ok", "duplicate"):
            if state[index] == ACKED:
                repeats += 1
            state[index] = ACKED
        elif state[index] == SENT:
            state[index] = FAILED
    w, got_state = begun(backend)
    got_handed, rest = drive(w, cut(render(items), points))
    assert got_handed == handed and rest == ("tail", b"")
    assert bytes(got_state) == bytes(state)
    assert (w.in_flight, w.acked) == (state.count(SENT), state.count(ACKED))
    assert (w.answers, w.stale, w.repeats, w.counts()) == (answered, stale, repeats, counts)


def test_last_error_and_counts(backend):
    w, state = begun(backend)
    data = render([("answer", "stream_full", SERIAL, 1), ("answer", "ok", SERIAL, 0)])
    assert w.feed(data) == (len(data), 0)
    assert w.last_error() == \
        "stream_full: maximum messages exceeded (code 503, err_code 10077)"
    assert (state[0], state[1]) == (ACKED, FAILED) and w.in_flight == N // 2 - N // 8 - 2
    w.feed(render([("answer", "no_responders", SERIAL, 2)]))
    assert w.last_error() == "no_responders (code 503)"
    # the other way in (a message object of the client library), same rules
    w.answer(f"{INBOX}.{SERIAL}.4".encode(), b"NATS/1.0 503\r\n\r\n", b"")
    w.answer(f"{INBOX}.{SERIAL}.5".encode(), b"", b'{"stream":"AGG","seq":1}')
    w.answer(f"{INBOX}.{SERIAL}.3".encode(), b"NATS/1.0 503\r\n\r\n", b"")   # was ACKED
    assert (state[3], state[4], state[5]) == (ACKED, FAILED, ACKED)
    assert w.counts()["no_responders"] == 3 and w.counts()["stream_full"] == 1
    w.end()
    assert w.feed(render([("answer", "ok", SERIAL, 6)]))[0] > 0 and w.stale == 1


def test_a_window_without_subscription_reads_nothing(backend):
    w = backend.wire.AckWindow(INBOX)
    data = render([("answer", "ok", SERIAL, 1)])
    assert w.feed(data) == (0, len(data))    # sid 0: every frame is the library's
    assert w.counts()["ok"] == 0


def test_send_and_ranges(backend):
    w, state = begun(backend)
    assert w.sent_in(0, N) == N // 2 - N // 8   # a quarter of them were ACKED already
    assert w.send(0, N) == N // 2 - N // 8      # the other half: now in flight too
    assert w.in_flight == N - N // 4 and w.sent_in(0, N) == w.in_flight
    assert not w.acked_range(0, 4) and w.acked_range(3, 4)
    w.end()
    assert w.send(0, N) == 0
    with pytest.raises(ValueError):
        w.acked_range(0, 1)
    with pytest.raises(TypeError):
        w.begin(1, b"\x00")
    with pytest.raises((TypeError, ValueError)):
        backend.wire.AckWindow("_INBOX.>")


# ---- the body classifier against a json oracle --------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
error_obj = st.dictionaries(st.sampled_from(["code", "err_code", "description", "x"]),
                            st.one_of(st.integers(-1000, 20000), st.sampled_from([
                                10077, 10047, 10028, 10060, 10167, 429, 503]), json_any),
                            max_size=4)
ack_obj = st.dictionaries(
    st.sampled_from(["stream", "seq", "duplicate", "error", "domain", "batch", "other"]),
    st.one_of(st.text(max_size=6), st.integers(-5, 10**19), st.booleans(), error_obj, json_any),
    max_size=6)


def oracle(d: dict, status: int = 0) -> str:
    """The kind tc_ack_classify must give a JSON object body, from the decoded object."""
    def num(v):
        if isinstance(v, bool) or v is None:
            raise ValueError   # a literal where a number is read: unreadable
        if isinstance(v, int) and len(str(abs(v))) <= 18:
            return v
        return 0               # a float, or an integer of more than 18 digits
    err = d.get("error")
    if isinstance(err, dict):
        try:
            code = num(err["code"]) if "code" in err and not isinstance(
                err["code"], (str, dict, list)) else 0
            err_code = num(err["err_code"]) if "err_code" in err and not isinstance(
                err["err_code"], (str, dict, list)) else 0
        except ValueError:
            return "bad"
        code = code or status
        if err_code in (10077, 10047, 10028):
            return "stream_full"
        if err_code == 10060:
            return "wrong_stream"
        if err_code == 10167 or code == 429:
            return "too_many_requests"
        return "other_error"
    if status and status != 200:
        return "bad"
    has_stream = isinstance(d.get("stream"), str) and d["stream"] != ""
    seq = d.get("seq")
    has_seq = isinstance(seq, (int, float)) and not isinstance(seq, bool)
    if not (has_stream and has_seq):
        return "bad"
    return "duplicate" if d.get("duplicate") is True else "ok"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ack_obj, st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
       st.sampled_from([0, 0, 429, 503, 200]))
@example({"stream": "AGG", "seq": 1, "duplicate": True}, (",", ": "), 0)
@example({"error": {"code": 503, "err_code": 10077}, "stream": "x"}, (",", ":"), 0)
@example({"error": {"code": None}}, (",", ":"), 0)
@example({"stream": "x\"error\":{}", "seq": 1}, (",", ":"), 0)
def test_classifier_matches_the_json_oracle(backend, obj, separators, status):
    body = json.dumps(obj, separators=separators).encode()
    header = f"NATS/1.0 {status}\r\n\r\n".encode() if status else b""
    w = backend.wire.AckWindow(INBOX)
    w.answer(f"{INBOX}.1.0".encode(), header, body)
    want = oracle(obj, status)
    assert [k for k, v in w.counts().items() if v] == [want]


@pytest.mark.parametrize("body", [b"", b"{", b"{}", b'{"stream":"A","seq":1}x', b"[1]",
                                  b'{"stream":"A","seq":01}', b'{"stream":"A","seq":-}',
                                  b'{"stream":"A"\x00,"seq":1}', b'{"stream":"A","seq":1e}',
                                  b'{"a":' * 20 + b"1" + b"}" * 20])
def test_classifier_refuses_what_is_not_an_ack(backend, body):
    w = backend.wire.AckWindow(INBOX)
    w.answer(f"{INBOX}.1.0".encode(), b"", body)
    assert w.counts()["bad"] == 1


# ---- the C fuzz target on its corpus ----------------------------------------------------------


def corpus() -> dict[str, bytes]:
    """The seed inputs of fuzz_jsack.c: a split byte, then server bytes."""
    every = render([("answer", k, SERIAL, i) for i, k in enumerate(KINDS)])
    mixed = render([("answer", "ok", SERIAL, 1), ("foreign", FOREIGN[1]), ("odd", "_I.y.7.1"),
                    ("answer", "duplicate", SERIAL, 1), ("foreign", FOREIGN[5]),
                    ("answer", "stream_full", SERIAL + 1, 3)])
    return {"every_kind.bin": b"\x80" + every, "mixed.bin": b"\x33" + mixed,
            "incomplete.bin": b"\xff" + every[:-7], "unreadable.bin": b"\x10" + b"WHAT\r\n" + every,
            "deep.bin": b"\x00" + frame(f"{INBOX}.7.1", SID, b"", b'{"a":' * 20 + b"}" * 20),
            "info.bin": b"\x05" + FOREIGN[4] + every}


def test_corpus_is_what_corpus_writes():
    want = corpus()
    got = {p.name: p.read_bytes() for p in CORPUS.glob("*.bin")}
    assert got == want, "run: python tests/test_jetstream_acks.py --write-corpus"


def test_fuzz_target_replays_corpus_and_mutants(tmp_path):
    exe = build_fuzz_target(need_cc(), "jsack", tmp_path / "fuzz_jsack")
    run = subprocess.run([str(exe), "-runs=20000", "-max_len=4096", "-seed=3", str(CORPUS)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "Done 20000 runs" in run.stdout + run.stderr


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-corpus"]:
        CORPUS.mkdir(parents=True, exist_ok=True)
        for old in CORPUS.glob("*.bin"):
            old.unlink()
        for name, data in corpus().items():
            (CORPUS / name).write_bytes(data)
        print(f"wrote {len(corpus())} files to {CORPUS}")
    else:
        sys.exit("usage: python tests/test_jetstream_acks.py --write-corpus")
