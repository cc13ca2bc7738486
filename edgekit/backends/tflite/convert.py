"""Source model -> FP32 ``.tflite`` bytes plus the I/O map between source and artifact.

Routes, chosen by the source's format:

* Keras 3 / legacy ``.h5`` (anything the Keras intake loads) and SavedModel: the model is traced
  at its fixed input shapes into a SavedModel and converted with ``TFLiteConverter``. Fixed
  shapes matter: a dynamic batch dimension leaves SHAPE/PACK ops in the graph that are float
  islands after quantization and that an Edge TPU compiler rejects.
* PyTorch (``nn.Module`` or ``torch.export`` program): ``litert-torch`` (extra
  ``edgekit[torch-tflite]``). 4-D float inputs are exported channels-last (NHWC, what mobile
  kernels and delegates want) unless the NCHW and NHWC shapes coincide, which would make a
  feed's layout ambiguous.
* ONNX: onnx2torch to a torch module at the static input shapes
  (:mod:`edgekit.backends.tflite.onnx_route`), then litert-torch as for PyTorch, channels-last
  the same way. onnx2tf, the other converter, pins TensorFlow 2.19 and numpy 1.26 and downloads
  a file at run time, so it cannot live in one environment with edgekit.

Quantization is not done here: every route ends in an FP32 ``.tflite`` that
:mod:`edgekit.backends.tflite.quantize` quantizes the same way whatever the source.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ConversionError, MissingDependencyError, first_line, require
from edgekit.model import SourceModel, output_list

NCHW_TO_NHWC = [0, 2, 3, 1]


@dataclass
class Converted:
    """An FP32 model and how its signature relates to the source's inputs and outputs."""

    model: bytes
    #: per source input: name, signature key, and for transposed inputs layout/perm
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    #: route-specific facts kept in the converted model's meta (the ONNX route's module names)
    extra: dict[str, Any] = field(default_factory=dict)

    def io_map(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "outputs": self.outputs}


def convert(source: SourceModel, workdir: Path) -> Converted:
    if source.format in ("keras", "savedmodel"):
        return _from_tensorflow(source, workdir)
    if source.format == "torch":
        return _from_torch(source)
    if source.format == "onnx":
        return _from_onnx(source)
    raise ConversionError(
        f"cannot convert a {source.format} model to TFLite; pass the PyTorch, Keras, ONNX or "
        "SavedModel source"
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TF and litert-torch print progress and SavedModel listings to stdout; our summary is
    what the user reads."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def _from_tensorflow(source: SourceModel, workdir: Path) -> Converted:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = require("tensorflow", "tensorflow")
    specs = [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in source.inputs]
    out_names = [s.name for s in source.outputs]
    saved = Path(tempfile.mkdtemp(dir=workdir, prefix="savedmodel-"))
    try:
        with _quiet():
            if source.format == "keras":
                call, keep = _keras_callable(source.handle, specs, saved)
            else:
                call, keep = _savedmodel_callable(source.handle, [s.name for s in source.inputs])

            @tf.function(input_signature=specs)
            def serve(*args: Any) -> dict[str, Any]:
                outs = call(list(args))
                return dict(zip(out_names, outs, strict=True))

            converter = tf.lite.TFLiteConverter.from_concrete_functions(
                [serve.get_concrete_function()], keep
            )
            if _keras_qat(source):
                # Its fake-quant ops are the quantization: with no representative dataset the
                # converter writes full-integer ops at exactly the trained ranges.
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            model = converter.convert()
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"TFLiteConverter failed: {first_line(exc)}") from exc
    inputs = [{"name": s.name, "signature": s.name} for s in source.inputs]
    outputs = [{"name": n, "signature": n} for n in out_names]
    return Converted(bytes(model), inputs, outputs)


def _keras_callable(model: Any, specs: list[Any], saved: Path) -> tuple[Any, Any]:
    """Keras 3 variables are not TF trackables the converter can freeze when a tf.function
    captures the model; ``model.export`` writes a SavedModel whose variables it can."""
    tf = require("tensorflow", "tensorflow")
    signature = [specs[0]] if len(specs) == 1 else [specs]
    model.export(str(saved), format="tf_saved_model", input_signature=signature, verbose=False)
    loaded = tf.saved_model.load(str(saved))
    endpoint = loaded.serve

    def call(args: list[Any]) -> list[Any]:
        return output_list(endpoint(args[0] if len(args) == 1 else args))

    return call, loaded


def _keras_qat(source: SourceModel) -> bool:
    from edgekit.compress.as_trained import is_qat

    return source.format == "keras" and is_qat(source.handle)


