"""The plan stage: decide whether an export request can run, before anything is loaded.

Everything a request can get wrong that does not need the model itself is found here, from the
target profile and the backend's declared :class:`~edgekit.backends.base.Capabilities`: the
output folder and name, the target, a source format the backend has no route from, precisions
it does not produce, recipe settings it cannot honour, a local device that is absent, an
already-quantized source asked to be quantized again (read from the file's structure, not its
weights: :mod:`edgekit.intake.compression`). Each refusal names what works instead. A plan
holds one validated recipe per precision, so that the rest of the pipeline converts once and
quantizes for each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.backends import backend_names, get_backend
from edgekit.backends.base import Backend, is_remote
from edgekit.compress.as_trained import check_qat, is_qat
from edgekit.errors import EdgekitError, UsageError
from edgekit.intake.compression import Numerics, detect, onnx_numerics
from edgekit.model import detect_format, object_format
from edgekit.recipe import Recipe
from edgekit.targets import Target, resolve_target

# File names are at most 255 bytes; precision, suffix and ".edgekit.json" need the rest.
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class ExportPlan:
    """A request that can run: target, backend, one recipe per precision, where to write."""

    target: Target
    backend: Backend
    recipes: tuple[Recipe, ...]
    output_dir: Path
    name: str | None
    #: where the artifact is checked after export (a local accelerator, or a remote device
    #: that is benchmarked later)
    check_on: str
    #: per recipe: settings the caller gave that do nothing at its precision
    ignored: tuple[tuple[str, ...], ...] = field(default=())
    #: how the source stores its numbers (None: not read, e.g. a framework model)
    numerics: Numerics | None = None
    #: source inputs whose dynamic dimensions the artifact keeps (--dynamic)
    dynamic: tuple[str, ...] = ()

    def stem(self, source_name: str, recipe: Recipe) -> str:
        return f"{self.name or source_name}_{recipe.precision}"


def _source_format(model: Any) -> str:
    return detect_format(Path(model)) if isinstance(model, str | Path) else object_format(model)


def _check_output(output_dir: Path, name: str | None) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(
            f"-o {output_dir} exists and is not a folder; choose another output folder"
        )
    if name is None:
        return
    if Path(name).name != name or name in ("", ".", ".."):
        raise UsageError(f"--name '{name}' must be a plain file name stem, without '/'")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(
            f"--name is {len(name.encode())} bytes long; file systems allow 255 per name with "
            f"the suffixes edgekit adds, so keep it to {MAX_NAME_BYTES}"
        )


def _check_route(fmt: str, backend: Backend) -> None:
    if fmt in backend.capabilities.sources:
        return
    others = [n for n in backend_names() if fmt in get_backend(n).capabilities.sources]
    if not others:
        raise UsageError(
            f"no backend exports from a {fmt} model (an artifact, not a source); export from "
            "the model it was made from"
        )
    routes = ", ".join(f"--target {n}" for n in others)
    raise UsageError(
        f"{backend.name} cannot export from a {fmt} model; use {routes}, or export from the "
        "model's original framework"
    )


def _check_precision(precision: str, backend: Backend) -> None:
    offered = backend.capabilities.precisions
    if precision in offered:
        return
    others = [n for n in backend_names() if precision in get_backend(n).capabilities.precisions]
    if others:
        raise UsageError(
            f"precision '{precision}' is not supported by {backend.name} (it supports "
            f"{', '.join(offered)}); --target {' or --target '.join(others)} offers it"
        )


def _source_numerics(model: Any, fmt: str) -> Numerics | None:
    if isinstance(model, str | Path):
        return detect(Path(model), fmt) if Path(model).is_file() else None
    if fmt == "onnx":  # an onnx.ModelProto: its structure is at hand
        try:
            return onnx_numerics(model)
        except Exception:  # not a well-formed proto: the load stage says what is wrong
            return None
    return None


def _check_numerics(
    numerics: Numerics | None, fmt: str, backend: Backend, precision: str, model: Any
) -> None:
    """Refuse to quantize an already-quantized source again: its weights would be dequantized
    and re-quantized, less accurate and no smaller (fp16 would even double them)."""
    if numerics is None or not numerics.quantized or precision == "fp32":
        return
    if fmt == backend.name:
        return  # a source in the backend's own format: that backend's route decides
    why = (
        "fp16 would store its integer weights as fp16, twice their size"
        if precision == "fp16"
        else f"{precision} would quantize its dequantized weights a second time, adding a "
        "second rounding error to the first"
    )
    what = Path(model).name if isinstance(model, str | Path) else "the model"
    raise UsageError(
        f"{what} is {numerics.describe()}, and --precision {why}: export it at --precision "
        "fp32 to run it as it is, or quantize the float model it was made from"
    )


def _check_dynamic(dynamic: Sequence[str], fmt: str, backend: Backend) -> None:
    """--dynamic keeps dimensions the source declares dynamic; only where the backend's
    artifact can hold them, and only for sources whose graph states them (ONNX)."""
    if not dynamic:
        return
    if fmt in backend.capabilities.dynamic_sources:
        return
    takes = [
        n
        for n in backend_names()
        if fmt in get_backend(n).capabilities.dynamic_sources and n != backend.name
    ]
    hint = (
        f"use --target {' or --target '.join(takes)}"
        if takes
        else "export the model to ONNX with dynamic axes first"
    )
    raise UsageError(
        f"--dynamic {', '.join(dynamic)}: {backend.name} artifacts from a {fmt} source keep "
        f"static input shapes; drop --dynamic (shapes are fixed with --input-shape) or {hint}"
    )


def _check_rules(recipe: Recipe, backend: Backend) -> None:
    """Each layer rule's precision must map onto a mechanism the backend has at the recipe's
    precision (its capabilities say which); fp32 takes no rules (Recipe.unused warns)."""
    rules = recipe.effective_rules()
    if not rules or recipe.precision == "fp32":
        return
    allowed = backend.capabilities.layer_precisions.get(recipe.precision, ())
    for rule in rules:
        if rule.precision in allowed:
            continue
        others = [
            n
            for n in backend_names()
            if rule.precision
            in get_backend(n).capabilities.layer_precisions.get(recipe.precision, ())
        ]
        elsewhere = f"; --target {' or --target '.join(others)} can" if others else ""
        can = ", ".join(allowed) if allowed else "no per-layer precision"
        raise UsageError(
            f"{rule.origin} '{rule.pattern}' -> {rule.precision}: {backend.name} at precision "
            f"{recipe.precision} can give layers {can}{elsewhere}"
        )


def _source_name(model: Any) -> str:
    """The stem an artifact gets from its source (SourceModel.name, known before loading)."""
    if not isinstance(model, str | Path):
        return "model"
    path = Path(model)
    return path.name.split(".")[0] if path.is_file() else path.name


def _check_overwrite(plan: ExportPlan, model: Any) -> None:
    """Two targets of one backend (say tflite and android-arm64) name their artifacts alike;
    exporting one must not silently replace the other's."""
    from edgekit.artifact import read_sidecar

    for recipe in plan.recipes:
        artifact = (
            plan.output_dir / f"{plan.stem(_source_name(model), recipe)}{plan.backend.suffix}"
        )
        if not artifact.exists():
            continue
        try:
            side = read_sidecar(artifact)
        except EdgekitError:
            continue  # a broken sidecar describes nothing worth keeping
        if side is not None and side.target != plan.target.name:
            raise UsageError(
                f"{artifact} is the --target {side.target} export; exporting --target "
                f"{plan.target.name} would replace it: choose another --name or -o, or pass "
                "--force"
            )


