"""Agreement of an exported model with its FP32 source on the same held-out inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """How closely one model's outputs follow a reference's, over ``samples`` inputs."""

    samples: int
    #: None when there were no samples (never NaN: the figures go into JSON)
    max_abs_diff: float | None
    mean_cosine: float | None
    #: fraction of samples whose arg-max class matches; None when no output looks like scores
    top1_agreement: float | None
    #: outputs holding NaN or inf (left out of max_abs_diff, cosine 0): a broken artifact
    non_finite_outputs: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def looks_like_scores(arr: np.ndarray) -> bool:
    """A (batch, classes) float output with at least two classes."""
    return arr.ndim == 2 and arr.shape[-1] >= 2 and np.issubdtype(arr.dtype, np.floating)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(
    reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]
) -> Agreement:
    """Compare per-sample output lists. Top-1 uses the first output that looks like scores."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate must hold the same number of samples")
    if not reference:
        return Agreement(0, None, None, None)
    max_diff = 0.0
    cosines: list[float] = []
    hits = 0
    rows = 0
    non_finite = 0
    score_idx = next((i for i, o in enumerate(reference[0]) if looks_like_scores(o)), None)
    for ref_outs, cand_outs in zip(reference, candidate, strict=True):
        for r, c in zip(ref_outs, cand_outs, strict=True):
            r64 = np.asarray(r, dtype=np.float64)
            c64 = np.asarray(c, dtype=np.float64).reshape(r64.shape)
            diff = np.abs(r64 - c64)
            finite = np.isfinite(diff)
            if not finite.all():
                # NaN/inf outputs are counted apart (JSON has no NaN) and score cosine 0.
                non_finite += 1
                cosines.append(0.0)
                diff = diff[finite]
            else:
                cosines.append(_cosine(r64, c64))
            max_diff = max(max_diff, float(diff.max()) if diff.size else 0.0)
        if score_idx is not None:
            r_cls = np.argmax(ref_outs[score_idx], axis=-1)
            c_cls = np.argmax(np.asarray(cand_outs[score_idx]).reshape((*r_cls.shape, -1)), -1)
            hits += int(np.sum(r_cls == c_cls))
            rows += int(r_cls.size)
    top1 = hits / rows if score_idx is not None and rows else None
    return Agreement(len(reference), max_diff, float(np.mean(cosines)), top1, non_finite)
