"""ONNX Runtime int8 options map onto the quantized graph as asked: calibration methods give
really different ranges, the scheme flags change scales and zero points, keep_float works."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import feeds
from onnx import numpy_helper

import edgekit
from edgekit.errors import UsageError


def _qdq_params(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """QuantizeLinear input tensor -> (scale, zero point), from the saved graph."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.input[0]: (inits[n.input[1]], inits[n.input[2]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in inits
    }


def _weight_scales(path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [
        inits[n.input[1]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and inits.get(n.input[0]) is not None
        and inits[n.input[0]].dtype == np.int8
    ]


@pytest.fixture(scope="module")
def calib(digits):
    return feeds(digits[0][:48], "image")


def _export(onnx_cnn, calib, tmp_path, name, **kw):
    return edgekit.export(
        onnx_cnn,
        "onnxruntime",
        "int8",
        output_dir=tmp_path,
        calibration=calib,
        eval_samples=0,
        name=name,
        **kw,
    )


def test_minmax_input_range_is_the_data_range(onnx_cnn, calib, tmp_path):
    report = _export(onnx_cnn, calib, tmp_path, "mm", calibration_method="minmax")
    scale, zp = _qdq_params(report.artifact)["image"]
    x = np.concatenate([f["image"] for f in calib])
    # uint8 asymmetric: the range always includes 0.
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    assert float(scale) == pytest.approx((hi - lo) / 255.0, rel=1e-6)
    assert zp.dtype == np.uint8 and int(zp) == round(-lo / ((hi - lo) / 255.0))


def test_calibration_methods_give_different_ranges(onnx_cnn, calib, tmp_path):
    params = {
        m: _qdq_params(_export(onnx_cnn, calib, tmp_path, m, calibration_method=m).artifact)
        for m in ("minmax", "entropy", "percentile")
    }
    common = set(params["minmax"]) & set(params["entropy"]) & set(params["percentile"])
    assert len(common) >= 5
    # Histogram methods clip outliers: never wider than MinMax, and narrower somewhere.
    # Entropy (KL) clips hard; percentile 99.999 only trims the extreme tail.
    for method, narrower in (("entropy", 0.95), ("percentile", 0.9995)):
        ratios = [float(params[method][t][0]) / float(params["minmax"][t][0]) for t in common]
        assert max(ratios) <= 1.0 + 1e-5, method
        assert min(ratios) < narrower, f"{method} gave the MinMax ranges: {ratios}"
    assert any(not np.isclose(params["entropy"][t][0], params["percentile"][t][0]) for t in common)


def test_per_tensor_and_symmetric_flags(onnx_cnn, calib, tmp_path):
    default = _export(onnx_cnn, calib, tmp_path, "pc")
    flat = _export(onnx_cnn, calib, tmp_path, "pt", per_channel=False, activation_symmetric=True)
    first_conv_channels = 8  # WIDTH in conftest
    assert first_conv_channels in {s.size for s in _weight_scales(default.artifact)}
    assert {s.size for s in _weight_scales(flat.artifact)} == {1}
    for _scale, zp in _qdq_params(flat.artifact).values():
        assert zp.dtype == np.int8 and not zp.any()
    assert any(zp.dtype == np.uint8 for _, zp in _qdq_params(default.artifact).values())


def test_keep_float_leaves_node_unquantized(onnx_cnn, calib, tmp_path):
    model = onnx.load(str(onnx_cnn))
    gemms = [n.name for n in model.graph.node if n.op_type == "Gemm"]
    assert gemms, "the digits CNN should end in Gemm nodes"
    report = _export(onnx_cnn, calib, tmp_path, "kf", keep_float=(gemms[-1],))
    q = onnx.load(str(report.artifact))
    last = next(n for n in q.graph.node if n.name == gemms[-1])
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    # A quantized Gemm reads its weight through a DequantizeLinear; a float one does not.
    inits = {t.name for t in q.graph.initializer}
    assert last.input[1] in inits or producers.get(last.input[1]) != "DequantizeLinear"


def test_keep_float_at_fp16_keeps_that_node_in_float32(onnx_cnn, tmp_path):
    model = onnx.load(str(onnx_cnn))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    weight = gemm.input[1]
    report = edgekit.export(
        onnx_cnn,
        "onnxruntime",
        "fp16",
        output_dir=tmp_path,
        eval_samples=4,
        keep_float=(gemm.name,),
    )
    half = onnx.load(str(report.artifact))
    arrays = {t.name: numpy_helper.to_array(t) for t in half.graph.initializer}
    kept = next(n for n in half.graph.node if n.name == gemm.name)
    original = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == weight)
    # The kept Gemm reads the original fp32 weight itself, not an fp16 copy cast back.
    np.testing.assert_array_equal(arrays[kept.input[1]], original)
    assert arrays[kept.input[1]].dtype == np.float32
    assert sum(a.dtype == np.float16 for a in arrays.values()) > 0


@pytest.mark.parametrize("precision", ["fp16", "int8", "int8-dynamic"])
def test_keep_float_naming_no_node_is_refused(onnx_cnn, calib, tmp_path, precision):
    with pytest.raises(UsageError, match=r"keep_float nosuch: no such node in the ONNX model"):
        edgekit.export(
            onnx_cnn,
            "onnxruntime",
            precision,
            output_dir=tmp_path,
            calibration=calib,
            eval_samples=4,
            keep_float=("nosuch",),
        )


def test_scheme_flag_at_fp32_is_reported_as_ignored(onnx_cnn, tmp_path):
    report = edgekit.export(
        onnx_cnn, "onnxruntime", "fp32", output_dir=tmp_path, eval_samples=4, per_channel=False
    )
    assert any("--per-tensor does nothing at precision fp32" in w for w in report.warnings)


def test_int8_dynamic_warns_on_conv_heavy_graph(onnx_cnn, tmp_path):
    report = edgekit.export(
        onnx_cnn, "onnxruntime", "int8-dynamic", output_dir=tmp_path, eval_samples=4
    )
    assert any("Conv" in w for w in report.warnings)
    ops = {n.op_type for n in onnx.load(str(report.artifact)).graph.node}
    assert "ConvInteger" not in ops and "Conv" in ops
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}


