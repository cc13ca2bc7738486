"""The quantizable layers of a converted FP32 ONNX model, named by the source model's names.

What ONNX Runtime's quantizers address: ``nodes_to_exclude`` / ``nodes_to_quantize`` take ONNX
**node** names, matched against the graph *as the quantizer sees it*, and two steps rename the
nodes first, silently: ``quant_pre_process`` (run before ``quantize_static``) fuses a MatMul and
the bias Add after it into a Gemm named ``<matmul>/MatMulAddFusion``, and ``quantize_dynamic``
(``ONNXQuantizer(static=False)``: ``replace_gemm_with_matmul``) turns each Gemm into a MatMul
named ``<gemm>_MatMul``. A layer's ``native`` is therefore its node's name followed by the name
that step gives it, or excluding a torch Linear would quantize it anyway. ORT ignores names it
does not find, so the extra name costs nothing where no rename happens. Per-tensor settings
(int16 activations through ``extra_options["TensorQuantOverrides"]``) are keyed by **tensor**
names instead: the node's activation input(s) and its output ``node.output[0]`` (after the
MatMul + Add fusion, the Add's output). An unnamed node cannot be excluded by name: its
``native`` is empty.

Quantizable ops: Conv, ConvTranspose, Gemm, every MatMul (the QDQ quantizer quantizes a MatMul
of two activations, an attention's QK^T and AV, as well as weighted ones) and LSTM (edgekit's
dynamic pass after the static one, :mod:`edgekit.backends.onnxruntime.int8`). GRU and RNN have no
quantized kernel in ORT and are not layers here.

Where the source name comes from (``name``):

* PyTorch (``torch.onnx.export(dynamo=True)``): each node's ``metadata_props`` hold
  ``pkg.torch.onnx.name_scopes``, the qualified path of every module around the fx node (``['',
  'body', 'body.0', 'body.0.fc1', 'linear']``, the fx node's own name last): the innermost one
  (``body.0.fc1``) names the layer, and a matmul in ``Attn.forward`` is named ``attn``. A node
  that the exporter's optimizer made by fusing (``pkg.onnxscript.rewriter.rule_name``, e.g.
  FuseBatchNormIntoConv) inherits the *fused-in* op's metadata (the BatchNorm's, ``stem.1``), so
  its weight initializer, which keeps the parameter's name (``stem.0.weight``), names it.
* Keras (tf2onnx): node names are TensorFlow op names in the layers' scopes
  (``functional_1/conv2d_1/BiasAdd``), mapped back by
  :func:`edgekit.layer_names.keras_name` (``conv2d``).
* ONNX: the node's own name in the graph edgekit's prepare stage hands over. That keeps the
  file's names (BatchNorm folds into the Conv node; onnxslim drops torch's metadata) except where
  onnxslim fuses: a MatMul + Add becomes a Gemm named after the MatMul's *output tensor*
  (``matmul`` -> ``xw``, torch's ``node_MatMul_1`` -> ``val_1``), on every backend alike. An
  unnamed node is named by its first output tensor.

The converted file alone does not say which source it came from: ``source`` does; without it a
graph with torch metadata is taken for a torch source and a tf2onnx one for Keras.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Collection
from typing import Any

from edgekit.backends.base import Converted
from edgekit.errors import require
from edgekit.layer_names import (
    Traced,
    finish,
    keras_layers,
    keras_name,
    recorded_names,
    torch_parameters,
)
from edgekit.layers import Layer
from edgekit.model import SourceModel

#: ONNX op types the int8 quantizers quantize as layers
OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM"})
#: ops ORT's static quantizer also quantizes by themselves (QDQ in and out: QLinearAdd,
#: QLinearSoftmax, ...): where int8 loses accuracy in them (a softmax over masked scores, a
#: squeeze-excite Mul, a baked-in input scaler) keeping layers float cannot help, so they are
#: listed as kind "op" for rules and the accuracy gate to reach
ELEMENTWISE = frozenset(
    {
        "Add",
        "Mul",
        "Where",
        "Softmax",
        "Sigmoid",
        "AveragePool",
        "GlobalAveragePool",
        "Concat",
        "LayerNormalization",
        "InstanceNormalization",
    }
)
#: ops quant_pre_process expands into unnamed nodes, and the one of them ORT quantizes, whose
#: output is the op's own: edgekit's int8 path names it ``<output>:<type>`` (int8.py)
EXPANDED = {"HardSwish": "Mul"}
#: the suffix ORT's MatMulAddFusion (run by quant_pre_process) gives the Gemm it makes
MATMUL_ADD_FUSION = "/MatMulAddFusion"
#: the suffix quantize_dynamic's replace_gemm_with_matmul gives the MatMul it makes of a Gemm
GEMM_AS_MATMUL = "_MatMul"
_SCOPES = "pkg.torch.onnx.name_scopes"
_REWRITTEN = "pkg.onnxscript.rewriter.rule_name"
# Without the source, a parameter's name as the torch exporter writes an initializer.
_PARAMETER = re.compile(r"^[\w.]+\.weight$")


def _format(model: Any, source: SourceModel | None) -> str:
    if source is not None:
        return source.format
    if any(p.key == _SCOPES for n in model.graph.node for p in n.metadata_props):
        return "torch"
    if model.producer_name == "tf2onnx":
        return "keras"
    return "onnx"


def _module_path(scopes: list[str]) -> str:
    """The innermost module in a name_scopes list (its last entry is the fx node's name).
    torch 2.13 writes full paths at each level; older exporters wrote one part per level, which
    are joined."""
    path = ""
    for scope in scopes[1:-1]:
        if path and not scope.startswith(path + "."):
            scope = f"{path}.{scope}"
        path = scope
    return path


def _torch_name(node: Any, inits: Collection[str], params: Collection[str] | None) -> str | None:
    meta = {p.key: p.value for p in node.metadata_props}
    weight = next(
        (
            i
            for i in node.input
            if i in inits and (i in params if params is not None else _PARAMETER.match(i))
        ),
        None,
    )
    owner = weight.rpartition(".")[0] if weight else ""
    if _REWRITTEN in meta and owner:
        return owner
    try:
        scopes = ast.literal_eval(meta[_SCOPES]) if _SCOPES in meta else []
    except (ValueError, SyntaxError):
        scopes = []
    path = _module_path([str(s) for s in scopes]) if isinstance(scopes, list) else ""
    return path or owner or None


def _traced(converted: Converted, source: SourceModel | None) -> list[Traced]:
    onnx = require("onnx", "onnx")
    model = onnx.load(str(converted.path("model.onnx")), load_external_data=False)
    graph = model.graph
    fmt = _format(model, source)
    inits = {t.name for t in graph.initializer}
    params = torch_parameters(source) if source is not None and fmt == "torch" else None
    known = set(keras_layers(source)) if source is not None and fmt == "keras" else None
    readers = Counter(i for n in graph.node for i in n.input)
    added = {i for n in graph.node if n.op_type == "Add" for i in n.input}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in OPS | ELEMENTWISE | set(
            EXPANDED
        ):
            continue
        if _is_bias(node, producer, inits):
            continue  # a Linear's bias: quant_pre_process fuses it into the MatMul's Gemm
        native: tuple[str, ...] = (node.name,) if node.name else ()
        out = node.output[0] if node.output else ""
        if node.op_type == "MatMul" and node.name and out in added and readers[out] == 1:
            native += (node.name + MATMUL_ADD_FUSION,)
        elif node.op_type == "Gemm" and node.name:
            native += (node.name + GEMM_AS_MATMUL,)
        elif node.op_type in EXPANDED and out:
            native += (f"{out}:{EXPANDED[node.op_type]}",)
        name: str | None = None
        if fmt == "torch":
            name = _torch_name(node, inits, params)
        elif fmt == "keras" and node.name:
            name = keras_name(node.name, known)
        kind = "layer" if node.op_type in OPS else "op"
        if kind == "op" and name:
            # A module's elementwise ops are named after it and their type ("scaler:Mul",
            # "blocks.0.attn:Softmax"), so they never renumber the module's layers.
            name = f"{name}:{node.op_type}"
        elif kind == "op" and fmt == "torch":
            name = node.op_type  # one at the root module: "Add", as on LiteRT
        weighted = node.op_type != "MatMul" or any(i in inits for i in node.input)
        found.append(Traced(name, node.op_type, native, node.name or out, kind, weighted))
    return found


def _is_bias(node: Any, producer: dict[str, Any], inits: Collection[str]) -> bool:
    """An Add of a constant to a weighted MatMul's output: a Linear's bias. An Add to a product
    of two activations (an attention mask added to QK^T) is not fused and ORT quantizes it on
    its own, so it is an op of its own here (left unlisted, it stayed int8 in every trial, and
    with a -1e4 mask its calibrated range made every attention score 0)."""
    if node.op_type != "Add" or len(node.input) != 2:
        return False
    for this, other in (node.input, node.input[::-1]):
        matmul = producer.get(this)
        if (
            matmul is not None
            and matmul.op_type == "MatMul"
            and other in inits
            and len(matmul.input) > 1
            and matmul.input[1] in inits
        ):
            return True
    return False


def layers(converted: Converted, source: SourceModel | None = None) -> list[Layer]:
    """The quantizable nodes of ``converted`` (an FP32 ``model.onnx``) in graph order;
    ``source`` (the SourceModel it was converted from) says which naming applies."""
    return finish(_traced(converted, source), converted, source)


def source_names(converted: Converted, source: SourceModel) -> dict[str, str]:
    """``{node name: source name}`` for ``converted.meta[LAYER_NAMES]`` at conversion time."""
    return recorded_names(_traced(converted, source))


__all__ = ["GEMM_AS_MATMUL", "MATMUL_ADD_FUSION", "OPS", "layers", "source_names"]
