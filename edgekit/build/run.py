"""``edgekit build``: plan the matrix, build each cell or take it from the cache, time it on
its devices, gate, and write the manifest, a markdown summary, JUnit XML and report.html.

Order matters for the user: the whole matrix is planned (every model found, every target
resolved, every model format and precision checked against the backend's declared
capabilities) before the first export, so an impossible cell is refused by name at once. A
model's cells on one target are one export job (one load, one conversion for all its
precisions); jobs run on an executor (:mod:`edgekit.build.executors`: a local process pool or
Ray). Timing comes after every export has finished, one cell at a time per device (devices
side by side), so no export loads the machine a latency is measured on. Each exported cell is
stored in the content-hash cache at once and its timings added when measured, so an
interrupted build keeps what it finished.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from edgekit.build import executors
from edgekit.build.cache import CellCache, cache_key
from edgekit.build.config import (
    DEVICE_BUDGETS,
    BenchSpec,
    BuildConfig,
    DeviceSpec,
    ModelSpec,
    TargetSpec,
    call_entry,
    load_config,
    resolve_path,
)
from edgekit.build.executors import ExportJob
from edgekit.errors import BudgetError, EdgekitError, RegressionError, UsageError, first_line

MANIFEST_SCHEMA = "edgekit-build-manifest/1"
#: source formats edgekit.compress takes
COMPRESSIBLE = ("torch", "keras")
#: distributions whose versions make the toolchain lock (read from metadata, never imported)
TOOLCHAIN = (
    "edgekit",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "onnx2torch",
    "tf2onnx",
    "torch",
    "tensorflow-cpu",
    "keras",
    "openvino",
    "nncf",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "litert-torch",
)


def toolchain() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in TOOLCHAIN:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _sha256(path: Path) -> str:
    from edgekit.model import file_digest

    return file_digest(path)[0]


@dataclass
class Cell:
    model: str
    target: str
    precision: str
    key: str = ""
    status: str = "planned"  # built | cached | over-budget | failed | skipped
    record: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    stored: list[Path] = field(default_factory=list)  # its files in the cache
    exc: EdgekitError | None = None  # why it failed after its export (timing on a device)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.target}/{self.precision}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "target": self.target,
            "precision": self.precision,
            "status": self.status,
            "cache_key": self.key,
            "files": self.files,
            "artifact_sha256": artifact_sha256(self.files) if self.files else None,
            **{
                k: self.record.get(k)
                for k in (
                    "size_bytes",
                    "agreement",
                    "p50_ms",
                    "peak_mib",
                    "timing_ms",
                    "devices",
                    "recipe",
                    "compress",
                    "sensitivity",
                )
            },
            "budgets": self.budgets,
            "error": self.error,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class _Model:
    spec: ModelSpec
    path: Path
    sha256: str
    data: dict[str, Any]
    data_sha256: dict[str, str]
    format: str


def _resolve_model(config: BuildConfig, spec: ModelSpec) -> _Model:
    from edgekit.model import detect_format

    where = f"models.{spec.name}"
    if spec.entry is not None:
        path = call_entry(spec.entry, where)
    else:
        path = (config.root / str(spec.path)).resolve()
    if not path.exists():
        raise UsageError(f"edgekit.toml: {where}: {path} does not exist")
    data = {**config.data, **spec.data}
    resolved: dict[str, Any] = {}
    hashes: dict[str, str] = {}
    for key in ("calibration", "eval"):
        if key in data:
            value = resolve_path(data[key], config.root, f"{where}: data.{key}")
            resolved[key] = value
            hashes[key] = value if isinstance(value, str) else _sha256(Path(value))
    for key in ("calibration_samples", "eval_samples"):
        if key in data:
            resolved[key] = data[key]
    return _Model(spec, path, _sha256(path), resolved, hashes, detect_format(path))


def plan(config: BuildConfig) -> tuple[list[_Model], list[Cell]]:
    """Every cell of the matrix, each checked against its backend's capabilities."""
    from edgekit.backends import get_backend
    from edgekit.targets import resolve_target

    models = [_resolve_model(config, spec) for spec in config.models]
    cells = []
    for target in config.targets:
        profile = resolve_target(target.name)
        caps = get_backend(profile.backend).capabilities
        for model in models:
            if model.format not in caps.sources:
                raise UsageError(
                    f"cell {model.spec.name}/{target.name}: {profile.backend} cannot export "
                    f"from a {model.format} model; remove the cell or give another model"
                )
            if target.compress and model.format not in COMPRESSIBLE:
                raise UsageError(
                    f"cell {model.spec.name}/{target.name}: compress passes work on a PyTorch "
                    f"(.pt2) or Keras model, not {model.format}; remove the target's compress"
                )
            for precision in target.precisions:
                if precision not in caps.precisions:
                    raise UsageError(
                        f"cell {model.spec.name}/{target.name}/{precision}: {profile.backend} "
                        f"has no precision {precision}; it offers {', '.join(caps.precisions)}"
                    )
                cells.append(Cell(model.spec.name, target.name, precision))
    return models, cells


