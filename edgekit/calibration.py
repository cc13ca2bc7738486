"""Calibration and evaluation data: read samples and check them against a model's inputs.

Quantizers and evaluators need a list of feed dicts ``{input name: array}``. This module builds
that list from any of:

* a folder of images (``.png .jpg .jpeg .bmp .webp``, searched recursively), preprocessed by
  :class:`ImageOptions` and an optional ``preprocess.toml`` in the folder;
* a ``.npy`` file (single-input models) or a ``.npz`` file keyed by input name — or the same
  in memory: an ``ndarray`` or a ``{name: array}`` mapping;
* any iterable of feed dicts, or an ONNX Runtime style data reader (``get_next()``);
* the string ``"random"``: seeded random tensors, for smoke tests only.

Every sample is checked (names, static shape, dtype, NaN/inf) before anything is returned, so
a backend never starts a long quantization run on data that fails at sample 900. Sampling with
``limit`` is deterministic: the same ``seed`` picks the same samples on every machine.
"""

from __future__ import annotations

import os
import tomllib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from PIL import Image

from edgekit.backends.feeds import as_array, cast
from edgekit.errors import DataError, UsageError, speaks_api

if TYPE_CHECKING:
    from edgekit.model import TensorSpec

__all__ = [
    "DEFAULT_RANDOM_SAMPLES",
    "IMAGE_SUFFIXES",
    "PREPROCESS_FILE",
    "DataReader",
    "ImageOptions",
    "find_images",
    "infer_layout",
    "load_samples",
    "split_samples",
]

Feed = dict[str, np.ndarray]
T = TypeVar("T")

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PREPROCESS_FILE = "preprocess.toml"
DEFAULT_RANDOM_SAMPLES = 16

_LAYOUTS = ("NCHW", "NHWC")
_COLORS = ("rgb", "bgr", "gray")
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_SOURCES_HINT = "pass an image folder, a .npy/.npz file, an iterable of feed dicts, or 'random'"


@runtime_checkable
class DataReader(Protocol):
    """ONNX Runtime's calibration reader protocol: ``get_next()`` returns a feed dict or None."""

    def get_next(self) -> Mapping[str, Any] | None: ...


CalibrationSource = (
    str
    | os.PathLike[str]
    | np.ndarray
    | Mapping[str, Any]
    | Iterable[Mapping[str, Any]]
    | DataReader
)


@dataclass(frozen=True)
class ImageOptions:
    """How image files become input tensors.

    A field left ``None`` is taken from ``preprocess.toml`` in the image folder if that file sets
    it, else from the default below; values given here (the command-line flags) win over the TOML.

    * ``layout``: ``"NCHW"`` or ``"NHWC"``; default: inferred from the input shape
      (:func:`infer_layout`).
    * ``color``: ``"rgb"``, ``"bgr"`` or ``"gray"``; default: gray for 1 channel, else rgb.
    * ``scale``: pixel values (0..255) are multiplied by it; default ``1/255``. A string such as
      ``"1/255"`` is accepted.
    * ``mean``, ``std``: per channel (or one value for all), applied after scaling as
      ``(x * scale - mean) / std``; default 0 and 1. A comma-separated string is accepted.
    * ``resize``: ``"nearest"``, ``"bilinear"`` or ``"bicubic"``; default bilinear. (``None``
      rather than ``"bilinear"`` as the field default, so a TOML value can apply.)

    For uint8 inputs the 8-bit pixels are fed as they are and for int8 inputs shifted by -128
    (the usual zero point of int8 image inputs); ``scale``, ``mean`` and ``std`` are ignored
    because a quantized input's own scale/zero point already encode them.
    """

    layout: str | None = None
    color: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            try:
                # Frozen, but normalising once here means every later reader sees clean values.
                object.__setattr__(self, f.name, _normalize_option(f.name, value))
            except ValueError as exc:
                raise UsageError(f"bad --{f.name} {value!r}: {exc}") from None


