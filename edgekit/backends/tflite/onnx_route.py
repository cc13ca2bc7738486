"""ONNX -> PyTorch, the first half of the ONNX -> TFLite route (the second is litert-torch, as
for any PyTorch source: :mod:`edgekit.backends.tflite.convert`).

Why this route: it runs in edgekit's own environment. onnx2tf, the other maintained converter,
pins TensorFlow 2.19 and numpy 1.26 on Python 3.11, fetches a calibration file from GitHub at
run time, and on the real-model set (DEVELOPERS.md) dropped the layout detector's signature
and converted the OCR LSTM wrongly; this route matched ONNX Runtime on every model it took.

Steps, each for a reason:

1. The prepared graph (Constant weights as initializers, BatchNorm folded, onnxslim) gets the
   static input shapes the export uses and onnxslim again, so the Shape -> Gather -> Reshape
   chains of a dynamic batch fold into constants.
2. onnx2torch turns it into an ``fx.GraphModule``, one submodule per ONNX node. Its modules are
   renamed ``n0``, ``n1``, ... (onnx2torch spells node names with ``/``, which is litert-torch's
   module-level separator in tensor names); :data:`ONNX_MODULES` in the converted model's meta
   maps them back to the ONNX node names the layers are listed by, as on the other backends.
   Nodes of opset 18 and later are first put in their opset-17 form
   (:mod:`edgekit.backends.tflite.onnx_opsets`): onnx2torch has no converters past 17.
3. Modules that read a shape, split sizes, slice bounds, pads or resize scales from an integer
   or float *tensor* (Reshape, Split, Slice, Pad, Resize, Expand, Tile) are replaced by ones holding
   Python numbers taken from one run at the static shapes: torch.export cannot branch on a
   tensor's value. The replaced graph is checked against the original on that run.

onnx2torch (Apache-2.0) is installed with ``--no-deps``: it declares torchvision, which it
imports only for its NonMaxSuppression and RoiAlign converters, and a torchvision wheel from
the registry replaces edgekit's pinned torch. Without torchvision those two ops are refused by
name (:func:`unconvertible_ops`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import types
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgekit.errors import ConversionError, EdgekitError, first_line
from edgekit.model import SourceModel

#: the onnx2torch release this route was measured with
ONNX2TORCH = "onnx2torch==1.5.15"
#: converted-model meta key: {torch module name: [ONNX node name, module class]}
ONNX_MODULES = "onnx_modules"
#: converted-model meta key: {source output name: the ONNX node that produces it} (litert-torch
#: names a graph output's tensor after the signature, not after the module that made it)
ONNX_OUTPUTS = "onnx_outputs"
#: ONNX ops whose onnx2torch converter needs torchvision
_TORCHVISION_OPS = frozenset({"NonMaxSuppression", "RoiAlign"})


class MissingConverterError(EdgekitError):
    """onnx2torch is not installed (exit code 6, as for any missing optional dependency)."""

    exit_code = 6


def _has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


@contextlib.contextmanager
def _torchvision_stub() -> Iterator[None]:
    """A placeholder ``torchvision`` while onnx2torch is imported, removed afterwards so that
    nothing else (torch.onnx, torch._dynamo) mistakes it for the real package."""
    if _has_torchvision():
        yield
        return
    stub = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.roi_align = None  # type: ignore[attr-defined]
    stub.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops
    try:
        yield
    finally:
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (stub, ops):
                del sys.modules[name]


def onnx2torch() -> Any:
    """The onnx2torch package, or an error saying how to install it."""
    module = sys.modules.get("onnx2torch")
    if module is None:
        try:
            with _torchvision_stub(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module("onnx2torch")
        except ImportError as exc:
            raise MissingConverterError(
                "the ONNX -> TFLite route needs onnx2torch, installed without its dependencies "
                f"(it would replace torch): pip install --no-deps {ONNX2TORCH}"
            ) from exc
    from edgekit.backends.tflite.onnx_opsets import register

    register(importlib.import_module("onnx2torch.node_converters.registry"))
    return module


def _nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def unconvertible_ops(model: Any) -> list[str]:
    """The op types in ``model`` (an ONNX ModelProto) that the route has no converter for at
    the model's opset, sorted; what ``inspect --target tflite`` names before any work."""
    onnx2torch()  # first: its package import needs the torchvision placeholder
    registry = importlib.import_module("onnx2torch.node_converters.registry")
    opsets = {o.domain or "": o.version for o in model.opset_import}
    missing = set()
    tv = _has_torchvision()
    for node in _nodes(model.graph):
        domain = node.domain if node.domain not in ("ai.onnx",) else ""
        label = node.op_type if not domain else f"{domain}.{node.op_type}"
        if node.op_type in _TORCHVISION_OPS and not tv:
            missing.add(f"{label} (needs torchvision)")
            continue
        try:
            registry.get_converter(node.op_type, opsets.get(domain, 1), domain)
        except NotImplementedError:
            missing.add(f"{label} (opset {opsets.get(domain, 1)})")
    return sorted(missing)


