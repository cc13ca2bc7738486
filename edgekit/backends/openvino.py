"""OpenVINO backend: IR artifacts (``.xml`` + ``.bin``) for Intel CPUs, GPUs and NPUs.

Precisions: ``fp32``, ``fp16`` (weights stored as f16), ``int8`` (NNCF post-training
quantization) and ``int8-weights``/``int4-weights`` (NNCF weight compression, activations stay
float: meant for MatMul-heavy transformer models). Choices worth knowing:

* Each source goes through OpenVINO's own frontend, not through ONNX: ONNX files directly,
  PyTorch as a ``torch.export`` ExportedProgram (the route that replaces ``jit.trace``), Keras
  through a ``tf.function`` with a fixed signature (``convert_model`` does not take a ``.keras``
  path), SavedModel and TFLite files by path.
* CPUs with AVX512-BF16 or AMX run a float model in bf16 unless told otherwise, which is not
  what "fp32" promises. Sessions on ``fp32`` artifacts therefore set
  ``INFERENCE_PRECISION_HINT=f32``; every session reports the precision that really runs
  (read back from the compiled model) in ``session.info``, and so does the export sidecar.
* Compiled models are cached in ``$EDGEKIT_CACHE_DIR/openvino`` (default
  ``~/.cache/edgekit/openvino``) so that opening the same artifact again does not recompile.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import ExportOutput
from edgekit.errors import (
    ConversionError,
    DataError,
    DeviceError,
    ModelFormatError,
    ModelNotFoundError,
    UsageError,
    require,
)
from edgekit.model import Feeds, SourceModel, TensorSpec
from edgekit.progress import progress
from edgekit.recipe import Recipe

EXTRA = "openvino"
# Where the artifact's own precision is stored in the IR (read back when a session opens it).
_RT_PRECISION = ["edgekit", "precision"]
# Virtual devices that dispatch to the real ones listed after a colon (AUTO:GPU,CPU).
_VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
_HINTS = ("f32", "bf16", "f16", "default")
# Layer types whose runtime precision says what the model really computes in.
_COMPUTE_LAYERS = {
    "Convolution",
    "Deconvolution",
    "FullyConnected",
    "MatMul",
    "GroupConvolution",
    "ScaledDotProductAttention",
}
_INT4_GROUP = 128


def _no_telemetry() -> None:
    # openvino and nncf send usage events to an analytics service from a forked process unless
    # the user opted out; both fall back to a stub when openvino_telemetry cannot be imported.
    # edgekit sends nothing anywhere, and a fork after JAX/TF threads start can deadlock.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


def _ov() -> Any:
    _no_telemetry()
    return require("openvino", EXTRA)


def _nncf() -> Any:
    _ov()
    nncf = require("nncf", EXTRA)
    # NNCF logs its progress and advice at INFO; the export summary says what matters.
    nncf.set_log_level(logging.ERROR)
    return nncf


def _message(exc: BaseException) -> str:
    """The informative part of an OpenVINO/NNCF error: drop the C++ 'Check ... failed at' and
    'Exception from src/...' framing lines, keep the rest on one line."""
    lines = [ln.strip(" -") for ln in str(exc).strip().splitlines()]
    keep = [
        ln
        for ln in lines
        if ln
        and not ln.startswith(("Check '", "Exception from src", "FrontEnd API failed"))
        and ln not in ("Summary:", "Model wasn't fully converted.")
    ]
    text = "; ".join(keep) or type(exc).__name__
    return text[:300]


def _unconverted_ops(exc: BaseException) -> list[str]:
    """Operation names an OpenVINO frontend reported it has no conversion rule for."""
    text = str(exc)
    found: list[str] = []
    for group in re.findall(r"No conversion rule found for operations?:\s*([^\n]+)", text):
        found += [op.strip() for op in group.split(",") if op.strip()]
    found += re.findall(r"No translator found for (\S+) node", text)
    # ONNX reports "Det-17" (op-opset); the opset is noise for the user.
    return sorted({re.sub(r"-\d+$", "", op) for op in found})


def _other_backends(fmt: str) -> list[str]:
    """Registered backends, other than this one, that export from ``fmt`` sources."""
    from edgekit.backends import backend_names, get_backend

    return [
        n
        for n in backend_names()
        if n != BACKEND.name and fmt in getattr(get_backend(n), "source_formats", ())
    ]


def _conversion_error(source: SourceModel, exc: BaseException) -> ConversionError:
    others = _other_backends(source.format)
    hint = (
        f"try another backend ({', '.join(f'--target {n}' for n in others)})"
        if others
        else f"no other edgekit backend takes a {source.format} source: export from the "
        "original model"
    )
    ops = _unconverted_ops(exc)
    if ops:
        what = "operation" if len(ops) == 1 else "operations"
        return ConversionError(
            f"OpenVINO {_ov_version()} cannot convert the {source.format} model: no conversion "
            f"rule for {what} {', '.join(ops)}; {hint} or replace that operation in the model"
        )
    return ConversionError(
        f"OpenVINO could not convert the {source.format} model: {_message(exc)}; {hint}"
    )


def _ov_version() -> str:
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "?"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Frontends and NNCF print progress bars and warnings to stdout; keep the CLI clean."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------- conversion, one per source


def _from_onnx(source: SourceModel, workdir: Path) -> Any:
    # The intake fixed the input shapes in memory; convert that fixed graph, not the file.
    path = workdir / "source.fp32.onnx"
    source.to_onnx(path)
    return _ov().convert_model(str(path))


def _from_torch(source: SourceModel, workdir: Path) -> Any:
    torch = require("torch", "torch")
    program = source.handle
    if not isinstance(program, torch.export.ExportedProgram):
        args = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in source.inputs)
        try:
            program = torch.export.export(source.handle.eval(), args)
        except Exception as exc:
            raise ConversionError(
                f"torch.export could not capture the module: {_message(exc)}; make forward() "
                "exportable (no data-dependent Python control flow) or export it to ONNX first"
            ) from exc
    return _ov().convert_model(program)


def _from_keras(source: SourceModel, workdir: Path) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = require("tensorflow", "tensorflow")
    model = source.handle
    spec = [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in source.inputs]
    out_names = [o.name for o in source.outputs]

    @tf.function(input_signature=spec)
    def serve(*args: Any) -> dict[str, Any]:
        out = model(args[0] if len(args) == 1 else list(args), training=False)
        outs = list(out.values()) if isinstance(out, dict) else out
        outs = list(outs) if isinstance(outs, list | tuple) else [outs]
        return dict(zip(out_names, outs, strict=True))

    return _ov().convert_model(serve)


def _from_path(source: SourceModel, workdir: Path) -> Any:
    if source.path is None:
        raise UsageError(f"a {source.format} source must be given as a path")
    return _ov().convert_model(str(source.path))


_CONVERTERS = {
    "onnx": _from_onnx,
    "torch": _from_torch,
    "keras": _from_keras,
    "savedmodel": _from_path,
    "tflite": _from_path,
}
_ROUTES = {
    "onnx": "ONNX frontend",
    "torch": "torch.export ExportedProgram -> PyTorch frontend",
    "keras": "tf.function with a fixed signature -> TensorFlow frontend",
    "savedmodel": "SavedModel -> TensorFlow frontend",
    "tflite": "TFLite frontend",
}


def _strip_name(name: str) -> str:
    name = re.sub(r":\d+$", "", name)
    return name.removeprefix("serving_default_")


def _match_ports(ports: Sequence[Any], specs: Sequence[TensorSpec]) -> list[Any]:
    """The port for each spec: by tensor name where names agree, else by position."""
    matched = []
    for spec in specs:
        hits = [
            p
            for p in ports
            if spec.name in p.get_names() or spec.name in {_strip_name(n) for n in p.get_names()}
        ]
        matched.append(hits[0] if len(hits) == 1 else None)
    if all(m is not None for m in matched) and len({id(m) for m in matched}) == len(specs):
        return matched
    if len(ports) != len(specs):
        raise ConversionError(
            f"the converted model has {len(ports)} tensors where the source has {len(specs)} "
            f"({[s.name for s in specs]}); OpenVINO changed the model's interface"
        )
    return list(ports)


def _align_io(model: Any, source: SourceModel) -> None:
    """Give the IR the source's static input shapes and the source's input/output names, so
    the same feed dicts work on the source and on the artifact."""
    ov = _ov()
    inputs = _match_ports(model.inputs, source.inputs)
    shapes = {
        port: ov.PartialShape(list(spec.shape))
        for port, spec in zip(inputs, source.inputs, strict=True)
        if port.get_partial_shape() != ov.PartialShape(list(spec.shape))
    }
    if shapes:
        try:
            model.reshape(shapes)
        except Exception as exc:
            raise ConversionError(
                f"OpenVINO could not fix the input shapes {[list(s.shape) for s in source.inputs]}:"
                f" {_message(exc)}"
            ) from exc
    for port, spec in zip(inputs, source.inputs, strict=True):
        port.get_tensor().set_names({spec.name})
    outputs = _match_ports(model.outputs, source.outputs)
    for port, spec in zip(outputs, source.outputs, strict=True):
        port.get_tensor().set_names({spec.name})


# ---------------------------------------------------------------- NNCF


class _Calibration:
    """Calibration feed dicts for nncf.Dataset, iterated under edgekit's progress bar."""

    def __init__(self, samples: Sequence[Feeds]) -> None:
        self._samples = samples

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for feeds in progress(self._samples, desc="calibrating"):
            yield dict(feeds)

    def __len__(self) -> int:
        return len(self._samples)


