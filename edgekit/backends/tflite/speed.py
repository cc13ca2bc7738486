"""A quick check, inside export, that a quantized model is actually faster than FP32.

INT8 is not always faster: a float op left inside an integer graph (e.g. a NEG in a LayerNorm)
costs a DEQUANTIZE/QUANTIZE pair on every call, and int16x8 runs reference kernels. The
exported and the FP32 model are timed side by side, interleaved, on one thread, within a time
budget of about a second; bigger models are skipped (``tools/bench_tflite.py`` gives the
authoritative figures). These are rough figures on a shared machine: only a clear loss (10 %)
is reported.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from edgekit.backends.tflite.runner import NativeStderr
from edgekit.errors import require

BUDGET_S = 1.0
MIN_ROUNDS = 5
MAX_ROUNDS = 40
#: slower than FP32 by more than this fraction is worth a warning
SLOWER = 1.10


def _runner(model: bytes) -> tuple[object, dict[str, np.ndarray]]:
    interp_mod = require("ai_edge_litert.interpreter", "tflite")
    with NativeStderr(handled=()):
        interp = interp_mod.Interpreter(model_content=model, num_threads=1)
        interp.allocate_tensors()
    runner = interp.get_signature_runner()
    feeds = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.get_input_details().items()}
    return runner, feeds


def median_us(models: Mapping[str, bytes], budget_s: float = BUDGET_S) -> dict[str, float] | None:
    """Median latency (µs, 1 thread, batch as exported) of each model, or None when one run
    of all of them already takes more than a tenth of the budget."""
    runners = {k: _runner(m) for k, m in models.items()}
    start = time.perf_counter()
    for runner, feeds in runners.values():
        runner(**feeds)  # warm-up: delegate set-up, first allocations
    one_round = time.perf_counter() - start
    if one_round > budget_s / 10:
        return None
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, budget_s / max(one_round, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for key, (runner, feeds) in runners.items():
            t0 = time.perf_counter()
            runner(**feeds)
            times[key].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e6 for k, v in times.items()}


def payoff_warning(precision: str, figures: Mapping[str, float]) -> str | None:
    """A plain warning when ``precision`` ran slower than the fastest alternative measured.

    ``figures`` maps precision -> median µs and holds ``precision`` and ``fp32`` (and may hold
    other alternatives such as ``int8-dynamic``).
    """
    mine = figures[precision]
    others = {k: v for k, v in figures.items() if k != precision}
    best = min(others, key=others.__getitem__)
    if mine <= SLOWER * others[best]:
        return None
    measured = ", ".join(f"{k} {v:.0f} µs" for k, v in figures.items())
    return (
        f"{precision} is slower than {best} on this CPU: {mine / others[best]:.2f}x its latency "
        f"({measured}; 1 thread, XNNPACK, median of a quick interleaved run). Use --precision "
        f"{best} for speed, or keep {precision} only for size or an integer-only accelerator"
    )
