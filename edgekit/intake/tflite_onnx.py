"""``.tflite`` -> ONNX with tf2onnx, so a TFLite file can be exported to ONNX Runtime.

tf2onnx 1.17 reads the flatbuffer itself (``tf2onnx.convert.from_tflite``) and is already in
edgekit's environment (the Keras -> ONNX route). It was checked against LiteRT on the real-model
set (DEVELOPERS.md): the BlazeFace fp16 files (max relative difference ~3e-6) and Keras-made
fp32/fp16/dynamic-range/int8 files (int8 becomes QDQ, the same integers). It converts with
``continue_on_error``: an op it has no handler for stays in the graph under its TFLite name, so
the result is checked here and such ops are named in the error, rather than left for ONNX
Runtime to refuse with a message about an unknown op.

The artifact keeps the file's layout (NHWC for images) and its tensor names: the SourceModel of
a ``.tflite`` names its inputs by tensor, and the ONNX graph is renamed to match where tf2onnx
spells them otherwise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.errors import ConversionError, first_line, require
from edgekit.model import TensorSpec

#: opset 17: per-channel QDQ needs >= 13; tf2onnx 1.17's handlers were tested up to 17
OPSET = 17
_ONNX_DOMAINS = ("", "ai.onnx", "com.microsoft")


@contextlib.contextmanager
def _quiet() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _rename(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]


def _match_order(values: Any, specs: Sequence[TensorSpec]) -> None:
    """Put the graph's inputs/outputs in the SourceModel's order where tf2onnx kept the names
    (otherwise they are matched by position)."""
    by_name = {v.name: v for v in values}
    if set(by_name) == {s.name for s in specs}:
        ordered = [type(values[0])() for _ in specs]
        for slot, spec in zip(ordered, specs, strict=True):
            slot.CopyFrom(by_name[spec.name])
        del values[:]
        values.extend(ordered)


def convert(
    path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], dst: Path
) -> None:
    """Write ``path`` as an ONNX model at ``dst`` with the SourceModel's input/output names
    and static input shapes."""
    require("tf2onnx", "onnxruntime")
    import onnx

    with _quiet():
        import tf2onnx

        try:
            model, _ = tf2onnx.convert.from_tflite(str(path), opset=OPSET)
        except Exception as exc:
            raise ConversionError(
                f"tf2onnx cannot convert {path.name}: {first_line(exc)}; export the model to "
                "ONNX Runtime from the framework it was made in"
            ) from exc
    unknown = sorted(
        {
            n.op_type
            for n in model.graph.node
            if n.domain not in _ONNX_DOMAINS or n.op_type.startswith("TFL_")
        }
    )
    if unknown:
        raise ConversionError(
            f"tf2onnx has no ONNX equivalent for {', '.join(unknown)} in {path.name}; export "
            "the model to ONNX Runtime from the framework it was made in"
        )
    graph = model.graph
    if len(graph.input) != len(inputs) or len(graph.output) != len(outputs):
        raise ConversionError(
            f"tf2onnx made {len(graph.input)} inputs / {len(graph.output)} outputs of "
            f"{path.name}, which has {len(inputs)} / {len(outputs)}"
        )
    _match_order(graph.input, inputs)
    _match_order(graph.output, outputs)
    for value, spec in zip(graph.input, inputs, strict=True):
        _rename(graph, value.name, spec.name)
        value.name = spec.name
        dims = value.type.tensor_type.shape.dim
        if len(dims) == len(spec.shape):
            # the shapes the SourceModel was loaded at (a dynamic batch fixed, --input-shape)
            for dim, size in zip(dims, spec.shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    for value, spec in zip(graph.output, outputs, strict=True):
        _rename(graph, value.name, spec.name)
        value.name = spec.name
    onnx.save(model, str(dst))


__all__ = ["OPSET", "convert"]
