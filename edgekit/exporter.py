"""The export arrow: source model -> backend artifact + sidecar JSON + agreement summary.

Everything is written into a hidden temporary folder inside the output folder and moved into
place only when the artifact has loaded and run, so a failed or interrupted export leaves no
half-written artifact behind.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import __version__, convert_cache
from edgekit.agreement import Agreement, compare
from edgekit.artifact import SIDECAR_SCHEMA_VERSION, check_sidecar, sidecar_path
from edgekit.backends.base import Capabilities, Converted, ExportOutput, is_remote
from edgekit.calibration import ImageOptions, load_samples, split_samples
from edgekit.commit import commit, make_workdir, output_folder, remove_stale
from edgekit.errors import (
    AccuracyGateError,
    DataError,
    EdgekitError,
    ModelFormatError,
    UsageError,
    first_line,
    speaks_api,
)
from edgekit.model import Feeds, SourceModel, file_digest, load_model
from edgekit.plan import ExportPlan, plan_export
from edgekit.prepare import prepare
from edgekit.progress import progress, stage
from edgekit.recipe import APPLIES_TO, Recipe

if TYPE_CHECKING:  # numpy-only modules, imported where they run
    from edgekit.accuracy import Evaluator
    from edgekit.speed_check import SpeedCheck

# Frameworks whose versions go into the sidecar when they took part in an export.
_TOOL_PACKAGES = {
    "torch": "torch",
    "tensorflow": "tensorflow-cpu",
    "keras": "keras",
    "tf2onnx": "tf2onnx",
    "onnxconverter_common": "onnxconverter-common",
    "onnxscript": "onnxscript",
    "numpy": "numpy",
    "torch_pruning": "torch-pruning",
    "tensorly": "tensorly",
    "torchao": "torchao",
}


@dataclass
class ExportReport:
    """What an export produced and how closely it follows the FP32 source."""

    artifact: Path
    sidecar: Path
    target: str
    backend: str
    recipe: Recipe
    size_bytes: int
    source_size_bytes: int
    agreement: Agreement
    eval_inputs: str
    seconds: float
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: what the accuracy gate did (--max-accuracy-drop), else None
    gate: dict[str, Any] | None = None
    #: --precision auto: every candidate measured, the chosen one marked
    choices: list[dict[str, Any]] | None = None

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.source_size_bytes if self.source_size_bytes else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact": str(self.artifact),
            "sidecar": str(self.sidecar),
            "target": self.target,
            "backend": self.backend,
            "precision": self.recipe.precision,
            "size_bytes": self.size_bytes,
            "source_size_bytes": self.source_size_bytes,
            "size_ratio": round(self.size_ratio, 4),
            "agreement": self.agreement.to_json(),
            "eval_inputs": self.eval_inputs,
            "seconds": round(self.seconds, 2),
            "warnings": self.warnings,
            "notes": self.notes,
            "gate": self.gate,
            "choices": self.choices,
        }


def tool_versions() -> dict[str, str]:
    """Versions of the tools this process has loaded (those that made an artifact)."""
    found = {}
    for module, dist in _TOOL_PACKAGES.items():
        if module in sys.modules:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def _data(
    source: SourceModel,
    recipes: Sequence[Recipe],
    calibration: Any,
    eval_data: Any,
    image_options: ImageOptions | None,
) -> tuple[list[Feeds], list[Feeds], str, Any]:
    """Calibration samples and disjoint held-out evaluation samples (with their labels when
    the evaluation data has them), validated up front. The recipes of one export differ in
    precision only, so the first one's counts serve all."""
    from edgekit.labels import load_labelled

    recipe = recipes[0]
    calib: list[Feeds] = []
    held: list[Feeds] = []
    labels = None
    if calibration is not None:
        wanted = recipe.calibration_samples + (0 if eval_data is not None else recipe.eval_samples)
        samples = load_samples(
            calibration, source.inputs, image_options=image_options, limit=wanted, seed=recipe.seed
        )
        n_calib = recipe.calibration_samples
        n_eval = 0 if eval_data is not None else recipe.eval_samples
        if n_eval and 1 < len(samples) < n_calib + n_eval:
            # Too little data for both: keep at least a fifth for the agreement check, so that
            # it runs on real inputs rather than random ones.
            n_eval = min(n_eval, max(len(samples) - n_calib, len(samples) // 5, 1))
            n_calib = min(n_calib, len(samples) - n_eval)
        calib, held = split_samples(samples, n_calib, n_eval, seed=recipe.seed)
    elif any(r.needs_calibration for r in recipes):
        needs = next(r for r in recipes if r.needs_calibration)
        raise DataError(
            f"precision {needs.precision} needs calibration data: pass --calibration PATH "
            "(image folder, .npy or .npz) or --calibration random for a smoke test only"
        )
    described = "held-out calibration samples"
    if eval_data is not None:
        held, labels = load_labelled(
            eval_data,
            source.inputs,
            image_options=image_options,
            limit=recipe.eval_samples,
            seed=recipe.seed,
        )
        described = "labelled evaluation samples" if labels is not None else "evaluation samples"
    if not held and recipe.eval_samples:
        held = load_samples(
            "random", source.inputs, limit=min(recipe.eval_samples, 16), seed=recipe.seed + 1
        )
        described = "random inputs (pass --eval-data or more calibration data for real ones)"
    if isinstance(calibration, str) and calibration == "random":
        described = "random inputs"
    return calib, held, described, labels


def _reference(source: SourceModel, feeds: Feeds, random: bool = False) -> list[Any]:
    """Run the FP32 source; a model that cannot run there cannot be checked, so say so."""
    try:
        return source.run(feeds)
    except EdgekitError:
        raise
    except Exception as exc:
        first = re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc))
        if random:
            # Control flow, lookups and masks can fail on values no real input has: the
            # model is not at fault then, the probe is.
            raise DataError(
                f"the {source.format} source model does not run on random inputs ({first}); "
                "pass real inputs it accepts with --eval-data (and --calibration)"
            ) from exc
        raise ModelFormatError(
            f"the {source.format} source model does not run on its own inputs: {first}; fix "
            "or re-export the source model"
        ) from exc


