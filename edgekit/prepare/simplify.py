"""Graph simplification with onnxslim: constant folding through whole subgraphs (Shape ->
Gather -> Concat -> Reshape chains become one initializer), dead-node and identity removal,
common-subexpression elimination and Conv+BN / Conv+Add style fusions.

onnxslim was chosen over onnx-simplifier and onnxoptimizer on the real-model set (see
``edgekit.realmodels``): it is pure Python, maintained, removed the most nodes on every model
(layout detector 1493 -> 521, classifier 115 -> 73) with outputs unchanged, and ran on all five,
while onnx-simplifier 0.8.1 (a native build) failed on the two opset-12 ddddocr models and
onnxoptimizer's fusions left the layout detector at 1461 nodes.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

from edgekit.prepare.shapes import unique_value_info


def _slim(model: Any, **options: Any) -> Any:
    import onnx
    import onnxslim

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnxslim freezes and rewrites the proto it is given in place
    # It logs and prints tables; stdout belongs to --json.
    quiet = logging.getLogger("onnxslim")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            out = onnxslim.slim(copy, **options)
    finally:
        quiet.setLevel(level)
    if out is None:
        raise RuntimeError("onnxslim returned no model")
    # It writes each value_info twice, which breaks the fp16 conversion after it.
    unique_value_info(out)
    return out


def simplify(model: Any) -> tuple[Any, dict[str, Any]]:
    """``model`` simplified by onnxslim; without its shape inference when that is what fails
    (control flow it cannot type), since folding and fusions do not need it."""
    try:
        return _slim(model), {"shape_inference": True}
    except Exception as first:
        try:
            out = _slim(model, no_shape_infer=True)
        except Exception:
            raise first from None
    return out, {"shape_inference": False}


def version() -> str:
    import importlib.metadata

    return importlib.metadata.version("onnxslim")
