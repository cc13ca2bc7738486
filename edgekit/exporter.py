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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.artifact import SIDECAR_SCHEMA_VERSION, sidecar_path
from edgekit.backends import backend_names, get_backend
from edgekit.backends.base import is_remote
from edgekit.calibration import ImageOptions, load_samples, split_samples
from edgekit.commit import commit, make_workdir, output_folder, remove_stale
from edgekit.errors import DataError, EdgekitError, ModelFormatError, UsageError, first_line
from edgekit.evaluate import Agreement, compare
from edgekit.model import (
    Feeds,
    SourceModel,
    detect_format,
    file_digest,
    load_model,
    object_format,
)
from edgekit.progress import progress
from edgekit.recipe import Recipe
from edgekit.targets import resolve_target

# File names are at most 255 bytes; precision, suffix and ".edgekit.json" need the rest.
_MAX_NAME_BYTES = 200
# Frameworks whose versions go into the sidecar when they took part in an export.
_TOOL_PACKAGES = {
    "torch": "torch",
    "tensorflow": "tensorflow-cpu",
    "keras": "keras",
    "tf2onnx": "tf2onnx",
    "onnxconverter_common": "onnxconverter-common",
    "onnxscript": "onnxscript",
    "numpy": "numpy",
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
        }


def _tool_versions() -> dict[str, str]:
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
    recipe: Recipe,
    calibration: Any,
    eval_data: Any,
    image_options: ImageOptions | None,
) -> tuple[list[Feeds], list[Feeds], str]:
    """Calibration samples and disjoint held-out evaluation samples, validated up front."""
    calib: list[Feeds] = []
    held: list[Feeds] = []
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
    elif recipe.needs_calibration:
        raise DataError(
            f"precision {recipe.precision} needs calibration data: pass --calibration PATH "
            "(image folder, .npy or .npz) or --calibration random for a smoke test only"
        )
    described = "held-out calibration samples"
    if eval_data is not None:
        held = load_samples(
            eval_data,
            source.inputs,
            image_options=image_options,
            limit=recipe.eval_samples,
            seed=recipe.seed,
        )
        described = "evaluation samples"
    if not held and recipe.eval_samples:
        held = load_samples(
            "random", source.inputs, limit=min(recipe.eval_samples, 16), seed=recipe.seed + 1
        )
        described = "random inputs (pass --eval-data or more calibration data for real ones)"
    if calibration == "random":
        described = "random inputs"
    return calib, held, described


def _check_source_format(model: Any, backend: Any) -> None:
    """Refuse a source the backend has no route from, before loading it, naming the ones that do."""
    fmt = detect_format(Path(model)) if isinstance(model, str | Path) else object_format(model)
    if fmt in backend.source_formats:
        return
    others = [n for n in backend_names() if fmt in get_backend(n).source_formats]
    routes = ", ".join(f"--target {n}" for n in others) or "no backend"
    raise UsageError(
        f"{backend.name} cannot export from a {fmt} model; use {routes}, or export from the "
        "model's original framework"
    )


def _reference(source: SourceModel, feeds: Feeds) -> list[Any]:
    """Run the FP32 source; a model that cannot run there cannot be checked, so say so."""
    try:
        return source.run(feeds)
    except EdgekitError:
        raise
    except Exception as exc:
        first = re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc))
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


