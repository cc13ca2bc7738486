"""`make demo`: the main job on the bundled sample.

Trains a 1.07M-parameter CNN on scikit-learn's digits (cached after the first run), saves it
as a torch.export program, and exports it to every backend (ONNX Runtime, TFLite, OpenVINO) at
its main precisions, calibrating from the PNG folder in calibration_data/digits. Prints size,
agreement with the FP32 source and accuracy on the 359 held-out labelled digits.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from digits_artifacts import ROOT, accuracy, export_all, prepare

from edgekit import progress, samples
from edgekit.backends import backend_names

# The demo prints one table of its own; the exports' stage lines would cut through it.
progress.QUIET = True
# As the CLI does: torch's registration warnings (litert-torch, torchao) bury the table.
logging.getLogger("torch").setLevel(logging.ERROR)

# target -> precisions shown; int16x8 (TFLite reference kernels, ~100x slower) is left out.
ROWS = {
    "onnxruntime": ["fp32", "fp16", "int8", "int8-dynamic"],
    "tflite": ["fp32", "fp16", "int8", "int8-dynamic"],
    "openvino": ["fp32", "fp16", "int8", "int8-weights"],
}


def main() -> int:
    out = ROOT / "out" / "demo"
    print("training / loading the digits CNN ...", file=sys.stderr)
    pt2, test = prepare(out)
    data = np.load(test)
    model = samples.train_torch_cnn(cache_dir=ROOT / ".edgekit-cache")
    import torch

    with torch.no_grad():
        fp32_acc = samples.accuracy(model(torch.from_numpy(data["input"])).numpy(), data["labels"])
    print(f"source: {pt2.relative_to(ROOT)} ({pt2.stat().st_size / 2**20:.2f} MiB), ")
    print(f"PyTorch FP32 accuracy on {len(data['labels'])} held-out digits: {fp32_acc:.2%}")
    print(
        "equivalent CLI: edgekit export out/demo/digits_cnn.pt2 --target TARGET "
        "--precision int8 --calibration calibration_data/digits --eval-data "
        "out/demo/digits_test.npz -o out/demo"
    )
    header = f"{'target':<13}{'precision':<14}{'size':>9}{'vs fp32':>9}{'top-1 agree':>13}"
    header += f"{'cosine':>10}{'max|diff|':>11}{'accuracy':>10}"
    print()
    print(header)
    warnings = []
    for target, precisions in ROWS.items():
        if target not in backend_names():
            continue
        reports = export_all(pt2, test, out, target, precisions)
        base = reports["fp32"].size_bytes
        for precision, r in reports.items():
            a = r.agreement
            print(
                f"{target:<13}{precision:<14}{r.size_bytes / 2**20:>7.2f}Mi"
                f"{r.size_bytes / base:>9.3f}{a.top1_agreement:>13.2%}{a.mean_cosine:>10.6f}"
                f"{a.max_abs_diff:>11.4f}{accuracy(r.artifact, test):>10.2%}"
            )
            warnings += [f"{target} {precision}: {w}" for w in r.warnings]
    for w in warnings:
        print(f"warning: {w}")
    print(f"\nartifacts and sidecars in {Path(out).relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
