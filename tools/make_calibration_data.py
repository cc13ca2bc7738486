"""Regenerate calibration_data/digits/: a tiny real image set for examples, tests and demos.

The images are scikit-learn's handwritten digits (1,797 8x8 images shipped inside the sklearn
package, so this works offline). The first ``--per-class`` images of each digit, in dataset
order, are written as 8-bit grayscale PNGs named ``NNNN_L.png`` — NNNN is the index in
``sklearn.datasets.load_digits()`` and L the label — with values 0..16 rescaled to 0..255. The
output is byte-for-byte the same on every run with the same Pillow/zlib, and the folder is
replaced atomically so an interrupted run leaves the old one intact.

    python tools/make_calibration_data.py            # writes calibration_data/digits/
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

PREPROCESS_TOML = """\
# How edgekit turns these images into input tensors (flags such as --scale override it).
# 8x8 grayscale digits; pixel values 0..255 are scaled to 0..1, as sklearn's data / 16.
color = "gray"
scale = 0.00392156862745098  # 1/255
"""


def to_pixels(image: np.ndarray) -> np.ndarray:
    """sklearn digit values 0..16 → uint8 0..255, rounding half up in exact integer math."""
    values = image.astype(np.int64)
    return ((values * 255 + 8) // 16).astype(np.uint8)


def pick(labels: np.ndarray, per_class: int) -> list[int]:
    """Indices of the first ``per_class`` images of every label, in dataset order."""
    chosen = [
        int(i) for label in np.unique(labels) for i in np.flatnonzero(labels == label)[:per_class]
    ]
    return sorted(chosen)


def write_digits(out: Path, per_class: int) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        indices = pick(digits.target, per_class)
        for index in indices:
            name = f"{index:04d}_{digits.target[index]}.png"
            Image.fromarray(to_pixels(digits.images[index])).save(staging / name)
        (staging / "preprocess.toml").write_text(PREPROCESS_TOML, encoding="utf-8")
        staging.chmod(0o755)
        # Swap whole folders so a stale image from an earlier, larger run cannot survive.
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "calibration_data" / "digits", help="output folder"
    )
    parser.add_argument("--per-class", type=int, default=10, help="images per digit (default 10)")
    args = parser.parse_args()
    count = write_digits(args.out, args.per_class)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {count} images to {args.out} ({size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