def _opset11_conv(path):
    from onnx import TensorProto, helper

    rng = np.random.default_rng(11)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, str(path))
    return path


def test_opset11_model_gets_per_channel_int8_by_lifting_to_opset13(tmp_path):
    """Per-channel DequantizeLinear needs opset 13: ORT used to write it into the opset-11
    graph, which it then refused to load (INVALID_GRAPH)."""
    import onnxruntime as ort

    src = _opset11_conv(tmp_path / "old.onnx")
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(24)]
    report = edgekit.export(
        src, "onnxruntime", "int8", output_dir=tmp_path / "o", calibration=calib
    )
    q = onnx.load(str(report.artifact))
    assert next(o.version for o in q.opset_import if o.domain == "") >= 13
    axes = [a.i for n in q.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute]
    assert axes, "no per-channel DequantizeLinear"
    assert any("lifted to opset 13" in w for w in report.warnings)
    # Independent check: ONNX Runtime itself loads the artifact and it follows the source.
    x = calib[0]["x"]
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(str(report.artifact), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    cos = float(np.dot(want[0].ravel(), got[0].ravel())) / (
        np.linalg.norm(want[0]) * np.linalg.norm(got[0])
    )
    assert cos > 0.99
    # Per-tensor needs no axis: the graph keeps its opset.
    flat = edgekit.export(
        src, "onnxruntime", "int8", output_dir=tmp_path / "p", calibration=calib, per_channel=False
    )
    assert (
        next(o.version for o in onnx.load(str(flat.artifact)).opset_import if o.domain == "") == 11
    )
