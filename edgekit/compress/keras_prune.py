"""Pruning of Keras 3 functional models: structured (channels physically removed) and unstructured.

Structured pruning first maps the model's channel dependencies: every tensor's last (channel)
axis belongs to a *group*, a union-find set of tensors whose channels must stay identical.
A Conv/Dense layer starts a new group (its filters); BatchNormalization, DepthwiseConv2D,
LayerNormalization and PReLU are *tied* to their input's group (their per-channel weights are
sliced with it); activations, pooling, padding and dropout pass the group through; Add /
Subtract / Multiply / Maximum / Minimum / Average merge their operands' groups (a residual sum
needs the same channels on both sides). Concatenate along channels and Flatten make *derived*
groups whose kept indices follow from their sources' (offsets; ``(i*W + j)*C + c`` in NHWC).
A group reaching a layer edgekit cannot map channels through, or a model output, is *fixed*:
never pruned, so the rebuilt model is always valid. The model is then rebuilt with fewer
filters and every consumer's input axis sliced to the kept channels.

Unstructured pruning zeroes individual kernel weights (optionally N:M) and keeps the
architecture: smaller once compressed, not faster on dense runtimes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.compress import keras_model as km
from edgekit.compress.passes import CompressData, Prune
from edgekit.errors import DataError, UsageError

#: per-channel scores need gradients over a few training batches, not an epoch
SCORE_BATCH = 32
SCORE_BATCHES = 8

PRODUCERS = {"Conv1D", "Conv2D", "Conv3D", "Dense", "SeparableConv1D", "SeparableConv2D"}
TIED = {"BatchNormalization", "LayerNormalization", "DepthwiseConv1D", "DepthwiseConv2D", "PReLU"}
MERGES = {"Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average"}
PASS_THROUGH = {
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Activation",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "Identity",
    "ActivityRegularization",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
}
#: keras.ops element-wise functions (no per-channel parameters) called in a functional graph
UNARY_OPS = {
    "Relu",
    "Relu6",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Silu",
    "HardSigmoid",
    "HardSilu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Softplus",
}
#: kernels unstructured pruning may zero (layer class -> weight attribute names)
SPARSE_KERNELS = {
    "Conv1D": ("kernel",),
    "Conv2D": ("kernel",),
    "Conv3D": ("kernel",),
    "Dense": ("kernel",),
    "Conv1DTranspose": ("kernel",),
    "Conv2DTranspose": ("kernel",),
    "DepthwiseConv1D": ("kernel",),
    "DepthwiseConv2D": ("kernel",),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
}


def apply(model: Any, p: Prune, data: CompressData) -> tuple[Any, list[dict], list[str]]:
    if p.structured:
        return structured(model, p, data)
    return unstructured(model, p, data)


# --- channel dependency graph -------------------------------------------------------------------


@dataclass
class _Group:
    size: int
    fixed: bool = False
    #: ("concat", [(tensor id, offset)]) or ("flatten", tensor id, positions)
    derived: tuple | None = None
    why: set[str] = field(default_factory=set)


class ChannelGraph:
    """Which layers produce, are tied to, and consume each channel group of a model."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers = {layer.name: layer for layer in model.layers}
        self.parent: dict[int, int] = {}
        self.groups: dict[int, _Group] = {}
        self.of: dict[int, int] = {}  # tensor id -> group id
        self.producer: dict[str, Any] = {}  # layer -> its output tensor
        self.consumer: dict[str, int] = {}  # layer -> id of the tensor it reads channels of
        self.tied: dict[str, int] = {}
        self.blockers: dict[int, set[str]] = {}  # tensor id -> layers that fixed it
        calls = km.call_counts(model)
        for t in model.inputs:
            self._new(t, fixed=True, why="model input")
        for node in km.nodes(model):
            self._visit(node, calls)
        for t in model.outputs:
            if id(t) in self.of:
                self.fix(self.of[id(t)], "model output")

    # union-find
    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def group(self, tensor_id: int) -> int:
        return self.find(self.of[tensor_id])

    def _new(self, t: Any, fixed: bool = False, why: str = "", derived: tuple | None = None) -> int:
        g = len(self.parent)
        self.parent[g] = g
        size = t.shape[-1] if len(t.shape) else None
        self.groups[g] = _Group(int(size or 0), derived=derived)
        self.of[id(t)] = g
        if fixed or size is None:
            self.fix(g, why or "unknown channel count")
        return g

    def fix(self, g: int, why: str) -> None:
        g = self.find(g)
        grp = self.groups[g]
        grp.why.add(why)
        if grp.fixed:
            return
        grp.fixed = True
        if grp.derived is not None:
            kind, src = grp.derived[0], grp.derived[1]
            for tid in [s[0] for s in src] if kind == "concat" else [src]:
                self.fix(self.of[tid], why)

    def _union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        ga, gb = self.groups[a], self.groups[b]
        if ga.derived is not None or gb.derived is not None or ga.size != gb.size:
            # merging a concatenation or flattening with other channels: not worth the mapping
            self.fix(a, "derived channels merged")
            self.fix(b, "derived channels merged")
        self.parent[b] = a
        ga.fixed = ga.fixed or gb.fixed
        ga.why |= gb.why
        if ga.fixed:
            ga.derived = None
        return a

    def _join(self, out: Any, inp: Any) -> None:
        self.of[id(out)] = self.group(id(inp))

    def _unknown(self, node: Any, why: str) -> None:
        for t in node.input_tensors:
            if id(t) in self.of:
                self.blockers.setdefault(self.group(id(t)), set()).add(why)
                self.fix(self.of[id(t)], why)
        for o in node.outputs:
            self._new(o, fixed=True, why=why)

    def _visit(self, node: Any, calls: Mapping[str, int]) -> None:
        layer = node.operation
        cls = type(layer).__name__
        ins = [t for t in node.input_tensors if id(t) in self.of]
        outs = node.outputs
        label = f"{layer.name} ({cls})"
        if calls[layer.name] > 1 or len(outs) != 1 or not ins:
            return self._unknown(node, f"{label} is shared or has several outputs")
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return self._unknown(node, f"{label} is channels_first")
        if _array_constant(node):
            # x * constant: the constant keeps its channel count when x loses channels
            return self._unknown(node, f"{label} takes a constant array")
        if not km.plain(layer):
            # a user class may share a Keras name and call differently; LoRA or quantized
            # weights are not sliced like plain kernels
            return self._unknown(node, f"{label} is custom, LoRA-adapted or quantized")
        out, inp = outs[0], ins[0]
        same = len(out.shape) and out.shape[-1] == inp.shape[-1]
        if cls in PRODUCERS and len(ins) == 1:
            if getattr(layer, "groups", 1) != 1:
                return self._unknown(node, f"{label} is a grouped convolution")
            self.consumer[layer.name] = id(inp)
            self._new(out)
            self.producer[layer.name] = out
        elif cls in TIED and len(ins) == 1 and same and _tie_ok(layer, len(inp.shape)):
            self.tied[layer.name] = id(inp)
            self._join(out, inp)
        elif cls in UNARY_OPS and len(ins) == 1 and same and not isinstance(layer, _layer_cls()):
            self._join(out, inp)
        elif cls in PASS_THROUGH and len(ins) == 1 and same:
            if cls == "Activation" and "softmax" in str(layer.get_config().get("activation")):
                return self._unknown(node, f"{label} normalises across channels")
            self._join(out, inp)
        elif cls in MERGES and all(t.shape[-1] == out.shape[-1] for t in ins):
            root = self.of[id(ins[0])]
            for t in ins[1:]:
                root = self._union(root, self.of[id(t)])
            self.of[id(out)] = self.find(root)
        elif cls == "Concatenate":
            rank = len(out.shape)
            if layer.axis % rank == rank - 1:
                if not all(t.shape[-1] for t in ins):
                    return self._unknown(node, f"{label} joins unknown channel counts")
                segments, offset = [], 0
                for t in ins:
                    segments.append((id(t), offset))
                    offset += int(t.shape[-1])
                self._new(out, derived=("concat", segments))
            else:  # along another axis the operands' channels line up one to one
                root = self.of[id(ins[0])]
                for t in ins[1:]:
                    root = self._union(root, self.of[id(t)])
                self.of[id(out)] = self.find(root)
        elif cls == "Flatten" and len(ins) == 1:
            if len(inp.shape) == 2:
                self._join(out, inp)
            elif None in tuple(inp.shape)[1:]:
                return self._unknown(node, f"{label} flattens a dynamic shape")
            else:
                positions = int(np.prod(inp.shape[1:-1]))
                self._new(out, derived=("flatten", id(inp), positions))
        else:
            return self._unknown(node, f"{label} is not channel-mapped")
        return None

    # results
    def prunable(self) -> dict[int, list[str]]:
        """Group id -> its producer layers, for every group that may be pruned."""
        out: dict[int, list[str]] = {}
        for name, t in self.producer.items():
            g = self.group(id(t))
            grp = self.groups[g]
            if not grp.fixed and grp.derived is None and grp.size > 1:
                out.setdefault(g, []).append(name)
        return out

    def tied_of(self, g: int) -> list[str]:
        return [n for n, tid in self.tied.items() if self.group(tid) == g]

    def kept(self, g: int, chosen: Mapping[int, np.ndarray]) -> np.ndarray:
        """Kept channel indices of group ``g`` (derived groups follow their sources)."""
        g = self.find(g)
        grp = self.groups[g]
        if grp.fixed:
            return np.arange(grp.size)
        if grp.derived is None:
            return chosen.get(g, np.arange(grp.size))
        if grp.derived[0] == "concat":
            return np.concatenate(
                [off + self.kept(self.of[tid], chosen) for tid, off in grp.derived[1]]
            )
        _, tid, positions = grp.derived
        src = self.find(self.of[tid])
        c = self.groups[src].size
        kept = self.kept(src, chosen)
        return (np.arange(positions)[:, None] * c + kept[None, :]).reshape(-1)