def plan_export(
    model: Any,
    target: str,
    precisions: Sequence[str | None],
    output_dir: str | Path,
    name: str | None,
    device: str | None,
    base: Recipe | None,
    recipe_fields: Mapping[str, Any],
    force: bool = False,
    dynamic: Sequence[str] = (),
) -> ExportPlan:
    """Check the whole request; raise a UsageError (or DeviceError) naming what works."""
    out_dir = Path(output_dir)
    _check_output(out_dir, name)
    tgt = resolve_target(target)
    backend = get_backend(tgt.backend)
    fmt = _source_format(model)
    _check_route(fmt, backend)
    _check_dynamic(dynamic, fmt, backend)
    numerics = _source_numerics(model, fmt)
    given = [k for k, v in recipe_fields.items() if v is not None]
    recipes, ignored = [], []
    qat = is_qat(model)
    for wanted in precisions:
        precision = wanted or (base.precision if base else tgt.default_precision)
        _check_precision(precision, backend)
        check_qat(qat, precision, model)
        _check_numerics(numerics, fmt, backend, precision, model)
        recipe = (
            (base or Recipe().updated(**tgt.recipe))
            .updated(precision=precision, **recipe_fields)
            .validate(backend.capabilities.precisions, backend.name)
        )
        refused = backend.capabilities.refusals(recipe)
        if refused:
            raise UsageError(refused[0])
        _check_rules(recipe, backend)
        if (
            recipe_fields.get("percentile") is not None
            and recipe.calibration_method != "percentile"
        ):
            raise UsageError(
                "--percentile applies only to --calibration-method percentile; drop it or add "
                "--calibration-method percentile"
            )
        recipes.append(recipe)
        ignored.append(tuple(recipe.unused(given)))
    if len({r.precision for r in recipes}) != len(recipes):
        raise UsageError("--precision names the same precision twice")
    check_on = device or tgt.device
    if not is_remote(check_on):
        backend.check_device(check_on)
    plan = ExportPlan(
        target=tgt,
        backend=backend,
        recipes=tuple(recipes),
        output_dir=out_dir,
        name=name,
        check_on=check_on,
        ignored=tuple(ignored),
        numerics=numerics,
        dynamic=tuple(dynamic),
    )
    if not force:
        _check_overwrite(plan, model)
    return plan
