"""Accuracy on the runtime that will ship: per-layer sensitivity and the accuracy gate.

Both work on one backend's converted FP32 model and its own quantizer, through layer rules
(:mod:`edgekit.layers`), so what they measure is what the artifact will compute:

* **sensitivity** of a layer is measured with *only that layer* quantized and every other layer
  in float: ``drop`` is the metric's loss against the FP32 source in points (exact, on every
  held-out sample); ``snr_db`` is the outputs' signal-to-noise ratio against the FP32 outputs
  (a proxy that needs no labels and only ``proxy_samples`` inputs). Layers rank by drop, then
  by SNR (lowest first), so that ties among layers too small to move the metric are still
  ordered by how much they perturb the outputs.
* the **gate** (``--max-accuracy-drop``) quantizes everything, and while the drop exceeds the
  budget moves the next most sensitive layer to float and quantizes again; it stops at the first
  rule set within budget (greedy: each step is measured, never assumed), or reports the best it
  reached when even every ranked layer in float is not enough.

The same held-out samples rank the layers and accept the result, so the drop the gate reports
is measured on data it chose with: hold out a separate evaluation set (``--eval-data``) from the
one the budget is finally checked on (``edgekit evaluate``) when that matters.

Ops a backend quantizes besides the listed layers (ORT's QDQ around an Add or a MaxPool, for
instance) stay quantized in a sensitivity trial; they add the same small offset to every layer's
figure and do not change the ranking.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UsageError
from edgekit.layers import Layer, Rule
from edgekit.model import Feeds, SourceModel
from edgekit.progress import progress, stage
from edgekit.recipe import Recipe

#: inputs the SNR proxy runs on (the exact drop uses every held-out sample)
PROXY_SAMPLES = 16


def snr_db(
    candidate: Sequence[Sequence[np.ndarray]], reference: Sequence[Sequence[np.ndarray]]
) -> float:
    """10·log10(signal power / error power) over every output of every sample; inf when the
    outputs are identical."""
    signal = noise = 0.0
    for cand, ref in zip(candidate, reference, strict=True):
        for c, r in zip(cand, ref, strict=True):
            r64 = np.asarray(r, np.float64)
            c64 = np.asarray(c, np.float64).reshape(r64.shape)
            signal += float(np.sum(r64 * r64))
            noise += float(np.sum((c64 - r64) ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class Trial:
    """One quantization at a set of layer rules, run on the held-out samples."""

    rules: tuple[Rule, ...]
    result: Any  # ExportOutput
    outputs: list[list[np.ndarray]]
    value: float
    drop: float
    folder: Path

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.result.files)


@dataclass
class Evaluator:
    """Quantize-and-measure on one backend: everything a trial needs besides its rules."""

    backend: Any
    converted: Any
    source: SourceModel
    recipe: Recipe
    calibration: Sequence[Feeds]
    held: Sequence[Feeds]
    reference: Sequence[Sequence[np.ndarray]]
    labels: np.ndarray | None
    metric: str | Callable[..., float]
    workdir: Path
    device: str | None = None
    #: file stem of the trials' artifacts (the export's, so the chosen one keeps its name)
    stem: str = "trial"
    baseline: float = field(init=False)
    _count: int = field(default=0, init=False)
    _layers: list[Layer] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        from edgekit.metrics import OUTPUT_METRICS, score

        if self.labels is not None and self.metric in OUTPUT_METRICS:
            labels = np.asarray(self.labels)
            if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
                self.labels = None  # as metrics.score does: say "against the outputs"

        self.baseline = score(self.metric, self.reference, self.reference, self.labels).value
        if not math.isfinite(self.baseline):
            # SNR of the FP32 outputs against themselves is infinite: no drop can be read.
            raise UsageError(
                f"--metric {self.metric} has no finite FP32 value to measure a drop from "
                "(compared with its own outputs); use cosine, or labelled --eval-data"
            )

    def layers(self) -> list[Layer]:
        """The backend's layers of the FP32 model (listed once: the gate and its steps ask
        again)."""
        if self._layers is None:
            self._layers = list(self.backend.layers(self.converted, self.source))
        return list(self._layers)

    def trial(
        self, rules: Sequence[Rule], samples: int | None = None, stem: str = "trial"
    ) -> Trial:
        from edgekit.metrics import score

        self._count += 1
        folder = self.workdir / f"trial-{self._count}"
        folder.mkdir(parents=True)
        recipe = self.recipe.updated(rules=list(rules), keep_float=[])
        result = self.backend.quantize(
            self.converted, self.source, recipe, self.calibration, folder, self.stem
        )
        session = self.backend.open_session(result.primary, device=self.device)
        held = self.held[:samples] if samples else self.held
        outputs = [session.run(f) for f in held]
        reference = self.reference[: len(held)]
        labels = None if self.labels is None else self.labels[: len(held)]
        baseline = (
            self.baseline
            if len(held) == len(self.held)
            else score(self.metric, reference, reference, labels).value
        )
        value = score(self.metric, outputs, reference, labels).value
        return Trial(tuple(rules), result, outputs, value, baseline - value, folder)

    def discard(self, trial: Trial) -> None:
        shutil.rmtree(trial.folder, ignore_errors=True)


@dataclass(frozen=True)
class LayerSensitivity:
    """A layer's effect when it alone is quantized."""

    name: str
    op: str
    #: metric drop in points against the FP32 source (exact)
    drop: float
    #: SNR of the outputs against the FP32 outputs, dB (proxy); None when not finite
    snr_db: float | None
    #: Layer.kind: "layer", or "op" for an elementwise op a backend quantizes on its own
    kind: str = "layer"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "kind": self.kind,
            "drop": round(self.drop, 4),
            "snr_db": None if self.snr_db is None else round(self.snr_db, 2),
        }