def _atomic_json(path: Path, payload: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, default=str, allow_nan=False)
        fh.write("\n")
    # mkstemp creates 0600; a sidecar is as public as the artifact next to it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@speaks_api
def export(
    model: Any,
    target: str = "onnxruntime",
    precision: str | Sequence[str] | None = None,
    *,
    output_dir: str | Path = "edgekit-out",
    calibration: Any = None,
    eval_data: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    image_options: ImageOptions | None = None,
    name: str | None = None,
    device: str | None = None,
    recipe: Recipe | None = None,
    force: bool = False,
    dynamic: Sequence[str] | None = None,
    **recipe_fields: Any,
) -> ExportReport | list[ExportReport]:
    """Export ``model`` for ``target`` at ``precision`` and compare it with the FP32 source.

    ``model`` is a path (.onnx, .pt2, .keras, .h5, SavedModel dir) or an in-memory
    ``torch.nn.Module`` (with ``example_inputs``), ``keras.Model`` or ``onnx.ModelProto``.
    ``precision`` may be a list (``["fp32", "fp16", "int8"]``): the source is then loaded and
    converted once and one report per precision is returned, in order. ``recipe`` is a
    :class:`~edgekit.recipe.Recipe` to start from (instead of the target's defaults); extra
    keyword arguments are Recipe fields applied on top.
    ``calibration``/``eval_data`` are an image folder, a .npy/.npz path, an iterable of feed
    dicts, or ``"random"``. ``device`` is where the exported artifact is checked (a local
    accelerator such as OpenVINO's ``GPU``; default: the target's). ``force`` replaces an
    artifact of the same name that another target exported. ``dynamic`` names ONNX inputs
    whose dynamic dimensions the artifact keeps (ONNX Runtime, OpenVINO); calibration and the
    checks run at the shapes ``input_shapes`` gives (a lone batch dimension defaults to 1).
    """
    started = time.perf_counter()
    many = not isinstance(precision, str | None)
    precisions = list(precision) if many else [precision]  # type: ignore[arg-type]
    if not precisions:
        raise UsageError("precision: give at least one")
    if isinstance(dynamic, str):
        dynamic = [dynamic]
    auto = "auto" in precisions
    if auto:
        if len(precisions) > 1:
            raise UsageError("--precision auto chooses one precision; give it alone")
        precisions = []
        for candidate in auto_candidates(target, calibration is not None):
            try:  # a candidate the recipe's rules cannot go with is left out, not fatal
                plan_export(
                    model,
                    target,
                    [candidate],
                    output_dir,
                    name,
                    device,
                    recipe,
                    recipe_fields,
                    True,
                    dynamic=tuple(dynamic or ()),
                )
            except UsageError:
                if candidate == "fp32":
                    raise
                continue
            precisions.append(candidate)
    plan = plan_export(
        model,
        target,
        precisions,
        output_dir,
        name,
        device,
        recipe,
        recipe_fields,
        force,
        dynamic=tuple(dynamic or ()),
    )
    stage(f"loading {model if isinstance(model, str | Path) else type(model).__name__}")
    source = load_model(model, input_shapes, example_inputs, plan.dynamic)
    calib, held, eval_desc, labels = _data(
        source, plan.recipes, calibration, eval_data, image_options
    )
    random_eval = "random" in eval_desc
    # The FP32 reference runs before any conversion work, so a source that cannot run fails
    # first; without held-out samples one calibration sample stands in for that check.
    reference = [_reference(source, f, random_eval) for f in progress(held, desc="reference")]
    for feeds in [] if held else calib[:1]:
        _reference(source, feeds, random_eval)
    # Prepared after the reference: source.run stays the original model, every step is checked
    # against it on the same feeds.
    source = prepare(source, held or calib[:1])
    out_dir = plan.output_dir
    try:
        with output_folder(out_dir):
            remove_stale(out_dir)
            workdir = make_workdir(out_dir)
            try:
                stage(f"preparing the {source.format} model for {plan.backend.name}")
                fp32, how = convert_cache.converted(plan.backend, source, workdir / "convert")
                if how != "converted":
                    stage(convert_cache.describe_hit(how))
                data = _Data(calib, held, reference, labels, eval_desc)
                if auto:
                    reports = [_auto(plan, source, fp32, how, data, workdir)]
                else:
                    reports = []
                    for i, (recipe, ignored) in enumerate(
                        zip(plan.recipes, plan.ignored, strict=True)
                    ):
                        checked = _quantize_and_check(plan, recipe, source, fp32, data, workdir)
                        reports.append(
                            _commit(
                                plan,
                                checked.recipe,
                                source,
                                fp32,
                                how if i == 0 else "export",
                                checked,
                                eval_desc,
                                ignored,
                            )
                        )
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    except OSError as exc:
        # What the output folder refuses (read-only, /proc, full disk) is the user's to fix.
        raise UsageError(
            f"cannot write into the output folder {out_dir} ({exc.strerror or exc}); choose "
            "another with -o"
        ) from exc
    seconds = time.perf_counter() - started
    for report in reports:
        report.seconds = seconds / len(reports)
    return reports if many else reports[0]


