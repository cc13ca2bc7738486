"""``.tflite`` -> TFLite at every precision, on two real MediaPipe models, against the source
file run in LiteRT; and LiteRT's C++ log chatter kept off the terminal.

* face-landmark (face mesh): float32 weights, no signature, operator codes in the deprecated
  8-bit field only; 23 PRELU that ai-edge-quantizer 0.10 does not quantize (they stay float
  islands at int8/int16x8, and the export says so).
* face-detect (BlazeFace short range): fp16 weights (float16 constants feeding DEQUANTIZE),
  widened to float32 before quantizing; the export checks the rewrite and notes it.

Calibration and comparison samples are disjoint real inputs (``realmodels.write_inputs``: crops
of the bundled photos). Tolerances follow from the quantization grid as in
tests/test_backend_contract.py, never from what passed once. Per output, S = max |FP32 value|,
D = (max - min of the FP32 output on the calibration samples) / 255 (one step of the coarsest,
8-bit, grid a min/max calibrator puts that output on), L = the model's weighted layers (conv
and depthwise conv ops, counted from the file):

* fp32: max |diff| <= 1e-4 * S (the same graph: only summation order may differ);
* fp16: max |diff| <= 2 L (u_s + u_c) S with u_s = 2^-11 (fp16 weights) and u_c = 2^-11 (as in
  the contract when the runtime does not say what it computes in);
* int8, int8-dynamic, int16x8: the contract's bound e = L D + 2 L u_f32 S holds element-wise
  only while no value leaves its calibrated range, i.e. on the calibration samples; it is
  checked there as a root-mean-square over the output (implied by the element-wise bound, and
  robust where the worst case adds every layer's rounding the same way). On held-out samples a
  value beyond the calibrated range is clipped rather than rounded, which no grid bound covers.

BlazeFace's anchor scores are not compared by rank: the bundled photos hold no faces, so every
anchor scores below 0.5 and the best ten logits lie within about 1 of each other, far inside
2e; which anchor ranks first is then not something the grid protects (the contract's margin rule
would count no sample). Its logits' error is checked against the grid like every other output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit import realmodels
from edgekit.errors import UsageError

N_CALIB = 8
N_EVAL = 8
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int16x8")
U_F32, U_F16 = 2.0**-24, 2.0**-11
CHATTER = "Created TensorFlow Lite XNNPACK delegate"


def _fetch(name: str) -> Path:
    try:
        return realmodels.fetch(name)
    except Exception as exc:  # no network and no cache: nothing to test against
        pytest.skip(f"{name} is not available: {exc}")


def _reference(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The source file itself in LiteRT, one sample at a time: output name -> (N, ...)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    (inp,), outs = interp.get_input_details(), interp.get_output_details()
    rows: dict[str, list[np.ndarray]] = {o["name"]: [] for o in outs}
    for sample in x:
        interp.set_tensor(inp["index"], sample)
        interp.invoke()
        for o in outs:
            rows[o["name"]].append(interp.get_tensor(o["index"]).copy())
    return {k: np.stack(v) for k, v in rows.items()}


def _layers(path: Path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    ops = Interpreter(model_path=str(path))._get_ops_details()
    return sum(o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") for o in ops)


def _tensor_types(path: Path) -> list[tuple[str, list[str], list[bool]]]:
    """(op, dtypes of its inputs, which inputs are constants) for every op, from the file."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(path.read_bytes()))
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    out = []
    for op in graph.operators:
        ins = [i for i in op.inputs if i >= 0]
        buffers = [model.buffers[graph.tensors[i].buffer] for i in ins]
        const = [b.data is not None and len(b.data) > 0 for b in buffers]
        types = [names[graph.tensors[i].type].lower() for i in ins]
        out.append((fbu.opcode_to_name(model, op.opcodeIndex), types, const))
    return out


