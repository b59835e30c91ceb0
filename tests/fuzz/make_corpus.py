"""Writes the seed corpora of the C fuzz targets (deterministic; the files are checked in).

    python tests/fuzz/make_corpus.py            # rewrites tests/fuzz/corpus/{cbor,frames}/

corpus/cbor/<category>-<name>.bin: one payload each (fuzz_cbor.c). Categories:
    valid      payloads that decode (C reader), and ones that go to the cbor2 fallback
    trunc      every cut of a few valid payloads
    deep       nesting at and beyond the 256 limit: arrays, maps, tags, indefinite containers,
               inside ignored values, and 70,000 nested arrays (more than a 64 KiB payload holds)
    huge       length prefixes far larger than the payload (2^64-1, 2^32, 2^31) on every major
               type, in read and in ignored fields, in indefinite-string chunks
    wrongtype  right shape, wrong types: d/s/u not text, v not a number, n not unsigned, keys
               that are not text, top-level scalars, duplicates, reserved encodings, NaN/Inf
corpus/frames/<category>-<name>.bin: two configuration bytes, then a broker byte stream
(fuzz_frames.c explains the configuration byte).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import cbor2

from telemetry_cy.tools.mqtt_loadgen import remaining_length

HERE = Path(__file__).resolve().parent
CBOR_DIR = HERE / "corpus" / "cbor"
FRAMES_DIR = HERE / "corpus" / "frames"


def head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 1 << 8:
        return bytes([major << 5 | 24, n])
    if n < 1 << 16:
        return bytes([major << 5 | 25]) + struct.pack(">H", n)
    if n < 1 << 32:
        return bytes([major << 5 | 26]) + struct.pack(">I", n)
    return bytes([major << 5 | 27]) + struct.pack(">Q", n)


def t(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return head(3, len(raw)) + raw


def mapping(*pairs: bytes) -> bytes:
    assert len(pairs) % 2 == 0
    return head(5, len(pairs) // 2) + b"".join(pairs)


D, S, V, U, N = t("d"), t("s"), t("v"), t("u"), t("n")
BASIC = cbor2.dumps({"d": "gw-01", "s": "temp", "v": 21.5, "u": "C", "n": 1042})


def cbor_seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    # -- valid
    out["valid-basic"] = BASIC
    out["valid-min"] = mapping(D, t("a"), S, t("b"), V, b"\x00")
    out["valid-array"] = cbor2.dumps([{"d": "gw", "s": "t", "v": 1},
                                      {"d": "gw", "s": "rh", "v": -40},
                                      {"d": "gw", "s": "p", "v": 1013.25}])
    out["valid-empty-array"] = b"\x80"
    out["valid-indef-map"] = b"\xbf" + D + t("x") + S + t("y") + V + b"\xf9\x3c\x00" + b"\xff"
    out["valid-indef-array"] = b"\x9f" + BASIC + BASIC + b"\xff"
    out["valid-self-described"] = b"\xd9\xd9\xf7" + BASIC
    out["valid-half-subnormal"] = mapping(D, t("x"), S, t("y"), V, b"\xf9\x00\x01")
    out["valid-single"] = mapping(D, t("x"), S, t("y"), V, b"\xfa\x47\xc3\x50\x00")
    out["valid-negint-max"] = mapping(D, t("x"), S, t("y"), V, b"\x3b" + b"\xff" * 8)
    out["valid-uint-max"] = mapping(D, t("x"), S, t("y"), V, b"\x1b" + b"\xff" * 8)
    out["valid-unicode"] = cbor2.dumps({"d": "Küche", "s": "温度", "v": 1, "u": "°C"})
    out["valid-ignored-junk"] = mapping(
        D, t("x"), S, t("y"), V, b"\x01", t("meta"),
        b"\x9f\xc2\x41\x01\x5f\x41\x00\xff\xa1\x01\x02\x7f\x61\x61\xff\xf6\xf7\xff",
        t("bad-utf8-ignored"), t(b"\xff\xfe"))
    out["valid-empty-unit"] = mapping(D, t("x"), S, t("y"), V, b"\x05", U, t(""))
    # the event time `t`: a float64, tag 1 on an integer, tag 0 (through cbor2), a wrong type
    out["valid-event-time"] = cbor2.dumps({"d": "gw", "s": "t", "v": 1.5, "t": 1764720000.25})
    out["valid-event-time-tag1"] = mapping(D, t("x"), S, t("y"), V, b"\x01", t("t"),
                                           b"\xc1\x1a\x69\x2f\x8a\x00")
    out["valid-event-time-tag0"] = mapping(D, t("x"), S, t("y"), V, b"\x01", t("t"),
                                           b"\xc0" + t("2025-12-03T00:00:00Z"))
    out["mismatch-event-time-text"] = mapping(D, t("x"), S, t("y"), V, b"\x01", t("t"), t("now"))
    out["fallback-bignum"] = mapping(D, t("x"), S, t("y"), V, b"\xc2\x41\x05")
    out["fallback-bignum-huge"] = mapping(D, t("x"), S, t("y"), V, b"\xc2\x58\x80" + b"\xff" * 128)
    out["fallback-int-key"] = mapping(D, t("x"), S, t("y"), V, b"\x01", b"\x01", b"\x02")
    out["fallback-chunked-d"] = mapping(D, b"\x7f" + t("a") + t("b") + b"\xff", S, t("y"),
                                        V, b"\x01")
    out["fallback-tagged-element"] = b"\x81\xc6" + BASIC
    out["fallback-33-keys"] = head(5, 33) + D + t("x") + S + t("y") + V + b"\x01" + b"".join(
        t(f"k{i:02d}") + b"\x00" for i in range(30))
    # -- truncated: every cut
    for name, payload in (("basic", BASIC), ("array", out["valid-array"]),
                          ("indef", out["valid-indef-map"]), ("junk", out["valid-ignored-junk"])):
        for cut in range(len(payload)):
            out[f"trunc-{name}-{cut:03d}"] = payload[:cut]
    # -- deeply nested
    for depth in (255, 256, 257, 300):
        out[f"deep-array-{depth}"] = b"\x81" * depth + b"\x00"
        out[f"deep-indef-array-{depth}"] = b"\x9f" * depth + b"\xff" * depth
        out[f"deep-tag-{depth}"] = b"\xc6" * depth + b"\x00"
        out[f"deep-map-{depth}"] = (b"\xa1\x61a" * depth) + b"\x00"
        out[f"deep-in-value-{depth}"] = mapping(D, t("x"), S, t("y"), V, b"\x01",
                                                t("x"), b"\x81" * depth + b"\x00")
        out[f"deep-in-array-{depth}"] = b"\x82" + BASIC + b"\x81" * depth + b"\x00"
    out["deep-empty-at-limit"] = b"\x81" * 256 + b"\x80"
    out["deep-indef-empty-at-limit"] = b"\x81" * 256 + b"\x9f\xff"
    # deeper than the largest payload the daemon accepts (64 KiB): no recursion anywhere
    out["deep-70k"] = b"\x81" * 70_000 + b"\x00"
    out["deep-70k-indef"] = b"\x9f" * 35_000 + b"\xff" * 35_000
    # -- huge length prefixes
    big = {"u64max": b"\xff" * 8, "u32max": b"\xff" * 4, "2p31": b"\x80\x00\x00\x00"}
    for name, arg in big.items():
        ai = 27 if len(arg) == 8 else 26
        for major, kind in ((2, "bytes"), (3, "text"), (4, "array"), (5, "map")):
            h = bytes([major << 5 | ai]) + arg
            out[f"huge-{kind}-{name}-top"] = h + b"\x00" * 8
            out[f"huge-{kind}-{name}-as-d"] = b"\xa3" + D + h + b"abc" + S + t("y") + V + b"\x01"
            out[f"huge-{kind}-{name}-ignored"] = (b"\xa4" + D + t("x") + S + t("y") + V + b"\x01"
                                                  + t("z") + h + b"\x00")
            out[f"huge-{kind}-{name}-in-array"] = b"\x82" + BASIC + h
        out[f"huge-chunk-{name}"] = mapping(D, t("x"), S, t("y"), V, b"\x01", t("z"),
                                            b"\x5f" + bytes([0x40 | ai]) + arg + b"\xff")
        out[f"huge-array-count-{name}"] = bytes([0x80 | ai]) + arg + BASIC
        out[f"huge-map-count-{name}"] = bytes([0xa0 | ai]) + arg + D + t("x")
        out[f"huge-key-{name}"] = b"\xa1" + bytes([0x60 | ai]) + arg + b"d"
    out["huge-tag-u64"] = b"\xdb" + b"\xff" * 8 + b"\x00"
    # -- wrong types
    wrong = {
        "d-int": mapping(D, b"\x01", S, t("y"), V, b"\x01"),
        "d-bytes": mapping(D, b"\x41x", S, t("y"), V, b"\x01"),
        "d-empty": mapping(D, t(""), S, t("y"), V, b"\x01"),
        "d-array": mapping(D, b"\x81\x61x", S, t("y"), V, b"\x01"),
        "d-null": mapping(D, b"\xf6", S, t("y"), V, b"\x01"),
        "d-bad-utf8": mapping(D, t(b"\xed\xa0\x80"), S, t("y"), V, b"\x01"),
        "d-too-long": mapping(D, t("a" * 300), S, t("y"), V, b"\x01"),
        "s-missing": mapping(D, t("x"), V, b"\x01"),
        "v-missing": mapping(D, t("x"), S, t("y")),
        "v-text": mapping(D, t("x"), S, t("y"), V, t("1.5")),
        "v-true": mapping(D, t("x"), S, t("y"), V, b"\xf5"),
        "v-null": mapping(D, t("x"), S, t("y"), V, b"\xf6"),
        "v-undefined": mapping(D, t("x"), S, t("y"), V, b"\xf7"),
        "v-simple": mapping(D, t("x"), S, t("y"), V, b"\xf8\x20"),
        "v-simple-low": mapping(D, t("x"), S, t("y"), V, b"\xf8\x1f"),
        "v-map": mapping(D, t("x"), S, t("y"), V, b"\xa0"),
        "v-nan": mapping(D, t("x"), S, t("y"), V, b"\xf9\x7e\x00"),
        "v-inf": mapping(D, t("x"), S, t("y"), V, b"\xfb\x7f\xf0" + b"\x00" * 6),
        "v-neg-inf-single": mapping(D, t("x"), S, t("y"), V, b"\xfa\xff\x80\x00\x00"),
        "u-int": mapping(D, t("x"), S, t("y"), V, b"\x01", U, b"\x01"),
        "n-neg": mapping(D, t("x"), S, t("y"), V, b"\x01", N, b"\x20"),
        "n-float": mapping(D, t("x"), S, t("y"), V, b"\x01", N, b"\xf9\x3c\x00"),
        "dup-d": b"\xa4" + D + t("x") + D + t("z") + S + t("y") + V + b"\x01",
        "dup-other": b"\xa5" + D + t("x") + S + t("y") + V + b"\x01" + t("k") + b"\x00"
                     + t("k") + b"\x01",
        "top-int": b"\x01",
        "top-text": t("hello"),
        "top-true": b"\xf5",
        "array-of-ints": b"\x83\x01\x02\x03",
        "reserved-ai-28": b"\x1c",
        "reserved-ai-30-in-map": mapping(D, t("x"), S, t("y"), V, b"\x1e"),
        "indef-uint": b"\x1f",
        "indef-tag": b"\xdf\x00",
        "break-top": b"\xff",
        "break-in-map-odd": b"\xbf" + D + b"\xff",
        "break-in-definite": b"\x82\x01\xff",
        "chunk-wrong-major": mapping(D, t("x"), S, t("y"), V, b"\x01", t("z"),
                                     b"\x5f\x61a\xff"),
        "chunk-nested-indef": mapping(D, t("x"), S, t("y"), V, b"\x01", t("z"),
                                      b"\x7f\x7f\xff\xff"),
        "trailing-bytes": BASIC + b"\x00",
        "two-items": BASIC + BASIC,
        "empty": b"",
    }
    out.update({f"wrongtype-{k}": v for k, v in wrong.items()})
    return out


# ---- MQTT frames --------------------------------------------------------------------------------


def conf(buf: int = 3, v5: bool = True, max_payload: int = 3, ring: int = 3,
         drain: bool = True, seed: int = 0) -> bytes:
    return bytes([buf | (v5 << 2) | (max_payload << 3) | (ring << 5) | (drain << 7), seed])


def publish(topic: bytes, payload: bytes, qos: int = 0, pid: int = 1, v5: bool = True,
            props: bytes = b"\x00") -> bytes:
    body = struct.pack(">H", len(topic)) + topic + (struct.pack(">H", pid) if qos else b"")
    body += (props if v5 else b"") + payload
    return bytes([0x30 | qos << 1]) + remaining_length(len(body)) + body


def frames_seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    connack, suback, pingresp = b"\x20\x03\x00\x00\x00", b"\x90\x04\x00\x01\x00\x01", b"\xd0\x00"
    for v5 in (True, False):
        tag = "v5" if v5 else "v4"
        c = conf(v5=v5)
        p0 = publish(b"site/a/sensor/b", BASIC, 0, v5=v5)
        p1 = publish(b"site/a/sensor/b", BASIC, 1, 7, v5=v5)
        out[f"valid-{tag}-session"] = c + connack + suback + p0 + p1 + pingresp
        out[f"valid-{tag}-many"] = c + b"".join(publish(b"t/%d" % i, BASIC, i & 1, i + 1, v5)
                                                for i in range(40))
        out[f"valid-{tag}-qos2"] = c + publish(b"t", BASIC, 2, 9, v5) + b"\x62\x02\x00\x09"
        out[f"valid-{tag}-empty-topic-payload"] = c + publish(b"", b"", 1, 3, v5)
        for cut in range(1, len(p1)):
            out[f"trunc-{tag}-{cut:03d}"] = c + p1[:cut]
        out[f"overlong-{tag}-qos1"] = conf(buf=0, v5=v5) + publish(b"abc", b"x" * 300, 1, 2, v5)
        out[f"overlong-{tag}-qos0-then-ok"] = conf(buf=0, v5=v5) + publish(
            b"abc", b"x" * 300, 0, v5=v5) + publish(b"t", b"ok", 1, 5, v5)
        out[f"small-ring-{tag}"] = conf(ring=0, drain=False, v5=v5) + p1 * 5
        out[f"full-ring-{tag}"] = conf(ring=1, drain=False, v5=v5) + p0 * 50
        out[f"max-payload-{tag}"] = conf(max_payload=1, v5=v5) + p0 + publish(b"t", b"12345", 1,
                                                                              4, v5)
    c = conf()
    out["error-remaining-length-5-bytes"] = c + b"\x30\xff\xff\xff\xff\x7f"
    out["error-type-0"] = c + b"\x00\x00"
    out["error-qos3"] = c + b"\x36\x05\x00\x01t\x00\x01"
    out["error-pid-0"] = c + publish(b"t", b"x", 1, 0)
    out["error-topic-longer"] = c + b"\x30\x03\x00\x05a"
    out["error-short-varheader"] = c + b"\x32\x02\x00\x00"
    out["error-props-varint"] = c + publish(b"t", b"", 0, props=b"\xff\xff\xff\xff\x01")
    out["error-props-longer"] = c + publish(b"t", b"", 0, props=b"\x7f")
    out["error-other-too-big"] = conf(buf=0) + b"\x90\xc8\x01" + b"\x00" * 10
    out["error-overlong-topic-too-big"] = conf(buf=0) + b"\x30\xc8\x01\xff\xff" + b"a" * 60
    out["error-then-more"] = c + b"\x00\x00" + publish(b"t", BASIC, 1, 1) + connack
    out["remaining-length-max"] = conf(buf=0) + b"\x32\xff\xff\xff\x7f\x00\x01t\x00\x01" + b"z" * 50
    out["properties-full"] = c + publish(b"t", b"p", 1, 2,
                                         props=b"\x0c\x01\x01\x03\x00\x04text\x23\x00\x05")
    out["garbage-ascii"] = c + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    out["pingresp-storm"] = c + pingresp * 200
    return out


def write(directory: Path, seeds: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.bin"):
        old.unlink()
    for name, data in seeds.items():
        (directory / f"{name}.bin").write_bytes(data)


def main() -> int:
    write(CBOR_DIR, cbor_seeds())
    write(FRAMES_DIR, frames_seeds())
    for d in (CBOR_DIR, FRAMES_DIR):
        files = list(d.glob("*.bin"))
        print(f"{d.relative_to(HERE.parent.parent)}: {len(files)} files, "
              f"{sum(f.stat().st_size for f in files)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
