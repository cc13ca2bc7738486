"""The real-model set (edgekit/realmodels.py, DEVELOPERS.md) at every backend x precision it can
take: size ratio to the source, agreement with the FP32 original, warnings, and p50 latency
ratio to the FP32 artifact of the same runtime (one `edgekit.benchmark` run per model and
backend: 1 thread pinned to one CPU, interleaved rounds, FP32 first so ratios are to it).

Each cell is exported through `edgekit.export` with real calibration / evaluation samples from
`realmodels.write_inputs` (separate seeds) and the set's `input_shapes`. Agreement is measured
here against the original file run in its own runtime (onnxruntime for .onnx, LiteRT for
.tflite), with a task figure per kind: classification -> top-1 agreement; detection -> top
anchor agreement on the score map (the anchor the model's package would keep first); sequence
(CTC OCR) -> per-step arg-max agreement; plus cosine and max |diff| / FP32 output range (worst
output). A cell that fails prints its one-line error and the table goes on. The checks at the
end are issue 9's: int8 <= 0.30x the source on ONNX Runtime and OpenVINO for models over ~1M
parameters; nothing larger than its source without a warning; ONNX Runtime int8 not slower
than fp32 (or a warning that says so).

    EDGEKIT_MODELS_DIR=/tmp/rmcache .venv/bin/python tools/bench_real_models.py \
        [--models orientation,ocr] [--backends onnxruntime] [--precisions fp32,int8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGEKIT_PROGRESS", "0")

import numpy as np

import edgekit
from edgekit import realmodels
from edgekit.backends import backend_names, get_backend
from edgekit.bench.sysinfo import cpu_info, describe_cpu
from edgekit.errors import first_line
from edgekit.model import detect_format
from edgekit.realmodels import original_runner, parameters, read_feeds, scores

ROOT = Path(__file__).resolve().parent.parent
BIG = 1_000_000  # parameters above which int8 must be <= 0.30x the source
INT8_SIZE = 0.30


def task_metric(name: str, want: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> str:
    """The figure that says whether the artifact does the model's job as the original does."""
    kind = realmodels.REAL_MODELS[name].kind
    if kind == "classification":
        w = np.stack([o[0].reshape(-1) for o in want]).argmax(-1)
        g = np.stack([o[0].reshape(-1) for o in got]).argmax(-1)
        return f"top-1 {np.mean(w == g):.0%}"
    if kind == "detection":
        w = np.array([scores(name, o).argmax() for o in want])
        g = np.array([scores(name, o).argmax() for o in got])
        return f"top-anchor {np.mean(w == g):.0%}"
    if kind == "sequence":  # (steps, batch, classes)
        classes = want[0][0].shape[-1]
        w = np.concatenate([o[0].reshape(-1, classes).argmax(-1) for o in want])
        g = np.concatenate([o[0].reshape(-1, classes).argmax(-1) for o in got])
        return f"step-argmax {np.mean(w == g):.1%}"
    return "-"  # regression: cosine and diff/range say it


