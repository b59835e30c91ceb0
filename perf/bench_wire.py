"""pyperf benchmarks of the NATS wire encoder: one tick batch of aggregates -> NATS protocol bytes.

Every figure is **time per aggregate**: one loop encodes a batch of ``--batch`` (default 1,000)
typical aggregates and pyperf is told the batch size (``inner_loops``). The batch: compiled-engine
``Aggregate`` objects, devices ``dev-00000`` ... with sensors ``temp``/``humidity``/``pressure``
(units ``C``/``%``/``hPa``), window bounds on whole seconds, and statistics computed from 12
readings of two decimals each, so mean, sum and stddev print with the long reprs real windows have.

==========================  ======================================================================
benchmark                   one loop is ...
==========================  ======================================================================
wire_compiled_json          ``_wire.encode_batch(batch, "agg", "json", 3072)``: the whole batch
wire_compiled_cbor          as PUB chunks (256 KiB), counters included
wire_twin_json              the same with the pure-Python twin ``_wire_py.encode_batch``
wire_twin_cbor
emitter_path_json           the emitter's per-aggregate path before the compiled encoder (core
emitter_path_cbor           NATS): a ``subject_for`` + subject-length check +
                            ``encode_json``/``_cbor``, a list of (subject, body, None) and the
                            byte count -- without the PUB framing nats-py's ``publish`` adds
                            later (~2-3 us per message more)
jetstream_compiled_json     ``_wire.encode_jetstream(batch, "agg", "json", 3072, reply)``: HPUB
jetstream_compiled_cbor     chunks with a reply subject and a ``Nats-Msg-Id`` header per message
jetstream_twin_json         the same with the twin ``_wire_py.encode_jetstream``
jetstream_twin_cbor
wire_compiled_q_json        as wire_compiled_*, each aggregate also carrying p50, p90, p99 (the
wire_compiled_q_cbor        sketch's values at alpha 0.01 for its 12 readings: 16-17 digit reprs)
subject_order_compiled      ``_wire.subject_order(batch)`` on the batch in a shuffled order (the
subject_order_twin          engine's hash order): what the JetStream path does before encoding
==========================  ======================================================================

Each setup checks (untimed) that the compiled and the twin output are identical and carry exactly
the emitter path's subjects and bodies, so a broken encoder cannot show up as a fast one. The
subject cache (``subjects._cache``) is warm, as it is at every tick after the first.

Run (from the repo root; about a minute with --fast on the 2-core VM)::

    TELEMETRY_CY_ONLY=_wire .venv/bin/python setup.py build_ext --inplace
    PYTHONPATH=$PWD .venv/bin/python perf/bench_wire.py --fast -o /tmp/bench_wire.json

Options of our own: ``--batch N`` (aggregates per batch), ``--only REGEX``. All of pyperf's
options work as usual.
"""

from __future__ import annotations

import hashlib
import random
import re
import statistics
import time

import pyperf

PREFIX = "agg"
MAX_SUBJECT_BYTES = 3072  # emitter.MAX_SUBJECT_BYTES
SENSORS = [("temp", "C", 21.0, 2.0), ("humidity", "%", 45.0, 8.0), ("pressure", "hPa", 1013.0, 6.0)]


class BenchError(RuntimeError):
    pass


def typical_batch(n: int, seed: int = 42, quantiles: bool = False) -> list:
    from telemetry_cy.engine._engine import Aggregate
    from telemetry_cy.engine.sketch_py import QuantileSketch
    rng = random.Random(seed)
    end = 1_700_000_060.0
    out = []
    for i in range(n):
        sensor, unit, centre, spread = SENSORS[i % len(SENSORS)]
        xs = [round(rng.gauss(centre, spread), 2) for _ in range(12)]
        total = sum(xs)
        qs: tuple = ((), ())
        if quantiles:
            sketch = QuantileSketch(0.01)
            sketch.add_many(xs)
            qs = (("p50", "p90", "p99"), tuple(sketch.quantiles((0.5, 0.9, 0.99))))
        out.append(Aggregate(f"dev-{i // len(SENSORS):05d}", sensor, unit, end - 60.0, end,
                             len(xs), total, total / len(xs), min(xs), max(xs),
                             statistics.pstdev(xs), xs[0], xs[-1], *qs))
    return out


def emitter_path(fmt: str):
    """NatsEmitter._take's loop for core NATS (no msg_id), as of this benchmark's writing."""
    from telemetry_cy.sink.bodies import encoder_for
    from telemetry_cy.sink.subjects import subject_for
    encode = encoder_for(fmt)

    def take(aggregates):
        msgs, nbytes = [], 0
        for a in aggregates:
            subject = subject_for(PREFIX, a.device, a.sensor)
            if len(subject) > MAX_SUBJECT_BYTES // 4 and len(subject.encode()) > MAX_SUBJECT_BYTES:
                continue
            body = encode(a)
            msgs.append((subject, body, None))
            nbytes += len(subject) + len(body)
        return msgs, nbytes
    return take


REPLY = "_INBOX.bench.1"


