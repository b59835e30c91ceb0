/* Drop reason codes shared by every compiled stage. The order matches
 * telemetry_cy/reasons.py:DROP_REASONS; tests/test_reasons.py checks it. */
#ifndef TC_REASONS_H
#define TC_REASONS_H

enum tc_reason {
    TC_DROP_OVERSIZE = 0,
    TC_DROP_DECODE_ERROR = 1,
    TC_DROP_SCHEMA_MISMATCH = 2,
    TC_DROP_NON_FINITE = 3,
    TC_DROP_KEY_LIMIT = 4,
    TC_DROP_LATE = 5,
    TC_DROP_FUTURE = 6,
    TC_DROP_SKETCH_FULL = 7,
    TC_DROP_INGEST_FULL = 8,
    TC_DROP_EMIT_BACKLOG = 9,
    TC_DROP_N_REASONS = 10
};

#define TC_OK (-1) /* a reading that is not dropped */

#endif