def _is_constant(node: Any) -> bool:
    while node.get_type_name() in ("Convert", "Reshape", "Transpose", "FakeQuantize"):
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def looks_like_transformer(model: Any) -> bool:
    """Attention: a Softmax and MatMuls of two activations (QK^T, then weights x V), or a fused
    scaled-dot-product attention op. NNCF's TRANSFORMER model type protects these patterns."""
    softmax = act_matmuls = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "ScaledDotProductAttention":
            return True
        if kind == "Softmax":
            softmax += 1
        elif kind == "MatMul" and not any(_is_constant(v.get_node()) for v in op.input_values()):
            act_matmuls += 1
    return softmax > 0 and act_matmuls >= 2


def _ignored_scope(nncf: Any, model: Any, recipe: Recipe) -> Any:
    if not recipe.keep_float:
        return None
    names = {op.get_friendly_name() for op in model.get_ops()}
    unknown = [n for n in recipe.keep_float if n not in names]
    if unknown:
        weighted = [
            op.get_friendly_name()
            for op in model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
        ]
        raise UsageError(
            f"--keep-float {', '.join(unknown)}: no such node in the OpenVINO model; its "
            f"weighted nodes are {', '.join(weighted[:12]) or 'none'}"
            + (" ..." if len(weighted) > 12 else "")
        )
    return nncf.IgnoredScope(names=list(recipe.keep_float))