def _layer_cls() -> type:
    return km.keras().layers.Layer


def _array_constant(node: Any) -> bool:
    """Whether a call takes a non-scalar array that is not a graph tensor."""
    k = km.keras()
    args = k.tree.flatten((node.arguments.args, node.arguments.kwargs))
    for a in args:
        if isinstance(a, k.KerasTensor) or a is None or isinstance(a, (str, bool)):
            continue
        try:
            if np.size(a) > 1:
                return True
        except Exception:  # an object numpy cannot size is no array
            continue
    return False


def _tie_ok(layer: Any, rank: int) -> bool:
    cls = type(layer).__name__
    if cls.startswith("DepthwiseConv"):
        return layer.depth_multiplier == 1
    if cls == "BatchNormalization":
        return layer.axis in (-1, rank - 1)
    if cls == "LayerNormalization":
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        return list(axis) in ([-1], [rank - 1])
    return cls == "PReLU"


# --- criteria -----------------------------------------------------------------------------------


def _out_kernel(layer: Any) -> tuple[Any, int]:
    """The variable holding a layer's per-output-channel weights, and that channel's axis."""
    cls = type(layer).__name__
    if cls.startswith("SeparableConv"):
        return layer.pointwise_kernel, -1
    if cls.startswith("DepthwiseConv"):
        return layer.kernel, -2
    return layer.kernel, -1