def _honesty(
    recipe: Recipe,
    agreement: Agreement,
    size: int,
    source_size: int,
    eval_desc: str,
    backend: str,
    numerics: Any = None,
    capabilities: Capabilities | None = None,
) -> list[str]:
    """Say so when an artifact does not look like the model it came from, or is no smaller:
    a broken fp16 or int8 must not pass as a good one because its summary was not read.
    ``numerics`` (the plan's :class:`~edgekit.intake.compression.Numerics` of the source, or
    None) says why an artifact is larger than an already-compressed source."""
    out = []
    on = f"on {agreement.samples} {eval_desc}"
    cosine, top1 = agreement.mean_cosine, agreement.top1_agreement
    # A histogram method beats minmax where an outlier stretches a range (measured on the
    # real-model set); more minmax samples can make it worse. Only where the backend has one.
    entropy_ok = (
        recipe.needs_calibration
        and recipe.calibration_method == "minmax"
        and capabilities is not None
        and not capabilities.refusals(recipe.updated(calibration_method="entropy"))
    )
    calibration_hint = "--calibration-method entropy, " if entropy_ok else ""
    if cosine is not None and cosine < recipe.warn_cosine:
        out.append(
            f"outputs agree with the FP32 source at mean cosine {cosine:.4f} {on}, below "
            f"{recipe.warn_cosine}: check the artifact on real data before shipping it; try "
            f"--keep-float for the first/last layers, {calibration_hint}or a higher precision"
        )
    if top1 is not None and top1 < recipe.warn_top1:
        out.append(
            f"top-1 agreement with the FP32 source is {top1:.2%} {on}, below {recipe.warn_top1:.0%}"
        )
    larger = bool(source_size) and size > 1.05 * source_size
    ratio = f"{size / source_size:.2f}x" if source_size else ""
    compact = numerics is not None and (numerics.quantized or numerics.fp16)
    if larger and compact:
        # What grew is not known here (a small model's IR text can outweigh its weights), so
        # the source's own storage is stated and the cause left as the two it can be.
        fix = (
            "; deploy the source as it is where its quantized ops run, or quantize the float "
            "model it was made from"
            if numerics.quantized
            else "; --precision fp16 stores fp16 weights"
            if recipe.precision == "fp32"
            else ""
        )
        out.append(
            f"the {recipe.precision} artifact is {ratio} the size of its source: the source is "
            f"{numerics.describe()} (see edgekit inspect), and {backend} stores it less "
            f"compactly (weights widened to float, or its format's overhead on a small "
            f"model){fix}"
        )
    elif larger:
        out.append(
            f"the {recipe.precision} artifact is {ratio} the size of its source: the source "
            f"stores its weights more compactly (already quantized or fp16 weights: see "
            f"edgekit inspect) or {backend} could not quantize them"
        )
    elif numerics is not None and numerics.fp16 and recipe.precision == "fp32":
        out.append(
            f"the source stores fp16 weights ({numerics.evidence}): this fp32 artifact keeps "
            "their fp16-rounded values, it is no more exact than the source"
        )
    return out


