"""ONNX Runtime backend: ONNX artifacts at fp32, fp16, static QDQ int8 and dynamic int8.

Quantization uses ORT's own tools. Two deliberate departures from ``quantize_static`` defaults:

* Calibration runs here, not inside ``quantize_static``: its entropy calibrator is created with
  ``num_bins == num_quantized_bins == 128``, so the KL search has a single candidate and gives
  the MinMax range. We build the calibrator with a real histogram (2048 bins), save the ranges
  to ORT's calibration cache and hand that cache to ``quantize_static``.
* QDQ format with uint8 asymmetric activations and int8 per-channel weights: ORT fuses this into
  its u8s8 integer kernels on x86 (VNNI) and ARM. QOperator S8S8 is several times slower on x86.
* Weights are 7-bit (``reduce_range``) when the deployment CPU is an x86 without VNNI (the
  target's ``isa``, else this machine's: :mod:`edgekit.cpu`), as ORT advises for u8s8 there;
  an explicit ``reduce_range`` in the recipe wins. A note says which and why.
* Calibration streams: MinMax keeps per-tensor ranges only; entropy/percentile, whose ORT
  calibrator would hold every activation of every sample before building histograms, run in
  two passes here (exact ranges per tensor, then histograms on those fixed ranges, merged a
  chunk of samples at a time), so that memory is bounded by a chunk and the ranges equal ORT's
  all-at-once ones. The note reports the chunks and the peak RSS.

Sessions take their options, dtype names and I/O specs from the standalone benchmark runner,
:mod:`edgekit.backends.onnxruntime_runner` (kept a module of its own: it imports nothing of
edgekit, so it can be copied to a device).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends import onnxruntime_runner as _runner
from edgekit.backends.base import Capabilities, Converted, ExportOutput, Unsupported, cpu_only
from edgekit.backends.feeds import check_feeds
from edgekit.cpu import deployment_isa
from edgekit.errors import (
    ConversionError,
    DataError,
    EdgekitError,
    ModelFormatError,
    ModelNotFoundError,
    UsageError,
    first_line,
)
from edgekit.model import Feeds, SourceModel, TensorSpec
from edgekit.progress import progress
from edgekit.recipe import Recipe

# Histogram resolution for entropy/percentile calibration (TensorRT's classic 2048 -> 128).
_HIST_BINS = 2048
_ENTROPY_QUANT_BINS = 128
# Op types whose weights int8-dynamic quantizes. Conv is left out on purpose: the dynamic
# ConvInteger kernel is slower than float Conv on CPU.
_DYNAMIC_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization"]
# A chunk of histogram calibration holds its samples' activations plus a copy of the largest
# tensor's (HistogramCollector stacks each tensor's list): at most this share of the memory
# available when calibration starts, and at most _MAX_CHUNK_BYTES, so that the footprint does
# not grow with the machine either.
_MEM_SHARE = 0.5
_MAX_CHUNK_BYTES = 2 << 30
# More samples per chunk buy nothing: the per-call overhead is already amortised.
_MAX_CHUNK = 32
_MINMAX_CHUNK = 32
_GIB = 1 << 30


class _Chunk:
    """ORT CalibrationDataReader giving the next ``size`` samples of a shared iterator, so that
    one progress bar spans every chunk."""

    def __init__(self, samples: Iterator[Feeds], size: int) -> None:
        self._samples = samples
        self._left = size

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._left == 0:
            return None
        item = next(self._samples, None)
        if item is None:
            return None
        self._left -= 1
        return dict(item)


class OrtSession:
    """An ONNX file loaded in ONNX Runtime's CPU execution provider, configured as the
    benchmark runner configures it (:func:`edgekit.backends.onnxruntime_runner.open_session`)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise ModelNotFoundError(f"artifact not found: {path}")
        try:
            self._sess = _runner.open_session(ort, str(path), threads)
        except Exception as exc:  # ORT raises its own unrelated exception types
            raise ModelFormatError(
                f"ONNX Runtime cannot load the model: {_first_line(exc)}; re-export it with "
                "operators ONNX Runtime implements (a lower opset, or without custom ops)"
            ) from exc
        self.inputs = _specs(self._sess.get_inputs())
        self.outputs = _specs(self._sess.get_outputs())
        self._out_names = [o.name for o in self.outputs]
        self.info = {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "provider": "CPUExecutionProvider",
            "threads": threads or 0,
            "effective_precision": _runner.EFFECTIVE_PRECISION,
        }

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        arrays = check_feeds(feeds, self.inputs)
        named = {spec.name: x for spec, x in zip(self.inputs, arrays, strict=True)}
        try:
            return list(self._sess.run(self._out_names, named))
        except Exception as exc:
            raise ConversionError(f"ONNX Runtime failed to run: {_first_line(exc)}") from exc


