"""The quantizable layers of a converted FP32 OpenVINO IR, named by the source model's names.

What NNCF addresses: ``nncf.IgnoredScope(names=[...])`` takes the names of NNCF graph nodes,
which are the ops' **friendly names** (``GraphConverter`` builds each node with
``node_name=op.get_friendly_name()``), matched exactly; a layer's ``native`` is that name.
Quantizable ops are those NNCF quantizes with weights or as matrix products: Convolution,
GroupConvolution (depthwise included), ConvolutionBackpropData, GroupConvolutionBackpropData,
every MatMul (attention's activation x activation ones too), LSTMSequence and GRUSequence.

Where the source name comes from (``name``), by the conversion route ``converted.meta`` names:

* ONNX (ONNX frontend): an op keeps its ONNX node's name, but a Conv/Gemm with a bias becomes
  Convolution/MatMul ``<node>/WithoutBiases`` plus an Add named ``<node>`` (the suffix is
  dropped), and the op producing a graph output is renamed to the output's name. Given the
  source, an op is traced through its (or its bias Add's) output tensor names, which are the
  ONNX tensor names, to the node that produced them.
* PyTorch (``torch.export`` -> FX decoder): friendly names are
  ``<fx node>/<aten op>/<ov op>`` of the program **after** OpenVINO's decompositions
  (``convolution_1/aten.convolution.default/GroupConvolution``), with no module path; weight
  constants are named after the fx ``get_attr`` node (``attn_q_weight:0``, dots made ``_``), and
  a Convolution with a BatchNorm fused into it loses both (``Multiply_2881``). Given the source,
  the decomposition is replayed exactly as ``convert_model`` runs it
  (``TorchFXPythonDecoder.from_exported_program``) and each fx node's ``nn_module_stack`` gives
  the module path (a fused Convolution is traced through the first named op after it to the
  convolution node the fusion started from). Without the source, the weight's name is read back
  with ``_`` as ``.`` (exact for paths such as ``features.0`` or ``attn.q``, wrong for
  ``patch_embed``) and a MatMul of two activations is named by the module its inputs' layers
  share (``attn``).
* Keras (TF frontend): MatMuls keep TensorFlow's scoped names (``functional_1/dense_1/MatMul``,
  :func:`edgekit.layer_names.keras_name` -> ``dense``); Convolutions do not (the
  frontend's NHWC transposes are sunk and the names go with them: ``Convolution_29``). Given the
  source, such an op is matched to the layer whose kernel holds the same values (a
  layout-independent fingerprint: sorted values); a kernel that OpenVINO rewrote (a BatchNorm
  fused into it) matches nothing.

An op no name traces back to is named by its friendly name.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.backends.base import Converted
from edgekit.backends.openvino.convert import ROUTES
from edgekit.backends.openvino.session import shared_core
from edgekit.errors import require
from edgekit.layer_names import (
    Traced,
    common_module,
    finish,
    keras_layers,
    keras_name,
    parent,
    recorded_names,
)
from edgekit.layers import Layer
from edgekit.model import SourceModel

#: OpenVINO op types NNCF quantizes as layers
OPS = frozenset(
    {
        "Convolution",
        "GroupConvolution",
        "ConvolutionBackpropData",
        "GroupConvolutionBackpropData",
        "MatMul",
        "LSTMSequence",
        "GRUSequence",
    }
)
# What the ONNX frontend appends to a biased Conv/Gemm's compute op (the bias Add gets the name).
_ONNX_SUFFIXES = ("/WithoutBiases",)
# Ops between a weight Constant and the op that uses it, walked to reach the Constant.
_WEIGHT_PATH = ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "FakeQuantize")
_WEIGHT_NAME = re.compile(r"^(.+)_weight:0$")
# fx targets (after OpenVINO's decompositions) that compute a layer
_FX_COMPUTE = re.compile(
    r"aten\.(convolution|linear|addmm|mm|bmm|baddbmm|matmul|einsum|lstm|gru)\b"
)

Namer = Callable[[Any], "str | None"]
# What the source tells, per source object and conversion: replaying a torch program re-exports
# it (seconds for a large model) and fingerprints sort every kernel, while an accuracy loop lists
# the layers once per trial.
_MEMO: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()


def _memo(source: SourceModel, converted: Converted, what: str, make: Callable[[], Any]) -> Any:
    key = (what, str(converted.folder))
    try:
        cache = _MEMO.setdefault(source.handle, {})
    except TypeError:  # a handle without weak references is worked out each time
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _weight(op: Any) -> Any | None:
    """The Constant an op's weight input comes from, if it is one."""
    if op.get_input_size() < 2:
        return None
    node = op.input_value(1).get_node()
    while node.get_type_name() in _WEIGHT_PATH:
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def _consumers(op: Any) -> list[Any]:
    return [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]


# ---------------------------------------------------------------- ONNX


