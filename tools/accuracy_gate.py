"""The accuracy gate on every backend, measured: plain INT8 vs INT8 with the gate's float layers
vs FP32, for models on which plain INT8 loses accuracy, plus per-layer sensitivity rankings
compared across backends and `--precision auto`.

For each model and backend: the models trained on scikit-learn's digits (edgekit.samples:
transformer, transformer-192 at ViT-Tiny's width, sensitive-cnn, digits-cnn; top-1 against the
labels) and the real-model set's orientation classifier (real weights and inputs; top-1
agreement with its FP32 artifact); a backend that cannot take a model yet is reported, skipped:

* FP32, plain INT8 and `--max-accuracy-drop BUDGET` INT8 accuracy on the labelled held-out
  digits (top-1 against the labels), the float layers the gate chose out of all layers;
* p50 latency of the three in ONE interleaved `edgekit.benchmark` run (1 thread, pinned, each
  artifact in its own process), as ratios to FP32;
* the sensitivity ranking (each layer quantized alone) and the Spearman rank correlation of
  every pair of backends;
* `--precision auto` on `--auto-target` (TFLite by default): the table it chose from.

    .venv/bin/python tools/accuracy_gate.py [--models transformer-192,sensitive-cnn,orientation]
        [--budget 1] [--backends onnxruntime,openvino,tflite] [--runs 300] [--rounds 10]
        [--cpu 0] [--json]
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("EDGEKIT_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import edgekit
from edgekit import realmodels, samples
from edgekit.accuracy import spearman
from edgekit.layer_report import sensitivity

#: model name -> its builder from edgekit.samples (trains, or loads from the cache)
MODELS = {
    "transformer": lambda: samples.train_torch_transformer(),
    # ViT-Tiny's width (192, 6 heads): matrix products big enough for int8 to pay off at all
    "transformer-192": lambda: samples.train_torch_transformer(dim=192, heads=6),
    "sensitive-cnn": lambda: samples.train_torch_sensitive_cnn(),
    "digits-cnn": lambda: samples.train_torch_cnn(),
}
#: models of the real-model set (edgekit.realmodels, real weights): no labels, so their
#: "accuracy" is top-1 agreement with the FP32 artifact on real inputs
REAL = ("orientation",)
N_CALIB = 200
N_REAL_EVAL = 200


def _data(tmp: Path, model: Any) -> tuple[Path, Path, Any]:
    import torch

    x_train, _, x_test, y_test = samples.split(0)
    example = getattr(model, "example_input", None)
    x = samples.to_input(x_train[:N_CALIB])
    xt = samples.to_input(x_test)
    if example is not None and tuple(example.shape) != x.shape[1:]:
        # a model on another input form (e.g. 64 pixels) says so with example_input
        x = x.reshape(len(x), *example.shape[1:])
        xt = xt.reshape(len(xt), *example.shape[1:])
    # the arrays are named after the exported program's input: forward's first argument
    key = next(iter(inspect.signature(model.forward).parameters))
    np.savez(tmp / "calib.npz", **{key: x})
    np.savez(tmp / "eval.npz", **{key: xt}, labels=y_test)
    ex = (torch.zeros(1, *x.shape[1:]),)
    return tmp / "calib.npz", tmp / "eval.npz", ex


def _pt2(model: Any, example: Any, path: Path) -> Path:
    import torch

    torch.export.save(torch.export.export(model, example), path)
    return path


def _real(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """The real model's file and real calibration / held-out inputs (separate seeds)."""
    realmodels.write_inputs(name, tmp / "calib.npz", N_CALIB, 0)
    realmodels.write_inputs(name, tmp / "eval.npz", N_REAL_EVAL, 1)
    return realmodels.fetch(name), tmp / "calib.npz", tmp / "eval.npz"