def _specs(args: Any) -> list[TensorSpec]:
    # A dynamic dimension keeps its symbolic name ("N"), or "?" when it has none.
    return [
        TensorSpec(name, dtype, tuple("?" if d is None else d for d in dims))
        for name, dtype, dims in _runner.io_specs(args)
    ]


def _first_line(exc: BaseException) -> str:
    # ORT prefixes load errors with the (temporary) path it was given; the user never saw it.
    return re.sub(r"^\[[^\]]*\]\s*|Load model from \S+ failed:", "", first_line(exc)).strip()


def _io_quantization(model: Any) -> dict[str, dict[str, Any]]:
    """Scale/zero point of the Q/DQ node right at each graph input/output, where there is one."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    ends = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    found: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in ends:
            name = node.input[0]
        elif node.op_type == "DequantizeLinear" and node.output[0] in ends:
            name = node.output[0]
        else:
            continue
        if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            continue
        zp = numpy_helper.to_array(inits[node.input[2]])
        found[name] = {
            "scale": numpy_helper.to_array(inits[node.input[1]]).ravel().tolist(),
            "zero_point": zp.ravel().tolist(),
            "dtype": zp.dtype.name,
        }
    return found


def _conv_share(model: Any) -> tuple[int, int]:
    ops = [n.op_type for n in model.graph.node]
    convs = sum(op in ("Conv", "ConvTranspose") for op in ops)
    dense = sum(op in ("MatMul", "Gemm") for op in ops)
    return convs, dense


CAPABILITIES = Capabilities(
    # Everything with a bridge to ONNX; a .tflite source has none.
    sources=("onnx", "torch", "keras", "savedmodel"),
    precisions=("fp32", "fp16", "int8", "int8-dynamic"),
    # An ONNX source's graph states its dynamic dims and every ORT precision keeps them.
    dynamic_sources=("onnx",),
    unsupported=(
        Unsupported(
            "io_dtype",
            ("int8", "uint8"),
            None,
            "--io int8/uint8: ONNX Runtime artifacts keep float inputs and outputs (the QDQ "
            "graph quantizes inside); integer I/O is for --target tflite",
        ),
    ),
)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    #: the standalone benchmark runner, and the same file as a module (what it shares)
    runner = Path(_runner.__file__)
    runner_module = _runner
    capabilities = CAPABILITIES
    precisions = CAPABILITIES.precisions
    source_formats = CAPABILITIES.sources
    suffix = ".onnx"
    extra = "onnx"

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

    def open_session(
        self, path: Path, threads: int | None = None, device: str | None = None
    ) -> OrtSession:
        self.check_device(device)
        return OrtSession(Path(path), threads)

    def check_device(self, device: str | None) -> None:
        cpu_only("ONNX Runtime", device)

    def convert(self, source: SourceModel, folder: Path) -> Converted:
        source.to_onnx(folder / "model.onnx")
        return Converted(folder, sorted(p.name for p in folder.iterdir()))

    def quantize(
        self,
        converted: Converted,
        source: SourceModel,
        recipe: Recipe,
        calibration: Sequence[Feeds],
        workdir: Path,
        stem: str,
    ) -> ExportOutput:
        import onnx

        from edgekit.intake.compression import onnx_numerics

        fp32 = converted.path("model.onnx")
        out = workdir / f"{stem}{self.suffix}"
        advice: list[str] = []
        notes: list[str] = []
        details: dict[str, Any] = {}
        numerics = onnx_numerics(onnx.load(str(fp32), load_external_data=False))
        try:
            if recipe.precision == "fp32":
                shutil.copyfile(fp32, out)
            elif recipe.precision == "fp16" and numerics.fp16:
                # Converting again would round nothing and onnxconverter-common refuses it.
                _check_keep_float(fp32, recipe.keep_float)
                if recipe.keep_float:
                    raise UsageError(
                        "--keep-float at fp16 keeps a node's fp32 weights, and this source "
                        f"has none ({numerics.describe()}); export it at --precision fp32, or "
                        "from an fp32 source"
                    )
                shutil.copyfile(fp32, out)
                notes.append(
                    f"the source already stores fp16 weights ({numerics.evidence}): the fp16 "
                    "artifact is its graph unchanged"
                )
                details["fp16_source"] = "kept as is"
            elif recipe.precision == "fp16":
                self._fp16(fp32, out, recipe.keep_float)
                advice.append(
                    "fp16 halves the size but is not faster on ONNX Runtime's CPU provider "
                    "(1.0-1.16x fp32 latency in tools/bench_ort.py); for CPU speed use int8"
                )
            elif recipe.precision == "int8":
                fp32 = _upcast_if_fp16(fp32, numerics, workdir, notes, details)
                src, note = _opset_for_per_channel(fp32, recipe, workdir)
                advice += note
                reduce, scheme = weight_scheme(recipe)
                notes.append(scheme.pop("note"))
                details.update(self._int8_static(src, out, recipe, reduce, calibration, workdir))
                notes.append(details.pop("note"))
                details["scheme"] = scheme
                if details.get("recurrent_dynamic"):
                    notes.append(
                        f"{len(details['recurrent_dynamic'])} LSTM quantized dynamically "
                        "(int8 weights, DynamicQuantizeLSTM: ONNX Runtime's QDQ path leaves "
                        "LSTM float); the rest is static QDQ"
                    )
                if details.get("recurrent_float"):
                    advice.append(details["recurrent_float"])
                advice += _calibration_advice(src, out, recipe, calibration)
            else:  # int8-dynamic; Recipe.validate has already rejected anything else
                fp32 = _upcast_if_fp16(fp32, numerics, workdir, notes, details)
                src, note = _opset_for_per_channel(fp32, recipe, workdir)
                advice += note
                reduce, scheme = weight_scheme(recipe)
                notes.append(scheme.pop("note"))
                advice += self._int8_dynamic(src, out, recipe, reduce)
                details["scheme"] = scheme
            if recipe.precision in ("int8", "int8-dynamic"):
                details["quantized_ops"] = quantized_ops(onnx.load(str(out)))
        except EdgekitError:
            raise
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime {recipe.precision} conversion failed: {_first_line(exc)}"
            ) from exc
        model = onnx.load(str(out), load_external_data=False)
        details["io_quantization"] = _io_quantization(model)
        details["opset"] = next((o.version for o in model.opset_import if o.domain == ""), None)
        return ExportOutput(primary=out, files=[out], details=details, warnings=advice, notes=notes)

    def _fp16(self, src: Path, out: Path, keep_float: Sequence[str]) -> None:
        import onnx
        from onnxconverter_common import float16

        from edgekit.prepare.shapes import unique_value_info

        _check_keep_float(src, keep_float)
        model = onnx.load(str(src))
        # A graph that did not pass through the prepare stage (a torch or Keras bridge, or a
        # preparation that was skipped) may repeat value_info, which the converter mis-types.
        unique_value_info(model)
        # Float32 I/O keeps the artifact a drop-in replacement: callers feed the same arrays.
        # The converter warns for every tiny weight it clamps to fp16's range; the agreement
        # figures in the summary are what tell whether that mattered.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            half = float16.convert_float_to_float16(
                model, keep_io_types=True, node_block_list=list(keep_float) or None
            )
        if keep_float:
            _restore_fp32_weights(half, onnx.load(str(src)))
        onnx.save(half, str(out))

    def _int8_static(
        self,
        src: Path,
        out: Path,
        recipe: Recipe,
        reduce_range: bool,
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> dict[str, Any]:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.calibrate import save_tensors_data
        from onnxruntime.quantization.shape_inference import quant_pre_process

        _check_keep_float(src, recipe.keep_float)
        prepared = workdir / "prepared.onnx"
        try:
            with _quiet():
                quant_pre_process(str(src), str(prepared))
        except Exception:
            # Symbolic shape inference fails on some graphs; quantizing the unprepared model
            # still works, it only loses a few fusions.
            prepared = src
        ranges, calib = calibrate(prepared, recipe, calibration, workdir)
        cache = workdir / "calibration.json"
        save_tensors_data(ranges, cache)
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[recipe.calibration_method]
        act = QuantType.QInt8 if recipe.activation_symmetric else QuantType.QUInt8
        with _quiet():
            quantize_static(
                str(prepared),
                str(out),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                reduce_range=reduce_range,
                activation_type=act,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(recipe.keep_float),
                calibrate_method=method,
                extra_options={
                    "ActivationSymmetric": recipe.activation_symmetric,
                    "WeightSymmetric": True,
                },
                calibration_cache_path=str(cache),
            )
        recurrent = _quantize_recurrent(out, recipe, reduce_range, workdir)
        return {
            **recurrent,
            "quant_format": "QDQ",
            "activation_type": "int8" if recipe.activation_symmetric else "uint8",
            "weight_type": "int8",
            "calibration_method": recipe.calibration_method,
            "calibration_samples": len(calibration),
            "calibration": calib,
            "note": calib.pop("note"),
        }

    def _int8_dynamic(self, src: Path, out: Path, recipe: Recipe, reduce_range: bool) -> list[str]:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _check_keep_float(src, recipe.keep_float)
        convs, dense = _conv_share(onnx.load(str(src), load_external_data=False))
        advice = []
        if convs > dense:
            advice.append(
                f"int8-dynamic quantizes MatMul/Gemm only: this graph's {convs} Conv layers stay "
                "float (dynamic ConvInteger is slower than float on CPU). For CNNs use "
                "--precision int8 with --calibration data."
            )
        with _quiet():
            quantize_dynamic(
                str(src),
                str(out),
                op_types_to_quantize=_DYNAMIC_OPS,
                per_channel=recipe.per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(recipe.keep_float),
            )
        return advice


# Recurrent ops whose weights ORT's QDQ quantizer leaves float. ORT quantizes LSTM only through
# its dynamic path (com.microsoft DynamicQuantizeLSTM: int8 weights, activations quantized per
# call inside the op); it has no quantized GRU or RNN kernel, so those stay float.
_RECURRENT_DYNAMIC = ("LSTM",)
_RECURRENT_FLOAT = ("GRU", "RNN")


def _quantize_recurrent(
    model: Path, recipe: Recipe, reduce_range: bool, workdir: Path
) -> dict[str, Any]:
    """Quantize the LSTM weights of the static QDQ ``model`` in place with ORT's dynamic
    quantizer, restricted to LSTM, so that a CNN+LSTM (ddddocr: 4.2M of its 13.5M parameters
    are LSTM weights) is int8 throughout; the QDQ part is left as it is. Running the dynamic
    pass after the static one (not before) keeps calibration on a plain ONNX graph: the
    calibrator never has to run com.microsoft ops. What stayed float is said."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(model), load_external_data=False).graph
    keep = set(recipe.keep_float)
    lstm = [n.name for n in graph.node if n.op_type in _RECURRENT_DYNAMIC and n.name not in keep]
    floats = sorted({n.op_type for n in graph.node if n.op_type in _RECURRENT_FLOAT})
    found: dict[str, Any] = {}
    if floats:
        found["recurrent_float"] = (
            f"{', '.join(floats)} weights stay float: ONNX Runtime has no quantized kernel for them"
        )
    if not lstm:
        return found
    dynamic = workdir / "recurrent.onnx"
    with _quiet():
        quantize_dynamic(
            str(model),
            str(dynamic),
            op_types_to_quantize=list(_RECURRENT_DYNAMIC),
            nodes_to_quantize=lstm,
            per_channel=recipe.per_channel,
            # DynamicQuantizeLSTM runs the same u8 x s8 kernels as the QDQ Convs.
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
        )
    shutil.move(str(dynamic), str(model))
    found["recurrent_dynamic"] = lstm
    return found


