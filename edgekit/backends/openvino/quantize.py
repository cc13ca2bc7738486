"""NNCF compression of a float ``ov.Model``: ``int8`` post-training quantization and
``int8-weights``/``int4-weights`` weight compression.

``int8`` quantizes weights and activations from calibration feeds (min/max or percentile
ranges); the weight-only modes leave activations float and suit MatMul-heavy transformer
models. Both honour ``--keep-float`` as an NNCF ignored scope, and both switch NNCF to its
TRANSFORMER model type when the graph has attention, so that NNCF protects those patterns.
Each returns the compressed model and the details that go into the export sidecar.

``int8`` picks NNCF's overflow fix from the deployment ISA (the target's ``isa``, else this
machine's, :mod:`edgekit.cpu`) unless the recipe sets ``reduce_range``: NNCF's own guidance
(the ``OverflowFix`` docstring) is FIRST_LAYER for CPUs without VNNI, whose SSE/AVX2/AVX-512
int8 instructions saturate, and nothing is needed with VNNI/AMX or on ARM.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgekit.backends.openvino.runtime import load_nncf
from edgekit.cpu import deployment_isa
from edgekit.errors import DataError, UsageError
from edgekit.model import Feeds
from edgekit.progress import progress
from edgekit.recipe import Recipe

_INT4_GROUP = 128


class _Calibration:
    """Calibration feed dicts for nncf.Dataset, iterated under edgekit's progress bar."""

    def __init__(self, samples: Sequence[Feeds]) -> None:
        self._samples = samples

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for feeds in progress(self._samples, desc="calibrating"):
            yield dict(feeds)

    def __len__(self) -> int:
        return len(self._samples)


def _is_constant(node: Any) -> bool:
    while node.get_type_name() in ("Convert", "Reshape", "Transpose", "FakeQuantize"):
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def looks_like_transformer(model: Any) -> bool:
    """Attention: a Softmax and MatMuls of two activations (QK^T, then weights x V), or a fused
    scaled-dot-product attention op. NNCF's TRANSFORMER model type protects these patterns."""
    softmax = act_matmuls = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "ScaledDotProductAttention":
            return True
        if kind == "Softmax":
            softmax += 1
        elif kind == "MatMul" and not any(_is_constant(v.get_node()) for v in op.input_values()):
            act_matmuls += 1
    return softmax > 0 and act_matmuls >= 2


def _ignored_scope(nncf: Any, keep_float: Sequence[str]) -> Any:
    # Names come from edgekit.layers (checked against the model there); validate=True makes
    # NNCF itself refuse a name that is not in the graph rather than skip it.
    return nncf.IgnoredScope(names=list(keep_float), validate=True) if keep_float else None


def _range_estimator(nncf: Any, recipe: Recipe) -> Any:
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if recipe.calibration_method == "minmax":
        return RangeEstimatorParametersSet.MINMAX
    if recipe.calibration_method == "percentile":
        stat = StatisticsCollectorParameters(
            statistics_type=StatisticsType.QUANTILE,
            aggregator_type=AggregatorType.MEAN,
            quantile_outlier_prob=(100.0 - recipe.percentile) / 100.0,
        )
        return RangeEstimatorParameters(min=stat, max=stat)
    # entropy is refused at plan time (openvino.CAPABILITIES)
    raise UsageError(f"--calibration-method {recipe.calibration_method} is not available here")


def overflow_fix(kinds: Any, recipe: Recipe) -> tuple[Any, dict[str, Any]]:
    """NNCF's ``OverflowFix`` for ``recipe`` (``kinds`` is that enum), with the details and
    the ``note`` that say why.

    An explicit ``reduce_range`` keeps its meaning on every backend: 7-bit weights in every
    layer (ENABLE) or none (DISABLE). Otherwise the deployment ISA decides, as NNCF advises:
    FIRST_LAYER where u8 x s8 saturates (x86 without VNNI: the first layer sees raw, unnormalised
    inputs and overflows most), DISABLE where kernels accumulate in int32 (VNNI, AMX, ARM)."""
    target = deployment_isa(recipe.isa)
    details: dict[str, Any] = {**target.to_json()}
    if recipe.reduce_range is None:
        details["overflow_fix_from"] = "isa"
        if target.saturates:
            fix = kinds.FIRST_LAYER
            note = (
                f"int8 scheme for {target.describe()}: NNCF overflow fix on the first layer "
                "(7-bit weights there), as NNCF advises for SSE/AVX2/AVX-512 int8 without VNNI; "
                "--reduce-range makes every layer 7-bit"
            )
        else:
            fix = kinds.DISABLE
            why = (
                "the CPU is unknown; NNCF's fix is for x86 without VNNI"
                if target.isa is None
                else "its int8 kernels accumulate in int32 and do not saturate"
            )
            note = (
                f"int8 scheme for {target.describe()}: full 8-bit weights, no overflow fix ({why})"
            )
    else:
        details["overflow_fix_from"] = "recipe"
        fix = kinds.ENABLE if recipe.reduce_range else kinds.DISABLE
        alone = "the first layer 7-bit" if target.saturates else "no overflow fix"
        chosen = "7-bit weights in every layer" if recipe.reduce_range else "full 8-bit weights"
        note = (
            f"int8 scheme: NNCF overflow fix {fix.value} ({chosen}), set explicitly "
            f"(--reduce-range, the recipe or the target's [recipe] table), which wins over the "
            f"ISA; {target.describe()} alone gives {alone}"
        )
    details["note"] = note
    return fix, details


