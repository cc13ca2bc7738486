"""``--dynamic NAME``: an ONNX input's dynamic dimensions stay dynamic in the artifact.

Calibration and the export's checks run at the shape ``--input-shape`` gives (a lone batch
dimension defaults to 1); the artifact then runs at other sizes. Every check compares with the
ORIGINAL ONNX file run in onnxruntime at the same new shape:

* fp32: max |diff| <= 1e-4 * S (S = max |reference|): float re-association only;
* fp16: one conv layer, weights and inputs rounded to fp16: <= 2 * (2^-11 + 2^-11) * S
  (tests/test_backend_contract.py's rule with L = 1);
* int8 on the real PaddlePaddle classifier at batch 4: integer kernels and fixed (calibrated)
  scales make a batch of 4 the same computation as 4 batches of 1, so the batched outputs must
  equal the artifact's own batch-1 outputs (which the export compared with FP32) to float
  re-association.

Refusals: a backend or source that cannot keep dims (TFLite; a PyTorch/Keras source), an unknown
input name, an input the model declares static.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx_models import conv_model

import edgekit
from edgekit.errors import UsageError

FP16 = 2.0**-11


@pytest.fixture(scope="module")
def dynamic_conv(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    path = tmp_path_factory.mktemp("dyn") / "conv.onnx"
    onnx.save(conv_model(weight, input_shape=("N", 2, "H", "W")), path)
    return path


def _original(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dynamic_dims_kept_and_run_at_other_sizes(dynamic_conv, tmp_path, backend, precision):
    report = edgekit.export(
        dynamic_conv,
        target=backend,
        precision=precision,
        output_dir=tmp_path / "out",
        input_shapes={"x": (1, 2, 6, 6)},
        dynamic=["x"],
    )
    meta = json.loads(Path(report.sidecar).read_text())
    shape = meta["inputs"][0]["shape"]
    assert shape[1] == 2 and not any(isinstance(d, int) for d in (shape[0], *shape[2:])), shape
    session = edgekit.load(report.artifact)
    rng = np.random.default_rng(1)
    for size in [(3, 2, 9, 7), (1, 2, 16, 5)]:
        x = rng.standard_normal(size).astype(np.float32)
        want = _original(dynamic_conv, x)
        got = session.run({"x": x})[0]
        assert got.shape == want.shape
        scale = float(np.abs(want).max())
        # u_c: what the runtime computes the float parts in (OpenVINO's CPU runs an fp16 IR
        # in bf16 on CPUs with AVX512-BF16/AMX, and says so in session.info)
        u_c = {"bf16": 2.0**-8, "f32": 2.0**-24}.get(
            session.info.get("inference_precision") or "", FP16
        )
        e = 1e-4 * scale if precision == "fp32" else 2 * (FP16 + u_c) * scale
        assert float(np.abs(got - want).max()) <= e


def test_without_dynamic_the_shape_is_fixed(dynamic_conv, tmp_path):
    report = edgekit.export(
        dynamic_conv, "onnxruntime", "fp32", output_dir=tmp_path, input_shapes={"x": (1, 2, 6, 6)}
    )
    assert json.loads(Path(report.sidecar).read_text())["inputs"][0]["shape"] == [1, 2, 6, 6]


def test_dynamic_batch_int8_on_a_real_classifier(tmp_path):
    from edgekit import realmodels

    path = realmodels.fetch("orientation")
    calib = realmodels.write_inputs("orientation", tmp_path / "c.npz", 8, seed=3)
    held = realmodels.write_inputs("orientation", tmp_path / "e.npz", 4, seed=4)
    report = edgekit.export(
        path,
        "onnxruntime",
        "int8",
        output_dir=tmp_path / "out",
        calibration=calib,
        eval_data=held,
        dynamic=["x"],
    )
    session = edgekit.load(report.artifact)
    assert not isinstance(session.inputs[0].shape[0], int)
    x = np.load(held)["x"][:, 0]  # (4, 3, 224, 224): the held-out samples as one batch
    batched = session.run({"x": x})[0]
    single = np.concatenate([session.run({"x": x[i : i + 1]})[0] for i in range(len(x))])
    assert batched.shape == (4, 4)
    assert float(np.abs(batched - single).max()) <= 1e-4 * float(np.abs(single).max())


def test_dynamic_refusals(dynamic_conv, tmp_path):
    with pytest.raises(UsageError, match="no such input"):
        edgekit.export(
            dynamic_conv, "onnxruntime", "fp32", output_dir=tmp_path / "a", dynamic=["y"]
        )
    static = tmp_path / "static.onnx"
    onnx.save(conv_model(np.ones((1, 2, 3, 3), np.float32)), static)
    with pytest.raises(UsageError, match="fixed shape"):
        edgekit.export(static, "onnxruntime", "fp32", output_dir=tmp_path / "b", dynamic=["x"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dynamic_refused_at_plan_time_through_the_cli(tmp_path):
    """A PyTorch source's graph states no dynamic dims (and TFLite keeps static shapes):
    refused before any work, exit 2, one line, nothing written."""
    import torch

    module = torch.nn.Conv2d(2, 4, 3)
    program = torch.export.export(module.eval(), (torch.zeros(1, 2, 6, 6),))
    pt2 = tmp_path / "conv.pt2"
    torch.export.save(program, pt2)
    for target in ("onnxruntime", "tflite"):
        argv = [str(pt2), "--target", target]
        out = tmp_path / f"out-{target}"
        done = subprocess.run(
            [sys.executable, "-m", "edgekit", "export", *argv, "--dynamic", "x", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgekit: error: --dynamic x"), lines
        assert "from a torch source" in lines[0]
        assert "Traceback" not in done.stderr
        assert not out.exists()