def _key(
    model: _Model, target: TargetSpec, precision: str, tools: dict[str, str], bench: BenchSpec
) -> str:
    from edgekit.targets import resolve_target

    profile = resolve_target(target.name)
    return cache_key(
        {
            "source": model.sha256,
            "format": model.format,
            "target": target.name,
            "profile": repr(profile),
            "precision": precision,
            "recipe": target.recipe,
            "compress": target.compress,
            "input_shapes": model.spec.input_shapes,
            "data": model.data_sha256,
            "samples": {k: model.data.get(k) for k in ("calibration_samples", "eval_samples")},
            "bench": [bench.runs, bench.pin],
            "tools": tools,
        }
    )


def _job(model: _Model, target: TargetSpec, precisions: list[str]) -> ExportJob:
    from edgekit import progress

    kw: dict[str, Any] = {
        "calibration": model.data.get("calibration"),
        "eval_data": model.data.get("eval"),
    }
    if model.spec.input_shapes:
        kw["input_shapes"] = model.spec.input_shapes
    for key in ("calibration_samples", "eval_samples"):
        if key in model.data:
            kw[key] = model.data[key]
    if any(p != "fp32" for p in precisions) and kw["calibration"] is None:
        raise UsageError(
            f"edgekit.toml: models.{model.spec.name}: int8 cells need data.calibration "
            "(a path, 'random' for a smoke test, or module:callable)"
        )
    kw.update({k: tuple(v) if isinstance(v, list) else v for k, v in target.recipe.items()})
    return ExportJob(
        model.spec.name,
        str(model.path),
        target.name,
        tuple(precisions),
        kw,
        progress.QUIET,
        target.compress,
    )


def _timing(artifact: Path, device: DeviceSpec, bench: BenchSpec) -> dict[str, Any]:
    """Timing and memory on ``device``: a fresh runner process, 1 thread, the benchmark's
    random inputs of the artifact's shapes."""
    import edgekit

    result = edgekit.benchmark(
        [artifact],
        device=device.url,
        runs=bench.runs,
        warmup=5,
        rounds=1,
        threads=1,
        pin=bench.pin if device.url == "local" else None,
        **device.options,
    )
    r = result.results[0]
    return {"url": device.url, "timing_ms": r["timing_ms"], "memory_mib": r["memory_mib"]}


def _untimed(cell: Cell, target: TargetSpec, config: BuildConfig) -> list[DeviceSpec]:
    """The target's devices this cell has no timing for (a device added to a target, or its
    url changed, times the cached artifact again without rebuilding it)."""
    if not config.bench.runs:
        return []
    have = cell.record.get("devices") or {}
    wanted = [config.devices[name] for name in target.devices]
    return [d for d in wanted if (have.get(d.name) or {}).get("url") != d.url]


