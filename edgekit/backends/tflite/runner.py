"""Benchmark runner for TFLite/LiteRT flatbuffers (``.tflite``), and what edgekit's TFLite
sessions share with it.

Standalone: needs only LiteRT's interpreter (``ai-edge-litert``, or ``tflite-runtime`` on
boards that ship that) and numpy next to ``_harness.py`` (edgekit's
``edgekit/bench/runners/_harness.py``, copied next to this file on a device). Inputs are set
once; the timed call is ``invoke()`` alone (what TFLite's ``benchmark_model`` times). The
XNNPACK delegate is LiteRT's default on CPU and stays on.

Inputs are named by the model's signature keys (``args_0``, not the tensor name
``serving_default_args_0``), the names edgekit's TFLite sessions and export maps use; files
without a signature keep tensor names. Source names and layouts (edgekit's ``edgekit_io`` map)
are edgekit's business: the parent renames and transposes ``--inputs`` before they get here.

This file imports nothing of edgekit, so what :mod:`edgekit.backends.tflite.session` needs to
agree with it lives here and the session imports it: the ``edgekit_io`` metadata entry and its
reader, which signature runs and in which order its outputs come, tensor dtypes and shapes, the
effective precision of the compute ops, and :class:`NativeStderr`, which keeps LiteRT's C++ log
chatter off the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

RUNTIME = "litert"
PIP = "ai-edge-litert"
METADATA_NAME = "edgekit_io"  # edgekit's source<->artifact I/O map inside an exported file
_COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}
#: what LiteRT's C++ runtime logs at INFO when it applies its default CPU delegate: news to
#: nobody, and printed straight to file descriptor 2, past Python's sys.stderr
_CHATTER = re.compile(
    r"INFO: (Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|Replacing \d+ (out of \d+ )?node\(s\) with delegate .*)"
)


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
    None. The entry is the one ``edgekit.backends.tflite.session.write_io_map`` writes."""
    try:
        with open(path, "rb") as f:
            return read_io_map(f.read())
    except OSError:
        return None


# ---------------------------------------------------------------- shared with edgekit's session


class NativeStderr:
    """Around creating (and allocating) a LiteRT interpreter: file descriptor 2 goes to a
    temporary file, because LiteRT writes its log from C++ there and neither an option nor an
    environment variable of the Python package silences it.

    On leaving, the known INFO chatter (:data:`_CHATTER`) is dropped and every other line is
    written back to ``sys.stderr``, so real warnings and errors still reach the user. When the
    block raises one of ``handled`` (the errors the caller turns into its own message), the
    lines are kept in :attr:`lines` instead, for :meth:`detail` to put into that message. One
    instance may be entered again: :attr:`lines` collects every round's.
    """

    def __init__(self, handled: tuple[type[BaseException], ...] = (ValueError, RuntimeError)):
        self.handled = handled
        self.lines: list[str] = []

    def __enter__(self) -> NativeStderr:
        with contextlib.suppress(AttributeError, ValueError, OSError):  # closed or replaced
            sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        new = [ln for ln in text.splitlines() if ln.strip() and not _CHATTER.fullmatch(ln.strip())]
        self.lines += new
        if new and not (kind is not None and issubclass(kind, self.handled)):
            sys.stderr.write("\n".join(new) + "\n")
            sys.stderr.flush()
        return False

    def detail(self) -> str:
        """What LiteRT logged, for an error message: ' (LiteRT: …)', or '' if nothing."""
        if not self.lines:
            return ""
        return f" (LiteRT: {' '.join(' '.join(self.lines).split())[:300]})"


def read_io_map(data: bytes) -> dict[str, Any] | None:
    """The ``edgekit_io`` map of a model written by edgekit, else None; read with LiteRT's own
    flatbuffer schema (None as well where that schema is not installed)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            meta = model.Metadata(i)
            name = meta.Name()
            if (name.decode() if isinstance(name, bytes) else name) == METADATA_NAME:
                raw = model.Buffers(meta.Buffer()).DataAsNumpy()
                return json.loads(bytes(raw).decode())
    except Exception:  # a foreign or damaged file has no usable map
        return None
    return None


def signature_key(keys: Iterable[str]) -> str | None:
    """The signature edgekit runs: ``serving_default`` if there is one, else the first."""
    keys = list(keys)
    if not keys:
        return None
    return "serving_default" if "serving_default" in keys else keys[0]


def natural_order(keys: Iterable[str]) -> list[str]:
    """``output_2`` before ``output_10``: litert-torch numbers outputs, signatures sort them."""

    def key(k: str) -> tuple[str, int]:
        stem, _, num = k.rpartition("_")
        return (stem, int(num)) if num.isdigit() else (k, -1)

    return sorted(keys, key=key)


def dtype_name(detail: Mapping[str, Any]) -> str:
    """numpy dtype name of an interpreter tensor detail."""
    dtype = detail["dtype"]
    return getattr(dtype, "__name__", None) or str(dtype)


def dims(detail: Mapping[str, Any]) -> list[int | None]:
    """A tensor's dimensions, None where dynamic (-1 in its shape signature)."""
    shape = detail.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = detail["shape"]
    return [int(v) if v >= 0 else None for v in shape]


