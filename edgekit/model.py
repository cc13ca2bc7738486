"""Model and artifact types, format detection, and the intake registry.

A :class:`SourceModel` is a loaded model in its own framework together with what every backend
needs from it: static input/output specs, an FP32 reference runner, and a bridge to ONNX. Each
source framework lives in one module under ``edgekit/intake``; this module only dispatches.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelFormatError, ModelNotFoundError, UsageError, speaks_api

Feeds = Mapping[str, np.ndarray]

# format name -> intake module. The only place that lists source formats.
INTAKE: dict[str, str] = {
    "onnx": "edgekit.intake.onnx",
    "torch": "edgekit.intake.torch",
    "keras": "edgekit.intake.keras",
    "savedmodel": "edgekit.intake.keras",
    "tflite": "edgekit.intake.tflite",
    # inspect only: an IR is an artifact, exported from its source instead
    "openvino-ir": "edgekit.intake.openvino_ir",
}

_SUFFIX_FORMAT = {
    ".onnx": "onnx",
    ".pt2": "torch",
    ".keras": "keras",
    ".h5": "keras",
    ".hdf5": "keras",
    ".tflite": "tflite",
    ".xml": "openvino-ir",
}
# Largest dimension accepted in --input-shape (the int32 range every runtime indexes with).
MAX_DIM = 2**31 - 1
# Whole-module pickles run arbitrary code when loaded: refused, with the safe route named.
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin"}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``shape`` holds ints, or strings for dynamic dimensions."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    quantization: dict[str, Any] | None = None

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.quantization:
            out["quantization"] = self.quantization
        return out


@dataclass
class SourceModel:
    """A loaded source model. ``run`` is the FP32 reference in the source framework itself."""

    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    handle: Any
    run: Callable[[Feeds], list[np.ndarray]]
    to_onnx: Callable[[Path], None]
    path: Path | None = None
    sha256: str = ""
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    #: what the prepare stage did to the graph, one record per step (edgekit.prepare)
    preparation: list[dict[str, Any]] = field(default_factory=list)
    #: inputs whose dynamic dimensions ``to_onnx`` keeps (--dynamic), with the shapes the
    #: source declares; ``inputs`` still holds the static shapes that data and checks use
    dynamic: list[TensorSpec] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.path is None:
            return "model"
        return self.path.name.split(".")[0] if self.path.is_file() else self.path.name


def output_list(out: Any) -> list[Any]:
    """A framework call's outputs (one tensor, a list/tuple, or a dict) as a flat list."""
    if isinstance(out, Mapping):
        return list(out.values())
    if isinstance(out, list | tuple):
        return list(out)
    return [out]


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and total size of a file, or of every file below a directory (sorted walk)."""
    h = hashlib.sha256()
    size = 0
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def detect_format(path: Path) -> str:
    """Name the source format of ``path`` or raise with what to do instead."""
    if not path.exists():
        raise ModelNotFoundError(f"model not found: {path} (check the path)")
    if not path.is_dir() and not path.is_file():
        # FIFOs, devices and sockets never end or change under us: reading one would hang.
        raise ModelFormatError(
            f"{path} is not a regular file (a pipe, device or socket?); pass a model file"
        )
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return "savedmodel"
        raise ModelFormatError(
            f"{path} is a directory without saved_model.pb; pass a model file or a "
            "TensorFlow SavedModel directory"
        )
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        raise ModelFormatError(
            f"{path.name}: pickled files can run arbitrary code and are not loaded; save a "
            "torch.export ExportedProgram (torch.export.save(ep, 'model.pt2')) or pass the "
            "nn.Module through the Python API (edgekit.export(module, example_inputs=...))"
        )
    if suffix in _SUFFIX_FORMAT:
        return _SUFFIX_FORMAT[suffix]
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    supported = ", ".join(sorted(_SUFFIX_FORMAT)) + ", SavedModel directory"
    raise ModelFormatError(f"{path.name}: unknown model format; supported: {supported}")


def _intake(fmt: str) -> Any:
    return importlib.import_module(INTAKE[fmt])


def parse_input_shapes(items: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` strings (the --input-shape flag)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or ():
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if any(d <= 0 or d > MAX_DIM for d in shape):
                raise ValueError
        except ValueError:
            raise UsageError(
                f"bad --input-shape '{item}'; write it as NAME=DxDxD with each size from 1 to "
                f"{MAX_DIM}, e.g. input=1x3x224x224"
            ) from None
        shapes[name] = shape
    return shapes


def fix_shapes(
    specs: Sequence[TensorSpec], overrides: Mapping[str, Sequence[int]], notes: list[str]
) -> list[TensorSpec]:
    """Make every input static: apply overrides, default a lone dynamic batch dim to 1."""
    names = {s.name for s in specs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(
            f"--input-shape names unknown input(s) {unknown}; the model's inputs are "
            f"{sorted(names)}"
        )
    fixed = []
    for spec in specs:
        if spec.name in overrides:
            shape = tuple(overrides[spec.name])
            if len(shape) != len(spec.shape):
                raise UsageError(
                    f"--input-shape {spec.name} has rank {len(shape)} but the model's input "
                    f"has rank {len(spec.shape)} {_fmt_shape(spec.shape)}"
                )
            for want, have in zip(shape, spec.shape, strict=True):
                if isinstance(have, int) and have >= 0 and have != want:
                    raise UsageError(
                        f"--input-shape {spec.name}={_fmt_shape(shape)} conflicts with the "
                        f"model's fixed shape {_fmt_shape(spec.shape)}"
                    )
            fixed.append(replace(spec, shape=shape))
            continue
        if spec.is_static:
            fixed.append(spec)
            continue
        dynamic = [i for i, d in enumerate(spec.shape) if not (isinstance(d, int) and d >= 0)]
        if dynamic == [0]:
            fixed.append(replace(spec, shape=(1, *spec.shape[1:])))
            notes.append(f"input '{spec.name}': dynamic batch dimension fixed to 1")
            continue
        example = "x".join(str(d) if isinstance(d, int) and d >= 0 else "N" for d in spec.shape)
        raise ModelFormatError(
            f"input '{spec.name}' has dynamic dimensions {_fmt_shape(spec.shape)}; fix them "
            f"with --input-shape {spec.name}={example} (N replaced by the sizes you deploy)"
        )
    for spec in fixed:
        check_tensor_fits(spec, from_flag=spec.name in overrides)
    return fixed


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_tensor_fits(spec: TensorSpec, from_flag: bool) -> None:
    """Refuse an input whose samples could not be held in memory, before anything allocates
    one: calibration keeps many samples, and the reference and the backend hold more."""
    try:
        itemsize = np.dtype(spec.dtype).itemsize
    except TypeError:
        itemsize = 8
    count = 1
    for d in spec.shape:
        count *= int(d)
    # float64 copies are made on the way (image decoding, random inputs): count 8 bytes.
    need = count * max(itemsize, 8)
    budget = _available_memory() // 8
    if need <= budget:
        return
    where = f"--input-shape {spec.name}" if from_flag else f"the model's input '{spec.name}'"
    message = (
        f"{where} {_fmt_shape(spec.shape)} needs {need / (1 << 30):.1f} GiB per sample, more than "
        f"this machine can hold for calibration and checks ({budget / (1 << 30):.1f} GiB); "
        "use the sizes you deploy"
    )
    raise UsageError(message) if from_flag else ModelFormatError(message)


def _fmt_shape(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def object_format(obj: Any) -> str:
    """Format of an in-memory model, found by its type's module so no framework is imported."""
    for klass in type(obj).__mro__:
        mod = klass.__module__
        if mod.startswith("torch"):
            return "torch"
        if mod.startswith(("keras", "tf_keras")):
            return "keras"
        if mod.startswith("onnx"):
            return "onnx"
    raise UsageError(
        f"cannot export a {type(obj).__name__}; pass a model path, a torch.nn.Module, a "
        "keras.Model or an onnx.ModelProto"
    )