def quantized_ops(model: Any) -> dict[str, dict[str, int]]:
    """Op type -> count, by how the artifact computes it: ``static_qdq`` (reads a
    DequantizeLinear output: ORT fuses it into an integer kernel or runs it on dequantized
    int8 values), ``dynamic_int8`` (ORT's dynamically quantized ops), ``float``."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    found: dict[str, dict[str, int]] = {"static_qdq": {}, "dynamic_int8": {}, "float": {}}
    for node in model.graph.node:
        op = node.op_type
        if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"):
            continue
        if op.startswith("DynamicQuantize") or op in ("MatMulInteger", "ConvInteger"):
            kind = "dynamic_int8"
        elif any(producers.get(i) == "DequantizeLinear" for i in node.input):
            kind = "static_qdq"
        else:
            kind = "float"
        found[kind][op] = found[kind].get(op, 0) + 1
    return found


def _upcast_if_fp16(
    src: Path, numerics: Any, workdir: Path, notes: list[str], details: dict[str, Any]
) -> Path:
    """An fp32 copy of an fp16-weight ``src`` for the int8 quantizers (their calibration and
    DynamicQuantizeLinear take float32 only); ``src`` itself otherwise. fp16 -> fp32 is exact
    (every fp16 value is a float32), so the copy computes what the source's weights say, at
    float32 precision."""
    if not numerics.fp16:
        return src
    import onnx

    model = onnx.load(str(src))
    changed = upcast_fp16(model)
    onnx.save(model, str(workdir / "fp32-upcast.onnx"))
    notes.append(
        f"the source stores fp16 weights ({numerics.evidence}): quantized from an fp32 copy "
        f"({changed} fp16 tensors and casts made fp32; fp16 -> fp32 is exact)"
    )
    details["fp16_source"] = "upcast to fp32 before quantizing"
    return workdir / "fp32-upcast.onnx"


def upcast_fp16(model: Any) -> int:
    """Make every float16 of ``model`` float32 in place: initializers, Constant tensors, Cast
    targets, value_info and the graph's inputs/outputs, in the main graph and subgraphs; how
    many tensors and casts changed."""
    from onnx import TensorProto, numpy_helper

    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    changed = 0

    def tensor(t: Any) -> None:
        nonlocal changed
        if t.data_type == f16:
            up = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)
            t.CopyFrom(up)
            changed += 1

    def graph(g: Any) -> None:
        nonlocal changed
        for t in g.initializer:
            tensor(t)
        for info in (*g.input, *g.output, *g.value_info):
            if info.type.tensor_type.elem_type == f16:
                info.type.tensor_type.elem_type = f32
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensor(attr.t)
                for t in attr.tensors:
                    tensor(t)
                if node.op_type == "Cast" and attr.name == "to" and attr.i == f16:
                    attr.i = f32
                    changed += 1
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    graph(model.graph)
    return changed


#: calibration samples the in-sample check of a MinMax calibration runs (a cheap first look:
#: the export's agreement on evaluation data is the real figure)
_ADVICE_SAMPLES = 8


def _calibration_advice(
    src: Path, out: Path, recipe: Recipe, calibration: Sequence[Feeds]
) -> list[str]:
    """Advice to try entropy calibration when a MinMax int8 artifact already departs from its
    FP32 graph on the calibration samples themselves.

    MinMax sets each activation grid from the extreme value seen, so one outlier coarsens the
    grid for every other value, and more samples only widen it further. On the real-model set
    (edgekit.realmodels "orientation", a PP-LCNet classifier, 8 calibration samples) the
    squeeze-excitation ReLUs came out at 15 dB SQNR under MinMax, mean output cosine 0.938 and
    top-1 56 %; 32 MinMax samples gave 0.913; entropy gave 0.967 and 81 %. The kernels were
    not the cause there: the QDQ graph run in float agreed with the integer kernels (cosine
    0.999 with reduce_range)."""
    if recipe.calibration_method != "minmax" or not calibration:
        return []
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    cosines = []
    for feeds in list(calibration)[:_ADVICE_SAMPLES]:
        for a, b in zip(ref.run(None, dict(feeds)), got.run(None, dict(feeds)), strict=True):
            a = np.asarray(a, np.float64).ravel()
            b = np.asarray(b, np.float64).ravel()
            norm = float(np.linalg.norm(a) * np.linalg.norm(b))
            if norm > 0 and np.isfinite(norm):
                cosines.append(float(a @ b) / norm)
    if not cosines or min(1.0, float(np.mean(cosines))) >= recipe.warn_cosine:
        return []
    return [
        f"int8 with MinMax calibration already departs from FP32 on the calibration samples "
        f"(mean cosine {np.mean(cosines):.4f}): try --calibration-method entropy, which clips "
        "outliers that MinMax stretches every grid to (more MinMax samples widen the ranges "
        "further)"
    ]


def weight_scheme(recipe: Recipe) -> tuple[bool, dict[str, Any]]:
    """Whether int8 weights are 7-bit (``reduce_range``), with the details and the note that
    say why. From the deployment ISA unless the recipe sets ``reduce_range`` itself.

    ORT's guidance (quantize_static's ``reduce_range`` and the quantization docs' "When and why
    do I need to try U8U8?"): x86 CPUs without VNNI run u8s8 through VPMADDUBSW, whose int16
    sums can saturate; 7-bit weights keep them in range and may improve accuracy there.
    VNNI/AMX and ARM accumulate in int32, so full 8 bits cost nothing and are more precise."""
    target = deployment_isa(recipe.isa)
    isa_default = target.saturates
    details: dict[str, Any] = {**target.to_json()}
    if recipe.reduce_range is None:
        reduce = isa_default
        details["reduce_range_from"] = "isa"
        if target.isa is None:
            note = (
                f"int8 weights for {target.describe()}: full 8 bits (ONNX Runtime's default); "
                "set isa in the target profile, or pass --reduce-range for an x86 CPU without "
                "VNNI"
            )
        elif reduce:
            note = (
                f"int8 scheme for {target.describe()}: reduce_range 7-bit weights, as ONNX "
                "Runtime advises for u8s8 without VNNI (VPMADDUBSW adds pairs of products in "
                "int16, which can saturate)"
            )
        else:
            why = (
                "ARM's int8 dot products accumulate in int32"
                if target.isa and target.isa.startswith("arm64")
                else "VNNI accumulates u8 x s8 in int32 without saturating"
            )
            note = f"int8 scheme for {target.describe()}: full 8-bit weights ({why})"
    else:
        reduce = recipe.reduce_range
        details["reduce_range_from"] = "recipe"
        chosen = "reduce_range 7-bit weights" if reduce else "full 8-bit weights"
        if target.isa is None:
            alone = "nothing (the CPU is unknown)"
        else:
            alone = "7-bit weights" if isa_default else "full 8-bit weights"
        note = (
            f"int8 scheme: {chosen}, set explicitly (--reduce-range, the recipe or the target's "
            f"[recipe] table), which wins over the ISA; {target.describe()} alone gives {alone}"
        )
    details["reduce_range"] = reduce
    details["note"] = note
    return reduce, details


def calibrate(
    model: Path, recipe: Recipe, samples: Sequence[Feeds], workdir: Path
) -> tuple[Any, dict[str, Any]]:
    """ORT's calibration ranges (``TensorsData``) for ``model`` over ``samples``, streamed with
    bounded memory, and what it took (chunks, peak RSS, seconds; ``note`` for the summary).

    MinMax: ORT's ``collect_data`` once per chunk; each call reduces its chunk to per-tensor
    min/max and merges them with the earlier ones by min/max, which is exact. (Its own
    ``max_intermediate_outputs`` option is not used: in ORT 1.20-1.23 it discards the chunk
    instead of merging it.) Entropy/percentile: see :func:`_stream_histograms`."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration_method]
    opts: dict[str, Any] = {"symmetric": recipe.activation_symmetric}
    if recipe.calibration_method == "entropy":
        opts.update(num_bins=_HIST_BINS, num_quantized_bins=_ENTROPY_QUANT_BINS)
    elif recipe.calibration_method == "percentile":
        opts.update(num_bins=_HIST_BINS, percentile=recipe.percentile)
    with _quiet():
        calibrator = create_calibrator(
            model,
            None,
            augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method=method,
            extra_options=opts,
        )
    histogram = recipe.calibration_method != "minmax"
    available = _mem_available()
    if histogram:
        # Before any sample runs: a lower bound from the shapes ONNX inference knows.
        _check_fits(_declared_bytes(calibrator), available, recipe.calibration_method)
    with _PeakRss() as rss, _quiet():
        start = time.perf_counter()
        if histogram:
            chunks, chunk, sample_bytes = _stream_histograms(calibrator, samples, available)
        else:
            it = iter(progress(samples, desc="calibrating"))
            chunk, sample_bytes = _MINMAX_CHUNK, None
            chunks = len(range(0, len(samples), chunk))
            for _ in range(chunks):
                calibrator.collect_data(_Chunk(it, chunk))
        collected = time.perf_counter()
        ranges = calibrator.compute_data()
        done = time.perf_counter()
    stats: dict[str, Any] = {
        "method": recipe.calibration_method,
        "samples": len(samples),
        "chunks": chunks,
        "chunk_samples": chunk,
        "sample_activation_bytes": sample_bytes,
        "peak_rss_bytes": rss.peak,
        "rss_before_bytes": rss.start,
        "peak_rss_measured": rss.how,
        "seconds": round(done - start, 2),
        "threshold_search_seconds": round(done - collected, 2),
    }
    peak = f", peak RSS {rss.peak / _GIB:.1f} GiB" if rss.peak else ""
    note = (
        f"calibration: {recipe.calibration_method} over {len(samples)} samples in {chunks} "
        f"chunk{'s' if chunks != 1 else ''}{peak} (whole process; {rss.start / _GIB:.1f} GiB "
        f"before), {done - start:.1f} s"
        if rss.start
        else f"calibration: {recipe.calibration_method} over {len(samples)} samples in "
        f"{chunks} chunks, {done - start:.1f} s"
    )
    search = done - collected
    if recipe.calibration_method == "entropy" and search > 0.5 * (done - start):
        tensors = len(calibrator.tensors_to_calibrate or ())
        note += (
            f"; {search:.0f} s of it in ORT's KL threshold search, a Python loop over "
            f"{(_HIST_BINS - _ENTROPY_QUANT_BINS) // 2 + 1} candidate thresholds for each of "
            f"{tensors} tensors, whatever the sample count (minmax or percentile skip it)"
        )
    stats["note"] = note
    return ranges, stats