@dataclass
class _Data:
    """The samples of one export: calibration, held-out inputs with the FP32 source's outputs
    on them, and the held-out labels when the evaluation data has them."""

    calib: list[Feeds]
    held: list[Feeds]
    reference: list[list[Any]]
    labels: Any
    described: str


@dataclass
class _Checked:
    """An artifact in the staging folder that has loaded and run, with its agreement."""

    result: ExportOutput
    session: Any
    agreement: Agreement
    folder: Path
    #: the recipe the artifact was made with (the gate adds its float layers as rules)
    recipe: Recipe
    outputs: list[list[Any]]
    gate: dict[str, Any] | None = None


def _quantize_and_check(
    plan: ExportPlan,
    recipe: Recipe,
    source: SourceModel,
    fp32: Converted,
    data: _Data,
    workdir: Path,
) -> _Checked:
    """The quantize and evaluate stages for one recipe, inside the staging folder."""
    calib, held = data.calib, data.held
    folder = workdir / recipe.precision
    folder.mkdir()
    calibrated = f" (calibrating on {len(calib)} samples)" if recipe.needs_calibration else ""
    stage(f"{plan.backend.name} {recipe.precision}{calibrated}")
    stem = plan.stem(source.name, recipe)
    # The agreement check runs here; a remote target device is benchmarked, not used here.
    local = None if is_remote(plan.check_on) else plan.check_on
    gated = None
    if recipe.max_accuracy_drop is not None and recipe.precision in APPLIES_TO["max_accuracy_drop"]:
        gated = _gate(plan, recipe, source, fp32, data, folder, stem, local)
        result, recipe, gate_json = gated
    else:
        result = plan.backend.quantize(fp32, source, recipe, calib, folder, stem)
        gate_json = None
    _device_fallback(plan, recipe, result)
    session = plan.backend.open_session(result.primary, device=local)
    if not held:
        # Every artifact runs at least once before it is moved into place.
        probe = calib[:1] or load_samples("random", source.inputs, limit=1, seed=recipe.seed)
        session.run(probe[0])
    candidate = [session.run(f) for f in progress(held, desc=f"exported {recipe.precision}")]
    checked = _Checked(
        result,
        session,
        compare(data.reference, candidate),
        result.primary.parent,
        recipe,
        candidate,
        gate_json,
    )
    if recipe.precision not in ("fp32", "as-trained") and local is not None:
        _speed_check(plan, recipe, source, fp32, (held or calib)[:1], workdir, checked)
    return checked


