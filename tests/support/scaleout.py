"""What the scale-out tests share: a stream of readings within the allowed lateness, and the
comparison of merged windows with one engine's (docs/scale-out.md: count, min, max, first, last,
quantiles equal; sum and stddev to 1e-9 relative)."""

from __future__ import annotations

import math
import random

WINDOW, EMIT, LATENESS = 3.0, 1.0, 1.0
QS = (0.5, 0.9)


def stream(seed: int, n: int, keys: int):
    """Readings (device, sensor, value, t) in arrival order, t distinct, disorder within the
    allowed lateness (so no reading is late anywhere)."""
    rng = random.Random(seed)
    out, seen, max_t = [], set(), 0.0
    for _ in range(n):
        t = max(0.0, max_t + rng.uniform(-LATENESS * 0.9, 0.4))
        t = round(t, 6)
        while t in seen:
            t = round(t + 1e-6, 6)
        seen.add(t)
        max_t = max(max_t, t)
        k = rng.randrange(keys)
        out.append((f"dev{k}", f"s{k % 2}", rng.choice([rng.uniform(-50, 50), float(k)]), t))
    return out


def assert_same_windows(want: list[dict], got: list[dict], quantiles) -> None:
    """Every window of `want` (one engine) once in `got` (merged), the same."""
    def by_key(rows):
        out = {}
        for r in rows:
            k = (r["device"], r["sensor"], r["window_end"])
            assert k not in out, f"window {k} twice"
            out[k] = r
        return out
    w, g = by_key(want), by_key(got)
    assert set(w) == set(g)
    for k, a in w.items():
        b = g[k]
        for f in ("count", "min", "max", "first", "last", "window_start", "unit"):
            assert a[f] == b[f], (k, f, a[f], b[f])
        scale = max(1.0, sum(abs(x) for x in (a["sum"], a["min"], a["max"])))
        assert math.isclose(a["sum"], b["sum"], rel_tol=1e-9, abs_tol=1e-9 * scale), (k, a, b)
        assert math.isclose(a["stddev"], b["stddev"], rel_tol=1e-9, abs_tol=1e-7 * scale), \
            (k, a, b)
        for name, v in zip(b["quantile_names"], b["quantile_values"]):
            assert a[name] == v, (k, name)   # the sketches merge exactly: the same buckets
        assert len(b["quantile_values"]) == len(quantiles)


