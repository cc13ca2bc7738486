"""OpenVINO IR (``.xml`` + ``.bin``) intake, for ``edgekit inspect``: inputs, outputs, weights
and ops of an IR, read with OpenVINO without compiling it.

An IR is an artifact, not a source edgekit exports from: ``load`` says what to do instead. The
``.bin`` must sit beside the ``.xml`` with the same stem (OpenVINO's own rule); without it the
error says so rather than quoting OpenVINO's C++ source location.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelFormatError, UsageError, first_line, require
from edgekit.model import SourceModel


def _read(path: Path) -> Any:
    ov = require("openvino", "openvino")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ModelFormatError(
            f"{path.name} has no {weights.name} beside it; an OpenVINO IR is the .xml and the .bin "
            "of the same stem: copy both"
        )
    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip() and ".cpp:" not in ln]
        reason = lines[0].strip() if lines else first_line(exc)
        raise ModelFormatError(f"OpenVINO cannot read {path.name}: {reason}") from exc


def _spec(port: Any) -> dict[str, Any]:
    shape = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else "?" for d in shape] if shape.rank.is_static else None
    return {
        "name": port.get_any_name(),
        "dtype": port.get_element_type().to_dtype().name,
        "shape": dims,
    }


def load(path: Path, overrides: Mapping[str, Sequence[int]]) -> SourceModel:
    raise UsageError(
        f"{path.name} is an OpenVINO artifact: benchmark or inspect it; to export another "
        "precision, export from the model it was made from"
    )


def describe(path: Path) -> dict[str, Any]:
    model = _read(path)
    ops: Counter[str] = Counter(
        op.get_type_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() not in ("Parameter", "Result", "Constant")
    )
    params = sum(
        int(np.prod(list(op.get_output_shape(0))))
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).is_static
    )
    try:
        # what edgekit's export records in the IR (openvino backend's RT_PRECISION)
        precision = model.get_rt_info(["edgekit", "precision"]).astype(str)
    except Exception:
        precision = None
    info: dict[str, Any] = {
        "inputs": [_spec(p) for p in model.inputs],
        "outputs": [_spec(p) for p in model.outputs],
        "parameters": params,
        "ops": dict(ops.most_common()),
    }
    if precision:
        info["notes"] = [f"exported by edgekit at precision {precision}"]
    return info
