"""ONNX Runtime backend: ONNX artifacts at fp32, fp16, static QDQ int8 and dynamic int8.

Quantization uses ORT's own tools. Two deliberate departures from ``quantize_static`` defaults:

* Calibration runs here, not inside ``quantize_static``: its entropy calibrator is created with
  ``num_bins == num_quantized_bins == 128``, so the KL search has a single candidate and gives
  the MinMax range. We build the calibrator with a real histogram (2048 bins), save the ranges
  to ORT's calibration cache and hand that cache to ``quantize_static``.
* QDQ format with uint8 asymmetric activations and int8 per-channel weights: ORT fuses this into
  its u8s8 integer kernels on x86 (VNNI) and ARM. QOperator S8S8 is several times slower on x86.

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
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends import onnxruntime_runner as _runner
from edgekit.backends.base import Capabilities, Converted, ExportOutput, Unsupported, cpu_only
from edgekit.backends.feeds import check_feeds
from edgekit.errors import (
    ConversionError,
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


class _Reader:
    """ORT CalibrationDataReader over in-memory samples, with a progress bar."""

    def __init__(self, samples: Sequence[Feeds], desc: str) -> None:
        self._samples = samples
        self._desc = desc
        self._it: Iterator[Feeds] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(progress(self._samples, desc=self._desc))
        item = next(self._it, None)
        return None if item is None else dict(item)

    def __len__(self) -> int:
        return len(self._samples)


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

        fp32 = converted.path("model.onnx")
        out = workdir / f"{stem}{self.suffix}"
        advice: list[str] = []
        details: dict[str, Any] = {}
        try:
            if recipe.precision == "fp32":
                shutil.copyfile(fp32, out)
            elif recipe.precision == "fp16":
                self._fp16(fp32, out, recipe.keep_float)
                advice.append(
                    "fp16 halves the size but is not faster on ONNX Runtime's CPU provider "
                    "(1.0-1.16x fp32 latency in tools/bench_ort.py); for CPU speed use int8"
                )
            elif recipe.precision == "int8":
                src, note = _opset_for_per_channel(fp32, recipe, workdir)
                advice += note
                details = self._int8_static(src, out, recipe, calibration, workdir)
            else:  # int8-dynamic; Recipe.validate has already rejected anything else
                src, note = _opset_for_per_channel(fp32, recipe, workdir)
                advice += note
                advice += self._int8_dynamic(src, out, recipe)
        except EdgekitError:
            raise
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime {recipe.precision} conversion failed: {_first_line(exc)}"
            ) from exc
        model = onnx.load(str(out), load_external_data=False)
        details["io_quantization"] = _io_quantization(model)
        details["opset"] = next((o.version for o in model.opset_import if o.domain == ""), None)
        return ExportOutput(primary=out, files=[out], details=details, warnings=advice)

    def _fp16(self, src: Path, out: Path, keep_float: Sequence[str]) -> None:
        import onnx
        from onnxconverter_common import float16

        _check_keep_float(src, keep_float)
        model = onnx.load(str(src))
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
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> dict[str, Any]:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            create_calibrator,
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
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[recipe.calibration_method]
        calib_opts: dict[str, Any] = {"symmetric": recipe.activation_symmetric}
        if recipe.calibration_method == "entropy":
            calib_opts.update(num_bins=_HIST_BINS, num_quantized_bins=_ENTROPY_QUANT_BINS)
        elif recipe.calibration_method == "percentile":
            calib_opts.update(num_bins=_HIST_BINS, percentile=recipe.percentile)
        with _quiet():
            calibrator = create_calibrator(
                prepared,
                None,
                augmented_model_path=str(workdir / "augmented.onnx"),
                calibrate_method=method,
                extra_options=calib_opts,
            )
            calibrator.collect_data(_Reader(calibration, "calibrating"))
            ranges = calibrator.compute_data()
        cache = workdir / "calibration.json"
        save_tensors_data(ranges, cache)
        act = QuantType.QInt8 if recipe.activation_symmetric else QuantType.QUInt8
        with _quiet():
            quantize_static(
                str(prepared),
                str(out),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
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
        return {
            "quant_format": "QDQ",
            "activation_type": "int8" if recipe.activation_symmetric else "uint8",
            "weight_type": "int8",
            "calibration_method": recipe.calibration_method,
            "calibration_samples": len(calibration),
        }

    def _int8_dynamic(self, src: Path, out: Path, recipe: Recipe) -> list[str]:
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
                reduce_range=recipe.reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(recipe.keep_float),
            )
        return advice


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