def _range_estimator(nncf: Any, recipe: Recipe) -> Any:
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if recipe.calibration_method == "minmax":
        return RangeEstimatorParametersSet.MINMAX
    if recipe.calibration_method == "percentile":
        stat = StatisticsCollectorParameters(
            statistics_type=StatisticsType.QUANTILE,
            aggregator_type=AggregatorType.MEAN,
            quantile_outlier_prob=(100.0 - recipe.percentile) / 100.0,
        )
        return RangeEstimatorParameters(min=stat, max=stat)
    # entropy is refused in OpenVinoBackend._check_recipe before any work is done
    raise UsageError(f"--calibration-method {recipe.calibration_method} is not available here")


def _int8(model: Any, recipe: Recipe, calibration: Sequence[Feeds]) -> tuple[Any, dict[str, Any]]:
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    if not calibration:
        raise DataError("int8 needs calibration samples: pass --calibration PATH")
    transformer = looks_like_transformer(model)
    preset = (
        nncf.QuantizationPreset.PERFORMANCE
        if recipe.activation_symmetric
        else nncf.QuantizationPreset.MIXED
    )
    advanced = AdvancedQuantizationParameters(
        # Full 8-bit weights unless asked: 7-bit ("overflow fix") only matters on x86 CPUs
        # without VNNI, where the u8*s8 multiply-add saturates.
        overflow_fix=OverflowFix.ENABLE if recipe.reduce_range else OverflowFix.DISABLE,
        weights_quantization_params=QuantizationParameters(per_channel=recipe.per_channel),
        activations_range_estimator_params=_range_estimator(nncf, recipe),
    )
    quantized = nncf.quantize(
        model,
        nncf.Dataset(_Calibration(calibration)),
        preset=preset,
        subset_size=len(calibration),
        fast_bias_correction=True,
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        ignored_scope=_ignored_scope(nncf, model, recipe),
        advanced_parameters=advanced,
    )
    details = {
        "quantizer": "nncf.quantize",
        "preset": preset.value,
        # 8-bit activations whose signedness NNCF takes from the data (u8 after a ReLU)
        "activations": "symmetric" if recipe.activation_symmetric else "asymmetric",
        "weights": "int8 symmetric " + ("per-channel" if recipe.per_channel else "per-tensor"),
        "model_type": "transformer" if transformer else "default",
        "fast_bias_correction": True,
        "overflow_fix": advanced.overflow_fix.value,
        "calibration_method": recipe.calibration_method,
        "calibration_samples": len(calibration),
        "keep_float": list(recipe.keep_float),
    }
    return quantized, details


