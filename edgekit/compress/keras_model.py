"""Keras 3 side of ``edgekit.compress``: the framework module the driver dispatches to.

The driver (:mod:`edgekit.compress.api`) only calls the functions of this module's protocol
(``owns``, ``load``, ``save``, ``run``, ``count``, ``apply``, ``input_names``, and the optional
``example``, ``as_module``); the passes live in ``keras_prune``,
``keras_lowrank`` and ``keras_finetune``. Also here: the graph helpers the passes share:
walking a functional model's layer calls in order, and rebuilding a model with some layers
changed (new config, sliced weights) or replaced by a chain of new layers.

Every pass returns a new model with its own variables: the model handed in is never modified.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compress.passes import CompressData, FineTune, LowRank, Pass, Prune
from edgekit.errors import DataError, UsageError

SUFFIX: str = ".keras"
BATCH = 64

#: layer name -> function(original weights) -> new weights
WeightFn = Callable[[list[np.ndarray]], list[np.ndarray]]
#: layer name -> function(*call args) -> output tensor, building the replacement layers
ReplaceFn = Callable[..., Any]


def keras() -> Any:
    """Keras, imported the way the intake does (TensorFlow's start-up noise silenced)."""
    from edgekit.intake.keras import _keras

    return _keras()


def tf() -> Any:
    from edgekit.intake.keras import _tf

    return _tf()


# --- protocol ----------------------------------------------------------------------------------


def owns(obj: Any) -> bool:
    """A Keras model, or a path to a ``.keras`` / ``.h5`` file (checked without importing Keras)."""
    if isinstance(obj, (str, Path)):
        return str(obj).lower().endswith((".keras", ".h5"))
    return any(c.__module__.split(".")[0] == "keras" for c in type(obj).__mro__) and hasattr(
        obj, "layers"
    )


def load(path: Path) -> Any:
    """Safe-mode load (no Lambda code runs), as a functional model."""
    from edgekit.intake.keras import _load_keras

    return functional(_load_keras(Path(path)))


def save(model: Any, path: Path, example: dict[str, np.ndarray]) -> None:
    """Atomic save: a temporary ``.keras`` in the same folder (Keras insists on the suffix),
    then a rename, so an interrupted save leaves no half-written model."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{SUFFIX}")
    try:
        model.save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def input_names(model: Any) -> list[str]:
    return [t.name for t in model.inputs]


def example(model: Any, given: Any = None) -> dict[str, np.ndarray]:
    """One feed at the model's input shapes: ``given`` (an array, a sequence of them, or a
    name -> array mapping), else zeros of the shapes the model declares (batch 1)."""
    model = functional(model)
    names = input_names(model)
    if given is not None:
        if isinstance(given, Mapping):
            return {k: np.asarray(v) for k, v in given.items()}
        items = list(given) if isinstance(given, (list, tuple)) else [given]
        return dict(zip(names, (np.asarray(v) for v in items), strict=True))
    out = {}
    for name, t in zip(names, model.inputs, strict=True):
        dims = tuple(t.shape)[1:]
        if None in dims:
            raise UsageError(
                f"the Keras model's input '{name}' has dynamic dimensions {list(t.shape)}; "
                "pass example_inputs= (or --input-shape) with one sample at the shape to use"
            )
        dtype = np.dtype(getattr(t.dtype, "name", t.dtype) or "float32")
        out[name] = np.zeros((1, *dims), dtype)
    return out


def as_module(obj: Any, given: Any = None) -> Any:
    """An in-memory model as a functional model (a Sequential is re-called on an Input)."""
    return functional(obj)


def run(model: Any, feeds: Mapping[str, np.ndarray], batch: int = BATCH) -> list[np.ndarray]:
    """Inference-mode forward in batches; float inputs are fed as float32."""
    names = input_names(model)
    if len(names) == 1 and len(feeds) == 1 and names[0] not in feeds:
        feeds = {names[0]: next(iter(feeds.values()))}  # one input: its name cannot be wrong
    missing = [n for n in names if n not in feeds]
    if missing:
        raise DataError(f"no data for model input(s) {missing}; the model takes {names}")
    n = len(feeds[names[0]])
    chunks: list[list[np.ndarray]] = []
    for i in range(0, n, batch):
        args = [
            _as_input(feeds[k][i : i + batch], t) for k, t in zip(names, model.inputs, strict=True)
        ]
        out = model(args[0] if len(args) == 1 else args, training=False)
        chunks.append([np.asarray(v) for v in flat(out)])
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def count(model: Any, example: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """Parameters and multiply-accumulates per sample of the conv/dense-like layers (BatchNorm
    and activations are not counted: converters fold or fuse them)."""
    return int(model.count_params()), _macs(model, example)


def _macs(model: Any, example: Mapping[str, np.ndarray] | None) -> int:
    shapes = _output_shapes(model, example)
    total = 0
    for node in nodes(model):
        layer = node.operation
        if hasattr(layer, "_nodes_by_depth"):  # a nested functional model: its static shapes
            with contextlib.suppress(UsageError):  # dynamic inner shapes: params only
                total += _macs(layer, None)
            continue
        total += _layer_macs(layer, shapes[id(node.outputs[0])])
    return int(total)


def apply(model: Any, p: Pass, data: CompressData) -> tuple[Any, list[dict], list[str]]:
    """One pass on a copy of ``model``: (new model, per-layer changes, notes)."""
    model = functional(model)
    if isinstance(p, Prune):
        from edgekit.compress import keras_prune

        return keras_prune.apply(model, p, data)
    if isinstance(p, LowRank):
        from edgekit.compress import keras_lowrank

        return keras_lowrank.apply(model, p, data)
    if isinstance(p, FineTune):
        from edgekit.compress import keras_finetune

        return keras_finetune.apply(model, p, data)
    if getattr(p, "kind", None) == "qat":
        from edgekit.compress import keras_qat

        return keras_qat.apply(model, p, data)
    if getattr(p, "kind", None) == "distill":
        from edgekit.compress import keras_distill

        return keras_distill.apply(model, p, data)
    raise UsageError(f"unknown compress pass {p!r}")


# --- graph helpers shared by the passes --------------------------------------------------------


def functional(model: Any) -> Any:
    """``model`` as a functional model (a Sequential is re-called on a new Input; the layers
    are shared, which is harmless because every pass rebuilds with fresh layers)."""
    k = keras()
    if isinstance(model, k.Sequential):
        if not model.inputs:
            raise UsageError("the Sequential model has no defined input; build it first")
        src = model.inputs[0]
        x = inp = k.Input(batch_shape=src.shape, dtype=src.dtype, name=src.name)
        for layer in model.layers:
            x = layer(x)
        return k.Model(inp, x, name=model.name)
    if not getattr(model, "inputs", None) or not hasattr(model, "_nodes_by_depth"):
        raise UsageError(
            f"{type(model).__name__} is not a functional Keras model; compress needs the layer "
            "graph (build subclassed models functionally, or save and pass the .keras file)"
        )
    return model


def nodes(model: Any) -> Iterator[Any]:
    """The model's layer calls, inputs first (each node: ``operation``, ``input_tensors``,
    ``outputs``); the Input layers themselves are skipped."""
    by_depth = model._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def call_counts(model: Any) -> dict[str, int]:
    """How often each layer is called in the model (a shared layer cannot be sliced per use)."""
    out: dict[str, int] = {}
    for node in nodes(model):
        out[node.operation.name] = out.get(node.operation.name, 0) + 1
    return out


def plain(layer: Any) -> bool:
    """A built-in Keras layer with ordinary float weights (not a user class sharing a Keras
    name, not LoRA-adapted, not quantized): its weights may be sliced, zeroed or factored."""
    if not type(layer).__module__.startswith("keras."):
        return False
    if getattr(layer, "lora_enabled", False):
        return False
    return not getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None)


def output_layers(model: Any) -> set[str]:
    return {t._keras_history.operation.name for t in model.outputs}


def rebuild(
    model: Any,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    weights: Mapping[str, WeightFn] | None = None,
    replace: Mapping[str, ReplaceFn] | None = None,
) -> Any:
    """A new functional model with fresh layers: ``config`` overrides a layer's config,
    ``weights`` maps its original weights to the new ones (else they are copied), ``replace``
    swaps a layer call for whatever the function builds on the call's inputs."""
    k = keras()
    config = config or {}
    weights = weights or {}
    replace = replace or {}
    originals = {layer.name: layer for layer in model.layers}
    done: set[int] = set()

    def clone(layer: Any) -> Any:
        cfg = layer.get_config()
        cfg.update(config.get(layer.name, {}))
        return type(layer).from_config(cfg)

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer.name in replace:
            return replace[layer.name](*args, **kwargs)
        out = layer(*args, **kwargs)
        if id(layer) not in done:  # a shared layer is called (and built) more than once
            done.add(id(layer))
            src = originals.get(layer.name)  # keras.ops calls are not layers: no weights
            old = [np.array(w) for w in src.get_weights()] if src is not None else []
            fn = weights.get(layer.name)
            if old:
                layer.set_weights(fn(old) if fn else old)
        return out

    return k.models.clone_model(model, clone_function=clone, call_function=call)