class Case:
    """One real model exported at every precision, with its FP32 outputs from the file."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.path = _fetch(name)
        data = realmodels.write_inputs(name, tmp / f"{name}.npz", N_CALIB + N_EVAL)
        arrays = dict(np.load(data))
        (self.input,) = arrays
        x = arrays[self.input]
        self.calib_x, self.eval_x = x[:N_CALIB], x[N_CALIB:]
        np.savez(tmp / "calib.npz", **{self.input: self.calib_x})
        np.savez(tmp / "eval.npz", **{self.input: self.eval_x})
        self.calib_want = _reference(self.path, self.calib_x)
        self.eval_want = _reference(self.path, self.eval_x)
        self.layers = _layers(self.path)
        reports = edgekit.export(
            self.path,
            "tflite",
            list(PRECISIONS),
            output_dir=tmp / "out",
            calibration=tmp / "calib.npz",
            eval_data=tmp / "eval.npz",
            calibration_samples=N_CALIB,
            eval_samples=N_EVAL,
        )
        self.reports = dict(zip(PRECISIONS, reports, strict=True))

    def outputs(self, precision: str, x: np.ndarray) -> dict[str, np.ndarray]:
        session = edgekit.load(self.reports[precision].artifact, threads=1)
        assert [s.name for s in session.inputs] == [self.input]
        names = [s.name for s in session.outputs]
        rows = [session.run({self.input: sample}) for sample in x]
        return {n: np.stack([r[k] for r in rows]) for k, n in enumerate(names)}


@pytest.fixture(scope="module")
def landmark(tmp_path_factory) -> Case:
    return Case("face-landmark", tmp_path_factory.mktemp("face-landmark"))


@pytest.fixture(scope="module")
def blazeface(tmp_path_factory) -> Case:
    return Case("face-detect", tmp_path_factory.mktemp("face-detect"))


def _case(request, which: str) -> Case:
    return request.getfixturevalue(which)


def _check_against_grid(case: Case, precision: str) -> dict[str, float]:
    """The module docstring's bounds; returns max |diff| / RMS per output for the report."""
    figures = {}
    L = case.layers
    if precision.startswith("int"):
        got = case.outputs(precision, case.calib_x)
        for name, want in case.calib_want.items():
            scale = float(np.abs(want).max())
            e = L * float(np.ptp(want)) / 255 + 2 * L * U_F32 * scale
            rms = float(np.sqrt(np.mean((got[name] - want) ** 2)))
            assert rms <= e, f"{precision} {name}: RMS error {rms:.3g} > e = {e:.3g}"
            figures[name] = rms
        held = case.outputs(precision, case.eval_x)
        for name, want in case.eval_want.items():
            assert held[name].shape == want.shape and np.isfinite(held[name]).all(), name
        return figures
    got = case.outputs(precision, case.eval_x)
    for name, want in case.eval_want.items():
        scale = float(np.abs(want).max())
        e = 1e-4 * scale if precision == "fp32" else 2 * L * (U_F16 + U_F16) * scale
        diff = float(np.abs(got[name] - want).max())
        assert diff <= e, f"{precision} {name}: max |diff| {diff:.3g} > e = {e:.3g}"
        figures[name] = diff
    return figures


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("which", ["landmark", "blazeface"])
def test_matches_the_source_within_its_grid(which, precision, request):
    case = _case(request, which)
    report = case.reports[precision]
    meta = json.loads(report.sidecar.read_text())
    assert meta["source"]["format"] == "tflite" and meta["recipe"]["precision"] == precision
    assert meta["backend_details"]["converter"].startswith("none")
    _check_against_grid(case, precision)
    assert report.agreement.samples == N_EVAL