def _weights(model: Any, recipe: Recipe) -> tuple[Any, dict[str, Any]]:
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedCompressionParameters,
        GroupSizeFallbackMode,
    )

    if not recipe.per_channel:
        raise UsageError(
            f"--per-tensor is not available with {recipe.precision}: NNCF compresses weights "
            "per output channel (int8) or per group of 128 (int4)"
        )
    kwargs: dict[str, Any] = {}
    if recipe.precision == "int4-weights":
        kwargs = {
            "mode": nncf.CompressWeightsMode.INT4_SYM,
            "group_size": _INT4_GROUP,
            "ratio": 1.0,
            # Layers whose input width is not a multiple of 128 get the largest power-of-two
            # group that divides it instead of failing the whole export.
            "advanced_parameters": AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST
            ),
        }
    else:
        kwargs = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
    compressed = nncf.compress_weights(
        model, ignored_scope=_ignored_scope(nncf, model, recipe), **kwargs
    )
    details = {
        "quantizer": "nncf.compress_weights",
        "mode": kwargs["mode"].value,
        "activations": "float (weight-only compression)",
        "model_type": "transformer" if looks_like_transformer(model) else "default",
        "keep_float": list(recipe.keep_float),
    }
    if recipe.precision == "int4-weights":
        details.update(
            group_size=_INT4_GROUP,
            ratio=1.0,
            note="embeddings and the last MatMul stay int8 (NNCF backup mode)",
        )
    return compressed, details


def constant_bytes(model: Any) -> dict[str, int]:
    """Bytes of a model's constants (its weights) per element type."""
    sizes: Counter[str] = Counter()
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        kind = op.get_output_element_type(0).get_type_name()
        count = int(np.prod([d.get_length() for d in op.get_output_partial_shape(0)]))
        sizes[kind] += (count * _BITS.get(kind, 32) + 7) // 8
    return dict(sizes.most_common())


_BITS = {"f32": 32, "f16": 16, "bf16": 16, "i64": 64, "i32": 32, "i8": 8, "u8": 8, "i4": 4, "u4": 4}


# ---------------------------------------------------------------- sessions


