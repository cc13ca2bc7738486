"""OpenVINO backend specifics: sizes, the f32 hint against the device default, the compile
cache; NNCF options reach the IR; unconvertible models and absent devices give clear errors.
Every source format at every precision against the FP32 source (and fp32 really running f32)
is the backend contract (tests/test_backend_contract.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from conftest import feeds
from onnx import TensorProto, helper, numpy_helper
from onnx_models import conv_model, linear_model, linear_reference

import edgekit
from edgekit import samples
from edgekit.errors import ConversionError, DeviceError, UsageError

ov = pytest.importorskip("openvino")
from edgekit.backends.openvino import BACKEND  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Compiled-model cache of this module in a temporary folder, not in ~/.cache."""
    path = tmp_path_factory.mktemp("ov-cache")
    before = os.environ.get("EDGEKIT_CACHE_DIR")
    os.environ["EDGEKIT_CACHE_DIR"] = str(path)
    yield path / "openvino"
    if before is None:
        os.environ.pop("EDGEKIT_CACHE_DIR", None)
    else:
        os.environ["EDGEKIT_CACHE_DIR"] = before


def test_sizes_against_fp32(torch_cnn, digits, tmp_path):
    common = {
        "output_dir": tmp_path,
        "example_inputs": (np.zeros((1, 1, 32, 32), np.float32),),
        "calibration": feeds(digits[0][:32], "input"),
        "eval_samples": 4,
    }
    reports = {
        p: edgekit.export(torch_cnn, "openvino", p, **common)
        for p in ("fp32", "fp16", "int8", "int4-weights")
    }
    bins = {p: r.artifact.with_suffix(".bin") for p, r in reports.items()}
    # An in-memory module has no file: its f32 weights are the size the summary compares with.
    assert reports["fp32"].size_ratio == pytest.approx(1.0, abs=0.02)
    size = {p: b.stat().st_size for p, b in bins.items()}
    assert size["int8"] <= 0.3 * size["fp32"], size
    assert size["fp16"] <= 0.51 * size["fp32"], size
    assert size["int4-weights"] < size["int8"], size


def test_fp32_hint_versus_device_default(onnx_cnn, digits, tmp_path):
    report = edgekit.export(onnx_cnn, "openvino", "fp32", output_dir=tmp_path, eval_samples=4)
    forced = BACKEND.open_session(report.artifact)
    default = BACKEND.open_session(report.artifact, inference_precision="default")
    # The device's own default, asked of OpenVINO directly, is what runs without the hint.
    device_default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert forced.info["inference_precision"] == "f32"
    assert default.info["inference_precision"] == device_default
    x = samples.to_input(digits[2][:16])
    a = np.concatenate([forced.run({"image": x[i : i + 1]})[0] for i in range(len(x))])
    b = np.concatenate([default.run({"image": x[i : i + 1]})[0] for i in range(len(x))])
    if device_default == "bf16":
        # bf16 keeps 8 mantissa bits: visibly different from f32, as the issue warns.
        assert np.abs(a - b).max() > 1e-3


def test_compiled_models_are_cached(cache_dir, tmp_path):
    path = tmp_path / "lin.onnx"
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    onnx.save(linear_model(w, np.zeros(3, np.float32), (1, 4)), str(path))
    report = edgekit.export(path, "openvino", "fp32", output_dir=tmp_path, eval_samples=2)
    blobs = set(cache_dir.glob("*.blob"))
    assert blobs, "opening the artifact should have cached its compiled form"
    session = edgekit.load(report.artifact)
    assert set(cache_dir.glob("*.blob")) == blobs  # same model + config: no new compilation
    assert session.info["cache_dir"] == str(cache_dir)


# ---------------------------------------------------------------- recipe flags -> NNCF


def _weight_scales(xml) -> list[np.ndarray]:
    """Scales that dequantize int8 weight constants (Constant i8 -> Convert -> Multiply)."""
    model = ov.Core().read_model(str(xml))
    scales = []
    for op in model.get_ops():
        if op.get_type_name() != "Multiply":
            continue
        a, b = (v.get_node() for v in op.input_values())
        for conv, scale in ((a, b), (b, a)):
            src = conv.input_value(0).get_node() if conv.get_type_name() == "Convert" else None
            if (
                src is not None
                and src.get_type_name() == "Constant"
                and src.get_output_element_type(0).get_type_name() == "i8"
                and scale.get_type_name() == "Constant"
            ):
                scales.append(scale.get_data())
    return scales


