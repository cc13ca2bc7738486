"""ONNX Runtime int8 options map onto the quantized graph as asked: calibration methods give
really different ranges, the scheme flags change scales and zero points, keep_float works."""

from __future__ import annotations

import json

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
    with pytest.raises(
        UsageError, match=r"keep_float 'nosuch' matches no layer of the onnxruntime model"
    ):
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


# -------------------------------------------------------------------- LSTM, fp16 sources

HIDDEN, FEAT, STEPS = 32, 16, 12


def _conv_lstm(path):
    """Conv over a (1, 1, FEAT, STEPS) "image" -> one LSTM over its STEPS columns -> MatMul:
    the ddddocr layout (CNN, then LSTM, then a dense head) at a size that runs in a second.
    The LSTM holds most of the weights, as it does there."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(5)
    conv = rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.3
    w = rng.standard_normal((1, 4 * HIDDEN, 4 * FEAT)).astype(np.float32) * 0.2
    r = rng.standard_normal((1, 4 * HIDDEN, HIDDEN)).astype(np.float32) * 0.2
    b = rng.standard_normal((1, 8 * HIDDEN)).astype(np.float32) * 0.1
    head = rng.standard_normal((HIDDEN, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["cr"], name="relu"),
            # (1, 4, FEAT, STEPS) -> (STEPS, 1, 4 * FEAT): one sequence of STEPS columns
            helper.make_node("Transpose", ["cr"], ["ct"], perm=[3, 0, 1, 2], name="tr"),
            helper.make_node("Reshape", ["ct", "shape"], ["seq"], name="flat"),
            helper.make_node(
                "LSTM", ["seq", "w", "r", "b"], ["h"], hidden_size=HIDDEN, name="lstm"
            ),
            helper.make_node("Squeeze", ["h", "axes"], ["hs"], name="sq"),
            helper.make_node("MatMul", ["hs", "head"], ["y"], name="head_mm"),
        ],
        "convlstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, FEAT, STEPS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [STEPS, 1, 10])],
        initializer=[
            numpy_helper.from_array(conv, "cw"),
            numpy_helper.from_array(np.array([STEPS, 1, 4 * FEAT], np.int64), "shape"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(r, "r"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(head, "head"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, {"w": w, "r": r}


def _lstm_feeds(n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 1, FEAT, STEPS)).astype(np.float32)} for _ in range(n)]


def test_int8_quantizes_lstm_weights_dynamically(tmp_path):
    """Static QDQ leaves an LSTM float (ORT quantizes LSTM only through DynamicQuantizeLSTM):
    ddddocr's int8 artifact came out at 0.49x its source. The LSTM's weights must be int8 on
    the 7/8-bit grid of their own channel, and the artifact must say how each op was done."""
    src, weights = _conv_lstm(tmp_path / "convlstm.onnx")
    report = edgekit.export(
        src,
        "onnxruntime",
        "int8",
        output_dir=tmp_path / "o",
        calibration=_lstm_feeds(16, 0),
        eval_data=_lstm_feeds(8, 1),
    )
    q = onnx.load(str(report.artifact))
    ops = {n.op_type for n in q.graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    lstm = next(n for n in q.graph.node if n.op_type == "DynamicQuantizeLSTM")
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    side = json.loads(report.sidecar.read_text())
    details = side["backend_details"]
    assert details["recurrent_dynamic"] == ["lstm"]
    assert details["quantized_ops"]["dynamic_int8"] == {"DynamicQuantizeLSTM": 1}
    assert details["quantized_ops"]["static_qdq"].get("Conv") == 1
    reduce = details["scheme"]["reduce_range"]
    # DynamicQuantizeLSTM inputs: X, W, R, B, seq_lens, init_h, init_c, P, W_scale, W_zp,
    # R_scale, R_zp; weights stored (dirs, in, 4*hidden), scales per output channel.
    for wi, si, zi, name in ((1, 8, 9, "w"), (2, 10, 11, "r")):
        wq, scale, zp = inits[lstm.input[wi]], inits[lstm.input[si]], inits[lstm.input[zi]]
        assert wq.dtype == np.int8 and not zp.any()
        original = weights[name].transpose(0, 2, 1)
        deq = wq.astype(np.float64) * scale.reshape(1, 1, -1)
        # Symmetric per channel: scale = max |w| / q_max, q_max 64 for ORT's 7-bit range
        # [-64, 64] or 127, and every weight rounds to the nearest step: within half a step.
        q_max = 64 if reduce else 127
        np.testing.assert_allclose(scale.ravel(), np.abs(original).max(axis=(0, 1)) / q_max, 1e-6)
        assert (np.abs(deq - original) <= scale.reshape(1, 1, -1) / 2 * (1 + 1e-6)).all()
    # Against the same export with the LSTM kept float (static QDQ alone): each of its
    # 4 * 32 * (64 + 32) weights goes from 4 bytes to 1, and each of its 2 * 128 output
    # channels adds an fp32 scale and an int8 zero point; names and the two extra node inputs
    # fit in 1 KiB.
    kept = edgekit.export(
        src,
        "onnxruntime",
        "int8",
        output_dir=tmp_path / "k",
        calibration=_lstm_feeds(16, 0),
        eval_samples=0,
        keep_float=("lstm",),
    )
    assert "LSTM" in {n.op_type for n in onnx.load(str(kept.artifact)).graph.node}
    saved = kept.size_bytes - report.size_bytes
    assert saved >= 3 * weights["w"].size + 3 * weights["r"].size - 5 * 2 * 4 * HIDDEN - 1024
    assert any("LSTM quantized dynamically" in n for n in report.notes)


def _fp16_source(tmp_path):
    """The digits-sized Conv model of _opset11_conv at opset 13, converted by onnxconverter-
    common's float16 converter with keep_io_types: fp16 initializers, float32 I/O with Casts."""
    from onnxconverter_common import float16

    path = _opset11_conv(tmp_path / "fp32.onnx")
    model = onnx.load(str(path))
    model.opset_import[0].version = 13
    half = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(tmp_path / "fp16.onnx"))
    return tmp_path / "fp16.onnx"


