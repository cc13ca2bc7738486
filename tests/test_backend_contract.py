"""One contract, run against every registered backend, every source it takes and every
precision it offers.

The cells come from the registry alone: each name in ``edgekit.backends.backend_names()``, each
source variant below whose format is in that backend's ``capabilities.sources``, each precision
in ``capabilities.precisions``. A new backend or a new route is covered by declaring it; a new
source format fails ``test_every_declared_source_format_is_built`` until a builder is added
here. The model is the digits CNN the suite trains (conftest, width 8), calibrated on 64
training digits and compared on 120 held-out digits with the FP32 source run in its own
framework (torch for .onnx/.pt2/nn.Module, Keras for .keras/.h5/SavedModel, LiteRT for .tflite).

Tolerances follow from the number grid each precision puts values on, never from what passed
once, so that they hold on x86 CPUs with and without AVX-512 VNNI (other INT8 kernels) or BF16.
S = max |FP32 logit| over the held-out digits, L = the CNN's weighted layers (3 conv + 2 dense,
counted from the model), u_c = unit roundoff of what the float parts really run in (the
session's ``info["inference_precision"]`` when the backend reports it: OpenVINO runs fp16 and
the float parts of int8 in bf16 on CPUs with AVX512-BF16/AMX, in f32 elsewhere).

* fp32: max |diff| <= e = 1e-4 * S. Only float re-association differs (another summation
  order or conv algorithm, e.g. Winograd): ~sqrt(fan-in) * 2^-24 per layer, far below 1e-4.
* fp16: max |diff| <= e = 2 * L * (u_s + u_c) * S, u_s = 2^-11 (fp16 weights; u_c = u_s when
  the runtime does not say). Per layer, rounding the weights (<= u_s relative) and the inputs
  (<= u_c) changes y = W x by <= (u_s + u_c) |W||x|; the factor 2 allows |W||x| to be twice |Wx|
  (cancellation in the dot products), and first-order errors of L layers add up (ReLU and
  max-pool are 1-Lipschitz and round nothing). The x86 kernels here accumulate in f32.
* int8, int8-dynamic, int16x8, int8-weights, int4-weights: one step of the logits' 8-bit grid,
  D = (max - min of the FP32 logits on the calibration digits) / 255 (the range a min/max
  calibrator gives the output grid; 8 bits is the coarsest grid any of these puts the logits
  on), per layer (half a step for its weights, half for its activations, each on a grid set
  from its own calibrated range, so the relative error carries over), plus float rounding as
  above: e = L * D + 2 * L * u_c * S. Integer precisions are judged by agreement only: a value
  outside the calibrated range is clipped, not rounded (held-out logits beyond the calibration
  range come out ~10 D off), which no grid bound covers and which does not move a class.

Agreement, at every precision: a sample flips only if its top-1 and top-2 logits move toward
each other by its FP32 margin (top-1 minus top-2), so every held-out sample whose margin
exceeds 2e must keep its class; samples within 2e may legitimately flip and are not counted.
So that a cell checks something, at least half of the held-out samples must lie beyond 2e (a
property of the FP32 model and the bound, not of the kernels). The report's own agreement must
equal what we measure. With oneDNN held to AVX-512 without VNNI (ONEDNN_MAX_CPU_ISA=
AVX512_CORE), OpenVINO's int8 changes 4 of 120 classes of the Keras CNN (top-1 0.967), all
within 2e: a fixed "top-1 >= 97 %" fails there, this rule does not.

Also here, per backend: a failed export (an unknown --keep-float node, calibration arrays of the
wrong shape) leaves no output folder, and through ``python -m edgekit export`` exits with the
documented code and one ``edgekit: error:`` line. Not here: requests refused at plan time
(tests/test_plan.py triggers every declared refusal), bad feeds and session/runner equality
(tests/test_session_runner.py), CLI errors of the ONNX path (tests/test_cli_errors.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import export_digits
from grid import margin_rule
from keras2_h5 import write_keras2_h5
from test_cli_errors import OUT, failure_problems, run_cli, snapshot

import edgekit
from edgekit import samples
from edgekit.backends import backend_names, get_backend
from edgekit.errors import DataError, MissingDependencyError, UsageError
from edgekit.model import INTAKE
from edgekit.recipe import NEEDS_CALIBRATION, PRECISIONS, Recipe

N_CALIB = 64
N_EVAL = 120
BAD_NODE = "no_such_node"
#: unit roundoff (half an ulp at 1.0) by the names runtimes report for what they compute in
ROUNDOFF = {"f32": 2.0**-24, "f16": 2.0**-11, "bf16": 2.0**-8}
FP16 = float(np.finfo(np.float16).eps) / 2


@dataclass
class Source:
    """A source as export takes it, with its FP32 outputs from its own framework."""

    model: Any
    layout: str
    reference: Callable[[np.ndarray], np.ndarray]
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the source's input name
    x: np.ndarray | None = None  # held-out digits in the source's layout
    want: np.ndarray | None = None  # FP32 logits on x
    calib_want: np.ndarray | None = None  # FP32 logits on the calibration digits

    @property
    def path(self) -> Path | None:
        return self.model if isinstance(self.model, Path) else None


#: variant -> (source format, module fixture that builds it); several variants per format when
#: the intake reads them differently (in-memory objects, .keras zips, Keras 3 and Keras 2 .h5)
VARIANTS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnx_source"),
    "torch-pt2": ("torch", "pt2_source"),
    "torch-module": ("torch", "torch_module_source"),
    "keras": ("keras", "keras_file_source"),
    "keras-model": ("keras", "keras_model_source"),
    "keras-h5": ("keras", "keras_h5_source"),
    "keras2-h5": ("keras", "keras2_h5_source"),
    "savedmodel": ("savedmodel", "savedmodel_source"),
    "tflite": ("tflite", "tflite_source"),
}
TORCH_EXAMPLE = {"example_inputs": (np.zeros((1, 1, 32, 32), np.float32),)}


def _cells() -> list[Any]:
    cells = []
    for backend in backend_names():
        caps = get_backend(backend).capabilities
        for variant, (fmt, _) in VARIANTS.items():
            if fmt in caps.sources:
                cells += [
                    pytest.param(backend, variant, p, id=f"{backend}-{variant}-{p}")
                    for p in caps.precisions
                    if p != "as-trained"  # QAT sources only: tests/test_qat.py
                ]
    return cells


# ---------------------------------------------------------------- sources, built once


def _torch_ref(model) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def _keras_ref(model) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.asarray(model(x, training=False))


def _tflite_ref(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The .tflite file itself in LiteRT, one picture at a time (its batch size is 1)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        rows = []
        for i in range(len(x)):
            interp.set_tensor(inp["index"], x[i : i + 1])
            interp.invoke()
            rows.append(interp.get_tensor(out["index"]).copy())
        return np.concatenate(rows)

    return run


def _ready(source: Source, digits) -> Source:
    x_train, _, x_test, _ = digits
    loaded = edgekit.load_model(source.model, example_inputs=source.kwargs.get("example_inputs"))
    source.name = loaded.inputs[0].name
    source.x = samples.to_input(x_test[:N_EVAL], layout=source.layout)
    source.want = source.reference(source.x)
    source.calib_want = source.reference(samples.to_input(x_train[:N_CALIB], layout=source.layout))
    return source


@pytest.fixture(scope="module")
def onnx_source(onnx_cnn, torch_cnn, digits):
    return _ready(Source(Path(onnx_cnn), "NCHW", _torch_ref(torch_cnn)), digits)


@pytest.fixture(scope="module")
def pt2_source(torch_cnn, digits, tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("pt2") / "digits.pt2"
    torch.export.save(torch.export.export(torch_cnn, (torch.zeros(1, 1, 32, 32),)), str(path))
    return _ready(Source(path, "NCHW", _torch_ref(torch_cnn)), digits)


@pytest.fixture(scope="module")
def torch_module_source(torch_cnn, digits):
    return _ready(Source(torch_cnn, "NCHW", _torch_ref(torch_cnn), TORCH_EXAMPLE), digits)


@pytest.fixture(scope="module")
def keras_file_source(keras_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "digits.keras"
    keras_cnn.save(path)
    return _ready(Source(path, "NHWC", _keras_ref(keras_cnn)), digits)


@pytest.fixture(scope="module")
def keras_model_source(keras_cnn, digits):
    return _ready(Source(keras_cnn, "NHWC", _keras_ref(keras_cnn)), digits)


@pytest.fixture(scope="module")
def keras_h5_source(keras_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras_h5") / "digits.h5"
    keras_cnn.save(path)
    return _ready(Source(path, "NHWC", _keras_ref(keras_cnn)), digits)


@pytest.fixture(scope="module")
def keras2_h5_source(keras_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras2") / "digits_keras2.h5"
    write_keras2_h5(keras_cnn, path)
    return _ready(Source(path, "NHWC", _keras_ref(keras_cnn)), digits)


@pytest.fixture(scope="module")
def savedmodel_source(keras_cnn, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("savedmodel") / "digits"
    keras_cnn.export(str(path), format="tf_saved_model", verbose=False)
    return _ready(Source(path, "NHWC", _keras_ref(keras_cnn)), digits)


@pytest.fixture(scope="module")
def tflite_source(keras_cnn, digits, tmp_path_factory):
    """An FP32 .tflite made by TensorFlow's own converter (not by edgekit)."""
    import tensorflow as tf

    path = tmp_path_factory.mktemp("tflite") / "digits.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras_cnn).convert())
    return _ready(Source(path, "NHWC", _tflite_ref(path)), digits)