def preflight(path: Any) -> dict[str, Any]:
    """What ``edgekit inspect MODEL.onnx --target tflite`` says before any conversion: the
    route, and the ops it has no converter for (``convertible`` False: the export would stop
    with the conversion error's exit code). Read from the graph as given; the export checks
    again after simplification, which can only remove ops."""
    from edgekit.intake.onnx import _read

    model = _read(path)
    try:
        missing = unconvertible_ops(model)
    except MissingConverterError as exc:
        return {"lines": [str(exc)], "route": "onnx2torch + litert-torch", "convertible": False}
    route = f"ONNX -> TFLite through onnx2torch {_version()} + litert-torch"
    if missing:
        lines = [
            route,
            f"no converter for: {', '.join(missing)}",
            "an export to TFLite stops here (exit 7); use --target onnxruntime or openvino",
        ]
    else:
        kinds = len({n.op_type for n in _nodes(model.graph)})
        lines = [route, f"every op has a converter ({kinds} op types)"]
    return {
        "lines": lines,
        "route": "onnx2torch + litert-torch",
        "convertible": not missing,
        "unconvertible_ops": missing,
    }


def _refuse_unconvertible(model: Any) -> None:
    missing = unconvertible_ops(model)
    if missing:
        raise ConversionError(
            f"ONNX -> TFLite: no converter for {', '.join(missing)} (onnx2torch "
            f"{_version()}); export this model with --target onnxruntime or --target openvino, "
            "or convert to TFLite from the framework it was trained in"
        )


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("onnx2torch")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _static(source: SourceModel) -> Any:
    """The prepared graph with the export's static input shapes, simplified again."""
    import onnx

    from edgekit.prepare.simplify import simplify

    model = onnx.ModelProto()
    model.CopyFrom(source.handle)
    shapes = {s.name: s.shape for s in source.inputs}
    for value in model.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name], strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    simplified, _ = simplify(model)
    return simplified


# ---------------------------------------------------------------- baking tensor arguments


def _torch() -> Any:
    import torch

    return torch


