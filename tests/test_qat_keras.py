"""Keras 3 QAT (edgekit compress --qat on a .keras/.h5 model) and --precision as-trained.

A tiny digits CNN (16x16: conv-BN-ReLU, depthwise-BN-ReLU, conv with fused ReLU, max-pool,
dense) is trained for a few steps, QAT'd for one epoch, saved, and exported as-trained to
TFLite, ONNX Runtime and OpenVINO. The references are independent of the exporters: the ranges
read from the QAT model's own FakeQuant layers and kernels (with TensorFlow's fake-quant
arithmetic: activation scale (max - min) / 255, weight scale absmax / 127, or / 63 for 7-bit
weights), the QAT model's own outputs, and Keras' BatchNormalization layer for the fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from edgekit import export  # noqa: E402
from edgekit.compress.api import compress  # noqa: E402
from edgekit.compress.passes import QAT  # noqa: E402
from edgekit.errors import UsageError  # noqa: E402


def _digits(size: int = 16) -> tuple[np.ndarray, ...]:
    from edgekit.samples import split, to_input

    xtr, ytr, xte, yte = split()
    return to_input(xtr, size, layout="NHWC"), ytr, to_input(xte, size, layout="NHWC"), yte


def _net() -> object:
    layers = keras.layers
    inp = keras.Input((16, 16, 1), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(layers.MaxPooling2D()(x))
    return keras.Model(inp, layers.Dense(10, name="logits")(x))


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    keras.utils.set_random_seed(0)
    xtr, ytr, xte, yte = _digits()
    model = _net()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0)
    out = tmp_path_factory.mktemp("kqat")
    src = out / "net.keras"
    model.save(src)
    result = compress(
        str(src),
        [QAT(epochs=1, mode="labels", lr=1e-3)],
        data=xtr[:600],
        labels=ytr[:600],
        eval_data=xte[:200],
        eval_labels=yte[:200],
        output_dir=out / "qat",
    )
    return {"result": result, "src": src, "xte": xte[:64], "out": out}


def _qat_model(qat_run: dict) -> object:
    from edgekit.compress import keras_model as km

    return km.load(qat_run["result"].path)


def _ranges(qat_run: dict) -> list[dict]:
    from edgekit.compress.keras_qat import trained_ranges

    return trained_ranges(_qat_model(qat_run))


def _act_qparams(r: dict) -> tuple[float, int]:
    """TensorFlow's FakeQuantWithMinMaxVars grid for (min, max), as int8 (scale, zero point)."""
    scale = (r["max"] - r["min"]) / 255.0
    return scale, int(np.clip(np.round(-r["min"] / scale), 0, 255)) - 128


def _fake_quant_outputs(qat_run: dict) -> np.ndarray:
    from edgekit.compress import keras_model as km

    return km.run(_qat_model(qat_run), {"image": qat_run["xte"]}, batch=1)[0]


def _artifact_outputs(backend: str, artifact: Path, x: np.ndarray) -> np.ndarray:
    from edgekit.backends import get_backend

    session = get_backend(backend).open_session(artifact)
    name = session.inputs[0].name
    return np.concatenate([session.run({name: s[None]})[0] for s in x])


def _output_step(ranges: list[dict]) -> float:
    return _act_qparams([r for r in ranges if r["kind"] == "activation"][-1])[0]


def test_qat_pass_folds_batchnorm_and_fake_quantizes_every_kernel(qat_run: dict) -> None:
    result = qat_run["result"]
    assert result.path.name == "net.keras"
    report = result.reports[-1]
    assert report.kind == "qat" and report.metric_after is not None and report.metric_after > 0.8
    model = _qat_model(qat_run)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "BatchNormalization" not in kinds  # both folded
    assert kinds.count("QConv2D") == 2 and kinds.count("QDepthwiseConv2D") == 1
    assert kinds.count("QDense") == 1
    ranges = _ranges(qat_run)
    # the input, the two ReLU layers (after the folded conv / depthwise), the conv with its
    # own ReLU and the logits; max-pool and flatten keep their input's range
    assert sum(r["kind"] == "activation" for r in ranges) == 5
    from edgekit.cpu import deployment_isa

    bound = 63 if deployment_isa().saturates else 127
    assert {r["quant_range"] for r in ranges if r["kind"] == "weight"} == {(-bound, bound)}
    from edgekit.compress.as_trained import is_qat

    assert is_qat(result.path) and is_qat(result.model)
    assert not is_qat(qat_run["src"])