def check(batch: list, fmt: str) -> None:
    from telemetry_cy.sink import _wire, _wire_py
    js = _wire.encode_jetstream(batch, PREFIX, fmt, MAX_SUBJECT_BYTES, REPLY)
    if js != _wire_py.encode_jetstream(batch, PREFIX, fmt, MAX_SUBJECT_BYTES, REPLY):
        raise BenchError(f"compiled and twin JetStream output differ ({fmt})")
    shuffled = random.Random(7).sample(batch, len(batch))
    if _wire.subject_order(shuffled) != _wire_py.subject_order(shuffled):
        raise BenchError("compiled and twin subject_order differ")
    got = _wire.encode_batch(batch, PREFIX, fmt, MAX_SUBJECT_BYTES)
    if got != _wire_py.encode_batch(batch, PREFIX, fmt, MAX_SUBJECT_BYTES):
        raise BenchError(f"compiled and twin output differ ({fmt})")
    msgs, nbytes = emitter_path(fmt)(batch)
    stream = b"".join(b"PUB %s %d\r\n%s\r\n" % (s.encode(), len(b), b) for s, b, _ in msgs)
    if (b"".join(got[0]), got[1], got[2], got[3]) != (stream, len(batch), 0, nbytes):
        raise BenchError(f"encode_batch does not carry the emitter path's messages ({fmt})")


class Lazy:
    """A time function whose state is built on first use (in the worker, untimed)."""

    def __init__(self, setup):
        self._setup = setup
        self._state = None

    def __call__(self, loops: int) -> float:
        if self._state is None:
            self._state = self._setup()
        return self._state(loops)


def bench(kind: str, fmt: str, n: int):
    def setup():
        from telemetry_cy.sink import _wire, _wire_py
        batch = typical_batch(n, quantiles=kind == "compiled_q")
        check(batch, fmt)
        if kind == "emitter_path":
            take = emitter_path(fmt)

            def one():
                take(batch)
        elif kind.startswith("jetstream_"):
            encode_js = (_wire if kind == "jetstream_compiled" else _wire_py).encode_jetstream

            def one():
                encode_js(batch, PREFIX, fmt, MAX_SUBJECT_BYTES, REPLY)
        elif kind.startswith("subject_order_"):
            order = (_wire if kind == "subject_order_compiled" else _wire_py).subject_order
            shuffled = random.Random(7).sample(batch, len(batch))

            def one():
                order(shuffled)
        else:
            encode_batch = (_wire if kind in ("compiled", "compiled_q") else
                            _wire_py).encode_batch

            def one():
                encode_batch(batch, PREFIX, fmt, MAX_SUBJECT_BYTES)
        one()  # warm: subject cache, allocator

        def run(loops):
            clock = time.perf_counter
            t0 = clock()
            for _ in range(loops):
                one()
            return clock() - t0
        return run
    return setup


def _module_state() -> dict:
    """Which compiled encoder this process loaded (others may rebuild in place during a run)."""
    import telemetry_cy.sink._wire as wire
    with open(wire.__file__, "rb") as f:
        return {"wire_so": hashlib.sha256(f.read()).hexdigest()[:16]}


def _add_cmdline_args(cmd, args):
    cmd.extend(("--batch", str(args.batch)))
    if args.only:
        cmd.extend(("--only", args.only))


def main() -> None:
    runner = pyperf.Runner(add_cmdline_args=_add_cmdline_args)
    runner.argparser.add_argument("--only", default="",
                                  help="run only the benchmarks whose name matches this regex")
    runner.argparser.add_argument("--batch", type=int, default=1000,
                                  help="aggregates per batch (default 1000)")
    args = runner.parse_args()
    runner.metadata.update(_module_state())
    runner.metadata["batch_aggregates"] = str(args.batch)
    only = re.compile(args.only) if args.only else None
    for kind, what in (("compiled", "_wire.encode_batch"), ("twin", "_wire_py.encode_batch"),
                       ("emitter_path", "subject_for + encode per aggregate, as emitter._take"),
                       ("compiled_q", "_wire.encode_batch, with p50/p90/p99"),
                       ("jetstream_compiled", "_wire.encode_jetstream"),
                       ("jetstream_twin", "_wire_py.encode_jetstream"),
                       ("subject_order_compiled", "_wire.subject_order, shuffled batch"),
                       ("subject_order_twin", "_wire_py.subject_order, shuffled batch")):
        for fmt in ("json", "cbor"):
            if kind.startswith("subject_order_"):
                if fmt == "cbor":
                    continue
                name = kind
            elif kind in ("compiled", "twin", "compiled_q"):
                name = f"wire_{kind}_{fmt}"
            else:
                name = f"{kind}_{fmt}"
            if only is not None and not only.search(name):
                continue
            runner.bench_time_func(name, Lazy(bench(kind, fmt, args.batch)),
                                   inner_loops=args.batch,
                                   metadata={"description": f"{what}, {fmt}",
                                             "unit_of_work": "aggregate"})


if __name__ == "__main__":
    main()