def _per_channel(arr: np.ndarray, axis: int, norm: int = 1) -> np.ndarray:
    flat = np.moveaxis(np.abs(arr), axis, 0).reshape(arr.shape[axis], -1)
    return np.sqrt((flat**2).sum(1)) if norm == 2 else flat.sum(1)


def _need_train(data: CompressData, criterion: str) -> dict[str, np.ndarray]:
    if data.train is None:
        raise DataError(
            f"prune criterion '{criterion}' needs training data (data=...); 'magnitude' needs none"
        )
    return data.train


def loss_fn(model: Any, data: CompressData) -> Callable[[Any, dict, Any], Any]:
    """The criteria's loss: cross-entropy with the labels; without labels, cross-entropy
    against the original model's top-1 class. (KL divergence to the original is zero, and
    so are its gradients, while the model still is the original.)"""
    tf = km.tf()
    k = km.keras()
    ref = data.original if data.original is not None else model
    first = next(km.batches(_need_train(data, "gradient"), SCORE_BATCH))
    probs = km.outputs_are_probabilities(km.run(ref, first)[0])

    def loss(out: Any, feeds: dict, labels: Any) -> Any:
        if out.shape[-1] is None or out.shape[-1] < 2:
            return 0.5 * tf.reduce_mean(tf.square(out))
        if labels is None:
            labels = np.argmax(km.run(ref, feeds)[0], axis=-1)
        ce = k.losses.sparse_categorical_crossentropy(labels, out, from_logits=not probs)
        return tf.reduce_mean(ce)

    return loss


