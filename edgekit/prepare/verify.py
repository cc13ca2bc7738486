"""Checking a rewritten graph against the graph it came from, on real inputs, in ONNX Runtime.

A preparation step must not change what the model computes. Each candidate graph runs in ONNX
Runtime's CPU provider with every graph optimization disabled (so that ORT's own fusions, which
would apply to both graphs, cannot hide a difference or make one), on the evaluation feeds, and
its outputs are compared output by output with those of the last graph that was kept.

The tolerance follows from what an exact rewrite may change, not from what passed once. Folding
a BatchNormalization into a Conv's weights, or a constant subgraph into one tensor, computes the
same real numbers in another order: float32 re-association, about sqrt(fan-in) * 2^-24 relative
per layer, far below 1e-4 of the output's scale S = max |reference| over the feeds. So a float
output may move by at most ``1e-4 * S`` plus the smallest normal float of its dtype (a kernel
that flushes subnormals to zero moves a value by less than that). Integer and bool outputs must
be identical, NaNs must stay where they were, and shapes and dtypes must not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.model import Feeds

#: relative bound on float32 re-association for an exact rewrite (see the module docstring)
RELATIVE_TOLERANCE = 1e-4


def run_graph(model: Any, feeds: Sequence[Feeds]) -> list[list[np.ndarray]]:
    """Outputs of ``model`` (a ModelProto) on each feed, ORT CPU, graph optimizations off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return [list(session.run(names, dict(f))) for f in feeds]


@dataclass(frozen=True)
class Bounds:
    """Per-output limits derived from the original graph's outputs."""

    atol: list[float]  # 0.0 for integer/bool outputs: they must be equal
    scale: list[float]  # S per output (1.0 for integer outputs)

    @classmethod
    def of(cls, reference: list[list[np.ndarray]]) -> Bounds:
        atol, scale = [], []
        for i, first in enumerate(reference[0]):
            arr = np.asarray(first)
            if arr.dtype.kind != "f":
                atol.append(0.0)
                scale.append(1.0)
                continue
            finite = [np.abs(np.asarray(r[i], np.float64)) for r in reference]
            s = max((float(np.max(a[np.isfinite(a)], initial=0.0)) for a in finite), default=0.0)
            atol.append(RELATIVE_TOLERANCE * s + float(np.finfo(arr.dtype).tiny))
            scale.append(s or 1.0)
        return cls(atol, scale)


def deviation(
    expected: list[list[np.ndarray]], got: list[list[np.ndarray]], bounds: Bounds
) -> tuple[float, str | None]:
    """Largest |difference| relative to each output's scale S, and why ``got`` fails (None
    when every output is within its bound)."""
    worst = 0.0
    for want_feed, got_feed in zip(expected, got, strict=True):
        if len(want_feed) != len(got_feed):
            return float("inf"), f"{len(got_feed)} outputs instead of {len(want_feed)}"
        for i, (w, g) in enumerate(zip(want_feed, got_feed, strict=True)):
            w, g = np.asarray(w), np.asarray(g)
            if w.shape != g.shape or w.dtype != g.dtype:
                return float("inf"), (
                    f"output {i} became {g.dtype}{list(g.shape)} instead of "
                    f"{w.dtype}{list(w.shape)}"
                )
            if w.dtype.kind not in "fc":
                if not np.array_equal(w, g):
                    return float("inf"), f"integer output {i} changed"
                continue
            wf, gf = w.astype(np.float64), g.astype(np.float64)
            special = ~np.isfinite(wf)
            if not np.array_equal(special, ~np.isfinite(gf)) or not np.array_equal(
                wf[special], gf[special], equal_nan=True
            ):
                return float("inf"), f"output {i} changed where it is NaN or infinite"
            diff = float(np.max(np.abs(wf[~special] - gf[~special]), initial=0.0))
            worst = max(worst, diff / bounds.scale[i])
            if diff > bounds.atol[i]:
                return worst, (
                    f"output {i} moved by {diff:.3g}, more than the {bounds.atol[i]:.3g} float "
                    "re-association allows"
                )
    return worst, None
