"""Benchmark runner for ONNX Runtime (``.onnx``), CPU execution provider, and what edgekit's
ONNX Runtime sessions share with it.

Standalone: needs only onnxruntime and numpy next to ``_harness.py`` (edgekit's
``edgekit/bench/runners/_harness.py``, copied next to this file on a device). Inputs are bound
once with IOBinding so that the timed call is the inference itself, as in the other runners.

    python runner.py model.onnx --threads 1 < commands   (see _harness.py)

It imports nothing of edgekit, so the session options, the dtype names and the I/O specs that
:class:`edgekit.backends.onnxruntime.session.OrtSession` also needs live here, and the session
imports them: what is benchmarked is configured exactly as what edgekit runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

RUNTIME = "onnxruntime"
PIP = "onnxruntime"

#: ONNX Runtime's type strings -> numpy dtype names
DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
# ORT executes the graph's own types (QDQ int8 is fused into integer kernels); it has no
# precision setting of its own to report.
EFFECTIVE_PRECISION = None


def open_session(rt: Any, path: str, threads: int | None) -> Any:
    """``path`` in an ``InferenceSession`` on the CPU provider with all graph optimizations."""
    so = rt.SessionOptions()
    so.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    # Failures come back as exceptions (reported on one line); ORT would also print them,
    # coloured, to stderr first.
    so.log_severity_level = 4
    return rt.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def io_specs(args: Any) -> list[tuple[str, str, list[Any]]]:
    """(name, numpy dtype name, dims) of ``get_inputs()``/``get_outputs()``; a dynamic
    dimension is its symbolic name (a string) or None. A type numpy has no name for keeps
    ORT's own string (``tensor(string)``)."""
    return [
        (
            a.name,
            DTYPES.get(a.type, a.type),
            [d if isinstance(d, int) else (d or None) for d in a.shape],
        )
        for a in args
    ]


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
        self._sess = open_session(rt, path, opts.threads)
        self.inputs = [_dynamic(spec) for spec in io_specs(self._sess.get_inputs())]
        self.outputs = [_dynamic(spec) for spec in io_specs(self._sess.get_outputs())]
        self._binding = self._sess.io_binding()
        self.info = {
            "version": rt.__version__,
            "accelerator": "CPU",
            "provider": "CPUExecutionProvider",
            "threads": opts.threads,
            "effective_precision": EFFECTIVE_PRECISION,
        }

    def set_inputs(self, feeds: dict) -> None:
        self._feeds = feeds  # keep the arrays alive: the binding points at their memory
        for name, arr in feeds.items():
            self._binding.bind_cpu_input(name, arr)
        for out in self._sess.get_outputs():
            self._binding.bind_output(out.name, "cpu")

    def run(self) -> None:
        self._sess.run_with_iobinding(self._binding)

    def fetch(self) -> list:
        return list(self._binding.copy_outputs_to_cpu())


def _dynamic(spec: tuple[str, str, list[Any]]) -> tuple[str, str, list[Any]]:
    """The harness's form: every dynamic dimension None."""
    name, dtype, dims = spec
    return name, dtype, [d if isinstance(d, int) else None for d in dims]


def load(rt: Any, path: str, opts: Any) -> _Model:
    return _Model(rt, path, opts)


if __name__ == "__main__":
    import _harness

    raise SystemExit(_harness.main(sys.modules[__name__]))
