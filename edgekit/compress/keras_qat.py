"""Keras 3 quantization-aware training (the ``qat`` compress pass) and its int8 TFLite export.

Keras 3 has no int8 QAT (its ``quantize()`` is post-training) and TF-MOT works on Keras 2
models only, so the pass rewrites the functional graph itself:

* BatchNormalization after a Conv2D / DepthwiseConv2D / Dense (its only consumer, no activation
  between) is folded into that layer's kernel and bias first, so training sees the weights the
  device runs.
* Conv2D, DepthwiseConv2D and Dense become :func:`classes`' ``QConv2D`` / ``QDepthwiseConv2D``
  / ``QDense``: the same layers whose kernel goes through TensorFlow's fake-quant op (int8
  symmetric, narrow range [-127, 127], or 7-bit [-63, 63] where the deployment CPU's kernels
  saturate, see :func:`edgekit.compress.passes.qat_weight_range`; per output channel for the
  convolutions, per tensor for Dense, which TFLiteConverter cannot take per channel).
* A ``FakeQuant`` layer (int8 asymmetric per tensor, ``fake_quant_with_min_max_vars``; range an
  exponential moving average of the batch min/max in training, frozen at inference) follows
  every float input and every layer that computes new values; after a conv/dense followed only
  by a ReLU it goes after the ReLU, and layers that only move or select values (pooling by max,
  flatten, reshape, dropout, padding) keep their input's range, as in TFLite.

TensorFlow's fake-quant ops are what ``TFLiteConverter`` reads as quantization: with
``Optimize.DEFAULT`` and no representative dataset it writes a full-integer model at exactly
those ranges (:func:`to_tflite`), checked against the trained ranges in tests/test_qat_keras.py.
ONNX Runtime and OpenVINO get that integer model as QDQ ONNX (:func:`to_onnx`, through
:mod:`edgekit.intake.tflite_onnx`), so all three backends compute the same grid. The classes
are registered as Keras serializables (package ``edgekit``): the QAT model saves as ``.keras``
and loads in safe mode.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compress import keras_model as km
from edgekit.compress.passes import QAT, CompressData, qat_weight_range
from edgekit.errors import ConversionError, DataError, UsageError, first_line

PACKAGE = "edgekit"
#: the registered class names (``edgekit>Name`` in a saved model's config.json)
CLASS_NAMES = ("FakeQuant", "QConv2D", "QDepthwiseConv2D", "QDense")
#: moving-average decay of the activation ranges (torch's observers use the same 0.01 step)
EMA = 0.99
_WEIGHTED = {"Conv2D": "QConv2D", "DepthwiseConv2D": "QDepthwiseConv2D", "Dense": "QDense"}
#: layers whose output keeps its input's quantization in TFLite (no range of their own)
_KEEPS_RANGE = {
    "MaxPooling1D",
    "MaxPooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "Flatten",
    "Reshape",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "Cropping1D",
    "Cropping2D",
    "Permute",
    "Identity",
}
_RELU = ("relu", "relu6")
#: activations whose int8 TFLite kernels have a fixed output grid (scale 1/256 from 0, or
#: 1/128 around 0): QAT trains on that grid instead of learning a range the converter would
#: requantize to after the op
FIXED_RANGES = {
    "softmax": (0.0, 255 / 256),
    "sigmoid": (0.0, 255 / 256),
    "tanh": (-1.0, 127 / 128),
}


def _registered(cls: type) -> type:
    return km.keras().saving.register_keras_serializable(package=PACKAGE)(cls)


def classes() -> dict[str, type]:
    """The QAT layer classes, built (and registered with Keras) on first use: Keras is an
    optional dependency, so they cannot be defined at import."""
    cached = globals().get("_CLASSES")
    if cached is not None:
        return cached
    k = km.keras()
    tf = km.tf()
    ops = k.ops

    def weight_fq(kernel: Any, channels_last: Any, reduce_range: bool) -> Any:
        """``kernel`` fake-quantized symmetric, narrow range: scale absmax/127, or absmax/63
        with 7-bit weights (the range is widened so the same int8 grid holds only [-63, 63]).
        Per output channel (the last axis after ``channels_last``), or per tensor when
        ``channels_last`` is None."""
        if channels_last is None:
            m = tf.maximum(tf.reduce_max(tf.abs(kernel)), 1e-8)
            m = m * (127.0 / 63.0) if reduce_range else m
            return tf.quantization.fake_quant_with_min_max_vars(
                kernel, -m, m, num_bits=8, narrow_range=True
            )
        w = channels_last(kernel)
        m = tf.maximum(tf.reduce_max(tf.abs(w), axis=list(range(len(w.shape) - 1))), 1e-8)
        m = m * (127.0 / 63.0) if reduce_range else m
        q = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            w, -m, m, num_bits=8, narrow_range=True
        )
        return tf.reshape(q, tf.shape(kernel))

    class FakeQuant(k.layers.Layer):
        """int8 asymmetric per-tensor fake quantization of an activation; the range is a
        moving average of the batch min/max while training and frozen otherwise."""

        def __init__(
            self, ema: float = EMA, fixed: Sequence[float] | None = None, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self.ema = float(ema)
            #: a range the integer kernel dictates (TFLite's softmax/logistic/tanh outputs)
            self.fixed = None if fixed is None else (float(fixed[0]), float(fixed[1]))

        def build(self, input_shape: Any) -> None:
            zero = k.initializers.Constant(0.0)
            self.range_min = self.add_weight(
                shape=(), initializer=zero, trainable=False, name="range_min"
            )
            self.range_max = self.add_weight(
                shape=(), initializer=zero, trainable=False, name="range_max"
            )
            self.seen = self.add_weight(shape=(), initializer=zero, trainable=False, name="seen")
            if self.fixed is not None:
                self.range_min.assign(self.fixed[0])
                self.range_max.assign(self.fixed[1])
                self.seen.assign(1.0)

        def call(self, x: Any, training: bool | None = None) -> Any:
            if training and self.fixed is None:
                lo, hi = tf.reduce_min(x), tf.reduce_max(x)
                old = self.seen * self.ema  # the first batch sets the range
                self.range_min.assign(old * self.range_min + (1.0 - old) * lo)
                self.range_max.assign(old * self.range_max + (1.0 - old) * hi)
                self.seen.assign(1.0)
            lo = tf.minimum(tf.convert_to_tensor(self.range_min), 0.0)
            hi = tf.maximum(tf.maximum(tf.convert_to_tensor(self.range_max), 0.0), lo + 1e-6)
            return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "ema": self.ema, "fixed": self.fixed}

    class QConv2D(k.layers.Conv2D):
        """Conv2D whose kernel (kh, kw, in, out) is fake-quantized per output channel."""

        def __init__(self, *args: Any, reduce_range: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.reduce_range = bool(reduce_range)

        def convolution_op(self, inputs: Any, kernel: Any) -> Any:
            return super().convolution_op(inputs, weight_fq(kernel, lambda w: w, self.reduce_range))

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "reduce_range": self.reduce_range}

    class QDepthwiseConv2D(k.layers.DepthwiseConv2D):
        """DepthwiseConv2D whose kernel (kh, kw, in, multiplier) is fake-quantized per output
        channel (in x multiplier of them, TFLite's axis 3)."""

        def __init__(self, *args: Any, reduce_range: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.reduce_range = bool(reduce_range)

        def call(self, inputs: Any) -> Any:
            kernel = weight_fq(
                self.kernel,
                lambda w: tf.reshape(w, (w.shape[0], w.shape[1], -1)),
                self.reduce_range,
            )
            out = ops.depthwise_conv(
                inputs,
                kernel,
                strides=self.strides,
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format=self.data_format,
            )
            if self.use_bias:
                shape = [1] * len(out.shape)
                shape[-1 if self.data_format == "channels_last" else 1] = -1
                out = ops.add(out, ops.reshape(self.bias, shape))
            return self.activation(out) if self.activation is not None else out

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "reduce_range": self.reduce_range}

    class QDense(k.layers.Dense):
        """Dense whose kernel (in, out) is fake-quantized per tensor: TFLiteConverter cannot
        carry a per-unit range through the transpose to its FULLY_CONNECTED (out, in) weights
        ("mismatched quantized axes"); TF-MOT's 8-bit scheme is per tensor there too."""

        def __init__(self, *args: Any, reduce_range: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.reduce_range = bool(reduce_range)

        def call(self, inputs: Any, training: bool | None = None) -> Any:
            x = ops.matmul(inputs, weight_fq(self.kernel, None, self.reduce_range))
            if self.bias is not None:
                x = ops.add(x, self.bias)
            return self.activation(x) if self.activation is not None else x

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "reduce_range": self.reduce_range}

    found = {c.__name__: _registered(c) for c in (FakeQuant, QConv2D, QDepthwiseConv2D, QDense)}
    globals()["_CLASSES"] = found
    return found


def is_qat_model(model: Any) -> bool:
    """Does an in-memory Keras model hold the QAT layers (without importing Keras)?"""
    cached = globals().get("_CLASSES")
    if not cached:
        return False
    ours = tuple(cached.values())
    return any(isinstance(layer, ours) for layer in getattr(model, "layers", ()) or ())


def trained_ranges(model: Any) -> list[dict[str, Any]]:
    """The ranges QAT learned, in layer order: each activation's (min, max) as the fake-quant
    op uses them (0 included) and each weight layer's per-channel absmax and quant range --
    what the tests compare the exported artifacts against."""
    cls = classes()
    out: list[dict[str, Any]] = []
    for layer in model.layers:
        if isinstance(layer, cls["FakeQuant"]):
            lo = min(float(np.asarray(layer.range_min)), 0.0)
            hi = max(float(np.asarray(layer.range_max)), 0.0, lo + 1e-6)
            out.append({"kind": "activation", "name": layer.name, "min": lo, "max": hi})
        elif isinstance(layer, (cls["QConv2D"], cls["QDense"], cls["QDepthwiseConv2D"])):
            w = np.asarray(layer.kernel)
            if isinstance(layer, cls["QDepthwiseConv2D"]):
                w = w.reshape(w.shape[0], w.shape[1], -1)
            absmax = np.abs(w).reshape(-1, w.shape[-1]).max(0)
            if isinstance(layer, cls["QDense"]):
                absmax = np.abs(w).max(keepdims=True)
            qmax = 63 if layer.reduce_range else 127
            out.append(
                {
                    "kind": "weight",
                    "name": layer.name,
                    "absmax": absmax,
                    "quant_range": (-qmax, qmax),
                }
            )
    return out


# --- the graph rewrite --------------------------------------------------------------------------


def _consumers(model: Any) -> dict[int, list[Any]]:
    """Output tensor id -> the layer calls that read it."""
    out: dict[int, list[Any]] = {}
    for node in km.nodes(model):
        for t in node.input_tensors:
            out.setdefault(id(t), []).append(node)
    return out


def _is_relu(layer: Any) -> bool:
    name = type(layer).__name__
    if name == "ReLU":
        cfg = layer.get_config()
        return not cfg.get("negative_slope") and not cfg.get("threshold")
    if name == "Activation":
        return layer.get_config().get("activation") in _RELU
    return False


def _activation_name(layer: Any, split_off: dict[str, Any]) -> str:
    """The activation whose output ``layer``'s call ends in: an Activation / Softmax layer's,
    or a weighted layer's split-off one (by name; "" when none or not a built-in)."""
    if layer is None:
        return ""
    kind = type(layer).__name__
    if kind == "Softmax":
        return "softmax"
    fn = split_off.get(layer.name) if kind in _WEIGHTED else None
    if kind == "Activation":
        fn = layer.get_config().get("activation")
    if isinstance(fn, str):
        return fn
    return getattr(fn, "__name__", "") if fn is not None else ""


def _linear(layer: Any) -> bool:
    return layer.get_config().get("activation", "linear") == "linear"


def _check(model: Any) -> None:
    """Refuse what the rewrite cannot train quantized: a nested model, or a layer with weights
    that is not a Conv2D / DepthwiseConv2D / Dense / BatchNormalization (the converter would
    quantize it by its own rules, and the artifact would not be what was trained)."""
    for layer in model.layers:
        if hasattr(layer, "_nodes_by_depth"):
            raise UsageError(
                f"QAT rewrites a flat functional Keras model, and layer '{layer.name}' is a "
                "nested model; rebuild the model with its layers inline"
            )
        kind = type(layer).__name__
        if layer.weights and kind not in _WEIGHTED and kind != "BatchNormalization":
            raise UsageError(
                f"QAT trains the weights of Conv2D, DepthwiseConv2D and Dense layers quantized, "
                f"and layer '{layer.name}' ({kind}) has weights it cannot: replace the layer, "
                "or quantize the model after training with --precision int8"
            )
        if not km.plain(layer) and type(layer).__name__ not in ("InputLayer",):
            raise UsageError(
                f"layer '{layer.name}' ({type(layer).__name__}) is not a plain Keras layer "
                "(custom class, LoRA or already quantized); QAT rewrites built-in layers only"
            )


def _bn_folds(model: Any) -> dict[str, str]:
    """BatchNormalization layer -> the Conv2D / DepthwiseConv2D / Dense it folds into: the BN's
    input is that layer's only use, with no activation between, and the BN normalizes the
    channel (last) axis."""
    counts = km.call_counts(model)
    consumers = _consumers(model)
    folds: dict[str, str] = {}
    for node in km.nodes(model):
        bn = node.operation
        if type(bn).__name__ != "BatchNormalization" or counts[bn.name] != 1:
            continue
        axis = bn.get_config().get("axis")
        axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
        src = node.input_tensors[0]
        prev = src._keras_history.operation
        rank = len(src.shape)
        if axis not in (-1, rank - 1) or type(prev).__name__ not in _WEIGHTED:
            continue
        if counts.get(prev.name) != 1 or not _linear(prev) or len(consumers[id(src)]) != 1:
            continue
        if getattr(prev, "data_format", "channels_last") != "channels_last":
            continue
        folds[bn.name] = prev.name
    return folds


def _folded(layer: Any, bn: Any) -> list[np.ndarray]:
    """``layer``'s kernel and bias with ``bn`` (inference statistics) folded in, per output
    channel: ``w * g / sqrt(v + eps)`` and ``(b - mean) * g / sqrt(v + eps) + beta``."""
    cfg = bn.get_config()
    weights = [np.asarray(w, np.float64) for w in bn.get_weights()]
    gamma = weights.pop(0) if cfg.get("scale", True) else None
    beta = weights.pop(0) if cfg.get("center", True) else None
    mean, var = weights
    factor = (gamma if gamma is not None else 1.0) / np.sqrt(var + cfg["epsilon"])
    kernel = np.asarray(layer.kernel, np.float64)
    bias = np.asarray(layer.bias, np.float64) if layer.use_bias else np.zeros(len(mean))
    if type(layer).__name__ == "DepthwiseConv2D":  # output channel = in * multiplier + m
        shape = kernel.shape
        kernel = (kernel.reshape(shape[0], shape[1], -1) * factor).reshape(shape)
    else:
        kernel = kernel * factor
    bias = (bias - mean) * factor + (beta if beta is not None else 0.0)
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def rewrite(model: Any, reduce_range: bool) -> tuple[Any, list[dict[str, Any]]]:
    """The QAT model of a float functional ``model`` (new layers; weights copied, BatchNorm
    folded) and the per-layer changes for the report."""
    _check(model)
    k = km.keras()
    cls = classes()
    folds = _bn_folds(model)
    folded_into = {conv: bn for bn, conv in folds.items()}
    originals = {layer.name: layer for layer in model.layers}
    consumers = _consumers(model)
    # a weighted layer read only by a ReLU: its range is the ReLU's (TFLite fuses the two)
    relu_after: set[str] = set()
    for node in km.nodes(model):
        layer = node.operation
        users = consumers.get(id(node.outputs[0]), [])
        target = layer.name
        if layer.name in folded_into and len(users) == 1:  # look past the folded BN
            users = consumers.get(id(users[0].outputs[0]), [])
        weighted = type(layer).__name__ in _WEIGHTED and _linear(layer)
        if weighted and len(users) == 1 and _is_relu(users[0].operation):
            relu_after.add(target)
    changes: list[dict[str, Any]] = []
    inputs_fq: dict[int, Any] = {}
    done: set[str] = set()

    # a fused activation other than ReLU (softmax, sigmoid, ...) is split off: the converter
    # quantizes such an op only with ranges on both its sides
    split_off: dict[str, Any] = {}

    def clone(layer: Any) -> Any:
        cfg = layer.get_config()
        name = type(layer).__name__
        if name in _WEIGHTED:
            if layer.name in folded_into:
                cfg["use_bias"] = True
            if cfg.get("activation", "linear") not in ("linear", *_RELU):
                split_off[layer.name] = layer.activation
                cfg["activation"] = "linear"
            return cls[_WEIGHTED[name]].from_config({**cfg, "reduce_range": reduce_range})
        return type(layer).from_config(cfg)

    def quantized_input(t: Any) -> Any:
        hist = getattr(t, "_keras_history", None)
        if hist is None or type(hist.operation).__name__ != "InputLayer":
            return t
        if "float" not in str(getattr(t.dtype, "name", t.dtype)):
            return t
        if id(t) not in inputs_fq:
            inputs_fq[id(t)] = cls["FakeQuant"](name=f"{hist.operation.name}_fq")(t)
        return inputs_fq[id(t)]

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        args = tuple(
            [quantized_input(a) for a in arg] if isinstance(arg, list) else quantized_input(arg)
            for arg in args
        )
        src = originals.get(layer.name)
        if src is not None and src.name in folds:
            return args[0]  # folded into the layer before it
        out = layer(*args, **kwargs)
        name = type(src).__name__ if src is not None else ""
        if src is not None and src.name not in done:
            done.add(src.name)
            if src.name in folded_into:
                layer.set_weights(_folded(src, originals[folded_into[src.name]]))
                change = f"{folded_into[src.name]} folded; weights fake-quantized"
            else:
                layer.set_weights([np.array(w) for w in src.get_weights()])
                change = "weights fake-quantized"
            if name in _WEIGHTED:
                changes.append({"layer": src.name, "change": change})
        base = src.name if src is not None else "op"
        if src is not None and src.name in split_off:
            out = cls["FakeQuant"](name=f"{base}_linear_fq")(out)
            out = k.layers.Activation(split_off[src.name], name=f"{base}_activation")(out)
        if name in _KEEPS_RANGE or (src is not None and src.name in relu_after):
            return out
        fixed = FIXED_RANGES.get(_activation_name(src, split_off))
        return cls["FakeQuant"](name=f"{base}_fq", fixed=fixed)(out)

    try:
        new = k.models.clone_model(model, clone_function=clone, call_function=call)
    except UsageError:
        raise
    except Exception as exc:
        raise ConversionError(f"QAT could not rewrite the Keras model: {first_line(exc)}") from exc
    return new, changes


# --- the pass -----------------------------------------------------------------------------------


def apply(model: Any, p: QAT, data: CompressData) -> tuple[Any, list[dict[str, Any]], list[str]]:
    from edgekit.compress.keras_finetune import metric, run_epoch, trainer

    if data.train is None:
        raise DataError("QAT needs training data: pass --data (images, .npy or .npz)")
    if p.mode == "labels" and data.train_labels is None:
        raise DataError("QAT mode labels needs labels: pass --labels, or use --qat-mode distill")
    if not p.per_channel:
        raise UsageError("Keras QAT quantizes weights per channel only; drop per_channel=False")
    reduce, range_note = qat_weight_range(p)
    student, changes = rewrite(model, reduce)
    ref = data.original if data.original is not None else model
    step, train, target = trainer(student, ref, data, p.mode, p.lr, p.temperature)
    rng = np.random.default_rng(0)
    history: list[str] = []
    for epoch in range(1, p.epochs + 1):
        loss = run_epoch(
            step, student, train, target, p.batch_size, rng, f"QAT epoch {epoch}/{p.epochs}"
        )
        history.append(f"epoch {epoch}: loss {loss:.4f}")
    name, _, score = metric(student, data)
    if score is not None:
        history.append(f"int8 fake-quant {name} {score:.4f}")
    ranges = trained_ranges(student)
    notes = [
        f"QAT ({p.mode}, {p.epochs} epoch(s), Keras fake-quant: int8 weights per channel "
        "(Dense per tensor), int8 per-tensor activations, BatchNorm folded): " + "; ".join(history),
        f"{sum(r['kind'] == 'activation' for r in ranges)} activation and "
        f"{sum(r['kind'] == 'weight' for r in ranges)} weight ranges learned; export with "
        "--precision as-trained (no recalibration)",
        f"QAT weights: {range_note}",
    ]
    return student, changes, notes


# --- export -------------------------------------------------------------------------------------


def to_onnx(source: Any, dst: Path) -> None:
    """The QDQ ONNX of a QAT Keras source: its full-integer TFLite model (the trained ranges,
    :mod:`edgekit.backends.tflite.convert`) through tf2onnx, so ONNX Runtime and OpenVINO
    compute the integers LiteRT does. tf2onnx's own route from the Keras graph would map the
    per-channel fake-quant ops on its own terms."""
    from edgekit.backends.tflite.convert import convert
    from edgekit.intake.tflite_onnx import convert as tflite_to_onnx

    with tempfile.TemporaryDirectory(prefix="edgekit-qat-") as tmp:
        converted = convert(source, Path(tmp))
        path = Path(tmp) / "qat.tflite"
        path.write_bytes(converted.model)
        tflite_to_onnx(path, source.inputs, source.outputs, dst)