#: what each recipe precision computes in, as a layer precision (edgekit.layers)
_COMPUTES = {
    "fp32": "float",
    "fp16": "fp16",
    "int8": "int8",
    "int16x8": "int16",
    "int8-dynamic": "float",
    "int8-weights": "float",
    "int4-weights": "float",
    "as-trained": "int8",
}


def _device_fallback(plan: ExportPlan, recipe: Recipe, result: ExportOutput) -> None:
    """A target whose device executes only some precisions (an Edge TPU: int8) runs every
    other layer as a fallback (on the CPU, or at a lower precision): say which layers."""
    executes = plan.target.executes
    if not executes:
        return
    assigned = (result.details.get("layer_rules") or {}).get("assigned", {})
    default = _COMPUTES.get(recipe.precision, "float")
    off = {name: p for name, p in assigned.items() if p not in executes}
    whole = default not in executes
    if not off and not whole:
        return
    result.details["device_fallback"] = {"executes": list(executes), "layers": off, "all": whole}
    where = f"{plan.target.name} executes {', '.join(executes)}"
    if whole:
        result.warnings.append(
            f"device fallback: {where}, and {recipe.precision} computes in {default}: the "
            f"whole model falls back; use --precision {_preferred(executes)}"
        )
    else:
        names = ", ".join(f"{n} ({p})" for n, p in list(off.items())[:8])
        more = " ..." if len(off) > 8 else ""
        result.warnings.append(
            f"device fallback: {where}; {len(off)} layer(s) planned otherwise do not run as "
            f"planned there (handed back to the CPU, or computed at a precision it has): "
            f"{names}{more}"
        )


def _preferred(executes: Sequence[str]) -> str:
    for precision, computes in _COMPUTES.items():
        if computes in executes:
            return precision
    return "int8"


def _gate(
    plan: ExportPlan,
    recipe: Recipe,
    source: SourceModel,
    fp32: Converted,
    data: _Data,
    folder: Path,
    stem: str,
    device: str | None,
) -> tuple[ExportOutput, Recipe, dict[str, Any]]:
    """--max-accuracy-drop: the artifact whose held-out metric is within budget with the
    fewest float layers the greedy search found (edgekit.accuracy), or AccuracyGateError."""
    from edgekit.accuracy import Evaluator, gate, speed_step
    from edgekit.metrics import default_metric

    if not data.held or "random" in data.described:
        raise DataError(
            "--max-accuracy-drop needs real held-out data to measure the drop on: pass "
            "--eval-data PATH (labelled: class folders or a .npz with 'labels') or more "
            "--calibration data"
        )
    metric = (
        default_metric(data.reference, data.labels) if recipe.metric == "auto" else recipe.metric
    )
    ev = Evaluator(
        plan.backend,
        fp32,
        source,
        recipe,
        data.calib,
        data.held,
        data.reference,
        data.labels,
        metric,
        folder / "gate",
        device,
        stem,
    )
    result = gate(ev, recipe.max_accuracy_drop or 0.0, recipe.max_float_layers)
    against = "labels" if ev.labels is not None else "the FP32 source's outputs"
    if not result.met:
        best = result.final
        raise AccuracyGateError(
            f"--max-accuracy-drop {result.budget}: the best {recipe.precision} reached a "
            f"{metric} drop of {best.drop:.3g} points (FP32 {result.baseline:.4g}, "
            f"{recipe.precision} {best.value:.4g}, against {against}, {len(data.held)} samples) "
            f"with {len(result.float_layers)} of {result.layers} layers in float; the "
            f"{recipe.precision} artifact was not written: allow a larger drop, try another "
            "--precision (int16x8, fp16) or --calibration-method, or train with quantization"
        )
    # The speed step times where the speed check does: on this machine, not on a remote device.
    speed = (
        speed_step(ev, result, _fp32_timer(plan, ev, fp32, folder.parent, device))
        if device
        else None
    )
    final = result.final
    summary = result.to_json()  # before the move: it reads the trial's file sizes
    if speed is not None:
        summary["speed_step"] = speed
    final_size = final.size_bytes
    # The chosen trial's files become the artifact: move them up into the precision folder.
    for f in final.result.files:
        f.replace(folder / f.name)
    moved = ExportOutput(
        primary=folder / final.result.primary.name,
        files=[folder / f.name for f in final.result.files],
        details=final.result.details,
        warnings=final.result.warnings,
        notes=final.result.notes,
    )
    shutil.rmtree(folder / "gate", ignore_errors=True)
    gate_rules = [r for r in final.rules if r.origin == "accuracy gate"]
    chosen = recipe.updated(rules=[*recipe.rules, *gate_rules])
    summary["against"] = against
    summary["samples"] = len(data.held)
    if result.float_layers:
        moved.notes.append(
            f"accuracy gate: {len(result.float_layers)} of {result.layers} layers kept in "
            f"float ({', '.join(result.float_layers)}) for a {metric} drop of "
            f"{final.drop:.3g} points (budget {result.budget}; all-{recipe.precision}: "
            f"{result.steps[0]['drop']:.3g}); size {final_size / 1e6:.2f} MB against "
            f"{result.full_int8_size / 1e6:.2f} MB all-{recipe.precision}"
        )
    else:
        moved.notes.append(
            f"accuracy gate: all layers {recipe.precision}, {metric} drop "
            f"{final.drop:.3g} points within the budget of {result.budget}"
        )
    moved.details["accuracy_gate"] = summary
    return moved, chosen, summary