def _stream_histograms(
    calibrator: Any, samples: Sequence[Feeds], available: int | None
) -> tuple[int, int, int]:
    """Entropy/percentile histograms over ``samples`` a chunk at a time; (chunks, chunk size,
    bytes of one sample's activations).

    ORT's HistogramCalibrater keeps every activation of every sample, then histograms each
    tensor over [-T, T], T its largest |value|. Given more data later, ORT's collector widens
    the histogram by whole bins of the first call's width, so chunks fed to it one after
    another would end on other bins than the all-at-once histogram. Here a first pass runs
    every sample once and keeps only each tensor's min, max (and min |value| for symmetric
    percentile); the collector starts from empty histograms on exactly the bins the
    all-at-once call would have made, and every chunk then lands on those bins (ORT's
    ``merge_histogram`` adds counts when the range does not grow). Counts, bins and min/max
    are then the all-at-once ones, so the ranges are too; the price is running each sample
    twice."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    sess = calibrator.infer_session
    names = [o.name for o in sess.get_outputs()]
    graph_inputs = {i.name for i in sess.get_inputs()}
    wanted = [(i, n) for i, n in enumerate(names) if n in calibrator.tensors_to_calibrate]
    absolute = calibrator.method == "percentile" and calibrator.symmetric
    lo: dict[str, Any] = {}
    hi: dict[str, Any] = {}
    lo_abs: dict[str, Any] = {}
    dtypes: dict[str, Any] = {}
    sample_bytes = largest = 0
    for feeds in progress(samples, desc="calibrating: ranges"):
        outs = sess.run(None, dict(feeds))
        size = sum(outs[i].nbytes for i, _ in wanted)
        if size > sample_bytes:
            sample_bytes = size
            _check_fits(size, available, calibrator.method)
        for i, name in wanted:
            arr = outs[i]
            largest = max(largest, arr.nbytes)
            dtypes[name] = arr.dtype
            if arr.size == 0:
                continue
            # fmin/fmax skip NaN as ORT's nanmin/nanmax do
            mn, mx = np.nanmin(arr), np.nanmax(arr)
            lo[name] = mn if name not in lo else np.fmin(lo[name], mn)
            hi[name] = mx if name not in hi else np.fmax(hi[name], mx)
            if absolute:
                amin = np.nanmin(np.abs(arr))
                lo_abs[name] = amin if name not in lo_abs else np.fmin(lo_abs[name], amin)
        del outs
    collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    bins = calibrator.num_bins
    for _, name in wanted:
        dtype = dtypes[name]
        mn = lo.get(name, np.array(0, dtype))
        mx = hi.get(name, np.array(0, dtype))
        if absolute:
            # ORT's first histogram of |x| spans [min |x|, max |x|] (np.histogram's own range)
            ends = np.array([lo_abs.get(name, 0), max(abs(mn), abs(mx))], dtype)
            edges = np.histogram(ends, bins=bins)[1].astype(dtype)
            collector.histogram_dict[name] = (np.zeros(bins, np.int64), edges, mn, mx)
        else:
            threshold = np.array(max(abs(mn), abs(mx)), dtype=dtype)
            edges = np.histogram(np.empty(0, dtype), bins, range=(-threshold, threshold))[1]
            collector.histogram_dict[name] = (np.zeros(bins, np.int64), edges, mn, mx, threshold)
    budget = (
        _MAX_CHUNK_BYTES if available is None else min(_MAX_CHUNK_BYTES, available * _MEM_SHARE)
    )
    chunk = int(max(1, min(_MAX_CHUNK, len(samples), budget // max(1, sample_bytes + largest))))
    chunks = 0
    held: dict[str, list[np.ndarray]] = {name: [] for _, name in wanted}
    for k, feeds in enumerate(progress(samples, desc="calibrating: histograms"), 1):
        outs = sess.run(None, dict(feeds))
        for i, name in wanted:
            # ORT copies outputs that are graph inputs (onnxruntime#21922); so do we
            held[name].append(outs[i].copy() if name in graph_inputs else outs[i])
        del outs
        if k % chunk == 0 or k == len(samples):
            collector.collect(held)
            held = {name: [] for _, name in wanted}
            chunks += 1
    calibrator.collector = collector
    return chunks, chunk, sample_bytes


def _declared_bytes(calibrator: Any) -> int:
    """Bytes of one sample's calibrated activations from the shapes ONNX shape inference wrote
    into the augmented model; a symbolic dimension counts as 1, so this is a lower bound."""
    from onnx import helper

    infos = {vi.name: vi for vi in calibrator.model.graph.value_info}
    infos.update({vi.name: vi for vi in calibrator.model.graph.output})
    total = 0
    for name in calibrator.tensors_to_calibrate or ():
        vi = infos.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            continue
        kind = vi.type.tensor_type
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(kind.elem_type)).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        count = 1
        for dim in kind.shape.dim:
            count *= dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1
        total += count * itemsize
    return total


def _check_fits(sample_bytes: int, available: int | None, method: str) -> None:
    """Refuse a histogram calibration that cannot fit even one sample at a time: it holds one
    sample's activations and a copy of a tensor's while histogramming."""
    if available is None or 2 * sample_bytes <= available:
        return
    raise DataError(
        f"--calibration-method {method} needs the activations of one sample in memory, about "
        f"{2 * sample_bytes / _GIB:.1f} GiB for this model, and {available / _GIB:.1f} GiB is "
        "available; use --calibration-method minmax (per-tensor ranges only), smaller inputs, "
        "or a machine with more memory"
    )


def _mem_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where there is none."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def _status_bytes(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


class _PeakRss:
    """The peak resident set size of this whole process over a ``with`` block.

    Linux keeps the peak (VmHWM) itself, and writing 5 to /proc/self/clear_refs resets it to
    the current RSS, so the peak read at the end is the kernel's exact one for the block
    (``how = "VmHWM"``). Where that reset is refused, a thread samples VmRSS every 20 ms and
    can miss a short spike (``how = "sampled VmRSS"``); without /proc, ``peak`` is None."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.peak: int | None = None
        self.how = "unavailable"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakRss:
        self.start = _status_bytes("VmRSS")
        if self.start is None:
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.how = "VmHWM"
        except OSError:
            self.how = "sampled VmRSS"
            self.peak = self.start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = _status_bytes("VmRSS") or 0
            self.peak = max(self.peak or 0, rss)

    def __exit__(self, *exc: object) -> None:
        if self.how == "VmHWM":
            self.peak = _status_bytes("VmHWM")
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