def _time_cells(
    todo: list[tuple[Cell, list[DeviceSpec]]], config: BuildConfig, cache: CellCache
) -> None:
    """Time each cell on each of its devices: one benchmark at a time per device, devices side
    by side (a phone timing a .tflite does not disturb this machine's CPU)."""
    from concurrent.futures import ThreadPoolExecutor

    from edgekit.progress import stage

    queues: dict[str, list[Cell]] = {}
    devices: dict[str, DeviceSpec] = {}
    for cell, wanted in todo:
        for d in wanted:
            queues.setdefault(d.name, []).append(cell)
            devices[d.name] = d

    def run(name: str) -> None:
        for cell in queues[name]:
            if cell.status == "failed":
                continue
            stage(f"cell {cell.id}: timing on {name}")
            artifact = next(p for p in cell.stored if p.name == cell.record["artifact"])
            try:
                measured = _timing(artifact, devices[name], config.bench)
            except EdgekitError as exc:
                cell.status, cell.error = "failed", f"timing on {name}: {first_line(exc)}"
                cell.exc = exc
                continue
            cell.record.setdefault("devices", {})[name] = measured

    with ThreadPoolExecutor(max(1, len(queues))) as pool:
        list(pool.map(run, queues))
    for cell, _ in todo:
        if cell.status != "failed":
            cache.update(cell.key, cell.record)


def _gate(cell: Cell, target: TargetSpec, on_device: bool) -> None:
    """Check the target's budgets measured of the file (``on_device`` False: right after the
    export) or on its devices (True: after timing)."""
    rec = cell.record
    agreement = rec.get("agreement") or {}
    figures = {
        "max_size_mib": (rec.get("size_bytes", 0) / 2**20, "<="),
        "min_top1_agreement": (agreement.get("top1_agreement"), ">="),
        "min_cosine": (agreement.get("mean_cosine"), ">="),
    }
    measured = {
        "max_p50_ms": lambda m: m["timing_ms"]["p50"],
        "max_p90_ms": lambda m: m["timing_ms"]["p90"],
        "max_peak_mib": lambda m: m["memory_mib"]["increase"],
    }
    for name, limit in target.budgets.items():
        if (name in DEVICE_BUDGETS) != on_device:
            continue
        checks: list[tuple[str | None, Any, str]] = []
        if name in DEVICE_BUDGETS:
            per_device = rec.get("devices") or {}
            checks = [(d, measured[name](per_device[d]), "<=") for d in target.devices]
        else:
            checks = [(None, *figures[name])]
        for device, value, op in checks:
            ok = value is not None and (value <= limit if op == "<=" else value >= limit)
            entry = {"budget": name, "limit": limit, "value": value, "op": op, "ok": bool(ok)}
            cell.budgets.append({**entry, "device": device} if device else entry)


def _over_budget(cell: Cell) -> bool:
    return any(not b["ok"] for b in cell.budgets)


SIDECAR_SUFFIX = ".edgekit.json"


def _files(placed: list[Path]) -> list[dict[str, Any]]:
    """Name, sha256 and size of a cell's own files as placed (not the whole folder's: the
    other cells' artifacts there are hashed once, for their own cells)."""
    return [
        {
            "name": p.name,
            "sha256": _sha256(p),
            "size_bytes": p.stat().st_size,
            "role": "sidecar" if p.name.endswith(SIDECAR_SUFFIX) else "artifact",
        }
        for p in sorted(placed)
    ]


def artifact_sha256(files: list[dict[str, Any]]) -> str:
    """One hash of a cell's model files, without its sidecar: the sidecar records when and
    how the artifact was made (its time, the conversion cache), which differs between two
    builds of identical artifacts."""
    parts = sorted((f["name"], f["sha256"]) for f in files if f.get("role") != "sidecar")
    return cache_key({"files": parts})