@pytest.fixture(scope="module")
def conv_calib():
    rng = np.random.default_rng(3)
    return [{"x": rng.standard_normal((1, 2, 6, 6)).astype(np.float32)} for _ in range(16)]


@pytest.fixture(scope="module")
def conv_path(tmp_path_factory):
    rng = np.random.default_rng(2)
    # Output channels of very different magnitude: per-channel scales must differ.
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    weight *= np.array([1.0, 0.1, 3.0, 0.5], np.float32)[:, None, None, None]
    path = tmp_path_factory.mktemp("conv") / "conv.onnx"
    onnx.save(conv_model(weight), str(path))
    return path


@pytest.mark.parametrize("per_channel", [True, False])
def test_per_channel_flag_reaches_weight_scales(per_channel, conv_path, conv_calib, tmp_path):
    report = edgekit.export(
        conv_path,
        "openvino",
        "int8",
        output_dir=tmp_path,
        calibration=conv_calib,
        eval_samples=4,
        per_channel=per_channel,
    )
    (scale,) = _weight_scales(report.artifact)
    if per_channel:
        assert scale.size == 4 and len(np.unique(scale)) == 4
    else:
        assert scale.size == 1
    assert json.loads(report.sidecar.read_text())["backend_details"]["quantization"][
        "weights"
    ].endswith("per-channel" if per_channel else "per-tensor")


def _int8_weights(xml) -> np.ndarray:
    model = ov.Core().read_model(str(xml))
    (weights,) = (
        op.get_data()
        for op in model.get_ops()
        if op.get_type_name() == "Constant"
        and op.get_output_element_type(0).get_type_name() == "i8"
    )
    return weights


@pytest.mark.parametrize("reduce_range", [False, True])
def test_reduce_range_gives_7_bit_weights(reduce_range, conv_path, conv_calib, tmp_path):
    report = edgekit.export(
        conv_path,
        "openvino",
        "int8",
        output_dir=tmp_path,
        calibration=conv_calib,
        eval_samples=0,
        reduce_range=reduce_range,
    )
    # Each output channel's largest weight maps to the end of the range: 127 or 63.
    peak = np.abs(_int8_weights(report.artifact).astype(np.int32)).reshape(4, -1).max(1)
    assert set(peak.tolist()) == ({63} if reduce_range else {127})


def test_keep_float_leaves_the_node_unquantized(conv_path, conv_calib, tmp_path):
    common = {"output_dir": tmp_path, "calibration": conv_calib, "eval_samples": 4}
    quantized = edgekit.export(conv_path, "openvino", "int8", name="q", **common)
    kept = edgekit.export(conv_path, "openvino", "int8", name="k", keep_float=("conv",), **common)
    assert len(_weight_scales(quantized.artifact)) == 1
    assert _weight_scales(kept.artifact) == []
    with pytest.raises(
        UsageError, match=r"keep_float 'nope' matches no layer of the openvino model.*conv"
    ):
        edgekit.export(conv_path, "openvino", "int8", keep_float=("nope",), **common)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"calibration_method": "entropy"}, "calibration_method entropy"),
        ({"io_dtype": "int8"}, "io_dtype int8"),
    ],
)
def test_flags_nncf_cannot_honour_are_errors(fields, match, conv_path, conv_calib, tmp_path):
    with pytest.raises(UsageError, match=match):
        edgekit.export(
            conv_path, "openvino", "int8", output_dir=tmp_path, calibration=conv_calib, **fields
        )
    assert not list(tmp_path.iterdir())


def test_per_tensor_weight_compression_is_refused(conv_path, tmp_path):
    with pytest.raises(UsageError, match="per_channel=False is not available with int8-weights"):
        edgekit.export(
            conv_path, "openvino", "int8-weights", output_dir=tmp_path, per_channel=False
        )