# Per-channel DequantizeLinear (its ``axis`` attribute) exists from opset 13 on.
_PER_CHANNEL_OPSET = 13


def _opset_for_per_channel(src: Path, recipe: Recipe, workdir: Path) -> tuple[Path, list[str]]:
    """Per-channel int8 of an opset 11/12 model (PaddleOCR and ddddocr exports, say) writes
    DequantizeLinear with ``axis``, which ONNX Runtime then refuses as an invalid graph: lift
    the graph to opset 13 first with ONNX's own version converter, and check that it still
    computes the same thing on a random input before using it."""
    import onnx
    from onnx import version_converter

    if not recipe.per_channel:
        return src, []
    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= _PER_CHANNEL_OPSET:
        return src, []
    try:
        # No onnx.checker here: real exports often fail it (ddddocr declares an output without
        # a shape) while running fine; ONNX Runtime running both graphs below is the check.
        upgraded = version_converter.convert_version(model, _PER_CHANNEL_OPSET)
    except Exception as exc:
        raise ConversionError(
            f"per-channel int8 needs opset {_PER_CHANNEL_OPSET} and ONNX's version converter "
            f"could not lift this opset-{opset} model ({_first_line(exc)}); re-export it at "
            f"opset {_PER_CHANNEL_OPSET} or later, or pass --per-tensor"
        ) from exc
    lifted = workdir / "opset13.onnx"
    onnx.save(upgraded, str(lifted))
    if not _same_outputs(src, lifted):
        raise ConversionError(
            f"lifting this opset-{opset} model to opset {_PER_CHANNEL_OPSET} for per-channel "
            "int8 changed its outputs; re-export it at opset 13 or later, or pass --per-tensor"
        )
    return lifted, [
        f"the source is opset {opset}; per-channel int8 needs opset {_PER_CHANNEL_OPSET}, so "
        f"the graph was lifted to opset {_PER_CHANNEL_OPSET} (outputs checked unchanged)"
    ]


