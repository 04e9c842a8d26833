"""Rules-engine core figures: window evaluation rate beside the plain-Python reference, and a
preview (backtest) of one indicator over a month of 1-minute history.

    python -m bench.rules [--readings 5000000] [--reference 200000] [--scopes 1000] [--days 30]
                          [--repeat 3]

Evaluation: ``--readings`` readings over ``--scopes`` scopes and one hour, arriving roughly in
time order but interleaved across scopes (so the core must sort), are aggregated into 1-minute
windows (mean) and given levels by the vectorised core, on one core; the reference does the same
one reading at a time on the first ``--reference`` readings, in the same run. Each is timed
``--repeat`` times and the best run counts (as ``timeit`` does): the first run of the core also
pays for the operating system handing out fresh memory pages, which says little about it.
Preview: ``--days`` x 1440 minutes x ``--scopes`` points, as a scope-ordered history query
returns them, through rules.preview (aggregate, levels, life cycle of breaching scopes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rules import core, reference
from rules.indicators import Catalogue
from rules.preview import preview

MINUTE = 60_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=5_000_000)
    parser.add_argument("--reference", type=int, default=200_000)
    parser.add_argument("--scopes", type=int, default=1_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    indicator = Catalogue.from_yaml().by_code["water.waterlogging_depth"]
    rng = np.random.default_rng(7)

    n = args.readings
    ts = np.sort(rng.integers(0, 3_600_000, n)) + rng.integers(-5_000, 5_000, n)
    scope = rng.integers(0, args.scopes, n).astype(np.int64)
    value = rng.gamma(2.0, 5.0, n)
    agg = indicator.aggregation.MEAN
    fast = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        windows = core.aggregate(scope, ts, value, MINUTE, agg)
        core.late_mask(ts, MINUTE, 120_000)
        ranks = core.levels(indicator, windows.value)
        fast = min(fast, time.perf_counter() - started)

    m = min(args.reference, n)
    s_l, t_l, v_l = scope[:m].tolist(), ts[:m].tolist(), value[:m].tolist()
    slow = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        rows = reference.aggregate(s_l, t_l, v_l, MINUTE, agg)
        reference.late(t_l, MINUTE, 120_000)
        for row in rows:
            reference.level_rank(indicator, row[2])
        slow = min(slow, time.perf_counter() - started)
    fast_rate, slow_rate = n / fast, m / slow
    print(f"evaluation  core: {n:,} readings in {fast:.3f} s = {fast_rate / 1e6:.2f} M readings/s")
    print(f"            reference: {m:,} readings in {slow:.3f} s = {slow_rate / 1e6:.3f} M/s")
    print(
        f"            ratio core/reference: {fast_rate / slow_rate:.0f}x  "
        f"({len(windows):,} windows, {int((ranks > 0).sum()):,} breaching)"
    )

    minutes = args.days * 1440
    points = minutes * args.scopes
    p_scope = np.repeat(np.arange(args.scopes, dtype=np.int64), minutes)
    p_ts = np.tile(np.arange(minutes, dtype=np.int64) * MINUTE, args.scopes)
    p_value = rng.uniform(0.0, 8.0, points)  # dry roads, under the blue threshold
    p_value[rng.integers(0, points, points // 20_000)] = 35.0  # sparse storms
    ids = [f"dev-{i:04d}" for i in range(args.scopes)]
    started = time.perf_counter()
    result = preview(indicator, ids, p_scope, p_ts, p_value)
    took = time.perf_counter() - started
    print(
        f"preview     {points:,} points ({args.days} d x {args.scopes} scopes x 1 min) in "
        f"{took:.2f} s: {len(result.windows):,} windows, "
        f"{len(result.transitions):,} transitions"
    )


if __name__ == "__main__":
    main()