def test_calibration_methods_set_the_input_range(conv_path, conv_calib, tmp_path):
    """minmax is the global min/max of the calibration data (not NNCF's default mean of
    per-sample extremes); percentile is the per-sample quantile, averaged over samples."""

    def input_range(report):
        model = ov.Core().read_model(str(report.artifact))
        fq = next(op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
        return tuple(float(fq.input_value(i).get_node().get_data().ravel()[0]) for i in (1, 2))

    common = {
        "output_dir": tmp_path,
        "calibration": conv_calib,
        "eval_samples": 0,
        "activation_symmetric": False,
    }
    mm = edgekit.export(conv_path, "openvino", "int8", name="mm", **common)
    pc = edgekit.export(
        conv_path,
        "openvino",
        "int8",
        name="pc",
        calibration_method="percentile",
        percentile=99.0,
        **common,
    )
    x = [f["x"].ravel() for f in conv_calib]
    lo, hi = input_range(mm)
    # NNCF nudges one end so that 0 is a quantization level; on this data, the lower one.
    assert hi == pytest.approx(max(float(v.max()) for v in x), rel=1e-6)
    assert lo == pytest.approx(min(float(v.min()) for v in x), rel=2e-2)
    assert input_range(pc)[1] == pytest.approx(np.mean([np.quantile(v, 0.99) for v in x]), rel=1e-2)


@pytest.mark.parametrize("symmetric", [True, False])
def test_symmetric_flag_selects_the_nncf_preset(symmetric, conv_path, conv_calib, tmp_path):
    # Shifted data, so that a symmetric and an asymmetric range are far apart.
    calib = [{"x": f["x"] + np.float32(1.5)} for f in conv_calib]
    report = edgekit.export(
        conv_path,
        "openvino",
        "int8",
        output_dir=tmp_path,
        calibration=calib,
        eval_samples=0,
        activation_symmetric=symmetric,
    )
    details = json.loads(report.sidecar.read_text())["backend_details"]["quantization"]
    assert details["preset"] == ("performance" if symmetric else "mixed")
    model = ov.Core().read_model(str(report.artifact))
    fq = next(op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
    lo, hi = (float(fq.input_value(i).get_node().get_data().ravel()[0]) for i in (1, 2))
    x = np.concatenate([f["x"] for f in calib])
    if symmetric:  # 256 levels around zero: [-amax * 128/127, amax]
        amax = float(np.abs(x).max())
        assert hi == pytest.approx(amax, rel=1e-6) and lo == pytest.approx(-amax * 128 / 127)
    else:  # the data's own range, nudged a little so that 0 is a level
        assert hi == pytest.approx(float(x.max()), rel=0.02)
        assert lo == pytest.approx(float(x.min()), rel=0.05)


# ---------------------------------------------------------------- transformer-style graphs


def _attention_model(rng) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One self-attention block on x[1, 8, 32] built with onnx.helper."""
    d = 32
    w = {k: (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32) for k in "qkvo"}
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"], name="mix"),
        helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj"),
    ]
    inits = [numpy_helper.from_array(v, f"w{k}") for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "scale"))
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, d])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w


def _attention_reference(x, w):
    q, k, v = x @ w["q"], x @ w["k"], x @ w["v"]
    s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v) @ w["o"]


# Unit roundoff of what the float parts run in (session.info["inference_precision"]).
_ROUNDOFF = {"f32": 2.0**-24, "bf16": 2.0**-8, "f16": 2.0**-11}


def _attention_bound(precision, w, xs, overflow_fix, inference_precision):
    """The relative RMS error the block may show, from the grids this precision rounds to.

    Rounding to a grid of step s moves a value by at most s/2; a weight's rounding changes its
    layer's output by at most (s_c/2)/rms(W_c) relative (per output channel c, inputs not
    aligned with the errors), an activation's by (s/2)/rms(t); to first order those relative
    errors add up along the block, through softmax and the later MatMuls. The grids:

    * int8: weights symmetric per channel, s_c = max|W_c|/127, or /63 where NNCF's overflow
      fix makes them 7-bit (first_layer_only: q/k/v, which read the input; enable: all);
      activations at the MatMul inputs (x, q, k, v, p, a) on 8 bits over their calibrated
      range, s = (max - min)/255;
    * int8-weights: NNCF INT8_ASYM per channel, s_c = (max - min of W_c)/255;
    * int4-weights: INT4_SYM, s_c = max|W_c|/7 at most (groups of 128 fall back to the 32 input
      features here: a group's max is at most the channel's), except the last MatMul, which
      NNCF's backup mode keeps int8 asymmetric;

    plus float rounding of the 6 MatMuls, 2 * 6 * u (u from the precision the float parts
    run in: f32 everywhere, bf16 for int8's float parts on AVX512-BF16/AMX CPUs). This holds
    with and without VNNI: the kernels change how integer products are summed, not the grids;
    where u8 x s8 could saturate without VNNI the overflow fix's 7-bit step is in the bound."""

    def channel(W, step):
        return float(np.max(step / 2 / np.sqrt(np.mean(W**2, axis=0))))

    def sym(W, levels):
        return channel(W, np.abs(W).max(axis=0) / levels)

    def asym(W):
        return channel(W, np.ptp(W, axis=0) / 255)

    if precision == "int8-weights":
        total = sum(asym(w[k]) for k in "qkvo")
    elif precision == "int4-weights":
        total = sum(sym(w[k], 7) for k in "qkv") + asym(w["o"])
    else:
        seven = {"enable": "qkvo", "first_layer_only": "qkv"}.get(overflow_fix, "")
        total = sum(sym(w[k], 63 if k in seven else 127) for k in "qkvo")
        q, k, v = xs @ w["q"], xs @ w["k"], xs @ w["v"]
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        for t in (xs, q, k, v, p, p @ v):
            total += float(np.ptp(t) / 255 / 2 / np.sqrt(np.mean(t**2)))
    return total + 2 * 6 * _ROUNDOFF.get(inference_precision, _ROUNDOFF["bf16"])


@pytest.mark.parametrize("precision", ["int8", "int8-weights", "int4-weights"])
def test_attention_block(precision, tmp_path):
    """An attention block is recognised (NNCF's TRANSFORMER model type) and every OpenVINO
    quantization stays within the error its grids allow (_attention_bound) of a numpy
    computation of the block. Inputs have two outlier channels, as transformer activations
    do."""
    rng = np.random.default_rng(5)
    model, w = _attention_model(rng)
    path = tmp_path / "attn.onnx"
    onnx.save(model, str(path))
    gain = np.ones(32, np.float32)
    gain[[3, 17]] = 6.0
    xs = (rng.standard_normal((52, 1, 8, 32)) * gain).astype(np.float32)
    report = edgekit.export(
        path,
        "openvino",
        precision,
        output_dir=tmp_path,
        calibration=[{"x": x} for x in xs[:32]],
        eval_samples=0,
    )
    details = json.loads(report.sidecar.read_text())["backend_details"]["quantization"]
    assert details["model_type"] == "transformer"
    session = edgekit.load(report.artifact)
    errors = []
    for x in xs[32:]:
        want = _attention_reference(x, w)
        got = session.run({"x": x})[0]
        errors.append(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))
    bound = _attention_bound(
        precision,
        w,
        xs[:32],
        details.get("overflow_fix"),
        session.info.get("inference_precision"),
    )
    assert np.mean(errors) <= bound, (np.mean(errors), bound)


def test_cnn_is_not_taken_for_a_transformer(conv_path, conv_calib, tmp_path):
    report = edgekit.export(
        conv_path, "openvino", "int8", output_dir=tmp_path, calibration=conv_calib, eval_samples=2
    )
    details = json.loads(report.sidecar.read_text())["backend_details"]["quantization"]
    assert details["model_type"] == "default"


# ---------------------------------------------------------------- errors


def _det_in_if_branch() -> onnx.ModelProto:
    """x -> If(sum(x) > 0) then Det(x) else ReduceSum(x): Det is standard ONNX that ONNX
    Runtime runs and OpenVINO's ONNX frontend has no conversion rule for."""
    then_g = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2])],
    )
    else_g = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y_else"], keepdims=0)],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        "det_in_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_unconvertible_onnx_names_the_op_and_a_backend_that_takes_it(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(_det_in_if_branch(), str(path))
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"operation Det\b.*target onnxruntime"):
        edgekit.export(path, "openvino", "fp32", output_dir=out, eval_samples=2)
    assert not out.exists(), "a failed export must leave nothing behind"
    # The suggestion holds: ONNX Runtime exports the same model and matches numpy.
    report = edgekit.export(path, "onnxruntime", "fp32", output_dir=out, eval_samples=2)
    x = np.random.default_rng(0).random((2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(
        edgekit.load(report.artifact).run({"x": x})[0], np.linalg.det(x), rtol=1e-4
    )


def test_tflite_custom_op_is_named(tmp_path):
    """A TFLite file with a custom op (MatrixDeterminant). edgekit's TFLite intake cannot
    allocate such a model in LiteRT, so the backend's converter is called with the file."""
    import tensorflow as tf

    from edgekit.model import SourceModel, TensorSpec

    @tf.function(input_signature=[tf.TensorSpec((1, 3, 3), tf.float32, name="x")])
    def det(x):
        return tf.linalg.det(x * 2.0)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([det.get_concrete_function()], det)
    converter.allow_custom_ops = True
    path = tmp_path / "custom.tflite"
    path.write_bytes(converter.convert())
    spec = TensorSpec("x", "float32", (1, 3, 3))
    source = SourceModel("tflite", [spec], [], None, None, None, path=path)
    with pytest.raises(
        ConversionError,
        # The TFLite backend takes .tflite sources too, so the message names it.
        match=r"operation MatrixDeterminant; try another backend \(--target onnxruntime, "
        r"--target tflite\)",
    ):
        BACKEND.convert(source, tmp_path)


def test_absent_device_lists_the_available_ones(tmp_path):
    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(np.eye(4, 3, dtype=np.float32), np.zeros(3, np.float32), (1, 4)), path)
    available = ov.Core().available_devices
    if any(d.startswith(("NPU", "GPU")) for d in available):
        pytest.skip("this check needs a machine without an NPU and a GPU")
    out = tmp_path / "out"
    with pytest.raises(DeviceError, match="NPU is not available.*available: " + available[0]):
        edgekit.export(path, "openvino", "fp32", output_dir=out, device="NPU", eval_samples=2)
    with pytest.raises(DeviceError, match="NPU is not available"):
        edgekit.export(path, "intel-npu", "fp32", output_dir=out, eval_samples=2)
    assert not out.exists()
    report = edgekit.export(path, "openvino", "fp32", output_dir=out, eval_samples=2)
    with pytest.raises(DeviceError, match="GPU is not available"):
        BACKEND.open_session(report.artifact, device="AUTO:GPU")


def test_auto_device_runs_true_f32(tmp_path):
    path = tmp_path / "lin.onnx"
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((16, 8)).astype(np.float32), np.zeros(8, np.float32)
    onnx.save(linear_model(w, b, (1, 16)), str(path))
    report = edgekit.export(path, "openvino", "fp32", output_dir=tmp_path, eval_samples=2)
    session = BACKEND.open_session(report.artifact, device="AUTO")
    assert session.info["device"] == "AUTO" and session.info["execution_devices"]
    assert session.info["layer_precisions"] == {"f32": 1}
    x = rng.standard_normal((1, 16)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})[0], linear_reference(x, w, b), rtol=1e-5)