def infer_layout(shape: Sequence[int | str]) -> str:
    """Guess the layout of a rank-4 image input: channels (1 or 3) at dim 1 → NCHW, last → NHWC."""
    shape = tuple(shape)
    if len(shape) != 4:
        raise DataError(
            f"an image input needs rank 4 (NCHW or NHWC) but the shape is {shape}; "
            "pass a .npy/.npz file for this model instead of images"
        )
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    raise DataError(
        f"cannot tell whether input shape {shape} is NCHW or NHWC; pass --layout NCHW or "
        f"--layout NHWC (or set layout in {PREPROCESS_FILE})"
    )


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files below ``folder`` in the order :func:`load_samples` uses.

    Sorted by relative POSIX path so the order is the same on every OS. Hidden files and
    folders are skipped: macOS ``._name.png`` resource forks and ``.ipynb_checkpoints`` copies
    look like images but are not.
    """
    root = Path(folder)
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        found.append((rel.as_posix(), path))
    return [path for _, path in sorted(found)]


@speaks_api
def load_samples(
    source: CalibrationSource,
    inputs: Sequence[TensorSpec],
    *,
    image_options: ImageOptions | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Read calibration/evaluation samples as feed dicts matching ``inputs`` exactly.

    ``source`` is an image folder, a ``.npy``/``.npz`` path, an ``ndarray``, a ``{name: array}``
    mapping, an iterable of feed dicts, an object with ``get_next()``, or ``"random"`` (a file
    literally named ``random`` must be passed as ``./random``). Arrays are either exactly one
    input's shape (one sample) or ``(N, *shape[1:])`` when the batch dimension is 1 (N samples).

    With ``limit`` smaller than the number of samples, ``limit`` of them are chosen by
    ``numpy.random.default_rng(seed).choice(n, limit, replace=False)`` and kept in source order;
    image files are chosen before any is decoded. Iterables are read to the end first, so the
    choice is the same however the data arrives. For ``"random"``, ``limit`` is the count
    (default :data:`DEFAULT_RANDOM_SAMPLES`).

    Every returned array has the input's static shape and numpy dtype. Raises
    :class:`~edgekit.errors.DataError` for data that is missing, unreadable or does not match,
    and :class:`~edgekit.errors.UsageError` for a bad ``limit`` or image options given for a
    source that is not an image folder.
    """
    specs = list(inputs)
    if not specs:
        raise UsageError("the model has no inputs, so there is nothing to feed calibration data to")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1
    ):
        raise UsageError(f"--calibration-samples must be a whole number >= 1, got {limit!r}")
    limit = None if limit is None else int(limit)
    expected = {spec.name: (_static_shape(spec), _dtype(spec)) for spec in specs}
    options = image_options or ImageOptions()

    if isinstance(source, str) and source == "random":
        _no_image_options(options, "'random'")
        return _random_samples(expected, limit or DEFAULT_RANDOM_SAMPLES, seed)

    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise DataError(f"calibration data not found: {path}; {_SOURCES_HINT}")
        if path.is_dir():
            return _folder_samples(path, specs, expected, options, limit, seed)
        _no_image_options(options, path.name)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return _array_samples(_read_npy(path, specs), expected, limit, seed, path.name)
        if suffix == ".npz":
            return _npz_samples(path, expected, limit, seed)
        raise DataError(
            f"calibration data {path}: unsupported file type '{path.suffix}'; put images in a "
            "folder and pass the folder, or pass a .npy/.npz file"
        )

    _no_image_options(options, f"a {type(source).__name__}")
    if isinstance(source, np.ndarray):
        return _array_samples(_single_input(source, specs, "the array"), expected, limit, seed)
    if isinstance(source, Mapping):
        missing = [name for name in expected if name not in source]
        if missing:
            raise DataError(_missing_inputs_message("the data mapping", missing, source, expected))
        arrays = {name: as_array(source[name], f"input '{name}'") for name in expected}
        return _array_samples(arrays, expected, limit, seed)
    if isinstance(source, DataReader):
        items = list(iter(source.get_next, None))
    elif isinstance(source, Iterable) and not isinstance(source, bytes | bytearray):
        items = list(source)
    else:
        raise DataError(
            f"cannot read calibration data from a {type(source).__name__}; {_SOURCES_HINT}"
        )
    if not items:
        raise DataError(f"the calibration data iterable yielded no samples; {_SOURCES_HINT}")
    chosen = _choose(len(items), limit, seed)
    return [_check_sample(f"calibration sample {i}", items[i], expected) for i in chosen]


