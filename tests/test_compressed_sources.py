"""Already-compressed sources: detected, shown by ``inspect``, refused at a second quantization.

The quantized ONNX files are made at test time by ONNX Runtime's own quantizers
(``quantize_dynamic``, ``quantize_static`` in QDQ and QOperator format) and the fp16 one by
onnxconverter-common, all from one small float graph; the third-party ones are the real-model
set's dynamically quantized ddddocr OCR and MediaPipe's fp16-weight BlazeFace (skipped when
they cannot be fetched). Exports run the real backends, and every fp32 export is compared with
the source run by ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import linear_model

import edgekit
from edgekit import realmodels
from edgekit.backends import get_backend
from edgekit.errors import DataError, UsageError
from edgekit.intake.compression import detect, onnx_numerics

_ENV = {**os.environ, "EDGEKIT_PROGRESS": "0"}


class _Reader:
    """ONNX Runtime's calibration reader protocol: feeds until None."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(1)
        self._it = iter([{"x": rng.normal(size=(1, 64)).astype(np.float32)} for _ in range(n)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    folder = tmp_path_factory.mktemp("compressed")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 256)).astype(np.float32)
    b = rng.normal(size=256).astype(np.float32)
    model = linear_model(w, b, input_shape=(1, 64))
    paths = {k: folder / f"{k}.onnx" for k in ("float", "dynamic", "qdq", "qoperator", "fp16")}
    onnx.save(model, paths["float"])
    quantize_dynamic(paths["float"], paths["dynamic"], weight_type=QuantType.QInt8)
    quantize_static(paths["float"], paths["qdq"], _Reader(8), quant_format=QuantFormat.QDQ)
    quantize_static(
        paths["float"], paths["qoperator"], _Reader(8), quant_format=QuantFormat.QOperator
    )
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), paths["fp16"])
    rng = np.random.default_rng(2)
    np.savez(folder / "eval.npz", x=rng.normal(size=(8, 1, 64)).astype(np.float32))
    paths["eval"] = folder / "eval.npz"
    return paths


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *argv], capture_output=True, text=True, env=_ENV
    )


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize(
    "name,kind,evidence",
    [
        ("float", "float32", "no quantized ops"),
        ("dynamic", "int8-dynamic", "1 DynamicQuantizeLinear, 1 MatMulInteger"),
        ("qdq", "int8-static", "QuantizeLinear, 2 DequantizeLinear of integer weights"),
        ("qoperator", "int8-static", "1 QLinearMatMul"),
        ("fp16", "fp16-weights", "2 fp16 constants"),
    ],
)
def test_detection(sources, name: str, kind: str, evidence: str) -> None:
    found = detect(sources[name], "onnx")
    assert found is not None and found.kind == kind
    assert evidence in found.evidence
    assert found.quantized == kind.startswith("int8")
    # The weight bytes count the constants as stored: int8 weights for the quantized files.
    main = max(found.weight_bytes, key=found.weight_bytes.get)
    expected = {"float32": "float32", "fp16-weights": "float16"}.get(kind, "int8")
    assert main == expected, found.weight_bytes
    # The same answer from an in-memory proto, as the plan stage reads it.
    assert onnx_numerics(onnx.load(str(sources[name]))).kind == kind


def test_inspect_prints_and_json_carries_it(sources) -> None:
    done = _cli("inspect", str(sources["dynamic"]))
    assert done.returncode == 0, done.stderr
    assert (
        "already quantized: int8-dynamic (1 DynamicQuantizeLinear, 1 MatMulInteger)"
        in done.stdout.splitlines()
    )
    done = _cli("inspect", str(sources["fp16"]), "--json")
    numerics = json.loads(done.stdout)["numerics"]
    assert numerics["kind"] == "fp16-weights" and not numerics["quantized"]
    assert numerics["summary"].startswith("fp16 weights: 2 fp16 constants")
    assert numerics["weight_bytes"]["float16"] == 64 * 256 * 2 + 256 * 2
    plain = _cli("inspect", str(sources["float"]))
    assert "already quantized" not in plain.stdout and "fp16 weights" not in plain.stdout


@pytest.mark.parametrize(
    "name,target,precision",
    [
        ("dynamic", "onnxruntime", "int8"),
        ("qdq", "onnxruntime", "fp16"),
        ("qoperator", "openvino", "int8-weights"),
    ],
)
def test_requantizing_is_refused_on_one_line(sources, tmp_path, name, target, precision) -> None:
    out = tmp_path / "out"
    argv = ["export", str(sources[name]), "-t", target, "-p", precision, "-o", str(out)]
    done = _cli(*argv, "--calibration", "random")
    assert done.returncode == UsageError.exit_code == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error:"), done.stderr
    assert f"{name}.onnx is already quantized (int8-" in lines[0]
    assert "export it at --precision fp32" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "target,precision",
    [
        (t, p)
        for t in ("onnxruntime", "openvino")
        for p in get_backend(t).capabilities.precisions
        if p not in ("fp32", "as-trained")  # as-trained: tests/test_qat.py
    ],
)
def test_refused_before_loading_from_python(sources, tmp_path, target, precision) -> None:
    for source in (sources["dynamic"], onnx.load(str(sources["qdq"]))):
        # Called from Python, the message names the keyword argument, not the flag.
        with pytest.raises(UsageError, match=r"already quantized .*at precision fp32"):
            edgekit.export(
                source, target, precision, output_dir=tmp_path / "o", calibration="random"
            )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", ["dynamic", "qdq"])
