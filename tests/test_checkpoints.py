"""The state file and its writer thread (service/checkpoints.py), and where their counters show:
atomic replacement, the newest snapshot wins a full hand-off, a failed write is counted and
leaves the previous file, the pipeline snapshot, the stats line and /metrics."""

from __future__ import annotations

import os
import threading
import time

from telemetry_cy.engine import snapshot_format
from telemetry_cy.service.checkpoints import STATE_FILE, CheckpointWriter, StateFile, restore
from telemetry_cy.service.metrics import MetricsServer
from telemetry_cy.service.pipeline_snapshot import PipelineSnapshot
from test_metrics import _EngineThread, _fake_pipeline, _Part, scrape


def test_state_file_is_replaced_whole(tmp_path):
    state = StateFile(tmp_path / "d")
    state.ensure_dir()
    assert state.read() is None
    state.write(b"first")
    state.write(b"second, longer")
    data, age = state.read()
    assert data == b"second, longer" and 0 <= age < 60
    # only the file itself: the temporary is renamed over it, never left behind
    assert sorted(p.name for p in state.dir.iterdir()) == [STATE_FILE]
    assert (state.dir.stat().st_mode & 0o777) == 0o700
    assert (state.path.stat().st_mode & 0o777) == 0o600


class _SlowFile(StateFile):
    """Writes wait for `go`, so the engine side can hand over while the writer is busy."""

    def __init__(self, directory):
        super().__init__(directory)
        self.go = threading.Event()
        self.started = threading.Event()

    def write(self, data: bytes) -> None:
        self.started.set()
        assert self.go.wait(10)
        super().write(data)


def test_the_newest_snapshot_replaces_one_not_yet_written(tmp_path):
    state = _SlowFile(tmp_path)
    writer = CheckpointWriter(state, every=3600.0)
    writer.start()
    t0 = time.monotonic()
    writer.submit(b"A", 0.001)
    assert state.started.wait(10)          # the writer holds A
    writer.submit(b"B", 0.001)             # waits in the slot ...
    writer.submit(b"C", 0.002)             # ... and is replaced: never blocks the caller
    assert time.monotonic() - t0 < 5
    assert not writer.due(time.monotonic())   # the next one is an interval away
    state.go.set()
    assert writer.stop(10)
    assert state.path.read_bytes() == b"C"
    s = writer.stats()
    assert s["checkpoints"] == 2 and s["skipped"] == 1 and s["failures"] == 0
    assert s["last_bytes"] == 1 and s["last_snapshot_seconds"] == 0.002


def test_a_failed_write_is_counted_and_the_previous_file_stays(tmp_path):
    state = StateFile(tmp_path)
    state.write(b"good")
    writer = CheckpointWriter(state, every=1.0)
    writer.start()
    os.chmod(tmp_path, 0o500)              # no new file in the directory: the temp fails
    try:
        if os.access(tmp_path, os.W_OK):   # root ignores the mode: fail another way
            (tmp_path / f".{STATE_FILE}.tmp").mkdir()
        writer.submit(b"newer", 0.0)
        assert writer.stop(10)
    finally:
        os.chmod(tmp_path, 0o700)
    s = writer.stats()
    assert s["failures"] == 1 and s["checkpoints"] == 0 and s["last_error"]
    assert state.path.read_bytes() == b"good"


def test_restore_maps_the_file_and_reports_it(tmp_path, pure_backend):
    engine = pure_backend.Engine(window=10.0, emit_every=5.0)
    engine.push_reading("a", "t", 1.0, 100.0)
    state = StateFile(tmp_path)
    state.write(engine.snapshot())
    got = restore(state, pure_backend.Engine, dict(window=10.0, emit_every=5.0))
    assert got.keys_in_file == 1 and got.engine.stats()["readings"] == 1
    assert got.path == state.path and got.age_s < 60
    assert restore(StateFile(tmp_path / "none"), pure_backend.Engine, {}) is None


CKPT = {"checkpoints": 7, "failures": 1, "skipped": 2, "bad_state_files": 1,
        "last_unix": None, "last_bytes": 12345, "last_snapshot_seconds": 0.01,
        "last_write_seconds": 0.02, "last_error": "OSError: disk full"}


def test_checkpoint_counters_in_the_stats_line_and_final_counters():
    snap = PipelineSnapshot.from_stats({}, {}, {}, ckpt={**CKPT, "last_unix": time.time() - 3})
    line = snap.stats_line()["checkpoint"]
    assert line["bytes"] == 12345 and line["failures"] == 1 and 2.5 <= line["age_s"] < 30
    final = snap.counters(1.0)["checkpoint"]
    assert final["checkpoints"] == 7 and final["skipped"] == 2 and final["bad_state_files"] == 1
    assert "checkpoint" not in PipelineSnapshot.from_stats({}, {}, {}).stats_line()
    assert PipelineSnapshot.from_stats({}, {}, {}, ckpt=CKPT).checkpoint.age_s() is None


def test_checkpoint_metrics():
    pipeline = _fake_pipeline(_Part(connected=True), _EngineThread(heartbeat=time.monotonic()),
                              _Part(connected=True))
    pipeline.checkpoints = _Part(**{**CKPT, "last_unix": time.time() - 4})
    server = MetricsServer(pipeline, "127.0.0.1", 0, 30.0)
    server.start()
    try:
        m = scrape(int(server.url.rsplit(":", 1)[1]))
    finally:
        server.stop()
    assert m["telemetry_cy_checkpoints_total"] == 7
    assert m["telemetry_cy_checkpoint_failures_total"] == 1
    assert m["telemetry_cy_state_files_refused_total"] == 1
    assert m["telemetry_cy_checkpoint_bytes"] == 12345
    assert 3.5 <= m["telemetry_cy_checkpoint_age_seconds"] < 60
    assert abs(m["telemetry_cy_checkpoint_duration_seconds"] - 0.03) < 1e-9


def test_a_snapshot_written_by_the_writer_opens(tmp_path, compiled_backend):
    engine = compiled_backend.Engine()
    engine.push_reading("a", "t", 1.0, 100.0)
    writer = CheckpointWriter(StateFile(tmp_path), every=1.0)
    writer.start()
    writer.submit(engine.snapshot(), 0.0)
    assert writer.stop(10)
    opened = snapshot_format.open_snapshot((tmp_path / STATE_FILE).read_bytes())
    assert opened.n_keys == 1