def build(
    config: str | Path | BuildConfig = "edgekit.toml",
    output_dir: str | Path = "edgekit-build",
    *,
    use_cache: bool = True,
    keep_going: bool = False,
    cache_dir: str | Path | None = None,
    baseline: str | Path | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Build the matrix of ``config`` into ``output_dir``; returns the manifest (also written
    as ``manifest.json``). ``executor`` runs the exports: ``"local"`` (a process pool of
    ``jobs`` workers, default the CPU count) or ``"ray"`` (the cluster at ``ray_address``).
    Raises :class:`BudgetError` (exit 10) when a cell is over a budget,
    :class:`RegressionError` (exit 11) when ``baseline`` (an earlier manifest) shows a
    regression, and the first cell's error when one failed, after writing everything."""
    from edgekit.build.baseline import compare, describe, read_manifest
    from edgekit.progress import stage

    started = time.perf_counter()
    run_jobs = executors.executor(executor)
    config = config if isinstance(config, BuildConfig) else load_config(config)
    out = Path(output_dir)
    old = read_manifest(baseline) if baseline is not None else None
    models, cells = plan(config)
    stage(f"build: {len(cells)} cells ({len(models)} models x {len(config.targets)} targets)")
    tools = toolchain()
    cache = CellCache(cache_dir)
    by_name = {m.spec.name: m for m in models}
    targets = {t.name: t for t in config.targets}
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        cell.key = _key(
            by_name[cell.model], targets[cell.target], cell.precision, tools, config.bench
        )
        groups.setdefault((cell.model, cell.target), []).append(cell)

    todo: list[ExportJob] = []
    for (model, target), group in groups.items():
        missing = []
        for cell in group:
            hit = cache.get(cell.key) if use_cache else None
            if hit is None:
                missing.append(cell)
            else:
                (cell.record, cell.stored), cell.status = hit, "cached"
        if missing:
            todo.append(_job(by_name[model], targets[target], [c.precision for c in missing]))
    errors: dict[tuple[str, str], EdgekitError] = {}
    for cell in cells:
        if cell.status == "cached":
            _gate(cell, targets[cell.target], on_device=False)
    over_budget = any(_over_budget(c) for c in cells)
    if over_budget and not keep_going:
        todo = []  # fail fast: a cached cell is over budget already
    if todo:
        stage(f"build: exporting {len(todo)} model/target jobs on the {executor} executor")
    for job, result in run_jobs(todo, jobs, ray_address):
        group = {c.precision: c for c in groups[(job.model, job.target)]}
        try:
            result.raise_error()
        except EdgekitError as exc:
            errors[(job.model, job.target)] = exc
            for precision in job.precisions:
                group[precision].status = "failed"
                group[precision].error = first_line(exc)
                stage(f"cell {group[precision].id}: failed: {first_line(exc)}")
            if not keep_going:
                break
            continue
        for produced in result.outputs:
            cell = group[produced.precision]
            cell.record, cell.status = produced.record, "exported"
            cell.stored = cache.put(cell.key, produced.record, produced.files)
            # one export makes all the job's precisions: each cell reports that shared time
            cell.seconds = result.seconds
            stage(f"cell {cell.id}: exported in {result.seconds:.1f} s")
            _gate(cell, targets[cell.target], on_device=False)
            over_budget |= _over_budget(cell)
        if over_budget and not keep_going:
            break
    stop = (bool(errors) or over_budget) and not keep_going
    for cell in cells:
        if cell.status == "planned":
            cell.status = "skipped"
    if not stop:
        timing = [(c, _untimed(c, targets[c.target], config)) for c in cells]
        _time_cells(
            [(c, d) for c, d in timing if d and c.status in ("exported", "cached")], config, cache
        )
    for cell in cells:
        if cell.status in ("exported", "cached"):
            cell.status = "built" if cell.status == "exported" else "cached"
            _summarise(cell, targets[cell.target])
            cell.files = _files(_place(cell.stored, out / cell.model / cell.target))
            _gate(cell, targets[cell.target], on_device=True)
            if _over_budget(cell):
                cell.status = "over-budget"
        elif cell.exc is not None:
            errors.setdefault((cell.model, cell.target), cell.exc)
        stage(f"cell {cell.id}: {cell.status}")
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "config": str(config.path),
        "config_sha256": _sha256(config.path),
        "toolchain": tools,
        "executor": executor,
        "models": {
            m.spec.name: {"path": str(m.path), "sha256": m.sha256, "format": m.format}
            for m in models
        },
        "devices": {d.name: d.url for d in config.devices.values()},
        "cells": [c.to_json() for c in cells],
        "seconds": round(time.perf_counter() - started, 2),
    }
    if old is not None:
        manifest["baseline"] = {"path": str(baseline), **compare(old, manifest)}
    _write_outputs(out, manifest, cells)
    over = [c for c in cells if c.status == "over-budget"]
    if over:
        raise BudgetError(
            f"{len(over)} cell(s) over budget: " + "; ".join(_over(c) for c in over[:3])
        )
    failed = [errors[k] for k in groups if k in errors]  # the first in plan order
    if failed:
        raise failed[0]
    regressions = (manifest.get("baseline") or {}).get("regressions") or []
    if regressions:
        raise RegressionError(
            f"{len(regressions)} regression(s) against {baseline}: "
            + "; ".join(describe(r) for r in regressions[:3])
        )
    return manifest


