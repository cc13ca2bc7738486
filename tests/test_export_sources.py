"""Every source framework exported to ONNX Runtime at every precision, checked against the
source model itself running in its own framework on real held-out digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import export_digits, feeds

import edgekit
from edgekit import samples

PRECISIONS = ["fp32", "fp16", "int8", "int8-dynamic"]
N_CALIB = 64
N_EVAL = 120


def _reference(kind: str, model, x: np.ndarray) -> np.ndarray:
    if kind == "keras":
        return np.asarray(model(x, training=False))
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def sources(torch_cnn, keras_cnn, onnx_cnn):
    # name -> (model handed to export, input name, layout, reference framework, its model)
    return {
        "torch": (torch_cnn, "input", "NCHW", "torch", torch_cnn),
        "onnx": (onnx_cnn, "image", "NCHW", "torch", torch_cnn),
        "keras": (keras_cnn, "image", "NHWC", "keras", keras_cnn),
    }


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("source", ["torch", "onnx", "keras"])
def test_export_matches_fp32_source(source, precision, sources, digits, tmp_path):
    model, name, layout, ref_kind, ref_model = sources[source]
    _, _, x_test, y_test = digits
    kwargs = {"example_inputs": (np.zeros((1, 1, 32, 32), np.float32),)}
    if source != "torch":
        kwargs = {}
    report = export_digits(
        model,
        "onnxruntime",
        precision,
        digits,
        tmp_path,
        name,
        layout,
        N_CALIB,
        N_EVAL,
        **kwargs,
    )
    assert report.artifact.is_file() and report.artifact.suffix == ".onnx"
    sidecar = json.loads(report.sidecar.read_text())
    assert sidecar["recipe"]["precision"] == precision
    assert sidecar["source"]["format"] == source

    # Independent check: run the artifact ourselves and compare with the source framework.
    x = samples.to_input(x_test[:N_EVAL], layout=layout)
    session = edgekit.load(report.artifact)
    got = np.concatenate([session.run({name: x[i : i + 1]})[0] for i in range(len(x))])
    want = _reference(ref_kind, ref_model, x)
    top1 = np.mean(got.argmax(1) == want.argmax(1))
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    elif precision == "fp16":
        np.testing.assert_allclose(got, want, atol=5e-2, rtol=1e-2)
        assert top1 == 1.0
    else:
        assert top1 >= 0.97, f"{precision} top-1 agreement {top1:.3f}"
        assert (
            samples.accuracy(got, y_test[:N_EVAL]) >= samples.accuracy(want, y_test[:N_EVAL]) - 0.03
        )
    # The report's own figures agree with what we measured.
    assert report.agreement.samples == N_EVAL
    assert report.agreement.top1_agreement == pytest.approx(top1, abs=1e-9)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantized_artifact_is_smaller(precision, torch_cnn, digits, tmp_path):
    x_train, _, _, _ = digits
    common = {
        "output_dir": tmp_path,
        "example_inputs": (np.zeros((1, 1, 32, 32), np.float32),),
        "calibration": feeds(x_train[:32], "input"),
    }
    fp32 = edgekit.export(torch_cnn, "onnxruntime", "fp32", **common)
    small = edgekit.export(torch_cnn, "onnxruntime", precision, **common)
    limit = {"fp16": 0.51, "int8": 0.27}[precision]
    assert small.artifact.stat().st_size <= limit * fp32.artifact.stat().st_size


@pytest.fixture(scope="module")
def source_files(torch_cnn, keras_cnn, tmp_path_factory):
    """The same trained models saved in every on-disk format the CLI accepts."""
    import torch

    d = tmp_path_factory.mktemp("sources")
    program = torch.export.export(torch_cnn, (torch.zeros(1, 1, 32, 32),))
    torch.export.save(program, str(d / "cnn.pt2"))
    keras_cnn.save(d / "cnn.keras")
    keras_cnn.save(d / "cnn.h5")
    keras_cnn.export(str(d / "cnn_savedmodel"), format="tf_saved_model", verbose=False)
    return d


FILES = {
    # file -> (input name in the artifact, layout, reference framework)
    "cnn.pt2": ("input", "NCHW", "torch"),
    "cnn.keras": ("image", "NHWC", "keras"),
    "cnn.h5": ("image", "NHWC", "keras"),
    "cnn_savedmodel": ("image", "NHWC", "keras"),
}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("filename", list(FILES))
def test_export_from_file(
    filename, precision, source_files, torch_cnn, keras_cnn, digits, tmp_path
):
    name, layout, ref_kind = FILES[filename]
    x_train, _, x_test, _ = digits
    report = edgekit.export(
        source_files / filename,
        "onnxruntime",
        precision,
        output_dir=tmp_path,
        calibration=feeds(x_train[:N_CALIB], name, layout),
        eval_samples=0,
    )
    x = samples.to_input(x_test[:N_EVAL], layout=layout)
    session = edgekit.load(report.artifact)
    assert [s.name for s in session.inputs] == [name]
    got = np.concatenate([session.run({name: x[i : i + 1]})[0] for i in range(len(x))])
    want = _reference(ref_kind, torch_cnn if ref_kind == "torch" else keras_cnn, x)
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    else:
        assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.97
    sidecar = json.loads(report.sidecar.read_text())
    assert sidecar["source"]["sha256"] and sidecar["source"]["path"].endswith(filename)