def split_samples(
    samples: Sequence[T], n_calib: int, n_eval: int, seed: int = 0
) -> tuple[list[T], list[T]]:
    """Split samples into disjoint calibration and evaluation lists, deterministically.

    The indices are shuffled with ``numpy.random.default_rng(seed)``; the first ``n_calib`` go to
    calibration and the next ``n_eval`` to evaluation. Calibration is served first: with too few
    samples for both it gets ``n_calib`` (or all of them) and evaluation gets what remains, which
    may be nothing — callers that need evaluation data must check for an empty list. Each list
    keeps the samples in their original order.
    """
    for flag, value in (("calibration", n_calib), ("evaluation", n_eval)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"the {flag} sample count must be a whole number >= 0, got {value!r}")
    order = np.random.default_rng(seed).permutation(len(samples))
    calib = sorted(order[:n_calib].tolist())
    evaluation = sorted(order[n_calib : n_calib + n_eval].tolist())
    return [samples[i] for i in calib], [samples[i] for i in evaluation]


# --- options -------------------------------------------------------------------------------


def _normalize_option(name: str, value: Any) -> Any:
    """Validate and canonicalise one image option; ValueError says what is accepted."""
    if name == "layout":
        if isinstance(value, str) and value.upper() in _LAYOUTS:
            return value.upper()
        raise ValueError("layout must be NCHW or NHWC")
    if name == "color":
        if isinstance(value, str) and value.lower() in _COLORS:
            return value.lower()
        raise ValueError("color must be rgb, bgr or gray")
    if name == "resize":
        if isinstance(value, str) and value.lower() in _RESAMPLE:
            return value.lower()
        raise ValueError("resize must be nearest, bilinear or bicubic")
    if name == "scale":
        scale = _number(value)
        if scale <= 0:
            raise ValueError("scale must be greater than 0, e.g. 0.00392156862745098 or '1/255'")
        return scale
    if name in ("mean", "std"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        elif isinstance(value, int | float):
            value = [value]
        if not isinstance(value, Sequence) or not value:
            raise ValueError(f"{name} must be one number or a list with one per channel")
        numbers = tuple(_number(v) for v in value)
        if name == "std" and any(v <= 0 for v in numbers):
            raise ValueError("std values must be greater than 0")
        return numbers
    raise ValueError(f"unknown image option '{name}'")  # pragma: no cover - fields are fixed


def _number(value: Any) -> float:
    """A finite float from a number, a numeric string, or a fraction string like '1/255'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        if isinstance(value, str):
            num, sep, den = value.partition("/")
            number = float(num) / float(den) if sep else float(value)
        else:
            number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not np.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _read_preprocess_toml(folder: Path) -> dict[str, Any]:
    path = folder / PREPROCESS_FILE
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{path} is not valid TOML ({exc}); fix it or delete it") from exc
    known = [f.name for f in fields(ImageOptions)]
    options = {}
    for key, value in raw.items():
        if key not in known:
            raise DataError(
                f"{path}: unknown key '{key}'; the keys it may set are {', '.join(known)}"
            )
        try:
            options[key] = _normalize_option(key, value)
        except ValueError as exc:
            raise DataError(f"{path}: bad {key} = {value!r}: {exc}") from None
    return options


def _no_image_options(options: ImageOptions, what: str) -> None:
    # An ignored --mean would silently produce wrongly normalised data, so refuse it.
    given = [f.name for f in fields(options) if getattr(options, f.name) is not None]
    if given:
        flags = ", ".join(f"--{name}" for name in given)
        raise UsageError(
            f"image options ({flags}) apply only to image folders, but the data is {what}; "
            "drop them and preprocess the arrays yourself"
        )


# --- images --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImagePlan:
    """Everything needed to turn one image file into one input tensor, resolved up front."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str
    height: int
    width: int
    color: str
    scale: float
    mean: np.ndarray
    std: np.ndarray
    resample: Image.Resampling


def _folder_samples(
    folder: Path,
    specs: list[TensorSpec],
    expected: dict[str, tuple[tuple[int, ...], np.dtype]],
    options: ImageOptions,
    limit: int | None,
    seed: int,
) -> list[Feed]:
    if len(specs) != 1:
        names = ", ".join(spec.name for spec in specs)
        raise DataError(
            f"an image folder feeds models with one image input, but this model has inputs "
            f"{names}; pass a .npz file keyed by input name instead"
        )
    paths = find_images(folder)
    if not paths:
        raise DataError(
            f"no images found in {folder} (looked for {' '.join(IMAGE_SUFFIXES)} in it and its "
            "subfolders); add images, or pass a .npy/.npz file instead of the folder"
        )
    # Planning before decoding anything means a bad option fails in milliseconds, not after
    # thousands of images.
    plan = _image_plan(specs[0], options, folder)
    samples = []
    for i in _choose(len(paths), limit, seed):
        rel = paths[i].relative_to(folder).as_posix()
        tensor = _read_image(paths[i], plan)
        samples.append(_check_sample(f"calibration image {rel}", {plan.name: tensor}, expected))
    return samples


def _image_plan(spec: TensorSpec, options: ImageOptions, folder: Path) -> _ImagePlan:
    toml = _read_preprocess_toml(folder)
    merged = {
        f.name: getattr(options, f.name)
        if getattr(options, f.name) is not None
        else toml.get(f.name)
        for f in fields(ImageOptions)
    }
    shape = _static_shape(spec)
    if len(shape) != 4:
        raise DataError(
            f"input '{spec.name}' has shape {shape}, not an image (rank 4, NCHW or NHWC); pass "
            "a .npy/.npz file instead of an image folder"
        )
    if shape[0] != 1:
        raise DataError(
            f"input '{spec.name}' has batch size {shape[0]} but an image folder gives one image "
            f"per sample; fix the batch to 1 with --input-shape {spec.name}="
            f"{'x'.join(map(str, (1, *shape[1:])))} or pass a .npy/.npz file of whole batches"
        )
    layout = merged["layout"] or infer_layout(shape)
    if layout == "NCHW":
        channels, height, width = shape[1:]
    else:
        height, width, channels = shape[1:]
    if channels not in (1, 3):
        raise DataError(
            f"input '{spec.name}' {shape} read as {layout} has {channels} channels, but images "
            "give 1 (gray) or 3 (rgb/bgr); set --layout if the layout is wrong, or pass a "
            ".npy/.npz file"
        )
    color = merged["color"] or ("gray" if channels == 1 else "rgb")
    color_channels = 1 if color == "gray" else 3
    if color_channels != channels:
        fix = "gray" if channels == 1 else "rgb or bgr"
        raise DataError(
            f"color '{color}' gives {color_channels} channel(s) but input '{spec.name}' {shape} "
            f"has {channels}; use --color {fix}"
        )
    dtype = _dtype(spec)
    if dtype.kind != "f" and dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise DataError(
            f"input '{spec.name}' is {dtype}; image folders feed float, uint8 or int8 inputs, so "
            "pass a .npy/.npz file for this model"
        )
    mean = np.asarray(merged["mean"] or (0.0,), dtype=np.float64)
    std = np.asarray(merged["std"] or (1.0,), dtype=np.float64)
    if dtype.kind == "f":
        for name, values in (("mean", mean), ("std", std)):
            if values.size not in (1, channels):
                raise DataError(
                    f"{name} has {values.size} values but input '{spec.name}' has {channels} "
                    f"channel(s); give one value per channel, or one for all"
                )
    scale = merged["scale"] if merged["scale"] is not None else 1 / 255
    return _ImagePlan(
        name=spec.name,
        shape=shape,
        dtype=dtype,
        layout=layout,
        height=height,
        width=width,
        color=color,
        scale=scale,
        mean=mean,
        std=std,
        resample=_RESAMPLE[merged["resize"] or "bilinear"],
    )


def _read_image(path: Path, plan: _ImagePlan) -> np.ndarray:
    try:
        with Image.open(path) as img:
            # Pillow clips 16-bit and float images to 0..255 on conversion without a word.
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):
                raise DataError(
                    f"cannot read image {path}: mode {img.mode} is not 8-bit; convert it to "
                    "8-bit, or pass the data as a .npy/.npz file"
                )
            img = img.convert("L" if plan.color == "gray" else "RGB")
            if img.size != (plan.width, plan.height):
                img = img.resize((plan.width, plan.height), plan.resample)
            pixels = np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow signals a broken PNG chunk with SyntaxError, a bad header with OSError.
        raise DataError(f"cannot read image {path} ({exc}); replace or delete the file") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if plan.color == "bgr":
        pixels = pixels[:, :, ::-1]
    if plan.dtype.kind == "f":
        values: np.ndarray = (pixels.astype(np.float64) * plan.scale - plan.mean) / plan.std
    elif plan.dtype == np.int8:
        values = pixels.astype(np.int16) - 128
    else:
        values = pixels
    if plan.layout == "NCHW":
        values = values.transpose(2, 0, 1)
    return np.ascontiguousarray(values[None].astype(plan.dtype))


