"""``edgekit build``: plan the matrix, build each cell or take it from the cache, measure what
the budgets ask for, gate, and write the manifest, a markdown summary and JUnit XML.

Order matters for the user: the whole matrix is planned (every model found, every target
resolved, every model format and precision checked against the backend's declared
capabilities) before the first export, so an impossible cell is refused by name at once. A
model's cells on one target are exported in one call (one load, one conversion for all its
precisions). Cells run one after another in this process: exports already use both cores of a
small machine, and latency budgets must be measured alone (1 thread, pinned, nothing else
running). Each finished cell is stored in the content-hash cache at once, so an interrupted
build keeps what it finished.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from edgekit.build.cache import CellCache, cache_key
from edgekit.build.config import (
    BenchSpec,
    BuildConfig,
    ModelSpec,
    TargetSpec,
    call_entry,
    load_config,
    resolve_path,
)
from edgekit.errors import BudgetError, EdgekitError, RegressionError, UsageError, first_line

MANIFEST_SCHEMA = "edgekit-build-manifest/1"
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
            **{
                k: self.record.get(k)
                for k in ("size_bytes", "agreement", "p50_ms", "peak_mib", "timing_ms", "recipe")
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
            "input_shapes": model.spec.input_shapes,
            "data": model.data_sha256,
            "samples": {k: model.data.get(k) for k in ("calibration_samples", "eval_samples")},
            "bench": [bench.runs, bench.pin],
            "tools": tools,
        }
    )


def _export(model: _Model, target: TargetSpec, precisions: list[str], work: Path) -> list[Any]:
    import edgekit

    kw: dict[str, Any] = {
        "output_dir": work,
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
    recipe = {k: tuple(v) if isinstance(v, list) else v for k, v in target.recipe.items()}
    reports = edgekit.export(model.path, target.name, precisions, **kw, **recipe)
    return list(reports)


def _timing(artifact: Path, bench: BenchSpec) -> dict[str, Any]:
    """Timing and memory on this machine: a fresh runner process, 1 thread, the benchmark's
    random inputs of the artifact's shapes."""
    import edgekit

    result = edgekit.benchmark(
        [artifact], runs=bench.runs, warmup=5, rounds=1, threads=1, pin=bench.pin
    )
    r = result.results[0]
    return {"timing_ms": r["timing_ms"], "memory_mib": r["memory_mib"]}


def _gate(cell: Cell, budgets: dict[str, float]) -> None:
    rec = cell.record
    agreement = rec.get("agreement") or {}
    figures = {
        "max_size_mib": (rec.get("size_bytes", 0) / 2**20, "<="),
        "min_top1_agreement": (agreement.get("top1_agreement"), ">="),
        "min_cosine": (agreement.get("mean_cosine"), ">="),
        "max_p50_ms": (rec.get("p50_ms"), "<="),
        "max_peak_mib": (rec.get("peak_mib"), "<="),
    }
    for name, limit in budgets.items():
        value, op = figures[name]
        ok = value is not None and (value <= limit if op == "<=" else value >= limit)
        cell.budgets.append(
            {"budget": name, "limit": limit, "value": value, "op": op, "ok": bool(ok)}
        )
    if any(not b["ok"] for b in cell.budgets):
        cell.status = "over-budget"


def _files(placed: list[Path]) -> list[dict[str, Any]]:
    """Name, sha256 and size of a cell's own files as placed (not the whole folder's: the
    other cells' artifacts there are hashed once, for their own cells)."""
    return [
        {"name": p.name, "sha256": _sha256(p), "size_bytes": p.stat().st_size}
        for p in sorted(placed)
    ]