def test_fp16_source_at_fp16_keeps_its_graph(tmp_path):
    src = _fp16_source(tmp_path)
    rng = np.random.default_rng(1)
    x = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    report = edgekit.export(src, "onnxruntime", "fp16", output_dir=tmp_path / "o", eval_data=x)
    assert any("already stores fp16 weights" in n for n in report.notes)
    got = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(report.artifact)).graph.initializer
    }
    want = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(src)).graph.initializer}
    assert got.keys() == want.keys()
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype
        np.testing.assert_array_equal(got[name], arr)
    assert report.agreement.max_abs_diff == 0.0


@pytest.mark.parametrize("precision", ["int8", "int8-dynamic"])
def test_fp16_source_quantizes_from_an_exact_fp32_copy(tmp_path, precision):
    """fp16 -> fp32 is exact, so the copy the quantizers start from holds the source's own
    weights; int8 then follows the source within one output grid step (one weighted layer:
    e = L * D, D = range of the FP32 outputs on the calibration data / 255, plus the fp16
    source's own rounding 2 * L * 2^-11 * S; tests/test_backend_contract.py)."""
    import onnxruntime as ort

    src = _fp16_source(tmp_path)
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(24)]
    report = edgekit.export(
        src, "onnxruntime", precision, output_dir=tmp_path / "o", calibration=calib
    )
    assert any("fp16 -> fp32 is exact" in n for n in report.notes)
    q = onnx.load(str(report.artifact))
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in q.graph.initializer)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    art = ort.InferenceSession(str(report.artifact), providers=["CPUExecutionProvider"])
    want = np.stack([ref.run(None, f)[0] for f in calib])
    got = np.stack([art.run(None, f)[0] for f in calib])
    if precision == "int8":
        # One Conv (+ ReLU, 1-Lipschitz), to first order: half a step of the output grid
        # (D = output range / 255), the input's half step times the largest |W| row sum, and
        # each channel's half weight step (symmetric, max |w| / q_max) times the largest
        # |x| patch sum (27 taps); plus the fp16 source's own rounding.
        w = numpy_helper.to_array(onnx.load(str(tmp_path / "fp32.onnx")).graph.initializer[0])
        xs = np.stack([f["x"] for f in calib])
        details = json.loads(report.sidecar.read_text())["backend_details"]
        q_max = 64 if details["scheme"]["reduce_range"] else 127
        step_x = (max(0.0, xs.max()) - min(0.0, xs.min())) / 255
        step_w = np.abs(w).reshape(8, -1).max(1) / q_max
        d = (want.max() - min(0.0, want.min())) / 255
        e = (
            d / 2
            + step_x / 2 * np.abs(w).reshape(8, -1).sum(1).max()
            + (step_w / 2).max() * 27 * np.abs(xs).max()
            + 2 * 2.0**-11 * np.abs(want).max()
        )
        assert np.abs(got - want).max() <= e
    else:
        # int8-dynamic quantizes MatMul/Gemm only: this Conv graph stays float32, computing
        # the fp16 weights exactly, so only the source's fp16 activations differ.
        assert np.abs(got - want).max() <= 2 * 2.0**-11 * np.abs(want).max() * 3 * 9


def _run(model, feeds_):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds_)


