"""One contract, run against every registered backend: export a tiny ONNX graph at every
precision the backend claims, load it through the shared session API, and compare with a
numpy computation of the same graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx_models import linear_model, linear_reference

import edgekit
from edgekit.backends import backend_names, get_backend
from edgekit.recipe import PRECISIONS

RNG = np.random.default_rng(1)
W = RNG.standard_normal((16, 8)).astype(np.float32)
B = RNG.standard_normal(8).astype(np.float32)
TOLERANCE = {
    "fp32": 1e-5,
    "fp16": 2e-2,
    "int8": 0.25,
    "int8-dynamic": 0.25,
    "int16x8": 0.05,
    "int8-weights": 0.05,
    "int4-weights": 0.25,
}


def _keras_linear(path):
    """The same relu(x @ W + B) as a Keras model, for backends that take no ONNX source."""
    import keras

    inp = keras.Input((16,), batch_size=1, name="x")
    dense = keras.layers.Dense(8, activation="relu")
    model = keras.Model(inp, dense(inp))
    dense.set_weights([W, B])
    model.save(path)


@pytest.mark.parametrize("backend", backend_names())
def test_backend_contract(backend, tmp_path):
    impl = get_backend(backend)
    assert set(impl.precisions) <= set(PRECISIONS)
    assert impl.suffix.startswith(".")
    if "onnx" in impl.source_formats:
        path = tmp_path / "lin.onnx"
        onnx.save(linear_model(W, B, (1, 16)), str(path))
    else:
        path = tmp_path / "lin.keras"
        _keras_linear(path)
    calib = [{"x": RNG.standard_normal((1, 16)).astype(np.float32)} for _ in range(64)]
    x = RNG.standard_normal((1, 16)).astype(np.float32)
    want = linear_reference(x, W, B)
    for precision in impl.precisions:
        report = edgekit.export(
            path,
            backend,
            precision,
            output_dir=tmp_path / precision,
            calibration=calib,
            eval_samples=8,
        )
        assert report.artifact.name.endswith(impl.suffix)
        meta = json.loads(report.sidecar.read_text())
        assert meta["backend"] == backend and meta["recipe"]["precision"] == precision
        session = edgekit.load(report.artifact)
        assert [s.name for s in session.inputs] == ["x"]
        got = session.run({"x": x})[0]
        scale = float(np.abs(want).max())
        assert np.abs(got - want).max() <= TOLERANCE[precision] * scale, precision