def gradients(
    model: Any, variables: list[Any], data: CompressData, taylor: bool
) -> list[np.ndarray]:
    """Per weight, the sum over a few batches of |dL/dW| (or |W * dL/dW| for Taylor)."""
    tf = km.tf()
    train = _need_train(data, "taylor" if taylor else "gradient")
    loss = loss_fn(model, data)
    labels = None if data.train_labels is None else np.asarray(data.train_labels)
    acc = [np.zeros(tuple(v.shape), np.float64) for v in variables]
    for i, feeds in enumerate(km.batches(train, SCORE_BATCH, SCORE_BATCHES)):
        y = None if labels is None else labels[i * SCORE_BATCH : i * SCORE_BATCH + SCORE_BATCH]
        with tf.GradientTape() as tape:
            out = km.flat(model(km.model_args(model, feeds), training=False))[0]
            value = loss(out, feeds, y)
        for a, v, g in zip(acc, variables, tape.gradient(value, variables), strict=True):
            if g is None:
                continue
            g = np.asarray(g, np.float64)
            a += np.abs(np.asarray(v, np.float64) * g) if taylor else np.abs(g)
    return acc


def _activations(model: Any, tensors: list[Any], data: CompressData) -> list[np.ndarray]:
    """Mean |activation| per channel of each tensor over the training data."""
    train = _need_train(data, "importance")
    probe = km.probe(model, tensors)
    sums = [np.zeros(int(t.shape[-1])) for t in tensors]
    n = 0
    for feeds in km.batches(train, SCORE_BATCH, SCORE_BATCHES):
        outs = km.flat(probe(km.model_args(model, feeds), training=False))
        for s, o in zip(sums, outs, strict=True):
            o = np.abs(np.asarray(o, np.float64))
            s += o.reshape(-1, o.shape[-1]).sum(0)
        n += len(next(iter(feeds.values())))
    return [s / max(n, 1) for s in sums]


def channel_scores(
    model: Any, graph: ChannelGraph, groups: Mapping[int, list[str]], p: Prune, data: CompressData
) -> dict[int, np.ndarray]:
    """Importance of every channel of every prunable group (higher = keep)."""
    layers = graph.layers
    # a depthwise conv tied to the group has per-channel filters of its own: they count too
    members = {
        g: prods + [n for n in graph.tied_of(g) if _is_dw(layers[n])] for g, prods in groups.items()
    }
    scores = {g: np.zeros(graph.groups[g].size) for g in groups}
    if p.criterion == "magnitude":
        for g, names in members.items():
            for n in names:
                var, axis = _out_kernel(layers[n])
                scores[g] += _per_channel(np.asarray(var), axis, p.norm)
    elif p.criterion in ("gradient", "taylor"):
        flat = [(g, n) for g, names in members.items() for n in names]
        variables = [_out_kernel(layers[n])[0] for _, n in flat]
        grads = gradients(model, variables, data, taylor=p.criterion == "taylor")
        for (g, n), gr in zip(flat, grads, strict=True):
            scores[g] += _per_channel(gr, _out_kernel(layers[n])[1])
    else:  # importance: |gamma| of a following BatchNorm, else mean |activation|
        need_act = []
        for g in groups:
            bns = [n for n in graph.tied_of(g) if type(layers[n]).__name__ == "BatchNormalization"]
            bns = [n for n in bns if layers[n].scale]
            for n in bns:
                scores[g] += np.abs(np.asarray(layers[n].gamma))
            if not bns:
                need_act.append(g)
        if need_act:
            tensors = [graph.producer[groups[g][0]] for g in need_act]
            for g, a in zip(need_act, _activations(model, tensors, data), strict=True):
                scores[g] += a
    return scores


def _is_dw(layer: Any) -> bool:
    return type(layer).__name__.startswith("DepthwiseConv")


# --- structured ---------------------------------------------------------------------------------


def kept_count(size: int, ratio: float, round_to: int) -> int:
    """Channels kept of ``size`` when ``ratio`` is removed, rounded up to ``round_to``."""
    keep = max(1, math.ceil(size * (1.0 - ratio) - 1e-9))
    return min(size, math.ceil(keep / round_to) * round_to)


def _ignored(names: list[str], patterns: tuple[str, ...]) -> bool:
    return any(re.search(pat, n) for pat in patterns for n in names)