def test_shortened_generated_names_compute_the_same_and_keep_source_names(
    onnx_cnn, calib, tmp_path
):
    """ORT's quantizer names what it adds after the tensor it serves (``..._DequantizeLinear_
    Output``): on the PaddlePaddle layout detector those names were a tenth of the int8 file.
    Shortening them must leave the outputs bit-identical and every source name in place."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgekit.backends.onnxruntime.names import is_generated, model_names, shorten_names

    class Reader:
        def __init__(self):
            self._it = iter(calib[:8])

        def get_next(self):
            return next(self._it, None)

    out = tmp_path / "q.onnx"
    quantize_static(
        str(onnx_cnn),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    before = onnx.load(str(out))
    source = model_names(onnx.load(str(onnx_cnn)))
    after = onnx.ModelProto()
    after.CopyFrom(before)
    count = shorten_names(after, keep=source)
    generated = {n for n in model_names(before) if is_generated(n) and n not in source}
    assert count == len(generated) > 0
    names = model_names(after)
    assert not generated & names
    assert model_names(before) & source <= names  # no source name renamed or lost
    assert [v.name for v in after.graph.input] == [v.name for v in before.graph.input]
    assert [v.name for v in after.graph.output] == [v.name for v in before.graph.output]
    assert after.ByteSize() < before.ByteSize()
    for feed in calib[:4]:
        for a, b in zip(_run(before, feed), _run(after, feed), strict=True):
            assert np.array_equal(a, b)


def test_shortened_names_inside_if_subgraphs(tmp_path):
    """Generated names inside If branches are renamed consistently with the outer graph, a
    source name that happens to look generated (``gain_scale``) is kept, and no short name
    collides with an existing one (``q0`` is taken here)."""
    from onnx import TensorProto, helper

    from edgekit.backends.onnxruntime.names import model_names, shorten_names

    f = TensorProto.FLOAT

    def qdq(prefix, x, scale, zp):
        return [
            helper.make_node(
                "QuantizeLinear",
                [x, scale, zp],
                [f"{prefix}_QuantizeLinear_Output"],
                name=f"{prefix}_QuantizeLinear",
            ),
            helper.make_node(
                "DequantizeLinear",
                [f"{prefix}_QuantizeLinear_Output", scale, zp],
                [f"{prefix}_DequantizeLinear_Output"],
                name=f"{prefix}_DequantizeLinear",
            ),
        ]

    then = helper.make_graph(
        [
            *qdq("t", "h", "h_scale", "h_zero_point"),
            helper.make_node("Relu", ["t_DequantizeLinear_Output"], ["then_out"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", f, [1, 4])],
    )
    weight = helper.make_tensor("w_quantized", TensorProto.INT8, [1, 4], [3, -7, 50, 127])
    other = helper.make_graph(
        [
            helper.make_node(
                "DequantizeLinear",
                ["w_quantized", "w_quantized_scale", "w_quantized_zero_point"],
                ["w_DequantizeLinear_Output_1"],
                name="w_DequantizeLinear_1",
            ),
            helper.make_node(
                "Add", ["h_DequantizeLinear_Output", "w_DequantizeLinear_Output_1"], ["else_out"]
            ),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", f, [1, 4])],
        initializer=[
            weight,
            helper.make_tensor("w_quantized_scale", f, [], [0.05]),
            helper.make_tensor("w_quantized_zero_point", TensorProto.INT8, [], [0]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "gain_scale"], ["q0"], name="gain"),
            *qdq("x", "q0", "x_scale", "x_zero_point"),
            helper.make_node("Tanh", ["x_DequantizeLinear_Output"], ["h"]),
            *qdq("h", "h", "h_scale", "h_zero_point"),
            helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", f, [1, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", f, [1, 4])],
        initializer=[
            helper.make_tensor("gain_scale", f, [], [1.5]),
            helper.make_tensor("x_scale", f, [], [0.02]),
            helper.make_tensor("x_zero_point", TensorProto.UINT8, [], [128]),
            helper.make_tensor("h_scale", f, [], [0.01]),
            helper.make_tensor("h_zero_point", TensorProto.UINT8, [], [128]),
        ],
    )
    before = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before.ir_version = 8
    onnx.checker.check_model(before)
    source = {"x", "cond", "y", "gain", "gain_scale", "q0", "h", "then_out", "else_out"}
    after = onnx.ModelProto()
    after.CopyFrom(before)
    count = shorten_names(after, keep=source)
    names = model_names(after)
    assert source <= names
    assert count == len(model_names(before) - source)
    assert len(names) == len(model_names(before))  # one-to-one: nothing merged
    inner = next(n for n in after.graph.node if n.op_type == "If")
    branch_inputs = {i for a in inner.attribute for n in a.g.node for i in n.input}
    assert not {"h_DequantizeLinear_Output", "t_QuantizeLinear_Output"} & branch_inputs
    rng = np.random.default_rng(0)
    for cond in (True, False):
        x = rng.standard_normal((1, 4)).astype(np.float32)
        feed = {"x": x, "cond": np.array(cond)}
        for a, b in zip(_run(before, feed), _run(after, feed), strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("precision", ["int8", "int8-dynamic"])
def test_export_reports_shortened_names(onnx_cnn, calib, tmp_path, precision):
    report = edgekit.export(
        onnx_cnn,
        "onnxruntime",
        precision,
        output_dir=tmp_path,
        calibration=calib[:8],
        eval_samples=0,
    )
    details = json.loads(report.sidecar.read_text())["backend_details"]
    assert details["generated_names_shortened"] > 0
    # the Convs keep their names (--keep-float names them); ReLUs are fused away, and
    # int8-dynamic replaces the Gemms
    weighted = {n.name for n in onnx.load(str(onnx_cnn)).graph.node if n.op_type == "Conv"}
    assert weighted <= {n.name for n in onnx.load(str(report.artifact)).graph.node}
