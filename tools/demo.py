"""`make demo`: the main job on the bundled sample.

Trains a 1.07M-parameter CNN on scikit-learn's digits (cached after the first run), saves it
as a torch.export program, and exports it to ONNX Runtime at fp32, fp16, int8 and
int8-dynamic, calibrating from the PNG folder in calibration_data/digits. Prints size,
agreement with the FP32 source and accuracy on the 359 held-out labelled digits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from digits_artifacts import ROOT, accuracy, export_all, prepare

from edgekit import samples

PRECISIONS = ["fp32", "fp16", "int8", "int8-dynamic"]


def main() -> int:
    out = ROOT / "out" / "demo"
    print("training / loading the digits CNN ...", file=sys.stderr)
    pt2, test = prepare(out)
    print(f"source: {pt2.relative_to(ROOT)} ({pt2.stat().st_size / 2**20:.2f} MiB)")
    print(
        "equivalent CLI: edgekit export out/demo/digits_cnn.pt2 --target onnxruntime "
        "--precision int8 --calibration calibration_data/digits --eval-data "
        "out/demo/digits_test.npz -o out/demo"
    )
    reports = export_all(pt2, test, out, "onnxruntime", PRECISIONS)
    import torch

    model = samples.train_torch_cnn(cache_dir=ROOT / ".edgekit-cache")
    data = np.load(test)
    with torch.no_grad():
        fp32_acc = samples.accuracy(model(torch.from_numpy(data["input"])).numpy(), data["labels"])
    header = f"{'precision':<13}{'size':>10}{'vs fp32':>9}{'top-1 agree':>13}"
    header += f"{'cosine':>10}{'max|diff|':>11}{'accuracy':>10}"
    print()
    print(f"ONNX Runtime artifacts (PyTorch source accuracy: {fp32_acc:.2%})")
    print(header)
    base = reports["fp32"].size_bytes
    for precision, r in reports.items():
        a = r.agreement
        print(
            f"{precision:<13}{r.size_bytes / 2**20:>8.2f}Mi{r.size_bytes / base:>9.3f}"
            f"{a.top1_agreement:>13.2%}{a.mean_cosine:>10.6f}{a.max_abs_diff:>11.4f}"
            f"{accuracy(r.artifact, test):>10.2%}"
        )
    for r in reports.values():
        for w in r.warnings:
            print(f"warning ({r.recipe.precision}): {w}")
    print(f"\nartifacts and sidecars in {Path(out).relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