def _only(layer: Layer, layers: Sequence[Layer]) -> tuple[Rule, ...]:
    """Rules that leave ``layer`` at the recipe's own precision and every other layer float
    (by exact names: a rule for the layer itself could ask for a precision the recipe does not
    take, e.g. int8 inside int4-weights)."""
    others = [re.escape(o.name) for o in layers if o.name != layer.name]
    return (Rule("|".join(others), "float", "sensitivity"),) if others else ()


def sensitivity(ev: Evaluator, layers: Sequence[Layer] | None = None) -> list[LayerSensitivity]:
    """Every layer's sensitivity on ``ev``'s backend, most sensitive first."""
    layers = list(layers) if layers is not None else ev.layers()
    found = []
    for layer in progress(layers, desc=f"sensitivity on {ev.backend.name}"):
        trial = ev.trial((*ev.recipe.effective_rules(), *_only(layer, layers)))
        snr = snr_db(trial.outputs[:PROXY_SAMPLES], ev.reference[:PROXY_SAMPLES])
        found.append(
            LayerSensitivity(
                layer.name,
                layer.op,
                trial.drop,
                snr if math.isfinite(snr) else None,
                layer.kind,
            )
        )
        ev.discard(trial)
    return rank(found)


def rank(found: Sequence[LayerSensitivity]) -> list[LayerSensitivity]:
    """Most sensitive first: larger drop, then lower SNR (an untouched output ranks last)."""

    def key(s: LayerSensitivity) -> tuple[float, float]:
        return (-round(s.drop, 6), s.snr_db if s.snr_db is not None else math.inf)

    return sorted(found, key=key)


@dataclass
class GateResult:
    """What the gate chose: the float layers, every step it measured, the final trial."""

    budget: float
    metric: str
    baseline: float
    float_layers: list[str]
    steps: list[dict[str, Any]]
    met: bool
    final: Trial
    full_int8_size: int
    sensitivity: list[LayerSensitivity]
    #: how many layers the model has on this backend
    layers: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_points": self.budget,
            "metric": self.metric,
            "fp32_value": round(self.baseline, 4),
            "met": self.met,
            "float_layers": self.float_layers,
            "layers": self.layers,
            "steps": self.steps,
            "size_bytes": self.final.size_bytes,
            "full_quantized_size_bytes": self.full_int8_size,
            "sensitivity": [s.to_json() for s in self.sensitivity],
        }


