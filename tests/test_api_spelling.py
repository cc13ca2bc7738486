"""One message, two spellings: from Python an error names keyword arguments, from the CLI
the flags the user typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import linear_model

import edgekit
from edgekit.errors import UsageError, api_spelling

W = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
B = np.zeros(3, np.float32)


@pytest.mark.parametrize(
    "flags,api",
    [
        ("--keep-float nosuch: no such node", "keep_float nosuch: no such node"),
        ("--per-tensor is not available", "per_channel=False is not available"),
        ("fix it with --input-shape x=1x3", "fix it with input_shapes x=1x3"),
        (
            "use --target onnxruntime, or -o another folder",
            "use target onnxruntime, or output_dir another folder",
        ),
        # Unknown flags (a runtime's own, say) and words with dashes are left as they are.
        (
            "benchmark_model --num_threads=1 and a well-known x",
            "benchmark_model --num_threads=1 and a well-known x",
        ),
    ],
)
def test_api_spelling(flags: str, api: str) -> None:
    assert api_spelling(flags) == api


def test_the_same_mistake_from_python_and_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(W, B, (1, 4)), str(path))
    with pytest.raises(UsageError) as err:
        edgekit.export(
            path,
            "onnxruntime",
            "int8",
            output_dir=tmp_path / "o",
            calibration="random",
            keep_float=("nosuch",),
        )
    assert str(err.value).startswith("keep_float 'nosuch' matches no layer")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit",
            "export",
            str(path),
            "-p",
            "int8",
            "--calibration",
            "random",
            "--keep-float",
            "nosuch",
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("edgekit: error: --keep-float 'nosuch' matches no layer")
