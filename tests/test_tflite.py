"""TFLite/LiteRT backend specifics: PyTorch exports in channels-last, the int16x8 warning,
integer I/O, malformed and crash-inducing files, the ONNX refusal and the Edge TPU report. Real
converters, quantizer and runtime throughout. Every source at every precision against the FP32
source is the backend contract (tests/test_backend_contract.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import export_digits, feeds

import edgekit
from edgekit import samples
from edgekit.errors import ModelFormatError, UsageError

N_CALIB = 64
N_EVAL = 100
HAS_LITERT_TORCH = importlib.util.find_spec("litert_torch") is not None


def _keras_ref(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))


def _torch_ref(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _export(model, precision, tmp_path, digits, name, layout, **kwargs):
    return export_digits(
        model, "tflite", precision, digits, tmp_path, name, layout, N_CALIB, N_EVAL, **kwargs
    )


def test_int16x8_warns_it_runs_on_reference_kernels(keras_cnn, digits, tmp_path):
    report = _export(keras_cnn, "int16x8", tmp_path, digits, "image", "NHWC")
    assert any("reference kernels" in w for w in report.warnings)


def test_torch_export_is_channels_last_and_takes_either_layout(torch_fp32_tflite, digits):
    meta = json.loads(
        torch_fp32_tflite.with_name(torch_fp32_tflite.name + ".edgekit.json").read_text()
    )
    # Exported channels-last, and the sidecar says so.
    assert meta["inputs"][0]["shape"] == [1, 32, 32, 1]
    layout = meta["backend_details"]["input_layout"]["input"]
    assert layout["layout"] == "NHWC" and layout["source_shape"] == [1, 1, 32, 32]
    # The same pictures fed in the artifact's own NHWC layout give the same outputs.
    session = edgekit.load(torch_fp32_tflite, threads=1)
    x = samples.to_input(digits[2][:4], layout="NCHW")
    nhwc = np.transpose(x, (0, 2, 3, 1))
    for i in range(len(x)):
        np.testing.assert_array_equal(
            session.run({"input": nhwc[i : i + 1]})[0], session.run({"input": x[i : i + 1]})[0]
        )


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_integer_io(io, keras_cnn, digits, tmp_path):
    report = _export(keras_cnn, "int8", tmp_path, digits, "image", "NHWC", io_dtype=io)
    session = edgekit.load(report.artifact)
    (spec_in,), (spec_out,) = session.inputs, session.outputs
    assert spec_in.dtype == io and spec_out.dtype == io
    meta = json.loads(report.sidecar.read_text())
    assert meta["inputs"][0]["quantization"]["dtype"] == io
    s_in, z_in = spec_in.quantization["scale"][0], spec_in.quantization["zero_point"][0]
    s_out, z_out = spec_out.quantization["scale"][0], spec_out.quantization["zero_point"][0]
    # Calibration pictures span [0, 1]: 256 levels over that range.
    assert s_in == pytest.approx(1 / 255, rel=0.02)
    info = np.iinfo(io)
    x = samples.to_input(digits[2][:N_EVAL], layout="NHWC")
    xq = np.clip(np.round(x / s_in) + z_in, info.min, info.max).astype(io)
    raw = np.concatenate([session.run({"image": xq[i : i + 1]})[0] for i in range(len(x))])
    assert raw.dtype == np.dtype(io)
    got = (raw.astype(np.float32) - z_out) * s_out
    want = _keras_ref(keras_cnn, x)
    # Derived as in tests/test_backend_contract.py, not a fixed top-1 rate (AVX2-only CPUs run
    # other int8 kernels): e = one step of the logits' 8-bit grid per weighted layer plus f32
    # rounding; a digit whose FP32 top-1/top-2 margin exceeds 2e must keep its class.
    layers = sum(1 for la in keras_cnn.layers if la.weights)
    calib_want = _keras_ref(keras_cnn, samples.to_input(digits[0][:N_CALIB], layout="NHWC"))
    e = layers * float(np.ptp(calib_want)) / 255 + 2 * layers * 2.0**-24 * float(np.abs(want).max())
    top2 = np.sort(want, axis=1)[:, -2:]
    counted = top2[:, 1] - top2[:, 0] > 2 * e
    assert counted.mean() >= 0.5, f"only {counted.sum()} digits beyond 2e = {2 * e:.3g}"
    flipped = np.flatnonzero(counted & (got.argmax(1) != want.argmax(1)))
    assert not len(flipped), f"{len(flipped)} digits with an FP32 margin above 2e changed class"
    assert np.abs(got - want).max() < 0.25 * float(np.ptp(want))


def _crash_model(valid: bytes) -> bytes:
    """A model LiteRT segfaults on: two init subgraphs that CALL_ONCE each other forever."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(valid))
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.CALL_ONCE
    code.deprecatedBuiltinCode = 127  # the placeholder for codes above 127
    code.version = 1
    model.operatorCodes.append(code)

    def call(target: int):
        op = schema.OperatorT()
        op.opcodeIndex = len(model.operatorCodes) - 1
        op.inputs, op.outputs = [], []
        op.builtinOptionsType = schema.BuiltinOptions.CallOnceOptions
        op.builtinOptions = schema.CallOnceOptionsT()
        op.builtinOptions.initSubgraphIndex = target
        return op

    first = len(model.subgraphs)
    for target in (first + 1, first):
        graph = schema.SubGraphT()
        graph.tensors, graph.inputs, graph.outputs = [], [], []
        graph.operators = [call(target)]
        model.subgraphs.append(graph)
    model.subgraphs[0].operators.insert(0, call(first))
    return bytes(fbu.convert_object_to_bytearray(model))