def _savedmodel_callable(loaded: Any, names: list[str]) -> tuple[Any, Any]:
    sig = loaded.signatures["serving_default"]
    out_keys = list(sig.structured_outputs)

    def call(args: list[Any]) -> list[Any]:
        outs = sig(**dict(zip(names, args, strict=True)))
        return [outs[k] for k in out_keys]

    return call, loaded


def _from_onnx(source: SourceModel) -> Converted:
    from edgekit.backends.tflite.onnx_route import to_torch

    _litert_torch()
    module, meta = to_torch(source)
    converted = _litert(module, source)
    converted.extra.update(meta)
    return converted


def _litert_torch() -> Any:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    # litert-torch imports TensorFlow, whose oneDNN banner ignores TF_CPP_MIN_LOG_LEVEL; the
    # conversion runs no TF kernels that oneDNN would speed up (see edgekit.intake.keras).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    require("torch", "torch")
    # litert-torch imports torchao, which logs at WARNING that CUDA/Triton kernels are absent:
    # true of every CPU machine and of no use to our users. It also registers pytree nodes
    # torch now warns about (torch.utils._pytree, "register_constant() on Enum subclasses is
    # deprecated"): torch's import resets its loggers' levels, so this comes after it.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        import litert_torch
    except ImportError as exc:
        raise MissingDependencyError("litert_torch", "torch-tflite") from exc
    return litert_torch


def _from_torch(source: SourceModel) -> Converted:
    torch = require("torch", "torch")
    _litert_torch()
    handle = source.handle
    # An exported program is already traced for inference, and its module refuses eval().
    exported = isinstance(handle, torch.export.ExportedProgram)
    # unflatten, not .module(): it keeps the module hierarchy, so litert-torch names the ops
    # by their source modules (layer rules match those names, as on the other backends).
    module = torch.export.unflatten(handle) if exported else handle.eval()
    from edgekit.compress.as_trained import is_qat

    if is_qat(handle):
        # A QAT program goes in flat: litert-torch matches its quantize/dequantize patterns
        # on the plain graph (checked), and converts them to int8 tensors at those scales.
        module = handle.module() if exported else handle
    return _litert(module, source)


def _qat_config(source: SourceModel) -> Any:
    """litert-torch's quant config for a QAT source (its PT2E quantizer's scheme), else None."""
    from edgekit.compress.as_trained import is_qat

    if not is_qat(source.handle):
        return None
    from litert_torch.quantize.quant_config import QuantConfig

    from edgekit.compress.torch_qat import quantizer

    return QuantConfig(pt2e_quantizer=quantizer())


def _litert(module: Any, source: SourceModel) -> Converted:
    """``module`` (called with the source's inputs in order) through litert-torch."""
    torch = require("torch", "torch")
    litert_torch = _litert_torch()
    notes: list[str] = []
    channel_last: list[int] = []
    args = []
    inputs: list[dict[str, Any]] = []
    for i, spec in enumerate(source.inputs):
        x = torch.zeros(spec.shape, dtype=getattr(torch, spec.dtype))
        entry: dict[str, Any] = {"name": spec.name, "signature": f"args_{i}"}
        if len(spec.shape) == 4 and x.is_floating_point():
            nhwc = tuple(spec.shape[j] for j in NCHW_TO_NHWC)
            if nhwc == tuple(spec.shape):
                notes.append(
                    f"input '{spec.name}' {list(spec.shape)} kept NCHW: its NHWC shape is the "
                    "same, so a feed's layout could not be told apart"
                )
            else:
                channel_last.append(i)
                x = x.permute(*NCHW_TO_NHWC).contiguous()
                entry.update(
                    layout="NHWC",
                    source_layout="NCHW",
                    perm=NCHW_TO_NHWC,
                    shape=list(nhwc),
                    source_shape=list(spec.shape),
                )
        args.append(x)
        inputs.append(entry)
    if channel_last:
        module = litert_torch.to_channel_last_io(module, args=channel_last)
        # Not .eval(): it recurses into an exported program's module, which refuses it.
        module.training = False
    try:
        with _quiet():
            edge = litert_torch.convert(module, tuple(args), quant_config=_qat_config(source))
            model = edge.model_content()
    except Exception as exc:
        raise ConversionError(f"litert-torch failed: {first_line(exc)}") from exc
    outputs = [{"name": s.name, "signature": f"output_{i}"} for i, s in enumerate(source.outputs)]
    return Converted(bytes(model), inputs, outputs, notes)
