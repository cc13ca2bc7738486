"""The two cells that close the export matrix: ONNX -> TFLite (onnx2torch + litert-torch,
edgekit.backends.tflite.onnx_route) and TFLite -> ONNX Runtime (tf2onnx,
edgekit.intake.tflite_onnx). The digits CNN at every precision is the contract's
(tests/test_backend_contract.py covers the new cells from the registry); here are the real
models, the graphs torch.onnx writes today (opset 20: Reshape allowzero, Pad/ReduceMean/Split/
Resize in their opset-18+ forms), the names layer rules match, the pre-flight and refusals, and
a conversion with the network unreachable.

References are independent of the code under test: the ONNX original run in ONNX Runtime, the
``.tflite`` original run in LiteRT. fp32 tolerance as in the contract: max |diff| <= 1e-4 * S,
S = max |reference output| (the same graph; only summation order may differ).
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
import torch

import edgekit
from edgekit import realmodels

N = 8
HERE = Path(__file__).parent


def _fetch(name: str) -> Path:
    try:
        return realmodels.fetch(name)
    except Exception as exc:  # no network and no cache: nothing to test against
        pytest.skip(f"{name} is not available: {exc}")


def _ort(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, f) for f in feeds]


def _fp32_close(want: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> None:
    for w_sample, g_sample in zip(want, got, strict=True):
        for w, g in zip(w_sample, g_sample, strict=True):
            w, g = np.asarray(w), np.asarray(g).reshape(np.shape(w))
            assert np.abs(w - g).max() <= 1e-4 * np.abs(w).max()


class Opset20(torch.nn.Module):
    """What torch.onnx (dynamo) writes at opset 20 for a pad, a mean over axes, a split, a
    resize, a slice and a reshape: each in its newest form, each one onnx2torch 1.5.15 refuses
    as written."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.nn.functional.pad(x, (1, 1, 1, 1)).mean(dim=(2, 3), keepdim=True)
        a, b = torch.split(x, [1, 1], dim=1)
        return (a - y[:, :1]).reshape(1, -1), torch.nn.functional.interpolate(b, scale_factor=2.0)


@pytest.fixture(scope="module")
def opset20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("opset20") / "opset20.onnx"
    torch.onnx.export(Opset20(), (torch.zeros(1, 2, 8, 8),), str(path), dynamo=True)
    return path


def _inputs(n: int, shape: tuple[int, ...], name: str) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{name: rng.normal(size=shape).astype(np.float32)} for _ in range(n)]


def test_opset20_graph_torch_writes_converts_and_matches_onnxruntime(opset20, tmp_path):
    model = onnx.load(str(opset20))
    assert {o.version for o in model.opset_import if o.domain == ""} == {20}
    name = model.graph.input[0].name
    feeds = _inputs(N, (1, 2, 8, 8), name)
    report = edgekit.export(opset20, "tflite", "fp32", output_dir=tmp_path)
    session = edgekit.load(report.artifact)
    # the artifact takes NHWC; the session also accepts the source's NCHW feeds
    details = json.loads(report.sidecar.read_text())["backend_details"]
    assert details["input_layout"][name]["layout"] == "NHWC"
    _fp32_close(_ort(opset20, feeds), [session.run(f) for f in feeds])


def _real_onnx_to_tflite(name: str, tmp_path: Path, precision: str):
    path = _fetch(name)
    realmodels.write_inputs(name, tmp_path / "calib.npz", N, seed=0)
    realmodels.write_inputs(name, tmp_path / "eval.npz", N, seed=1)
    report = edgekit.export(
        path,
        "tflite",
        precision,
        output_dir=tmp_path / "out",
        calibration=tmp_path / "calib.npz",
        eval_data=tmp_path / "eval.npz",
        input_shapes=realmodels.REAL_MODELS[name].shapes,
    )
    feeds = realmodels.read_feeds(tmp_path / "eval.npz")
    session = edgekit.load(report.artifact)
    return report, _ort(path, feeds), [session.run(f) for f in feeds]


def test_real_layout_detector_with_eight_outputs_converts_at_fp32(tmp_path):
    """PicoDet from PaddlePaddle: weights in Constant nodes, Split/Resize/Reshape/Transpose,
    eight outputs, each kept and matching ONNX Runtime on real pages."""
    report, want, got = _real_onnx_to_tflite("layout", tmp_path, "fp32")
    assert len(got[0]) == len(want[0]) == 8
    _fp32_close(want, got)
    details = json.loads(report.sidecar.read_text())["backend_details"]
    assert details["converter"] == "onnx2torch + litert-torch"


