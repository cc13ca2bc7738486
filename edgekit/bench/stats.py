"""Latency statistics over the counted runs, in plain Python (no numpy): the percentiles use
linear interpolation between closest ranks (numpy's default ``linear`` method, Hyndman-Fan
type 7) and ``std`` is the population standard deviation (ddof=0, as ``benchmark_model``
reports it), so the figures can be checked against numpy independently."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(times_ms: Sequence[float]) -> dict[str, float | int]:
    """p50/p90/p99/min/max/mean/std/cv (std over mean) and throughput (runs per second)."""
    n = len(times_ms)
    if n == 0:
        raise ValueError("no timed runs")
    mean = math.fsum(times_ms) / n
    std = math.sqrt(math.fsum((t - mean) ** 2 for t in times_ms) / n)
    total_s = math.fsum(times_ms) / 1e3
    return {
        "runs": n,
        "p50": percentile(times_ms, 50),
        "p90": percentile(times_ms, 90),
        "p99": percentile(times_ms, 99),
        "min": min(times_ms),
        "max": max(times_ms),
        "mean": mean,
        "std": std,
        "cv": std / mean if mean > 0 else 0.0,
        "throughput_ips": n / total_s if total_s > 0 else 0.0,
    }