def test_bad_feeds_are_data_errors(tmp_path):
    from edgekit.errors import DataError

    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(np.eye(4, 3, dtype=np.float32), np.zeros(3, np.float32), (1, 4)), path)
    report = edgekit.export(path, "openvino", "fp32", output_dir=tmp_path, eval_samples=2)
    session = edgekit.load(report.artifact)
    with pytest.raises(DataError, match="input 'x' missing"):
        session.run({"y": np.zeros((1, 4), np.float32)})
    with pytest.raises(DataError, match=r"shape \[1, 5\]; the model expects \[1, 4\]"):
        session.run({"x": np.zeros((1, 5), np.float32)})


def test_missing_bin_is_a_format_error(tmp_path):
    from edgekit.errors import ModelFormatError

    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(np.eye(4, 3, dtype=np.float32), np.zeros(3, np.float32), (1, 4)), path)
    report = edgekit.export(path, "openvino", "fp32", output_dir=tmp_path, eval_samples=2)
    report.artifact.with_suffix(".bin").unlink()
    with pytest.raises(ModelFormatError, match=r"keep the \.bin file next to the \.xml"):
        edgekit.load(report.artifact)


def test_inspect_target_report(tmp_path, conv_path):
    det = tmp_path / "det.onnx"
    onnx.save(_det_in_if_branch(), str(det))
    bad = edgekit.describe(det, target="openvino")["target_report"]
    assert bad["convertible"] is False and "Det" in bad["lines"][0]
    good = edgekit.describe(conv_path, target="intel-npu")["target_report"]
    assert good["convertible"] is True and good["openvino_ops"] == {"Convolution": 1, "Relu": 1}
    assert any("NPU is not available" in line for line in good["lines"])