def _fp32_timer(
    plan: ExportPlan, ev: Evaluator, fp32: Converted, workdir: Path, device: str
) -> Callable[[Path], SpeedCheck]:
    """``artifact -> SpeedCheck`` against the FP32 baseline the speed check times against (made
    once per export, on first use), 1 thread each, on the gate's first held-out sample."""
    from edgekit.speed_check import compare_speed

    opened: list[Any] = []

    def timer(artifact: Path) -> SpeedCheck:
        if not opened:
            base = _baseline(plan, ev.recipe, ev.source, fp32, workdir, "fp32")
            opened.append(plan.backend.open_session(base, threads=1, device=device))
        session = plan.backend.open_session(artifact, threads=1, device=device)
        return compare_speed(opened[0], session, ev.held[0])

    return timer


def _baseline(
    plan: ExportPlan, recipe: Recipe, source: SourceModel, fp32: Converted, workdir: Path, at: str
) -> Path:
    """The artifact at precision ``at`` that a quantized one is timed against, made once per
    export (no rules: the plain model at that precision)."""
    folder = workdir / f"{at}-speed"
    if not folder.exists():
        folder.mkdir()
        base = recipe.updated(precision=at, keep_float=(), rules=())
        plan.backend.quantize(fp32, source, base, [], folder, at)
    return next(p for p in sorted(folder.iterdir()) if p.suffix == plan.backend.suffix)


def _speed_check(
    plan: ExportPlan,
    recipe: Recipe,
    source: SourceModel,
    fp32: Converted,
    feeds: list[Feeds],
    workdir: Path,
    checked: _Checked,
) -> None:
    """Never ship a quantized artifact slower than FP32 without a word: time both on this
    machine, one thread each, interleaved (edgekit.speed_check), and say which is faster. The
    backend's fp16 is timed too where it has one: it is what a float model runs at on a GPU or
    NPU, and OpenVINO's CPU runs it in its default precision (bf16 on CPUs with AVX512-BF16 or
    AMX), which can beat an int8 model."""
    from edgekit.cpu import detect_isa
    from edgekit.speed_check import compare_speed

    probe = feeds or load_samples("random", source.inputs, limit=1, seed=recipe.seed)
    local = None if is_remote(plan.check_on) else plan.check_on
    # Timed here, so it speaks for this machine's CPU, whatever the target's isa says.
    cpu = detect_isa() or "an unknown CPU"
    bases = ["fp32"]
    if recipe.precision != "fp16" and "fp16" in plan.backend.capabilities.precisions:
        bases.append("fp16")
    for at in bases:
        primary = _baseline(plan, recipe, source, fp32, workdir, at)
        stage(f"timing {recipe.precision} against {at} (1 thread, interleaved)")
        a = plan.backend.open_session(primary, threads=1, device=local)
        b = plan.backend.open_session(checked.result.primary, threads=1, device=local)
        speed = compare_speed(a, b, probe[0])
        key = "speed_check" if at == "fp32" else f"speed_check_{at}"
        checked.result.details[key] = {
            "ratio": None if speed.ratio is None else round(speed.ratio, 3),
            f"{at}_ms": round(speed.fp32_s * 1e3, 3),
            "quantized_ms": round(speed.quantized_s * 1e3, 3),
            "pairs": speed.pairs,
            "noise": round(speed.noise, 4),
            "slower": speed.slower,
            "skipped": speed.skipped,
        }
        described = speed.describe().replace("FP32", at.upper())
        checked.result.notes.append(f"{described} ({cpu}, 1 thread)")
        if speed.slower:
            checked.result.warnings.append(
                f"{recipe.precision} runs {speed.ratio:.2f}x the latency of {at} on this CPU "
                f"({cpu}, 1 thread): {at} is the faster precision here; use --precision {at} "
                f"for speed, or keep {recipe.precision} for its size (measure on the device "
                "with edgekit benchmark)"
            )


