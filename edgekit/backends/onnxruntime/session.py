"""ONNX Runtime sessions: an ONNX file on the CPU execution provider.

Sessions take their options, dtype names and I/O specs from the standalone benchmark runner,
:mod:`edgekit.backends.onnxruntime.runner` (it imports nothing of edgekit, so it can be copied
to a device), so that what is benchmarked is configured exactly as what edgekit runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.feeds import check_feeds
from edgekit.backends.onnxruntime import runner as _runner
from edgekit.backends.onnxruntime.runtime import error_text
from edgekit.errors import ConversionError, ModelFormatError, ModelNotFoundError
from edgekit.model import Feeds, TensorSpec


class OrtSession:
    """An ONNX file loaded in ONNX Runtime's CPU execution provider, configured as the
    benchmark runner configures it (:func:`edgekit.backends.onnxruntime.runner.open_session`)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise ModelNotFoundError(f"artifact not found: {path}")
        try:
            self._sess = _runner.open_session(ort, str(path), threads)
        except Exception as exc:  # ORT raises its own unrelated exception types
            raise ModelFormatError(
                f"ONNX Runtime cannot load the model: {error_text(exc)}; re-export it with "
                "operators ONNX Runtime implements (a lower opset, or without custom ops)"
            ) from exc
        self.inputs = _specs(self._sess.get_inputs())
        self.outputs = _specs(self._sess.get_outputs())
        self._out_names = [o.name for o in self.outputs]
        self.info = {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "provider": "CPUExecutionProvider",
            "threads": threads or 0,
            "effective_precision": _runner.EFFECTIVE_PRECISION,
        }

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        arrays = check_feeds(feeds, self.inputs)
        named = {spec.name: x for spec, x in zip(self.inputs, arrays, strict=True)}
        try:
            return list(self._sess.run(self._out_names, named))
        except Exception as exc:
            raise ConversionError(f"ONNX Runtime failed to run: {error_text(exc)}") from exc


def _specs(args: Any) -> list[TensorSpec]:
    # A dynamic dimension keeps its symbolic name ("N"), or "?" when it has none.
    return [
        TensorSpec(name, dtype, tuple("?" if d is None else d for d in dims))
        for name, dtype, dims in _runner.io_specs(args)
    ]
