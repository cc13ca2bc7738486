"""`edgekit inspect MODEL --target T --layers | --sensitivity`: a model's layers as the target's
backend sees them, and how sensitive each one is to quantization on that runtime.

Both run the export pipeline's first stages (plan, load, prepare, convert: the conversion is
cached, so an export afterwards does not convert again) and stop before anything is written
into an output folder. Sensitivity is :func:`edgekit.accuracy.sensitivity` on held-out samples
split from ``data`` (the rest calibrates), against the FP32 source.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import convert_cache
from edgekit.calibration import ImageOptions
from edgekit.errors import UsageError, speaks_api
from edgekit.layers import Layer


@dataclass
class SensitivityReport:
    """Layers ranked most sensitive first, on one backend at one precision."""

    model: str
    target: str
    backend: str
    precision: str
    metric: str
    fp32_value: float
    against: str
    samples: int
    layers: list[Any]  # LayerSensitivity

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "backend": self.backend,
            "precision": self.precision,
            "metric": self.metric,
            "fp32_value": round(self.fp32_value, 4),
            "against": self.against,
            "samples": self.samples,
            "layers": [s.to_json() for s in self.layers],
        }


def _stages(
    model: Any,
    target: str,
    precision: str,
    input_shapes: Mapping[str, Sequence[int]] | None,
    example_inputs: Sequence[Any] | None,
    recipe_fields: Mapping[str, Any],
    scratch: Path,
) -> tuple[Any, Any, Any, Any]:
    from edgekit.model import load_model
    from edgekit.plan import plan_export

    plan = plan_export(model, target, [precision], scratch / "out", None, None, None, recipe_fields)
    source = load_model(model, input_shapes, example_inputs, plan.dynamic)
    return plan, source, plan.recipes[0], plan.backend


@speaks_api
def list_layers(
    model: Any,
    target: str = "onnxruntime",
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
) -> list[Layer]:
    """The quantizable layers of ``model`` on ``target``'s backend, named as layer rules and
    ``--keep-float`` match them (edgekit.layers)."""
    from edgekit.prepare import prepare

    scratch = Path(tempfile.mkdtemp(prefix="edgekit-layers-"))
    try:
        _, source, _, backend = _stages(
            model, target, "fp32", input_shapes, example_inputs, {}, scratch
        )
        # Prepared as the export prepares it, so that the names listed are the ones a rule meets
        # there (BatchNorm folded into its Conv keeps the Conv's name; unprepared, OpenVINO and
        # onnxslim name the fused op otherwise). The rewrites are exact: random inputs verify
        # them as well as real ones.
        from edgekit.calibration import load_samples

        source = prepare(source, load_samples("random", source.inputs, limit=2, seed=0))
        fp32, _ = convert_cache.converted(backend, source, scratch / "convert")
        return list(backend.layers(fp32, source))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@speaks_api
def sensitivity(
    model: Any,
    target: str = "onnxruntime",
    data: Any = None,
    *,
    precision: str = "int8",
    metric: str = "auto",
    eval_data: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    image_options: ImageOptions | None = None,
    **recipe_fields: Any,
) -> SensitivityReport:
    """Per-layer sensitivity of ``model`` at ``precision`` on ``target``'s runtime: each layer
    quantized alone, its metric drop (exact) and output SNR (proxy) against the FP32 source.
    ``data`` calibrates (and, without ``eval_data``, gives the held-out samples)."""
    from edgekit.accuracy import Evaluator
    from edgekit.accuracy import sensitivity as measure
    from edgekit.exporter import _data, _reference
    from edgekit.metrics import default_metric
    from edgekit.prepare import prepare

    if data is None:
        raise UsageError(
            "--sensitivity needs --data PATH (an image folder, .npy/.npz): samples to calibrate "
            "and measure on"
        )
    scratch = Path(tempfile.mkdtemp(prefix="edgekit-sensitivity-"))
    try:
        plan, source, recipe, backend = _stages(
            model, target, precision, input_shapes, example_inputs, recipe_fields, scratch
        )
        if recipe.precision not in ("int8", "int16x8", "int8-dynamic"):
            raise UsageError(
                f"--sensitivity measures a quantized precision (int8, int16x8, int8-dynamic), "
                f"not {recipe.precision}"
            )
        calib, held, described, labels = _data(source, [recipe], data, eval_data, image_options)
        if not held or "random" in described:
            raise UsageError(
                "--sensitivity needs held-out real samples: give more --data (a fifth is held "
                "out) or --eval-data"
            )
        reference = [_reference(source, f) for f in held]
        source = prepare(source, held)
        fp32, _ = convert_cache.converted(backend, source, scratch / "convert")
        chosen = default_metric(reference, labels) if metric == "auto" else metric
        ev = Evaluator(
            backend, fp32, source, recipe, calib, held, reference, labels, chosen, scratch / "t"
        )
        ranked = measure(ev)
        return SensitivityReport(
            model=str(model) if isinstance(model, str | Path) else type(model).__name__,
            target=plan.target.name,
            backend=backend.name,
            precision=recipe.precision,
            metric=chosen if isinstance(chosen, str) else getattr(chosen, "__name__", "custom"),
            fp32_value=ev.baseline,
            against="labels" if labels is not None else "the FP32 source's outputs",
            samples=len(held),
            layers=ranked,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