#: what --precision auto tries, in order, where the backend offers them
AUTO_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int8-dynamic", "int8-weights")
#: --precision auto's accuracy budget when --max-accuracy-drop is not given, in points
AUTO_BUDGET = 1.0


def auto_candidates(target: str, calibrated: bool) -> list[str]:
    """The precisions --precision auto measures on ``target``: what its backend offers from
    AUTO_PRECISIONS, those needing calibration only with calibration data, and only what the
    target's device executes (an Edge TPU: int8) besides the fp32 reference."""
    from edgekit.backends import get_backend
    from edgekit.recipe import NEEDS_CALIBRATION
    from edgekit.targets import resolve_target

    tgt = resolve_target(target)
    offered = get_backend(tgt.backend).capabilities.precisions
    found = [
        p
        for p in AUTO_PRECISIONS
        if p in offered
        and (calibrated or p not in NEEDS_CALIBRATION)
        and (p == "fp32" or not tgt.executes or p in tgt.executes)
    ]
    return found


def _auto(
    plan: ExportPlan,
    source: SourceModel,
    fp32: Converted,
    how: str,
    data: _Data,
    workdir: Path,
) -> ExportReport:
    """--precision auto: every candidate quantized, checked and timed against fp32 on this
    machine (interleaved, 1 thread), then the fastest within the accuracy budget committed."""
    from edgekit.metrics import default_metric, score

    recipe0 = plan.recipes[0]
    budget = recipe0.max_accuracy_drop if recipe0.max_accuracy_drop is not None else AUTO_BUDGET
    metric = (
        default_metric(data.reference, data.labels) if recipe0.metric == "auto" else recipe0.metric
    )
    baseline = score(metric, data.reference, data.reference, data.labels).value if data.held else 0
    rows: list[dict[str, Any]] = []
    checked_by: dict[str, tuple[_Checked, Sequence[str]]] = {}
    for recipe, ignored in zip(plan.recipes, plan.ignored, strict=True):
        row: dict[str, Any] = {"precision": recipe.precision}
        try:
            checked = _quantize_and_check(plan, recipe, source, fp32, data, workdir)
        except EdgekitError as exc:
            # One candidate that cannot be made (over budget, a quantizer failure) is a row
            # of the table, not the end of the choice.
            rows.append({**row, "meets_budget": False, "why": first_line(exc)})
            continue
        value = (
            score(metric, checked.outputs, data.reference, data.labels).value if data.held else 0
        )
        speed = checked.result.details.get("speed_check") or {}
        ratio = 1.0 if recipe.precision == "fp32" else speed.get("ratio")
        size = sum(f.stat().st_size for f in checked.result.files)
        row.update(
            metric=metric,
            value=round(value, 4),
            drop=round(baseline - value, 4),
            latency_vs_fp32=ratio,
            size_bytes=size,
            # fp32 is the reference the drop is measured from: within any budget.
            meets_budget=recipe.precision == "fp32" or baseline - value <= budget,
        )
        if (
            recipe.precision == "fp32"
            and plan.target.executes
            and "float" not in (plan.target.executes)
        ):
            row.update(meets_budget=False, why=f"{plan.target.name} does not execute float")
        if checked.gate and checked.gate.get("float_layers"):
            row["float_layers"] = checked.gate["float_layers"]
        rows.append(row)
        checked_by[recipe.precision] = (checked, ignored)
    fits = [r for r in rows if r.get("meets_budget")]
    if not fits:
        raise AccuracyGateError(
            f"--precision auto: no precision {plan.target.name} executes is within {budget} "
            f"points of {metric}: "
            + "; ".join(f"{r['precision']}: {r.get('why') or r.get('drop')}" for r in rows)
        )
    # fp32 fits unless the device cannot run float; an unmeasured ratio (a model too quick
    # to time) ranks after every measured one, then the smaller artifact wins.
    best = min(
        fits,
        key=lambda r: (
            r["latency_vs_fp32"] is None,
            r["latency_vs_fp32"] if r["latency_vs_fp32"] is not None else 0.0,
            r["size_bytes"],
        ),
    )
    for r in rows:
        r["chosen"] = r is best
    checked, ignored = checked_by[best["precision"]]
    # The budget chose among the candidates, fp32 among them: it did something at fp32 too.
    ignored = [w for w in ignored if not w.startswith(("--max-accuracy-drop", "--max-float"))]
    report = _commit(plan, checked.recipe, source, fp32, how, checked, data.described, ignored)
    report.choices = rows
    report.notes.append(
        f"--precision auto chose {best['precision']}: the fastest on this CPU within "
        f"{budget} points of {metric} (1 thread, interleaved against fp32)"
    )
    return report