def cache_dir() -> Path | None:
    """Where compiled models are cached; None if that folder cannot be created."""
    base = os.environ.get("EDGEKIT_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "edgekit"
    path = root / "openvino"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path


_CORE: Any = None


def _core() -> Any:
    global _CORE
    if _CORE is None:
        _CORE = _ov().Core()
    return _CORE


def check_device(core: Any, device: str | None) -> str:
    """The OpenVINO device name for ``device`` or DeviceError listing the available ones."""
    if device in (None, "", "local"):
        return "CPU"
    name = str(device).upper()
    available = list(core.available_devices)
    base, _, rest = name.partition(":")
    wanted = [d for d in rest.split(",") if d] if base in _VIRTUAL_DEVICES else [name]

    def present(dev: str) -> bool:
        return any(
            a == dev or a.startswith(dev + ".") or (dev.endswith(".0") and a == dev[:-2])
            for a in available
        )

    missing = [d for d in wanted if not present(d)]
    if missing or not available:
        raise DeviceError(
            f"OpenVINO device {', '.join(missing) or name} is not available on this machine; "
            f"available: {', '.join(available) or 'none'} (pass --device "
            f"{available[0] if available else 'CPU'}, or AUTO to let OpenVINO choose)"
        )
    return name


def artifact_precision(model: Any) -> str | None:
    """The edgekit precision recorded in an IR; for a foreign IR, 'fp32' if it holds nothing
    but f32 weights, else None (compressed or quantized: no precision is forced)."""
    if model.has_rt_info(_RT_PRECISION):
        return str(model.get_rt_info(_RT_PRECISION).astype(str))
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return None
        if kind == "Constant" and op.get_output_element_type(0).get_type_name() in (
            "f16",
            "bf16",
            "i8",
            "u8",
            "i4",
            "u4",
        ):
            return None
    return "fp32"


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), port.get_element_type().to_dtype().name, shape)


def _layer_precisions(compiled: Any) -> dict[str, int]:
    """How many compute layers run in each precision, from the compiled (runtime) graph."""
    counts: Counter[str] = Counter()
    try:
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS:
                counts[info["runtimePrecision"].astype(str)] += 1
    except Exception:  # runtime graphs of some plugins carry no per-layer precision
        return {}
    return dict(counts.most_common())


def _read_back(compiled: Any, key: str) -> Any:
    try:
        return compiled.get_property(key)
    except Exception:  # virtual devices (AUTO) do not expose every hardware property
        return None


class OvSession:
    """An IR compiled for one OpenVINO device, run synchronously one request at a time."""

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        device: str | None = None,
        inference_precision: str | None = None,
    ) -> None:
        _ov()
        if not path.is_file():
            raise ModelNotFoundError(f"artifact not found: {path}")
        if inference_precision is not None and inference_precision not in _HINTS:
            raise UsageError(
                f"inference precision '{inference_precision}'; choose one of {', '.join(_HINTS)}"
            )
        core = _core()
        dev = check_device(core, device)
        cache = cache_dir()
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise ModelFormatError(
                f"OpenVINO cannot read {path.name}: {_message(exc)}; keep the .bin file next to "
                "the .xml (same stem) and re-export if either is truncated"
            ) from exc
        precision = artifact_precision(model)
        hint = inference_precision or ("f32" if precision == "fp32" else "default")
        config = self._config(core, dev, threads, hint)
        try:
            compiled = core.compile_model(model, dev, config)
        except Exception as exc:
            raise ConversionError(
                f"OpenVINO could not compile {path.name} for {dev}: {_message(exc)}"
            ) from exc
        self._request = compiled.create_infer_request()
        self.inputs = [_spec(p) for p in compiled.inputs]
        self.outputs = [_spec(p) for p in compiled.outputs]
        effective = _read_back(compiled, "INFERENCE_PRECISION_HINT")
        layers = _layer_precisions(compiled)
        if effective is not None:
            effective = effective.get_type_name()
        elif layers:
            effective = next(iter(layers))
        self.info = {
            "runtime": "openvino",
            "version": _ov_version(),
            "device": dev,
            "execution_devices": list(_read_back(compiled, "EXECUTION_DEVICES") or [dev]),
            "threads": _read_back(compiled, "INFERENCE_NUM_THREADS") or threads or 0,
            "artifact_precision": precision,
            "precision_hint": hint,
            # what the float parts of the model really run in on this device
            "inference_precision": effective,
            "layer_precisions": layers,
            "cache_dir": str(cache) if cache else None,
        }

    @staticmethod
    def _config(core: Any, dev: str, threads: int | None, hint: str) -> dict[str, Any]:
        base = dev.partition(":")[0].partition(".")[0]
        virtual = base in _VIRTUAL_DEVICES
        supported = set() if virtual else set(core.get_property(base, "SUPPORTED_PROPERTIES"))
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if hint != "default" and (virtual or "INFERENCE_PRECISION_HINT" in supported):
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads and (virtual or "INFERENCE_NUM_THREADS" in supported):
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if "NUM_STREAMS" in supported:
            config["NUM_STREAMS"] = 1
        return config

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        for i, spec in enumerate(self.inputs):
            if spec.name not in feeds:
                raise DataError(
                    f"input '{spec.name}' missing from the feeds "
                    f"(got {sorted(feeds)}; the model's inputs are "
                    f"{[s.name for s in self.inputs]})"
                )
            x = np.asarray(feeds[spec.name])
            # Writing into the request's own input buffer avoids a tensor rebind per call.
            dst = self._request.get_input_tensor(i).data
            if x.shape != dst.shape:
                raise DataError(
                    f"input '{spec.name}' has shape {list(x.shape)}; the model expects "
                    f"{list(dst.shape)}"
                )
            try:
                np.copyto(dst, x, casting="same_kind")
            except TypeError as exc:
                raise DataError(
                    f"input '{spec.name}' is {x.dtype.name}; the model expects {dst.dtype.name}"
                ) from exc
        try:
            self._request.infer()
        except Exception as exc:
            raise ConversionError(f"OpenVINO failed to run: {_message(exc)}") from exc
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]


