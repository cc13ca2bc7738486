"""Shape inference that does not give up on a whole graph for one node it cannot type.

ONNX's inference is tried first, non-strict (a node whose shape it cannot infer is skipped, not
fatal) with data propagation, which resolves the Shape -> Gather -> Reshape chains exporters
write. If it raises anyway (old exporters' LSTMs, control flow whose branches disagree), ONNX
Runtime's symbolic inference is tried, and after that ONNX's without data propagation. Shapes
only annotate the graph (``value_info``); quantizers and OpenVINO read them to place Q/DQ and
fuse, so a graph whose inference fails everywhere is left as it is and the step is dropped.

Every graph leaving these steps holds one ``value_info`` per tensor (:func:`unique_value_info`).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any


def _onnx(model: Any, data_prop: bool) -> Any:
    import onnx

    return onnx.shape_inference.infer_shapes(
        model, check_type=False, strict_mode=False, data_prop=data_prop
    )


def _symbolic(model: Any) -> Any:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # It prints what it cannot resolve; stdout belongs to --json.
    with contextlib.redirect_stdout(io.StringIO()):
        out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    if out is None:
        raise RuntimeError("symbolic shape inference gave up")
    return out


def unique_value_info(model: Any) -> int:
    """Drop repeated ``value_info`` entries of the main graph in place (the first one of a name
    stays); how many were dropped.

    onnxslim 0.1.x writes every value_info twice, and inference keeps what it is given. ONNX
    Runtime takes one of them, but onnxconverter-common's fp16 converter retypes only the first
    when it puts a Cast after an op it keeps in float (Resize, a --keep-float node): the copy
    still says float, and ORT refuses the fp16 artifact ("Type (tensor(float)) of output arg
    ... of node ..._output_cast0 does not match expected type (tensor(float16))")."""
    graph = model.graph
    seen: set[str] = set()
    kept = []
    for info in graph.value_info:
        if info.name not in seen:
            seen.add(info.name)
            kept.append(info)
    dropped = len(graph.value_info) - len(kept)
    if dropped:
        copies = [type(info)() for info in kept]
        for copy, info in zip(copies, kept, strict=True):
            copy.CopyFrom(info)
        del graph.value_info[:]
        graph.value_info.extend(copies)
    return dropped


def infer_shapes(model: Any) -> tuple[Any, dict[str, Any]]:
    """``model`` annotated with the shapes one of the inferences found."""
    attempts = [
        ("onnx", lambda m: _onnx(m, True)),
        ("onnxruntime-symbolic", _symbolic),
        ("onnx-no-data-prop", lambda m: _onnx(m, False)),
    ]
    failures = []
    for name, run in attempts:
        try:
            out = run(model)
        except Exception as exc:
            failures.append(f"{name}: {str(exc).splitlines()[0][:160] if str(exc) else exc}")
            continue
        duplicates = unique_value_info(out)
        return out, {
            "inference": name,
            **({"duplicate_value_info_dropped": duplicates} if duplicates else {}),
            "value_info_before": len(model.graph.value_info),
            "value_info_after": len(out.graph.value_info),
            **({"failed_first": failures} if failures else {}),
        }
    raise RuntimeError("every shape inference failed: " + "; ".join(failures))