def signature_names(it: Any, which: str, indices: list[int]) -> dict[int, str]:
    """Tensor index -> key in the run signature's ``which`` ("inputs"/"outputs"), when that
    signature is the main subgraph's, the one ``invoke()`` runs; else {} (tensor names)."""
    try:
        sigs = it._get_full_signature_list()  # the public list has no tensor indices
    except Exception:
        return {}
    key = signature_key(sigs or {})
    if key is None:
        return {}
    if len(sigs) > 1:
        try:  # another signature may run another subgraph than invoke()'s
            if it._interpreter.GetSubgraphIndexFromSignature(key) != 0:
                return {}
        except Exception:
            return {}
    by_index = {int(i): k for k, i in (sigs[key].get(which) or {}).items()}
    return by_index if sorted(by_index) == sorted(indices) else {}


def effective_precision(it: Any) -> str | None:
    """What the compute ops take: int8/int16 activations, int8 weights on float activations
    (dynamic range), fp16 weights dequantized to fp32, or plain fp32."""
    try:
        ops = it._get_ops_details()
        types = {t["index"]: dtype_name(t) for t in it.get_tensor_details()}
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


def _version(module: Any) -> str | None:
    from importlib import metadata

    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
    try:
        return metadata.version(dist[module.__name__.split(".")[0]])
    except (KeyError, metadata.PackageNotFoundError):
        return None


# ---------------------------------------------------------------- the runner


class _Model:
    def __init__(self, rt, path: str, opts) -> None:
        if opts.accelerator not in (None, "CPU", "cpu"):
            raise DeviceNotAvailable(
                f"this runner uses LiteRT's CPU interpreter; there is no '{opts.accelerator}' "
                "(available: CPU; for a phone use --device adb://SERIAL)"
            )
        with NativeStderr(handled=()):
            self._it = rt.Interpreter(model_path=path, num_threads=opts.threads)
            self._it.allocate_tensors()
        details = self._it.get_input_details()
        names = signature_names(self._it, "inputs", [d["index"] for d in details])
        self._index = {names.get(d["index"], d["name"]): d["index"] for d in details}
        self.inputs = [(names.get(d["index"], d["name"]), dtype_name(d), dims(d)) for d in details]
        out_details = self._it.get_output_details()
        out_names = signature_names(self._it, "outputs", [d["index"] for d in out_details])
        if out_names:
            by_key = {out_names[d["index"]]: d for d in out_details}
            out_details = [by_key[k] for k in natural_order(by_key)]
        self._out_index = [d["index"] for d in out_details]
        self.outputs = [
            (out_names.get(d["index"], d["name"]), dtype_name(d), dims(d)) for d in out_details
        ]
        self.info = {
            "version": _version(rt),
            "accelerator": "CPU",
            "threads": opts.threads,
            "effective_precision": effective_precision(self._it),
        }

    def set_inputs(self, feeds: dict) -> None:
        for name, arr in feeds.items():
            if list(arr.shape) != list(self._it.get_tensor(self._index[name]).shape):
                self._it.resize_tensor_input(self._index[name], list(arr.shape))
                self._it.allocate_tensors()
        for name, arr in feeds.items():
            self._it.set_tensor(self._index[name], arr)

    def run(self) -> None:
        self._it.invoke()

    def fetch(self) -> list:
        return [self._it.get_tensor(i).copy() for i in self._out_index]


def load(rt: Any, path: str, opts: Any) -> _Model:
    return _Model(rt, path, opts)


if __name__ == "__main__":
    import _harness

    raise SystemExit(_harness.main(sys.modules[__name__]))