# ---------------------------------------------------------------- the backend


class OpenVinoBackend:
    name = "openvino"
    precisions = ("fp32", "fp16", "int8", "int8-weights", "int4-weights")
    source_formats = tuple(_CONVERTERS)
    suffix = ".xml"
    extra = EXTRA

    def versions(self) -> dict[str, str]:
        found = {}
        for dist in ("openvino", "nncf"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[dist] = importlib.metadata.version(dist)
        return found

    def open_session(
        self,
        path: Path,
        threads: int | None = None,
        device: str | None = None,
        inference_precision: str | None = None,
    ) -> OvSession:
        """``inference_precision`` overrides the artifact's own choice: ``f32``, ``bf16``,
        ``f16``, or ``default`` for whatever the device picks (bf16 on AVX512-BF16/AMX CPUs)."""
        return OvSession(Path(path), threads, device, inference_precision)

    def target_report(self, path: Path, target: Any) -> dict[str, Any]:
        """For ``edgekit inspect --target``: does OpenVINO convert the model, to which ops,
        and is the target's device present on this machine."""
        import tempfile

        from edgekit.model import load_model

        lines: list[str] = []
        report: dict[str, Any] = {"convertible": None}
        try:
            source = load_model(path)
            with tempfile.TemporaryDirectory() as tmp:
                model = self.convert(source, Path(tmp))
        except (ConversionError, ModelFormatError) as exc:
            # a model that does not load says nothing about OpenVINO: convertible stays None
            if isinstance(exc, ConversionError):
                report["convertible"] = False
            lines.append(str(exc))
        else:
            ops = Counter(
                op.get_type_name()
                for op in model.get_ordered_ops()
                if op.get_type_name() not in ("Parameter", "Result", "Constant")
            )
            report.update(convertible=True, openvino_ops=dict(ops.most_common()))
            top = ", ".join(f"{k} {v}" for k, v in ops.most_common(8))
            lines.append(f"OpenVINO {_ov_version()} converts it: {sum(ops.values())} ops ({top})")
        device = getattr(target, "device", None)
        if device and "://" not in device:
            try:
                lines.append(f"device {check_device(_core(), device)} is available")
            except DeviceError as exc:
                lines.append(str(exc))
        report["lines"] = lines
        return report

    def convert(self, source: SourceModel, workdir: Path) -> Any:
        """The source as an ov.Model with the source's static shapes and I/O names."""
        _ov()
        convert = _CONVERTERS.get(source.format)
        if convert is None:
            raise UsageError(f"OpenVINO cannot take a {source.format} source")
        try:
            with _quiet():
                model = convert(source, workdir)
        except (ConversionError, UsageError):
            raise
        except Exception as exc:  # frontends raise OpConversionFailure, RuntimeError, ...
            raise _conversion_error(source, exc) from exc
        _align_io(model, source)
        return model

    def export(
        self,
        source: SourceModel,
        recipe: Recipe,
        calibration: Sequence[Feeds],
        workdir: Path,
        stem: str,
    ) -> ExportOutput:
        ov = _ov()
        self._check_recipe(recipe)
        model = self.convert(source, workdir)
        details: dict[str, Any] = {"route": _ROUTES[source.format]}
        if not source.size_bytes:
            # An in-memory source has no file to compare sizes with: its weights as f32 are
            # the FP32 size the export summary compares against.
            details["fp32_size_bytes"] = sum(constant_bytes(model).values())
        advice: list[str] = []
        try:
            with _quiet():
                if recipe.precision == "int8":
                    model, more = _int8(model, recipe, calibration)
                    details["quantization"] = more
                elif recipe.precision in ("int8-weights", "int4-weights"):
                    model, more = _weights(model, recipe)
                    details["quantization"] = more
                    if more["model_type"] != "transformer":
                        advice.append(
                            f"{recipe.precision} compresses weights only and suits "
                            "transformer/MatMul-heavy models; on a CNN --precision int8 "
                            "(weights and activations) runs faster on CPU: 0.42x true-FP32 "
                            "latency against about 0.5x for int8-weights and int4-weights on "
                            "the digits CNN, measured by tools/bench_openvino.py"
                        )
        except (UsageError, DataError, ConversionError):
            raise
        except Exception as exc:
            if type(exc).__name__ == "ValidationError":
                raise UsageError(f"NNCF rejected the recipe: {_message(exc)}") from exc
            raise ConversionError(
                f"NNCF {recipe.precision} compression failed: {_message(exc)}"
            ) from exc
        model.set_rt_info(recipe.precision, _RT_PRECISION)
        xml = workdir / f"{stem}{self.suffix}"
        compress = recipe.precision == "fp16"
        try:
            ov.save_model(model, str(xml), compress_to_fp16=compress)
        except Exception as exc:
            raise ConversionError(f"OpenVINO could not save the IR: {_message(exc)}") from exc
        details.update(
            # read back from the saved IR: what the .bin really holds
            constant_bytes_by_type=constant_bytes(_core().read_model(str(xml))),
            inference_precision_hint="f32" if recipe.precision == "fp32" else "device default",
        )
        if recipe.precision == "fp16":
            advice.append(
                "fp16 stores f16 weights; the CPU runs the model in its default inference "
                "precision (bf16 on CPUs with AVX512-BF16/AMX, f32 otherwise): see "
                "runtime.inference_precision in the sidecar"
            )
        return ExportOutput(
            primary=xml, files=[xml, xml.with_suffix(".bin")], details=details, warnings=advice
        )

    @staticmethod
    def _check_recipe(recipe: Recipe) -> None:
        """Recipe flags that OpenVINO/NNCF cannot honour are errors, not silently dropped."""
        if recipe.io_dtype != "float":
            raise UsageError(
                f"--io {recipe.io_dtype}: OpenVINO IRs keep float inputs and outputs (quantized "
                "layers dequantize inside); integer I/O is for --target tflite"
            )
        if recipe.precision == "fp16" and recipe.keep_float:
            raise UsageError(
                "--keep-float applies to int8, int8-weights and int4-weights with --target "
                "openvino; fp16 stores every weight as f16"
            )
        if recipe.precision == "int8" and recipe.calibration_method == "entropy":
            raise UsageError(
                "--calibration-method entropy: NNCF has no KL-entropy calibration; use minmax "
                "or percentile with OpenVINO targets (entropy is available with --target "
                "onnxruntime)"
            )


BACKEND = OpenVinoBackend()
