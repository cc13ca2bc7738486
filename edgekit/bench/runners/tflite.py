"""Benchmark runner for TFLite/LiteRT flatbuffers (``.tflite``).

Standalone: needs only LiteRT's interpreter (``ai-edge-litert``, or ``tflite-runtime`` on
boards that ship that) and numpy next to ``_harness.py``. Inputs are set once; the timed call is
``invoke()`` alone (what TFLite's ``benchmark_model`` times). The XNNPACK delegate is LiteRT's
default on CPU and stays on.
"""

from __future__ import annotations

import sys
from typing import Any

RUNTIME = "litert"
PIP = "ai-edge-litert"
_COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}


class DeviceNotAvailable(RuntimeError):
    runner_kind = "device"


def import_runtime() -> Any:
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        from tflite_runtime import interpreter  # older boards: the same API, older name
    return interpreter


def companion_files(path: str) -> list[str]:
    return []


def _version(module: Any) -> str | None:
    from importlib import metadata

    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
    try:
        return metadata.version(dist[module.__name__.split(".")[0]])
    except (KeyError, metadata.PackageNotFoundError):
        return None


class _Model:
    def __init__(self, rt, path: str, opts) -> None:
        if opts.accelerator not in (None, "CPU", "cpu"):
            raise DeviceNotAvailable(
                f"this runner uses LiteRT's CPU interpreter; there is no '{opts.accelerator}' "
                "(available: CPU; for a phone use --device adb://SERIAL)"
            )
        self._it = rt.Interpreter(model_path=path, num_threads=opts.threads)
        self._it.allocate_tensors()
        details = self._it.get_input_details()
        self._index = {d["name"]: d["index"] for d in details}
        self.inputs = [
            (
                d["name"],
                d["dtype"].__name__,
                [int(v) if v >= 0 else None for v in d.get("shape_signature", d["shape"])],
            )
            for d in details
        ]
        self.info = {
            "version": _version(rt),
            "accelerator": "CPU",
            "threads": opts.threads,
            "effective_precision": self._precision(),
        }

    def _precision(self) -> str | None:
        """What the compute ops take: int8/int16 activations, int8 weights on float
        activations (dynamic range), fp16 weights dequantized to fp32, or plain fp32."""
        try:
            ops = self._it._get_ops_details()
            types = {t["index"]: t["dtype"].__name__ for t in self._it.get_tensor_details()}
        except Exception:  # a private helper; older interpreters may lack it
            return None
        found = set()
        for op in ops:
            ins = [i for i in op["inputs"] if i >= 0]
            if op["op_name"] == "DEQUANTIZE" and ins and types.get(ins[0]) == "float16":
                found.add("fp16-weights")
            if op["op_name"] not in _COMPUTE_OPS or len(ins) < 2:
                continue
            act, weight = types.get(ins[0]), types.get(ins[1])
            if act in ("int8", "uint8"):
                found.add("int8")
            elif act == "int16":
                found.add("int16x8")
            elif weight == "int8":
                found.add("int8-dynamic")
        for name in ("int16x8", "int8", "int8-dynamic"):
            if name in found:
                return name
        return "fp32 (fp16 weights)" if "fp16-weights" in found else "fp32"

    def set_inputs(self, feeds: dict) -> None:
        for name, arr in feeds.items():
            if list(arr.shape) != list(self._it.get_tensor(self._index[name]).shape):
                self._it.resize_tensor_input(self._index[name], list(arr.shape))
                self._it.allocate_tensors()
        for name, arr in feeds.items():
            self._it.set_tensor(self._index[name], arr)

    def run(self) -> None:
        self._it.invoke()


def load(rt: Any, path: str, opts: Any) -> _Model:
    return _Model(rt, path, opts)


if __name__ == "__main__":
    import _harness

    raise SystemExit(_harness.main(sys.modules[__name__]))
