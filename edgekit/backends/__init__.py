"""The backend registry: the one place that names backends.

The CLI's ``--target`` choices, target profile validation and the contract tests all come from
:data:`BACKENDS`. Adding a backend is adding its module (or package: ``onnxruntime/``,
``openvino/``, ``tflite/``) here and a profile in ``targets/``; the backend object brings its
benchmark runner along (``backend.runner``). Modules are imported on first use so that
``edgekit --help`` stays free of heavy runtimes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgekit.errors import UsageError

if TYPE_CHECKING:
    from edgekit.backends.base import Backend

BACKENDS: dict[str, str] = {
    "onnxruntime": "edgekit.backends.onnxruntime",
    "tflite": "edgekit.backends.tflite",
    "openvino": "edgekit.backends.openvino",
}


def backend_names() -> list[str]:
    return list(BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend object registered as ``name`` (its module's ``BACKEND``)."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).BACKEND


def backend_for_artifact(path: str) -> Backend:
    """The backend whose artifact suffix matches ``path`` (for benchmark/evaluate)."""
    for name in BACKENDS:
        backend = get_backend(name)
        if path.lower().endswith(backend.suffix):
            return backend
    suffixes = ", ".join(get_backend(n).suffix for n in BACKENDS)
    raise UsageError(f"{path}: not an artifact of any backend (expected one of: {suffixes})")