def test_fp32_export_runs_it_as_it_is(sources, tmp_path, target, name) -> None:
    report = edgekit.export(
        sources[name], target, "fp32", output_dir=tmp_path / "o", eval_data=sources["eval"]
    )
    feeds = dict(np.load(sources["eval"]))
    want = np.concatenate([_ort(sources[name], {"x": x})[0] for x in feeds["x"]])
    session = edgekit.load(report.artifact)
    got = np.concatenate([session.run({"x": x})[0] for x in feeds["x"]])
    # ONNX Runtime runs the same graph; OpenVINO computes the quantized ops in float, which
    # moves a value by up to about one int8 step of the input.
    assert np.abs(got - want).max() <= 0.05 * float(np.abs(want).max())
    assert report.agreement.mean_cosine > 0.999
    if report.size_ratio > 1.05:
        assert any("the source is already quantized" in w for w in report.warnings), report.warnings


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_fp16_weight_source_at_fp32_says_so(sources, tmp_path, target) -> None:
    report = edgekit.export(
        sources["fp16"], target, "fp32", output_dir=tmp_path / "o", eval_data=sources["eval"]
    )
    assert report.agreement.mean_cosine > 0.9999
    assert any("fp16 weights (2 fp16 constants" in w for w in report.warnings), report.warnings
    if report.size_ratio > 1.05:
        assert any("--precision fp16" in w for w in report.warnings), report.warnings


# ---------------------------------------------------------------- third-party models


def _real(name: str) -> Path:
    try:
        return realmodels.fetch(name)
    except DataError as exc:
        pytest.skip(str(exc))


def test_real_dynamically_quantized_ocr(tmp_path) -> None:
    path = _real("ocr-old")
    found = detect(path, "onnx")
    assert found is not None and found.kind == "int8-dynamic"
    for part in ("22 DynamicQuantizeLinear", "21 ConvInteger", "1 MatMulInteger"):
        assert part in found.evidence
    # Its weights are stored as integers: the float bytes are the scales and biases.
    assert (
        found.weight_bytes["int8"] + found.weight_bytes["uint8"]
        > 100 * found.weight_bytes["float32"]
    )
    done = _cli("inspect", str(path))
    assert any(
        ln.startswith("already quantized: int8-dynamic (22 ") for ln in done.stdout.splitlines()
    )
    out = tmp_path / "out"
    refused = _cli(
        "export", str(path), "-t", "openvino", "-p", "int8", "--calibration", "random",
        "-o", str(out), *realmodels.shape_flags("ocr-old"),
    )  # fmt: skip
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "common_old.onnx is already quantized (int8-dynamic" in refused.stderr
    assert not out.exists()
    # At fp32 OpenVINO widens the integer weights to float: about 4x, and the warning says why.
    inputs = realmodels.write_inputs("ocr-old", tmp_path / "eval.npz", 4)
    report = edgekit.export(
        path,
        "openvino",
        "fp32",
        output_dir=out,
        eval_data=inputs,
        input_shapes=realmodels.REAL_MODELS["ocr-old"].shapes,
    )
    assert report.agreement.mean_cosine > 0.99
    assert report.size_ratio > 3
    assert any(
        "already quantized (int8-dynamic" in w and "stores it less compactly" in w
        for w in report.warnings
    ), report.warnings


def test_real_fp16_weight_tflite(tmp_path) -> None:
    path = _real("face-detect")
    found = detect(path, "tflite")
    assert found is not None and found.kind == "fp16-weights"
    assert found.evidence == "74 DEQUANTIZE of fp16 tensors"
    assert set(found.weight_bytes) <= {"float16", "int32"}
    done = _cli("inspect", str(path), "--json")
    assert json.loads(done.stdout)["numerics"]["kind"] == "fp16-weights"
    text = _cli("inspect", str(path)).stdout.splitlines()
    assert "fp16 weights: 74 DEQUANTIZE of fp16 tensors" in text
    inputs = realmodels.write_inputs("face-detect", tmp_path / "eval.npz", 4)
    report = edgekit.export(path, "openvino", "fp32", output_dir=tmp_path / "o", eval_data=inputs)
    assert report.agreement.mean_cosine > 0.9999
    warned = [w for w in report.warnings if "fp16 weights (74 DEQUANTIZE of fp16 tensors)" in w]
    assert warned, report.warnings
    if report.size_ratio > 1.05:
        assert "--precision fp16" in warned[0]
