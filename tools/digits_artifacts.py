"""Shared by tools/demo.py and tools/bench_ort.py: the digits CNN, saved as a .pt2 program,
exported to a target at several precisions with the shipped calibration images, plus the
held-out test digits as an .npz (input + labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgekit
from edgekit import samples
from edgekit.exporter import ExportReport

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "calibration_data" / "digits"


def prepare(out_dir: Path, width: int = 16) -> tuple[Path, Path]:
    """Train (cached) the CNN, save it as a .pt2 and the test split as .npz; return both."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model = samples.train_torch_cnn(width=width, cache_dir=ROOT / ".edgekit-cache")
    pt2 = out_dir / "digits_cnn.pt2"
    program = torch.export.export(model, (torch.zeros(1, 1, samples.SIZE, samples.SIZE),))
    torch.export.save(program, str(pt2))
    _, _, x_test, y_test = samples.split()
    test = out_dir / "digits_test.npz"
    np.savez(test, input=samples.to_input(x_test), labels=y_test)
    return pt2, test


def export_all(
    pt2: Path, test: Path, out_dir: Path, target: str, precisions: list[str]
) -> dict[str, ExportReport]:
    """Export at each precision (one load and one conversion for all); agreement is measured
    on every held-out test digit."""
    n_test = len(np.load(test)["labels"])
    reports = edgekit.export(
        pt2,
        target,
        list(precisions),
        output_dir=out_dir,
        calibration=CALIBRATION,
        eval_data=test,
        eval_samples=n_test,
    )
    return dict(zip(precisions, reports, strict=True))


def accuracy(artifact: Path, test: Path) -> float:
    data = np.load(test)
    session = edgekit.load(artifact)
    name = session.inputs[0].name
    x = data["input"]
    logits = np.concatenate([session.run({name: x[i : i + 1]})[0] for i in range(len(x))])
    return samples.accuracy(logits, data["labels"])
