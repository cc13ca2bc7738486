"""``--precision as-trained``: export a QAT model's own quantization, never recalibrated.

What every backend and the plan stage share about it, without importing a framework: whether a
source is a QAT model (read from the file's structure: a ``.pt2`` whose program holds PT2E
``quantized_decomposed`` ops, a ``.keras`` whose config holds edgekit's fake-quant layers),
the plan-time refusals (as-trained on a float model; another precision on a QAT model, which
would quantize its learned int8 grid a second time), and the sidecar facts (the training recipe
and final metric from ``OUT/<name>.compress.json``).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError

PRECISION = "as-trained"
NOTE = "no recalibration: scales as trained"
#: what a QAT model's saved structure holds: a .pt2's PT2E quantize ops; a .keras config's
#: edgekit fake-quant layer (registered as ``edgekit>FakeQuant``)
_MARKS = {".pt2": b"quantized_decomposed", ".keras": b'"edgekit>FakeQuant"'}


def is_qat(model: Any) -> bool:
    """A path or in-memory model that carries trained quantization (edgekit compress --qat)."""
    if isinstance(model, str | Path):
        path = Path(model)
        suffix = path.suffix.lower()
        if suffix not in _MARKS or not path.is_file():
            return False
        try:
            with zipfile.ZipFile(path) as zf:
                return any(
                    _MARKS[suffix] in zf.read(info)
                    for info in zf.infolist()
                    if info.filename.endswith(".json") and info.file_size < 64 << 20
                )
        except (OSError, zipfile.BadZipFile):
            return False  # the load stage says what is wrong with the file
    if "keras" in sys.modules and hasattr(model, "layers"):
        from edgekit.compress.keras_qat import is_qat_model

        # not a return on False: a torch module may have a ``layers`` attribute too
        if is_qat_model(model):
            return True
    if "torch" not in sys.modules:
        return False
    torch = sys.modules["torch"]
    graph = None
    if isinstance(model, torch.export.ExportedProgram):
        graph = model.graph
    elif isinstance(model, torch.nn.Module):
        inner = getattr(model, "program", None)
        graph = getattr(inner if hasattr(inner, "graph") else model, "graph", None)
    if graph is None:
        return False
    from edgekit.compress.torch_qat import is_qat_graph

    return is_qat_graph(graph)


def check_qat(qat: bool, precision: str, model: Any) -> None:
    """Plan-time: as-trained needs a QAT model (``qat``: :func:`is_qat` of ``model``, read
    once for all its precisions), and a QAT model exports only as-trained."""
    what = Path(model).name if isinstance(model, str | Path) else "the model"
    if precision == PRECISION and not qat:
        raise UsageError(
            f"--precision as-trained exports a quantization-aware-trained model's own scales, "
            f"and {what} has none: train it with edgekit compress MODEL --qat --data PATH -o "
            "OUT first, or use --precision int8 to calibrate it"
        )
    if qat and precision != PRECISION:
        raise UsageError(
            f"{what} was trained with quantization (edgekit compress --qat): --precision "
            f"{precision} would discard or recalibrate its learned int8 scales; export it with "
            "--precision as-trained"
        )


def facts(source: Any) -> tuple[dict[str, Any], list[str]]:
    """The sidecar details and notes of an as-trained export of ``source``: the QAT recipe and
    final metric from the compress sidecar next to the model file, where there is one."""
    details: dict[str, Any] = {"recalibrated": False, "scales": "as trained"}
    notes = [NOTE]
    path = getattr(source, "path", None)
    if path is not None:
        side = Path(path).parent / f"{Path(path).name.split('.')[0]}.compress.json"
        try:
            doc = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
        if isinstance(doc, dict):
            passes = [p for p in doc.get("passes", []) if p.get("kind") == "qat"]
            reports = [r for r in doc.get("reports", []) if r.get("kind") == "qat"]
            details["training"] = passes[-1] if passes else None
            if reports:
                details["metric_name"] = reports[-1].get("metric_name")
                details["final_metric"] = reports[-1].get("metric_after")
                details["float_metric"] = reports[-1].get("metric_before")
            details["compress_sidecar"] = side.name
            if reports and reports[-1].get("metric_after") is not None:
                notes.append(
                    f"QAT final {reports[-1].get('metric_name')}: "
                    f"{reports[-1]['metric_after']:.4f} (float "
                    f"{reports[-1].get('metric_before') or float('nan'):.4f}), from {side.name}"
                )
    return details, notes
