"""ONNX intake: load (with external data), fix dynamic input shapes, reference-run in ORT."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelFormatError, UsageError, first_line
from edgekit.model import Feeds, SourceModel, TensorSpec, fix_shapes


def _onnx_dtype(elem_type: int) -> str:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def value_specs(values: Sequence[Any]) -> list[TensorSpec]:
    """TensorSpecs of ONNX ValueInfos; dynamic dims keep their symbolic name (or '?')."""
    specs = []
    for v in values:
        dims: list[int | str] = []
        for d in v.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
        specs.append(TensorSpec(v.name, _onnx_dtype(v.type.tensor_type.elem_type), tuple(dims)))
    return specs


def _read(path: Path) -> Any:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelFormatError(
            f"{path.name} is not a valid ONNX file (truncated or corrupt?): re-export it"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ModelFormatError(
            f"{path.name} holds no ONNX graph (empty or not an ONNX file); re-export it"
        )
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # OSError, or onnx's ValidationError for a missing file
        raise ModelFormatError(
            f"{path.name}: external data missing or unreadable "
            f"({str(exc).splitlines()[0][:200]}); keep the .onnx next to its data files"
        ) from exc
    return model


def _graph_inputs(model: Any) -> list[TensorSpec]:
    init_names = {t.name for t in model.graph.initializer}
    return value_specs([i for i in model.graph.input if i.name not in init_names])


def _build(
    model: Any, overrides: Mapping[str, Sequence[int]], dynamic: Sequence[str] = ()
) -> SourceModel:
    import onnx

    notes: list[str] = []
    raw_inputs = _graph_inputs(model)
    _check_dynamic_names(raw_inputs, dynamic)
    inputs = fix_shapes(raw_inputs, overrides, notes)
    kept = [b for b in raw_inputs if b.name in dynamic]
    # A kept input keeps its declared dims in the graph; its fixed shape is for data only.
    fixed = [(b, a) for b, a in zip(raw_inputs, inputs, strict=True) if b.name not in dynamic]
    if kept:
        notes[:] = [n for n in notes if not any(f"'{k.name}'" in n for k in kept)]
        notes.append(
            "dynamic dimensions kept for "
            + ", ".join(f"'{k.name}' {list(k.shape)}" for k in kept)
            + "; calibration and checks use "
            + ", ".join(f"{a.name}={list(a.shape)}" for a in inputs if a.name in dynamic)
        )
    for before, after in fixed:
        if before.shape != after.shape:
            _set_input_shape(model, after)
    if any(b.shape != a.shape for b, a in fixed):
        # Output shapes declared by the exporter may be stale or wrong; let inference redo them.
        for out in model.graph.output:
            out.type.tensor_type.ClearField("shape")
        del model.graph.value_info[:]
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:
            raise ModelFormatError(
                f"shape inference failed with the fixed input shapes: {str(exc)[:200]}"
            ) from exc
    data = model.SerializeToString() if model.ByteSize() < (1 << 31) - 1 else None
    if data is None:
        raise ModelFormatError("models over 2 GB are not supported yet")
    session = None

    def run(feeds: Feeds) -> list[np.ndarray]:
        nonlocal session
        if session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            # Errors come back as exceptions, reported on one line; ORT would also print them.
            opts.log_severity_level = 4
            try:
                session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            except Exception as exc:
                # Not about the inputs: ONNX Runtime refuses the graph itself.
                raise ModelFormatError(
                    f"ONNX Runtime cannot load the model: {first_line(exc)}; re-export it with "
                    "operators ONNX Runtime implements (a higher opset for per-channel int8, or "
                    "without custom ops)"
                ) from exc
        return list(session.run(None, dict(feeds)))

    def to_onnx(dst: Path) -> None:
        dst.write_bytes(data)

    return SourceModel(
        format="onnx",
        inputs=inputs,
        outputs=value_specs(model.graph.output),
        handle=model,
        run=run,
        to_onnx=to_onnx,
        notes=notes,
        dynamic=kept,
    )


def _check_dynamic_names(inputs: Sequence[TensorSpec], dynamic: Sequence[str]) -> None:
    names = [s.name for s in inputs]
    unknown = [d for d in dynamic if d not in names]
    if unknown:
        raise UsageError(f"--dynamic {', '.join(unknown)}: no such input; the inputs are {names}")
    static = [s.name for s in inputs if s.name in dynamic and s.is_static]
    if static:
        raise UsageError(
            f"--dynamic {', '.join(static)}: the model declares that input with a fixed shape; "
            "only dimensions the model leaves dynamic can stay dynamic"
        )


def _set_input_shape(model: Any, spec: TensorSpec) -> None:
    for value in model.graph.input:
        if value.name == spec.name:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, spec.shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)


def load(
    path: Path, overrides: Mapping[str, Sequence[int]], dynamic: Sequence[str] = ()
) -> SourceModel:
    return _build(_read(path), overrides, dynamic)


def from_object(
    obj: Any,
    overrides: Mapping[str, Sequence[int]],
    example_inputs: Sequence[Any] | None,
    dynamic: Sequence[str] = (),
) -> SourceModel:
    if example_inputs is not None:
        raise UsageError("example_inputs is for PyTorch modules; for ONNX use input_shapes")
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(obj)
    return _build(model, overrides, dynamic)


def op_histogram(graph: Any) -> Counter[str]:
    """Op types in a graph and every subgraph (If/Loop bodies)."""
    ops: Counter[str] = Counter()
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        ops[key] += 1
        for attr in node.attribute:
            if attr.g.node:
                ops += op_histogram(attr.g)
            for sub in attr.graphs:
                ops += op_histogram(sub)
    return ops


def describe(path: Path) -> dict[str, Any]:
    from edgekit.intake.compression import onnx_numerics

    model = _read(path)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {
        "inputs": [s.to_json() for s in _graph_inputs(model)],
        "outputs": [s.to_json() for s in value_specs(model.graph.output)],
        "parameters": params,
        "ops": dict(op_histogram(model.graph).most_common()),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        # already quantized or fp16 weights: what the plan stage refuses or warns about
        "numerics": onnx_numerics(model).to_json(),
    }