@pytest.fixture(scope="module")
def depth(torch_cnn, keras_cnn) -> int:
    """Weighted layers of the digits CNN: the rounding steps a value passes through."""
    import torch

    layers = sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in torch_cnn.modules())
    assert layers == sum(1 for la in keras_cnn.layers if la.weights)
    return layers


def _source(request, variant: str) -> Source:
    return request.getfixturevalue(VARIANTS[variant][1])


# ---------------------------------------------------------------- tolerances


def _bounds(precision: str, src: Source, info: dict[str, Any], depth: int) -> tuple[float, bool]:
    """(e, whether max |diff| <= e is checked): see the module docstring."""
    scale = float(np.abs(src.want).max())
    reported = ROUNDOFF.get(info.get("inference_precision") or "")
    if precision == "fp32":
        return 1e-4 * scale, True
    if precision == "fp16":
        u_c = reported if reported is not None else FP16
        return 2 * depth * (FP16 + u_c) * scale, True
    if precision.startswith("int"):
        u_c = reported if reported is not None else ROUNDOFF["f32"]
        step = float(np.ptp(src.calib_want)) / 255
        return depth * step + 2 * depth * u_c * scale, False
    pytest.fail(f"no tolerance rule for precision '{precision}': add one to {__name__}")


def _check_agreement(precision: str, src: Source, got: np.ndarray, e: float) -> float:
    return margin_rule(precision, src.want, got, e)