def _onnx_namer(converted: Converted, source: SourceModel | None) -> Namer:
    nodes: set[str] = set()
    producer: dict[str, str] = {}
    if source is not None:
        for node in source.handle.graph.node:
            nodes.add(node.name)
            # Only the layer ops: the bias Add or a ReLU after it carries other nodes' tensors.
            if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU"):
                for out in node.output:
                    producer[out] = node.name or node.output[0]

    def name(op: Any) -> str | None:
        friendly = op.get_friendly_name()
        for suffix in _ONNX_SUFFIXES:
            friendly = friendly.removesuffix(suffix)
        if source is None or friendly in nodes:
            return friendly
        for candidate in (op, *_consumers(op)):
            for out in candidate.outputs():
                for tensor in sorted(out.get_names()):
                    if tensor in producer:
                        return producer[tensor]
        return None

    return name


# ---------------------------------------------------------------- PyTorch


@dataclass(frozen=True)
class Replay:
    """The fx graph OpenVINO converts a torch source from, as far as naming needs it."""

    #: fx node name (and a weight constant's tensor name) -> module path
    modules: dict[str, str]
    #: fx node name -> the fx nodes it reads
    inputs: dict[str, list[str]]
    #: fx nodes that compute a layer (convolution, linear, matmul, ...)
    compute: frozenset[str]


def replay_torch(source: SourceModel) -> Replay:
    """The program OpenVINO converts from ``source``: the same ``torch.export`` capture as
    :mod:`edgekit.backends.openvino.convert` and the same decompositions as ``convert_model``
    (``TorchFXPythonDecoder.from_exported_program``), so its fx node names are the prefixes of
    the IR's friendly names, and each node's ``nn_module_stack`` gives its module path."""
    torch = require("torch", "torch")
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

    program = source.handle
    if not isinstance(program, torch.export.ExportedProgram):
        args = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in source.inputs)
        program = torch.export.export(source.handle.eval(), args)
    graph = TorchFXPythonDecoder.from_exported_program(program).pt_module.graph
    modules: dict[str, str] = {}
    inputs: dict[str, list[str]] = {}
    compute = set()
    for node in graph.nodes:
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        if stack and stack[-1][0]:
            modules[node.name] = stack[-1][0]
        if node.op == "get_attr" and isinstance(node.target, str) and "." in node.target:
            # a weight constant's tensor name is "<get_attr node>:0"
            modules[f"{node.name}:0"] = node.target.rpartition(".")[0]
        inputs[node.name] = [a.name for a in node.all_input_nodes]
        if node.op == "call_function" and _FX_COMPUTE.search(str(node.target)):
            compute.add(node.name)
    return Replay(modules, inputs, frozenset(compute))


def _fused_compute(op: Any, replay: Replay, claimed: set[str]) -> str | None:
    """The fx compute node an op whose own name OpenVINO replaced stands for. A Convolution
    with a BatchNorm fused into it is renamed after the fusion (``Multiply_2881``); the first op
    after it still carries an fx name (the BatchNorm's Add, or the ReLU once the Add is fused
    too), and the nearest compute node above that one in the fx graph that no other op has
    claimed is the convolution the fusion started from."""
    frontier = _consumers(op)
    for _ in range(4):  # a few ops at most lie between a fused op and a named one
        named = [
            n.get_friendly_name().split("/")[0]
            for n in frontier
            if n.get_friendly_name().split("/")[0] in replay.inputs
        ]
        if named:
            break
        frontier = [c for n in frontier for c in _consumers(n)]
    else:
        return None
    seen: set[str] = set()
    queue = list(named)
    while queue:
        node = queue.pop(0)
        if node in seen:
            continue
        seen.add(node)
        if node in replay.compute and node not in claimed:
            return node
        queue += replay.inputs.get(node, [])
    return None


def _guess_module(tensor: str) -> str | None:
    # fx names a get_attr node after its target with "." made "_" (and "_" before a leading
    # digit): "features.0.weight" -> "features_0_weight". Reading "_" back as "." is right
    # unless a module's own name holds a "_" (or capitals, which fx snake-cases).
    hit = _WEIGHT_NAME.match(tensor)
    if not hit:
        return None
    mangled = hit.group(1)
    if re.match(r"^_\d", mangled):
        mangled = mangled[1:]
    return mangled.replace("_", ".")


def _replay_or_none(source: SourceModel) -> Replay | None:
    try:
        return replay_torch(source)
    except Exception:
        # A replay that fails leaves the names in the IR alone to go by.
        return None


def _torch_namer(converted: Converted, source: SourceModel | None) -> Namer:
    replay: Replay | None = None
    if source is not None:
        replay = _memo(source, converted, "replay", lambda: _replay_or_none(source))
    # layer names so far, by the op's unique internal name (Python wrappers are made anew)
    named: dict[str, str] = {}
    # fx compute nodes an op has been traced to
    claimed: set[str] = set()

    def traced(op: Any) -> str | None:
        const = _weight(op)
        if replay is not None:
            prefix = op.get_friendly_name().split("/")[0]
            node = prefix if prefix in replay.inputs else _fused_compute(op, replay, claimed)
            if node is not None:
                claimed.add(node)
                if node in replay.modules:
                    return replay.modules[node]
            for tensor in sorted(const.output(0).get_names()) if const is not None else []:
                if tensor in replay.modules:
                    return replay.modules[tensor]
            return None
        for tensor in sorted(const.output(0).get_names()) if const is not None else []:
            guess = _guess_module(tensor)
            if guess:
                return guess
        if op.get_type_name() == "MatMul" and const is None:
            return _shared_module(op, named)
        return None

    def name(op: Any) -> str | None:
        found = traced(op)
        if found:
            named[op.get_name()] = found
        return found

    return name


