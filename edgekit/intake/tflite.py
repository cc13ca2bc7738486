"""TFLite intake: inspect and reference-run ``.tflite`` files with ai_edge_litert.

Exporting *from* TFLite is not offered; the TFLite file is read for ``inspect`` and
``benchmark``. A file is first loaded and run once in a child process
(:mod:`edgekit.backends.tflite_validate`): LiteRT can crash on a malformed model, and a crash
there is an error message here instead of a dead process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConversionError, ModelFormatError, UsageError, require
from edgekit.model import Feeds, SourceModel, TensorSpec, fix_shapes


def _interpreter(path: Path) -> Any:
    interp_mod = require("ai_edge_litert.interpreter", "tflite")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError(f"{path.name} is not a TFLite flatbuffer (no TFL3 identifier)")
    from edgekit.backends.tflite_validate import validate

    validate(path)
    try:
        interp = interp_mod.Interpreter(model_content=data)
    except Exception as exc:
        raise ModelFormatError(f"{path.name} is not a loadable TFLite model: {exc}") from exc
    return interp


def _details_spec(d: Mapping[str, Any]) -> TensorSpec:
    quant = d.get("quantization_parameters") or {}
    scales = np.asarray(quant.get("scales", []))
    q = None
    if scales.size:
        q = {
            "scale": scales.ravel().tolist(),
            "zero_point": np.asarray(quant.get("zero_points", [])).ravel().tolist(),
        }
    shape = tuple(int(s) if s >= 0 else "?" for s in d.get("shape_signature", d["shape"]))
    return TensorSpec(d["name"], np.dtype(d["dtype"]).name, shape, q)


def load(path: Path, overrides: Mapping[str, Sequence[int]]) -> SourceModel:
    interp = _interpreter(path)
    notes: list[str] = []
    inputs = fix_shapes([_details_spec(d) for d in interp.get_input_details()], overrides, notes)
    for d, spec in zip(interp.get_input_details(), inputs, strict=True):
        if tuple(d["shape"]) != spec.shape:
            interp.resize_tensor_input(d["index"], spec.shape)
    interp.allocate_tensors()
    outputs = [_details_spec(d) for d in interp.get_output_details()]

    def run(feeds: Feeds) -> list[np.ndarray]:
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], feeds[d["name"]])
        interp.invoke()
        return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]

    def to_onnx(dst: Path) -> None:
        raise ConversionError(
            "exporting from a .tflite source is not supported; export from the original "
            "PyTorch/Keras/ONNX model instead"
        )

    return SourceModel("tflite", inputs, outputs, interp, run, to_onnx, notes=notes)


def from_object(
    obj: Any, overrides: Mapping[str, Sequence[int]], example_inputs: Sequence[Any] | None
) -> SourceModel:
    raise UsageError("pass a .tflite file path")


def describe(path: Path) -> dict[str, Any]:
    interp = _interpreter(path)
    ops: Counter[str] = Counter(op["op_name"] for op in interp._get_ops_details())
    return {
        "inputs": [_details_spec(d).to_json() for d in interp.get_input_details()],
        "outputs": [_details_spec(d).to_json() for d in interp.get_output_details()],
        # TFLite keeps weights as buffers without names that mark them as such; counting them
        # reliably needs the flatbuffer schema, so this is left unknown rather than guessed.
        "parameters": None,
        "ops": dict(ops.most_common()),
    }
