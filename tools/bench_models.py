"""Artifacts for the benchmark tools (bench_stability.py, bench_precisions.py): the digits CNN
in Keras (trained here, saved as .keras once), exported by every registered backend at the
asked precisions with the shipped calibration images. Keras is the source every backend takes
(TFLite converts it natively; ONNX Runtime through tf2onnx; OpenVINO through its TF frontend),
so each backend's artifacts come from one and the same model."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import edgekit
from edgekit import samples
from edgekit.backends import backend_names

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "calibration_data" / "digits"
OUT = ROOT / "out" / "bench_models"


def keras_source(out_dir: Path = OUT, width: int = 16) -> Path:
    """The trained digits CNN as a .keras file (trained on first use, then reused)."""
    path = out_dir / f"digits_cnn_w{width}.keras"
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        samples.train_keras_cnn(width=width).save(str(path))
    return path


def artifacts(
    precisions: list[str], backends: list[str] | None = None, out_dir: Path = OUT
) -> dict[tuple[str, str], Path]:
    """{(backend, precision): artifact} for every registered backend (or ``backends``) that
    offers the precision; artifacts already exported are reused."""
    source = keras_source(out_dir)
    found = {}
    for backend in backends or backend_names():
        offered = edgekit.backends.get_backend(backend).precisions
        for precision in precisions:
            if precision not in offered:
                continue
            folder = out_dir / backend
            done = sorted(folder.glob(f"{source.stem}_{precision}.*.edgekit.json"))
            if done:
                found[backend, precision] = folder / done[0].name.removesuffix(".edgekit.json")
                continue
            report = edgekit.export(
                source, backend, precision, output_dir=folder, calibration=CALIBRATION
            )
            found[backend, precision] = report.artifact
    return found