def select(
    scores: Mapping[int, np.ndarray], ratios: Mapping[int, float | None], p: Prune
) -> dict[int, np.ndarray]:
    """Kept (sorted) channel indices per group; ``ratios[g]`` None = ranked globally."""
    keep_n: dict[int, int] = {}
    pooled = [g for g, r in ratios.items() if r is None]
    for g, r in ratios.items():
        if r is not None:
            keep_n[g] = kept_count(len(scores[g]), r, p.round_to)
    if pooled:
        # layers of different fan-in score on different scales: compare each channel with
        # its own group's mean, so a global ratio does not empty the small-fan-in layers
        norm = [scores[g] / max(float(np.mean(scores[g])), 1e-12) for g in pooled]
        owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(norm)])
        order = np.argsort(np.concatenate(norm), kind="stable")
        removed = np.bincount(owner[order[: int(len(order) * p.ratio)]], minlength=len(pooled))
        for i, g in enumerate(pooled):
            size = len(scores[g])
            keep_n[g] = kept_count(size, removed[i] / size, p.round_to)
    out = {}
    for g, n in keep_n.items():
        if n < len(scores[g]):
            top = np.argsort(-scores[g], kind="stable")[:n]
            out[g] = np.sort(top)
    return out


def _slicer(layer: Any, out_idx: np.ndarray | None, in_idx: np.ndarray | None) -> km.WeightFn:
    cls = type(layer).__name__

    def fn(w: list[np.ndarray]) -> list[np.ndarray]:
        w = list(w)
        if cls.startswith("SeparableConv"):
            if in_idx is not None:
                m = w[0].shape[-1]
                w[0] = np.take(w[0], in_idx, axis=-2)
                expanded = (in_idx[:, None] * m + np.arange(m)[None, :]).reshape(-1)
                w[1] = np.take(w[1], expanded, axis=-2)
            if out_idx is not None:
                w[1] = np.take(w[1], out_idx, axis=-1)
                if len(w) > 2:
                    w[2] = w[2][out_idx]
        elif cls in PRODUCERS:
            if in_idx is not None:
                w[0] = np.take(w[0], in_idx, axis=-2)
            if out_idx is not None:
                w[0] = np.take(w[0], out_idx, axis=-1)
                if len(w) > 1:
                    w[1] = w[1][out_idx]
        elif cls.startswith("DepthwiseConv"):
            w[0] = np.take(w[0], in_idx, axis=-2)
            if len(w) > 1:
                w[1] = w[1][in_idx]
        else:  # BatchNorm / LayerNorm vectors, PReLU alpha: channels on the last axis
            w = [np.take(a, in_idx, axis=-1) for a in w]
        return w

    return fn


def structured(model: Any, p: Prune, data: CompressData) -> tuple[Any, list[dict], list[str]]:
    graph = ChannelGraph(model)
    notes: list[str] = []
    outputs = km.output_layers(model)
    candidates = graph.prunable()
    ratios: dict[int, float | None] = {}
    for g, prods in candidates.items():
        names = prods + graph.tied_of(g)
        if _ignored(names, p.ignore) or outputs & set(prods):
            continue
        overrides = [p.per_layer[n] for n in names if n in p.per_layer]
        r = min(overrides) if overrides else (None if p.scope == "global" else p.ratio)
        if r is None or r > 0:
            ratios[g] = r
    blocked = sorted({w for g, ws in graph.blockers.items() if _has_producer(graph, g) for w in ws})
    if blocked:
        shown = "; ".join(blocked[:4]) + (
            f"; and {len(blocked) - 4} more" if len(blocked) > 4 else ""
        )
        notes.append(f"channels feeding these layers were left unpruned: {shown}")
    if not ratios:
        notes.append("no prunable channel group: the model is unchanged")
        return km.copy_model(model), [], notes
    groups = {g: candidates[g] for g in ratios}
    scores = channel_scores(model, graph, groups, p, data)
    chosen = select(scores, ratios, p)
    layers_out: list[dict] = []
    config: dict[str, dict] = {}
    weights: dict[str, km.WeightFn] = {}
    for g, kept in chosen.items():
        for name in groups[g]:
            layer = graph.layers[name]
            key = "units" if type(layer).__name__ == "Dense" else "filters"
            config[name] = {key: len(kept)}
            layers_out.append(
                {"layer": name, "before": {key: graph.groups[g].size}, "after": {key: len(kept)}}
            )
    for name in graph.layers:
        out_idx = in_idx = None
        if name in config:
            out_idx = chosen[graph.group(id(graph.producer[name]))]
        src = graph.consumer.get(name, graph.tied.get(name))
        if src is not None:
            idx = graph.kept(graph.of[src], chosen)
            if len(idx) < graph.groups[graph.group(src)].size:
                in_idx = idx
        if out_idx is not None or in_idx is not None:
            weights[name] = _slicer(graph.layers[name], out_idx, in_idx)
    if not chosen:
        notes.append("every group keeps all its channels at this ratio and round_to")
    new = km.rebuild(model, config=config, weights=weights)
    return new, layers_out, notes


