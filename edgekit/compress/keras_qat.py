"""Keras 3 quantization-aware training (the ``qat`` compress pass): not available yet.

The recipe is known and was verified by hand (fake-quant layers with per-channel weights,
per-tensor EMA activation ranges, BatchNorm folded; TFLiteConverter on the frozen graph gives a
full-integer model with the learned ranges, tf2onnx plus int8 weight initializers gives QDQ
ONNX), but it is not wired into edgekit yet: the pass refuses, naming what works instead.
"""

from __future__ import annotations

from typing import Any

from edgekit.errors import UsageError


def apply(model: Any, p: Any, data: Any) -> tuple[Any, list[dict[str, Any]], list[str]]:
    raise UsageError(
        "--qat is not available for Keras models yet (PyTorch .pt2 only); quantize the Keras "
        "model after training with edgekit export --precision int8"
    )