def _commit(
    plan: ExportPlan,
    recipe: Recipe,
    source: SourceModel,
    fp32: Converted,
    how: str,
    checked: _Checked,
    eval_desc: str,
    ignored: Sequence[str],
) -> ExportReport:
    """The commit stage: sidecar written beside the staged files, then the set switched in."""
    result, session, agreement = checked.result, checked.session, checked.agreement
    out_dir = plan.output_dir
    size = sum(f.stat().st_size for f in result.files)
    # In-memory models have no file: their FP32 form on this backend stands in as the source.
    source_size = source.size_bytes or sum(fp32.path(f).stat().st_size for f in fp32.files)
    artifact = out_dir / result.primary.name
    sidecar = sidecar_path(artifact)
    warnings = [
        *ignored,
        *result.warnings,
        *_honesty(
            recipe,
            agreement,
            size,
            source_size,
            eval_desc,
            plan.backend.name,
            plan.numerics,
            plan.backend.capabilities,
        ),
    ]
    payload = {
        "schema_version": SIDECAR_SCHEMA_VERSION,
        "edgekit_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": {
            "path": str(source.path) if source.path else None,
            "format": source.format,
            "sha256": source.sha256 or None,
            "size_bytes": source_size,
        },
        "target": plan.target.name,
        "backend": plan.backend.name,
        "recipe": recipe.to_json(),
        "tools": {**tool_versions(), **plan.backend.versions()},
        "inputs": [s.to_json() for s in session.inputs],
        "outputs": [s.to_json() for s in session.outputs],
        "artifact": {
            "files": [f.name for f in result.files],
            "size_bytes": size,
            "sha256": {f.name: file_digest(f)[0] for f in result.files},
        },
        "conversion": {"cache_key": convert_cache.cache_key(plan.backend, source), "how": how},
        "preparation": source.preparation,
        "backend_details": result.details,
        "agreement": {**agreement.to_json(), "inputs": eval_desc},
        "runtime": session.info,
        "warnings": warnings,
        "notes": [*source.notes, *result.notes],
    }
    problems = check_sidecar(payload)
    if problems:  # a bug in this function, not the user's: say where
        raise RuntimeError(f"the sidecar edgekit built is not valid: {problems}")
    _atomic_json(checked.folder / sidecar.name, payload)
    # The artifact goes in before its sidecar: a sidecar never describes a missing file.
    commit(out_dir, [*result.files, checked.folder / sidecar.name], result.primary)
    stage(f"wrote {artifact}")
    return ExportReport(
        artifact=artifact,
        sidecar=sidecar,
        target=plan.target.name,
        backend=plan.backend.name,
        recipe=recipe,
        size_bytes=size,
        source_size_bytes=source_size,
        agreement=agreement,
        eval_inputs=eval_desc,
        seconds=0.0,
        warnings=warnings,
        notes=[*source.notes, *result.notes, convert_cache.describe_hit(how)],
        gate=checked.gate,
    )
