"""OpenVINO sessions for IR artifacts: the shared ``ov.Core``, the compiled-model cache, device
checks, and the precision a compiled model really runs in.

* CPUs with AVX512-BF16 or AMX run a float model in bf16 unless told otherwise, which is not
  what "fp32" promises. Sessions on ``fp32`` artifacts therefore set
  ``INFERENCE_PRECISION_HINT=f32``; every session reports the precision that really runs
  (read back from the compiled model) in ``session.info``.
* The artifact's precision is recorded in the IR's runtime info (:data:`RT_PRECISION`) at
  export; a foreign IR counts as ``fp32`` only if it holds nothing but f32 weights.
* Compiled models are cached in ``$EDGEKIT_CACHE_DIR/openvino`` (default
  ``~/.cache/edgekit/openvino``) so that opening the same artifact again does not recompile.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.openvino_runtime import error_text, load_openvino, openvino_version
from edgekit.errors import (
    ConversionError,
    DataError,
    DeviceError,
    ModelFormatError,
    ModelNotFoundError,
    UsageError,
)
from edgekit.model import Feeds, TensorSpec

# Where the artifact's own precision is stored in the IR (read back when a session opens it).
RT_PRECISION = ["edgekit", "precision"]
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


def shared_core() -> Any:
    """The process's one ``ov.Core``, created on first use."""
    global _CORE
    if _CORE is None:
        _CORE = load_openvino().Core()
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
    if model.has_rt_info(RT_PRECISION):
        return str(model.get_rt_info(RT_PRECISION).astype(str))
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
        load_openvino()
        if not path.is_file():
            raise ModelNotFoundError(f"artifact not found: {path}")
        if inference_precision is not None and inference_precision not in _HINTS:
            raise UsageError(
                f"inference precision '{inference_precision}'; choose one of {', '.join(_HINTS)}"
            )
        core = shared_core()
        dev = check_device(core, device)
        cache = cache_dir()
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise ModelFormatError(
                f"OpenVINO cannot read {path.name}: {error_text(exc)}; keep the .bin file next "
                "to the .xml (same stem) and re-export if either is truncated"
            ) from exc
        precision = artifact_precision(model)
        hint = inference_precision or ("f32" if precision == "fp32" else "default")
        config = self._config(core, dev, threads, hint)
        try:
            compiled = core.compile_model(model, dev, config)
        except Exception as exc:
            raise ConversionError(
                f"OpenVINO could not compile {path.name} for {dev}: {error_text(exc)}"
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
            "version": openvino_version(),
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
            raise ConversionError(f"OpenVINO failed to run: {error_text(exc)}") from exc
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]