def _predictions(artifact: Path, eval_npz: Path) -> np.ndarray:
    data = np.load(eval_npz)
    session = edgekit.load(artifact)
    name = session.inputs[0].name
    x = next(data[k] for k in data.files if k != "labels")
    # a real model's samples carry their batch axis ((N, 1, C, H, W)), the digits' do not
    one = (
        (lambda i: x[i]) if x.ndim == len(session.inputs[0].shape) + 1 else (lambda i: x[i : i + 1])
    )
    return np.asarray([int(np.argmax(session.run({name: one(i)})[0])) for i in range(len(x))])


def _accuracy(artifact: Path, eval_npz: Path, reference: np.ndarray | None = None) -> float:
    """Top-1 % against the labels, or against ``reference`` (the FP32 top-1) where given."""
    y = np.load(eval_npz)["labels"] if reference is None else reference
    return float(np.mean(_predictions(artifact, eval_npz) == y) * 100.0)


def _cell(
    source: Path,
    backend: str,
    calib: Path,
    ev: Path,
    out: Path,
    budget: float,
    shapes: dict | None = None,
) -> dict:
    common = dict(
        calibration=str(calib),
        eval_data=str(ev),
        eval_samples=359,
        output_dir=out,
        input_shapes=shapes,
    )
    fp32 = edgekit.export(source, backend, "fp32", name="fp32", force=True, **common)
    plain = edgekit.export(source, backend, "int8", name="plain", force=True, **common)
    started = time.perf_counter()
    try:
        gated = edgekit.export(
            source, backend, "int8", name="gated", force=True, max_accuracy_drop=budget, **common
        )
        gate = gated.gate or {}
        gated_path = gated.artifact
    except edgekit.EdgekitError as exc:
        gate, gated_path = {"met": False, "error": str(exc)}, None
    # without labels, accuracy is agreement with the FP32 artifact's top-1 (the gate's metric)
    labelled = "labels" in np.load(ev).files
    ref = None if labelled else _predictions(fp32.artifact, ev)
    row = {
        "backend": backend,
        "fp32": _accuracy(fp32.artifact, ev) if labelled else 100.0,
        "int8": _accuracy(plain.artifact, ev, ref),
        "gated": _accuracy(gated_path, ev, ref) if gated_path else None,
        "met": gate.get("met"),
        "float_layers": gate.get("float_layers"),
        "layers": gate.get("layers"),
        "gate_seconds": round(time.perf_counter() - started, 1),
        "sizes": {
            "fp32": fp32.size_bytes,
            "int8": plain.size_bytes,
            "gated": gated.size_bytes if gated_path else None,
        },
        "artifacts": [str(fp32.artifact), str(plain.artifact)]
        + ([str(gated_path)] if gated_path else []),
    }
    if gate.get("error"):
        row["error"] = gate["error"]
    return row


