"""Source model -> ``ov.Model`` with the source's static input shapes and I/O names.

Each source goes through OpenVINO's own frontend, not through ONNX: ONNX files directly,
PyTorch as a ``torch.export`` ExportedProgram (the route that replaces ``jit.trace``), Keras
through a ``tf.function`` with a fixed signature (``convert_model`` does not take a ``.keras``
path), SavedModel and TFLite files by path. A frontend failure becomes one ConversionError that
names the operations without a conversion rule and the other backends that take the source.

Quantization is not done here: :mod:`edgekit.backends.openvino.quantize` works on the float
``ov.Model`` this module returns, whatever the source.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.backends.openvino.runtime import (
    NAME,
    error_text,
    load_openvino,
    openvino_version,
    quiet,
)
from edgekit.errors import ConversionError, UsageError, require
from edgekit.model import SourceModel, TensorSpec


def _unconverted_ops(exc: BaseException) -> list[str]:
    """Operation names an OpenVINO frontend reported it has no conversion rule for."""
    text = str(exc)
    found: list[str] = []
    for group in re.findall(r"No conversion rule found for operations?:\s*([^\n]+)", text):
        found += [op.strip() for op in group.split(",") if op.strip()]
    found += re.findall(r"No translator found for (\S+) node", text)
    # ONNX reports "Det-17" (op-opset); the opset is noise for the user.
    return sorted({re.sub(r"-\d+$", "", op) for op in found})


def _other_backends(fmt: str) -> list[str]:
    """Registered backends, other than this one, that export from ``fmt`` sources."""
    from edgekit.backends import backend_names, get_backend

    return [
        n
        for n in backend_names()
        if n != NAME and fmt in getattr(get_backend(n), "source_formats", ())
    ]


def _conversion_error(source: SourceModel, exc: BaseException) -> ConversionError:
    others = _other_backends(source.format)
    hint = (
        f"try another backend ({', '.join(f'--target {n}' for n in others)})"
        if others
        else f"no other edgekit backend takes a {source.format} source: export from the "
        "original model"
    )
    ops = _unconverted_ops(exc)
    if ops:
        what = "operation" if len(ops) == 1 else "operations"
        return ConversionError(
            f"OpenVINO {openvino_version()} cannot convert the {source.format} model: no "
            f"conversion rule for {what} {', '.join(ops)}; {hint} or replace that operation in "
            "the model"
        )
    return ConversionError(
        f"OpenVINO could not convert the {source.format} model: {error_text(exc)}; {hint}"
    )


# ---------------------------------------------------------------- conversion, one per source


def _from_onnx(source: SourceModel, workdir: Path) -> Any:
    # The intake fixed the input shapes in memory; convert that fixed graph, not the file.
    path = workdir / "source.fp32.onnx"
    source.to_onnx(path)
    return load_openvino().convert_model(str(path))


def _from_torch(source: SourceModel, workdir: Path) -> Any:
    torch = require("torch", "torch")
    program = source.handle
    if not isinstance(program, torch.export.ExportedProgram):
        args = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in source.inputs)
        try:
            program = torch.export.export(source.handle.eval(), args)
        except Exception as exc:
            raise ConversionError(
                f"torch.export could not capture the module: {error_text(exc)}; make forward() "
                "exportable (no data-dependent Python control flow) or export it to ONNX first"
            ) from exc
    return load_openvino().convert_model(program)


def _from_keras(source: SourceModel, workdir: Path) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = require("tensorflow", "tensorflow")
    model = source.handle
    spec = [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in source.inputs]
    out_names = [o.name for o in source.outputs]

    @tf.function(input_signature=spec)
    def serve(*args: Any) -> dict[str, Any]:
        out = model(args[0] if len(args) == 1 else list(args), training=False)
        outs = list(out.values()) if isinstance(out, dict) else out
        outs = list(outs) if isinstance(outs, list | tuple) else [outs]
        return dict(zip(out_names, outs, strict=True))

    return load_openvino().convert_model(serve)


def _from_path(source: SourceModel, workdir: Path) -> Any:
    if source.path is None:
        raise UsageError(f"a {source.format} source must be given as a path")
    return load_openvino().convert_model(str(source.path))


CONVERTERS = {
    "onnx": _from_onnx,
    "torch": _from_torch,
    "keras": _from_keras,
    "savedmodel": _from_path,
    "tflite": _from_path,
}
ROUTES = {
    "onnx": "ONNX frontend",
    "torch": "torch.export ExportedProgram -> PyTorch frontend",
    "keras": "tf.function with a fixed signature -> TensorFlow frontend",
    "savedmodel": "SavedModel -> TensorFlow frontend",
    "tflite": "TFLite frontend",
}


# ---------------------------------------------------------------- I/O alignment


def _strip_name(name: str) -> str:
    name = re.sub(r":\d+$", "", name)
    return name.removeprefix("serving_default_")


def _match_ports(ports: Sequence[Any], specs: Sequence[TensorSpec]) -> list[Any]:
    """The port for each spec: by tensor name where names agree, else by position."""
    matched = []
    for spec in specs:
        hits = [
            p
            for p in ports
            if spec.name in p.get_names() or spec.name in {_strip_name(n) for n in p.get_names()}
        ]
        matched.append(hits[0] if len(hits) == 1 else None)
    if all(m is not None for m in matched) and len({id(m) for m in matched}) == len(specs):
        return matched
    if len(ports) != len(specs):
        raise ConversionError(
            f"the converted model has {len(ports)} tensors where the source has {len(specs)} "
            f"({[s.name for s in specs]}); OpenVINO changed the model's interface"
        )
    return list(ports)


def _align_io(model: Any, source: SourceModel) -> None:
    """Give the IR the source's static input shapes (but for inputs kept dynamic) and the
    source's input/output names, so the same feed dicts work on the source and on the
    artifact."""
    ov = load_openvino()
    inputs = _match_ports(model.inputs, source.inputs)
    # An input kept dynamic (--dynamic) keeps the frontend's dynamic dims (-1).
    kept = {spec.name for spec in source.dynamic}
    shapes = {
        port: ov.PartialShape(list(spec.shape))
        for port, spec in zip(inputs, source.inputs, strict=True)
        if spec.name not in kept and port.get_partial_shape() != ov.PartialShape(list(spec.shape))
    }
    if shapes:
        try:
            model.reshape(shapes)
        except Exception as exc:
            raise ConversionError(
                f"OpenVINO could not fix the input shapes {[list(s.shape) for s in source.inputs]}:"
                f" {error_text(exc)}"
            ) from exc
    for port, spec in zip(inputs, source.inputs, strict=True):
        port.get_tensor().set_names({spec.name})
    outputs = _match_ports(model.outputs, source.outputs)
    for port, spec in zip(outputs, source.outputs, strict=True):
        port.get_tensor().set_names({spec.name})


def convert_source(source: SourceModel, workdir: Path) -> Any:
    """The source as an ov.Model with the source's static shapes and I/O names."""
    load_openvino()
    convert = CONVERTERS.get(source.format)
    if convert is None:
        raise UsageError(f"OpenVINO cannot take a {source.format} source")
    try:
        with quiet():
            model = convert(source, workdir)
    except (ConversionError, UsageError):
        raise
    except Exception as exc:  # frontends raise OpConversionFailure, RuntimeError, ...
        raise _conversion_error(source, exc) from exc
    _align_io(model, source)
    return model