# ---------------------------------------------------------------- the template


def test_every_declared_source_format_is_built():
    for name in backend_names():
        impl = get_backend(name)
        assert set(impl.capabilities.precisions) <= set(PRECISIONS), name
        assert impl.suffix.startswith("."), name
    built = {fmt for fmt, _ in VARIANTS.values()}
    declared = {f for n in backend_names() for f in get_backend(n).capabilities.sources}
    assert declared <= set(INTAKE), declared - set(INTAKE)
    assert declared <= built, f"add a source builder to {__name__} for {declared - built}"


@pytest.fixture(scope="module")
def exports(digits, tmp_path_factory) -> Callable[[str, str, Source], Any]:
    """(backend, variant) -> {precision: report}, or the exception: each source is exported at
    all of its backend's precisions in one call (loaded, converted and run in FP32 once)."""
    done: dict[tuple[str, str], Any] = {}

    def get(backend: str, variant: str, src: Source) -> Any:
        if (backend, variant) not in done:
            precisions = [
                p for p in get_backend(backend).capabilities.precisions if p != "as-trained"
            ]
            out = tmp_path_factory.mktemp(f"{backend}-{variant}")
            try:
                reports = _export(src, backend, precisions, digits, out)
                done[backend, variant] = dict(zip(precisions, reports, strict=True))
            except Exception as exc:  # each cell then reports its own failure
                done[backend, variant] = exc
        return done[backend, variant]

    return get


def _export(src: Source, backend: str, precision: Any, digits, out: Path) -> Any:
    return export_digits(
        src.model,
        backend,
        precision,
        digits,
        out,
        src.name,
        src.layout,
        N_CALIB,
        N_EVAL,
        **src.kwargs,
    )


