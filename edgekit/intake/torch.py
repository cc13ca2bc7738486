"""PyTorch intake: an ``nn.Module`` with example inputs (Python API) or a ``.pt2``
ExportedProgram file (CLI). ``.pt``/``.pth`` pickles are refused in :mod:`edgekit.model`.

The bridge to ONNX is ``torch.onnx.export(dynamo=True)``, the exporter PyTorch maintains.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConversionError, ModelFormatError, UsageError, first_line, require
from edgekit.model import Feeds, SourceModel, TensorSpec

OPSET = 18


def _torch() -> Any:
    return require("torch", "torch")


def _flatten(out: Any) -> list[np.ndarray]:
    torch = _torch()
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, Mapping):
        return [a for v in out.values() for a in _flatten(v)]
    if isinstance(out, list | tuple):
        return [a for v in out for a in _flatten(v)]
    raise ConversionError(f"model returned a {type(out).__name__}; expected tensors")


def _as_tensors(example_inputs: Sequence[Any]) -> tuple[Any, ...]:
    torch = _torch()
    return tuple(
        x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        for x in example_inputs
    )


def _input_names(module: Any, count: int) -> list[str]:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
        names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    return names[:count] if len(names) >= count else [f"input_{i}" for i in range(count)]


def _spec(name: str, tensor: Any) -> TensorSpec:
    return TensorSpec(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


def _build(
    module: Any,
    exported: Any | None,
    args: tuple[Any, ...],
    names: list[str],
    overrides: Mapping[str, Sequence[int]],
) -> SourceModel:
    torch = _torch()
    for name, tensor in zip(names, args, strict=True):
        if name in overrides and tuple(overrides[name]) != tuple(tensor.shape):
            raise UsageError(
                f"--input-shape {name}: a PyTorch model is exported at the shape of its example "
                f"input {tuple(tensor.shape)}; export it again with the shape you want"
            )
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UsageError(f"--input-shape names unknown input(s) {unknown}; inputs are {names}")
    inputs = [_spec(n, t) for n, t in zip(names, args, strict=True)]
    with torch.no_grad():
        outs = _flatten(module(*args))
    outputs = [TensorSpec(f"output_{i}", o.dtype.name, o.shape) for i, o in enumerate(outs)]

    def run(feeds: Feeds) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names]
        with torch.no_grad():
            return _flatten(module(*tensors))

    def to_onnx(dst: Path) -> None:
        target = exported if exported is not None else module
        try:
            # The dynamo exporter prints progress to stdout and logs/warns liberally (e.g.
            # that torchvision ops are unavailable), none of which concerns our users.
            with (
                contextlib.redirect_stdout(io.StringIO()),
                warnings.catch_warnings(),
                _quiet_logger("torch.onnx"),
            ):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    target,
                    args,
                    str(dst),
                    dynamo=True,
                    opset_version=OPSET,
                    input_names=names,
                    output_names=[o.name for o in outputs],
                    external_data=False,
                    verbose=False,
                )
        except Exception as exc:
            first = first_line(exc)
            raise ConversionError(f"torch.onnx.export failed: {first}") from exc

    return SourceModel(
        format="torch",
        inputs=inputs,
        outputs=outputs,
        handle=exported if exported is not None else module,
        run=run,
        to_onnx=to_onnx,
    )


@contextlib.contextmanager
def _quiet_logger(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_exported(path: Path) -> Any:
    _torch()
    from edgekit.intake.pt2_safety import load_pt2

    # On a corrupt file torch.export.load logs the traceback of its first reader (through
    # torch.export's own stderr handler) before trying the legacy one; the ModelFormatError
    # load_pt2 raises says it in one line.
    with warnings.catch_warnings(), _quiet_logger("torch.export", "torch._export"):
        warnings.simplefilter("ignore")
        return load_pt2(path)


def _exported_args(ep: Any, path: Path) -> tuple[Any, ...]:
    example = getattr(ep, "example_inputs", None)
    if not example or not example[0]:
        raise ModelFormatError(f"{path.name} carries no example inputs; re-export it")
    return tuple(example[0])


def _exported_names(ep: Any, count: int) -> list[str]:
    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    return names if len(names) == count else [f"input_{i}" for i in range(count)]


def load(path: Path, overrides: Mapping[str, Sequence[int]]) -> SourceModel:
    ep = _load_exported(path)
    args = _exported_args(ep, path)
    return _build(ep.module(), ep, args, _exported_names(ep, len(args)), overrides)


def from_object(
    obj: Any, overrides: Mapping[str, Sequence[int]], example_inputs: Sequence[Any] | None
) -> SourceModel:
    torch = _torch()
    if isinstance(obj, torch.export.ExportedProgram):
        args = _as_tensors(example_inputs) if example_inputs else _exported_args(obj, Path("ep"))
        return _build(obj.module(), obj, args, _exported_names(obj, len(args)), overrides)
    if not isinstance(obj, torch.nn.Module):
        raise UsageError(f"cannot export a {type(obj).__name__}; pass a torch.nn.Module")
    if not example_inputs:
        raise UsageError(
            "a PyTorch module needs example_inputs=(tensor, ...) to fix its input shapes"
        )
    args = _as_tensors(example_inputs)
    module = obj.eval()
    return _build(module, None, args, _input_names(module, len(args)), overrides)


def describe(path: Path) -> dict[str, Any]:
    ep = _load_exported(path)
    args = _exported_args(ep, path)
    names = _exported_names(ep, len(args))
    ops: Counter[str] = Counter(
        str(n.target).removeprefix("aten.") for n in ep.graph.nodes if n.op == "call_function"
    )
    params = sum(int(np.prod(t.shape)) for t in ep.state_dict.values())
    # The output node's metadata holds fake tensors with the traced shapes: no run needed.
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    vals = [a.meta.get("val") for a in out_node.args[0] if hasattr(a, "meta")]
    outputs = [_spec(f"output_{i}", v).to_json() for i, v in enumerate(vals) if v is not None]
    return {
        "inputs": [_spec(n, t).to_json() for n, t in zip(names, args, strict=True)],
        "outputs": outputs,
        "parameters": params,
        "ops": dict(ops.most_common()),
    }
