"""Compress passes on the digits CNN (~1.1M parameters, PyTorch and Keras), exported to every
backend: original vs structured-pruned 50 % vs Tucker vs CP vs pruned+INT8 — parameters, MACs,
artifact size, p50 latency ratio (ONE interleaved `edgekit.benchmark` per backend, 1 thread,
pinned) and top-1 accuracy on the held-out digits. Then a residual and a depthwise-conv model
pruned 50 % per framework, each exported to the three backends at fp32.

    .venv/bin/python tools/compress_matrix.py [--framework torch keras] [--cpu 1]
        [--runs 1000] [--rounds 10] [--epochs 2] [--energy 0.9] [--round-to 8]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import edgekit
from edgekit import samples
from edgekit.compress import FineTune, LowRank, Prune

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "compress_matrix"
BACKENDS = ["onnxruntime", "openvino", "tflite"]


def data(framework: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    layout = "NCHW" if framework == "torch" else "NHWC"
    x_train, y_train, x_test, y_test = samples.split()
    return (
        samples.to_input(x_train, layout=layout),
        y_train,
        samples.to_input(x_test, layout=layout),
        y_test,
    )


def source(framework: str, out: Path, x: np.ndarray) -> Path:
    """The trained digits CNN saved as .pt2 (torch.export) or .keras."""
    out.mkdir(parents=True, exist_ok=True)
    if framework == "torch":
        import torch

        path = out / "digits_cnn.pt2"
        model = samples.train_torch_cnn(width=16)
        ep = torch.export.export(model, (torch.from_numpy(x[:1]),))
        torch.export.save(ep, str(path))
    else:
        path = out / "digits_cnn.keras"
        samples.train_keras_cnn(width=16).save(str(path))
    return path


def variants(src: Path, out: Path, args: argparse.Namespace, d: tuple) -> dict[str, dict]:
    """{variant: {path, params, macs, notes}} via the public edgekit.compress API."""
    x_train, y_train, x_test, y_test = d
    tune = FineTune(epochs=args.epochs, mode="labels")
    recipes = {
        "pruned-50%": [Prune(0.5, round_to=args.round_to), tune],
        "tucker": [LowRank("tucker", energy=args.energy), tune],
        "cp": [LowRank("cp", energy=args.energy), tune],
    }
    found: dict[str, dict] = {}
    for name, passes in recipes.items():
        t0 = time.perf_counter()
        result = edgekit.compress(
            src,
            passes=passes,
            data=x_train,
            labels=y_train,
            eval_data=x_test,
            eval_labels=y_test,
            output_dir=out / "compressed",
            name=name.replace("%", ""),
        )
        first, last = result.reports[0], result.reports[-1]
        if "original" not in found:
            found["original"] = {
                "path": src,
                "params": first.params_before,
                "macs": first.macs_before,
                "source_top1": first.metric_before,
            }
        found[name] = {
            "path": result.path,
            "params": last.params_after,
            "macs": last.macs_after,
            "source_top1": last.metric_after,
            "before_tune": first.metric_after,
            "layers": first.layers,
        }
        print(f"## compress {src.name} -> {name} ({time.perf_counter() - t0:.0f} s)")
        print(result.table())
        print()
    return found


def export_all(
    found: dict[str, dict], out: Path, calibration: Path, eval_x: Path
) -> dict[tuple[str, str, str], Any]:
    """{(variant, backend, precision): ExportReport}; int8 for the original and the pruned."""
    reports = {}
    for name, v in found.items():
        precisions = ["fp32", "int8"] if name in ("original", "pruned-50%") else ["fp32"]
        for backend in BACKENDS:
            got = edgekit.export(
                v["path"],
                backend,
                precisions,
                calibration=calibration,
                eval_data=eval_x,
                output_dir=out / backend,
                name=name.replace("%", ""),
                force=True,
            )
            for precision, report in zip(precisions, got, strict=True):
                reports[name, backend, precision] = report
    return reports


def top1(artifact: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = edgekit.load(artifact, threads=1)
    feed = session.inputs[0].name
    preds = [int(np.argmax(session.run({feed: x[i : i + 1]})[0])) for i in range(len(x))]
    return float(np.mean(np.asarray(preds) == y))


def latency(reports: dict, args: argparse.Namespace) -> dict[tuple[str, str, str], dict]:
    """One interleaved benchmark per backend, the original fp32 first (the ratios' base)."""
    timing = {}
    for backend in BACKENDS:
        keys = [k for k in reports if k[1] == backend]
        keys.sort(key=lambda k: k != ("original", backend, "fp32"))
        result = edgekit.benchmark(
            [reports[k].artifact for k in keys],
            runs=args.runs,
            warmup=args.warmup,
            rounds=args.rounds,
            threads=1,
            pin=args.cpu,
        )
        print(f"### benchmark, {backend}")
        print(result.table())
        print()
        base = result.results[0]["timing_ms"]["p50"]
        for k, r in zip(keys, result.results, strict=True):
            timing[k] = {"p50": r["timing_ms"]["p50"], "ratio": r["timing_ms"]["p50"] / base}
    return timing


def matrix(framework: str, args: argparse.Namespace) -> None:
    out = OUT / framework
    d = data(framework)
    x_train, _, x_test, y_test = d
    t0 = time.perf_counter()
    src = source(framework, out, x_train)
    found = variants(src, out, args, d)
    # as .npy files: edgekit.export compares calibration with "random", which an array cannot take
    calibration, eval_x = out / "calibration.npy", out / "eval.npy"
    np.save(calibration, x_train[: args.calibration])
    np.save(eval_x, x_test[:64])
    reports = export_all(found, out, calibration, eval_x)
    timing = latency(reports, args)
    print(f"## {framework}: digits CNN (width 16), {len(x_test)} held-out digits")
    print()
    print(
        "| variant | backend | precision | params | MACs | size KiB | p50 ms | p50 / original "
        "fp32 | top-1 | top-1 source |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, backend, precision), report in reports.items():
        v, t = found[name], timing[name, backend, precision]
        acc = top1(report.artifact, x_test, y_test)
        print(
            f"| {name} | {backend} | {precision} | {v['params']:,} | {v['macs'] / 1e6:.2f}M "
            f"| {report.size_bytes / 1024:,.0f} | {t['p50']:.3f} | {t['ratio']:.3f} "
            f"| {acc:.4f} | {v['source_top1']:.4f} |"
        )
    print()
    for name, v in found.items():
        if "before_tune" in v:
            print(f"{name}: top-1 of the {framework} model before fine-tune {v['before_tune']:.4f}")
    pruned = found["pruned-50%"]
    for layer in pruned["layers"]:
        print(f"  pruned {layer}")
    print(f"{framework} matrix: {time.perf_counter() - t0:.0f} s")
    print()


def torch_shapes() -> dict[str, Any]:
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 32, 3, padding=1)
            self.a = nn.Conv2d(32, 32, 3, padding=1)
            self.b = nn.Conv2d(32, 32, 3, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            z = self.b(torch.relu(self.a(y))) + y
            return self.fc(torch.relu(z).mean((2, 3)))

    depthwise = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    torch.manual_seed(0)
    return {"residual": Residual().eval(), "depthwise": depthwise.eval()}


def keras_shapes() -> dict[str, Any]:
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 1), name="image")
    stem = L.Conv2D(32, 3, padding="same", name="stem")(inp)
    x = L.ReLU()(L.BatchNormalization(name="bn1")(stem))
    y = L.Conv2D(32, 3, padding="same", name="branch")(x)
    x = L.GlobalAveragePooling2D()(L.Add()([x, y]))
    residual = keras.Model(inp, L.Dense(10, name="head")(x))
    inp = keras.Input((32, 32, 1), name="image")
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.ReLU()(L.BatchNormalization(name="bn")(x))
    x = L.Conv2D(64, 1, activation="relu", name="pw")(x)
    x = L.GlobalAveragePooling2D()(x)
    depthwise = keras.Model(inp, L.Dense(10, name="head")(x))
    return {"residual": residual, "depthwise": depthwise}


