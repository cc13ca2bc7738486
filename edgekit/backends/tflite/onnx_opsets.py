"""Newer-opset ONNX nodes in the form onnx2torch 1.5.15 converts.

onnx2torch picks a converter by the version of the op's schema at the model's opset, and it has
none past opset 17 for most ops (Reshape 19, Reduce* 18, Pad 18, Split 18, Resize 18, ...): a
model torch.onnx writes today (opset 18-20) is refused whole. Most of those versions only admit
new tensor types (float8, int4, bfloat16): :data:`TYPE_ONLY` maps them to the converter of the
version before. The rest moved an attribute to an input or added an attribute; a node that uses
them in the older way (a constant ``axes`` input, the new attribute at its default) is rewritten
into the older form here (:func:`lower`), and one that does not is refused by name. A
Reshape's ``allowzero=1`` (torch.onnx writes it) is dropped where the shape holds no 0.
onnx.version_converter was tried first: it has no adapter down from Pad 18.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.errors import ConversionError

#: (op, since-version) whose schema differs from ``version`` only in the types it allows
TYPE_ONLY: dict[tuple[str, int], int] = {
    ("Reshape", 19): 14,
    ("Reshape", 21): 14,
    ("Shape", 19): 15,
    ("Shape", 21): 15,
    ("Identity", 19): 16,
    ("Identity", 21): 16,
    ("Constant", 19): 13,
    ("Constant", 21): 13,
    ("Cast", 19): 13,  # and "saturate", which applies to float8 targets only
    ("Cast", 21): 13,
    ("Flatten", 21): 13,
    ("Transpose", 21): 13,
    ("Squeeze", 21): 13,
    ("Unsqueeze", 21): 13,
    ("ConstantOfShape", 20): 9,
    ("ConstantOfShape", 21): 9,
    ("Equal", 19): 13,
    ("IsInf", 20): 10,
    ("IsNaN", 20): 13,
    ("GreaterOrEqual", 16): 12,
    ("LessOrEqual", 16): 12,
    ("ReduceMax", 20): 18,
    ("ReduceMin", 20): 18,
}
_REDUCE = (
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)
#: (op, since-version) rewritten by :func:`lower` into the form of the version given
REWRITTEN: dict[tuple[str, int], int] = {
    **{(op, 18): 13 for op in _REDUCE},
    ("Split", 18): 13,
    ("Pad", 18): 13,
    ("Pad", 19): 13,
    ("Pad", 21): 13,
    ("Resize", 18): 13,
    ("Resize", 19): 13,
    ("AveragePool", 19): 11,
    ("ScatterND", 18): 16,
}


def register(registry: Any) -> None:
    """Alias the older converters in onnx2torch's registry under the newer versions."""
    table = registry._CONVERTER_REGISTRY
    describe = registry.OperationDescription
    for (op, new), old in {**TYPE_ONLY, **REWRITTEN}.items():
        key = describe(domain="", operation_type=op, version=new)
        older = table.get(describe(domain="", operation_type=op, version=old))
        if key not in table and older is not None:
            table[key] = older


def _since(op: str, opset: int) -> int | None:
    from onnx import defs

    try:
        return int(defs.get_schema(op, max_inclusive_version=opset).since_version)
    except Exception:
        return None


def _const(graph: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _drop(node: Any, *names: str) -> None:
    keep = [a for a in node.attribute if a.name not in names]
    del node.attribute[:]
    node.attribute.extend(keep)


def _refuse(node: Any, version: int, why: str) -> None:
    raise ConversionError(
        f"ONNX -> TFLite: {node.op_type} (opset {version} form, node '{node.name}') {why}; "
        "onnx2torch converts only its older form. Re-export the model at opset 17, or export "
        "it with --target onnxruntime or --target openvino"
    )


def _lower_node(graph: Any, node: Any, version: int) -> None:
    from onnx import helper

    op = node.op_type
    if op in _REDUCE:
        if len(node.input) > 1 and node.input[1]:
            axes = _const(graph, node.input[1])
            if axes is None:
                _refuse(node, version, "reads its axes from a computed tensor")
            node.attribute.append(helper.make_attribute("axes", [int(a) for a in axes]))
            del node.input[1:]
        if _attr(node, "noop_with_empty_axes"):
            _refuse(node, version, "sets noop_with_empty_axes")
        _drop(node, "noop_with_empty_axes")
    elif op == "Split":
        count = _attr(node, "num_outputs")
        if count is not None and count != len(node.output):
            _refuse(node, version, "has num_outputs unlike its output count")
        _drop(node, "num_outputs")
    elif op == "Pad":
        if len(node.input) > 3 and node.input[3]:
            _refuse(node, version, "pads only some axes (its axes input)")
        mode = _attr(node, "mode")
        if mode not in (None, b"constant", b"reflect", b"edge"):
            _refuse(node, version, f"uses mode {mode.decode()}")
    elif op == "Resize":
        if _attr(node, "antialias") or _attr(node, "axes"):
            _refuse(node, version, "uses antialias or axes")
        if _attr(node, "keep_aspect_ratio_policy") not in (None, b"stretch"):
            _refuse(node, version, "uses keep_aspect_ratio_policy")
        _drop(node, "antialias", "axes", "keep_aspect_ratio_policy")
    elif op == "AveragePool":
        dilations = _attr(node, "dilations")
        if dilations and any(d != 1 for d in dilations):
            _refuse(node, version, "is dilated")
        _drop(node, "dilations")
    elif op == "ScatterND" and _attr(node, "reduction") in (b"max", b"min"):
        _refuse(node, version, "reduces with max/min")


def lower(model: Any) -> int:
    """Rewrite in place the main graph's nodes of :data:`REWRITTEN` versions into their older
    form (see the module's docstring); the number rewritten."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    changed = 0
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Reshape" and _attr(node, "allowzero"):
            # torch.onnx writes allowzero=1, which onnx2torch refuses; it only changes what a
            # 0 in the shape means, so with a constant shape that has none it is dropped
            shape = _const(model.graph, node.input[1])
            if shape is not None and 0 not in shape:
                _drop(node, "allowzero")
                changed += 1
        version = _since(node.op_type, opset)
        if version is not None and (node.op_type, version) in REWRITTEN:
            _lower_node(model.graph, node, version)
            changed += 1
    return changed


__all__ = ["REWRITTEN", "TYPE_ONLY", "lower", "register"]
