"""An export says so when its artifact does not follow the FP32 source or is no smaller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit


def _near_tie_classifier(path: Path) -> Path:
    """10 logits that differ by 1e-5 relative: fp32 picks class 9 or 0 by the sign of x·base,
    but fp16 weights (relative spacing 2^-11 ~ 5e-4) round the columns to the same values,
    so the fp16 artifact ties, whatever precision ONNX Runtime computes the MatMul in."""
    base = np.random.default_rng(3).uniform(0.5, 1.0, (32, 1)).astype(np.float32)
    w = base * (1 + 1e-5 * np.arange(10, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _feeds(n: int = 40) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(n)]


def _top1(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.array([int(np.argmax(sess.run(None, f)[0])) for f in feeds])


def test_broken_fp16_is_reported_with_its_figure(tmp_path: Path) -> None:
    src = _near_tie_classifier(tmp_path / "ties.onnx")
    feeds = _feeds()
    report = edgekit.export(src, "onnxruntime", "fp16", output_dir=tmp_path / "o", eval_data=feeds)
    # Independent figure: both models run in plain ONNX Runtime, classes compared here.
    agree = float(np.mean(_top1(src, feeds) == _top1(report.artifact, feeds)))
    assert agree < 0.9
    assert report.agreement.top1_agreement == pytest.approx(agree)
    assert any(f"top-1 agreement with the FP32 source is {agree:.2%}" in w for w in report.warnings)
    fine = edgekit.export(src, "onnxruntime", "fp32", output_dir=tmp_path / "o", eval_data=feeds)
    assert fine.agreement.top1_agreement == 1.0
    assert not any("top-1 agreement" in w for w in fine.warnings)
    lenient = edgekit.export(
        src, "onnxruntime", "fp16", output_dir=tmp_path / "p", eval_data=feeds, warn_top1=0.0
    )
    assert not any("top-1 agreement" in w for w in lenient.warnings)


def test_artifact_larger_than_its_source_is_reported(tmp_path: Path) -> None:
    """An fp16-weight source exported at fp32 by OpenVINO doubles in size: said, with why."""
    pytest.importorskip("openvino")
    w = np.random.default_rng(2).standard_normal((256, 256)).astype(np.float16)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        initializer=[numpy_helper.from_array(w, "w16")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "half.onnx"
    onnx.save(model, str(src))
    report = edgekit.export(src, "openvino", "fp32", output_dir=tmp_path / "o")
    assert report.size_ratio > 1.5
    assert any("the size of its source" in w and "edgekit inspect" in w for w in report.warnings)
