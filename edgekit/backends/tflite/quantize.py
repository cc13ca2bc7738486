"""Quantize an FP32 ``.tflite`` with ai-edge-quantizer (the LiteRT Quantizer).

Why this path for every precision, rather than TFLiteConverter's built-in optimizations:

* one quantizer for every source: PyTorch models arrive through litert-torch as an FP32
  ``.tflite`` and never see TFLiteConverter, so Keras, SavedModel and PyTorch are quantized by
  the same code with the same numerics (and Google recommends this FP32-then-quantize flow);
* its recipes are ordered ``{regex, op, config}`` rules, so ``--keep-float`` (and later mixed
  precision) is per layer, and graph inputs/outputs are ops of their own (``INPUT``/``OUTPUT``):
  float, int8 or uint8 I/O is a rule, not a rewrite of the flatbuffer.

One departure from its defaults: its calibrator keeps a moving average (0.95) of each batch's
min/max, which with batch-1 samples lets the last samples narrow the ranges, clipping larger
activations (on the digits CNN even int16x8 then differed from FP32 by 7 logits). edgekit's
``minmax`` means the true range over all calibration samples, so the update function here takes
the running min and max.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgekit.backends.tflite.layers import scope_regex
from edgekit.backends.tflite.runner import NativeStderr
from edgekit.errors import ConversionError, UsageError, first_line, require
from edgekit.layers import LayerPlan
from edgekit.model import Feeds
from edgekit.progress import enabled as progress_enabled
from edgekit.recipe import Recipe

SIGNATURE = "serving_default"


def _full_minmax(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    if not old:
        return new
    merged = dict(new)
    merged["min"] = np.minimum(old["min"], new["min"])
    merged["max"] = np.maximum(old["max"], new["max"])
    return merged


def _configs(recipe: Recipe, layer_plan: LayerPlan | None = None) -> list[dict[str, Any]]:
    """The ai-edge-quantizer rules for ``recipe``, in order (a later match wins), then one
    rule per layer precision the layer rules asked for, on exactly those ops."""
    qt = require("ai_edge_quantizer.qtyping", "tflite")
    algo = require("ai_edge_quantizer.algorithm_manager", "tflite").AlgorithmName
    op = qt.TFLOperationName
    granularity = (
        qt.QuantGranularity.CHANNELWISE if recipe.per_channel else qt.QuantGranularity.TENSORWISE
    )
    w8 = qt.TensorQuantizationConfig(num_bits=8, symmetric=True, granularity=granularity)
    float_op = qt.OpQuantizationConfig()
    keep_io = [
        dict(regex=".*", operation_name=io_op, op_config=float_op, algorithm_key=algo.NO_QUANTIZE)
        for io_op in (op.INPUT, op.OUTPUT)
    ]
    p = recipe.precision
    if p == "fp16":
        cfg = _fp16_weights(qt)
        rules = [
            dict(operation_name=op.ALL_SUPPORTED, op_config=cfg, algorithm_key=algo.FLOAT_CASTING)
        ]
    elif p == "int8-dynamic":
        cfg = qt.OpQuantizationConfig(
            weight_tensor_config=w8,
            compute_precision=qt.ComputePrecision.INTEGER,
            explicit_dequantize=False,
        )
        rules = [dict(operation_name=op.ALL_SUPPORTED, op_config=cfg)]
    else:  # int8 or int16x8: static ranges from calibration
        cfg = _static(qt, w8, 16 if p == "int16x8" else 8, recipe.activation_symmetric)
        rules = [dict(operation_name=op.ALL_SUPPORTED, op_config=cfg)]
        if recipe.io_dtype == "float":
            rules += keep_io
        elif recipe.io_dtype == "uint8":
            u8 = qt.OpQuantizationConfig(
                activation_tensor_config=qt.TensorQuantizationConfig(
                    num_bits=8, symmetric=False, dtype=qt.TensorDataType.UINT
                ),
                weight_tensor_config=w8,
                compute_precision=qt.ComputePrecision.INTEGER,
            )
            rules += [dict(operation_name=io_op, op_config=u8) for io_op in (op.INPUT, op.OUTPUT)]
    rules = [{"regex": ".*", **r} if "regex" not in r else r for r in rules]
    if layer_plan is None:
        return rules
    per_layer: dict[str, dict[str, Any]] = {
        "float": dict(op_config=float_op, algorithm_key=algo.NO_QUANTIZE),
        # int8 inside int8-dynamic is the dynamic config (int8 weights, float activations)
        "int8": dict(
            op_config=cfg
            if p == "int8-dynamic"
            else _static(qt, w8, 8, recipe.activation_symmetric)
        ),
        # a16w8: 16-bit symmetric activations, int8 weights (TFLite's int16x8 kernels)
        "int16": dict(op_config=_static(qt, w8, 16, True)),
        "fp16": dict(op_config=_fp16_weights(qt), algorithm_key=algo.FLOAT_CASTING),
    }
    for precision, config in per_layer.items():
        names = layer_plan.native(precision)
        if names:
            rules.append(dict(regex=scope_regex(names), operation_name=op.ALL_SUPPORTED, **config))
    return rules


def _fp16_weights(qt: Any) -> Any:
    """fp16 weights, float compute (dequantized once at load)."""
    return qt.OpQuantizationConfig(
        weight_tensor_config=qt.TensorQuantizationConfig(
            num_bits=16, dtype=qt.TensorDataType.FLOAT
        ),
        compute_precision=qt.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )


def _static(qt: Any, w8: Any, bits: int, symmetric: bool) -> Any:
    """Static activations of ``bits`` with int8 weights."""
    return qt.OpQuantizationConfig(
        activation_tensor_config=qt.TensorQuantizationConfig(
            num_bits=bits, symmetric=bits == 16 or symmetric
        ),
        weight_tensor_config=w8,
        compute_precision=qt.ComputePrecision.INTEGER,
        explicit_dequantize=False,
    )


def op_scopes(model: bytes) -> list[str]:
    """Names the quantizer matches ``--keep-float`` against: each op's output tensor names."""
    fbu = require("ai_edge_litert.tools.flatbuffer_utils", "tflite")
    obj = fbu.read_model_from_bytearray(bytearray(model))
    graph = obj.subgraphs[0]
    scopes = []
    for op in graph.operators:
        names = [graph.tensors[i].name for i in op.outputs if i >= 0]
        scopes.append(";".join(n.decode() if isinstance(n, bytes) else n for n in names))
    return scopes


