/* One key's aggregate as a row of a columnar tick's buffers (Engine.tick_columns).
 *
 * The engine's column builder (_ColumnBuilder in _engine.pyx) owns the buffers (tc_colbuf.h) and
 * sets up a plan: where each column of a row goes, one pointer per value. The plan holds while
 * the builder does not move a value buffer, i.e. from one reserve to the next: a tick reserves
 * every row it can emit before its scan, so a whole scan fills through one plan. Only the string
 * data grows during a scan, and the plan reaches it through its tc_colbuf.
 *
 * Why a pointer per value rather than a loop over the columns: the scan runs once per key, 1M
 * times a tick at 1M keys, and a generic loop (a row of values, then column j takes value
 * source[j]) costs ~8 ns a row more than direct stores, a third of the whole fill
 * (docs/performance.md, "Columnar tick").
 */
#ifndef TC_COLFILL_H
#define TC_COLFILL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "tc_colbuf.h"
#include "tc_window.h"

#define TC_COLFILL_MAX_QS 16

typedef struct {
    /* the statistics' columns (float64, count int64), never null */
    double *window_start, *window_end, *sum, *mean, *min, *max, *stddev, *first, *last;
    int64_t *count;
    /* quantile j (the engine's order) */
    uint32_t n_qs;
    double *qs[TC_COLFILL_MAX_QS];
    /* the name columns: UTF-8 bytes and int64 offsets; unit also a validity bitmap and its
     * nulls so far */
    tc_colbuf *device, *sensor, *unit;
    int64_t *device_off, *sensor_off, *unit_off;
    tc_colbuf *unit_valid;
    size_t unit_nulls;
} tc_colplan;

/* Row i: key k's aggregate `a` over [window_start, window_end), its quantiles qs[0 .. n_qs).
 * The same values the engine puts in an Aggregate. `units`: the pane-sized units before the
 * record's names (tc_window.h). 0, or -1 when out of memory (the row is then incomplete, and the
 * caller drops the tick's columns). */
static inline int tc_colplan_put(tc_colplan *pl, size_t i, const tc_key *k, uint32_t units,
                                 const tc_agg *a, double window_start, double window_end,
                                 const double *qs) {
    pl->window_start[i] = window_start;
    pl->window_end[i] = window_end;
    pl->count[i] = (int64_t)a->count;
    pl->sum[i] = a->sum;
    pl->mean[i] = a->mean;
    pl->min[i] = a->min;
    pl->max[i] = a->max;
    pl->stddev[i] = sqrt(a->var);
    pl->first[i] = a->first;
    pl->last[i] = a->last;
    for (uint32_t j = 0; j < pl->n_qs; j++) pl->qs[j][i] = qs[j];
    if (tc_colbuf_put_string(pl->device, pl->device_off, i, tc_key_device(k, units),
                             k->device_len) ||
        tc_colbuf_put_string(pl->sensor, pl->sensor_off, i, tc_key_sensor(k, units),
                             k->sensor_len))
        return -1;
    int has_unit = k->unit_len != TC_NO_UNIT;
    if (tc_colbuf_put_string(pl->unit, pl->unit_off, i, tc_key_unit(k, units),
                             has_unit ? k->unit_len : 0))
        return -1;
    tc_colbuf_set_bit(pl->unit_valid, i, has_unit);
    pl->unit_nulls += !has_unit;
    return 0;
}

#endif