def quantize_int8(
    model: Any, recipe: Recipe, calibration: Sequence[Feeds], keep_float: Sequence[str] = ()
) -> tuple[Any, dict[str, Any]]:
    """``int8``: NNCF post-training quantization of weights and activations; ``keep_float``
    are op names left in float (resolved from the recipe's layer rules)."""
    nncf = load_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    if not calibration:
        raise DataError("int8 needs calibration samples: pass --calibration PATH")
    transformer = looks_like_transformer(model)
    preset = (
        nncf.QuantizationPreset.PERFORMANCE
        if recipe.activation_symmetric
        else nncf.QuantizationPreset.MIXED
    )
    fix, scheme = overflow_fix(OverflowFix, recipe)
    advanced = AdvancedQuantizationParameters(
        overflow_fix=fix,
        weights_quantization_params=QuantizationParameters(per_channel=recipe.per_channel),
        activations_range_estimator_params=_range_estimator(nncf, recipe),
    )
    quantized = nncf.quantize(
        model,
        nncf.Dataset(_Calibration(calibration)),
        preset=preset,
        subset_size=len(calibration),
        fast_bias_correction=True,
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        ignored_scope=_ignored_scope(nncf, keep_float),
        advanced_parameters=advanced,
    )
    details = {
        "quantizer": "nncf.quantize",
        "preset": preset.value,
        # 8-bit activations whose signedness NNCF takes from the data (u8 after a ReLU)
        "activations": "symmetric" if recipe.activation_symmetric else "asymmetric",
        "weights": "int8 symmetric " + ("per-channel" if recipe.per_channel else "per-tensor"),
        "model_type": "transformer" if transformer else "default",
        "fast_bias_correction": True,
        "overflow_fix": advanced.overflow_fix.value,
        "scheme": scheme,
        "calibration_method": recipe.calibration_method,
        "calibration_samples": len(calibration),
        "keep_float": list(keep_float),
    }
    return quantized, details


def compress_weights(
    model: Any, recipe: Recipe, keep_float: Sequence[str] = ()
) -> tuple[Any, dict[str, Any]]:
    """``int8-weights``/``int4-weights``: NNCF weight-only compression."""
    nncf = load_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedCompressionParameters,
        GroupSizeFallbackMode,
    )

    # --per-tensor is refused at plan time (openvino.CAPABILITIES).
    kwargs: dict[str, Any] = {}
    if recipe.precision == "int4-weights":
        kwargs = {
            "mode": nncf.CompressWeightsMode.INT4_SYM,
            "group_size": _INT4_GROUP,
            "ratio": 1.0,
            # Layers whose input width is not a multiple of 128 get the largest power-of-two
            # group that divides it instead of failing the whole export.
            "advanced_parameters": AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST
            ),
        }
    else:
        kwargs = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
    compressed = nncf.compress_weights(
        model, ignored_scope=_ignored_scope(nncf, keep_float), **kwargs
    )
    details = {
        "quantizer": "nncf.compress_weights",
        "mode": kwargs["mode"].value,
        "activations": "float (weight-only compression)",
        "model_type": "transformer" if looks_like_transformer(model) else "default",
        "keep_float": list(keep_float),
    }
    if recipe.precision == "int4-weights":
        details.update(
            group_size=_INT4_GROUP,
            ratio=1.0,
            note="embeddings and the last MatMul stay int8 (NNCF backup mode)",
        )
    return compressed, details