def closeness(want: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> tuple[float, float]:
    """(worst per-output cosine, worst per-output max |diff| / FP32 range) over the samples."""
    cosines, rel = [], []
    for k in range(len(want[0])):
        w = np.stack([o[k] for o in want]).astype(np.float64)
        g = np.stack([np.asarray(o[k]).reshape(want[0][k].shape) for o in got]).astype(np.float64)
        nw, ng = np.linalg.norm(w), np.linalg.norm(g)
        cosines.append(float(w.ravel() @ g.ravel() / (nw * ng)) if nw and ng else float(nw == ng))
        rel.append(float(np.abs(w - g).max() / (np.ptp(w) or 1.0)))
    return min(cosines), max(rel)


# ---------------------------------------------------------------- one model


def _export(path: Path, name: str, backend: str, precisions: list[str], work: Path, args):
    """{precision: report or exception}: all in one export, else one by one."""
    kw = dict(
        calibration=work / "calib.npz",
        eval_data=work / "eval.npz",
        input_shapes=realmodels.REAL_MODELS[name].shapes,
        calibration_samples=args.calibration_samples,
        eval_samples=args.eval_samples,
    )
    out = work / backend
    try:
        reports = edgekit.export(path, backend, precisions, output_dir=out, **kw)
        return dict(zip(precisions, reports, strict=True))
    except Exception:
        found: dict[str, Any] = {}
        for p in precisions:
            try:
                found[p] = edgekit.export(path, backend, p, output_dir=out, **kw)
            except Exception as exc:
                found[p] = exc
        return found


def _latency(reports: dict[str, Any], bench_inputs: Path, args) -> dict[str, Any]:
    """{precision: p50 ratio to fp32 (or None), or the benchmark's exception}."""
    ok = [p for p, r in reports.items() if not isinstance(r, Exception)]
    if "fp32" not in ok or args.runs == 0:
        return {p: None for p in ok}
    order = ["fp32", *[p for p in ok if p != "fp32"]]
    try:
        result = edgekit.benchmark(
            [reports[p].artifact for p in order],
            runs=args.runs,
            warmup=args.warmup,
            rounds=args.rounds,
            threads=1,
            pin=args.cpu,
            inputs=bench_inputs,
        )
    except Exception as exc:
        return {p: exc for p in order}
    return {
        p: {"ratio": r["vs_first"]["p50"], "p50_ms": r["timing_ms"]["p50"]}
        for p, r in zip(order, result.results, strict=True)
    }


def run_model(name: str, backends: list[str], precisions: list[str] | None, args) -> list[dict]:
    model = realmodels.REAL_MODELS[name]
    path = realmodels.fetch(name)
    fmt = detect_format(path)
    work = Path(tempfile.mkdtemp(prefix=f"real-{name}-", dir=args.out))
    realmodels.write_inputs(name, work / "calib.npz", args.calibration_samples, args.seed)
    realmodels.write_inputs(name, work / "eval.npz", args.eval_samples, args.seed + 1)
    one = {k: v[0] for k, v in np.load(work / "eval.npz").items()}
    np.savez(work / "bench.npz", **one)  # one sample, batch 1, for the runners
    feeds = read_feeds(work / "eval.npz")
    run = original_runner(path)
    want = [run(f) for f in feeds]
    params = parameters(path)
    cells = []
    for backend in backends:
        caps = get_backend(backend).capabilities
        if fmt not in caps.sources:
            continue
        offered = [p for p in caps.precisions if precisions is None or p in precisions]
        if not offered:
            continue
        reports = _export(path, name, backend, offered, work, args)
        latency = _latency(reports, work / "bench.npz", args)
        for p in offered:
            cell: dict[str, Any] = {"model": name, "kind": model.kind, "params": params}
            cell |= {"backend": backend, "precision": p}
            r = reports[p]
            if isinstance(r, Exception):
                cell["error"] = f"{type(r).__name__}: {first_line(r)}"
                cells.append(cell)
                continue
            session = edgekit.load(r.artifact)
            got = [session.run(f) for f in feeds]
            cos, rel = closeness(want, got)
            lat = latency.get(p)
            cell |= {
                "size_ratio": r.size_ratio,
                "size_bytes": r.size_bytes,
                "cosine": cos,
                "diff_over_range": rel,
                "task": task_metric(name, want, got),
                "report_cosine": r.agreement.mean_cosine,
                "warnings": r.warnings,
                "p50_ratio": lat.get("ratio") if isinstance(lat, dict) else None,
                "p50_ms": lat.get("p50_ms") if isinstance(lat, dict) else None,
            }
            if isinstance(lat, Exception):
                cell["latency_error"] = f"{type(lat).__name__}: {first_line(lat)}"
            cells.append(cell)
        print_cells([c for c in cells if c["backend"] == backend], args)
    return cells


# ---------------------------------------------------------------- output


_HEAD = f"{'model':<14}{'backend':<12}{'precision':<14}{'size x':>7}{'cosine':>9}"
_HEAD += f"{'diff/rng':>9}{'  task':<20}{'warn':>5}{'p50 x':>7}{'p50 ms':>9}"


def print_cells(cells: list[dict], args) -> None:
    if args.json:
        return
    for c in cells:
        left = f"{c['model']:<14}{c['backend']:<12}{c['precision']:<14}"
        if "error" in c:
            print(f"{left}FAILED {c['error']}", flush=True)
            continue
        ratio = "-" if c["p50_ratio"] is None else f"{c['p50_ratio']:.2f}"
        ms = "-" if c["p50_ms"] is None else f"{c['p50_ms']:.2f}"
        print(
            f"{left}{c['size_ratio']:>7.2f}{c['cosine']:>9.4f}{c['diff_over_range']:>9.3f}"
            f"  {c['task']:<18}{len(c['warnings']):>5}{ratio:>7}{ms:>9}",
            flush=True,
        )
        if "latency_error" in c:
            print(f"{'':<40}latency FAILED {c['latency_error']}", flush=True)


def checks(cells: list[dict]) -> list[str]:
    """Issue 9's size and speed claims, one line each: PASS / FAIL and why."""
    out = []
    ok = [c for c in cells if "error" not in c]
    for c in ok:
        tag = f"{c['model']} {c['backend']} {c['precision']}"
        if c["precision"] == "int8" and c["backend"] != "tflite" and c["params"] > BIG:
            verdict = "PASS" if c["size_ratio"] <= INT8_SIZE else "FAIL"
            out.append(f"{verdict} {tag}: size {c['size_ratio']:.2f}x <= {INT8_SIZE}x")
        if c["size_ratio"] > 1.05:
            said = any("size of its source" in w for w in c["warnings"])
            out.append(
                f"{'PASS' if said else 'FAIL'} {tag}: {c['size_ratio']:.2f}x its source, "
                f"{'with' if said else 'WITHOUT'} a warning saying why"
            )
        if c["backend"] == "onnxruntime" and c["precision"] == "int8" and c["p50_ratio"]:
            slower = c["p50_ratio"] > 1.0
            said = any("slower" in w or "faster" in w for w in c["warnings"])
            verdict = "PASS" if not slower or said else "FAIL"
            how = "slower than" if slower else "not slower than"
            note = (" (a warning says so)" if said else " (no warning says so)") if slower else ""
            out.append(f"{verdict} {tag}: p50 {c['p50_ratio']:.2f}x, {how} fp32{note}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help=f"comma-separated, of: {', '.join(realmodels.REAL_MODELS)}")
    ap.add_argument("--backends", help="comma-separated (default: every registered backend)")
    ap.add_argument("--precisions", help="comma-separated (default: all a backend offers)")
    ap.add_argument("--calibration-samples", type=int, default=16)
    ap.add_argument("--eval-samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="calibration seed; evaluation: seed+1")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per artifact (0: no timing)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cpu", default="0", help="CPU the runners are pinned to")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_real_models")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else list(realmodels.REAL_MODELS)
    unknown = [n for n in names if n not in realmodels.REAL_MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(realmodels.REAL_MODELS)}")
    backends = args.backends.split(",") if args.backends else backend_names()
    precisions = args.precisions.split(",") if args.precisions else None
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    if not args.json:
        print(f"cpu      {describe_cpu(cpu)}")
        print(
            f"samples  {args.calibration_samples} calibration (seed {args.seed}), "
            f"{args.eval_samples} evaluation (seed {args.seed + 1}); latency: {args.runs} runs + "
            f"{args.warmup} warm-up, {args.rounds} interleaved rounds, 1 thread pinned to CPU "
            f"{args.cpu}, ratio to the same runtime's fp32"
        )
        print(
            "agreement vs the FP32 original in its own runtime: worst-output cosine, max |diff|"
            " / FP32 range, task figure"
        )
        print(_HEAD, flush=True)
    cells: list[dict] = []
    for name in names:
        try:
            cells += run_model(name, backends, precisions, args)
        except Exception as exc:  # the model could not be fetched or run at all
            cell = {"model": name, "backend": "-", "precision": "-"}
            cell["error"] = f"{type(exc).__name__}: {first_line(exc)}"
            cells.append(cell)
            print_cells([cell], args)
    found = checks(cells)
    if args.json:
        json.dump({"cpu": cpu, "cells": cells, "checks": found}, sys.stdout, indent=2, default=str)
        print()
    else:
        print("checks")
        for line in found:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