@pytest.mark.parametrize("backend,variant,precision", _cells())
def test_export_matches_fp32_source(
    backend, variant, precision, exports, depth, digits, request, tmp_path
):
    impl = get_backend(backend)
    src = _source(request, variant)
    found = exports(backend, variant, src)
    try:
        # When the export of all precisions failed, this precision alone shows whether it
        # is the one that fails, and how.
        report = (
            found[precision]
            if isinstance(found, dict)
            else _export(src, backend, precision, digits, tmp_path)
        )
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    assert report.artifact.suffix == impl.suffix
    meta = json.loads(report.sidecar.read_text())
    assert meta["backend"] == backend and meta["recipe"]["precision"] == precision
    assert meta["source"]["format"] == VARIANTS[variant][0]
    if src.path is not None:
        assert meta["source"]["sha256"] and meta["source"]["path"].endswith(src.path.name)
    assert report.artifact.name in meta["artifact"]["files"]
    assert all((report.artifact.parent / f).is_file() for f in meta["artifact"]["files"])

    # Independent check: run the artifact ourselves against the source in its own framework.
    session = edgekit.load(report.artifact)
    assert [s.name for s in session.inputs] == [src.name]
    x = src.x
    got = np.concatenate([session.run({src.name: x[i : i + 1]})[0] for i in range(len(x))])
    e, check_max = _bounds(precision, src, session.info, depth)
    diff = float(np.abs(got - src.want).max())
    if check_max:
        assert diff <= e, f"{precision}: max |diff| {diff:.3g} > e = {e:.3g}"
    top1 = _check_agreement(precision, src, got, e)

    # What the backend says ran, where it says it.
    if "inference_precision" in session.info and precision == "fp32":
        assert session.info["inference_precision"] == "f32"  # not the bf16 a CPU may pick
    layers = session.info.get("layer_precisions")
    if layers and precision == "fp32":
        assert set(layers) == {"f32"}, layers
    if layers and precision == "int8":
        assert any(p[0] in "iu" for p in layers), layers  # integer kernels really run
    assert report.agreement.samples == N_EVAL
    assert report.agreement.top1_agreement == pytest.approx(top1, abs=1e-9)


# ---------------------------------------------------------------- failures, per backend


def _file_source(request, backend: str) -> Source:
    """The backend's first declared source format that has a file here."""
    for fmt in get_backend(backend).capabilities.sources:
        for variant, (vfmt, _) in VARIANTS.items():
            if vfmt == fmt and (src := _source(request, variant)).path is not None:
                return src
    pytest.fail(f"no source file for {backend}")


def _calibrated_precision(backend: str) -> str:
    """A precision that calibrates and takes --keep-float, so the failure comes late."""
    caps = get_backend(backend).capabilities
    for precision in caps.precisions:
        probe = Recipe(precision=precision, keep_float=(BAD_NODE,))
        if precision in NEEDS_CALIBRATION and not caps.refusals(probe):
            return precision
    pytest.fail(f"{backend} offers no calibrated precision that takes --keep-float")


@pytest.mark.parametrize("failure", ["unknown-keep-float", "calibration-shape"])
@pytest.mark.parametrize("backend", backend_names())
def test_failed_export_leaves_nothing(backend, failure, request, digits, tmp_path):
    src = _file_source(request, backend)
    precision = _calibrated_precision(backend)
    pictures = samples.to_input(digits[0][:8], layout=src.layout)
    if failure == "unknown-keep-float":
        fields, error = {"keep_float": (BAD_NODE,)}, UsageError
        calibration = [{src.name: pictures[i : i + 1]} for i in range(len(pictures))]
    else:
        fields, error = {}, DataError
        small = pictures[:, ::2, ::2] if src.layout == "NHWC" else pictures[:, :, ::2, ::2]
        calibration = [{src.name: small[i : i + 1]} for i in range(len(small))]
    out = tmp_path / "new" / "out"
    with pytest.raises(error, match=BAD_NODE if error is UsageError else "shape"):
        edgekit.export(
            src.model, backend, precision, output_dir=out, calibration=calibration, **fields
        )
    assert not (tmp_path / "new").exists(), sorted(p.name for p in (tmp_path / "new").rglob("*"))


@pytest.mark.parametrize("backend", backend_names())
def test_cli_failure_is_one_line_and_its_exit_code(backend, request, tmp_path):
    """The late failure above through the real command: after conversion, in quantize."""
    src = _file_source(request, backend)
    precision = _calibrated_precision(backend)
    before = snapshot(tmp_path)
    argv = ("export", str(src.path), "--target", backend, "-p", precision, "-o", OUT)
    result = run_cli(tmp_path, *argv, "--calibration", "random", "--keep-float", BAD_NODE)
    problems = failure_problems(result, UsageError.exit_code, (BAD_NODE,), tmp_path, before)
    assert not problems, "\n".join(problems)
    assert not (tmp_path / OUT).exists()