def _summarise(cell: Cell, target: TargetSpec) -> None:
    """The first device's figures at the top of the record (the summary, the report and
    --baseline compare those); every device's stay under ``devices``."""
    first = (cell.record.get("devices") or {}).get(target.devices[0])
    if first:
        cell.record["timing_ms"], cell.record["memory_mib"] = (
            first["timing_ms"],
            first["memory_mib"],
        )
        cell.record["p50_ms"] = first["timing_ms"]["p50"]
        cell.record["peak_mib"] = first["memory_mib"]["increase"]


def _on(budget: dict[str, Any]) -> str:
    return f" on {budget['device']}" if budget.get("device") else ""


def _over(cell: Cell) -> str:
    bad = [b for b in cell.budgets if not b["ok"]]
    parts = [
        f"{b['budget']}{_on(b)} {_fmt(b['value'], '.4g')} (budget {b['op']} {b['limit']:g})"
        for b in bad
    ]
    return f"{cell.id} " + ", ".join(parts)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _place(files: list[Path], folder: Path) -> list[Path]:
    """Plain copies of a cell's files in its output folder (the cache keeps the originals)."""
    _ensure(folder)
    placed = []
    for src in files:
        dst = folder / src.name
        tmp = folder / f".{src.name}.{os.getpid()}.partial"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        placed.append(dst)
    return placed


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_outputs(out: Path, manifest: dict[str, Any], cells: list[Cell]) -> None:
    _ensure(out)
    _write(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    _write(out / "summary.md", summary_markdown(manifest))
    _write(out / "junit.xml", junit_xml(cells))
    from edgekit.build.report import render

    _write(out / "report.html", render(manifest))


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def summary_markdown(manifest: dict[str, Any]) -> str:
    cells = manifest["cells"]
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    lines = [
        "# edgekit build",
        "",
        f"{len(cells)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        f"in {manifest['seconds']:.1f} s; edgekit {manifest['toolchain'].get('edgekit', '?')}, "
        f"Python {manifest['toolchain']['python']}",
        "",
        "| cell | status | size MiB | top-1 agreement | cosine | p50 ms | budgets |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        agreement = c.get("agreement") or {}
        size = c.get("size_bytes")
        budgets = ", ".join(
            f"{'✓' if b['ok'] else '✗'} {b['budget']}{_on(b)} {b['op']} {b['limit']:g}"
            for b in c["budgets"]
        )
        lines.append(
            f"| {c['id']} | {c['status']} | {_fmt(size and size / 2**20, '.3f')} | "
            f"{_fmt(agreement.get('top1_agreement'), '.2%')} | "
            f"{_fmt(agreement.get('mean_cosine'), '.5f')} | {_fmt(c.get('p50_ms'), '.3f')} | "
            f"{budgets or c.get('error') or ''} |"
        )
    base = manifest.get("baseline")
    if base:
        from edgekit.build.baseline import describe

        lines += ["", f"Against the baseline {base['path']}:"]
        lines += [f"- regression: {describe(r)}" for r in base["regressions"]] or ["- none"]
    return "\n".join(lines) + "\n"


def junit_xml(cells: list[Cell]) -> str:
    failures = sum(c.status in ("over-budget", "failed") for c in cells)
    skipped = sum(c.status == "skipped" for c in cells)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name="edgekit build" tests="{len(cells)}" failures="{failures}" '
        f'skipped="{skipped}">',
    ]
    for c in cells:
        head = f"  <testcase classname={quoteattr(c.model)} name={quoteattr(c.id)}"
        head += f' time="{c.seconds:.2f}"'
        if c.status == "over-budget":
            message = escape(_over(c))
            out += [f"{head}>", f'    <failure message="over budget">{message}</failure>']
            out.append("  </testcase>")
        elif c.status == "failed":
            out += [f"{head}>", f"    <error message={quoteattr(c.error or '')}/>", "  </testcase>"]
        elif c.status == "skipped":
            out += [f"{head}>", "    <skipped/>", "  </testcase>"]
        else:
            out.append(f"{head}/>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"
