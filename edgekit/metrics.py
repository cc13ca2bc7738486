"""Task metrics of a model's outputs, against a reference model's outputs or against labels.

``score(metric, candidate, reference, labels)`` takes per-sample lists of output arrays (one
list of outputs per sample, as sessions return them) and gives a :class:`Score` whose ``value``
is in *points*, higher is better for every metric, so that

    baseline = score(m, reference, reference, labels).value
    drop = baseline - score(m, candidate, reference, labels).value

is the loss of the candidate against its FP32 reference in points of the metric (scoring the
reference against itself gives the FP32 baseline: its accuracy on the labels, or 100 %
agreement without labels).

==============  =====  ==========================================================================
metric          unit   value
==============  =====  ==========================================================================
``top1``        %      labels: accuracy (arg-max == label); none: arg-max agreement with the
                       reference
``topk``        %      labels: label within the candidate's top k; none: the reference's top-1
                       within the candidate's top k (``details["k"]``)
``agreement``   %      arg-max agreement with the reference (labels are not used)
``iou``         %      mean IoU x 100 of map outputs, over the classes present in either mask,
                       intersections and unions summed over all samples (the VOC/Cityscapes
                       definition); against the labels' masks, else the reference's
``mean-error``  (out)  minus the mean absolute error, in the output's own units (so the drop
                       is the increase of the error)
``seq``         %      per-step arg-max agreement of (batch, steps, classes) outputs, with the
                       labels' (steps,) class ids or the reference's arg-max;
                       ``details["exact_sequence"]``: % of sequences right at every step
``cosine``      %      mean cosine similarity x 100 (over samples and outputs)
``snr``         dB     10 log10(sum ref^2 / sum (cand - ref)^2), over every value; inf when equal
``psnr``        dB     10 log10(range^2 / mean (cand - ref)^2), range = max - min of the reference
==============  =====  ==========================================================================

Conventions:

* Class scores are the first output that looks like scores (``(batch, classes)``, float,
  >= 2 classes: :func:`edgekit.agreement.looks_like_scores`); labels are class indices, one per
  row (``(N,)``, or ``(N, batch)``). Ties go to the lower class index, as ``numpy.argmax``.
* ``seq`` takes the first rank-3 float output with >= 2 classes. A time-major ``(steps, 1,
  classes)`` output (what CTC models often emit) is read as one sequence of ``steps``. Steps
  are compared as they come: no CTC collapsing of repeats or blanks (use a callable for that).
* ``iou`` takes the first map output: rank >= 4 is ``(..., classes, H, W)`` (channels first):
  the arg-max over the class axis, or for a single channel the foreground where the value is
  > 0.5 (a sigmoid probability); rank 3 ``(batch, H, W)`` and rank 2 ``(H, W)`` are single
  maps: integer values are class ids, float ones are thresholded at 0.5. A ``(1, classes)``
  output is class scores, not a map, and is refused. Background (class 0) counts as a class;
  ``details["per_class"]`` has each class's IoU. For channels-last maps or box outputs (which
  need matching and NMS) use ``mean-error`` or a callable.
* ``mean-error``, ``cosine``, ``snr`` and ``psnr`` use every output without labels
  (``details["per_output"]``); with labels, the first output whose per-sample size equals the
  labels' (the labels are targets of that shape).
* A value that is not finite (SNR of identical outputs, NaN outputs) stays so in ``value``;
  :meth:`Score.to_json` writes it as ``null``, since JSON has no inf or NaN.
* A Python callable ``f(candidate, reference, labels) -> float`` (higher is better) is a
  metric too; its Score is named ``f.__name__``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.agreement import compare, looks_like_scores
from edgekit.errors import DataError, UsageError

#: per-sample lists of output arrays, as sessions return them
Outputs = Sequence[Sequence[np.ndarray]]


@dataclass(frozen=True)
class Score:
    """One metric over ``samples`` samples; ``value`` in points, higher is better."""

    metric: str
    value: float
    unit: str
    samples: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": _finite(self.value),
            "unit": self.unit,
            "samples": self.samples,
            "details": _json_safe(self.details),
        }


def score(
    metric: str | Callable[..., Any],
    candidate: Outputs,
    reference: Outputs,
    labels: np.ndarray | None = None,
    *,
    k: int = 5,
) -> Score:
    """Score ``candidate`` outputs with ``metric`` against the labels (when given and the metric
    uses them) or the ``reference`` outputs; see the module docstring for each metric."""
    if callable(metric):
        return _custom(metric, candidate, reference, labels)
    if metric not in _SCORERS:
        raise UsageError(
            f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}, or pass a Python "
            "callable f(candidate, reference, labels) -> float"
        )
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise UsageError(f"k must be a whole number >= 1 for top-k, got {k!r}")
    if len(candidate) != len(reference):
        raise DataError(
            f"{len(candidate)} candidate samples but {len(reference)} reference samples; score "
            "outputs of the same inputs"
        )
    if not reference:
        raise DataError(f"no samples to compute {metric} on; pass at least one input")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 0 or len(labels) != len(reference):
            count = "one label" if labels.ndim == 0 else f"{len(labels)} labels"
            raise DataError(
                f"{count} for {len(reference)} samples; give exactly one label per sample"
            )
    for i, (cand, ref) in enumerate(zip(candidate, reference, strict=True)):
        if len(cand) != len(ref):
            raise DataError(
                f"sample {i}: the candidate has {len(cand)} outputs but the reference has "
                f"{len(ref)}; compare models with the same outputs"
            )
    if (
        labels is not None
        and metric in OUTPUT_METRICS
        and labels.ndim == 1
        and np.issubdtype(labels.dtype, np.integer)
    ):
        # Class ids say nothing about an output's cosine or SNR: these metrics then measure
        # the candidate against the reference outputs (one rule for evaluate, the gate, auto).
        labels = None
    return _SCORERS[metric](candidate, reference, labels, int(k))


#: metrics of an output's values (against targets, or the reference outputs), not of classes
OUTPUT_METRICS: tuple[str, ...] = ("cosine", "snr", "psnr", "mean-error")


def default_metric(reference_outputs: Outputs, labels: np.ndarray | None) -> str:
    """``top1`` when an output looks like class scores, ``seq`` for (batch, steps, classes)
    outputs, ``cosine`` otherwise. Labels do not change the choice: they change what top1 and
    seq compare with."""
    first = [np.asarray(o) for o in reference_outputs[0]] if len(reference_outputs) else []
    if any(looks_like_scores(o) for o in first):
        return "top1"
    if any(_is_sequence(o) for o in first):
        return "seq"
    return "cosine"


# --- classification ------------------------------------------------------------------------


def _top1(cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
    return _topk_score("top1", cand, ref, labels, 1)


def _topk(cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
    return _topk_score("topk", cand, ref, labels, k)


def _agreement(cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
    return _topk_score("agreement", cand, ref, None, 1)


def _topk_score(name: str, cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
    idx = _find_output(ref, looks_like_scores, name, "class scores (batch, classes)", "cosine")
    classes = np.asarray(ref[0][idx]).shape[-1]
    if k > classes:
        raise DataError(
            f"top-{k} needs at least {k} classes but output {idx} has {classes}; pass k from 1 "
            f"to {classes}"
        )
    hits = rows = 0
    for i, (c, r) in enumerate(zip(cand, ref, strict=True)):
        r_scores = np.asarray(r[idx])
        r_scores = r_scores.reshape(-1, r_scores.shape[-1])
        c_scores = _like(c[idx], r_scores, i, idx)
        truth = (
            np.argmax(r_scores, axis=-1)
            if labels is None
            else _label_ids(labels[i], len(r_scores), i, name)
        )
        # Stable sort: among equal scores the lower class index ranks first, as argmax.
        top = np.argsort(-c_scores, axis=-1, kind="stable")[:, :k]
        hits += int(np.sum(np.any(top == truth[:, None], axis=1)))
        rows += len(truth)
    details: dict[str, Any] = {"output": idx, "rows": rows, "against": _against(labels)}
    if name == "topk":
        details["k"] = k
    return Score(name, 100.0 * hits / rows, "%", len(ref), details)


def _label_ids(label: Any, rows: int, sample: int, metric: str) -> np.ndarray:
    ids = np.asarray(label).reshape(-1)
    if ids.size != rows:
        hint = " (one-hot labels? pass labels.argmax(-1))" if ids.size > rows else ""
        raise DataError(
            f"label of sample {sample} holds {ids.size} values but the output has {rows} "
            f"row(s) of class scores{hint}; {metric} needs one class index per row"
        )
    if ids.dtype.kind == "f":
        if not np.all(ids == np.round(ids)):
            raise DataError(
                f"label of sample {sample} is {ids.tolist()[:4]}, not class indices; {metric} "
                "needs whole-number class ids"
            )
        ids = ids.astype(np.int64)
    elif ids.dtype.kind not in "iub":
        raise DataError(
            f"label of sample {sample} has dtype {ids.dtype}; {metric} needs integer class ids"
        )
    return ids.astype(np.int64)


# --- sequences -----------------------------------------------------------------------------


def _is_sequence(arr: np.ndarray) -> bool:
    return arr.ndim == 3 and arr.shape[-1] >= 2 and np.issubdtype(arr.dtype, np.floating)


def _as_batch_major(arr: np.ndarray) -> np.ndarray:
    """(batch, steps, classes); a time-major (steps, 1, classes) output is one sequence."""
    if arr.shape[1] == 1 and arr.shape[0] > 1:
        return arr.transpose(1, 0, 2)
    return arr


def _seq(cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
    idx = _find_output(ref, _is_sequence, "seq", "sequences (batch, steps, classes)", "top1")
    step_hits = steps = exact = sequences = 0
    for i, (c, r) in enumerate(zip(cand, ref, strict=True)):
        r_arr = np.asarray(r[idx])
        c_arr = _as_batch_major(_like(c[idx], r_arr, i, idx))
        r_arr = _as_batch_major(r_arr)
        pred = np.argmax(c_arr, axis=-1)
        if labels is None:
            truth = np.argmax(r_arr, axis=-1)
        else:
            truth = _label_ids(labels[i], pred.size, i, "seq").reshape(pred.shape)
        same = pred == truth
        step_hits += int(same.sum())
        steps += same.size
        exact += int(np.all(same, axis=1).sum())
        sequences += same.shape[0]
    details = {
        "output": idx,
        "steps": steps,
        "sequences": sequences,
        "exact_sequence": 100.0 * exact / sequences,
        "against": _against(labels),
    }
    return Score("seq", 100.0 * step_hits / steps, "%", len(ref), details)


# --- maps ----------------------------------------------------------------------------------


def _is_map(arr: np.ndarray) -> bool:
    # (1, classes) is one row of class scores; (H, W) with H > 1 is a map.
    return arr.ndim >= 3 or (arr.ndim == 2 and arr.shape[0] > 1)


def _mask(arr: np.ndarray) -> np.ndarray:
    """Class ids per pixel; see the module docstring for how each shape is read."""
    if arr.ndim >= 4:
        if arr.shape[-3] == 1:
            return (arr[..., 0, :, :] > 0.5).astype(np.int64)
        return np.argmax(arr, axis=-3)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    return (arr > 0.5).astype(np.int64)


def _iou(cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
    idx = _find_output(ref, _is_map, "iou", "maps (..., classes, H, W) or (H, W)", "top1")
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    for i, (c, r) in enumerate(zip(cand, ref, strict=True)):
        r_arr = np.asarray(r[idx])
        pred = _mask(_like(c[idx], r_arr, i, idx))
        if labels is None:
            truth = _mask(r_arr)
        else:
            truth = np.asarray(labels[i])
            if truth.size != pred.size:
                raise DataError(
                    f"label of sample {i} holds {truth.size} values but the mask of output "
                    f"{idx} has {pred.size} {tuple(pred.shape)}; give one class id per pixel"
                )
            truth = _label_ids(truth, pred.size, i, "iou").reshape(pred.shape)
        for cls in np.union1d(np.unique(pred), np.unique(truth)).tolist():
            p, t = pred == cls, truth == cls
            inter[cls] = inter.get(cls, 0) + int(np.sum(p & t))
            union[cls] = union.get(cls, 0) + int(np.sum(p | t))
    per_class = {str(c): 100.0 * inter[c] / union[c] for c in sorted(union)}
    value = float(np.mean(list(per_class.values())))
    details = {"output": idx, "per_class": per_class, "against": _against(labels)}
    return Score("iou", value, "%", len(ref), details)


# --- regression ----------------------------------------------------------------------------


def _pairs(
    cand: Outputs, ref: Outputs, labels: np.ndarray | None, metric: str
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """(candidate, target) float64 pairs, flat, per output index: all outputs against the
    reference, or the labels against the first output of their per-sample size."""
    if labels is None:
        indices = list(range(len(ref[0])))
        rows = []
        for i, (c, r) in enumerate(zip(cand, ref, strict=True)):
            for j in indices:
                r64 = np.asarray(r[j], np.float64)
                rows.append((_like(c[j], r64, i, j).astype(np.float64).ravel(), r64.ravel()))
        return rows, indices
    per_sample = int(np.asarray(labels[0]).size)
    sizes = [int(np.asarray(o).size) for o in ref[0]]
    if per_sample not in sizes:
        raise DataError(
            f"{metric} with labels compares them with an output of the same size, but each "
            f"label holds {per_sample} values and the outputs hold {sizes}; give targets of an "
            "output's shape"
        )
    j = sizes.index(per_sample)
    rows = []
    for i, c in enumerate(cand):
        target = np.asarray(labels[i], np.float64).ravel()
        got = np.asarray(c[j], np.float64).ravel()
        if got.size != target.size:
            raise DataError(
                f"label of sample {i} holds {target.size} values but output {j} has "
                f"{got.size}; give one target of the output's shape per sample"
            )
        rows.append((got, target))
    return rows, [j]


def _split(rows: list[tuple[np.ndarray, np.ndarray]], n: int) -> list[list[tuple[Any, Any]]]:
    """The pairs of each output, from the sample-major list _pairs builds."""
    return [rows[j::n] for j in range(n)]


def _mean_error(cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
    rows, indices = _pairs(cand, ref, labels, "mean-error")

    def mae(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
        total = sum(float(np.sum(np.abs(c - t))) for c, t in pairs)
        return total / max(sum(t.size for _, t in pairs), 1)

    per_output = {str(j): mae(p) for j, p in zip(indices, _split(rows, len(indices)), strict=True)}
    error = mae(rows)
    details = {"mean_abs_error": error, "per_output": per_output, "against": _against(labels)}
    # 0.0 - error, not -error: an exact match is 0, not -0.
    return Score("mean-error", 0.0 - error, "", len(ref), details)


def _cosine(cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
    rows, indices = _pairs(cand, ref, labels, "cosine")
    # edgekit.agreement.compare's cosine, so this equals the agreement figure of every report.
    per_output = {}
    for j, pairs in zip(indices, _split(rows, len(indices)), strict=True):
        mean = compare([[t] for _, t in pairs], [[c] for c, _ in pairs]).mean_cosine
        per_output[str(j)] = 100.0 * float(mean or 0.0)
    mean = compare([[t] for _, t in rows], [[c] for c, _ in rows]).mean_cosine
    details = {"per_output": per_output, "against": _against(labels)}
    return Score("cosine", 100.0 * float(mean or 0.0), "%", len(ref), details)


def _snr_db(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    signal = sum(float(np.sum(t * t)) for _, t in pairs)
    noise = sum(float(np.sum((c - t) ** 2)) for c, t in pairs)
    if math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


def _psnr_db(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    count = sum(t.size for _, t in pairs)
    mse = sum(float(np.sum((c - t) ** 2)) for c, t in pairs) / max(count, 1)
    peak = max(float(t.max()) for _, t in pairs) - min(float(t.min()) for _, t in pairs)
    if math.isnan(mse):
        return math.nan
    if mse == 0.0:
        return math.inf
    return -math.inf if peak == 0.0 else 10.0 * math.log10(peak * peak / mse)


def _db_score(
    name: str, fn: Callable[[list[tuple[np.ndarray, np.ndarray]]], float]
) -> Callable[[Outputs, Outputs, np.ndarray | None, int], Score]:
    def scorer(cand: Outputs, ref: Outputs, labels: np.ndarray | None, k: int) -> Score:
        rows, indices = _pairs(cand, ref, labels, name)
        splits = _split(rows, len(indices))
        per_output = {str(j): fn(p) for j, p in zip(indices, splits, strict=True)}
        details = {"per_output": per_output, "against": _against(labels)}
        return Score(name, fn(rows), "dB", len(ref), details)

    return scorer


# --- shared --------------------------------------------------------------------------------


def _find_output(
    ref: Outputs, fits: Callable[[np.ndarray], bool], metric: str, want: str, instead: str
) -> int:
    outputs = [np.asarray(o) for o in ref[0]]
    for i, arr in enumerate(outputs):
        if fits(arr):
            return i
    shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
    raise DataError(
        f"{metric} needs an output of {want}, but the outputs have shapes {shapes}; choose "
        f"another metric (e.g. {instead}), or from Python pass a callable"
    )


def _like(arr: Any, ref: np.ndarray, sample: int, output: int) -> np.ndarray:
    """The candidate's output in the reference's shape (runtimes may drop or add unit dims)."""
    arr = np.asarray(arr)
    if arr.size != ref.size:
        raise DataError(
            f"sample {sample}: candidate output {output} has shape {tuple(arr.shape)} but the "
            f"reference's has {tuple(ref.shape)}; compare models with the same outputs"
        )
    return arr.reshape(ref.shape)


def _against(labels: np.ndarray | None) -> str:
    return "reference" if labels is None else "labels"


def _custom(fn: Callable[..., Any], cand: Outputs, ref: Outputs, labels: Any) -> Score:
    name = getattr(fn, "__name__", type(fn).__name__)
    got = fn(cand, ref, labels)
    if isinstance(got, Score):
        return got
    if isinstance(got, bool) or not isinstance(got, int | float | np.integer | np.floating):
        raise UsageError(
            f"metric {name} returned a {type(got).__name__}, not a number; return a float "
            "(higher is better)"
        )
    return Score(name, float(got), "", len(cand), {})


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return _finite(obj)


_SCORERS: dict[str, Callable[[Outputs, Outputs, np.ndarray | None, int], Score]] = {
    "top1": _top1,
    "topk": _topk,
    "agreement": _agreement,
    "iou": _iou,
    "mean-error": _mean_error,
    "seq": _seq,
    "cosine": _cosine,
    "snr": _db_score("snr", _snr_db),
    "psnr": _db_score("psnr", _psnr_db),
}
#: the built-in metrics' names, in the order the docs list them
METRICS: tuple[str, ...] = tuple(_SCORERS)
