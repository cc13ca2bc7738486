"""The agreement rule the grid-derived tests share (tests/test_backend_contract.py's docstring
derives it): a row whose FP32 top-1 minus top-2 exceeds 2e keeps its arg-max, where e bounds
how far any value can move; rows within 2e may flip and are not counted."""

from __future__ import annotations

import numpy as np


def margin_rule(what: str, want: np.ndarray, got: np.ndarray, e: float) -> float:
    """Rows (samples or time steps) x classes: rows with an FP32 margin beyond 2e keep their
    arg-max; at least half the rows must be beyond 2e, or the check says nothing. Returns the
    arg-max agreement over all rows."""
    top2 = np.sort(want, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    kept = got.argmax(-1) == want.argmax(-1)
    counted = margin > 2 * e
    assert counted.mean() >= 0.5, (
        f"{what}: only {counted.sum()} of {len(want)} rows have an FP32 margin above "
        f"2e = {2 * e:.3g}: the check would say nothing"
    )
    flipped = np.flatnonzero(counted & ~kept)
    assert not len(flipped), (
        f"{what}: {len(flipped)} of {counted.sum()} rows with an FP32 margin above 2e = "
        f"{2 * e:.3g} changed arg-max (margins {np.round(margin[flipped], 3).tolist()[:10]}); "
        f"agreement {kept.mean():.3f}"
    )
    return float(kept.mean())
