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
other backends.

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
  :func:`keras_name` maps them back (``conv2d``). The same function serves the ORT (tf2onnx) and
  OpenVINO (TF frontend) routes, which carry the same scopes.
* ``.tflite`` sources: the op's output tensor names (joined by ``;``), the file's own names.

An op no name traces back to is named by its scope. This module also holds the helpers every
backend's layers module shares for TensorFlow scopes and torch module paths (they are about the
source frameworks, not about LiteRT).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgekit.backends.base import Converted
from edgekit.errors import require
from edgekit.layers import Layer, unique
from edgekit.model import SourceModel

#: TFLite builtin ops AEQ quantizes as weighted or matrix-product compute ops
OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}
)
_WRAPPER = "litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper"


# ---------------------------------------------------------------- shared: source framework names

# A Keras layer's tf.name_scope always comes out uniquified by TensorFlow's Graph.unique_name
# (the name is already in use when the scope opens), so one "_N" is appended: conv2d ->
# conv2d_1, conv2d_1 -> conv2d_1_2, and dense -> dense_2 when a layer dense_1 exists. Dropping
# one trailing _N undoes it. Observed alike on all three routes (tf2onnx, TFLiteConverter via
# model.export, OpenVINO's TF frontend), with Keras 3.15 / TF 2.21.
_SCOPE_SUFFIX = re.compile(r"_\d+$")
# Module classes whose op is "the layer" when one op carries several modules (a conv with the
# batch norm and ReLU fused into it): the weighted compute module, not the norm or activation.
_COMPUTE_CLASS = re.compile(r"Conv|Linear|LSTM|GRU|RNN|Bilinear|Dense|Attention|Embedding")


def keras_name(tf_name: str, known: Collection[str] | None = None) -> str | None:
    """The Keras layer path (``conv2d``; ``inner/dense`` inside a nested model) in a TensorFlow
    op or tensor name such as ``functional_1/conv2d_1/BiasAdd``: the scopes between the model's
    own (first) scope and the op name, each with TensorFlow's uniquifying ``_N`` dropped.

    With ``known`` (the source's layer paths) the first span of scopes that names a known layer,
    with or without the suffix, is taken, and an unknown one gives None."""
    scopes = tf_name.split(":")[0].split("/")[:-1]
    if known is None:
        if len(scopes) < 2:
            return None
        return "/".join(_SCOPE_SUFFIX.sub("", s) for s in scopes[1:])
    for start in range(len(scopes)):
        for end in range(len(scopes), start, -1):
            span = scopes[start:end]
            for form in ("/".join(_SCOPE_SUFFIX.sub("", s) for s in span), "/".join(span)):
                if form in known:
                    return form
    return None


def keras_layers(source: SourceModel) -> dict[str, Any]:
    """Layer path -> layer for a Keras source, nested models' layers as ``outer/inner``."""
    found: dict[str, Any] = {}

    def walk(model: Any, prefix: str) -> None:
        for layer in getattr(model, "layers", None) or []:
            path = prefix + layer.name
            found[path] = layer
            walk(layer, path + "/")

    if source.format == "keras":
        walk(source.handle, "")
    return found


def _class_name(cls: Any) -> str:
    if isinstance(cls, str):
        return cls
    return f"{cls.__module__}.{cls.__qualname__}"


def torch_modules(source: SourceModel) -> dict[str, str]:
    """Module path -> class (``torch.nn.modules.conv.Conv2d``) for a torch source: an
    ``nn.Module``, or an ExportedProgram, whose graph's ``nn_module_stack`` lists the modules it
    calls; ``""`` is the root."""
    torch = require("torch", "torch")
    handle = source.handle
    if isinstance(handle, torch.export.ExportedProgram):
        return {
            path: _class_name(cls)
            for node in handle.graph.nodes
            for path, cls in (node.meta.get("nn_module_stack") or {}).values()
        }
    return {path: _class_name(type(module)) for path, module in handle.named_modules()}


def torch_parameters(source: SourceModel) -> set[str]:
    """The source's parameter and buffer names (``features.0.weight``)."""
    torch = require("torch", "torch")
    handle = source.handle
    if isinstance(handle, torch.export.ExportedProgram):
        return set(handle.state_dict)
    return {name for name, _ in handle.named_parameters()} | {
        name for name, _ in handle.named_buffers()
    }