def copy_model(model: Any) -> Any:
    """A copy with its own variables (the fine-tune pass trains one)."""
    return rebuild(model)


def unique_name(model: Any, base: str, taken: set[str]) -> str:
    names = {layer.name for layer in model.layers} | taken
    name, i = base, 1
    while name in names:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def batches(feeds: Mapping[str, np.ndarray], size: int, limit: int | None = None) -> Iterator[dict]:
    n = len(next(iter(feeds.values())))
    stop = n if limit is None else min(n, limit * size)
    for i in range(0, stop, size):
        yield {k: v[i : i + size] for k, v in feeds.items()}


def probe(model: Any, tensors: list[Any]) -> Any:
    """A model from ``model``'s inputs to some of its inner tensors (same input structure)."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras().Model(inputs, tensors)


def model_args(model: Any, feeds: Mapping[str, np.ndarray]) -> Any:
    """Feeds as the positional argument a Keras model call takes."""
    args = [_as_input(feeds[t.name], t) for t in model.inputs]
    return args[0] if len(args) == 1 else args


def outputs_are_probabilities(outs: np.ndarray) -> bool:
    """A softmax head (non-negative rows summing to one) rather than logits: the losses take
    the log themselves then."""
    if outs.ndim < 2 or outs.shape[-1] < 2:
        return False
    return bool(np.all(outs >= 0) and np.allclose(outs.sum(-1), 1.0, atol=1e-3))


def _as_input(x: Any, tensor: Any) -> Any:
    arr = np.asarray(x)
    dtype = np.dtype(getattr(tensor.dtype, "name", tensor.dtype) or "float32")
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(dtype, np.floating):
        return arr.astype(np.float32 if np.issubdtype(dtype, np.floating) else dtype)
    return arr.astype(dtype)


def flat(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, (list, tuple)):
        return [v for o in out for v in flat(o)]
    return [out]


def _output_shapes(
    model: Any, example: Mapping[str, np.ndarray] | None
) -> dict[int, tuple[int, ...]]:
    """Per-sample output shape of every layer call: static where Keras knows it, else measured
    on one example sample."""
    tensors = [n.outputs[0] for n in nodes(model)]
    if all(None not in tuple(t.shape)[1:] for t in tensors):
        return {id(t): tuple(int(d) for d in t.shape[1:]) for t in tensors}
    if example is None:
        raise UsageError("dynamic shapes: an example feed is needed to count MACs")
    probe_model = probe(model, tensors)
    outs = flat(
        probe_model(model_args(model, {n: v[:1] for n, v in example.items()}), training=False)
    )
    return {id(t): tuple(np.shape(o))[1:] for t, o in zip(tensors, outs, strict=True)}


def _layer_macs(layer: Any, out_shape: tuple[int, ...]) -> int:
    k = keras()
    positions = int(np.prod(out_shape[:-1])) if len(out_shape) > 1 else 1
    weights = {w.path.split("/")[-1]: tuple(w.shape) for w in getattr(layer, "weights", [])}
    if isinstance(layer, (k.layers.SeparableConv2D, k.layers.SeparableConv1D)):
        return positions * (
            int(np.prod(weights["depthwise_kernel"])) + int(np.prod(weights["pointwise_kernel"]))
        )
    if isinstance(layer, (k.layers.DepthwiseConv2D, k.layers.DepthwiseConv1D)):
        return positions * int(np.prod(weights["kernel"]))
    if isinstance(layer, (k.layers.Conv2DTranspose, k.layers.Conv1DTranspose)):
        # every input position scatters the whole kernel: positions of the input, not output
        strides = int(np.prod(layer.strides))
        return positions // max(strides, 1) * int(np.prod(weights["kernel"]))
    if isinstance(layer, (k.layers.Conv1D, k.layers.Conv2D, k.layers.Conv3D, k.layers.Dense)):
        return positions * int(np.prod(weights["kernel"]))
    return 0
