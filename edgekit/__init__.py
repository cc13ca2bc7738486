"""edgekit: take a trained PyTorch, Keras or ONNX model to edge devices.

Public API (imports are lazy so that ``import edgekit`` and ``edgekit --help`` stay fast)::

    import edgekit
    from edgekit.compress import FineTune, Prune
    small = edgekit.compress("model.pt2", [Prune(0.5), FineTune(epochs=2)], data="images/",
                             output_dir="out")          # out/model.pt2 + model.compress.json
    report = edgekit.export("model.onnx", target="onnxruntime", precision="int8",
                            calibration="calibration_data/digits", output_dir="out")
    session = edgekit.load("out/model_int8.onnx")
    outputs = session.run({"input": batch})
    print(edgekit.evaluate("out/model_int8.onnx", "labelled_images/").table())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Agreement",
    "BenchmarkResult",
    "EdgekitError",
    "EvaluationReport",
    "ExportReport",
    "ImageOptions",
    "Recipe",
    "Score",
    "Session",
    "Sidecar",
    "TensorSpec",
    "__version__",
    "benchmark",
    "compress",
    "describe",
    "distill",
    "evaluate",
    "export",
    "load",
    "load_model",
    "load_samples",
    "read_sidecar",
]

if TYPE_CHECKING:
    from edgekit.agreement import Agreement
    from edgekit.artifact import Sidecar, read_sidecar
    from edgekit.backends.base import Session
    from edgekit.bench import benchmark
    from edgekit.bench.schema import BenchmarkResult
    from edgekit.calibration import ImageOptions, load_samples
    from edgekit.compress.api import compress, distill
    from edgekit.errors import EdgekitError
    from edgekit.evaluation import EvaluationReport, evaluate
    from edgekit.exporter import ExportReport, export
    from edgekit.metrics import Score
    from edgekit.model import TensorSpec, describe, load_model
    from edgekit.recipe import Recipe
    from edgekit.session import load

_LAZY = {
    "Agreement": "edgekit.agreement",
    "BenchmarkResult": "edgekit.bench.schema",
    "Session": "edgekit.backends.base",
    "Sidecar": "edgekit.artifact",
    "TensorSpec": "edgekit.model",
    "read_sidecar": "edgekit.artifact",
    "EdgekitError": "edgekit.errors",
    "EvaluationReport": "edgekit.evaluation",
    "Score": "edgekit.metrics",
    "evaluate": "edgekit.evaluation",
    "ExportReport": "edgekit.exporter",
    "ImageOptions": "edgekit.calibration",
    "Recipe": "edgekit.recipe",
    "benchmark": "edgekit.bench",
    "describe": "edgekit.model",
    "distill": "edgekit.compress.api",
    "export": "edgekit.exporter",
    "load": "edgekit.session",
    "load_model": "edgekit.model",
    "load_samples": "edgekit.calibration",
}


def __getattr__(name: str) -> Any:
    if name == "compress":
        # The package itself (callable as edgekit.compress.api.compress): importing any of
        # its modules binds edgekit.compress to it anyway, see edgekit/compress/__init__.py.
        import importlib

        return importlib.import_module("edgekit.compress")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute '{name}'")
