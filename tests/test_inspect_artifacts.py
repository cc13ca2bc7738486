"""``edgekit inspect`` reads every artifact format edgekit writes, not only sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import conv_model

import edgekit

W = np.random.default_rng(4).standard_normal((3, 2, 3, 3)).astype(np.float32)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *argv], capture_output=True, text=True, timeout=120
    )


def test_inspect_openvino_ir(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    src = tmp_path / "conv.onnx"
    onnx.save(conv_model(W), str(src))
    report = edgekit.export(src, "openvino", "fp16", output_dir=tmp_path / "o")
    done = _cli("inspect", str(report.artifact), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    model = ov.Core().read_model(str(report.artifact))  # the reference: OpenVINO itself
    assert info["format"] == "openvino-ir"
    assert [i["name"] for i in info["inputs"]] == [p.get_any_name() for p in model.inputs]
    assert info["inputs"][0]["shape"] == [1, 2, 6, 6]
    assert info["parameters"] == W.size
    assert "Convolution" in info["ops"]
    assert any("precision fp16" in n for n in info.get("notes", []))


def test_inspect_ir_without_its_bin_names_the_missing_file(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    src = tmp_path / "conv.onnx"
    onnx.save(conv_model(W), str(src))
    report = edgekit.export(src, "openvino", "fp32", output_dir=tmp_path / "o")
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(report.artifact.read_bytes())
    done = _cli("inspect", str(lonely))
    assert done.returncode == 4
    assert done.stderr.strip() == (
        "edgekit: error: lonely.xml has no lonely.bin beside it; an OpenVINO IR is the .xml "
        "and the .bin of the same stem: copy both"
    )


def test_exporting_from_an_ir_says_what_to_do(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    src = tmp_path / "conv.onnx"
    onnx.save(conv_model(W), str(src))
    report = edgekit.export(src, "openvino", "fp32", output_dir=tmp_path / "o")
    done = _cli("export", str(report.artifact), "-o", str(tmp_path / "again"))
    assert done.returncode == 2 and "export from" in done.stderr, done.stderr