def _latency(row: dict, args: argparse.Namespace) -> None:
    result = edgekit.benchmark(
        row["artifacts"],
        runs=args.runs,
        warmup=args.runs // 10,
        rounds=args.rounds,
        threads=1,
        pin=args.cpu,
    )
    p50 = [r["timing_ms"]["p50"] for r in result.to_json()["results"]]
    row["p50_ms"] = dict(zip(("fp32", "int8", "gated"), p50, strict=False))
    row["p50_vs_fp32"] = {k: round(v / p50[0], 3) for k, v in row["p50_ms"].items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="transformer-192,sensitive-cnn,orientation")
    ap.add_argument("--backends", default="onnxruntime,openvino,tflite")
    ap.add_argument("--budget", type=float, default=1.0, help="--max-accuracy-drop, points")
    ap.add_argument("--auto-target", default="tflite")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cpu", default="0")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    backends = args.backends.split(",")
    report: dict[str, Any] = {"cpu": _cpu(), "budget": args.budget, "models": {}}
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-gate-"))
    for name in args.models.split(","):
        shapes = None
        if name in REAL:
            (tmp / name).mkdir(parents=True, exist_ok=True)
            pt2, calib, ev = _real(tmp / name, name)
            shapes = dict(realmodels.REAL_MODELS[name].shapes)
        else:
            model = MODELS[name]()
            calib, ev, example = _data(tmp, model)
            pt2 = _pt2(model, example, tmp / f"{name}.pt2")
        rows = []
        usable: list[str] = []
        skipped: dict[str, str] = {}
        for backend in backends:
            try:
                row = _cell(pt2, backend, calib, ev, tmp / name / backend, args.budget, shapes)
            except edgekit.EdgekitError as exc:
                # a cell the matrix does not have yet (an ONNX model to TFLite): say so, go on
                _say(args, f"{name} {backend}: cannot export: {exc}")
                skipped[backend] = str(exc)
                continue
            usable.append(backend)
            _latency(row, args)
            rows.append(row)
            _say(args, f"{name} {backend}: {json.dumps(_brief(row))}")
        ranks = {}
        for backend in usable:
            sens = sensitivity(
                str(pt2), backend, str(calib), eval_data=str(ev), input_shapes=shapes
            )
            ranks[backend] = [s.to_json() for s in sens.layers]
        corr = {
            f"{a}~{b}": spearman(_layer_names(ranks[a]), _layer_names(ranks[b]))
            for a, b in itertools.combinations(usable, 2)
        }
        auto_target = args.auto_target if args.auto_target in usable else usable[0]
        auto = edgekit.export(
            pt2,
            auto_target,
            "auto",
            calibration=str(calib),
            eval_data=str(ev),
            eval_samples=359,
            output_dir=tmp / name / "auto",
            max_accuracy_drop=args.budget,
            input_shapes=shapes,
        )
        report["models"][name] = {
            "cells": rows,
            "skipped": skipped,
            "sensitivity": ranks,
            "spearman": corr,
            "auto": {
                "target": auto_target,
                "chose": auto.recipe.precision,
                "table": auto.choices,
            },
        }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    _print(report)
    return 0


def _layer_names(ranked: list[dict]) -> list[str]:
    """Ranked layer names, without ONNX Runtime's elementwise ops (no other backend has them)."""
    return [s["name"] for s in ranked if s.get("kind", "layer") == "layer"]


def _brief(row: dict) -> dict:
    return {k: row.get(k) for k in ("fp32", "int8", "gated", "met", "float_layers", "p50_vs_fp32")}


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr)


def _cpu() -> str:
    from edgekit.cpu import detect_isa

    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model} ({detect_isa() or 'unknown ISA'})"


def _print(report: dict) -> None:
    print(f"CPU: {report['cpu']}; budget {report['budget']} points of top-1 vs labels")
    head = (
        f"{'model':<14}{'backend':<12}{'fp32':>7}{'int8':>7}{'gated':>7}{'float':>7}"
        f"{'int8/fp32':>11}{'gated/fp32':>11}"
    )
    print(head + "   (accuracy %, float layers / all, p50 latency ratios)")
    for name, m in report["models"].items():
        for r in m["cells"]:
            floats = r["float_layers"]
            fl = "-" if floats is None else f"{len(floats)}/{r['layers'] or '?'}"
            g = "-" if r["gated"] is None else f"{r['gated']:.1f}"
            ratio = r["p50_vs_fp32"]
            print(
                f"{name:<14}{r['backend']:<12}{r['fp32']:>7.1f}{r['int8']:>7.1f}{g:>7}{fl:>7}"
                f"{ratio.get('int8', float('nan')):>11.3f}"
                f"{ratio.get('gated', float('nan')):>11.3f}"
            )
        print(f"  sensitivity Spearman: {m['spearman']}")
        for backend, ranked in m["sensitivity"].items():
            top = ", ".join(f"{s['name']} ({s['drop']:.1f})" for s in ranked[:5])
            print(f"  {backend:<12} most sensitive: {top}")
        a = m["auto"]
        print(f"  --precision auto on {a['target']} chose {a['chose']}:")
        for row in a["table"]:
            print(f"    {'*' if row.get('chosen') else ' '} {json.dumps(row)}")


if __name__ == "__main__":
    raise SystemExit(main())