def test_batchnorm_fold_reproduces_conv_then_batchnorm() -> None:
    from edgekit.compress.keras_qat import _folded

    rng = np.random.default_rng(0)
    for layer in (keras.layers.Conv2D(6, 3, padding="same"), keras.layers.DepthwiseConv2D(3)):
        bn = keras.layers.BatchNormalization(epsilon=1e-3)
        inp = keras.Input((9, 9, 3))
        model = keras.Model(inp, bn(layer(inp)))
        channels = bn.get_weights()[0].size
        bn.set_weights(
            [
                rng.uniform(0.5, 2, channels),  # gamma
                rng.normal(size=channels),  # beta
                rng.normal(size=channels),  # moving mean
                rng.uniform(0.1, 3, channels),  # moving variance
            ]
        )
        x = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
        want = np.asarray(model(x, training=False))
        plain = type(layer).from_config({**layer.get_config(), "use_bias": True})
        plain.build((None, 9, 9, 3))
        plain.set_weights(_folded(layer, bn))
        np.testing.assert_allclose(np.asarray(plain(x)), want, rtol=1e-5, atol=1e-5)


def test_tflite_is_full_integer_at_the_trained_ranges(qat_run: dict) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.backends.tflite import ops

    rep = export(
        str(qat_run["result"].path), "tflite", "as-trained", output_dir=qat_run["out"] / "t"
    )
    assert "no recalibration: scales as trained" in rep.notes
    assert ops.analyze(rep.artifact.read_bytes(), rep.artifact.name).integer_only
    # Before allocate_tensors: XNNPACK's delegate renames or drops constant tensors.
    details = Interpreter(model_path=str(rep.artifact)).get_tensor_details()
    params = [
        (np.dtype(d["dtype"]), d["quantization_parameters"])
        for d in details
        if np.dtype(d["dtype"]) == np.int8
    ]
    ranges = _ranges(qat_run)
    for r in ranges:
        if r["kind"] == "activation":
            scale, zp = _act_qparams(r)
            assert any(
                p["scales"].size == 1
                and np.isclose(p["scales"][0], scale, rtol=1e-6)
                and int(p["zero_points"][0]) == zp
                for _, p in params
            ), r
        else:
            want = r["absmax"] / r["quant_range"][1]
            assert any(
                p["scales"].size == want.size and np.allclose(p["scales"], want, rtol=1e-6)
                for _, p in params
            ), r["name"]
    got = _artifact_outputs("tflite", rep.artifact, qat_run["xte"])
    ref = _fake_quant_outputs(qat_run)
    # one step of the output grid for its own rounding, one for a rounding tie inside that
    # integer requantization breaks differently from float fake-quant
    assert np.abs(got - ref).max() <= 2 * _output_step(ranges) * 1.01