def export(
    model: Any,
    target: str = "onnxruntime",
    precision: str | None = None,
    *,
    output_dir: str | Path = "edgekit-out",
    calibration: Any = None,
    eval_data: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    image_options: ImageOptions | None = None,
    name: str | None = None,
    device: str | None = None,
    **recipe_fields: Any,
) -> ExportReport:
    """Export ``model`` for ``target`` at ``precision`` and compare it with the FP32 source.

    ``model`` is a path (.onnx, .pt2, .keras, .h5, SavedModel dir) or an in-memory
    ``torch.nn.Module`` (with ``example_inputs``), ``keras.Model`` or ``onnx.ModelProto``.
    ``calibration``/``eval_data`` are an image folder, a .npy/.npz path, an iterable of feed
    dicts, or ``"random"``. ``device`` is where the exported artifact is checked (a local
    accelerator such as OpenVINO's ``GPU``; default: the target's). Extra keyword arguments are
    :class:`~edgekit.recipe.Recipe` fields.
    """
    started = time.perf_counter()
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir} exists and is not a folder; choose another output folder")
    if name is not None and (Path(name).name != name or name in ("", ".", "..")):
        raise UsageError(f"--name '{name}' must be a plain file name stem, without '/'")
    if name is not None and len(name.encode()) > _MAX_NAME_BYTES:
        raise UsageError(
            f"--name is {len(name.encode())} bytes long; file systems allow 255 per name with "
            f"the suffixes edgekit adds, so keep it to {_MAX_NAME_BYTES}"
        )
    tgt = resolve_target(target)
    backend = get_backend(tgt.backend)
    _check_source_format(model, backend)
    wanted = precision or tgt.default_precision
    if wanted not in backend.precisions:
        offered = [n for n in backend_names() if wanted in get_backend(n).precisions]
        if offered:
            raise UsageError(
                f"precision '{wanted}' is not supported by {backend.name} (it supports "
                f"{', '.join(backend.precisions)}); --target {' or --target '.join(offered)} "
                "offers it"
            )
    recipe = (
        Recipe()
        .updated(**tgt.recipe)
        .updated(precision=precision or tgt.default_precision, **recipe_fields)
        .validate(backend.precisions, backend.name)
    )
    if recipe_fields.get("percentile") is not None and recipe.calibration_method != "percentile":
        raise UsageError(
            "--percentile applies only to --calibration-method percentile; drop it or add "
            "--calibration-method percentile"
        )
    unused = recipe.unused(k for k, v in recipe_fields.items() if v is not None)
    check_on = device or tgt.device
    if not is_remote(check_on):
        backend.check_device(check_on)
    source = load_model(model, input_shapes, example_inputs)
    calib, held, eval_desc = _data(source, recipe, calibration, eval_data, image_options)
    # Fail before any conversion work if the source itself cannot run.
    for feeds in (held or calib)[:1]:
        _reference(source, feeds)

    stem = f"{name or source.name}_{recipe.precision}"
    try:
        with output_folder(out_dir):
            remove_stale(out_dir)
            workdir = make_workdir(out_dir)
            try:
                return _export_into(
                    out_dir,
                    workdir,
                    stem,
                    started,
                    tgt,
                    backend,
                    recipe,
                    source,
                    calib,
                    held,
                    eval_desc,
                    check_on,
                    unused,
                )
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    except OSError as exc:
        # What the output folder refuses (read-only, /proc, full disk) is the user's to fix.
        raise UsageError(
            f"cannot write into the output folder {out_dir} ({exc.strerror or exc}); choose "
            "another with -o"
        ) from exc


def _export_into(
    out_dir: Path,
    workdir: Path,
    stem: str,
    started: float,
    tgt: Any,
    backend: Any,
    recipe: Recipe,
    source: SourceModel,
    calib: list[Feeds],
    held: list[Feeds],
    eval_desc: str,
    check_on: str,
    unused: list[str],
) -> ExportReport:
    result = backend.export(source, recipe, calib, workdir, stem)
    # The agreement check runs here; a remote target device is benchmarked, not used here.
    session = backend.open_session(result.primary, device=None if is_remote(check_on) else check_on)
    if not held:
        # Every artifact runs at least once before it is moved into place.
        probe = calib[:1] or load_samples("random", source.inputs, limit=1, seed=recipe.seed)
        session.run(probe[0])
    reference = [_reference(source, f) for f in progress(held, desc="reference")]
    candidate = [session.run(f) for f in progress(held, desc="exported")]
    agreement = compare(reference, candidate)
    size = sum(f.stat().st_size for f in result.files)
    # In-memory models have no file: their FP32 ONNX form stands in as the source size.
    fp32_onnx = workdir / "source.fp32.onnx"
    source_size = (
        source.size_bytes
        or (fp32_onnx.stat().st_size if fp32_onnx.exists() else 0)
        or int(result.details.get("fp32_size_bytes", 0))
    )
    artifact = out_dir / result.primary.name
    sidecar = sidecar_path(artifact)
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
        "target": tgt.name,
        "backend": backend.name,
        "recipe": recipe.to_json(),
        "tools": {**_tool_versions(), **backend.versions()},
        "inputs": [s.to_json() for s in session.inputs],
        "outputs": [s.to_json() for s in session.outputs],
        "artifact": {
            "files": [f.name for f in result.files],
            "size_bytes": size,
            "sha256": {f.name: file_digest(f)[0] for f in result.files},
        },
        "backend_details": result.details,
        "agreement": {**agreement.to_json(), "inputs": eval_desc},
        "runtime": session.info,
        "warnings": [*unused, *result.warnings],
        "notes": source.notes,
    }
    _atomic_json(workdir / sidecar.name, payload)
    # The artifact goes in before its sidecar: a sidecar never describes a missing file.
    commit(out_dir, [*result.files, workdir / sidecar.name], result.primary)
    return ExportReport(
        artifact=artifact,
        sidecar=sidecar,
        target=tgt.name,
        backend=backend.name,
        recipe=recipe,
        size_bytes=size,
        source_size_bytes=source_size,
        agreement=agreement,
        eval_inputs=eval_desc,
        seconds=time.perf_counter() - started,
        warnings=[*unused, *result.warnings],
        notes=source.notes,
    )