def is_compute(cls: str) -> bool:
    """Whether a module class computes a layer's weighted op (Conv2d, Linear, LSTM, ...)."""
    return bool(_COMPUTE_CLASS.search(cls.rpartition(".")[2]))


def parent(path: str) -> str:
    return path.rpartition(".")[0]


def common_module(paths: Iterable[str]) -> str:
    """The longest module path every one of ``paths`` lies in (``""`` when none is shared)."""
    split = [p.split(".") for p in paths if p]
    if not split:
        return ""
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if any(part != parts[0] for part in parts):
            break
        common.append(parts[0])
    return ".".join(common)


#: ``Converted.meta`` key under which a conversion may record ``{native name: source name}``
#: (:func:`source_names`), so that ``layers(converted)`` names exactly without the source
LAYER_NAMES = "layer_names"


@dataclass(frozen=True)
class Traced:
    """One quantizable op before naming: the source name traced for it (None: untraced), the
    backend's op type and native names, and the name it falls back to."""

    name: str | None
    op: str
    native: tuple[str, ...]
    fallback: str

    @property
    def key(self) -> str:
        return self.native[0] if self.native else self.fallback


def finish(
    traced: Sequence[Traced], converted: Converted, source: SourceModel | None
) -> list[Layer]:
    """The layers, uniquely named. Without ``source``, names the conversion recorded
    (:data:`LAYER_NAMES`) replace what the converted file alone suggests, so that a listing
    with and without the source agree."""
    recorded = converted.meta.get(LAYER_NAMES) if source is None else None
    found = []
    for t in traced:
        name = recorded.get(t.key) if isinstance(recorded, Mapping) else t.name
        found.append(Layer(name or t.fallback, t.op, t.native))
    return unique(found)


def recorded_names(traced: Sequence[Traced]) -> dict[str, str]:
    return {t.key: t.name for t in traced if t.name}


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


def _pick_torch(
    outputs: Sequence[str], weights: Sequence[str], known: Mapping[str, str] | None
) -> str | None:
    """The module an op belongs to, from its output and constant-input tensor names."""
    out = list(dict.fromkeys(m for n in outputs for m in litert_modules(n, known)))
    wts = list(dict.fromkeys(m for n in weights for m in litert_modules(n, known)))
    out_compute = {p for p, c in out if p and is_compute(c)}
    wts_compute = {p for p, c in wts if p and is_compute(c)}
    if len(out_compute) == 1:
        return next(iter(out_compute))
    # Two compute modules in one output name (a fused location of k and q): the weight's wins.
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
    known_keras = set(keras_layers(source)) if source is not None and fmt == "keras" else None
    found: list[Traced] = []
    for graph in model.subgraphs:
        produced = {i for op in graph.operators for i in op.outputs}
        graph_inputs = set(graph.inputs)
        for op in graph.operators:
            kind = fbu.opcode_to_name(model, op.opcodeIndex)
            if kind not in OPS:
                continue
            scope = aeq.get_op_scope(op, graph.tensors)
            outputs = [aeq.get_tensor_name(graph.tensors[i]) for i in op.outputs if i >= 0]
            weights = [
                aeq.get_tensor_name(graph.tensors[i])
                for i in op.inputs
                if i >= 0 and i not in produced and i not in graph_inputs
            ]
            name: str | None = None
            if fmt == "torch":
                name = _pick_torch(outputs, weights, known_torch)
            elif fmt == "keras":
                name = _keras_op(outputs, weights, known_keras)
            elif fmt == "tflite":
                name = ";".join(outputs) or None
            found.append(Traced(name, kind, (scope,), scope))
    return found


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
    "LAYER_NAMES",
    "OPS",
    "Traced",
    "common_module",
    "finish",
    "is_compute",
    "keras_layers",
    "keras_name",
    "layers",
    "litert_modules",
    "parent",
    "recorded_names",
    "scope_regex",
    "source_names",
    "torch_modules",
    "torch_parameters",
]