def build(
    config: str | Path | BuildConfig = "edgekit.toml",
    output_dir: str | Path = "edgekit-build",
    *,
    use_cache: bool = True,
    keep_going: bool = False,
    cache_dir: str | Path | None = None,
    baseline: str | Path | None = None,
) -> dict[str, Any]:
    """Build the matrix of ``config`` into ``output_dir``; returns the manifest (also written
    as ``manifest.json``). Raises :class:`BudgetError` (exit 10) when a cell is over a budget,
    :class:`RegressionError` (exit 11) when ``baseline`` (an earlier manifest) shows a
    regression, and the first cell's error when one failed, after writing everything."""
    from edgekit.build.baseline import compare, describe, read_manifest
    from edgekit.progress import stage

    started = time.perf_counter()
    config = config if isinstance(config, BuildConfig) else load_config(config)
    out = Path(output_dir)
    old = read_manifest(baseline) if baseline is not None else None
    models, cells = plan(config)
    stage(f"build: {len(cells)} cells ({len(models)} models x {len(config.targets)} targets)")
    tools = toolchain()
    cache = CellCache(cache_dir)
    by_name = {m.spec.name: m for m in models}
    targets = {t.name: t for t in config.targets}
    for cell in cells:
        cell.key = _key(
            by_name[cell.model], targets[cell.target], cell.precision, tools, config.bench
        )
    failure: EdgekitError | None = None
    for target in config.targets:
        for model in models:
            group = [c for c in cells if c.model == model.spec.name and c.target == target.name]
            if failure is not None and not keep_going:
                for c in group:
                    c.status = "skipped"
                continue
            try:
                _build_group(model, target, group, cache, use_cache, out, config.bench)
            except EdgekitError as exc:
                failure = failure or exc
                for c in group:
                    if c.status == "planned":
                        c.status, c.error = "failed", first_line(exc)
            for c in group:
                if c.status in ("built", "cached"):
                    _gate(c, target.budgets)
                    if c.status == "over-budget" and failure is None:
                        failure = BudgetError(_over(c))
                stage(f"cell {c.id}: {c.status}")
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "config": str(config.path),
        "config_sha256": _sha256(config.path),
        "toolchain": tools,
        "models": {
            m.spec.name: {"path": str(m.path), "sha256": m.sha256, "format": m.format}
            for m in models
        },
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
    if failure is not None:
        raise failure
    regressions = (manifest.get("baseline") or {}).get("regressions") or []
    if regressions:
        raise RegressionError(
            f"{len(regressions)} regression(s) against {baseline}: "
            + "; ".join(describe(r) for r in regressions[:3])
        )
    return manifest


def _over(cell: Cell) -> str:
    bad = [b for b in cell.budgets if not b["ok"]]
    parts = [
        f"{b['budget']} {_fmt(b['value'], '.4g')} (budget {b['op']} {b['limit']:g})" for b in bad
    ]
    return f"{cell.id} " + ", ".join(parts)


def _build_group(
    model: _Model,
    target: TargetSpec,
    group: list[Cell],
    cache: CellCache,
    use_cache: bool,
    out: Path,
    bench: BenchSpec,
) -> None:
    folder = out / model.spec.name / target.name
    missing = []
    for cell in group:
        hit = cache.get(cell.key) if use_cache else None
        if hit is None:
            missing.append(cell)
            continue
        record, files = hit
        cell.record, cell.status = record, "cached"
        cell.files = _files(_place(files, folder))
    if not missing:
        return
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=_ensure(out)))
    try:
        t0 = time.perf_counter()
        reports = _export(model, target, [c.precision for c in missing], work / "out")
        # one export makes all the group's precisions: each cell reports that shared time
        exported = time.perf_counter() - t0
        for cell, report in zip(missing, reports, strict=True):
            meta = json.loads(Path(report.sidecar).read_text())
            produced = sorted(
                {Path(report.artifact).parent / f for f in meta["artifact"]["files"]}
                | {Path(report.sidecar)}
            )
            record = {
                "size_bytes": report.size_bytes,
                "agreement": report.agreement.to_json(),
                "recipe": meta.get("recipe"),
                "warnings": report.warnings,
            }
            if bench.runs:
                record.update(_timing(Path(report.artifact), bench))
                record["p50_ms"] = record["timing_ms"]["p50"]
                record["peak_mib"] = record["memory_mib"]["increase"]
            files = cache.put(cell.key, record, produced)
            cell.record, cell.status = record, "built"
            cell.files = _files(_place(files, folder))
            cell.seconds = exported
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
            f"{'✓' if b['ok'] else '✗'} {b['budget']} {b['op']} {b['limit']:g}"
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
