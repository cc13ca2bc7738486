"""Benchmark runner for OpenVINO IR (``.xml`` + ``.bin``).

Standalone: needs only openvino and numpy next to ``_harness.py``. One synchronous infer
request with the LATENCY hint; inputs are set on the request once, so the timed call is
``infer()`` alone (what ``benchmark_app -api sync`` times).

The CPU plugin runs float layers in bf16/f16 by default on CPUs that have those instructions
(INFERENCE_PRECISION_HINT), which is not what "fp32" promises. As edgekit's OpenVINO sessions
do, ``--inference-precision match`` (the default) asks for f32 on an FP32 artifact and leaves
compressed or quantized ones to the runtime; ``auto`` always leaves it to the runtime, and
``f32``/``f16``/``bf16`` force a hint. The runner reports what the compiled model really uses.
"""

from __future__ import annotations

import os
import sys
from typing import Any

RUNTIME = "openvino"
PIP = "openvino"
# Execution-graph layers whose runtime precision says what the model really computes in.
_COMPUTE_LAYERS = {
    "Convolution",
    "Deconvolution",
    "FullyConnected",
    "MatMul",
    "GroupConvolution",
    "ScaledDotProductAttention",
}
# Weight types that mark an IR as compressed or quantized rather than FP32.
_LOW = ("f16", "bf16", "i8", "u8", "i4", "u4")


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


class _Model:
    def __init__(self, ov, path: str, opts) -> None:
        core = ov.Core()
        device = opts.accelerator or "CPU"
        available = core.available_devices
        if not any(d == device or d.split(".")[0] == device for d in available):
            raise DeviceNotAvailable(
                f"device '{device}' is not available (available: {', '.join(available)})"
            )
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        supported = core.get_property(device, "SUPPORTED_PROPERTIES")
        if opts.threads and "INFERENCE_NUM_THREADS" in supported:
            config["INFERENCE_NUM_THREADS"] = opts.threads
        model = core.read_model(path)
        hint = opts.inference_precision
        if hint == "match":
            hint = "f32" if _is_fp32(model) else "auto"
        if hint != "auto" and "INFERENCE_PRECISION_HINT" in supported:
            config["INFERENCE_PRECISION_HINT"] = hint
        if "NUM_STREAMS" in supported:
            config["NUM_STREAMS"] = 1
        self._compiled = core.compile_model(model, device, config)
        self.inputs = []
        for port in self._compiled.inputs:
            shape = port.get_partial_shape()
            dims = [d.get_length() if d.is_static else None for d in shape]
            self.inputs.append((port.get_any_name(), port.get_element_type().to_dtype().name, dims))
        self._request = self._compiled.create_infer_request()
        self._ov = ov
        self.info = {
            "version": _version(ov),
            "build": ov.get_version(),
            "accelerator": device,
            "threads": _property(self._compiled, "INFERENCE_NUM_THREADS"),
            "streams": _property(self._compiled, "NUM_STREAMS"),
            "inference_precision_hint": _type_name(
                _property(self._compiled, "INFERENCE_PRECISION_HINT")
            ),
            "layer_precisions": self._layer_precisions(),
        }
        self.info["effective_precision"] = _effective(self.info)

    def _layer_precisions(self) -> dict:
        counts: dict = {}
        try:
            ops = self._compiled.get_runtime_model().get_ordered_ops()
        except Exception:  # not every plugin exposes its execution graph
            return counts
        for op in ops:
            info = op.get_rt_info()
            if "layerType" not in info or "primitiveType" not in info:
                continue
            if info["layerType"].astype(str) in _COMPUTE_LAYERS:
                # The kernel name ends in the precision it computes in (brgconv_avx512_bf16,
                # jit_avx512_I8); runtimePrecision reports the weights' stored type instead.
                precision = info["primitiveType"].astype(str).rsplit("_", 1)[-1].lower()
                counts[precision] = counts.get(precision, 0) + 1
        return counts

    def set_inputs(self, feeds: dict) -> None:
        for name, arr in feeds.items():
            self._request.set_tensor(name, self._ov.Tensor(arr))

    def run(self) -> None:
        self._request.infer()


def _is_fp32(model) -> bool:
    """FP32 by edgekit's own mark in the IR, else by holding only f32 weights and no
    FakeQuantize (the same rule as edgekit's OpenVINO backend)."""
    if model.has_rt_info(["edgekit", "precision"]):
        return str(model.get_rt_info(["edgekit", "precision"]).astype(str)) == "fp32"
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return False
        if kind == "Constant" and op.get_output_element_type(0).get_type_name() in _LOW:
            return False
    return True


def _version(ov) -> str:
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:  # a source build: the build string is all there is
        return ov.get_version()


def _property(compiled, name: str):
    try:
        return compiled.get_property(name)
    except Exception:
        return None


def _type_name(value) -> str | None:
    if value is None:
        return None
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _effective(info: dict) -> str | None:
    """Integer compute layers win (an INT8 IR keeps f32 only around them), else the hint."""
    layers = info["layer_precisions"]
    ints = sorted(p for p in layers if p.startswith(("i8", "u8", "i4", "u4")))
    if ints:
        return f"{ints[0]} (+{info['inference_precision_hint']} elsewhere)"
    return info["inference_precision_hint"]


def load(rt: Any, path: str, opts: Any) -> _Model:
    return _Model(rt, path, opts)


if __name__ == "__main__":
    import _harness

    raise SystemExit(_harness.main(sys.modules[__name__]))
