"""Agreement metrics against values computed by hand."""

import numpy as np
import pytest

from edgekit.agreement import compare, looks_like_scores


def test_compare_hand_computed():
    ref = [[np.array([[1.0, 0.0, 0.0]], np.float32)], [np.array([[0.0, 2.0, 1.0]], np.float32)]]
    cand = [[np.array([[0.5, 0.5, 0.0]], np.float32)], [np.array([[0.0, 2.0, 1.5]], np.float32)]]
    a = compare(ref, cand)
    assert a.samples == 2
    assert a.max_abs_diff == pytest.approx(0.5)
    cos1 = 0.5 / (1.0 * np.sqrt(0.5))  # (1,0,0).(.5,.5,0) / (|a||b|)
    cos2 = (4 + 1.5) / (np.sqrt(5) * np.sqrt(4 + 2.25))
    assert a.mean_cosine == pytest.approx((cos1 + cos2) / 2)
    # sample 1: argmax 0 vs a tie resolved to 0 -> agree; sample 2: 1 vs 1 -> agree
    assert a.top1_agreement == 1.0
    flipped = [[np.array([[0.0, 1.0, 0.0]], np.float32)], [np.array([[0.0, 2.0, 1.0]], np.float32)]]
    assert compare(ref, flipped).top1_agreement == 0.5


def test_no_top1_for_non_scores():
    ref = [[np.ones((1, 3, 4, 4), np.float32)]]
    assert compare(ref, ref).top1_agreement is None
    assert compare(ref, ref).mean_cosine == pytest.approx(1.0)
    assert not looks_like_scores(np.ones((1, 1)))
    assert looks_like_scores(np.ones((1, 10), np.float32))


def test_nan_outputs_are_counted_not_hidden():
    ref = [[np.array([[1.0, 2.0, 3.0]], np.float32)]] * 2
    cand = [[np.array([[np.nan, np.nan, np.nan]], np.float32)]] * 2
    a = compare(ref, cand)
    assert a.non_finite_outputs == 2
    assert a.mean_cosine == 0.0
    import json

    json.dumps(a.to_json(), allow_nan=False)  # no NaN reaches the sidecar


def test_no_samples_gives_none_not_nan():
    a = compare([], [])
    assert a.max_abs_diff is None and a.mean_cosine is None and a.top1_agreement is None
