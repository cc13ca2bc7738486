"""ONNX Runtime artifact sizes against FP32. Every source at every precision against the FP32
source is the backend contract (tests/test_backend_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import feeds

import edgekit


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