def gate(ev: Evaluator, budget: float, max_float: int | None = None) -> GateResult:
    """Quantize, then move the most sensitive layers to float one at a time until the metric
    drop is within ``budget`` points (see the module docstring)."""
    base_rules = ev.recipe.effective_rules()
    metric_name = (
        ev.metric if isinstance(ev.metric, str) else getattr(ev.metric, "__name__", "custom")
    )
    stage(f"accuracy gate: {ev.recipe.precision} within {budget} points of {metric_name}")
    full = ev.trial(base_rules)
    steps = [{"float_layers": 0, "value": round(full.value, 4), "drop": round(full.drop, 4)}]
    ranked: list[LayerSensitivity] = []
    best, chosen = full, []
    layers = ev.layers()
    if full.drop > budget and max_float != 0:
        ranked = sensitivity(ev, layers)
        limit = len(ranked) if max_float is None else min(max_float, len(ranked))
        floats: list[str] = []
        for s in ranked[:limit]:
            floats.append(s.name)
            rules = (*base_rules, *(Rule(re.escape(n), "float", "accuracy gate") for n in floats))
            trial = ev.trial(rules)
            steps.append(
                {
                    "float_layers": len(floats),
                    "added": s.name,
                    "value": round(trial.value, 4),
                    "drop": round(trial.drop, 4),
                }
            )
            if trial.drop < best.drop:
                if best is not full:
                    ev.discard(best)
                best, chosen = trial, list(floats)
            else:
                ev.discard(trial)
            if best.drop <= budget:
                break
    return GateResult(
        budget=budget,
        metric=metric_name,
        baseline=ev.baseline,
        float_layers=chosen,
        steps=steps,
        met=best.drop <= budget,
        final=best,
        full_int8_size=full.size_bytes,
        sensitivity=ranked,
        layers=len(layers),
    )


def speed_step(
    ev: Evaluator, result: GateResult, timer: Callable[[Path], Any]
) -> dict[str, Any] | None:
    """After the gate met its budget: when the chosen artifact is slower than FP32, try it with
    every *unweighted* layer and op in float too (products of two activations, elementwise ops:
    quantizing them saves no weight bytes) and take that when it is within budget and faster.
    Why: an int8 model's slowness is often in exactly those ops, whose integer kernels a runtime
    lacks or runs outside its fast path (LiteRT runs int8 BATCH_MATMUL, SOFTMAX and MEAN outside
    XNNPACK: a ViT-Tiny-wide model ran 2.9x FP32's latency at int8 and 0.45x with them float).

    ``timer(artifact)`` times an artifact against FP32 on the checking device (a SpeedCheck:
    ``ratio``, ``slower``). Each step is measured, never assumed; ``result`` is updated in place
    when the step is taken. None when there is nothing to try or the artifact is not slower."""
    floats = [r.pattern for r in result.final.rules if r.precision == "float"]
    extra = [
        layer.name
        for layer in ev.layers()
        if not layer.weighted and not any(re.fullmatch(p, layer.name) for p in floats)
    ]
    if not extra:
        return None
    stage(f"timing the gate's {ev.recipe.precision} against fp32 (1 thread, interleaved)")
    before = timer(result.final.result.primary)
    if not before.slower or before.ratio is None:
        return None
    stage(f"speed step: {len(extra)} unweighted layers and ops in float")
    rules = (*result.final.rules, *(Rule(re.escape(n), "float", "accuracy gate") for n in extra))
    trial = ev.trial(rules)
    step: dict[str, Any] = {
        "float_layers": extra,
        "drop": round(trial.drop, 4),
        "ratio_before": round(before.ratio, 3),
        "ratio_after": None,
        "taken": False,
    }
    if trial.drop <= result.budget:
        after = timer(trial.result.primary)
        if after.ratio is not None:
            step["ratio_after"] = round(after.ratio, 3)
            if after.ratio < before.ratio:
                ev.discard(result.final)
                result.final = trial
                result.float_layers = [*result.float_layers, *extra]
                step["taken"] = True
                return step
    ev.discard(trial)
    return step


def spearman(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Spearman rank correlation of two rankings over the names they share (None under 3)."""
    shared = [n for n in a if n in set(b)]
    if len(shared) < 3:
        return None
    ra = {n: i for i, n in enumerate(n for n in a if n in shared)}
    rb = {n: i for i, n in enumerate(n for n in b if n in shared)}
    n = len(shared)
    d2 = sum((ra[x] - rb[x]) ** 2 for x in shared)
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))
