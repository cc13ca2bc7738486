"""Benchmark runner for TFLite/LiteRT flatbuffers (``.tflite``).

Standalone: needs only LiteRT's interpreter (``ai-edge-litert``, or ``tflite-runtime`` on
boards that ship that) and numpy next to ``_harness.py``. Inputs are set once; the timed call is
``invoke()`` alone (what TFLite's ``benchmark_model`` times). The XNNPACK delegate is LiteRT's
default on CPU and stays on.

Inputs are named by the model's signature keys (``args_0``, not the tensor name
``serving_default_args_0``), the names edgekit's TFLite sessions and export maps use; files
without a signature keep tensor names. Source names and layouts (edgekit's ``edgekit_io`` map)
are edgekit's business: the parent renames and transposes ``--inputs`` before they get here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

RUNTIME = "litert"
PIP = "ai-edge-litert"
METADATA_NAME = "edgekit_io"  # edgekit's source<->artifact I/O map inside an exported file
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


def io_map(path: str) -> dict[str, Any] | None:
    """Host side only (the parent calls it for a file without its export sidecar; a device
    never does): the source-to-artifact I/O map edgekit stores in the file's metadata, else
    None. The entry is the one ``edgekit.backends.tflite_session.write_io_map`` writes; it is
    read here with LiteRT's own flatbuffer schema because runners import nothing of edgekit."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    try:
        with open(path, "rb") as f:
            model = schema.Model.GetRootAs(f.read(), 0)
        for i in range(model.MetadataLength()):
            meta = model.Metadata(i)
            name = meta.Name()
            if (name.decode() if isinstance(name, bytes) else name) == METADATA_NAME:
                raw = model.Buffers(meta.Buffer()).DataAsNumpy()
                return json.loads(bytes(raw).decode())
    except Exception:  # a foreign or damaged file has no usable map; the runner reports it
        return None
    return None


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
        names = _signature_names(self._it, [d["index"] for d in details])
        self._index = {names.get(d["index"], d["name"]): d["index"] for d in details}
        self.inputs = [
            (
                names.get(d["index"], d["name"]),
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


def _signature_names(it: Any, indices: list[int]) -> dict[int, str]:
    """Tensor index -> signature key, when the model has one signature over these inputs."""
    try:
        sigs = it._get_full_signature_list()  # the public list has no tensor indices
    except Exception:
        return {}
    if not sigs or len(sigs) != 1:
        return {}  # several signatures may run other subgraphs than the one invoked here
    keys = next(iter(sigs.values())).get("inputs") or {}
    by_index = {int(i): k for k, i in keys.items()}
    return by_index if sorted(by_index) == sorted(indices) else {}


def load(rt: Any, path: str, opts: Any) -> _Model:
    return _Model(rt, path, opts)


if __name__ == "__main__":
    import _harness

    raise SystemExit(_harness.main(sys.modules[__name__]))
