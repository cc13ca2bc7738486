"""Compress passes as data: one frozen dataclass per pass, validated once, recorded in the sidecar.

A pass list such as ``[Prune(0.5), LowRank("tucker", energy=0.9), FineTune(epochs=2)]`` means
the same on PyTorch and Keras; each framework module (``torch_*.py`` / ``keras_*.py`` in this
package) implements it. Field names are the sidecar's keys, so renaming one is a schema change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dc_fields
from typing import Any, Literal

from edgekit.errors import UsageError

CRITERIA = ("magnitude", "gradient", "taylor", "importance")
LOW_RANK = ("svd", "tucker", "cp")
FINETUNE = ("labels", "distill", "callback")
DISTILL = ("offline", "online", "self", "data-free")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


@dataclass(frozen=True)
class Prune:
    """Remove a fraction of channels (structured) or zero a fraction of weights (unstructured).

    ``ratio`` is the fraction removed: of output channels / neurons / heads when structured,
    of weights when unstructured. ``scope`` "global" ranks every prunable layer together,
    "layer" prunes each layer by ``ratio`` (or by ``per_layer[name]`` where given).
    ``ignore`` holds layer-name regexes left alone (the classifier is always left alone: its
    outputs are the model's). ``round_to`` rounds kept channel counts up to a multiple the
    target's kernels like. ``n_m`` = (2, 4) keeps 2 of every 4 weights (unstructured only).
    """

    ratio: float
    structured: bool = True
    criterion: Literal["magnitude", "gradient", "taylor", "importance"] = "magnitude"
    norm: int = 1
    scope: Literal["global", "layer"] = "layer"
    per_layer: Mapping[str, float] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    round_to: int = 8
    n_m: tuple[int, int] | None = None
    kind: Literal["prune"] = "prune"

    def __post_init__(self) -> None:
        _check(0.0 < self.ratio < 1.0, f"prune ratio {self.ratio} must be between 0 and 1")
        _check(self.criterion in CRITERIA, f"criterion {self.criterion!r}: one of {CRITERIA}")
        _check(self.norm in (1, 2), f"norm {self.norm}: 1 (L1) or 2 (L2)")
        _check(self.scope in ("global", "layer"), f"scope {self.scope!r}: global or layer")
        _check(self.round_to >= 1, f"round_to {self.round_to} must be at least 1")
        for name, r in self.per_layer.items():
            _check(0.0 <= r < 1.0, f"per-layer ratio {r} for {name!r} must be in [0, 1)")
        if self.n_m is not None:
            n, m = self.n_m
            _check(not self.structured, "N:M sparsity is unstructured: add --unstructured")
            _check(0 < n < m, f"N:M {n}:{m} needs 0 < N < M")


@dataclass(frozen=True)
class LowRank:
    """Factor layers into low-rank products.

    ``method`` "svd": Linear/Dense and 1x1 convs into two layers; "tucker": a kxk conv into
    1x1 -> kxk -> 1x1 (Tucker-2); "cp": a kxk conv into 1x1 -> kx1 -> 1xk -> 1x1, fitted with
    ``cp_l2_reg`` (without it tensorly's CP can return NaN). The rank comes from exactly one
    of: ``energy`` (smallest rank keeping that fraction of the squared singular values),
    ``rank`` (one rank for every layer), ``param_budget`` (fraction of each layer's parameters
    kept), or ``per_layer`` (name -> rank). A layer is only replaced when that makes it smaller.
    """

    method: Literal["svd", "tucker", "cp"]
    energy: float | None = None
    rank: int | None = None
    param_budget: float | None = None
    per_layer: Mapping[str, int] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    cp_l2_reg: float = 1e-3
    kind: Literal["lowrank"] = "lowrank"

    def __post_init__(self) -> None:
        _check(self.method in LOW_RANK, f"low-rank method {self.method!r}: one of {LOW_RANK}")
        chosen = [k for k in ("energy", "rank", "param_budget") if getattr(self, k) is not None] + (
            ["per_layer"] if self.per_layer else []
        )
        if not chosen:
            object.__setattr__(self, "energy", 0.9)
        _check(len(chosen) <= 1, f"choose one rank rule, not {' and '.join(chosen)}")
        if self.energy is not None:
            _check(0.0 < self.energy <= 1.0, f"rank energy {self.energy} must be in (0, 1]")
        if self.rank is not None:
            _check(self.rank >= 1, f"rank {self.rank} must be at least 1")
        if self.param_budget is not None:
            _check(0.0 < self.param_budget < 1.0, "param_budget must be between 0 and 1")
        _check(self.cp_l2_reg >= 0.0, "cp_l2_reg must not be negative")


@dataclass(frozen=True)
class FineTune:
    """Recover accuracy after a pass.

    ``mode`` "labels": cross-entropy on labelled data; "distill": match the uncompressed
    model's outputs on unlabelled data (no labels needed); "callback": ``callback(model,
    data) -> model``. Stops early once the metric is within ``tolerance`` of the original's.
    """

    epochs: int = 2
    mode: Literal["labels", "distill", "callback"] = "distill"
    lr: float = 1e-3
    batch_size: int = 64
    tolerance: float = 0.005
    temperature: float = 2.0
    callback: Callable[[Any, Any], Any] | None = field(default=None, compare=False)
    kind: Literal["finetune"] = "finetune"

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"finetune epochs {self.epochs} must be at least 1")
        _check(self.mode in FINETUNE, f"finetune mode {self.mode!r}: one of {FINETUNE}")
        _check(self.lr > 0 and self.batch_size >= 1, "finetune lr and batch_size must be > 0")
        _check(
            (self.callback is not None) == (self.mode == "callback"),
            "finetune mode 'callback' needs callback=, and only it takes one",
        )


@dataclass(frozen=True)
class Distill:
    """Knowledge distillation: ``alpha*CE(s, y) + (1-alpha)*T^2*KL(softmax(t/T) || softmax(s/T))``.

    ``teacher`` is a model or a path (None: the model handed to compress, before any pass);
    ``alpha`` weighs the hard (label) loss, None meaning 0.5 with labels and 0 without.
    ``mode`` "offline": frozen teacher; "online": the teacher trains too (on labels, else on
    the student's outputs: mutual learning); "self": a frozen copy of the model as this pass
    receives it teaches the model (born-again style; needs labels); "data-free": ``synthetic``
    inputs optimized so the teacher's BatchNorm batch statistics match its running ones
    (DeepInversion), then offline distillation on them. ``features`` "auto" also matches the
    inputs of the last linear layers through a learned projection.
    """

    teacher: Any = field(default=None, compare=False)
    alpha: float | None = None
    temperature: float = 4.0
    mode: Literal["offline", "online", "self", "data-free"] = "offline"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    features: str | None = None
    feature_weight: float = 1.0
    synthetic: int = 512
    synthetic_steps: int = 200
    kind: Literal["distill"] = "distill"

    def __post_init__(self) -> None:
        _check(self.mode in DISTILL, f"distill mode {self.mode!r}: one of {DISTILL}")
        if self.alpha is not None:
            _check(0.0 <= self.alpha <= 1.0, f"alpha {self.alpha} must be between 0 and 1")
        _check(self.temperature > 0, f"temperature {self.temperature} must be above 0")
        _check(self.epochs >= 1, f"distill epochs {self.epochs} must be at least 1")
        _check(self.lr > 0 and self.batch_size >= 2, "distill lr must be > 0, batch_size >= 2")
        _check(self.features in (None, "auto"), "distill features: 'auto' or None")
        _check(self.synthetic >= 2 and self.synthetic_steps >= 1, "synthetic counts must be >= 2")
        _check(
            not (self.mode == "self" and self.teacher is not None),
            "self-distillation takes no teacher: the model teaches itself",
        )


QAT_MODES = ("labels", "distill")


@dataclass(frozen=True)
class QAT:
    """Quantization-aware training: fake-quantize weights (int8 symmetric, per output channel
    when ``per_channel``) and activations (int8 asymmetric, per tensor) the way the backends'
    integer kernels compute, then train ``epochs`` on the data (``mode`` "labels":
    cross-entropy; "distill": match the float model). The result keeps its learned scales;
    ``edgekit export --precision as-trained`` exports them without recalibrating.
    """

    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 64
    mode: Literal["labels", "distill"] = "labels"
    per_channel: bool = True
    temperature: float = 2.0
    #: 7-bit weights ([-63, 63]) so x86 int8 kernels without VNNI cannot saturate; None: as the
    #: deployment CPU needs (edgekit.cpu: this machine's, or EDGEKIT_CPU_ISA)
    reduce_range: bool | None = None
    kind: Literal["qat"] = "qat"

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"qat epochs {self.epochs} must be at least 1")
        _check(self.mode in QAT_MODES, f"qat mode {self.mode!r}: one of {QAT_MODES}")
        _check(self.lr > 0 and self.batch_size >= 2, "qat lr must be > 0 and batch_size >= 2")


def qat_weight_range(p: QAT) -> tuple[bool, str]:
    """Whether QAT trains 7-bit weights, and the note that says why: the pass's own
    ``reduce_range``, else the deployment CPU's (an x86 without VNNI saturates 8-bit u8 x s8
    products in int16 -- ONNX Runtime's kernels there, and QAT's scales would then not be what
    the artifact computes). Both frameworks' QAT passes ask this."""
    if p.reduce_range is not None:
        bits = "7-bit [-63, 63]" if p.reduce_range else "8-bit [-127, 127]"
        return p.reduce_range, f"{bits} weights (set by the pass)"
    from edgekit.cpu import deployment_isa

    isa = deployment_isa()
    if isa.saturates:
        return True, (
            f"7-bit [-63, 63] weights for {isa.describe()}: its u8 x s8 kernels add pairs of "
            "products in int16, which 8-bit weights can saturate (pass reduce_range=False, or "
            "set EDGEKIT_CPU_ISA, for a device with VNNI or ARM)"
        )
    return False, f"8-bit [-127, 127] weights for {isa.describe()}"


Pass = Prune | LowRank | FineTune | Distill | QAT
PASSES: dict[str, type] = {
    "prune": Prune,
    "lowrank": LowRank,
    "finetune": FineTune,
    "distill": Distill,
    "qat": QAT,
}


def to_dict(p: Pass) -> dict[str, Any]:
    """The sidecar form of a pass (a callback is recorded by name only)."""
    if isinstance(p, Distill):  # asdict would deep-copy an in-memory teacher model
        return {f.name: getattr(p, f.name) for f in dc_fields(p)} | {
            "teacher": teacher_name(p.teacher)
        }
    out = asdict(p)
    if isinstance(p, FineTune):
        out["callback"] = getattr(p.callback, "__qualname__", None) if p.callback else None
    return out


def teacher_name(teacher: Any) -> str | None:
    """A teacher as the sidecar records it: its path, or ``<in-memory NAME>``."""
    if teacher is None or isinstance(teacher, str):
        return teacher
    if hasattr(teacher, "__fspath__"):
        return str(teacher)
    return f"<in-memory {getattr(teacher, 'name', None) or type(teacher).__name__}>"


def from_dict(d: Mapping[str, Any]) -> Pass:
    """Inverse of :func:`to_dict` (a recorded callback cannot be restored: refused)."""
    kind = d.get("kind")
    _check(kind in PASSES, f"unknown pass kind {kind!r}: one of {sorted(PASSES)}")
    fields = {k: v for k, v in d.items() if k != "kind"}
    if kind == "finetune" and fields.get("callback"):
        raise UsageError("a fine-tune callback cannot be replayed from a sidecar; pass it again")
    fields.pop("callback", None)
    if kind == "distill" and str(fields.get("teacher") or "").startswith("<in-memory"):
        raise UsageError("an in-memory teacher cannot be replayed from a sidecar; pass it again")
    if "ignore" in fields:
        fields["ignore"] = tuple(fields["ignore"])
    if fields.get("n_m") is not None:
        fields["n_m"] = tuple(fields["n_m"])
    return PASSES[kind](**fields)


@dataclass
class PassReport:
    """What one pass did, measured: the sidecar and ``edgekit compress --json`` print these.

    Sizes are bytes of the saved source model; ``zip_*`` are its deflate-compressed size
    (where unstructured zeros show). ``metric`` is top-1 accuracy with labels, else top-1
    agreement with the uncompressed model, on the evaluation data (None without data).
    ``layers`` holds one dict per changed layer (name, before, after shapes/ranks).
    """

    kind: str
    config: dict[str, Any]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    size_before: int
    size_after: int
    zip_before: int
    zip_after: int
    metric_name: str | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    seconds: float = 0.0
    layers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CompressData:
    """The arrays a pass may use, already read and shaped for the model (first axis = samples).

    ``train`` feeds the criteria (gradient/Taylor/importance), CP/Tucker checks and fine-tuning;
    ``eval`` is held out and only measured. ``original`` is the uncompressed model: the teacher
    of distill-mode fine-tuning and the reference of the agreement metric. ``example`` is one
    feed at the model's traced shapes (PyTorch traces the graph with it: torch-pruning's
    dependency graph, the re-export).
    """

    train: dict[str, Any] | None = None
    train_labels: Any = None
    eval: dict[str, Any] | None = None
    eval_labels: Any = None
    original: Any = None
    example: dict[str, Any] | None = None
