"""The closed set of drop reasons.

Every place that does not process a message increments exactly one of these counters. The order is
the order of the C enum in ``includes/tc_reasons.h`` (``TC_DROP_*``); ``tests/test_reasons.py``
checks that the two agree.
"""

DROP_REASONS: tuple[str, ...] = (
    "oversize",         # payload larger than max_payload_bytes; counted per payload
    "decode_error",     # malformed, truncated or ambiguous CBOR (duplicate keys); per payload
    "schema_mismatch",  # missing or mistyped d, s or v; wrongly typed u or n; empty or bad names
    "non_finite",       # v is NaN or +-Inf (or an integer too large for a double)
    "key_limit",        # a new (device, sensor) while max_keys keys are live
    "late",             # interval below the last closed tick: its first window was emitted
    "future",           # event time t more than max_future ahead of its arrival
    "sketch_full",      # the pane's quantile sketch already holds 2**32 - 1 values (quantiles on)
    "ingest_full",      # the network thread found the ingest ring full
    "emit_backlog",     # the NATS backlog was full
)

#: Reasons counted per payload: the payload could not be split into readings.
PAYLOAD_REASONS = frozenset({"oversize", "decode_error", "ingest_full"})
#: Reasons the engine itself counts (the rest belong to the ingest and emit stages).
ENGINE_REASONS: tuple[str, ...] = DROP_REASONS[:8]
