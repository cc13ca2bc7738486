"""What to do to a model: precision, quantization scheme and calibration, as validated data.

A recipe is plain data (a frozen dataclass) checked once in :meth:`Recipe.validate`; every
error names the bad field. Backends read it and map it onto their native quantizer's options,
raising for anything they cannot honour rather than silently ignoring it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from edgekit.errors import UsageError
from edgekit.layers import Rule, parse_rules

PRECISIONS: tuple[str, ...] = (
    "fp32",
    "fp16",
    "int8",
    "int8-dynamic",
    "int16x8",
    "int8-weights",
    "int4-weights",
    # a QAT model's own learned quantization, exported without recalibrating
    "as-trained",
)
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
IO_DTYPES: tuple[str, ...] = ("float", "int8", "uint8")
# More samples than this is a typo, not a calibration set (and would be held in memory).
MAX_SAMPLES = 100_000
# Fields whose default None means "the backend decides" (see Recipe.reduce_range).
_TRI_STATE = frozenset({"reduce_range"})
# Fields whose default None means "not asked for" and that otherwise hold a number.
_OPTIONAL_NUMBER = frozenset({"max_accuracy_drop", "max_float_layers"})
# Precisions whose quantizer needs representative input data.
NEEDS_CALIBRATION: tuple[str, ...] = ("int8", "int16x8")


_QUANTIZED = ("int8", "int8-dynamic", "int16x8", "int8-weights", "int4-weights")
#: the precisions each recipe field has an effect at (fields not listed apply everywhere)
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "per_channel": _QUANTIZED,
    "activation_symmetric": ("int8",),
    "calibration_method": tuple(NEEDS_CALIBRATION),
    "percentile": tuple(NEEDS_CALIBRATION),
    "reduce_range": ("int8", "int8-dynamic", "int8-weights"),
    "isa": ("int8", "int8-dynamic"),
    "keep_float": ("fp16", *_QUANTIZED),
    "rules": ("fp16", *_QUANTIZED),
    "io_dtype": ("int8",),
    "max_accuracy_drop": _QUANTIZED,
    "max_float_layers": _QUANTIZED,
}
#: how the CLI spells a field, for messages
FLAG_NAMES: dict[str, str] = {
    "per_channel": "--per-tensor",
    "activation_symmetric": "--symmetric/--asymmetric",
    "calibration_method": "--calibration-method",
    "calibration_samples": "--calibration-samples",
    "percentile": "--percentile",
    "reduce_range": "--reduce-range",
    "keep_float": "--keep-float",
    "rules": "--rules",
    "io_dtype": "--io",
    "warn_cosine": "--warn-cosine",
    "warn_top1": "--warn-top1",
    "max_accuracy_drop": "--max-accuracy-drop",
    "max_float_layers": "--max-float-layers",
    "metric": "--metric",
}


@dataclass(frozen=True)
class Recipe:
    """How to compress a model. Defaults are the ones that are right on most CPUs."""

    precision: str = "fp32"
    #: per-output-channel weight scales (better accuracy on CNNs at almost no cost)
    per_channel: bool = True
    #: symmetric activations (int8, zero point 0) instead of asymmetric (uint8)
    activation_symmetric: bool = False
    calibration_method: str = "minmax"
    #: how many samples calibrate the quantizer
    calibration_samples: int = 100
    #: held-out samples used to compare the artifact with the FP32 source
    eval_samples: int = 100
    seed: int = 0
    #: quantize weights to 7 bits (for x86 CPUs without VNNI); None: let the backend choose
    #: from the deployment ISA (``isa``), so that a value set by a flag, a recipe file or a
    #: target's [recipe] table is always an explicit choice that wins over the ISA
    reduce_range: bool | None = None
    #: the CPU instruction-set level the artifact is for (edgekit.cpu.ISAS), from the target
    #: profile's ``isa``; "" means the CPU of the machine that exports
    isa: str = ""
    #: percentile for the percentile calibration method
    percentile: float = 99.999
    #: layer patterns kept in float (each a rule ``pattern -> float``, after ``rules``)
    keep_float: tuple[str, ...] = ()
    #: ordered layer rules ``pattern -> int8 | int16 | fp16 | float``, last match wins
    #: (:mod:`edgekit.layers`); layers no rule matches get ``precision``
    rules: tuple[Rule, ...] = ()
    #: dtype of the artifact's inputs/outputs for full-integer models (Edge TPU, MCUs)
    io_dtype: str = "float"
    #: warn when the artifact's mean output cosine with the FP32 source is below this
    warn_cosine: float = 0.99
    #: warn when its top-1 agreement (classifier-like outputs) is below this
    warn_top1: float = 0.98
    #: the accuracy gate: the most the held-out metric may drop against the FP32 source, in
    #: points of ``metric``; layers move to float until it holds (None: no gate)
    max_accuracy_drop: float | None = None
    #: the gate's metric (edgekit.metrics.METRICS), or "auto": chosen from the outputs
    metric: str = "auto"
    #: the most layers the gate may move to float (None: as many as it takes)
    max_float_layers: int | None = None

    def _check_types(self) -> None:
        """Values from a target or recipe TOML arrive untyped: ``per_channel = "no"`` must not
        count as true, nor ``calibration_samples = "many"`` crash a comparison later."""
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default
            if f.name in _TRI_STATE:
                ok = value is None or isinstance(value, bool)
                want = "true or false"
            elif f.name in _OPTIONAL_NUMBER:
                ok = value is None or (
                    isinstance(value, int | float) and not isinstance(value, bool)
                )
                want = "a number"
            elif isinstance(default, bool):
                ok = isinstance(value, bool)
                want = "true or false"
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
                want = "a whole number"
            elif isinstance(default, float):
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                want = "a number"
            elif isinstance(default, str):
                ok = isinstance(value, str)
                want = "a string"
            elif f.name == "rules":
                ok = isinstance(value, tuple) and all(isinstance(v, Rule) for v in value)
                want = "a list of {pattern, precision} tables"
            else:
                ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
                want = "a list of strings"
            if not ok:
                raise UsageError(f"recipe field '{f.name}' must be {want}, got {value!r}")

    def validate(
        self, supported: tuple[str, ...] | None = None, backend: str = "this backend"
    ) -> Recipe:
        self._check_types()
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}"
            )
        if supported is not None and self.precision not in supported:
            raise UsageError(
                f"precision '{self.precision}' is not supported by {backend}; it supports "
                f"{', '.join(supported)}"
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UsageError(
                f"unknown calibration method '{self.calibration_method}'; choose one of "
                f"{', '.join(CALIBRATION_METHODS)}"
            )
        if self.isa:
            from edgekit.cpu import check_isa

            check_isa(self.isa, "recipe field 'isa'")
        if self.io_dtype not in IO_DTYPES:
            raise UsageError(
                f"unknown --io '{self.io_dtype}'; choose one of {', '.join(IO_DTYPES)}"
            )
        if self.calibration_samples < 1:
            raise UsageError("--calibration-samples must be at least 1")
        if self.eval_samples < 0:
            raise UsageError("--eval-samples must be 0 or more")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"--seed must be from 0 to {2**32 - 1}, got {self.seed}")
        if self.calibration_samples > MAX_SAMPLES or self.eval_samples > MAX_SAMPLES:
            raise UsageError(f"--calibration-samples and --eval-samples are at most {MAX_SAMPLES}")
        for name in ("warn_cosine", "warn_top1"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                flag = FLAG_NAMES[name]
                raise UsageError(f"{flag} must be from 0 to 1, got {getattr(self, name)}")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError("--percentile must be in (50, 100], e.g. 99.99")
        parse_rules(list(self.effective_rules()))
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 100.0:
            raise UsageError(
                f"--max-accuracy-drop must be from 0 to 100 points, got {self.max_accuracy_drop}"
            )
        if self.max_float_layers is not None and (
            not isinstance(self.max_float_layers, int) or self.max_float_layers < 0
        ):
            raise UsageError(
                f"--max-float-layers must be a whole number of 0 or more, got "
                f"{self.max_float_layers}"
            )
        from edgekit.metrics import METRICS

        if self.metric != "auto" and self.metric not in METRICS:
            raise UsageError(
                f"unknown --metric '{self.metric}'; choose auto or one of {', '.join(METRICS)}"
            )
        return self

    def effective_rules(self) -> tuple[Rule, ...]:
        """``rules`` then one ``pattern -> float`` rule per ``keep_float`` entry: the flag
        comes last so that it wins over a rules file, as a command line should."""
        return (*self.rules, *(Rule(p, "float", "--keep-float") for p in self.keep_float))

    def unused(self, given: Iterable[str]) -> list[str]:
        """Warnings for fields the caller set that do nothing at this recipe's precision."""
        out = []
        for name in given:
            applies = APPLIES_TO.get(name)
            if applies is not None and self.precision not in applies:
                flag = FLAG_NAMES.get(name, name)
                out.append(
                    f"{flag} does nothing at precision {self.precision} (it applies to "
                    f"{', '.join(applies)}); it was ignored"
                )
        return out

    @property
    def needs_calibration(self) -> bool:
        return self.precision in NEEDS_CALIBRATION

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["keep_float"] = list(self.keep_float)
        out["rules"] = [r.to_json() for r in self.rules]
        return out

    def updated(self, **changes: Any) -> Recipe:
        """A copy with the non-None ``changes`` applied (unknown fields are a UsageError)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise UsageError(f"unknown recipe field(s) {bad}; known: {sorted(known)}")
        # TOML and JSON give lists where the recipe keeps tuples.
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        if clean.get("rules") is not None:
            clean["rules"] = parse_rules(list(clean["rules"]))
        return replace(self, **{k: v for k, v in clean.items() if v is not None})