@speaks_api
def load_model(
    model: str | Path | Any,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    dynamic: Sequence[str] = (),
) -> SourceModel:
    """Load a model path or in-memory model as a SourceModel with static inputs.

    ``dynamic`` names inputs whose dynamic dimensions the converted graph keeps (ONNX sources
    only; the plan refuses it elsewhere); their ``inputs`` shapes are the ones data and checks
    use."""
    overrides = dict(input_shapes or {})
    # Only the ONNX intake takes it; the plan has refused --dynamic for every other format.
    extra = {"dynamic": tuple(dynamic)} if dynamic else {}
    if isinstance(model, str | Path):
        path = Path(model)
        fmt = detect_format(path)
        source = _intake(fmt).load(path, overrides, **extra)
        source.sha256, source.size_bytes = file_digest(path)
        source.path = path
        return source
    fmt = object_format(model)
    return _intake(fmt).from_object(model, overrides, example_inputs, **extra)


@speaks_api
def describe(path: str | Path, target: str | None = None) -> dict[str, Any]:
    """What `edgekit inspect` shows: format, I/O, parameter count, size, op histogram.

    With ``target``, the target's backend may add a ``target_report`` (a dict with at least
    ``lines``: human-readable findings, e.g. ops an Edge TPU compiler would reject) through an
    optional ``target_report(path, target)`` method.
    """
    p = Path(path)
    fmt = detect_format(p)
    info = _intake(fmt).describe(p)
    sha, size = file_digest(p)
    out = {"path": str(p), "format": fmt, "size_bytes": size, "sha256": sha, **info}
    if target is not None:
        from edgekit.backends import get_backend
        from edgekit.targets import resolve_target

        tgt = resolve_target(target)
        hook = getattr(get_backend(tgt.backend), "target_report", None)
        out["target_report"] = (
            hook(p, tgt)
            if hook
            else {"lines": [f"backend {tgt.backend} has no target-specific checks"]}
        )
    return out