@pytest.fixture(scope="module")
def fp32_keras_tflite(keras_cnn, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    return _export(keras_cnn, "fp32", out, digits, "image", "NHWC").artifact


def test_crashing_tflite_is_an_error_not_a_dead_process(fp32_keras_tflite, tmp_path):
    bad = tmp_path / "crash.tflite"
    bad.write_bytes(_crash_model(fp32_keras_tflite.read_bytes()))
    # Independent proof that the file kills a process that loads and runs it with LiteRT.
    child = (
        "import sys, numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "i = Interpreter(model_path=sys.argv[1]); i.allocate_tensors()\n"
        "d = i.get_input_details()[0]; i.set_tensor(d['index'], np.zeros(d['shape'], d['dtype']))\n"
        "i.invoke()\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(bad)], capture_output=True)
    assert proc.returncode < 0, "the crafted model no longer crashes LiteRT"
    with pytest.raises(ModelFormatError, match="crashed"):
        edgekit.load(bad)
    with pytest.raises(ModelFormatError, match="crashed"):
        edgekit.describe(bad)
    cli = subprocess.run(
        [sys.executable, "-m", "edgekit", "inspect", str(bad)], capture_output=True, text=True
    )
    assert cli.returncode == 4
    assert cli.stderr.startswith("edgekit: error:") and "crashed" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_corrupt_and_random_tflite(fp32_keras_tflite, tmp_path):
    data = fp32_keras_tflite.read_bytes()
    cases = {
        "truncated.tflite": data[: len(data) // 3],
        "flipped.tflite": bytes(b ^ 0xFF if 8 <= i < 4096 else b for i, b in enumerate(data)),
        "random.tflite": b"\x1c\x00\x00\x00TFL3" + np.random.default_rng(0).bytes(4096),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ModelFormatError, match=name):
            edgekit.load(path)


def test_flags_tflite_cannot_honour(keras_cnn, digits, tmp_path):
    cases = [
        ({"precision": "int8", "reduce_range": True}, "reduce_range"),
        ({"precision": "int8", "calibration_method": "entropy"}, "calibration_method entropy"),
        ({"precision": "fp16", "io_dtype": "int8"}, "io_dtype int8"),
        ({"precision": "int8", "keep_float": ("no_such_layer",)}, "keep_float"),
    ]
    x_train = digits[0]
    for kwargs, flag in cases:
        with pytest.raises(UsageError, match=flag):
            edgekit.export(
                keras_cnn,
                "tflite",
                output_dir=tmp_path,
                calibration=feeds(x_train[:8], "image", "NHWC"),
                **kwargs,
            )


def _neg_model():
    """The digits CNN with a NEG in the middle: LiteRT's int8 NEG is not one the quantizer
    handles, so it stays a float island between a DEQUANTIZE and a QUANTIZE."""
    import keras

    inp = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.ops.negative(x)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out)


def test_edgetpu_report(keras_cnn, digits, tmp_path):
    full = _export(keras_cnn, "int8", tmp_path / "full", digits, "image", "NHWC")
    assert not [w for w in full.warnings if "float" in w]
    info = edgekit.describe(full.artifact, target="edgetpu")["target_report"]
    assert info["integer_only"] is True
    assert any("all" in ln and "mappable" in ln for ln in info["lines"])

    island = _export(
        _neg_model(), "int8", tmp_path / "island", digits, "image", "NHWC", io_dtype="uint8"
    )
    assert any("float island" in w and "NEG" in w for w in island.warnings)
    info = edgekit.describe(island.artifact, target="edgetpu")["target_report"]
    assert info["integer_only"] is False
    assert any("NEG" in op for isl in info["float_islands"] for op in isl)
    reject = [ln for ln in info["lines"] if "would reject" in ln]
    assert reject and ("DEQUANTIZE" in reject[0] or "NEG" in reject[0])
    # The plain tflite target reports islands but says nothing about an Edge TPU.
    plain = edgekit.describe(island.artifact, target="tflite")["target_report"]
    assert not any("Edge TPU" in ln for ln in plain["lines"])


# ---------------------------------------------------------------- source names in inspect and run


@pytest.fixture(scope="module")
def torch_fp32_tflite(torch_cnn, digits, tmp_path_factory):
    if not HAS_LITERT_TORCH:
        pytest.skip("litert-torch is not installed: pip install 'edgekit[torch-tflite]'")
    out = tmp_path_factory.mktemp("torch_fp32")
    example = (np.zeros((1, 1, 32, 32), np.float32),)
    return _export(torch_cnn, "fp32", out, digits, "input", "NCHW", example_inputs=example).artifact


def test_inspect_shows_source_names_beside_the_artifacts_own(torch_fp32_tflite, capsys):
    """The names edgekit's sessions and ``benchmark --inputs`` take, with the signature key,
    tensor name and layout read from LiteRT itself as extra fields."""
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.cli import main

    interp = Interpreter(model_path=str(torch_fp32_tflite))
    (key,) = interp.get_signature_list()["serving_default"]["inputs"]
    tensor = interp.get_input_details()[0]["name"]
    assert main(["inspect", str(torch_fp32_tflite), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] == [
        {
            "name": "input",
            "dtype": "float32",
            "shape": [1, 32, 32, 1],
            "signature": key,
            "tensor": tensor,
            "layout": "NHWC",
            "source_layout": "NCHW",
            "source_shape": [1, 1, 32, 32],
        }
    ]
    session = edgekit.load(torch_fp32_tflite)
    assert [o["name"] for o in info["outputs"]] == [s.name for s in session.outputs]
    assert info["outputs"][0]["tensor"] == interp.get_output_details()[0]["name"]


def test_inspect_names_a_keras_export_by_its_source_input(fp32_keras_tflite):
    from ai_edge_litert.interpreter import Interpreter

    (inp,) = edgekit.describe(fp32_keras_tflite)["inputs"]
    assert inp["name"] == "image" and inp["shape"] == [1, 32, 32, 1]
    assert (
        inp["tensor"]
        == Interpreter(model_path=str(fp32_keras_tflite)).get_input_details()[0]["name"]
    )
    assert "layout" not in inp  # exported in its own (NHWC) layout


def test_tflite_source_runs_source_names_in_either_layout(torch_fp32_tflite, torch_cnn, digits):
    """As a source model the file keeps its tensor names (OpenVINO's TFLite frontend uses
    them) and also takes the PyTorch model's input name in NCHW or NHWC."""
    source = edgekit.load_model(torch_fp32_tflite)
    x = samples.to_input(digits[2][:4], layout="NCHW")
    nhwc = np.transpose(x, (0, 2, 3, 1))
    want = _torch_ref(torch_cnn, x)
    tensor = source.inputs[0].name
    for feed in (
        lambda i: {"input": x[i : i + 1]},
        lambda i: {"input": nhwc[i : i + 1]},
        lambda i: {tensor: nhwc[i : i + 1]},
    ):
        got = np.concatenate([source.run(feed(i))[0] for i in range(len(x))])
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
