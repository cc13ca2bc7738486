"""The quantizable layers of a converted FP32 ``.tflite``, named by the source model's names.

What ai-edge-quantizer (AEQ) addresses: a recipe rule's ``regex`` is matched with
``re.search`` against each op's *scope*, ``tfl_flatbuffer_utils.get_op_scope``: the op's output
tensor names joined by ``;`` with a trailing ``;`` (its input names when it has no output),
cut at 10,000 characters. That scope string is a layer's ``native`` name, computed by AEQ's own
function so that the two cannot drift; :func:`scope_regex` turns natives into the anchored
pattern (``^...$`` of ``re.escape``) that selects exactly those ops, since a bare name would
also match every op whose scope merely contains it. Tensor names are unique in a subgraph, so
scopes are too. Quantizable ops are the compute ops AEQ quantizes with weights or as matrix
products: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, BATCH_MATMUL, TRANSPOSE_CONV (AEQ's
``CONV_2D_TRANSPOSE``); AEQ has no LSTM, and EMBEDDING_LOOKUP is left out as Gather is on the
other backends. The elementwise ops AEQ also quantizes on their own (:data:`ELEMENTWISE`) are
listed as kind ``op``, named as ONNX Runtime names them.

Where the source name comes from (``name``):

* PyTorch (litert-torch): every tensor is named after the MLIR location litert-torch builds from
  the fx node's ``nn_module_stack`` (``backend/debuginfo/_build.py``): ``Class_attr`` per module
  level joined by ``/`` and ended by ``;`` (``models.Net/torch.nn.modules.conv.Conv2d_conv1;``),
  fused locations joined by ``;``, then a number making the name unique. The module path is the
  ``attr`` of each level below the root (``features.0``; the ``wrapped`` level of litert-torch's
  channels-last wrapper dropped). Of the modules in an op's output name (a fused conv + BN +
  ReLU names all three), the conv/linear-like one wins, then the one its weight tensor names.
  An attention matmul (no weights) is named by the module it runs in (``attn``), as on ORT.
  ``Class_attr`` is split at the first ``_`` of the class name, which a class named with ``_``
  defeats; given the source, the split that names a real module is taken.
* Keras / SavedModel (TFLiteConverter): TensorFlow scope names, ``functional_1/conv2d_1/...``;
  :func:`edgekit.layer_names.keras_name` maps them back (``conv2d``). The same function serves
  the ORT (tf2onnx) and OpenVINO (TF frontend) routes, which carry the same scopes.
* ONNX (onnx2torch, then litert-torch): as for PyTorch, with the modules onnx2torch made, one
  per ONNX node (``n0``, ``n1``, ...), mapped back to the node names by the conversion's
  :data:`~edgekit.backends.tflite.onnx_route.ONNX_MODULES`: the names ONNX Runtime and
  OpenVINO list the same layers by. Elementwise ops are named by their node too.
* ``.tflite`` sources: the op's output tensor names (joined by ``;``), the file's own names.

An op no name traces back to is named by its scope. The helpers every backend's layers module
shares for TensorFlow scopes and torch module paths (they are about the source frameworks, not
about LiteRT) live in :mod:`edgekit.layer_names`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from edgekit.backends.base import Converted
from edgekit.backends.tflite.onnx_route import ONNX_MODULES, ONNX_OUTPUTS
from edgekit.errors import require
from edgekit.layer_names import (
    LAYER_NAMES,
    Traced,
    finish,
    is_compute,
    keras_layers,
    keras_name,
    recorded_names,
    torch_modules,
)
from edgekit.layers import Layer
from edgekit.model import SourceModel

#: TFLite builtin ops AEQ quantizes as weighted or matrix-product compute ops
OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}
)
#: ops AEQ's ALL_SUPPORTED rule also quantizes by themselves (int8 in and out), by the name
#: their ONNX counterpart has, so that rules and the gate reach them under the name they have on
#: ONNX Runtime (``blocks.0.attn:Softmax``, ``scaler:Mul``): a softmax over masked scores or a
#: baked-in input scaler loses its accuracy there, where no weighted layer can win it back.
#: Data movement (RESHAPE, TRANSPOSE, SLICE, ...) keeps its input's scale and is left out.
ELEMENTWISE = {
    "ADD": "Add",
    "SUB": "Sub",
    "MUL": "Mul",
    "DIV": "Div",
    "SELECT_V2": "Where",
    "SOFTMAX": "Softmax",
    "LOGISTIC": "Sigmoid",
    "TANH": "Tanh",
    "GELU": "Gelu",
    "HARD_SWISH": "HardSwish",
    "MEAN": "ReduceMean",
    "SUM": "ReduceSum",
    "RSQRT": "Rsqrt",
    "SQUARED_DIFFERENCE": "SquaredDifference",
    "CONCATENATION": "Concat",
    "AVERAGE_POOL_2D": "AveragePool",
}
_WRAPPER = "litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper"


# ---------------------------------------------------------------- litert-torch tensor names


def _splits(level: str) -> list[tuple[str, str]]:
    """The (class, attribute) readings of one ``Class_attr`` level: split at each ``_`` after the
    class name's first character, the first such ``_`` first. The class is dotted
    (``torch.nn.modules.conv.Conv2d``), the attribute never is."""
    start = level.rfind(".") + 2  # a class name has at least one character
    out = []
    for i, ch in enumerate(level):
        if ch == "_" and i >= start and i + 1 < len(level):
            out.append((level[:i], level[i + 1 :]))
    return out


def litert_modules(
    tensor_name: str, known: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """(module path, class) of each module location in a litert-torch tensor name. Names it
    did not build (``serving_default_args_0``, ``arith.constant``) and locations at the root
    module, which name no layer, give none."""
    found: list[tuple[str, str]] = []
    for part in tensor_name.split(";"):
        levels = part.split("/")
        rest = levels[1:]
        if levels[0] == _WRAPPER and rest and rest[0].endswith("_wrapped"):
            rest = rest[1:]
        hit = _resolve(rest, "", known) if rest else None
        if hit is not None:
            found.append(hit)
    return found


def _resolve(
    levels: Sequence[str], prefix: str, known: Mapping[str, str] | None
) -> tuple[str, str] | None:
    if not levels:
        return None
    for cls, attr in _splits(levels[0]):
        path = f"{prefix}.{attr}" if prefix else attr
        if known is not None and path not in known:
            continue
        if len(levels) == 1:
            # The source's class where known: a program unflattened by torch.export names its
            # modules' classes InterpreterModule in the tensor names.
            return path, known[path] if known is not None else cls
        deeper = _resolve(levels[1:], path, known)
        if deeper is not None:
            return deeper
        if known is None:
            return None
    return None


def _output_compute(outputs: Sequence[str], known: Mapping[str, str] | None) -> set[str]:
    """The conv/linear-like modules named in an op's output tensor names."""
    return {p for n in outputs for p, c in litert_modules(n, known) if p and is_compute(c)}


