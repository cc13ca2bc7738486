"""LiteRT sessions for ``.tflite`` artifacts, and the I/O map edgekit stores inside the file.

An exported model's signature names and layout may differ from the source's: litert-torch
calls a PyTorch input ``args_0`` and edgekit exports NCHW image inputs as NHWC (what mobile
kernels and delegates expect). The map from source names/layout to the artifact's lives in the
flatbuffer's own metadata (entry ``edgekit_io``), so the ``.tflite`` file alone is enough to run
it with the source's feeds, and the sidecar JSON documents the same map.

Session rules:

* inputs are named as in the source; a feed in the source layout (NCHW) is transposed to the
  artifact's layout (NHWC); a feed already in the artifact's layout is used as it is;
* a float feed for an integer-quantized input is quantized with that input's scale/zero point,
  and then integer outputs come back dequantized: float in, float out. Integer feeds get the raw
  integer outputs (what runs on an Edge TPU or microcontroller).

The ``edgekit_io`` reader, the choice of signature and its output order, tensor dtypes and the
effective precision come from the benchmark runner (:mod:`edgekit.backends.tflite.runner`),
which cannot import edgekit, so that a benchmark and a session agree on them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.feeds import check_feeds
from edgekit.backends.tflite import runner as _runner
from edgekit.backends.tflite.runner import METADATA_NAME
from edgekit.errors import (
    ConversionError,
    ModelFormatError,
    ModelNotFoundError,
    first_line,
    require,
)
from edgekit.model import Feeds, TensorSpec


def write_io_map(model: bytes, io_map: Mapping[str, Any]) -> bytes:
    """``model`` with ``io_map`` stored as JSON in its metadata (replacing an earlier one)."""
    fbu = require("ai_edge_litert.tools.flatbuffer_utils", "tflite")
    schema = require("ai_edge_litert.schema_py_generated", "tflite")
    obj = fbu.read_model_from_bytearray(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(io_map).encode(), np.uint8)
    obj.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(obj.buffers) - 1
    obj.metadata = [m for m in (obj.metadata or []) if _name(m.name) != METADATA_NAME]
    obj.metadata.append(entry)
    return bytes(fbu.convert_object_to_bytearray(obj))


def _name(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def read_io_map(data: bytes) -> dict[str, Any] | None:
    """The ``edgekit_io`` map of a model written by edgekit, else None."""
    require("ai_edge_litert.schema_py_generated", "tflite")
    return _runner.read_io_map(data)


def _spec(name: str, detail: Mapping[str, Any]) -> TensorSpec:
    dtype = np.dtype(_runner.dtype_name(detail))
    quant = detail.get("quantization_parameters") or {}
    scales = np.asarray(quant.get("scales", []), np.float64)
    q = None
    if scales.size and dtype.kind in "iu":
        q = {
            "scale": scales.ravel().tolist(),
            "zero_point": np.asarray(quant.get("zero_points", [])).ravel().tolist(),
            "dtype": dtype.name,
        }
    shape = tuple(int(d) for d in detail["shape"])
    return TensorSpec(name, dtype.name, shape, q)


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float values -> ``spec``'s integer dtype with its own (per-tensor) scale/zero point."""
    assert spec.quantization is not None
    scale = spec.quantization["scale"][0]
    zero = spec.quantization["zero_point"][0]
    info = np.iinfo(spec.dtype)
    q = np.round(np.asarray(x, np.float64) / scale) + zero
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return x
    scale = spec.quantization["scale"][0]
    zero = spec.quantization["zero_point"][0]
    return ((x.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)


class TFLiteSession:
    """A ``.tflite`` file in the LiteRT interpreter (XNNPACK delegate on)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        interp_mod = require("ai_edge_litert.interpreter", "tflite")
        if not path.is_file():
            raise ModelNotFoundError(f"artifact not found: {path}")
        data = path.read_bytes()
        quiet = _runner.NativeStderr()
        try:
            with quiet:
                # BUILTIN applies the default delegates, i.e. XNNPACK on CPU. Allocating here,
                # not lazily in the first run, keeps what LiteRT logs then inside ``quiet``.
                self._interp = interp_mod.Interpreter(
                    model_content=data,
                    num_threads=threads or os.cpu_count() or 1,
                    experimental_op_resolver_type=interp_mod.OpResolverType.BUILTIN,
                )
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFormatError(
                f"LiteRT cannot load {path.name}: {first_line(exc)}{quiet.detail()}"
            ) from exc
        io_map = read_io_map(data) or {}
        key = _runner.signature_key(self._interp.get_signature_list())
        self._runner = None
        if key is not None:
            self._runner = self._interp.get_signature_runner(key)
            in_details = self._runner.get_input_details()
            out_details = self._runner.get_output_details()
            in_pairs = _pairs(io_map.get("inputs"), list(in_details))
            out_pairs = _pairs(io_map.get("outputs"), _runner.natural_order(out_details))
            in_list = [(n, in_details[s]) for n, s in in_pairs]
            out_list = [(n, out_details[s]) for n, s in out_pairs]
            self._in_keys = [s for _, s in in_pairs]
            self._out_keys = [s for _, s in out_pairs]
        else:  # an old file without signatures: tensors in graph order
            in_list = [(d["name"], d) for d in self._interp.get_input_details()]
            out_list = [(d["name"], d) for d in self._interp.get_output_details()]
            self._in_idx = [d["index"] for _, d in in_list]
            self._out_idx = [d["index"] for _, d in out_list]
        self.inputs = [_spec(n, d) for n, d in in_list]
        self.outputs = [_spec(n, d) for n, d in out_list]
        layouts = {e["name"]: e for e in io_map.get("inputs", []) if e.get("perm")}
        self._perm = {s.name: layouts[s.name]["perm"] for s in self.inputs if s.name in layouts}
        self.info = {
            "runtime": "ai-edge-litert",
            "version": _litert_version(),
            "threads": threads or 0,
            "xnnpack": True,
            "effective_precision": _runner.effective_precision(self._interp),
        }
        if layouts:
            self.info["input_layout"] = {
                n: f"{e['layout']} (source {e['source_layout']})" for n, e in layouts.items()
            }

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        float_in = []

        def adapt(spec: TensorSpec, x: np.ndarray) -> np.ndarray:
            perm = self._perm.get(spec.name)
            if (
                perm
                and x.shape != spec.shape
                and x.ndim == len(perm)
                and tuple(x.shape[i] for i in perm) == tuple(spec.shape)
            ):
                # Source-layout (NCHW) feed for an NHWC artifact. A feed that fits neither
                # layout is left as given, so the shape error names the shape the caller passed.
                x = np.transpose(x, perm)
            if spec.quantization and x.dtype.kind == "f":
                float_in.append(spec.name)
                x = quantize(x, spec)
            return x

        arrays = check_feeds(feeds, self.inputs, adapt)
        try:
            if self._runner is not None:
                got = self._runner(**dict(zip(self._in_keys, arrays, strict=True)))
                outs = [np.asarray(got[k]) for k in self._out_keys]
            else:
                for idx, x in zip(self._in_idx, arrays, strict=True):
                    self._interp.set_tensor(idx, x)
                self._interp.invoke()
                outs = [self._interp.get_tensor(i).copy() for i in self._out_idx]
        except (ValueError, RuntimeError) as exc:
            raise ConversionError(f"LiteRT failed to run the model: {first_line(exc)}") from exc
        if float_in:
            outs = [dequantize(o, s) for o, s in zip(outs, self.outputs, strict=True)]
        return outs


def _pairs(entries: Sequence[Mapping[str, Any]] | None, keys: list[str]) -> list[tuple[str, str]]:
    """(exposed name, signature key) pairs: from the edgekit map, else the signature's own."""
    if entries and sorted(e["signature"] for e in entries) == sorted(keys):
        return [(e["name"], e["signature"]) for e in entries]
    return [(k, k) for k in keys]


def _litert_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