# --- arrays --------------------------------------------------------------------------------


def _read_npy(path: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    if len(specs) != 1:
        names = ", ".join(spec.name for spec in specs)
        raise DataError(
            f"{path.name} holds one array but the model has inputs {names}; save a .npz keyed "
            f"by input name instead, e.g. np.savez('data.npz', {specs[0].name}=..., ...)"
        )
    try:
        # Memory-mapped so choosing 100 samples from a large file reads only those.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"cannot read {path} as a .npy array ({exc}); save it with numpy.save "
            "(numeric arrays only, no pickled objects)"
        ) from exc
    return {specs[0].name: array}


def _npz_samples(
    path: Path,
    expected: dict[str, tuple[tuple[int, ...], np.dtype]],
    limit: int | None,
    seed: int,
) -> list[Feed]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in expected if name not in npz.files]
            if missing:
                raise DataError(_missing_inputs_message(path.name, missing, npz.files, expected))
            arrays = {name: npz[name] for name in expected}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"cannot read {path} as a .npz archive ({exc}); save it with numpy.savez "
            "(numeric arrays only, no pickled objects)"
        ) from exc
    return _array_samples(arrays, expected, limit, seed, path.name)


def _single_input(array: np.ndarray, specs: list[TensorSpec], what: str) -> dict[str, np.ndarray]:
    if len(specs) != 1:
        names = ", ".join(spec.name for spec in specs)
        raise DataError(
            f"{what} is one array but the model has inputs {names}; pass a mapping "
            "{input name: array} instead"
        )
    return {specs[0].name: array}