def _pick_torch(
    outputs: Sequence[str],
    weights: Sequence[str],
    known: Mapping[str, str] | None,
    claimed: Collection[str] = (),
) -> str | None:
    """The module an op belongs to, from its output and constant-input tensor names.
    ``claimed``: modules that another op's output names alone."""
    out = list(dict.fromkeys(m for n in outputs for m in litert_modules(n, known)))
    wts = list(dict.fromkeys(m for n in weights for m in litert_modules(n, known)))
    out_compute = _output_compute(outputs, known)
    wts_compute = {p for p, c in wts if p and is_compute(c)}
    if len(out_compute) == 1:
        return next(iter(out_compute))
    # Two compute modules in one output name: MLIR fused the op's location with another op's.
    # One that another op names alone is that op's (k and v after a LayerNorm carry q's, and
    # so do their weights' names; a Linear called after another carries that one's).
    if len(out_compute - set(claimed)) == 1:
        return next(iter(out_compute - set(claimed)))
    # Otherwise the weight's wins.
    if len(out_compute & wts_compute) == 1:
        return next(iter(out_compute & wts_compute))
    if len(wts_compute) == 1:
        return next(iter(wts_compute))
    paths = {p for p, _ in out} or {p for p, _ in wts}
    if len(paths) == 1 and next(iter(paths)):
        return next(iter(paths))
    return None


# ---------------------------------------------------------------- the layers


def scope_regex(native: Sequence[str]) -> str:
    """An AEQ recipe ``regex`` that selects exactly the ops with these scopes (AEQ searches,
    so it is anchored)."""
    return "^(?:" + "|".join(re.escape(n) for n in native) + ")$"


def _format(converted: Converted, source: SourceModel | None) -> str:
    if source is not None:
        return source.format
    if "tflite_source" in converted.meta:
        return "tflite"
    if ONNX_MODULES in converted.meta:
        return "onnx"
    inputs = converted.meta.get("inputs") or []
    # litert-torch names its signature inputs args_0, args_1, ...; TFLiteConverter uses the
    # source's input names.
    if inputs and all(str(e.get("signature", "")).startswith("args_") for e in inputs):
        return "torch"
    return "keras"


