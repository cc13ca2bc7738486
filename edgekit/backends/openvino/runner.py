"""Benchmark runner for OpenVINO IR (``.xml`` + ``.bin``), and what edgekit's OpenVINO
sessions share with it.

Standalone: needs only openvino and numpy next to ``_harness.py`` (edgekit's
``edgekit/bench/runners/_harness.py``, copied next to this file on a device). One synchronous
infer request with the LATENCY hint; inputs are set on the request once, so the timed call is
``infer()`` alone (what ``benchmark_app -api sync`` times).

The CPU plugin runs float layers in bf16/f16 by default on CPUs that have those instructions
(INFERENCE_PRECISION_HINT), which is not what "fp32" promises. As edgekit's OpenVINO sessions
do, ``--inference-precision match`` (the default) asks for f32 on an FP32 artifact and leaves
compressed or quantized ones to the runtime; ``auto`` always leaves it to the runtime, and
``f32``/``f16``/``bf16`` force a hint. The runner reports what the compiled model really uses.

This file imports nothing of edgekit, so everything :mod:`edgekit.backends.openvino.session`
needs to agree with it lives here and the session imports it: which devices are present, the
compile configuration, the artifact's precision, the I/O specs, and the precision the compiled
model really computes in (per-layer kernel precisions and the effective precision).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

RUNTIME = "openvino"
PIP = "openvino"
# Where edgekit records the artifact's own precision in the IR's runtime info.
RT_PRECISION = ["edgekit", "precision"]
# Virtual devices that dispatch to the real ones listed after a colon (AUTO:GPU,CPU).
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
# Execution-graph layers whose runtime precision says what the model really computes in.
COMPUTE_LAYERS = {
    "Convolution",
    "Deconvolution",
    "FullyConnected",
    "MatMul",
    "GroupConvolution",
    "ScaledDotProductAttention",
}
# Weight types that mark an IR as compressed or quantized rather than FP32.
LOW_WEIGHT_TYPES = ("f16", "bf16", "i8", "u8", "i4", "u4")
# Kernel-name suffixes -> OpenVINO's element type names.
_KERNEL_TYPES = {
    "f32": "f32",
    "fp32": "f32",
    "f16": "f16",
    "fp16": "f16",
    "bf16": "bf16",
    "i8": "i8",
    "u8": "u8",
    "i4": "i4",
    "u4": "u4",
}
_INTEGER = ("i8", "u8", "i4", "u4")


class DeviceNotAvailable(RuntimeError):
    runner_kind = "device"


def import_runtime() -> Any:
    # No usage telemetry from a benchmark run: openvino uses a stub when this import fails.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def companion_files(path: str) -> list[str]:
    """The weights file OpenVINO reads next to the ``.xml``."""
    weights = os.path.splitext(path)[0] + ".bin"
    return [weights] if os.path.exists(weights) else []


# ---------------------------------------------------------------- shared with edgekit's session


def missing_devices(available: Iterable[str], name: str) -> list[str]:
    """The devices ``name`` needs that are not in ``available`` (``core.available_devices``).
    ``GPU`` matches ``GPU.0``; a virtual device (``AUTO:GPU,CPU``) needs the ones it lists."""
    present = list(available)
    base, _, rest = name.partition(":")
    wanted = [d for d in rest.split(",") if d] if base in VIRTUAL_DEVICES else [name]

    def found(dev: str) -> bool:
        return any(
            a == dev or a.startswith(dev + ".") or (dev.endswith(".0") and a == dev[:-2])
            for a in present
        )

    return [d for d in wanted if not found(d)] if present else (wanted or [name])


def compile_config(core: Any, device: str, threads: int | None, hint: str | None) -> dict:
    """The ``compile_model`` configuration: LATENCY, one stream, ``threads``, and the
    inference precision ``hint`` (None: the device's own default). Virtual devices pass the
    settings on; real ones get only what they support."""
    base = device.partition(":")[0].partition(".")[0]
    virtual = base in VIRTUAL_DEVICES
    supported = set() if virtual else set(core.get_property(base, "SUPPORTED_PROPERTIES"))
    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if hint is not None and (virtual or "INFERENCE_PRECISION_HINT" in supported):
        config["INFERENCE_PRECISION_HINT"] = hint
    if threads and (virtual or "INFERENCE_NUM_THREADS" in supported):
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if "NUM_STREAMS" in supported:
        config["NUM_STREAMS"] = 1
    return config


def artifact_precision(model: Any) -> str | None:
    """The edgekit precision recorded in an IR; for a foreign IR, 'fp32' if it holds nothing
    but f32 weights and no FakeQuantize, else None (compressed or quantized)."""
    if model.has_rt_info(RT_PRECISION):
        return str(model.get_rt_info(RT_PRECISION).astype(str))
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return None
        if kind == "Constant" and op.get_output_element_type(0).get_type_name() in (
            LOW_WEIGHT_TYPES
        ):
            return None
    return "fp32"


def io_specs(ports: Iterable[Any]) -> list[tuple[str, str, list[int | None]]]:
    """(name, numpy dtype name, dims with None where dynamic) of compiled-model ports."""
    return [
        (
            port.get_any_name(),
            port.get_element_type().to_dtype().name,
            [d.get_length() if d.is_static else None for d in port.get_partial_shape()],
        )
        for port in ports
    ]


def read_property(compiled: Any, key: str) -> Any:
    try:
        return compiled.get_property(key)
    except Exception:  # virtual devices (AUTO) do not expose every hardware property
        return None


def type_name(value: Any) -> str | None:
    """``f32`` for an element type read back from a compiled model (None stays None)."""
    if value is None:
        return None
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def layer_precisions(compiled: Any) -> dict[str, int]:
    """How many compute layers run in each precision, most common first, from the compiled
    (execution) graph."""
    counts: dict[str, int] = {}
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except Exception:  # not every plugin exposes its execution graph
        return counts
    for op in ops:
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in COMPUTE_LAYERS:
            continue
        # The kernel name ends in the precision it computes in (brgconv_avx512_bf16,
        # brgemm_avx512_I8). runtimePrecision reports the weights' stored type instead: f16
        # for an FP16 IR that runs f32 kernels, u8 for int8-weights that decompress to f32.
        kernel = info["primitiveType"].astype(str) if "primitiveType" in info else ""
        precision = _KERNEL_TYPES.get(kernel.rsplit("_", 1)[-1].lower())
        if precision is None and "runtimePrecision" in info:
            precision = info["runtimePrecision"].astype(str)
        if precision:
            counts[precision] = counts.get(precision, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def float_precision(hint: str | None, layers: dict[str, int]) -> str | None:
    """What the float parts run in: the hint read back from the compiled model, else (a
    virtual device that does not expose it) the most common float kernel precision."""
    return hint or next((p for p in layers if p not in _INTEGER), None)


def effective_precision(hint: str | None, layers: dict[str, int]) -> str | None:
    """Integer compute layers win (an INT8 IR keeps float only around them), else the float
    precision: ``i8 (+f32 elsewhere)``, ``bf16``."""
    floats = float_precision(hint, layers)
    ints = sorted(p for p in layers if p in _INTEGER)
    if ints:
        return f"{ints[0]} (+{floats} elsewhere)" if floats else ints[0]
    return floats


def version(ov: Any) -> str:
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:  # a source build: the build string is all there is
        return ov.get_version()


# ---------------------------------------------------------------- the runner


class _Model:
    def __init__(self, ov, path: str, opts) -> None:
        core = ov.Core()
        device = opts.accelerator or "CPU"
        available = list(core.available_devices)
        if missing_devices(available, device):
            raise DeviceNotAvailable(
                f"device '{device}' is not available (available: {', '.join(available)})"
            )
        model = core.read_model(path)
        hint = opts.inference_precision
        if hint == "match":
            hint = "f32" if artifact_precision(model) == "fp32" else "auto"
        config = compile_config(core, device, opts.threads, None if hint == "auto" else hint)
        self._compiled = core.compile_model(model, device, config)
        self.inputs = io_specs(self._compiled.inputs)
        self.outputs = io_specs(self._compiled.outputs)
        self._request = self._compiled.create_infer_request()
        self._ov = ov
        layers = layer_precisions(self._compiled)
        read_hint = type_name(read_property(self._compiled, "INFERENCE_PRECISION_HINT"))
        self.info = {
            "version": version(ov),
            "build": ov.get_version(),
            "accelerator": device,
            "threads": read_property(self._compiled, "INFERENCE_NUM_THREADS"),
            "streams": read_property(self._compiled, "NUM_STREAMS"),
            "inference_precision_hint": read_hint,
            "layer_precisions": layers,
            "effective_precision": effective_precision(read_hint, layers),
        }

    def set_inputs(self, feeds: dict) -> None:
        for name, arr in feeds.items():
            self._request.set_tensor(name, self._ov.Tensor(arr))

    def run(self) -> None:
        self._request.infer()

    def fetch(self) -> list:
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]


def load(rt: Any, path: str, opts: Any) -> _Model:
    return _Model(rt, path, opts)


if __name__ == "__main__":
    import _harness

    raise SystemExit(_harness.main(sys.modules[__name__]))
