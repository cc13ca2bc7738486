"""ONNX Runtime calibration streams: the ranges equal ORT's own all-at-once calibration, its
memory stays bounded by a chunk, a model whose one sample cannot fit is refused before any
sample runs, and the summary reports the chunks and the peak RSS.

The independent reference is ORT's calibrator used the plain way (``create_calibrator``, one
``collect_data`` over every sample, ``compute_data``). The samples grow in magnitude, so a later
chunk always exceeds the ranges of the earlier ones: the case where feeding ORT's histogram
collector chunk after chunk would land on other bins."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import conv_model

import edgekit
from edgekit.backends.onnxruntime import calibration as ort_calibration
from edgekit.errors import DataError
from edgekit.recipe import Recipe


class _Reader:
    def __init__(self, samples):
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def _all_at_once(path, recipe, samples, workdir):
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    opts = {"symmetric": recipe.activation_symmetric}
    if recipe.calibration_method == "entropy":
        opts.update(num_bins=2048, num_quantized_bins=128)
    elif recipe.calibration_method == "percentile":
        opts.update(num_bins=2048, percentile=recipe.percentile)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration_method]
    calibrator = create_calibrator(
        path, None, str(workdir / "ref.onnx"), calibrate_method=method, extra_options=opts
    )
    calibrator.collect_data(_Reader(samples))
    return calibrator.compute_data()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    rng = np.random.default_rng(4)
    path = tmp_path_factory.mktemp("calib") / "conv.onnx"
    onnx.save(conv_model(rng.standard_normal((4, 2, 3, 3)).astype(np.float32)), str(path))
    # growing magnitude: every chunk widens the ranges of the ones before it
    samples = [
        {"x": (rng.standard_normal((1, 2, 6, 6)) * (1 + k / 4)).astype(np.float32)}
        for k in range(20)
    ]
    return path, samples


@pytest.mark.parametrize(
    ("method", "symmetric"),
    [("percentile", False), ("percentile", True), ("entropy", False), ("minmax", False),
     ("minmax", True)],
)  # fmt: skip
def test_streamed_ranges_equal_all_at_once(small, tmp_path, monkeypatch, method, symmetric):
    path, samples = small
    monkeypatch.setattr(ort_calibration, "_MAX_CHUNK", 3)
    monkeypatch.setattr(ort_calibration, "_MINMAX_CHUNK", 3)
    recipe = Recipe(precision="int8", calibration_method=method, activation_symmetric=symmetric)
    want = _all_at_once(path, recipe, samples, tmp_path)
    got, stats = ort_calibration.calibrate(path, recipe, samples, tmp_path)
    assert stats["chunks"] == 7  # 20 samples, 3 a chunk
    assert set(got.keys()) == set(want.keys()) and len(want.keys()) == 3
    for name in want:
        assert np.array_equal(got[name].range_value, want[name].range_value), name


def _wide_model(path):
    """x[1, 8, 128, 128] -> Conv to 64 channels -> Relu: about 8.5 MB of activations a sample."""
    rng = np.random.default_rng(0)
    onnx.save(conv_model(rng.standard_normal((64, 8, 3, 3)).astype(np.float32), (1, 8, 128, 128)),
              str(path))  # fmt: skip
    return [{"x": rng.standard_normal((1, 8, 128, 128)).astype(np.float32)} for _ in range(40)]


def test_memory_is_bounded_by_a_chunk(tmp_path, monkeypatch):
    """ORT all at once holds 40 samples' activations (~340 MB, plus a stacked copy); streamed
    with a 20 MB chunk budget the process grows by a small fraction of that. Peak RSS is the
    kernel's VmHWM, reset at the start of each measurement."""
    path = tmp_path / "wide.onnx"
    samples = _wide_model(path)
    monkeypatch.setattr(ort_calibration, "_MAX_CHUNK_BYTES", 20 << 20)
    recipe = Recipe(precision="int8", calibration_method="percentile")
    _, stats = ort_calibration.calibrate(path, recipe, samples, tmp_path)
    ours = stats["peak_rss_bytes"] - stats["rss_before_bytes"]
    assert stats["peak_rss_measured"] == "VmHWM"
    assert stats["chunk_samples"] == 1 and stats["chunks"] == 40
    with ort_calibration._PeakRss() as rss:
        _all_at_once(path, recipe, samples, tmp_path)
    theirs = rss.peak - rss.start
    assert theirs > 300 << 20, theirs
    assert ours < theirs / 4, (ours, theirs)


def test_a_sample_that_cannot_fit_is_refused_before_any_run(tmp_path):
    """One sample would expand to 4 x 65536 x 65536 floats (64 GiB): refused from the declared
    shapes, before ORT runs it (running it would fail to allocate, or swap)."""
    shape = numpy_helper.from_array(np.array([4, 65536, 65536], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Expand", ["x", "shape"], ["big"]),
            helper.make_node("ReduceMax", ["big"], ["y"], keepdims=0),
        ],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "huge.onnx"
    onnx.save(model, str(path))
    recipe = Recipe(precision="int8", calibration_method="percentile")
    with pytest.raises(DataError, match="--calibration-method minmax") as err:
        ort_calibration.calibrate(path, recipe, [{"x": np.ones((1, 1, 1), np.float32)}], tmp_path)
    assert "\n" not in str(err.value) and "GiB" in str(err.value)


def test_summary_reports_chunks_and_peak_rss(small, tmp_path):
    path, samples = small
    report = edgekit.export(
        path,
        "onnxruntime",
        "int8",
        output_dir=tmp_path,
        calibration=samples,
        eval_samples=0,
        calibration_method="percentile",
    )
    (note,) = (n for n in report.notes if n.startswith("calibration:"))
    assert re.match(
        r"calibration: percentile over 20 samples in 1 chunk, peak RSS \d+\.\d GiB", note
    ), note
    calib = json.loads(report.sidecar.read_text())["backend_details"]["calibration"]
    assert calib["peak_rss_bytes"] >= calib["rss_before_bytes"] > 0
    # x (1x2x6x6), the conv output and the relu output (1x4x6x6 each), float32
    assert calib["sample_activation_bytes"] == (72 + 144 + 144) * 4
