"""OpenVINO sessions for IR artifacts: the shared ``ov.Core``, the compiled-model cache, device
checks, and the precision a compiled model really runs in.

* CPUs with AVX512-BF16 or AMX run a float model in bf16 unless told otherwise, which is not
  what "fp32" promises. Sessions on ``fp32`` artifacts therefore set
  ``INFERENCE_PRECISION_HINT=f32``; every session reports the precision that really runs
  (read back from the compiled model) in ``session.info``.
* The artifact's precision is recorded in the IR's runtime info (``RT_PRECISION``) at
  export; a foreign IR counts as ``fp32`` only if it holds nothing but f32 weights.
* Compiled models are cached in ``$EDGEKIT_CACHE_DIR/openvino`` (default
  ``~/.cache/edgekit/openvino``) so that opening the same artifact again does not recompile.

Device matching, the compile configuration, the artifact precision, the I/O specs and the
per-layer and effective precisions come from the benchmark runner
(:mod:`edgekit.backends.openvino.runner`), so that a benchmark and a session agree on them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.feeds import check_feeds
from edgekit.backends.openvino import runner as _runner
from edgekit.backends.openvino.runner import artifact_precision
from edgekit.backends.openvino.runtime import error_text, load_openvino, openvino_version
from edgekit.errors import (
    ConversionError,
    DeviceError,
    ModelFormatError,
    ModelNotFoundError,
    UsageError,
)
from edgekit.model import Feeds, TensorSpec

_HINTS = ("f32", "bf16", "f16", "default")


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
    missing = _runner.missing_devices(available, name)
    if missing:
        raise DeviceError(
            f"OpenVINO device {', '.join(missing) or name} is not available on this machine; "
            f"available: {', '.join(available) or 'none'} (pass --device "
            f"{available[0] if available else 'CPU'}, or AUTO to let OpenVINO choose)"
        )
    return name


def _spec(spec: tuple[str, str, list[int | None]]) -> TensorSpec:
    name, dtype, dims = spec
    return TensorSpec(name, dtype, tuple("?" if d is None else d for d in dims))


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
        config = _runner.compile_config(core, dev, threads, None if hint == "default" else hint)
        try:
            compiled = core.compile_model(model, dev, config)
        except Exception as exc:
            raise ConversionError(
                f"OpenVINO could not compile {path.name} for {dev}: {error_text(exc)}"
            ) from exc
        self._request = compiled.create_infer_request()
        self.inputs = [_spec(p) for p in _runner.io_specs(compiled.inputs)]
        self.outputs = [_spec(p) for p in _runner.io_specs(compiled.outputs)]
        layers = _runner.layer_precisions(compiled)
        read_hint = _runner.type_name(_runner.read_property(compiled, "INFERENCE_PRECISION_HINT"))
        self.info = {
            "runtime": "openvino",
            "version": openvino_version(),
            "device": dev,
            "execution_devices": list(
                _runner.read_property(compiled, "EXECUTION_DEVICES") or [dev]
            ),
            "threads": _runner.read_property(compiled, "INFERENCE_NUM_THREADS") or threads or 0,
            "artifact_precision": precision,
            "precision_hint": hint,
            # what the float parts of the model really run in on this device
            "inference_precision": _runner.float_precision(read_hint, layers),
            "layer_precisions": layers,
            # the benchmark runner's figure: integer kernels if any, else the float precision
            "effective_precision": _runner.effective_precision(read_hint, layers),
            "cache_dir": str(cache) if cache else None,
        }

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        arrays = check_feeds(feeds, self.inputs)
        for i, (spec, x) in enumerate(zip(self.inputs, arrays, strict=True)):
            if spec.is_static:
                # Writing into the request's own input buffer avoids a tensor rebind per call.
                np.copyto(self._request.get_input_tensor(i).data, x)
            else:
                self._request.set_input_tensor(i, load_openvino().Tensor(x))
        try:
            self._request.infer()
        except Exception as exc:
            raise ConversionError(f"OpenVINO failed to run: {error_text(exc)}") from exc
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]