def _module(fn: Any, label: str) -> Any:
    torch = _torch()

    class Baked(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return fn(x)

        def extra_repr(self) -> str:
            return label

    return Baked()


def _baked(module: Any, args: Sequence[Any], out: Any) -> Any | None:
    """A module computing ``module(*args)`` from ``args[0]`` alone with Python numbers, or None
    when ``module`` reads no number from a tensor argument."""
    torch = _torch()
    cls = type(module).__name__
    x = args[0]
    if cls == "OnnxReshape" or cls == "OnnxExpand":
        shape = tuple(out.shape)
        if cls == "OnnxReshape":
            return _module(lambda t: torch.reshape(t, shape), f"shape={shape}")
        return _module(lambda t: torch.broadcast_to(t, shape), f"shape={shape}")
    if cls == "OnnxTile":
        reps = tuple(o // i for o, i in zip(out.shape, x.shape, strict=True))
        return _module(lambda t: t.repeat(*reps), f"repeats={reps}")
    if cls in ("OnnxSplit13", "OnnxSplit"):
        axis = module.axis
        sizes = [int(o.shape[axis]) for o in out]
        return _module(lambda t: torch.split(t, sizes, dim=axis), f"sizes={sizes}, axis={axis}")
    if cls == "OnnxSlice":
        return _slice(x, args[1:])
    if cls == "OnnxPadDynamic":
        pad = importlib.import_module("onnx2torch.node_converters.pad")
        pads = pad._torch_padding_to_mode_format(
            pad._onnx_padding_to_torch([int(p) for p in args[1].tolist()]), module.mode
        )
        value = args[2] if len(args) > 2 and args[2] is not None else 0.0
        value = float(value) if not isinstance(value, float) else value
        mode = module.mode

        def pad_fn(t: Any) -> Any:
            return torch.nn.functional.pad(t, pads, mode=mode, value=value)

        return _module(pad_fn, f"pads={pads}, mode={mode}")
    if cls in ("OnnxResize", "OnnxResizeV10"):
        resize = module._resize if cls == "OnnxResizeV10" else module
        mode_of = importlib.import_module("onnx2torch.node_converters.resize")
        mode = mode_of._onnx_mode_to_torch_mode(resize.onnx_mode, x.dim() - 2)
        size = tuple(out.shape[2:])
        align = resize.align_corners

        def interpolate(t: Any) -> Any:
            return torch.nn.functional.interpolate(t, size=size, mode=mode, align_corners=align)

        return _module(interpolate, f"size={size}, mode={mode}")
    return None


def _slice(x: Any, bounds: Sequence[Any]) -> Any:
    """ONNX Slice(starts, ends, axes, steps) on ``x``'s static shape, as index lists: Python's
    ``slice.indices`` clamps as ONNX does, for negative steps too."""
    torch = _torch()
    starts, ends, axes, steps = (
        [int(v) for v in b.tolist()] if b is not None else None
        for b in (list(bounds) + [None] * 4)[:4]
    )
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    picks: list[tuple[int, list[int]]] = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis % x.dim()
        picks.append((axis, list(range(*slice(start, end, step).indices(x.shape[axis])))))

    def take(t: Any) -> Any:
        for axis, idx in picks:
            if idx and idx == list(range(idx[0], idx[0] + len(idx))):
                t = t.narrow(axis, idx[0], len(idx))
            else:
                t = t.index_select(axis, torch.tensor(idx, dtype=torch.long))
        return t

    return _module(take, f"slices={[(a, len(i)) for a, i in picks]}")


def _record(gm: Any, example: Sequence[Any]) -> dict[str, tuple[list[Any], Any]]:
    """Each call_module node's concrete arguments and output on ``example``."""
    torch = _torch()
    seen: dict[str, tuple[list[Any], Any]] = {}

    class Recorder(torch.fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            out = super().call_module(target, args, kwargs)
            seen[target] = (list(args), out)
            return out

    # onnx2torch's Slice warns of a torch indexing deprecation on every call
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Recorder(gm).run(*example)
    return seen


def _rebuild(gm: Any, example: Sequence[Any]) -> tuple[Any, dict[str, list[str]]]:
    """``gm`` with modules renamed ``n<i>`` and tensor-argument modules baked; the names map."""
    torch = _torch()
    seen = _record(gm, example)
    graph = torch.fx.Graph()
    env: dict[Any, Any] = {}
    root: dict[str, Any] = {}
    names: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            env[node] = graph.node_copy(node, lambda n: env[n])
            if node.op == "get_attr":
                root[node.target] = gm.get_buffer(node.target)
            continue
        module = gm.get_submodule(node.target)
        new = f"n{len(names)}"
        args, out = seen[node.target]
        baked = _baked(module, args, out)
        if baked is not None:
            module = baked
            call_args: tuple[Any, ...] = (env[node.args[0]],)
            kwargs: dict[str, Any] = {}
        else:
            call_args = torch.fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
        root[new] = module
        # the ONNX node name: onnx2torch wrote "." as "/" (see OnnxGraph.generate_node_name)
        names[new] = [str(node.target), f"{type(module).__module__}.{type(module).__name__}"]
        env[node] = graph.call_module(new, call_args, kwargs)
    rebuilt = torch.fx.GraphModule(root, graph)
    rebuilt.eval()
    return rebuilt, names


def to_torch(source: SourceModel) -> tuple[Any, dict[str, Any]]:
    """The ONNX ``source`` as a torch module at its static shapes, and the converted model's
    meta entries :data:`ONNX_MODULES` and :data:`ONNX_OUTPUTS`."""
    o2t = onnx2torch()
    try:
        model = _static(source)
    except Exception as exc:
        raise ConversionError(f"ONNX -> TFLite: onnxslim failed: {first_line(exc)}") from exc
    from edgekit.backends.tflite.onnx_opsets import lower

    lower(model)  # opset 18+ nodes in the form onnx2torch converts (onnx_opsets.py)
    _refuse_unconvertible(model)
    onnx_names = _onnx_names(model)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = o2t.convert(model)
    except Exception as exc:
        raise ConversionError(f"ONNX -> TFLite: onnx2torch failed: {first_line(exc)}") from exc
    example = _sample_inputs(source)
    try:
        rebuilt, names = _rebuild(gm, example)
        _check_same(gm, rebuilt, example)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"ONNX -> TFLite: the converted graph does not run: {first_line(exc)}"
        ) from exc
    for entry in names.values():
        entry[0] = onnx_names.get(entry[0], entry[0])
    producer = {o: n.name or n.output[0] for n in model.graph.node for o in n.output}
    outputs = {o.name: producer[o.name] for o in model.graph.output if o.name in producer}
    return rebuilt, {ONNX_MODULES: names, ONNX_OUTPUTS: outputs}


def _onnx_names(model: Any) -> dict[str, str]:
    """onnx2torch's module name of each node -> the node's name in the ONNX graph (its first
    output where it has none, as ONNX Runtime's layer list names it). The module names are
    made as onnx2torch's OnnxGraph makes them: generate_node_name, then ``_<n>`` on repeats."""
    generate = importlib.import_module("onnx2torch.onnx_graph").OnnxGraph.generate_node_name
    counters: dict[str, int] = {}
    out = {}
    for node in model.graph.node:
        base = generate(node)
        seen = counters.get(base, 0)
        counters[base] = seen + 1
        out[base + (f"_{seen}" if seen else "")] = node.name or node.output[0]
    return out


def _sample_inputs(source: SourceModel) -> list[Any]:
    """Inputs to run the graph on once: values in [0, 1) (a zero image would hide a wrong
    slice), integers 0 so that an index input stays in range."""
    torch = _torch()
    rng = np.random.default_rng(0)
    out = []
    for spec in source.inputs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            x = rng.random(spec.shape).astype(dtype)
        else:
            x = np.zeros(spec.shape, dtype)
        out.append(torch.from_numpy(x))
    return out


def _check_same(original: Any, rebuilt: Any, example: Sequence[Any]) -> None:
    torch = _torch()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want, got = original(*example), rebuilt(*example)
    want = list(want) if isinstance(want, list | tuple) else [want]
    got = list(got) if isinstance(got, list | tuple) else [got]
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if w.shape != g.shape or not torch.equal(w, g):
            raise ConversionError(
                f"ONNX -> TFLite: output {i} changed when the shape arguments were fixed "
                f"(max |diff| {float((w.float() - g.float()).abs().max()):.3g}); this is an "
                "edgekit bug, please report it with the model"
            )


__all__ = [
    "ONNX2TORCH",
    "ONNX_MODULES",
    "ONNX_OUTPUTS",
    "onnx2torch",
    "preflight",
    "to_torch",
    "unconvertible_ops",
]