def _same_outputs(a: Path, b: Path) -> bool:
    import onnxruntime as ort

    sa = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in sa.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        kind = str(arg.type)
        if "float" not in kind:
            return True  # no neutral random input for ids or flags: the checker's word stands
        feeds[arg.name] = rng.standard_normal(shape).astype(np.float32)
    out_a, out_b = sa.run(None, feeds), sb.run(None, feeds)
    return all(
        np.allclose(x, y, rtol=1e-4, atol=1e-5 * (np.abs(x).max() + 1))
        for x, y in zip(out_a, out_b, strict=True)
    )


def _restore_fp32_weights(half: Any, original: Any) -> None:
    """onnxconverter-common turns every weight into fp16 and casts it back for a node kept in
    float, so the node computes in fp32 on rounded weights. Feed such Casts' consumers the
    original fp32 weight instead: a kept node keeps its real weights."""
    import onnx
    from onnx import numpy_helper

    fp32 = {t.name: t for t in original.graph.initializer}
    inits = {t.name for t in half.graph.initializer}
    consumers: dict[str, int] = {}
    for node in half.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    to_float = [
        n
        for n in half.graph.node
        if n.op_type == "Cast"
        and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)
    ]
    for cast in to_float:
        src = cast.input[0]
        if src not in inits or src not in fp32 or consumers.get(src) != 1:
            continue
        if numpy_helper.to_array(fp32[src]).dtype != np.float32:
            continue
        restored = numpy_helper.to_array(fp32[src])
        half.graph.initializer.append(numpy_helper.from_array(restored, cast.output[0]))
        half.graph.node.remove(cast)
        stale = next(t for t in half.graph.initializer if t.name == src)
        half.graph.initializer.remove(stale)


def _check_keep_float(src: Path, keep: Sequence[str]) -> None:
    """ORT skips names in nodes_to_exclude that match nothing: a typo would quantize the very
    layer the user meant to keep in float, so an unknown name is refused here."""
    if not keep:
        return
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    names = {n.name for n in graph.node}
    unknown = [k for k in keep if k not in names]
    if unknown:
        weighted = [n.name for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
        raise UsageError(
            f"--keep-float {', '.join(unknown)}: no such node in the ONNX model; its weighted "
            f"nodes are {', '.join(weighted[:12]) or 'none'}"
            + (" ..." if len(weighted) > 12 else "")
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantization tools log advice at WARNING and print; the summary says what matters."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


BACKEND = OnnxRuntimeBackend()
