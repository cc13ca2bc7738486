"""Graph fixes and checks before quantizing: the opset lift per-channel int8 needs, the exact
fp32 copy of an fp16-weight source, and the check of ``--keep-float`` node names.

* Per-channel DequantizeLinear (its ``axis``) needs opset 13: an opset 11/12 graph is lifted
  with ONNX's version converter and checked to compute the same outputs.
* A source that already stores fp16 weights is quantized to int8 from an exact fp32 copy (the
  quantizers take float32 only); notes say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.onnxruntime.runtime import error_text
from edgekit.errors import ConversionError
from edgekit.recipe import Recipe

# Per-channel DequantizeLinear (its ``axis`` attribute) exists from opset 13 on.
_PER_CHANNEL_OPSET = 13


def opset_for_per_channel(src: Path, recipe: Recipe, workdir: Path) -> tuple[Path, list[str]]:
    """Per-channel int8 of an opset 11/12 model (PaddleOCR and ddddocr exports, say) writes
    DequantizeLinear with ``axis``, which ONNX Runtime then refuses as an invalid graph: lift
    the graph to opset 13 first with ONNX's own version converter, and check that it still
    computes the same thing on a random input before using it."""
    import onnx
    from onnx import version_converter

    if not recipe.per_channel:
        return src, []
    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= _PER_CHANNEL_OPSET:
        return src, []
    try:
        # No onnx.checker here: real exports often fail it (ddddocr declares an output without
        # a shape) while running fine; ONNX Runtime running both graphs below is the check.
        upgraded = version_converter.convert_version(model, _PER_CHANNEL_OPSET)
    except Exception as exc:
        raise ConversionError(
            f"per-channel int8 needs opset {_PER_CHANNEL_OPSET} and ONNX's version converter "
            f"could not lift this opset-{opset} model ({error_text(exc)}); re-export it at "
            f"opset {_PER_CHANNEL_OPSET} or later, or pass --per-tensor"
        ) from exc
    lifted = workdir / "opset13.onnx"
    onnx.save(upgraded, str(lifted))
    if not _same_outputs(src, lifted):
        raise ConversionError(
            f"lifting this opset-{opset} model to opset {_PER_CHANNEL_OPSET} for per-channel "
            "int8 changed its outputs; re-export it at opset 13 or later, or pass --per-tensor"
        )
    return lifted, [
        f"the source is opset {opset}; per-channel int8 needs opset {_PER_CHANNEL_OPSET}, so "
        f"the graph was lifted to opset {_PER_CHANNEL_OPSET} (outputs checked unchanged)"
    ]


def _same_outputs(a: Path, b: Path) -> bool:
    import onnxruntime as ort

    sa = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in sa.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        kind = str(arg.type)
        if "float" not in kind:
            return True  # no neutral random input for ids or flags: the checker's word stands
        feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    out_a, out_b = sa.run(None, feeds), sb.run(None, feeds)
    return all(
        np.allclose(x, y, rtol=1e-4, atol=1e-5 * (np.abs(x).max() + 1))
        for x, y in zip(out_a, out_b, strict=True)
    )


def upcast_if_fp16(
    src: Path, numerics: Any, workdir: Path, notes: list[str], details: dict[str, Any]
) -> Path:
    """An fp32 copy of an fp16-weight ``src`` for the int8 quantizers (their calibration and
    DynamicQuantizeLinear take float32 only); ``src`` itself otherwise. fp16 -> fp32 is exact
    (every fp16 value is a float32), so the copy computes what the source's weights say, at
    float32 precision."""
    if not numerics.fp16:
        return src
    import onnx

    model = onnx.load(str(src))
    changed = upcast_fp16(model)
    onnx.save(model, str(workdir / "fp32-upcast.onnx"))
    notes.append(
        f"the source stores fp16 weights ({numerics.evidence}): quantized from an fp32 copy "
        f"({changed} fp16 tensors and casts made fp32; fp16 -> fp32 is exact)"
    )
    details["fp16_source"] = "upcast to fp32 before quantizing"
    return workdir / "fp32-upcast.onnx"


def upcast_fp16(model: Any) -> int:
    """Make every float16 of ``model`` float32 in place: initializers, Constant tensors, Cast
    targets, value_info and the graph's inputs/outputs, in the main graph and subgraphs; how
    many tensors and casts changed."""
    from onnx import TensorProto, numpy_helper

    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    changed = 0

    def tensor(t: Any) -> None:
        nonlocal changed
        if t.data_type == f16:
            up = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)
            t.CopyFrom(up)
            changed += 1

    def graph(g: Any) -> None:
        nonlocal changed
        for t in g.initializer:
            tensor(t)
        for info in (*g.input, *g.output, *g.value_info):
            if info.type.tensor_type.elem_type == f16:
                info.type.tensor_type.elem_type = f32
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensor(attr.t)
                for t in attr.tensors:
                    tensor(t)
                if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                    attr.i = f32
                    changed += 1
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    graph(model.graph)
    return changed