def _has_producer(graph: ChannelGraph, g: int) -> bool:
    return any(graph.group(id(t)) == graph.find(g) for t in graph.producer.values())


# --- unstructured -------------------------------------------------------------------------------


def _n_m_mask(score: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep the N highest of every M consecutive weights along the input axis (-2)."""
    moved = np.moveaxis(score, -2, -1)
    groups = moved.reshape(-1, m)
    rank = np.argsort(np.argsort(-groups, axis=1, kind="stable"), axis=1)
    mask = (rank < n).reshape(moved.shape)
    return np.moveaxis(mask, -1, -2)


def _lowest(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Keep-mask of a flat score vector with the lowest ``ratio`` of it dropped (exact count)."""
    keep = np.ones(scores.size, bool)
    keep[np.argsort(scores, kind="stable")[: int(scores.size * ratio)]] = False
    return keep


def unstructured(model: Any, p: Prune, data: CompressData) -> tuple[Any, list[dict], list[str]]:
    if p.criterion == "importance":
        raise UsageError(
            "prune criterion 'importance' scores channels, not single weights: use it with "
            "structured pruning, or choose magnitude, gradient or taylor"
        )
    notes = [
        "unstructured pruning keeps the architecture: dense runtimes run it no faster; the "
        "zeros show in the compressed (zip) size"
    ]
    outputs = km.output_layers(model)
    targets: list[tuple[str, int, Any]] = []  # (layer, weight index, variable)
    for layer in model.layers:
        attrs = SPARSE_KERNELS.get(type(layer).__name__)
        if (
            not attrs
            or not km.plain(layer)
            or layer.name in outputs
            or _ignored([layer.name], p.ignore)
        ):
            continue
        order = [id(w) for w in layer.weights]
        for attr in attrs:
            var = getattr(layer, attr)
            targets.append((layer.name, order.index(id(var)), var))
    if p.n_m is not None:
        n, m = p.n_m
        notes.append(f"N:M {n}:{m} keeps {n} of every {m} weights; the ratio is not used")
        kept = []
        for t in targets:
            layer = model.get_layer(t[0])
            if _is_dw(layer) or (t[2] is getattr(layer, "depthwise_kernel", None)):
                notes.append(f"{t[0]}: depthwise kernels have no input axis for N:M; left dense")
            elif t[2].shape[-2] % m:
                notes.append(
                    f"{t[0]}: {t[2].shape[-2]} inputs is not a multiple of {m}; left dense"
                )
            else:
                kept.append(t)
        targets = kept
    if not targets:
        notes.append("no prunable kernel: the model is unchanged")
        return km.copy_model(model), [], notes
    values = [np.asarray(v) for _, _, v in targets]
    if p.criterion == "magnitude":
        scores = [np.abs(v) for v in values]
    else:
        scores = gradients(model, [v for _, _, v in targets], data, p.criterion == "taylor")
    masks: list[np.ndarray | None] = [None] * len(targets)
    if p.n_m is not None:
        masks = [_n_m_mask(s, *p.n_m) for s in scores]
    else:
        pooled = []
        for i, ((name, _, _), s) in enumerate(zip(targets, scores, strict=True)):
            if p.scope == "global" and name not in p.per_layer:
                pooled.append(i)
            else:
                masks[i] = _lowest(s.reshape(-1), p.per_layer.get(name, p.ratio)).reshape(s.shape)
        if pooled:  # one threshold over every pooled weight
            flat = _lowest(np.concatenate([scores[i].reshape(-1) for i in pooled]), p.ratio)
            start = 0
            for i in pooled:
                masks[i] = flat[start : start + scores[i].size].reshape(scores[i].shape)
                start += scores[i].size
    new_values: dict[str, dict[int, np.ndarray]] = {}
    layers_out = []
    for (name, idx, _), v, mask in zip(targets, values, masks, strict=True):
        pruned = np.where(mask, v, 0).astype(v.dtype)
        new_values.setdefault(name, {})[idx] = pruned
        layers_out.append(
            {
                "layer": name,
                "before": {"weights": int(v.size), "nonzero": int(np.count_nonzero(v))},
                "after": {"weights": int(v.size), "nonzero": int(np.count_nonzero(pruned))},
            }
        )

    def setter(vals: dict[int, np.ndarray]) -> km.WeightFn:
        return lambda w: [vals.get(i, a) for i, a in enumerate(w)]

    new = km.rebuild(model, weights={n: setter(v) for n, v in new_values.items()})
    return new, layers_out, notes