def test_real_orientation_classifier_at_int8_is_integer_and_keeps_most_classes(tmp_path):
    """int8 is judged as the contract judges it: by the report's agreement equalling what we
    measure here against ONNX Runtime, and the artifact being quantized (int8 conv weights)."""
    from ai_edge_litert.interpreter import Interpreter

    report, want, got = _real_onnx_to_tflite("orientation", tmp_path, "int8")
    interp = Interpreter(model_path=str(report.artifact))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    convs = [op for op in interp._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert convs and all(tensors[op["inputs"][1]]["dtype"] == np.int8 for op in convs)
    top1 = np.mean([np.argmax(w[0]) == np.argmax(g[0]) for w, g in zip(want, got, strict=True)])
    # the report compares with the ONNX source (run in ONNX Runtime) on the same samples
    assert report.agreement.top1_agreement == pytest.approx(top1)


def test_onnx_layers_have_the_same_names_on_all_three_backends(onnx_cnn):
    from edgekit.layer_report import list_layers

    names = {
        backend: [layer.name for layer in list_layers(onnx_cnn, backend) if layer.kind == "layer"]
        for backend in ("onnxruntime", "openvino", "tflite")
    }
    graph = onnx.load(str(onnx_cnn)).graph
    reference = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert names["tflite"] == names["onnxruntime"] == names["openvino"] == reference


def _digits_int8(onnx_cnn, digits, tmp_path: Path, **fields):
    from conftest import feeds

    x_train, _, x_test, _ = digits
    return edgekit.export(
        onnx_cnn,
        "tflite",
        "int8",
        output_dir=tmp_path,
        calibration=feeds(x_train[:16], "image"),
        eval_data=feeds(x_test[:8], "image"),
        **fields,
    )


def test_keep_float_names_an_onnx_node_on_tflite(onnx_cnn, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    first = next(n.name for n in onnx.load(str(onnx_cnn)).graph.node if n.op_type == "Conv")
    report = _digits_int8(onnx_cnn, digits, tmp_path, keep_float=(first,))
    interp = Interpreter(model_path=str(report.artifact))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    # LiteRT makes a conv of one input channel a DEPTHWISE_CONV_2D
    kinds = ("CONV_2D", "DEPTHWISE_CONV_2D")
    convs = [op for op in interp._get_ops_details() if op["op_name"] in kinds]
    dtypes = [tensors[op["inputs"][1]]["dtype"] for op in convs]
    assert dtypes[0] == np.float32 and all(d == np.int8 for d in dtypes[1:])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {**os.environ, "EDGEKIT_PROGRESS": "0"}
    base.pop("EDGEKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
    )


def _lstm(path: Path) -> None:
    lstm = torch.nn.LSTM(4, 8, batch_first=True).eval()
    torch.onnx.export(lstm, (torch.zeros(1, 5, 4),), str(path), dynamo=False, opset_version=14)


def test_preflight_and_export_name_the_op_the_route_cannot_convert(tmp_path):
    path = tmp_path / "lstm.onnx"
    _lstm(path)
    inspected = _cli("inspect", str(path), "--target", "tflite", "--json")
    assert inspected.returncode == 7
    report = json.loads(inspected.stdout)["target_report"]
    assert report["convertible"] is False
    assert report["unconvertible_ops"] == ["LSTM (opset 14)"]
    out = tmp_path / "out"
    exported = _cli("export", str(path), "--target", "tflite", "-o", str(out))
    assert exported.returncode == 7
    errors = [line for line in exported.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "no converter for LSTM (opset 14)" in errors[0]
    assert "Traceback" not in exported.stderr
    assert not out.exists()


def test_conversion_with_the_network_unreachable(opset20, tmp_path):
    """The same conversion in a process whose sockets all fail (tests/offline/sitecustomize.py,
    inherited by the child processes edgekit starts): nothing in the route fetches a file."""
    env = {"PYTHONPATH": os.pathsep.join([str(HERE / "offline"), os.environ.get("PYTHONPATH", "")])}
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert probe.returncode != 0 and "network disabled by the test" in probe.stderr
    cache = {"EDGEKIT_CACHE_DIR": str(tmp_path / "cache")}  # a cold conversion, not a cache hit
    out = tmp_path / "out"
    done = _cli(
        "export", str(opset20), "--target", "tflite", "-p", "int8", "--calibration", "random",
        "-o", str(out), "--json", env={**env, **cache},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    artifact = Path(json.loads(done.stdout)["artifact"])
    assert artifact.suffix == ".tflite" and artifact.is_file()


def test_real_blazeface_tflite_to_onnxruntime_matches_litert(tmp_path):
    """BlazeFace (fp16 weights) through tf2onnx: the ONNX Runtime artifact against the file run
    in LiteRT on real photos, and its int8 export is QDQ."""
    path = _fetch("face-detect")
    realmodels.write_inputs("face-detect", tmp_path / "eval.npz", N, seed=1)
    feeds = realmodels.read_feeds(tmp_path / "eval.npz")
    run = realmodels.original_runner(path)
    want = [run(f) for f in feeds]
    fp32, int8 = edgekit.export(
        path,
        "onnxruntime",
        ["fp32", "int8"],
        output_dir=tmp_path / "out",
        calibration=tmp_path / "eval.npz",
        eval_data=tmp_path / "eval.npz",
    )
    _fp32_close(want, _ort(fp32.artifact, feeds))
    ops = {n.op_type for n in onnx.load(str(int8.artifact)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_onnx_source_to_full_integer_tflite_with_integer_io(onnx_cnn, digits, tmp_path):
    """--io int8 (Edge TPU, microcontrollers) from an ONNX source: int8 in and out, NHWC."""
    from ai_edge_litert.interpreter import Interpreter

    report = _digits_int8(onnx_cnn, digits, tmp_path, io_dtype="int8")
    interp = Interpreter(model_path=str(report.artifact))
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == out["dtype"] == np.int8
    assert tuple(inp["shape"]) == (1, 32, 32, 1)