@contextlib.contextmanager
def _quiet(native: NativeStderr, keep_bar: bool = False) -> Iterator[None]:
    """The quantizer prints a size report, and draws its own progress bar on stderr: that bar
    is kept for calibration (the long part) when edgekit shows progress at all. The
    interpreters it creates log from C++ (``native``), except while the bar is drawn: by then
    they exist, and LiteRT logs its delegate once per process."""
    with contextlib.ExitStack() as stack:
        if not keep_bar:
            stack.enter_context(native)  # first in, last out: re-emits to the real stderr
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        # Its calibrator warns that preserving all tensors is for debugging: it is how it
        # calibrates.
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if not (keep_bar and progress_enabled()):
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        yield


def quantize(
    model: bytes,
    recipe: Recipe,
    calibration: Sequence[Feeds],
    signature: str = SIGNATURE,
    layer_plan: LayerPlan | None = None,
) -> bytes:
    """The quantized model. ``calibration`` feeds are keyed by the input names of the model's
    ``signature``, the one it is calibrated through; ``layer_plan`` is the recipe's layer
    rules resolved on this model (edgekit.layers)."""
    require("ai_edge_quantizer", "tflite")
    from ai_edge_quantizer import calibrator, quantizer, recipe_manager

    native = NativeStderr(handled=(Exception,))
    ranges = None
    try:
        with _quiet(native):
            q = quantizer.Quantizer(bytearray(model))
            for rule in _configs(recipe, layer_plan):
                q.update_quantization_recipe(**rule)
        if q.need_calibration:
            if not calibration:
                raise UsageError(f"precision {recipe.precision} needs calibration data")
            manager = recipe_manager.RecipeManager()
            manager.load_quantization_recipe(q.get_quantization_recipe())
            with _quiet(native):
                calib = calibrator.Calibrator(
                    bytes(model), num_threads=1, qsv_update_func=_full_minmax
                )
            with _quiet(native, keep_bar=True):
                calib.calibrate({signature: [dict(f) for f in calibration]}, manager)
            ranges = calib.get_model_qsvs()
        with _quiet(native):
            result = q.quantize(ranges, enable_progress_report=False)
    except UsageError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise ConversionError(
            f"ai-edge-quantizer failed ({recipe.precision}): {first}{native.detail()}"
        ) from exc
    return bytes(result.quantized_model)