def _array_samples(
    arrays: Mapping[str, np.ndarray],
    expected: dict[str, tuple[tuple[int, ...], np.dtype]],
    limit: int | None,
    seed: int,
    origin: str | None = None,
) -> list[Feed]:
    """Split whole arrays into samples: exactly the input shape (one sample), (N, *shape) (a
    leading sample axis, for any input: an RNN state [2, 1, 128] or a scalar too), or
    (N, *shape[1:]) stacked along a batch dimension of 1."""
    where = f" ({origin})" if origin else ""
    counts: dict[str, int] = {}
    modes: dict[str, str] = {}
    for name, (shape, _) in expected.items():
        array = arrays[name]
        if array.ndim == len(shape) + 1 and array.shape[1:] == shape:
            counts[name], modes[name] = array.shape[0], "leading"
        elif _stacks(shape) and array.ndim == len(shape) and array.shape[1:] == shape[1:]:
            counts[name], modes[name] = array.shape[0], "stacked"
        elif array.shape == shape:
            counts[name], modes[name] = 1, "single"
        else:
            layouts = f"{shape} (one sample), ({', '.join(['N', *map(str, shape)])}) (N samples)"
            if _stacks(shape):
                layouts += f" or ({', '.join(['N', *map(str, shape[1:])])}) (N samples)"
            raise DataError(
                f"calibration array for input '{name}'{where} has shape {array.shape} but the "
                f"model expects {shape}; give an array of shape {layouts}"
            )
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{name}: {n}" for name, n in counts.items())
        raise DataError(
            f"calibration arrays{where} hold different numbers of samples ({detail}); give "
            "every input the same number of samples"
        )
    n = next(iter(counts.values()))
    if n == 0:
        raise DataError(f"calibration arrays{where} hold no samples; add at least one")
    samples = []
    for i in _choose(n, limit, seed):
        # np.array copies out of memory-mapped files so no sample keeps the file open.
        pick = {"leading": lambda a, i=i: a[i], "stacked": lambda a, i=i: a[i : i + 1]}
        feed = {
            name: np.array(pick.get(modes[name], lambda a: a)(arrays[name])) for name in expected
        }
        samples.append(_check_sample(f"calibration sample {i}{where}", feed, expected))
    return samples


