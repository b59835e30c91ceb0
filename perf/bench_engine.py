"""pyperf benchmarks of the engine core on pre-encoded ~60-byte CBOR payloads (perf/payloads.py).

Every figure is **time per reading** (one payload = one reading): each benchmark tells pyperf how
many readings one of its loops holds (``inner_loops``). What each benchmark times, exactly:

==============================  ================================================================
benchmark                       one loop is ... and the timer covers
==============================  ================================================================
decode_api_60B                  1,000 calls of ``telemetry_cy.engine._decode.decode(p)`` (C reader +
                                Python call + a ``Decoded`` with one ``Reading`` per payload)
decode_native_60B               1,000 calls of ``_decode.decode_native(p)`` (C reader + Python
                                call; returns only the verdict string)
push_many_overhead_1k_keys      ``Engine.push_many`` of 1,000 payloads with max_payload_bytes=1:
                                every payload is dropped as ``oversize`` before decoding, so
                                this is the per-payload cost of the batch call itself
push_many_decode_only_1k_keys   ``push_many`` of 1,000 payloads into an Engine(max_keys=1) that
push_many_decode_only_1M_keys   already holds one unrelated key: every payload is decoded, its
                                key hashed and looked up (a miss in a one-key table), and the
                                reading dropped as ``key_limit``: batch + decode + hash, no
                                window update
push_many_1k_keys               ``push_many`` of 1,000 payloads, every key already live (warm),
push_many_1M_keys               all in one emit interval (no tick): batch + decode + lookup in
                                the full table + window (pane) update. The engine's hot path.
push_many_cold_1M_keys          ``push_many`` of 1,000,000 payloads, one per key, into a fresh
                                Engine: every reading inserts its key (malloc, table growth,
                                first-touch page faults: the freed heap is trimmed between
                                loops, so every fill gets fresh pages from the kernel)
push_many_tick_1k_keys          one emit interval of the event-time stream below: ``push_many``
push_many_tick_1M_keys          of every batch + ``tick(ts)`` after every batch; the interval's
                                first batch crosses a 5 s boundary, so the loop includes one
                                tick that builds one ``Aggregate`` per key (and frees the list)
push_reading_1k_keys            1,000 calls of ``Engine.push_reading(d, s, v, ts, u)`` with
                                pre-decoded Python values (the Python-level API)
pure_push_many_1k_keys          as push_many_1k_keys / push_many_tick_1k_keys, with the
pure_push_many_tick_1k_keys     pure-Python twin ``telemetry_cy.engine._engine_py.Engine``
q_push_many_1k_keys             as push_many_1k_keys / push_many_1M_keys /
q_push_many_1M_keys             push_many_tick_1k_keys / push_many_tick_1M_keys with
q_push_many_tick_1k_keys        ``Engine(quantiles=[0.5, 0.9, 0.99])`` (alpha 0.01): every
q_push_many_tick_1M_keys        reading also goes into its pane's sketch, every aggregate merges
                                its key's 12 pane sketches and reads p50, p90, p99
py_baseline_tick_1k_keys        the same stream as push_many_tick_1k_keys through a plain
                                Python pipeline: ``cbor2.loads`` + dict of deques + running sum,
                                mean over 60 s per key at every 5 s tick
==============================  ================================================================

Derived figures (docs/performance.md): decode = decode_only - overhead; window update (lookup in a
populated table + pane update) = push_many - decode_only; tick cost per aggregate = tick - push_many
(the tick streams emit exactly one aggregate per reading).

Common ground: default engine settings (60 s window, 5 s emit interval, 12 panes). Batches of
``--batch`` payloads (default 1,000) share one ``ts``, as one socket read does. At 1,000 keys the
20,000 payloads (20 rounds, ~2 MB) are materialized once and reused round robin; at 1,000,000 keys
each batch's bytes objects are sliced fresh from the contiguous 60 MB blob just before the timed
call (untimed). Either way the payload bytes are as hot in cache as they would be in the ingest
ring, and only the table (not the input) is bigger than the cache at 1M keys. The timer wraps only
the engine calls. State is set up lazily in each worker (untimed) and
checked: every loop asserts the counters moved as expected (all readings accepted, or all dropped
for the one expected reason), so a broken decoder cannot show up as a fast benchmark.

Event-time stream of the tick benchmarks: every key sends one reading per 5 s emit interval
(round r = one seeded permutation of all keys, ts from 5r to 5r+5 s, advancing batch by batch),
after 12 untimed intervals that fill every key's window. So every interval emits one aggregate per
key: one aggregate per reading, the heaviest tick load a key rate of >= 0.2 Hz produces.

Run (from the repo root; ~2.5 minutes with --fast on a 2-core VM)::

    PYTHONPATH=$PWD .venv/bin/python perf/bench_engine.py --fast \
        -o perf/results/reference/engine.json
    .venv/bin/python -m pyperf compare_to perf/results/reference/engine.json new.json --table

Each worker process records the sha256 of the ``_engine``/``_decode`` modules it loaded
(``engine_so``, ``decode_so``); perf/report.py refuses a run that mixed builds. When others may
rebuild in place during the run, benchmark a copy (perf/README.md: "a stable snapshot").

Options of our own: ``--only REGEX`` (run the benchmarks whose name matches), ``--batch N``,
``--big-processes N`` (worker processes for the 1M-key benchmarks, default 3: each one loads 60 MB
of payloads and builds a 700 MB table first), ``--clock cpu`` (time by the thread's CPU time
instead of wall time: steadier on a machine others are using, see ``CLOCKS``). All of pyperf's
options work as usual.
"""

