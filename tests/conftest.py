"""Shared fixtures: small real models trained on scikit-learn's digits, built at test time."""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest

os.environ.setdefault("EDGEKIT_PROGRESS", "0")
# Tests also call openvino directly (convert_model to build IRs); keep its usage telemetry off
# as edgekit does, so nothing forks a sender process after JAX/TF threads have started.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The conversion cache (and OpenVINO's compile cache) of a test run stays out of ~/.cache.
os.environ.setdefault("EDGEKIT_CACHE_DIR", tempfile.mkdtemp(prefix="edgekit-test-cache-"))

from edgekit import samples  # noqa: E402 - after the environment set-up above

WIDTH = 8  # ~0.55M parameters: big enough to be a real CNN, quick to train in a test session


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, ...]:
    """uint8 pictures and labels: x_train, y_train, x_test, y_test."""
    return samples.split(seed=0)


@pytest.fixture(scope="session")
def torch_cnn(tmp_path_factory: pytest.TempPathFactory):
    return samples.train_torch_cnn(
        width=WIDTH, epochs=6, cache_dir=tmp_path_factory.mktemp("cache")
    )


@pytest.fixture(scope="session")
def keras_cnn():
    return samples.train_keras_cnn(width=WIDTH, epochs=4)


@pytest.fixture(scope="session")
def onnx_cnn(torch_cnn, tmp_path_factory: pytest.TempPathFactory):
    """The torch CNN written to ONNX by torch itself (not by edgekit)."""
    import torch

    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    torch.onnx.export(
        torch_cnn,
        (torch.zeros(1, 1, 32, 32),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamo=True,
        verbose=False,
    )
    return path


def feeds(images: np.ndarray, name: str, layout: str = "NCHW") -> list[dict[str, np.ndarray]]:
    """One feed dict of batch 1 per picture."""
    x = samples.to_input(images, layout=layout)
    return [{name: x[i : i + 1]} for i in range(len(x))]


def export_digits(
    model, target, precision, digits, out, name, layout, n_calib=64, n_eval=120, **kw
):
    """Export ``model`` calibrated on training digits and checked on held-out test digits."""
    import edgekit

    x_train, _, x_test, _ = digits
    return edgekit.export(
        model,
        target,
        precision,
        output_dir=out,
        calibration=feeds(x_train[:n_calib], name, layout),
        eval_data=feeds(x_test[:n_eval], name, layout),
        eval_samples=n_eval,
        name="digits",
        **kw,
    )
