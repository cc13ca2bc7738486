"""The issue-11 sample models on every backend: plain int8 accuracy against FP32, on labels.

Trains (or loads from the cache) the two digits models of ``edgekit.samples`` on which
post-training int8 loses accuracy -- ``transformer`` (a small ViT with Locality
Self-Attention) and ``sensitive_cnn`` (a VGG CNN behind a per-pixel StandardScaler) --
exports each to every backend at int8, calibrated on training digits, runs the artifact on all
359 held-out test digits and prints, per backend: FP32 and int8 top-1 accuracy on the labels,
the drop in points, and the export's own int8/FP32 latency ratio (its speed check: 1 thread,
interleaved, on this machine).

    .venv/bin/python tools/accuracy_models.py [--models transformer,sensitive_cnn]
        [--backends onnxruntime,openvino,tflite] [--calibration 200] [--keep-float PATTERN]
        [--json]

``--keep-float`` is handed to every export as it is (a layer pattern, see README); a backend
that refuses it prints its one-line error in that row and the table goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("EDGEKIT_PROGRESS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import edgekit  # noqa: E402
from edgekit import samples  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "transformer": samples.train_torch_transformer,
    "sensitive_cnn": samples.train_torch_sensitive_cnn,
}
BACKENDS = ["onnxruntime", "openvino", "tflite"]


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    isa = [f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")]
    return f"{model or 'unknown CPU'} ({' '.join(isa) or 'no AVX2'})"


def _accuracy(session: Any, x: np.ndarray, y: np.ndarray) -> float:
    name = session.inputs[0].name
    logits = np.concatenate([session.run({name: x[i : i + 1]})[0] for i in range(len(x))])
    return samples.accuracy(logits, y)


def measure(
    model_name: str,
    backends: list[str],
    n_calib: int,
    keep_float: list[str],
    out_dir: Path,
    cache_dir: Path,
) -> list[dict[str, Any]]:
    import torch

    started = time.perf_counter()
    model = MODELS[model_name](cache_dir=cache_dir)
    train_s = time.perf_counter() - started
    x_train, _, x_test, y_test = samples.split()
    xtr, xte = samples.to_input(x_train), samples.to_input(x_test)
    with torch.no_grad():
        fp32 = samples.accuracy(model(torch.from_numpy(xte)).numpy(), y_test)
    name = "x"  # the forward() argument of both sample models
    calibration = [{name: xtr[i : i + 1]} for i in range(min(n_calib, len(xtr)))]
    held_out = [{name: xte[i : i + 1]} for i in range(len(xte))]
    rows = []
    for backend in backends:
        row: dict[str, Any] = {
            "model": model_name,
            "backend": backend,
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "train_or_load_s": round(train_s, 1),
            "fp32_accuracy": fp32,
            "keep_float": keep_float,
        }
        t = time.perf_counter()
        try:
            report = edgekit.export(
                model,
                backend,
                "int8",
                output_dir=out_dir / f"{model_name}-{backend}",
                example_inputs=(torch.from_numpy(xte[:1]),),
                calibration=calibration,
                eval_data=held_out,
                calibration_samples=len(calibration),
                eval_samples=len(held_out),
                name=model_name,
                force=True,
                **({"keep_float": tuple(keep_float)} if keep_float else {}),
            )
        except EdgekitError as exc:
            row["error"] = str(exc).splitlines()[0]
            rows.append(row)
            continue
        int8 = _accuracy(edgekit.load(report.artifact), xte, y_test)
        sidecar = json.loads(Path(report.sidecar).read_text())
        speed = sidecar.get("backend_details", {}).get("speed_check") or {}
        row.update(
            int8_accuracy=int8,
            drop_points=round(100 * (fp32 - int8), 2),
            mean_cosine=report.agreement.mean_cosine,
            speed_ratio=speed.get("ratio"),
            int8_slower=speed.get("slower"),
            fp32_ms=speed.get("fp32_ms"),
            int8_ms=speed.get("quantized_ms"),
            export_s=round(time.perf_counter() - t, 1),
            warnings=report.warnings,
        )
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--calibration", type=int, default=200, help="training digits to calibrate on")
    ap.add_argument("--keep-float", action="append", default=[], metavar="PATTERN")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".edgekit-cache")
    ap.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    backends = [b for b in args.backends.split(",") if b]
    with tempfile.TemporaryDirectory(prefix="accuracy-models-") as tmp:
        rows = [
            row
            for m in models
            for row in measure(m, backends, args.calibration, args.keep_float, Path(tmp), args.cache_dir)
        ]
    if args.json:
        json.dump({"cpu": _cpu(), "rows": rows}, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(f"CPU: {_cpu()}; int8 calibrated on {args.calibration} training digits, accuracy on "
          "the 359 test digits; speed = int8/fp32 latency from the export's speed check")
    head = f"{'model':<15}{'backend':<13}{'fp32':>7}{'int8':>7}{'drop':>7}{'cosine':>8}{'speed':>7}"
    print(head)
    for r in rows:
        lead = f"{r['model']:<15}{r['backend']:<13}{r['fp32_accuracy']:>7.2%}"
        if "error" in r:
            print(f"{lead}  error: {r['error']}")
            continue
        ratio = "-" if r["speed_ratio"] is None else f"{r['speed_ratio']:.2f}x"
        cos = "-" if r["mean_cosine"] is None else f"{r['mean_cosine']:.4f}"
        print(f"{lead}{r['int8_accuracy']:>7.2%}{r['drop_points']:>7.2f}{cos:>8}{ratio:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