def _onnx_scales(artifact: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(artifact))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            inits[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return [
        inits[n.input[1]].astype(np.float32).ravel()
        for n in m.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in inits
    ]


def test_onnxruntime_and_openvino_compute_the_trained_grid(qat_run: dict) -> None:
    path = qat_run["result"].path
    ranges = _ranges(qat_run)
    ref = _fake_quant_outputs(qat_run)
    step = _output_step(ranges)
    rep = export(str(path), "onnxruntime", "as-trained", output_dir=qat_run["out"] / "ort")
    assert "no recalibration: scales as trained" in rep.notes
    scales = _onnx_scales(rep.artifact)
    for r in ranges:
        want = (
            np.array([_act_qparams(r)[0]])
            if r["kind"] == "activation"
            else r["absmax"] / r["quant_range"][1]
        )
        assert any(s.size == want.size and np.allclose(s, want, rtol=1e-6) for s in scales), r
    got = _artifact_outputs("onnxruntime", rep.artifact, qat_run["xte"])
    assert np.abs(got - ref).max() <= 2 * step * 1.01

    ov_rep = export(str(path), "openvino", "as-trained", output_dir=qat_run["out"] / "ov")
    import openvino as ov

    fq = [
        op
        for op in ov.Core().read_model(str(ov_rep.artifact)).get_ops()
        if op.get_type_name() == "FakeQuantize"
    ]
    assert fq, "OpenVINO's IR holds no FakeQuantize: the trained quantization was lost"
    got = _artifact_outputs("openvino", ov_rep.artifact, qat_run["xte"])
    assert np.abs(got - ref).max() <= 2 * step * 1.01 + 1e-5


def test_precisions_refused_on_keras_qat_and_float_models(qat_run: dict) -> None:
    with pytest.raises(UsageError, match="compress MODEL --qat"):
        export(str(qat_run["src"]), "tflite", "as-trained", output_dir=qat_run["out"] / "x")
    with pytest.raises(UsageError, match="as-trained"):
        export(str(qat_run["result"].path), "tflite", "int8", output_dir=qat_run["out"] / "y")


def test_keras2_h5_model_trains_quantized(tmp_path: Path) -> None:
    """A Keras-2 ``.h5`` (loaded by Keras 3) is a Keras 3 model here: QAT writes a .keras."""
    from edgekit import samples
    from tests.keras2_h5 import write_keras2_h5

    keras.utils.set_random_seed(0)
    h5 = tmp_path / "cnn.h5"
    write_keras2_h5(samples.keras_cnn(8), h5)
    x_train, y_train, _, _ = samples.split()
    result = compress(
        str(h5),
        [QAT(epochs=1, mode="labels", lr=1e-3)],
        data=samples.to_input(x_train[:128], layout="NHWC"),
        labels=y_train[:128],
        output_dir=tmp_path / "qat",
    )
    from edgekit.compress.as_trained import is_qat

    assert result.path.suffix == ".keras" and is_qat(result.path)


def test_cli_keras_qat_then_export_as_trained(
    qat_run: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from edgekit.cli import main

    out = qat_run["out"] / "cli"
    out.mkdir()
    xtr, ytr, _, _ = _digits()
    np.save(out / "x.npy", xtr[:300])
    np.save(out / "y.npy", ytr[:300])
    argv = ["compress", str(qat_run["src"]), "--qat", "--qat-epochs", "1", "--qat-lr", "1e-3"]
    argv += ["--data", str(out / "x.npy"), "--labels", str(out / "y.npy")]
    assert main([*argv, "-o", str(out / "qat"), "--json", "-q"]) == 0
    json.loads(capsys.readouterr().out)
    model = out / "qat" / "net.keras"
    argv = ["export", str(model), "--target", "tflite", "--precision", "int8"]
    assert main([*argv, "-o", str(out / "int8"), "-q"]) == 2
    assert "as-trained" in capsys.readouterr().err
    argv = ["export", str(model), "--target", "tflite", "--precision", "as-trained"]
    assert main([*argv, "-o", str(out / "tfl"), "--json", "-q"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert "no recalibration: scales as trained" in rep["notes"]
    side = json.loads(Path(rep["sidecar"]).read_text())
    facts = side["backend_details"]["as_trained"]
    assert facts["recalibrated"] is False and facts["training"]["lr"] == 1e-3


def test_layers_qat_cannot_train_quantized_are_refused(tmp_path: Path) -> None:
    """A SeparableConv2D's weights have no fake-quant here: the converter would quantize them
    by its own rules, so the pass refuses rather than export something it did not train."""
    layers = keras.layers
    inp = keras.Input((16, 16, 1))
    x = layers.Flatten()(layers.SeparableConv2D(4, 3)(inp))
    model = keras.Model(inp, layers.Dense(2)(x))
    data = np.random.default_rng(0).random((8, 16, 16, 1), np.float32)
    with pytest.raises(UsageError, match="separable_conv2d"):
        compress(model, [QAT(epochs=1, mode="distill")], data=data, output_dir=tmp_path / "q")
    assert not (tmp_path / "q").exists() or not any((tmp_path / "q").iterdir())


def test_residual_relu6_softmax_model_exports_full_integer(tmp_path: Path) -> None:
    """The MobileNet pieces: ReLU6, a residual Add, global average pooling and a Dense with a
    fused softmax. TFLite's int8 SOFTMAX always writes scale 1/256, zero point -128, so QAT
    trains on that grid (no requantize after the op), and the artifacts compute the QAT model
    on every backend."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1), name="image")
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(inp)))
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(x)))
    x = layers.GlobalAveragePooling2D()(layers.Add()([x, y]))
    model = keras.Model(inp, layers.Dense(10, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    xtr, ytr, xte, _ = _digits()
    model.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0)
    result = compress(
        model,
        [QAT(epochs=1, mode="labels", lr=1e-3)],
        data=xtr[:400],
        labels=ytr[:400],
        output_dir=tmp_path / "qat",
    )
    from edgekit.backends.tflite import ops
    from edgekit.compress import keras_model as km

    ref = km.run(result.model, {"image": xte[:32]}, batch=1)[0]
    rep = export(str(result.path), "tflite", "as-trained", output_dir=tmp_path / "t")
    report = ops.analyze(rep.artifact.read_bytes(), rep.artifact.name)
    assert report.integer_only
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(rep.artifact)).get_tensor_details()
    soft = [d for d in details if d["name"].endswith("Softmax") and d["dtype"] == np.int8]
    assert soft and soft[0]["quantization_parameters"]["scales"][0] == np.float32(1 / 256)
    assert int(soft[0]["quantization_parameters"]["zero_points"][0]) == -128
    # one step of the softmax's 1/256 grid (its int8 exp table against the float softmax)
    for backend, artifact in [
        ("tflite", rep.artifact),
        (
            "onnxruntime",
            export(
                str(result.path), "onnxruntime", "as-trained", output_dir=tmp_path / "o"
            ).artifact,
        ),
    ]:
        got = _artifact_outputs(backend, artifact, xte[:32])
        assert np.abs(got - ref).max() <= 1 / 256 + 1e-6, backend