def shapes(framework: str) -> None:
    """A residual and a depthwise-conv model pruned 50 % (random weights: shapes, not
    accuracy), each compressed model exported to the three backends at fp32."""
    _, _, x_test, _ = data(framework)
    x = x_test[:32]
    out = OUT / framework / "shapes"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "eval.npy", x)
    models = torch_shapes() if framework == "torch" else keras_shapes()
    for name, model in models.items():
        extra = {}
        if framework == "torch":
            import torch

            extra["example_inputs"] = (torch.from_numpy(x[:1]),)
        result = edgekit.compress(
            model, passes=[Prune(0.5)], data=x, output_dir=out, name=name, **extra
        )
        r = result.reports[0]
        got = []
        for backend in BACKENDS:
            report = edgekit.export(
                result.path,
                backend,
                "fp32",
                eval_data=out / "eval.npy",
                output_dir=out / backend,
                name=name,
                force=True,
            )
            session = edgekit.load(report.artifact, threads=1)
            shape = session.run({session.inputs[0].name: x[:1]})[0].shape
            a = report.agreement
            got.append(f"{backend} {tuple(shape)} cos {a.mean_cosine:.6f}")
        changed = ", ".join(f"{lay['layer']} {lay['before']}->{lay['after']}" for lay in r.layers)
        print(
            f"{framework} {name}: params {r.params_before:,} -> {r.params_after:,}, "
            f"MACs {r.macs_before / 1e6:.2f}M -> {r.macs_after / 1e6:.2f}M; pruned {changed}; "
            f"exported fp32 (output shape, cosine vs the pruned source): {'; '.join(got)}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--framework", nargs="+", choices=["torch", "keras"], default=["torch", "keras"]
    )
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2, help="fine-tune epochs after each pass")
    ap.add_argument("--energy", type=float, default=0.9, help="Tucker/CP rank energy")
    ap.add_argument("--round-to", type=int, default=8, help="pruned channel counts multiple")
    ap.add_argument("--calibration", type=int, default=200, help="int8 calibration samples")
    ap.add_argument("--cpu", default="1", help="CPU to pin the benchmarks to")
    ap.add_argument("--skip-shapes", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(
        f"{args.runs} runs + {args.warmup} warm-up per artifact, {args.rounds} interleaved "
        f"rounds per backend, 1 thread pinned to CPU {args.cpu}, batch 1; fine-tune "
        f"{args.epochs} epoch(s) with labels; Tucker/CP energy {args.energy}"
    )
    print()
    for framework in args.framework:
        matrix(framework, args)
    if not args.skip_shapes:
        for framework in args.framework:
            shapes(framework)
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
