"""Checking a session's feeds against the model's inputs: one rule for names, shapes, dtypes.

Every backend's ``Session.run`` calls :func:`check_feeds` before it hands anything to its
runtime, so the same bad feed raises the same :class:`~edgekit.errors.DataError` on ONNX
Runtime, LiteRT and OpenVINO (a runtime's own complaint would otherwise come back as whatever
exception class that runtime uses).

The rule: every input present, no unknown names, the input's shape (dynamic dimensions take
any size), and a dtype that converts without silently losing values: floats never become
integers (that truncates), integers are range-checked, floats must stay finite. Integer data
for a float input is converted (uint8 -> float32 is exact); the calibration reader
(:mod:`edgekit.calibration`) refuses that for calibration samples, where it nearly always means
unscaled pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edgekit.errors import DataError
from edgekit.model import Feeds, TensorSpec

#: a session's own step between "an array for this input" and the checks: e.g. LiteRT's
#: transpose of a source-layout feed, or quantizing a float feed for an integer input
Adapt = Callable[[TensorSpec, np.ndarray], np.ndarray]


def check_feeds(
    feeds: Feeds, inputs: Sequence[TensorSpec], adapt: Adapt | None = None
) -> list[np.ndarray]:
    """One contiguous array per input, in ``inputs`` order, cast to the input's dtype; a
    DataError that names the input, what was given and what the model expects otherwise."""
    names = [spec.name for spec in inputs]
    if not isinstance(feeds, Mapping):
        raise DataError(
            f"feeds are a {type(feeds).__name__}, not a dict of input name to array; "
            f"the model's inputs are {names}"
        )
    missing = [n for n in names if n not in feeds]
    if missing:
        which = ", ".join(f"'{n}'" for n in missing)
        raise DataError(
            f"input{'s' if len(missing) > 1 else ''} {which} missing from the feeds "
            f"(got {sorted(map(str, feeds))}; the model's inputs are {names})"
        )
    unknown = [str(k) for k in feeds if k not in names]
    if unknown:
        raise DataError(
            f"feed '{unknown[0]}' is not an input of the model (its inputs are {names}); "
            "drop it or name it after one of those"
        )
    arrays = []
    for spec in inputs:
        where = f"input '{spec.name}'"
        x = as_array(feeds[spec.name], where)
        if adapt is not None:
            x = adapt(spec, x)
        if not fits(x.shape, spec.shape):
            raise DataError(
                f"{where} has shape {list(x.shape)}; the model expects {list(spec.shape)}"
            )
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:  # a type numpy cannot name (ONNX strings): the runtime decides
            arrays.append(x)
            continue
        arrays.append(np.ascontiguousarray(cast(x, dtype, where)))
    return arrays


def fits(shape: Sequence[int], expected: Sequence[int | str]) -> bool:
    """``shape`` matches ``expected``, where a non-integer or negative dimension is dynamic."""
    return len(shape) == len(expected) and all(
        not isinstance(want, int) or want < 0 or int(have) == want
        for have, want in zip(shape, expected, strict=True)
    )


def as_array(value: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"{where} is a {type(value).__name__} that cannot become a numpy array ({exc}); "
            "pass numpy arrays (for torch tensors: t.detach().cpu().numpy())"
        ) from exc


def cast(array: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """Cast only where no information is silently lost: never float→int, ints range-checked."""
    if array.dtype == dtype:
        return array
    src = array.dtype
    if src.kind in "iub" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise DataError(
                f"{where} has values {array.min()}..{array.max()} that do not fit the model's "
                f"{dtype} ({info.min}..{info.max}); rescale the data to that range"
            )
        return array.astype(dtype)
    if src.kind in "biu" and dtype.kind == "f":
        return array.astype(dtype)
    if src.kind in "biuf" and np.can_cast(src, dtype, "same_kind"):
        with np.errstate(over="ignore"):
            out = array.astype(dtype)
        if dtype.kind == "f" and src.kind == "f" and (np.isinf(out) & np.isfinite(array)).any():
            raise DataError(
                f"{where} has values beyond the range of the model's {dtype}; rescale the data"
            )
        return out
    hint = "give it data of that dtype"
    if src.kind == "f" and dtype.kind in "iub":
        hint = (
            f"converting float data to {dtype} would truncate it; quantize it with the input's "
            f"scale and zero point yourself, or give {dtype} data"
        )
    raise DataError(f"{where} is {src} but the model expects {dtype}; {hint}")