from __future__ import annotations

import collections
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyperf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from payloads import PayloadSet  # noqa: E402

EMIT_EVERY = 5.0
WINDOW = 60.0
PANES = int(WINDOW / EMIT_EVERY)
T0 = 1_800_000_000.0          # event-time origin (2027-01-15), a multiple of EMIT_EVERY
K1, M1 = 1_000, 1_000_000


def _engine_cls(pure: bool):
    if pure:
        from telemetry_cy.engine._engine_py import Engine
    else:
        from telemetry_cy.engine._engine import Engine
    return Engine


_payload_sets: dict[tuple[int, int], PayloadSet] = {}


def payload_set(n_keys: int, rounds: int) -> PayloadSet:
    k = (n_keys, rounds)
    if k not in _payload_sets:
        _payload_sets[k] = PayloadSet.cached(n_keys, rounds)
    return _payload_sets[k]


class BenchError(RuntimeError):
    pass


#: What the time functions read (``--clock``): wall time (pyperf's usual) or this thread's CPU
#: time, which does not run while the OS has the thread waiting for a CPU that someone else's
#: work holds (a shared 2-vCPU machine), at the price of a system call per timed call (~0.5 %).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK = time.perf_counter


#: Payload sets up to this many payloads are materialized once, as a list of batches reused round
#: robin (a few MB: they stay in cache, like the ring); larger ones batch by batch, fresh.
PREBUILT_MAX = 100_000


