"""Advice after a static int8 export: try entropy calibration when a MinMax artifact already
departs from its FP32 graph on the calibration samples themselves.

Measured on the real-model set (edgekit.realmodels) on an AVX2 CPU without VNNI, int8 error
was the grid's, not the kernels': the QDQ graph run in float agreed with ORT's integer kernels
(cosine >= 0.995) with reduce_range and not without (0.955-0.961, VPMADDUBSW saturating). What
moved agreement was the calibration method, so a MinMax export that departs from FP32 on its
own calibration samples advises entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.model import Feeds
from edgekit.recipe import Recipe

#: calibration samples the in-sample check of a MinMax calibration runs (a cheap first look:
#: the export's agreement on evaluation data is the real figure)
_ADVICE_SAMPLES = 8


def calibration_advice(
    src: Path, out: Path, recipe: Recipe, calibration: Sequence[Feeds]
) -> list[str]:
    """Advice to try entropy calibration when a MinMax int8 artifact already departs from its
    FP32 graph on the calibration samples themselves.

    MinMax sets each activation grid from the extreme value seen, so one outlier coarsens the
    grid for every other value, and more samples only widen it further. On the real-model set
    (edgekit.realmodels "orientation", a PP-LCNet classifier, 8 calibration samples) the
    squeeze-excitation ReLUs came out at 15 dB SQNR under MinMax, mean output cosine 0.938 and
    top-1 56 %; 32 MinMax samples gave 0.913; entropy gave 0.967 and 81 %. The kernels were
    not the cause there: the QDQ graph run in float agreed with the integer kernels (cosine
    0.999 with reduce_range)."""
    if recipe.calibration_method != "minmax" or not calibration:
        return []
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    cosines = []
    for feeds in list(calibration)[:_ADVICE_SAMPLES]:
        for a, b in zip(ref.run(None, dict(feeds)), got.run(None, dict(feeds)), strict=True):
            a = np.asarray(a, np.float64).ravel()
            b = np.asarray(b, np.float64).ravel()
            norm = float(np.linalg.norm(a) * np.linalg.norm(b))
            if norm > 0 and np.isfinite(norm):
                cosines.append(float(a @ b) / norm)
    if not cosines or min(1.0, float(np.mean(cosines))) >= recipe.warn_cosine:
        return []
    return [
        f"int8 with MinMax calibration already departs from FP32 on the calibration samples "
        f"(mean cosine {np.mean(cosines):.4f}): try --calibration-method entropy, which clips "
        "outliers that MinMax stretches every grid to (more MinMax samples widen the ranges "
        "further)"
    ]