def _shared_module(op: Any, named: Mapping[str, str]) -> str | None:
    """The module the nearest named layers upstream of ``op`` lie in (their parents' common
    path): ``attn`` for QK^T between ``attn.q`` and ``attn.k``. Ops are listed in graph order,
    so everything upstream is already named."""
    seen: set[str] = set()
    stack = [v.get_node() for v in op.input_values()]
    owners: list[str] = []
    while stack:
        node = stack.pop()
        key = node.get_name()
        if key in seen:
            continue
        seen.add(key)
        if key in named:
            weighted = _weight(node) is not None
            owners.append(parent(named[key]) if weighted else named[key])
            continue
        stack += [v.get_node() for v in node.input_values()]
    return common_module(owners) or None


# ---------------------------------------------------------------- Keras


def _fingerprint(values: Any) -> str:
    flat = np.sort(np.asarray(values, dtype=np.float32).ravel())
    return hashlib.sha1(flat.tobytes()).hexdigest()


def _kernels(layers: Mapping[str, Any]) -> dict[str, list[str]]:
    """Kernel fingerprint -> the paths of the layers holding that kernel."""
    found: dict[str, list[str]] = {}
    for path, layer in layers.items():
        for attr in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            value = getattr(layer, attr, None)
            if value is not None:
                found.setdefault(_fingerprint(np.asarray(value)), []).append(path)
    return found


def _keras_namer(converted: Converted, source: SourceModel | None) -> Namer:
    layers = keras_layers(source) if source is not None else {}
    known = set(layers) if source is not None else None
    kernels: dict[str, list[str]] | None = None

    def by_kernel(op: Any) -> str | None:
        nonlocal kernels
        const = _weight(op)
        if const is None or source is None or not layers:
            return None
        if kernels is None:
            kernels = _memo(source, converted, "kernels", lambda: _kernels(layers))
        paths = kernels.get(_fingerprint(const.get_data()), [])
        # Two layers with the same kernel values cannot be told apart by them.
        return paths[0] if len(set(paths)) == 1 else None

    def name(op: Any) -> str | None:
        return keras_name(op.get_friendly_name(), known) or by_kernel(op)

    return name


# ---------------------------------------------------------------- the layers

_ROUTE_FORMAT = {route: fmt for fmt, route in ROUTES.items()}
_NAMERS: dict[str, Callable[[Converted, SourceModel | None], Namer]] = {
    "onnx": _onnx_namer,
    "torch": _torch_namer,
    "keras": _keras_namer,
}


#: ops between a weight Constant and the layer that reads it (decompression, layout)
_WEIGHT_PATH = frozenset({"Convert", "Reshape", "Transpose", "Multiply", "Subtract", "Unsqueeze"})


def _constant(node: Any, depth: int = 4) -> bool:
    """Whether ``node`` is a Constant, or computes only from one (an fp16 weight's Convert)."""
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    if depth == 0 or kind not in _WEIGHT_PATH:
        return False
    return all(_constant(i.get_source_output().get_node(), depth - 1) for i in node.inputs())


def _traced(converted: Converted, source: SourceModel | None) -> list[Traced]:
    model = shared_core().read_model(str(converted.path("model.xml")))
    fmt = source.format if source is not None else _ROUTE_FORMAT.get(converted.meta.get("route"))
    make = _NAMERS.get(fmt or "")
    namer = make(converted, source) if make is not None else None
    found = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in OPS:
            continue
        friendly = op.get_friendly_name()
        weighted = any(_constant(i.get_source_output().get_node()) for i in op.inputs())
        found.append(
            Traced(namer(op) if namer else None, kind, (friendly,), friendly, "layer", weighted)
        )
    return found


def layers(converted: Converted, source: SourceModel | None = None) -> list[Layer]:
    """The quantizable ops of ``converted`` (an FP32 ``model.xml``) in graph order.

    Pass ``source`` (the SourceModel it was converted from) wherever it is at hand, or record
    :func:`source_names` in the conversion's meta: for torch and Keras sources the IR alone
    loses names that only the source can restore."""
    return finish(_traced(converted, source), converted, source)


def source_names(converted: Converted, source: SourceModel) -> dict[str, str]:
    """``{friendly name: source name}`` for ``converted.meta[LAYER_NAMES]`` at conversion
    time (where :func:`replay_torch` costs nothing extra: convert has just exported)."""
    return recorded_names(_traced(converted, source))


__all__ = ["OPS", "Replay", "layers", "replay_torch", "source_names"]
