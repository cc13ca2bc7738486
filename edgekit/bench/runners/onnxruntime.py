"""Benchmark runner for ONNX Runtime (``.onnx``), CPU execution provider.

Standalone: needs only onnxruntime and numpy next to ``_harness.py``. Inputs are bound once
with IOBinding so that the timed call is the inference itself, as in the other runners.

    python onnxruntime.py model.onnx --threads 1 < commands   (see _harness.py)
"""

from __future__ import annotations

import os
import sys
from typing import Any

RUNTIME = "onnxruntime"
PIP = "onnxruntime"

_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def import_runtime() -> Any:
    import onnxruntime

    return onnxruntime


def companion_files(path: str) -> list[str]:
    """External-data files an ``.onnx`` refers to (host side; needs the onnx package)."""
    try:
        import onnx
    except ImportError:
        return []
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # a corrupt file: the runtime's own load error will say so
        return []
    found = []
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                found.append(os.path.join(os.path.dirname(path), entry.value))
    return sorted(set(found))


class DeviceNotAvailable(RuntimeError):
    runner_kind = "device"


class _Model:
    def __init__(self, rt, path: str, opts) -> None:
        if opts.accelerator not in (None, "CPU", "cpu"):
            raise DeviceNotAvailable(
                f"this runner uses ONNX Runtime's CPU provider; there is no '{opts.accelerator}' "
                "(available: CPU)"
            )
        so = rt.SessionOptions()
        so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = opts.threads or 0
        so.inter_op_num_threads = 1
        so.log_severity_level = 4  # failures come back as exceptions; no coloured log line
        self._sess = rt.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        self.inputs = [
            (
                i.name,
                _DTYPES.get(i.type, "float32"),
                [d if isinstance(d, int) else None for d in i.shape],
            )
            for i in self._sess.get_inputs()
        ]
        self._binding = self._sess.io_binding()
        self.info = {
            "version": rt.__version__,
            "accelerator": "CPU",
            "provider": "CPUExecutionProvider",
            "threads": opts.threads,
            # ORT executes the graph's own types (QDQ int8 is fused into integer kernels); it
            # has no precision setting of its own to report.
            "effective_precision": None,
        }

    def set_inputs(self, feeds: dict) -> None:
        self._feeds = feeds  # keep the arrays alive: the binding points at their memory
        for name, arr in feeds.items():
            self._binding.bind_cpu_input(name, arr)
        for out in self._sess.get_outputs():
            self._binding.bind_output(out.name, "cpu")

    def run(self) -> None:
        self._sess.run_with_iobinding(self._binding)


def load(rt: Any, path: str, opts: Any) -> _Model:
    return _Model(rt, path, opts)


if __name__ == "__main__":
    import _harness

    raise SystemExit(_harness.main(sys.modules[__name__]))
