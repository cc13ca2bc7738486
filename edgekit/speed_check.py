"""Is a quantized artifact slower than its FP32 source on this machine? A quick side-by-side.

An int8 model can be slower than FP32 where its integer kernels are missing or poor (QOperator
S8S8 on x86, a dynamic ConvInteger, a CPU without VNNI), and an export should say so rather
than ship it quietly. This is a check, not a benchmark (that is :mod:`edgekit.bench`): about
1-2 s in all, both sessions timed in the same process, on the same feeds, interleaved so that
whatever else the machine does (frequency scaling, a neighbour's job) falls on both alike.

How it decides, without a fixed tolerance:

* warm-up runs first (allocations, kernel choice, caches), then pairs of runs, alternating which
  session goes first (ABBA) so that order effects cancel; as many pairs as fit the budget;
* the ratio is the median of the per-pair ratios (quantized / FP32): each pair shares its
  moment, so drift cancels within it;
* "slower" needs both: the ratio's lower confidence bound above 1 (3 standard errors of the
  median, from the spread of the pairs' log ratios), and a slowdown larger than the spread of
  single runs (so that a real but tiny difference between two equal sessions on a very quiet
  machine is not called slower);
* a model whose FP32 run is under :data:`TINY_S` is not judged: the Python call and the feed
  checks are then a large part of each timing. ``skipped`` says so.

Sessions are any objects with ``run(feeds)`` (every backend's session); threads are the
sessions' own setting.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: FP32 runs faster than this are too short to compare (call overhead dominates)
TINY_S = 1e-4
# Robust spread: 1.4826 * MAD estimates a normal sigma; the median's standard error is
# sqrt(pi / 2) = 1.2533 times the mean's.
_MAD_SIGMA = 1.4826
_MEDIAN_SE = 1.2533
_Z = 3.0


class _Runs(Protocol):
    def run(self, feeds: Any) -> Any: ...


@dataclass(frozen=True)
class SpeedCheck:
    """The outcome of :func:`compare_speed`; times in seconds (medians of single runs)."""

    #: median per-pair ratio quantized / FP32 (> 1: the quantized artifact is slower)
    ratio: float | None
    #: slower beyond noise (see the module docstring); False when skipped
    slower: bool
    fp32_s: float
    quantized_s: float
    #: timed pairs of runs
    pairs: int
    #: relative spread of single runs (about one sigma), what "beyond noise" is measured against
    noise: float
    #: why no verdict was given, or None
    skipped: str | None = None

    def describe(self) -> str:
        if self.skipped:
            return f"speed check skipped: {self.skipped}"
        verdict = "slower than" if self.slower else "not slower than"
        return (
            f"quantized {self.quantized_s * 1e3:.2f} ms vs FP32 {self.fp32_s * 1e3:.2f} ms a run "
            f"({self.ratio:.2f}x, {self.pairs} interleaved pairs, run-to-run noise "
            f"{self.noise:.1%}): {verdict} FP32 on this machine"
        )


def _timed(session: _Runs, feeds: Mapping[str, Any]) -> float:
    start = time.perf_counter()
    session.run(feeds)
    return time.perf_counter() - start


def _mad_sigma(values: list[float]) -> float:
    mid = statistics.median(values)
    return _MAD_SIGMA * statistics.median(abs(v - mid) for v in values)


def compare_speed(
    fp32: _Runs,
    quantized: _Runs,
    feeds: Mapping[str, Any],
    budget_s: float = 1.5,
    warmup: int = 3,
    min_pairs: int = 5,
    max_pairs: int = 500,
) -> SpeedCheck:
    """Time ``fp32`` and ``quantized`` on ``feeds`` side by side within about ``budget_s``
    (at least ``min_pairs`` pairs however long a run takes)."""
    for _ in range(warmup):
        _timed(fp32, feeds)
        _timed(quantized, feeds)
    # One more warm pair sizes the budget (and catches a tiny model before timing it more).
    a0, b0 = _timed(fp32, feeds), _timed(quantized, feeds)
    if a0 < TINY_S:
        return SpeedCheck(
            None, False, a0, b0, 0, 0.0,
            skipped=f"the FP32 model runs in {a0 * 1e6:.0f} us, too short to time against the "
            "call overhead",
        )  # fmt: skip
    pairs = int(max(min_pairs, min(max_pairs, budget_s // (a0 + b0))))
    ta: list[float] = []
    tb: list[float] = []
    for i in range(pairs):
        if i % 2 == 0:
            ta.append(_timed(fp32, feeds))
            tb.append(_timed(quantized, feeds))
        else:
            tb.append(_timed(quantized, feeds))
            ta.append(_timed(fp32, feeds))
    logs = [math.log(b / a) for a, b in zip(ta, tb, strict=True)]
    center = statistics.median(logs)
    se = _MEDIAN_SE * _mad_sigma(logs) / math.sqrt(pairs)
    # single-run spread of each session around its own median, pooled
    single = math.sqrt(
        (_mad_sigma([math.log(t) for t in ta]) ** 2 + _mad_sigma([math.log(t) for t in tb]) ** 2)
        / 2
    )
    slower = center - _Z * se > 0 and center > single
    return SpeedCheck(
        ratio=math.exp(center),
        slower=slower,
        fp32_s=statistics.median(ta),
        quantized_s=statistics.median(tb),
        pairs=pairs,
        noise=math.expm1(single),
    )