def _stacks(shape: tuple[int, ...]) -> bool:
    """Whether samples for this input may come stacked along dim 0 (its batch size is 1)."""
    return len(shape) > 0 and shape[0] == 1


# --- random --------------------------------------------------------------------------------


def _random_samples(
    expected: dict[str, tuple[tuple[int, ...], np.dtype]], count: int, seed: int
) -> list[Feed]:
    for name, (shape, dtype) in expected.items():
        # 8-bit integers are pixels or quantized activations, for which random values are
        # inputs like any other; wider integers, bools and scalars are ids, lengths, steps or
        # flags, whose random values make the model fail or branch where it never would.
        garbage = dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize > 1)
        if garbage or not shape:
            what = f"a {dtype} scalar" if not shape else f"{dtype}"
            raise DataError(
                f"input '{name}' is {what} (ids, lengths or flags, not pixels): random values "
                "are no valid input for it; pass real inputs with --eval-data (and "
                "--calibration) as a .npz keyed by input name"
            )
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        feed = {}
        for name, (shape, dtype) in expected.items():
            if dtype.kind == "f":
                feed[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                info = np.iinfo(dtype)
                feed[name] = rng.integers(
                    info.min, info.max, size=shape, dtype=dtype, endpoint=True
                )
            else:
                raise DataError(
                    f"cannot make random data for input '{name}' of dtype {dtype}; pass real "
                    "samples as a .npz file"
                )
        samples.append(feed)
    return samples


# --- shared checks -------------------------------------------------------------------------


def _choose(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, limit, replace=False).tolist())


def _static_shape(spec: TensorSpec) -> tuple[int, ...]:
    if not all(isinstance(d, int) and d >= 0 for d in spec.shape):
        example = "x".join(str(d) if isinstance(d, int) and d >= 0 else "N" for d in spec.shape)
        raise UsageError(
            f"input '{spec.name}' has dynamic shape {tuple(spec.shape)}; fix it with "
            f"--input-shape {spec.name}={example} (N replaced by real sizes) before calibrating"
        )
    return tuple(int(d) for d in spec.shape)


def _dtype(spec: TensorSpec) -> np.dtype:
    try:
        return np.dtype(spec.dtype)
    except TypeError:
        raise DataError(
            f"input '{spec.name}' has dtype {spec.dtype}, which numpy cannot represent; "
            "calibration data cannot be built for it"
        ) from None


def _cast(array: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """The sessions' cast (edgekit.backends.feeds), but stricter for data that calibrates."""
    if array.dtype.kind in "biu" and dtype.kind == "f":
        # Integer or bool data for a float input is nearly always unscaled pixels or labels in
        # the wrong key; casting it would calibrate on the wrong range without a word.
        raise DataError(
            f"{where} is {array.dtype} but the model expects {dtype}; convert it the way the "
            f"model's inputs are prepared (e.g. x.astype('{dtype}') / 255 for pixels) and pass "
            "that"
        )
    return cast(array, dtype, where)


def _check_sample(
    label: str, sample: Any, expected: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> Feed:
    """One validated feed dict with exactly the model's inputs; extra keys are dropped."""
    if not isinstance(sample, Mapping):
        first = next(iter(expected))
        raise DataError(
            f"{label} is a {type(sample).__name__}, not a dict of input name to array; yield "
            f"one dict per sample, e.g. {{'{first}': array}}"
        )
    missing = [name for name in expected if name not in sample]
    if missing:
        raise DataError(_missing_inputs_message(label, missing, sample, expected))
    feed = {}
    for name, (shape, dtype) in expected.items():
        where = f"{label}: input '{name}'"
        array = _cast(as_array(sample[name], where), dtype, where)
        if array.shape != shape:
            raise DataError(
                f"{where} has shape {array.shape} but the model expects {shape}; reshape the "
                "data, or fix the model's input shape with --input-shape"
            )
        if dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"{where} contains NaN or inf; drop or repair that sample")
        feed[name] = array
    return feed


def _missing_inputs_message(
    what: str, missing: list[str], present: Iterable[str], expected: Mapping[str, Any]
) -> str:
    return (
        f"{what} has no data for input(s) {', '.join(missing)}; it has keys "
        f"{', '.join(map(str, present)) or '(none)'} and the model's inputs are "
        f"{', '.join(expected)}: name the arrays after the model's inputs"
    )