def _traced(converted: Converted, source: SourceModel | None) -> list[Traced]:
    fbu = require("ai_edge_litert.tools.flatbuffer_utils", "tflite")
    aeq = require("ai_edge_quantizer.utils.tfl_flatbuffer_utils", "tflite")
    model = fbu.read_model_from_bytearray(bytearray(converted.path("model.tflite").read_bytes()))
    fmt = _format(converted, source)
    known_torch = torch_modules(source) if source is not None and fmt == "torch" else None
    onnx_nodes: dict[str, str] = {}
    signature_nodes: dict[str, str] = {}
    if fmt == "onnx":
        # onnx2torch's modules, each one ONNX node, are what litert-torch named the ops after
        modules = converted.meta[ONNX_MODULES]
        known_torch = {path: cls for path, (_, cls) in modules.items()}
        onnx_nodes = {path: node for path, (node, _) in modules.items()}
        # a graph output's tensor is named after its signature key ("output_0"), not its module
        by_key = {e["signature"]: e["name"] for e in converted.meta.get("outputs") or []}
        last = converted.meta.get(ONNX_OUTPUTS) or {}
        signature_nodes = {key: last[name] for key, name in by_key.items() if name in last}
    known_keras = set(keras_layers(source)) if source is not None and fmt == "keras" else None
    found: list[Traced] = []
    for graph in model.subgraphs:
        produced = {i for op in graph.operators for i in op.outputs}
        claimed: set[str] = set()
        for op in graph.operators if fmt in ("torch", "onnx") else ():
            if fbu.opcode_to_name(model, op.opcodeIndex) in OPS:
                outs = [aeq.get_tensor_name(graph.tensors[i]) for i in op.outputs if i >= 0]
                alone = _output_compute(outs, known_torch)
                claimed |= alone if len(alone) == 1 else set()
        graph_inputs = set(graph.inputs)
        for op in graph.operators:
            kind = fbu.opcode_to_name(model, op.opcodeIndex)
            if kind not in OPS and kind not in ELEMENTWISE:
                continue
            scope = aeq.get_op_scope(op, graph.tensors)
            outputs = [aeq.get_tensor_name(graph.tensors[i]) for i in op.outputs if i >= 0]
            weights = [
                aeq.get_tensor_name(graph.tensors[i])
                for i in op.inputs
                if i >= 0 and i not in produced and i not in graph_inputs
            ]
            name: str | None = None
            if fmt == "torch" and kind in ELEMENTWISE:
                name = _op_module(outputs, known_torch)
            elif fmt == "torch":
                name = _pick_torch(outputs, weights, known_torch, claimed)
            elif fmt == "onnx":
                pick = (
                    _op_module(outputs, known_torch)
                    if kind in ELEMENTWISE
                    else _pick_torch(outputs, weights, known_torch, claimed)
                )
                name = onnx_nodes.get(pick or "") or _signature_node(outputs, signature_nodes)
            elif fmt == "keras":
                name = _keras_op(outputs, weights, known_keras)
            elif fmt == "tflite":
                name = ";".join(outputs) or None
            if kind not in ELEMENTWISE:
                found.append(Traced(name, kind, (scope,), scope, "layer", bool(weights)))
            elif fmt in ("tflite", "onnx") or name is None:  # own names (nodes), or untraced
                found.append(Traced(name, kind, (scope,), scope, "op"))
            else:
                # named after the module it runs in and its type, as on ONNX Runtime
                label = ELEMENTWISE[kind]
                op_name = f"{name}:{label}" if name else label  # "Add" at the root module
                found.append(Traced(op_name, kind, (scope,), scope, "op"))
    return found


def _signature_node(outputs: Sequence[str], nodes: Mapping[str, str]) -> str | None:
    """The ONNX node behind an op whose output is a signature output (``..._output_0_...``)."""
    for tensor in outputs:
        for key in re.findall(r"output_\d+", tensor):
            if key in nodes:
                return nodes[key]
    return None


def _op_module(outputs: Sequence[str], known: Mapping[str, str] | None) -> str:
    """The module an elementwise op runs in ("" at the root). Its own location comes first in a
    fused output name; the others are ops MLIR merged it with (a residual Add carries the Linear
    before it, a second block's mask Add the first block's, whose constant they share)."""
    own = litert_modules(outputs[0].split(";")[0], known) if outputs else []
    return own[0][0] if own else ""


def layers(converted: Converted, source: SourceModel | None = None) -> list[Layer]:
    """The quantizable ops of ``converted`` (an FP32 ``model.tflite``) in graph order.

    ``source`` (the SourceModel it was converted from) settles what the file alone leaves open:
    the source format, and for torch which reading of ``Class_attr`` names a real module."""
    return finish(_traced(converted, source), converted, source)


def source_names(converted: Converted, source: SourceModel) -> dict[str, str]:
    """``{native: source name}`` for ``converted.meta[LAYER_NAMES]`` at conversion time."""
    return recorded_names(_traced(converted, source))


def _keras_op(
    outputs: Sequence[str], weights: Sequence[str], known: Collection[str] | None
) -> str | None:
    # TFLiteConverter fuses locations into one name with ";" (conv, bias and ReLU); they all lie
    # in the one layer. The final op's output is renamed to the signature's
    # (StatefulPartitionedCall:0), so the weight's name is the fallback.
    for names in (outputs, weights):
        found = {keras_name(p, known) for n in names for p in n.split(";") if p}
        found.discard(None)
        if len(found) == 1:
            return found.pop()
    return None


__all__ = [
    "ELEMENTWISE",
    "LAYER_NAMES",
    "OPS",
    "layers",
    "litert_modules",
    "scope_regex",
    "source_names",
]