@pytest.mark.parametrize("which", ["landmark", "blazeface"])
def test_artifacts_hold_the_types_their_precision_names(which, request):
    """Read from each file: what the compute ops take and store, and the size that follows."""
    case = _case(request, which)
    src_size = case.path.stat().st_size
    for precision in PRECISIONS:
        path = case.reports[precision].artifact
        ops = _tensor_types(path)
        compute = [(t, c) for op, t, c in ops if op in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        assert len(compute) == case.layers
        weights = {t[1] for t, _ in compute}
        acts = {t[0] for t, _ in compute}
        if precision == "fp32":
            assert weights == acts == {"float32"}
            assert "DEQUANTIZE" not in {op for op, *_ in ops}
        elif precision == "fp16":
            # Conv weights reach the convs through DEQUANTIZE from float16 constants.
            dequant = [t for op, t, c in ops if op == "DEQUANTIZE" and c[0]]
            assert len(dequant) >= case.layers and all(t == ["float16"] for t in dequant)
        elif precision == "int8-dynamic":
            assert weights == {"int8"} and acts == {"float32"}
        else:
            want = "int8" if precision == "int8" else "int16"
            assert weights == {"int8"} and acts == {want}, (precision, weights, acts)
            # What still runs in float (not counting the I/O conversions): only the ops
            # ai-edge-quantizer 0.10 leaves unquantized, PRELU on face mesh; none on BlazeFace.
            float_ops = {
                op
                for op, t, c in ops
                if op not in ("QUANTIZE", "DEQUANTIZE")
                and any(ty == "float32" and not k for ty, k in zip(t, c, strict=True))
            }
            assert float_ops == ({"PRELU"} if which == "landmark" else set()), float_ops
            if which == "landmark":
                warned = case.reports[precision].warnings
                assert any("float island" in w and "PRELU" in w for w in warned)

    sizes = {p: case.reports[p].artifact.stat().st_size / src_size for p in PRECISIONS}
    if which == "landmark":  # float32 source: int8 weights are a quarter, plus scales
        assert 0.25 <= sizes["int8"] <= 0.35, sizes
        assert 0.45 <= sizes["fp16"] <= 0.55, sizes
        assert 0.99 <= sizes["fp32"] <= 1.01, sizes
    else:  # fp16 source: int8 halves the weights; fp16 is the source's size, fp32 twice it
        from edgekit.intake.compression import tflite_numerics

        int8 = tflite_numerics(case.reports["int8"].artifact.read_bytes()).weight_bytes
        source = tflite_numerics(case.path.read_bytes()).weight_bytes
        ratio = sum(int8.values()) / sum(source.values())
        # int8 kernels (half of fp16) and int32 biases (twice): a little over half
        assert 0.45 <= ratio <= 0.6, (ratio, int8, source)
        # On this 0.2 MB model the per-channel scales (float32) and zero points (int64) of
        # every weight and bias add a quarter of the source's size to the file.
        assert sizes["int8"] < 0.9, sizes
        assert 0.98 <= sizes["fp16"] <= 1.05, sizes
        assert 1.7 <= sizes["fp32"] <= 2.0, sizes


def test_fp16_weights_are_widened_and_said_so(blazeface):
    for precision in PRECISIONS:
        notes = blazeface.reports[precision].notes
        checked = [n for n in notes if "widened to float32" in n]
        assert checked and f"{N_CALIB} calibration samples" in checked[0], notes
        assert "max |diff| 0" in checked[0], checked
    fp32 = blazeface.reports["fp32"]
    assert any("stores fp16 weights" in n and "--precision fp16" in n for n in fp32.notes)
    # The float32 rewrite computes exactly what the source's DEQUANTIZE ops did.
    got = blazeface.outputs("fp32", blazeface.eval_x)
    for name, want in blazeface.eval_want.items():
        np.testing.assert_array_equal(got[name], want)


def test_a_signature_is_added_and_noted(landmark):
    from ai_edge_litert.interpreter import Interpreter

    assert Interpreter(model_path=str(landmark.path)).get_signature_list() == {}
    artifact = landmark.reports["int8"].artifact
    sig = Interpreter(model_path=str(artifact)).get_signature_list()
    assert list(sig) == ["serving_default"] and sig["serving_default"]["inputs"] == ["input_1"]
    assert any("no signature" in n for n in landmark.reports["fp32"].notes)


def _cli(tmp: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEKIT_PROGRESS": "0"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user has: nothing set
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *argv],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=600,
        check=False,
    )


def test_cli_integer_io_export_and_benchmark_print_no_litert_chatter(blazeface, tmp_path):
    """The real command in a fresh process (LiteRT logs its delegate once per process):
    export with full-integer I/O, then benchmark the artifact beside the source."""
    calib = blazeface.reports["int8"].artifact.parents[1] / "calib.npz"
    done = _cli(
        tmp_path,
        "export",
        str(blazeface.path),
        "--target",
        "tflite",
        "-p",
        "int8",
        "--io",
        "int8",
        "--calibration",
        str(calib),
        "--calibration-samples",
        str(N_CALIB),
        "--eval-samples",
        "4",
        "-o",
        "out",
    )
    assert done.returncode == 0, done.stderr
    assert CHATTER not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (artifact,) = (tmp_path / "out").glob("*.tflite")
    session = edgekit.load(artifact)
    assert [s.dtype for s in session.inputs + session.outputs] == ["int8"] * 3
    bench = _cli(tmp_path, "benchmark", str(artifact), str(blazeface.path), "--runs", "5")
    assert bench.returncode == 0, bench.stderr
    assert CHATTER not in bench.stdout + bench.stderr
    assert artifact.name in bench.stdout


def test_native_stderr_drops_the_chatter_and_keeps_the_rest(capfd):
    """What LiteRT's C++ does, written to file descriptor 2 itself."""
    from edgekit.backends.tflite.runner import NativeStderr

    with NativeStderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: something real\n")
    assert capfd.readouterr().err == "ERROR: something real\n"

    quiet = NativeStderr()
    with pytest.raises(RuntimeError), quiet:
        os.write(2, b"ERROR: Node number 3 (CONV_2D) failed to prepare.\n")
        raise RuntimeError("failed to allocate")
    assert capfd.readouterr().err == ""  # kept for the caller's one-line message
    assert "Node number 3" in quiet.detail()


def test_an_already_quantized_source_is_exported_at_fp32_only(blazeface, tmp_path):
    int8 = blazeface.reports["int8"].artifact
    with pytest.raises(UsageError, match="already quantized"):
        edgekit.export(int8, "tflite", "int8-dynamic", output_dir=tmp_path / "again")
    assert not (tmp_path / "again").exists()
