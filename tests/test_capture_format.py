"""The capture format without a broker: encoders, writer, readers, damage, mosquitto_sub text, fuzz.

- Both block encoders (compiled ``_encode`` and its twin ``_encode_py``) against a reference model
  written here from docs/capture.md: the same blocks, byte for byte.
- Writer and reader round trips, rotation by size and by age (an injected clock), segments read
  from ``FILE`` or from a later ``FILE.k``, an existing capture refused.
- A capture cut at every byte reads as the whole blocks before the cut, the rest reported torn;
  every single-bit flip is a ``CaptureError``; a newer version is refused by name.
- mosquitto_sub ``%U %t %x`` lines; content-based detection.
- Fuzz (hypothesis): random bytes and mutations of valid binary and text captures never raise
  anything but ``CaptureError``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry_cy.capture import format as fmt
from telemetry_cy.capture.format import CaptureError, Message
from telemetry_cy.capture.reader import Capture
from telemetry_cy.capture.writer import CaptureWriter, existing_segments, segment_path

# ---- a reference model of the records and blocks (from docs/capture.md, not from the code) -------


def ref_varint(n: int) -> bytes:
    out = b""
    while True:
        n, low = divmod(n, 128)
        out += bytes([low + (128 if n else 0)])
        if n == 0:
            return out


def ref_record(topic: bytes, payload: bytes, flags: int) -> bytes:
    return (bytes([0x30 + (flags % 16)]) + ref_varint(2 + len(topic) + len(payload))
            + len(topic).to_bytes(2, "big") + topic + payload)


def ref_blocks(records, block_bytes: int) -> list[tuple[int, bytes, bytes, bool]]:
    """Greedy: a record joins the block unless the block is not empty and it would pass
    block_bytes (8 bytes of arrival time + the record)."""
    blocks, cur = [], []
    size = 0
    for ts, topic, payload, flags in records:
        rec = ref_record(topic, payload, flags)
        if cur and size + 8 + len(rec) > block_bytes:
            blocks.append(cur)
            cur, size = [], 0
        cur.append((ts, rec, flags))
        size += 8 + len(rec)
    if cur:
        blocks.append(cur)
    return [(len(b), b"".join(struct.pack("<d", ts) for ts, _, _ in b),
             b"".join(r for _, r, _ in b), all(f % 16 == 0 for _, _, f in b)) for b in blocks]


def encoders(backend):
    from telemetry_cy.capture import _encode_py
    if backend.compiled:
        from telemetry_cy.capture import _encode
        return _encode.BlockEncoder
    return _encode_py.BlockEncoder


def encode_all(backend, records, block_bytes: int, fill_max: int = 1 << 16):
    """Every record through a ring of ``backend`` and its encoder: the list of blocks."""
    ring = backend.ByteRing(1 << 22)
    enc = encoders(backend)(block_bytes)
    for rec in records:
        assert ring.try_push(*rec)
    out = []
    while True:
        moved = enc.fill(ring, fill_max)
        if enc.full or not moved:
            block = enc.take()
            if block is None and not moved:
                return out
            if block is not None:
                out.append(block)


# MQTT flags a broker can send: any DUP/RETAIN with QoS 0-2 (QoS 3 does not exist)
mqtt_flags = st.sampled_from([f for f in range(16) if (f >> 1) & 3 != 3])
records_st = st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False, width=64),
                                st.binary(max_size=40), st.binary(max_size=600), mqtt_flags),
                      max_size=60)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_st, block_bytes=st.integers(64, 4096), fill_max=st.integers(1, 50))
def test_encoders_match_the_reference_model(backend, records, block_bytes, fill_max):
    assert encode_all(backend, records, block_bytes, fill_max) == ref_blocks(records, block_bytes)


def test_record_lengths_across_varint_sizes(backend):
    # remaining lengths of 1, 2 and 3 bytes of variable byte integer, at their edges
    sizes = [0, 125, 126, 16381, 16382, 70000]
    records = [(float(i), b"t/x", bytes([i]) * n, 2) for i, n in enumerate(sizes)]
    assert encode_all(backend, records, 1 << 20) == ref_blocks(records, 1 << 20)


def test_unencodable_records_are_skipped_and_counted(backend):
    ring = backend.ByteRing(1 << 20)
    enc = encoders(backend)(4096)
    assert ring.try_push(1.0, b"a", b"x", 0)
    assert ring.try_push(2.0, b"t" * 0x10000, b"", 0)   # topic longer than MQTT's 65,535
    assert ring.try_push(3.0, b"b", b"y", 0x06)           # QoS 3
    assert ring.try_push(4.0, b"c", b"z", 0x01)
    assert enc.fill(ring) == 4
    assert enc.skipped == 2
    assert enc.take() == ref_blocks([(1.0, b"a", b"x", 0), (4.0, b"c", b"z", 1)], 4096)[0]


def test_discard_counts_every_record_held(backend):
    # what the recorder counts as unwritten when the disk is full: nothing may go uncounted
    ring = backend.ByteRing(1 << 20)
    for i in range(100):
        assert ring.try_push(float(i), b"t", bytes(100), 0)
    enc = encoders(backend)(1024)
    enc.fill(ring)
    assert enc.full and 0 < enc.n_records < 100
    held = enc.discard()
    assert held + len(ring.pop_many(1000)) == 100
    assert enc.n_records == 0 and enc.take() is None and not enc.full


@pytest.mark.parametrize("bad", [0, 63, 1 << 29, 1.5, True])
def test_block_bytes_checked_alike(backend, bad):
    with pytest.raises(ValueError, match="block_bytes"):
        encoders(backend)(bad)


# ---- writer and reader --------------------------------------------------------------------------


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_capture(path: Path, messages: list[Message], per_block: int = 3, **kw) -> CaptureWriter:
    """A capture of ``messages`` (per_block to a block) made with the real writer."""
    w = CaptureWriter(path, meta={"test": True}, **kw)
    for i in range(0, len(messages), per_block):
        chunk = messages[i:i + per_block]
        recs = [(m.ts, m.topic, m.payload, m.dup << 3 | m.qos << 1 | m.retain) for m in chunk]
        (block,) = ref_blocks(recs, 1 << 30)
        w.write_block(*block)
    w.close()
    return w


def sample(n: int, seed: int = 0) -> list[Message]:
    import random
    rng = random.Random(seed)
    return [Message(1.7e9 + i * 0.01, f"site/dev-{i % 5}/sensor/t".encode(),
                    rng.randbytes(rng.randrange(0, 80)), rng.choice([0, 1, 2]),
                    rng.random() < 0.2, False) for i in range(n)]


def test_round_trip_and_block_layout(tmp_path):
    msgs = sample(10)
    w = write_capture(tmp_path / "cap", msgs)
    assert (w.segment, w.blocks, w.records) == (0, 4, 10)
    cap = Capture(tmp_path / "cap")
    assert cap.kind == "binary"
    assert list(cap.messages()) == msgs
    assert cap.torn == []
    assert [len(c) for c in cap.chunks()] == [3, 3, 3, 1]


def test_rotation_by_size(tmp_path):
    msgs = sample(60, seed=1)
    w = write_capture(tmp_path / "cap", msgs, per_block=4, rotate_bytes=700)
    segs = existing_segments(tmp_path / "cap")
    assert len(segs) == w.segment + 1 >= 3
    assert segs[1].name == "cap.1"
    for p in segs:
        size = p.stat().st_size
        assert size <= 700 or len(_segment_chunks(p)) == 1
    assert list(Capture(tmp_path / "cap").messages()) == msgs
    # a later segment on its own: it and the segments after it
    starts = sum(len(list(c.messages())) for c in _segment_chunks(segs[0]))
    assert list(Capture(segs[1]).messages()) == msgs[starts:]


def _segment_chunks(path: Path):
    from telemetry_cy.capture.binary_reader import SegmentFile
    with open(path, "rb") as f:
        seg = SegmentFile(f, str(path), [])
        return [blk for _, blk in seg.blocks()]


def test_rotation_by_age(tmp_path):
    clock = Clock()
    w = CaptureWriter(tmp_path / "cap", rotate_seconds=10.0, clock=clock)
    msgs = sample(6, seed=2)
    recs = [(m.ts, m.topic, m.payload, m.qos << 1 | m.retain) for m in msgs]
    blocks = ref_blocks(recs, 1)  # one record per block
    w.write_block(*blocks[0])
    clock.t += 9.9
    w.write_block(*blocks[1])
    assert not w.rotate_if_due() and w.segment == 0
    clock.t += 0.1
    w.write_block(*blocks[2])          # the segment is 10 s old: this block opens segment 1
    assert w.segment == 1
    clock.t += 30
    assert w.rotate_if_due() and w.segment == 2
    assert not w.rotate_if_due()        # an empty segment is never rotated away
    w.write_block(*blocks[3])
    w.close()
    assert [len(list(Capture(p).messages())) for p in existing_segments(tmp_path / "cap")] == [
        4, 2, 1]
    assert list(Capture(tmp_path / "cap").messages()) == msgs[:4]


def test_existing_capture_refused_unless_overwritten(tmp_path):
    write_capture(tmp_path / "cap", sample(9), rotate_bytes=200)
    assert len(existing_segments(tmp_path / "cap")) > 1
    with pytest.raises(FileExistsError, match="exists"):
        CaptureWriter(tmp_path / "cap")
    write_capture(tmp_path / "cap", sample(2, seed=5), overwrite=True)
    assert existing_segments(tmp_path / "cap") == [tmp_path / "cap"]
    assert list(Capture(tmp_path / "cap").messages()) == sample(2, seed=5)


def test_not_a_regular_file_is_never_replaced(tmp_path):
    (tmp_path / "cap").mkdir()
    with pytest.raises(FileExistsError, match="not a regular file"):
        CaptureWriter(tmp_path / "cap", overwrite=True)
    assert (tmp_path / "cap").is_dir()


def test_segment_under_a_wrong_name(tmp_path):
    write_capture(tmp_path / "cap", sample(9), rotate_bytes=200)
    segment_path(tmp_path / "cap", 1).rename(tmp_path / "other")
    with pytest.raises(CaptureError, match="does not end in .1"):
        list(Capture(tmp_path / "other").messages())


def test_segments_out_of_order(tmp_path):
    write_capture(tmp_path / "cap", sample(12), rotate_bytes=200)
    a, b = segment_path(tmp_path / "cap", 1), segment_path(tmp_path / "cap", 2)
    a.rename(tmp_path / "x")
    b.rename(a)
    (tmp_path / "x").rename(b)
    with pytest.raises(CaptureError, match="segment number 2, expected 1"):
        list(Capture(tmp_path / "cap").messages())


# ---- damage: truncation at every byte, bit flips everywhere, versions ----------------------------


def test_every_truncation_reads_the_whole_blocks_before_it(tmp_path):
    msgs = sample(7, seed=3)
    write_capture(tmp_path / "cap", msgs, per_block=2)
    data = (tmp_path / "cap").read_bytes()
    cut_file = tmp_path / "cut"
    # block boundaries: where each whole-block prefix ends
    header = fmt.SegmentHeader(1, 0, 0.0, b'{"test":true}').size
    ends, pos = [header], header
    for blk in _segment_chunks(tmp_path / "cap"):
        pos += fmt.BLOCK_HEADER.size + 8 * len(blk) + len(blk.frames)
        ends.append(pos)
    assert ends[-1] == len(data)
    for cut in range(len(data)):
        cut_file.write_bytes(data[:cut])
        cap = Capture(cut_file)
        got = list(cap.messages())
        whole = max((i for i, e in enumerate(ends) if e <= cut), default=None)
        n_msgs = 0 if whole is None else min(2 * whole, len(msgs))
        assert got == msgs[:n_msgs], cut
        if cut == 0:
            assert cap.kind == "empty" and cap.torn == []
        else:
            assert (cap.torn == []) == (cut in ends), cut
            if cap.torn:
                assert cap.torn[0].offset == (ends[whole] if whole is not None else 0)


def test_every_bit_flip_is_an_error(tmp_path):
    write_capture(tmp_path / "cap", sample(5, seed=4), per_block=2)
    data = (tmp_path / "cap").read_bytes()
    bad = tmp_path / "bad"
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CaptureError):
            list(Capture(bad).messages())


def test_a_newer_version_is_refused_by_name(tmp_path):
    head = bytearray(fmt.encode_segment_header(0, 1.0, b""))
    head[8:10] = struct.pack("<H", 2)
    head[28:32] = struct.pack("<I", zlib.crc32(bytes(head[:28])))
    (tmp_path / "cap").write_bytes(bytes(head))
    with pytest.raises(CaptureError, match="version 2; this reader reads version 1"):
        list(Capture(tmp_path / "cap").messages())


def test_records_that_do_not_add_up(tmp_path):
    # a block whose checksums are right but whose records column lies (a writer bug)
    w = CaptureWriter(tmp_path / "cap")
    w.write_block(2, struct.pack("<dd", 1.0, 2.0), ref_record(b"a", b"x" * 10, 0), True)
    w.close()
    with pytest.raises(CaptureError, match="ends inside a record"):
        list(Capture(tmp_path / "cap").messages())


# ---- mosquitto_sub text --------------------------------------------------------------------------


def test_mosquitto_sub_text(tmp_path):
    text = (b"1796236693.253515599 a/b c 68656c6c6f\n"
            b"1796236693.258296420 a/empty \n"
            b"1796236694.000000001 site/x 00ff0a\r\n"
            b"1796236694.5 cut 00")
    (tmp_path / "sub.txt").write_bytes(text)
    cap = Capture(tmp_path / "sub.txt")
    assert cap.kind == "mosquitto_sub"
    assert list(cap.messages()) == [Message(1796236693.253515599, b"a/b c", b"hello"),
                                    Message(1796236693.258296420, b"a/empty", b""),
                                    Message(1796236694.000000001, b"site/x", b"\x00\xff\n")]
    (torn,) = cap.torn
    assert torn.offset == len(text) - len(b"1796236694.5 cut 00")


@pytest.mark.parametrize("line,why", [
    (b"1796236693.25 onlytopic\n", "expected"),
    (b"1796236693.25.1 t 00\n", "bad time"),
    (b"17962366930000000 t 00\n", "bad time"),
    (b"1796236693.25 t 0g\n", "bad payload hex"),
    (b"1796236693.25 t 012\n", "bad payload hex"),
    (b"1796236693.25  00\n", "empty topic"),
])
def test_bad_text_lines_name_their_line(tmp_path, line, why):
    (tmp_path / "sub.txt").write_bytes(b"1796236693.1 ok 00\n" + line)
    with pytest.raises(CaptureError, match=rf"sub.txt:2: {why}"):
        list(Capture(tmp_path / "sub.txt").messages())


@pytest.mark.parametrize("head", [b"hello", b"\x00\x01", b" 1796236693.1 t 00\n", b"{}"])
def test_neither_kind_is_refused(tmp_path, head):
    (tmp_path / "x").write_bytes(head)
    with pytest.raises(CaptureError, match="neither a telemetry-cy capture"):
        Capture(tmp_path / "x")


# ---- fuzz ----------------------------------------------------------------------------------------


def _valid_binary(tmp_path: Path) -> bytes:
    write_capture(tmp_path / "seed", sample(6, seed=9), per_block=2)
    data = (tmp_path / "seed").read_bytes()
    (tmp_path / "seed").unlink()
    return data


VALID_TEXT = (b"1796236693.253515599 a/b c 68656c6c6f\n1796236693.258296420 a/empty \n"
              b"1796236694.1 site/x 00ff0a\n")


def _read_or_capture_error(path: Path) -> None:
    try:
        cap = Capture(path)
        for chunk in cap.chunks():
            chunk.messages()
            chunk.publish_stream()
    except CaptureError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", fmt.SEGMENT_MAGIC, b"1"]))
def test_fuzz_random_bytes(tmp_path, data, prefix):
    path = tmp_path / "fuzz"
    path.write_bytes(prefix + data)
    _read_or_capture_error(path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["binary", "text"]),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["flip", "set", "cut",
                                                                          "dup", "insert"]),
                                st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_captures(tmp_path, kind, edits):
    data = bytearray(_valid_binary(tmp_path) if kind == "binary" else VALID_TEXT)
    for pos, op, val in edits:
        if not data:
            break
        i = pos % len(data)
        if op == "flip":
            data[i] ^= 1 << (val % 8)
        elif op == "set":
            data[i] = val
        elif op == "cut":
            del data[i:]
        elif op == "dup":
            data[i:i] = data[i:i + val]
        else:
            data[i:i] = bytes([val])
    path = tmp_path / "fuzz"
    path.write_bytes(bytes(data))
    _read_or_capture_error(path)