class Feed:
    """Batches of ``batch`` fresh-or-hot payloads from a PayloadSet, starting at payload ``pos``.
    ``at(pos)`` gives the batch starting at payload pos (a multiple of batch)."""

    def __init__(self, ps: PayloadSet, batch: int):
        self.ps, self.batch = ps, batch
        self.prebuilt = None
        if len(ps) <= PREBUILT_MAX:
            self.prebuilt = [ps.batch(i, batch) for i in range(0, len(ps), batch)]

    def at(self, pos: int) -> list[bytes]:
        if self.prebuilt is not None:
            return self.prebuilt[(pos // self.batch) % len(self.prebuilt)]
        return self.ps.batch(pos, self.batch)


def expect(engine, readings: int | None = None, **drops: int) -> None:
    """Raises unless the engine's counters are exactly these (unnamed drop reasons must be 0)."""
    st = engine.stats()
    want = {r: 0 for r in st["drops"]}
    want.update(drops)
    if (readings is not None and st["readings"] != readings) or st["drops"] != want:
        raise BenchError(f"unexpected engine counters: readings={st['readings']} "
                         f"(want {readings}), drops={st['drops']} (want {want})")


# ---- benchmarks ------------------------------------------------------------------------------

class Lazy:
    """A time function whose state is built on first use (in the worker, untimed)."""

    def __init__(self, setup):
        self._setup = setup
        self._state = None

    def __call__(self, loops: int) -> float:
        if self._state is None:
            self._state = self._setup()
        return self._state(loops)


def bench_decode(batch: int, native: bool):
    def setup():
        from telemetry_cy.engine import _decode
        fn = _decode.decode_native if native else _decode.decode
        ps = payload_set(K1, 20)
        feed = Feed(ps, batch)
        pos = 0
        for p in feed.at(0):
            r = fn(p)
            if (r if native else r.status) != "ok" or (not native and len(r.readings) != 1):
                raise BenchError(f"decode of a benchmark payload gave {r!r}")

        def run(loops):
            nonlocal pos
            total = 0.0
            clock = CLOCK
            for _ in range(loops):
                items = feed.at(pos)
                pos += batch
                t0 = clock()
                for p in items:
                    fn(p)
                total += clock() - t0
            return total
        return run
    return setup


#: Engine settings of the q_* benchmarks: quantiles on.
QUANTILES = dict(quantiles=[0.5, 0.9, 0.99], quantile_accuracy=0.01)


def bench_push_many(n_keys: int, batch: int, mode: str, pure: bool = False, q: bool = False):
    """mode: 'warm' (keys live), 'decode_only' (max_keys=1, every reading a key_limit drop),
    'overhead' (max_payload_bytes=1, every payload an oversize drop). q: quantiles on."""
    def setup():
        Engine = _engine_cls(pure)
        if q:
            Engine = _with_quantiles(Engine)
        ps = payload_set(n_keys, 20 if n_keys <= 100_000 else 1)
        feed = Feed(ps, batch)
        ts = T0 + 1.0
        if mode == "warm":
            e = Engine()
            for start in range(0, n_keys, batch):
                e.push_many(ps.batch(start, batch), ts)
            expect(e, readings=n_keys)
            st = e.stats()
            if st["live_keys"] != n_keys:
                raise BenchError(f"{st['live_keys']} live keys, want {n_keys}")
        elif mode == "decode_only":
            e = Engine(max_keys=1)
            e.push_reading("bench-seed-device", "bench-seed-sensor", 0.0, ts)
        elif mode == "overhead":
            e = Engine(max_payload_bytes=1)
        else:
            raise ValueError(mode)
        pos = n_keys if mode == "warm" else 0
        push = e.push_many

        def run(loops):
            nonlocal pos
            before = e.stats()
            total = 0.0
            clock = CLOCK
            for _ in range(loops):
                items = feed.at(pos)
                pos += batch
                t0 = clock()
                push(items, ts)
                total += clock() - t0
            after = e.stats()
            n = loops * batch
            got = {
                "readings": after["readings"] - before["readings"],
                "key_limit": after["drops"]["key_limit"] - before["drops"]["key_limit"],
                "oversize": after["drops"]["oversize"] - before["drops"]["oversize"],
            }
            want = {"readings": n if mode == "warm" else 0,
                    "key_limit": n if mode == "decode_only" else 0,
                    "oversize": n if mode == "overhead" else 0}
            if got != want or after["live_keys"] != before["live_keys"]:
                raise BenchError(f"{mode}: counters moved by {got}, want {want}")
            return total
        return run
    return setup


def bench_cold(n_keys: int, batch: int):
    def setup():
        from telemetry_cy.engine._engine import Engine
        ps = payload_set(n_keys, 1)
        ts = T0 + 1.0

        def run(loops):
            total = 0.0
            clock = CLOCK
            for _ in range(loops):
                e = Engine()
                push = e.push_many
                for start in range(0, n_keys, batch):
                    items = ps.batch(start, batch)
                    t0 = clock()
                    push(items, ts)
                    total += clock() - t0
                expect(e, readings=n_keys)
                del e, push          # freeing a 1M-key table is not timed
                # hand the freed heap back to the OS, so that every fill starts from fresh pages
                # like a process filling up for the first time; without this the allocator's
                # state decides: the 1st fill in a worker page-faults (~450 ns/reading here), a
                # later one may reuse the freed heap (~300 ns/reading)
                _malloc_trim()
            return total
        return run
    return setup


def _malloc_trim() -> None:
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc
        pass


def _round_batches(n_keys: int, batch: int):
    """(start offset in the round, ts offset in the interval) of each batch of one round."""
    return [(s, EMIT_EVERY * s / n_keys) for s in range(0, n_keys, batch)]


def _with_quantiles(engine_cls):
    def make(**kwargs):
        return engine_cls(**kwargs, **QUANTILES)
    return make


def bench_tick(n_keys: int, batch: int, pure: bool = False, q: bool = False):
    """One loop = one emit interval: every key's reading for that interval, batch by batch, with
    tick(ts) after every batch. The first batch crosses the boundary (one aggregate per key)."""
    def setup():
        Engine = _engine_cls(pure)
        if q:
            Engine = _with_quantiles(Engine)
        ps = payload_set(n_keys, 20 if n_keys <= 100_000 else 1)
        feed = Feed(ps, batch)
        e = Engine(window=WINDOW, emit_every=EMIT_EVERY)
        plan = _round_batches(n_keys, batch)
        state = {"r": 0, "readings": 0, "aggregates": 0}

        def one_round() -> float:
            r = state["r"]
            base = T0 + EMIT_EVERY * r
            total = 0.0
            clock = CLOCK
            push, tick = e.push_many, e.tick
            emitted = 0
            for start, dt in plan:
                items = feed.at(r * n_keys + start)
                ts = base + dt
                t0 = clock()
                push(items, ts)
                out = tick(ts)
                emitted += len(out)
                del out
                total += clock() - t0
            state["r"] = r + 1
            state["readings"] += n_keys
            if r >= 1 and emitted != n_keys:
                raise BenchError(f"interval {r} emitted {emitted} aggregates, want {n_keys}")
            return total

        for _ in range(PANES + 1):         # fill every key's 12 panes (untimed)
            one_round()
        expect(e, readings=state["readings"])

        def run(loops):
            total = 0.0
            for _ in range(loops):
                total += one_round()
            expect(e, readings=state["readings"])
            if e.stats()["live_keys"] != n_keys:
                raise BenchError("keys were evicted")
            return total
        return run
    return setup


def bench_push_reading(n_keys: int, batch: int):
    def setup():
        import cbor2

        from telemetry_cy.engine._engine import Engine
        ps = payload_set(n_keys, 20)
        readings = []
        for i in range(len(ps)):
            m = cbor2.loads(ps[i])
            readings.append((m["d"], m["s"], m["v"], m["u"]))
        e = Engine()
        ts = T0 + 1.0
        for d, s, v, u in readings[:n_keys]:
            e.push_reading(d, s, v, ts, u)
        pos = n_keys

        def run(loops):
            nonlocal pos
            total = 0.0
            clock = CLOCK
            pr = e.push_reading
            before = e.stats()["readings"]
            for _ in range(loops):
                if pos + batch > len(readings):
                    pos = 0
                items = readings[pos:pos + batch]
                pos += batch
                t0 = clock()
                for d, s, v, u in items:
                    pr(d, s, v, ts, u)
                total += clock() - t0
            if e.stats()["readings"] - before != loops * batch:
                raise BenchError("push_reading dropped readings")
            return total
        return run
    return setup


def bench_py_baseline(n_keys: int, batch: int):
    """Plain Python: cbor2.loads, a dict (device, sensor) -> [deque of (ts, v), running sum],
    readings older than 60 s popped on arrival and at each tick; at each aligned 5 s tick the
    mean over the last 60 s of every key with data is emitted (a list of tuples)."""
    def setup():
        import cbor2
        loads = cbor2.loads
        deque = collections.deque
        feed = Feed(payload_set(n_keys, 20), batch)
        plan = _round_batches(n_keys, batch)
        state = {"r": 0, "closed": None, "emitted": 0}
        table: dict = {}

        def close_ticks(ts):
            k = math.floor(ts / EMIT_EVERY)
            closed = state["closed"]
            if closed is None:
                state["closed"] = k
                return []
            out = []
            while closed < k:
                closed += 1
                t_end = closed * EMIT_EVERY
                t_start = t_end - WINDOW
                for key, st in table.items():
                    dq = st[0]
                    while dq and dq[0][0] < t_start:
                        st[1] -= dq.popleft()[1]
                    if dq:
                        out.append((key[0], key[1], t_end, len(dq), st[1] / len(dq)))
            state["closed"] = closed
            return out

        def push_many(payloads, ts):
            out = close_ticks(ts)
            horizon = ts - WINDOW
            for p in payloads:
                m = loads(p)
                key = (m["d"], m["s"])
                st = table.get(key)
                if st is None:
                    st = table[key] = [deque(), 0.0]
                dq = st[0]
                v = m["v"]
                dq.append((ts, v))
                st[1] += v
                while dq[0][0] < horizon:
                    st[1] -= dq.popleft()[1]
            return out

        def one_round() -> float:
            r = state["r"]
            base = T0 + EMIT_EVERY * r
            total = 0.0
            clock = CLOCK
            emitted = 0
            for start, dt in plan:
                items = feed.at(r * n_keys + start)
                ts = base + dt
                t0 = clock()
                out = push_many(items, ts)
                emitted += len(out)
                del out
                total += clock() - t0
            state["r"] = r + 1
            if r >= 1 and emitted != n_keys:
                raise BenchError(f"baseline emitted {emitted}, want {n_keys}")
            return total

        for _ in range(PANES + 1):
            one_round()

        def run(loops):
            total = 0.0
            for _ in range(loops):
                total += one_round()
            return total
        return run
    return setup


# ---- runner ------------------------------------------------------------------------------------

def _git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = git("diff", "--name-only", "HEAD", "--", "telemetry_cy").split()
    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        # files of the package that differ from the commit when the run started (the compiled
        # modules may still be older or newer: engine_so/decode_so say which build ran)
        "engine_tree": "clean" if not changed else "modified: " + " ".join(changed),
    }


def _module_state() -> dict:
    """Which compiled engine this process loaded. Others rebuild the .so files in place while a
    suite runs: perf/report.py refuses to tabulate a run whose workers loaded different builds."""
    import hashlib

    import telemetry_cy.engine._decode as dec
    import telemetry_cy.engine._engine as eng

    def digest(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    return {"engine_so": digest(eng.__file__), "decode_so": digest(dec.__file__),
            "engine_dir": str(Path(eng.__file__).parent)}


def lscpu() -> dict[str, str]:
    """lscpu's "Key: value" lines ({} where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in
            (line.partition(":") for line in out.splitlines()) if v.strip()}


def cpu_model() -> str:
    """lscpu's "Model name" (falls back to /proc/cpuinfo, then to "unknown")."""
    name = lscpu().get("Model name")
    if name:
        return name
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _add_cmdline_args(cmd, args):
    cmd.extend(("--batch", str(args.batch), "--clock", args.clock))
    if args.only:
        cmd.extend(("--only", args.only))


def main() -> None:
    runner = pyperf.Runner(add_cmdline_args=_add_cmdline_args)
    runner.argparser.add_argument("--only", default="",
                                  help="run only the benchmarks whose name matches this regex")
    runner.argparser.add_argument("--batch", type=int, default=1000,
                                  help="payloads per push_many call (default 1000)")
    runner.argparser.add_argument("--big-processes", type=int, default=3,
                                  help="worker processes for the 1M-key benchmarks (default 3)")
    runner.argparser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                                  help="time the engine calls by wall time (default) or by this "
                                       "thread's CPU time")
    args = runner.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    B = args.batch
    if K1 % B or M1 % B:
        raise SystemExit("--batch must divide 1000")
    runner.metadata.update(_git_state())
    runner.metadata.update(_module_state())
    runner.metadata["payload_bytes_mean"] = f"{payload_set(K1, 20).mean_size():.2f}"
    runner.metadata["batch_payloads"] = str(B)
    runner.metadata["bench_clock"] = args.clock

    only = re.compile(args.only) if args.only else None
    if not args.worker and (only is None or only.search("1M_keys")):
        payload_set(M1, 1)          # build perf/.cache once, before the workers need it

    small_procs = args.processes

    def add(name, setup, inner, big=False, desc=""):
        if only is not None and not only.search(name):
            return
        args.processes = min(small_procs, args.big_processes) if big else small_procs
        runner.bench_time_func(name, Lazy(setup), inner_loops=inner,
                               metadata={"description": desc, "unit_of_work": "reading"})

    add("decode_api_60B", bench_decode(B, native=False), B,
        desc="_decode.decode(p) per payload: C reader + Python call + Decoded/Reading objects")
    add("decode_native_60B", bench_decode(B, native=True), B,
        desc="_decode.decode_native(p) per payload: C reader + Python call, verdict only")
    add("push_many_overhead_1k_keys", bench_push_many(K1, B, "overhead"), B,
        desc="push_many, every payload an oversize drop: batch call overhead only")
    add("push_many_decode_only_1k_keys", bench_push_many(K1, B, "decode_only"), B,
        desc="push_many, max_keys=1: decode + hash + miss, every reading a key_limit drop")
    add("push_many_decode_only_1M_keys", bench_push_many(M1, B, "decode_only"), B, big=True,
        desc="push_many, max_keys=1: decode + hash + miss, every reading a key_limit drop")
    add("push_many_1k_keys", bench_push_many(K1, B, "warm"), B,
        desc="push_many, warm keys, one interval: decode + lookup + pane update")
    add("push_many_1M_keys", bench_push_many(M1, B, "warm"), B, big=True,
        desc="push_many, warm keys, one interval: decode + lookup + pane update")
    add("push_many_cold_1M_keys", bench_cold(M1, B), M1, big=True,
        desc="push_many of 1M new keys into a fresh Engine: decode + insert")
    add("push_many_tick_1k_keys", bench_tick(K1, B), K1,
        desc="one 5 s interval, one reading per key, tick() after every batch, 1 aggregate/reading")
    add("push_many_tick_1M_keys", bench_tick(M1, B), M1, big=True,
        desc="one 5 s interval, one reading per key, tick() after every batch, 1 aggregate/reading")
    add("q_push_many_1k_keys", bench_push_many(K1, B, "warm", q=True), B,
        desc="quantiles on: push_many, warm keys, one interval: + sketch add")
    add("q_push_many_1M_keys", bench_push_many(M1, B, "warm", q=True), B, big=True,
        desc="quantiles on: push_many, warm keys, one interval: + sketch add")
    add("q_push_many_tick_1k_keys", bench_tick(K1, B, q=True), K1,
        desc="quantiles on: one 5 s interval, tick() after every batch, p50/p90/p99 per aggregate")
    add("q_push_many_tick_1M_keys", bench_tick(M1, B, q=True), M1, big=True,
        desc="quantiles on: one 5 s interval, tick() after every batch, p50/p90/p99 per aggregate")
    add("push_reading_1k_keys", bench_push_reading(K1, B), B,
        desc="Engine.push_reading with Python values, warm keys")
    add("pure_push_many_1k_keys", bench_push_many(K1, B, "warm", pure=True), B,
        desc="pure-Python twin: push_many, warm keys, one interval")
    add("pure_push_many_tick_1k_keys", bench_tick(K1, B, pure=True), K1,
        desc="pure-Python twin: one interval, tick() after every batch")
    add("py_baseline_tick_1k_keys", bench_py_baseline(K1, B), K1,
        desc="plain Python: cbor2.loads + dict of deques, 60 s mean at each 5 s tick")
    args.processes = small_procs


if __name__ == "__main__":
    main()
