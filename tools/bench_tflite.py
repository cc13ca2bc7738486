"""TFLite/LiteRT figures for the digits CNN (1.07M parameters) at every precision, side by side.

Exports the Keras CNN (``samples.train_keras_cnn(width=16)``, saved as ``.keras``) and, when
litert-torch is installed, the PyTorch CNN (``.pt2``) to TFLite at fp32, fp16, int8,
int8-dynamic and int16x8, calibrating from ``calibration_data/digits``. For each artifact:
size relative to FP32, top-1 agreement with the FP32 artifact on the 359 held-out digits,
accuracy, and latency. Latency: all artifacts loaded in one process pinned to one CPU with one
thread (XNNPACK), timed in interleaved rounds (A B C A B C ...) so machine drift hits them
alike; p50/p90 and p50 relative to FP32.

    .venv/bin/python tools/bench_tflite.py [--rounds 30] [--iters 20] [--source keras|torch|both]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGEKIT_PROGRESS", "0")

from digits_artifacts import CALIBRATION, ROOT, prepare

import edgekit
from edgekit import samples

PRECISIONS = ["fp32", "fp16", "int8", "int8-dynamic", "int16x8"]


def _keras_source(out: Path) -> tuple[Path, Path]:
    """The Keras CNN saved as .keras, and the test digits in NHWC."""
    path = out / "digits_cnn_keras.keras"
    if not path.exists():
        samples.train_keras_cnn(width=16).save(path)
    _, _, x_test, y_test = samples.split()
    test = out / "digits_test_nhwc.npz"
    np.savez(test, image=samples.to_input(x_test, layout="NHWC"), labels=y_test)
    return path, test


def _export(model: Path, test: Path, out: Path, name: str) -> dict[str, edgekit.ExportReport]:
    n_test = len(np.load(test)["labels"])
    return {
        p: edgekit.export(
            model,
            "tflite",
            p,
            output_dir=out,
            name=name,
            calibration=CALIBRATION,
            eval_data=test,
            eval_samples=n_test,
        )
        for p in PRECISIONS
    }


def _outputs(session, x: np.ndarray) -> np.ndarray:
    name = session.inputs[0].name
    return np.concatenate([session.run({name: x[i : i + 1]})[0] for i in range(len(x))])


def _bench(reports: dict[str, edgekit.ExportReport], test: Path, args: argparse.Namespace) -> None:
    data = np.load(test)
    key = next(k for k in data.files if k != "labels")
    x, labels = data[key], data["labels"]
    sessions = {p: edgekit.load(r.artifact, threads=1) for p, r in reports.items()}
    logits = {p: _outputs(s, x) for p, s in sessions.items()}
    name = sessions["fp32"].inputs[0].name
    one = {name: x[:1]}
    for s in sessions.values():
        for _ in range(20):
            s.run(one)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for p, s in sessions.items():
            iters = max(1, args.iters // 10) if p == "int16x8" else args.iters
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(one)
                times[p].append(time.perf_counter() - t0)
    base_size = reports["fp32"].artifact.stat().st_size
    base_t = float(np.median(times["fp32"]))
    top_fp32 = logits["fp32"].argmax(1)
    print(
        f"{'precision':<14}{'size KiB':>9}{'vs fp32':>9}{'top-1 vs fp32':>15}{'accuracy':>10}"
        f"{'p50 us':>9}{'p90 us':>9}{'p50/fp32':>10}"
    )
    for p, t in times.items():
        arr = np.asarray(t) * 1e6
        size = reports[p].artifact.stat().st_size
        agree = float(np.mean(logits[p].argmax(1) == top_fp32))
        print(
            f"{p:<14}{size / 1024:>9.0f}{size / base_size:>9.3f}{agree:>15.2%}"
            f"{samples.accuracy(logits[p], labels):>10.2%}{np.median(arr):>9.1f}"
            f"{np.percentile(arr, 90):>9.1f}{np.median(arr) / 1e6 / base_t:>10.3f}"
        )
    for p, r in reports.items():
        for w in r.warnings:
            print(f"  warning ({p}): {w}")


def _versions() -> str:
    from edgekit.backends import get_backend

    return ", ".join(f"{k} {v}" for k, v in get_backend("tflite").versions().items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iters", type=int, default=20, help="runs per artifact per round")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to")
    ap.add_argument("--source", choices=("keras", "torch", "both"), default="both")
    args = ap.parse_args()
    out = ROOT / "out" / "bench_tflite"
    out.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, Path, Path]] = []
    if args.source in ("keras", "both"):
        runs.append(("keras", *_keras_source(out)))
    if args.source in ("torch", "both"):
        if importlib.util.find_spec("litert_torch") is None:
            print("PyTorch source skipped: pip install 'edgekit[torch-tflite]'")
        else:
            runs.append(("torch", *prepare(out)))
    os.sched_setaffinity(0, {args.cpu})
    for source, model, test in runs:
        reports = _export(model, test, out, f"digits_{source}")
        versions = _versions()
        print(
            f"\n{source} source {model.name} -> TFLite ({versions}), 1 thread pinned to CPU "
            f"{args.cpu}, "
            f"{args.rounds} interleaved rounds x {args.iters} runs (int16x8: x{args.iters // 10}),"
            f" batch 1, {len(np.load(test)['labels'])} held-out digits"
        )
        _bench(reports, test, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
