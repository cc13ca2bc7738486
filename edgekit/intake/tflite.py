"""TFLite intake: inspect and reference-run ``.tflite`` files with ai_edge_litert.

A ``.tflite`` source is read for ``inspect`` and ``benchmark``, and exported by the backends
that list ``tflite`` in their ``source_formats`` (OpenVINO converts it by path). A file is first
loaded and run once in a child process (:mod:`edgekit.backends.tflite.validate`): LiteRT can
crash on a malformed model, and a crash there is an error message here instead of a dead
process.

A file edgekit exported carries its source's input/output names and layout (the ``edgekit_io``
map, :mod:`edgekit.backends.tflite.session`). ``inspect`` shows those names, as edgekit's
sessions and ``benchmark --inputs`` take them, with the artifact's signature key, tensor name
and layout beside them; files without a map are named by their signature keys. As a source
model (e.g. for OpenVINO, whose TFLite frontend keeps tensor names) inputs stay named by tensor,
and ``run`` also takes the source's names in either layout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelFormatError, UsageError, first_line, require
from edgekit.model import Feeds, SourceModel, TensorSpec, fix_shapes


def _interpreter(path: Path) -> Any:
    interp_mod = require("ai_edge_litert.interpreter", "tflite")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError(f"{path.name} is not a TFLite flatbuffer (no TFL3 identifier)")
    from edgekit.backends.tflite.validate import validate

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


def _io_map(path: Path) -> dict[str, Any]:
    from edgekit.backends.tflite.session import read_io_map

    return read_io_map(path.read_bytes()) or {}


def _signature_keys(interp: Any) -> dict[str, dict[int, str]]:
    """``inputs``/``outputs``: tensor index -> signature key, for a model with one signature
    (with several, a signature's tensor indices may belong to a subgraph other than the one
    the plain interpreter runs)."""
    try:
        sigs = interp._get_full_signature_list()
    except Exception:  # a private helper; older interpreters may lack it
        return {"inputs": {}, "outputs": {}}
    if len(sigs or {}) != 1:
        return {"inputs": {}, "outputs": {}}
    sig = next(iter(sigs.values()))
    return {k: {int(i): n for n, i in (sig.get(k) or {}).items()} for k in ("inputs", "outputs")}


def _named(
    details: Sequence[Mapping[str, Any]], keys: Mapping[int, str], entries: Sequence[Any]
) -> list[dict[str, Any]]:
    """describe()'s entries: the source name from the map, else the signature key, else the
    tensor name; the artifact's own names and layout as extra fields where they differ."""
    by_key = {e["signature"]: e for e in entries or [] if "signature" in e and "name" in e}
    out = []
    for d in details:
        key = keys.get(d["index"])
        entry = by_key.get(key) if key else None
        info = _details_spec(d).to_json()
        info["name"] = entry["name"] if entry else key or d["name"]
        if key and key != info["name"]:
            info["signature"] = key
        if d["name"] != info["name"]:
            info["tensor"] = d["name"]
        if entry and entry.get("perm"):
            info["layout"] = entry.get("layout")
            info["source_layout"] = entry.get("source_layout")
            info["source_shape"] = entry.get("source_shape")
        out.append(info)
    return out


def load(path: Path, overrides: Mapping[str, Sequence[int]]) -> SourceModel:
    interp = _interpreter(path)
    aliases = _aliases(interp, _io_map(path))
    notes: list[str] = []
    inputs = fix_shapes([_details_spec(d) for d in interp.get_input_details()], overrides, notes)
    for d, spec in zip(interp.get_input_details(), inputs, strict=True):
        if tuple(d["shape"]) != spec.shape:
            interp.resize_tensor_input(d["index"], spec.shape)
    # Allocation applies LiteRT's CPU delegate, which logs from C++ to the terminal.
    from edgekit.backends.tflite.runner import NativeStderr

    quiet = NativeStderr()
    try:
        with quiet:
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelFormatError(
            f"{path.name}: LiteRT cannot allocate the model: {first_line(exc)}{quiet.detail()}"
        ) from exc
    outputs = [_details_spec(d) for d in interp.get_output_details()]

    def run(feeds: Feeds) -> list[np.ndarray]:
        for d in interp.get_input_details():
            x = feeds.get(d["name"])
            if x is None and d["name"] in aliases:
                name, perm = aliases[d["name"]]
                x = np.asarray(feeds[name])
                if perm and x.ndim == len(perm) and tuple(x.shape) != tuple(d["shape"]):
                    x = np.ascontiguousarray(np.transpose(x, perm))  # source layout (NCHW)
            interp.set_tensor(d["index"], feeds[d["name"]] if x is None else x)
        interp.invoke()
        return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]

    def to_onnx(dst: Path) -> None:
        from edgekit.intake.tflite_onnx import convert

        convert(path, inputs, outputs, dst)

    return SourceModel("tflite", inputs, outputs, interp, run, to_onnx, notes=notes)


def _aliases(interp: Any, io_map: Mapping[str, Any]) -> dict[str, tuple[str, list[int] | None]]:
    """Tensor name -> (source name, perm from the source layout) for mapped inputs."""
    keys = _signature_keys(interp)["inputs"]
    by_key = {e["signature"]: e for e in io_map.get("inputs") or [] if "signature" in e}
    out = {}
    for d in interp.get_input_details():
        entry = by_key.get(keys.get(d["index"], ""))
        if entry and entry.get("name"):
            out[d["name"]] = (entry["name"], entry.get("perm"))
    return out


def from_object(
    obj: Any, overrides: Mapping[str, Sequence[int]], example_inputs: Sequence[Any] | None
) -> SourceModel:
    raise UsageError("pass a .tflite file path")


def describe(path: Path) -> dict[str, Any]:
    from edgekit.intake.compression import tflite_numerics

    interp = _interpreter(path)
    ops: Counter[str] = Counter(op["op_name"] for op in interp._get_ops_details())
    io_map, keys = _io_map(path), _signature_keys(interp)
    return {
        "inputs": _named(interp.get_input_details(), keys["inputs"], io_map.get("inputs")),
        "outputs": _named(interp.get_output_details(), keys["outputs"], io_map.get("outputs")),
        # TFLite keeps weights as buffers without names that mark them as such; counting them
        # reliably needs the flatbuffer schema, so this is left unknown rather than guessed.
        "parameters": None,
        "ops": dict(ops.most_common()),
        "numerics": tflite_numerics(path.read_bytes()).to_json(),
    }
