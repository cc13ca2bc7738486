"""PyTorch side of :mod:`edgekit.compress`: load, modularize, save, run and count a model.

This module implements the framework protocol :mod:`edgekit.compress.api` dispatches through
(``SUFFIX``, ``owns``, ``load``, ``save``, ``run``, ``count``, ``apply``, ``input_names``,
``example``). A ``.pt2`` file is loaded the way :mod:`edgekit.intake.torch` loads one (unsafe
archives are refused); its ``ep.module()`` holds functional ``aten.conv2d``/``linear``/
``batch_norm`` calls that torch-pruning cannot see, so :func:`modularize` rewrites them into
real ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm`` submodules with the same tensors and checks
the result against the original on a random input. The compressed model is saved by
``torch.export.export`` again, so ``edgekit export OUT/name.pt2`` reads it like any other.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConversionError, DataError, UsageError, first_line

SUFFIX = ".pt2"
#: the module implementing each pass kind on PyTorch
PASS_MODULES = {
    "prune": "edgekit.compress.torch_prune",
    "lowrank": "edgekit.compress.torch_lowrank",
    "finetune": "edgekit.compress.torch_finetune",
    "qat": "edgekit.compress.torch_qat",
    "distill": "edgekit.compress.torch_distill",
}
#: attributes carried on a loaded/compressed module: its feed names and example feed
_NAMES = "_edgekit_input_names"
_EXAMPLE = "_edgekit_example"
#: a graph traced at one batch size that cannot run at another (a reshape to a literal size)
_FIXED_BATCH = "_edgekit_fixed_batch"
RUN_BATCH = 256


def _torch() -> Any:
    from edgekit.errors import require

    return require("torch", "torch")


def owns(obj: Any) -> bool:
    """A ``.pt2`` path, an ``nn.Module`` or an ``ExportedProgram`` (torch is not imported to
    decide: an object can only be a torch one when torch is already loaded)."""
    if isinstance(obj, str | os.PathLike):
        return Path(obj).suffix.lower() == SUFFIX
    if "torch" not in sys.modules:
        return False
    torch = sys.modules["torch"]
    return isinstance(obj, torch.nn.Module | torch.export.ExportedProgram)


# --- load / modularize ----------------------------------------------------------------------


def load(path: Path) -> Any:
    """The ``.pt2`` at ``path`` as a modularized ``nn.Module`` carrying its example inputs."""
    from edgekit.intake.torch import _exported_args, _exported_names, _load_exported

    ep = _load_exported(Path(path))
    args = _exported_args(ep, Path(path))
    names = _exported_names(ep, len(args))
    return from_exported(ep, args, names)


def from_exported(ep: Any, args: Sequence[Any], names: Sequence[str]) -> Any:
    """An ExportedProgram as a modularized module with its example feed attached."""
    torch = _torch()
    args = tuple(args)
    module = modularize(ep.module(), args)
    example = {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=True)}
    _attach(module, list(names), example)
    # A graph traced at batch B may hold reshapes to literal sizes; find out once whether it
    # runs at another batch, so that run() and fine-tuning can batch it or must chunk by B.
    bigger = tuple(torch.cat([a, a]) if a.dim() else a for a in args)
    try:
        with torch.no_grad():
            module(*bigger)
    except Exception:
        setattr(module, _FIXED_BATCH, int(args[0].shape[0]) if args and args[0].dim() else 1)
    return module


def _attach(module: Any, names: list[str], example: dict[str, np.ndarray]) -> None:
    # Plain attributes (not buffers): deepcopy keeps them, state_dict and export ignore them.
    object.__setattr__(module, _NAMES, names)
    object.__setattr__(module, _EXAMPLE, example)


def _aten(name: str) -> Any:
    torch = _torch()
    return getattr(torch.ops.aten, name).default


def _fetch(gm: Any, node: Any) -> Any:
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        raise _NotModular
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


class _NotModular(Exception):
    """A functional op whose weights are not plain attributes (computed, shared): left as is."""


def modularize(gm: Any, example_args: Sequence[Any]) -> Any:
    """``gm`` (an ``ep.module()``) with functional conv/linear/batch-norm calls turned into
    submodules holding copies of the same tensors, checked equal on ``example_args``-shaped
    random input. The input module is not changed."""
    torch = _torch()
    nn = torch.nn
    fx = torch.fx
    src = _deepcopy(gm)
    graph = src.graph
    root = nn.Module()
    conv, linear, bn = _aten("conv2d"), _aten("linear"), _aten("batch_norm")
    used: set[str] = set()
    weight_users: dict[str, int] = {}
    for node in graph.nodes:
        for a in node.args:
            if getattr(a, "op", None) == "get_attr":
                weight_users[str(a.target)] = weight_users.get(str(a.target), 0) + 1

    def name_for(weight_node: Any, kind: str) -> str:
        base = str(weight_node.target).rsplit(".", 1)[0] if "." in str(weight_node.target) else kind
        # One submodule per op: the parameters' own prefix keeps the original layer names
        # (what --ignore and per_layer match), a suffix only where it is taken.
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{kind}{i}", i + 1
        used.add(name)
        return name

    _free_reshapes(graph)
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            # torch.export's shape guards for the traced input: the compressed model is
            # re-exported (and guarded again) at save time.
            graph.erase_node(node)
            continue
        if node.op != "call_function" or node.target not in (conv, linear, bn):
            continue
        try:
            if node.kwargs:
                raise _NotModular  # every conv/linear/batch_norm torch.export writes is positional
            if any(weight_users.get(str(getattr(a, "target", "")), 0) > 1 for a in node.args[1:]):
                raise _NotModular  # a tied weight must stay one tensor
            if node.target is conv:
                args = list(node.args) + [None, [1, 1], [0, 0], [1, 1], 1][len(node.args) - 2 :]
                x, w, b, stride, padding, dilation, groups = args[:7]
                weight, bias = _fetch(src, w), _fetch(src, b)
                if weight.dim() != 4 or isinstance(padding, str):
                    raise _NotModular
                mod = nn.Conv2d(
                    weight.shape[1] * groups,
                    weight.shape[0],
                    tuple(weight.shape[2:]),
                    stride=tuple(stride) if len(stride) == 2 else tuple(stride) * 2,
                    padding=tuple(padding) if len(padding) == 2 else tuple(padding) * 2,
                    dilation=tuple(dilation) if len(dilation) == 2 else tuple(dilation) * 2,
                    groups=groups,
                    bias=bias is not None,
                )
                kind = "conv"
            elif node.target is linear:
                x, w, b = [*node.args, None][:3]
                weight, bias = _fetch(src, w), _fetch(src, b)
                mod = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
                kind = "linear"
            else:
                x, w, b, mean, var, training, momentum, eps = node.args[:8]
                if training:
                    raise _NotModular
                weight, bias = _fetch(src, w), _fetch(src, b)
                rmean, rvar = _fetch(src, mean), _fetch(src, var)
                rank = len(node.meta["val"].shape) if "val" in node.meta else 4
                cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(rank)
                if cls is None or rmean is None:
                    raise _NotModular
                mod = cls(rmean.shape[0], eps=eps, momentum=momentum, affine=weight is not None)
                mod.running_mean.copy_(rmean.detach())
                mod.running_var.copy_(rvar.detach())
                kind = "bn"
            with torch.no_grad():
                if weight is not None:
                    mod.weight.copy_(weight.detach())
                if bias is not None:
                    mod.bias.copy_(bias.detach())
        except _NotModular:
            continue
        name = name_for(w, kind)
        _set_submodule(root, name, mod.eval())
        with graph.inserting_before(node):
            new = graph.call_module(name, (x,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    # Whatever attributes the remaining graph still reads (other weights, constants).
    for node in graph.nodes:
        if node.op == "get_attr":
            _set_attr(root, str(node.target), _fetch(src, node))
    out = fx.GraphModule(root, graph)
    out.eval()
    _check_same(gm, out, example_args)
    return out


def _free_reshapes(graph: Any) -> None:
    """Reshapes to the literal sizes torch.export traced (``x.view(x.size(0), -1)`` becomes
    ``view(x, [1, 4096])``) would break once channels are pruned or the batch changes: the
    flatten pattern ``[B, prod(rest)]`` becomes ``flatten(x, 1)``, other reshapes that keep
    the batch get ``-1`` there."""
    flatten = _torch().ops.aten.flatten.using_ints
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (_aten("view"), _aten("reshape")):
            continue
        x, shape = node.args[0], node.args[1]
        val = getattr(x, "meta", {}).get("val")
        if val is None or not all(isinstance(d, int) for d in [*shape, *val.shape]):
            continue
        dims = list(val.shape)
        if len(dims) > 2 and list(shape) == [dims[0], int(np.prod(dims[1:]))]:
            with graph.inserting_before(node):
                new = graph.call_function(flatten, (x, 1))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        elif dims and shape and shape[0] == dims[0] and -1 not in shape:
            node.args = (x, [-1, *shape[1:]])


def _parent(root: Any, dotted: str) -> tuple[Any, str]:
    """The module that holds ``dotted`` (made on the way where missing) and the last name."""
    torch = _torch()
    parts = dotted.split(".")
    parent = root
    for part in parts[:-1]:
        if not hasattr(parent, part):
            parent.add_module(part, torch.nn.Module())
        parent = getattr(parent, part)
    return parent, parts[-1]


def _set_submodule(root: Any, dotted: str, mod: Any) -> None:
    parent, name = _parent(root, dotted)
    parent.add_module(name, mod)


def _set_attr(root: Any, dotted: str, value: Any) -> None:
    torch = _torch()
    parent, name = _parent(root, dotted)
    if isinstance(value, torch.nn.Parameter):
        parent.register_parameter(name, value)
    elif isinstance(value, torch.Tensor):
        parent.register_buffer(name, value)
    else:
        setattr(parent, name, value)


def _check_same(before: Any, after: Any, example_args: Sequence[Any]) -> None:
    torch = _torch()
    gen = torch.Generator().manual_seed(0)
    probe = tuple(
        torch.randn(a.shape, generator=gen, dtype=a.dtype) if a.is_floating_point() else a
        for a in example_args
    )
    with torch.no_grad():
        want = _flatten(before(*probe))
        got = _flatten(after(*probe))
    for w, g in zip(want, got, strict=True):
        if w.shape != g.shape or not np.allclose(w, g, rtol=1e-4, atol=1e-5):
            raise ConversionError(
                "rewriting the .pt2's functional conv/linear/batch-norm calls into layers "
                f"changed its outputs (max diff {float(np.max(np.abs(w - g))):.3g}); "
                "compress the nn.Module instead"
            )


# --- the protocol ---------------------------------------------------------------------------


def input_names(model: Any) -> list[str]:
    names = getattr(model, _NAMES, None)
    if names:
        return list(names)
    from edgekit.intake.torch import _input_names

    try:
        params = inspect.signature(model.forward).parameters.values()
        count = sum(1 for p in params if p.default is p.empty and p.kind <= p.POSITIONAL_OR_KEYWORD)
    except (TypeError, ValueError):
        count = 1
    return _input_names(model, max(count, 1))


def example(model: Any, given: Any = None) -> dict[str, np.ndarray]:
    """The example feed: ``given`` (a tensor/array, a sequence of them, or a name->array
    mapping), else the one a loaded ``.pt2`` carries."""
    torch = _torch()
    if isinstance(model, torch.export.ExportedProgram):
        raise UsageError("internal: convert an ExportedProgram with as_module() first")
    if given is None:
        carried = getattr(model, _EXAMPLE, None)
        if carried is None:
            raise UsageError(
                "a PyTorch module needs example_inputs=(tensor, ...) to fix its input shapes"
            )
        return dict(carried)
    if isinstance(given, Mapping):
        return {k: _np(v) for k, v in given.items()}
    items = list(given) if isinstance(given, list | tuple) else [given]
    arrays = [_np(v) for v in items]
    names = getattr(model, _NAMES, None) or _signature_names(model, len(arrays))
    return dict(zip(names, arrays, strict=True))


def _signature_names(model: Any, count: int) -> list[str]:
    from edgekit.intake.torch import _input_names

    return _input_names(model, count)


def as_module(obj: Any, given: Any = None) -> Any:
    """An ExportedProgram passed in memory, as a modularized module (others unchanged)."""
    torch = _torch()
    if isinstance(obj, torch.export.ExportedProgram):
        from edgekit.intake.torch import _as_tensors, _exported_args, _exported_names

        args = _as_tensors(given) if given else _exported_args(obj, Path("program"))
        return from_exported(obj, args, _exported_names(obj, len(args)))
    return obj


def _np(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _args(model: Any, feeds: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    torch = _torch()
    names = input_names(model)
    if len(names) == 1 and len(feeds) == 1 and names[0] not in feeds:
        feeds = {names[0]: next(iter(feeds.values()))}  # one input: its name cannot be wrong
    missing = [n for n in names if n not in feeds]
    if missing:
        raise DataError(f"no data for input(s) {missing}; the model's inputs are {names}")
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)


def _flatten(out: Any) -> list[np.ndarray]:
    from edgekit.intake.torch import _flatten as flat

    return flat(out)


def fixed_batch(model: Any) -> int | None:
    """The only batch size a traced ``.pt2`` graph runs at, or None when any works."""
    return getattr(model, _FIXED_BATCH, None)


def forward(model: Any, args: tuple[Any, ...]) -> Any:
    """``model(*args)``, in chunks of its fixed batch where it has one (outputs concatenated)."""
    torch = _torch()
    fixed = fixed_batch(model)
    n = int(args[0].shape[0])
    if fixed is None or n == fixed:
        return model(*args)
    if n % fixed:
        raise DataError(
            f"this .pt2 runs only at batch {fixed} (it reshapes to literal sizes); "
            f"{n} samples is not a multiple of it"
        )
    outs = [model(*(a[i : i + fixed] for a in args)) for i in range(0, n, fixed)]
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    return type(outs[0])(torch.cat(parts) for parts in zip(*outs, strict=True))


def run(model: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Float32 forward of stacked feeds (first axis = samples), in batches."""
    torch = _torch()
    args = _args(model, feeds)
    n = int(args[0].shape[0])
    step = fixed_batch(model) or RUN_BATCH
    was = model.training
    model.eval()
    chunks: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for i in range(0, n, step):
                chunks.append(_flatten(forward(model, tuple(a[i : i + step] for a in args))))
    except (DataError, ConversionError):
        raise
    except Exception as exc:
        raise DataError(f"the PyTorch model does not run on the data: {first_line(exc)}") from exc
    finally:
        model.train(was)
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def count(model: Any, example: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """Parameters, and multiply-accumulates per sample of conv and linear layers (from the
    output shapes a forward on ``example`` sees: the honest count after any reshaping)."""
    torch = _torch()
    nn = torch.nn
    params = sum(p.numel() for p in model.parameters())
    macs = 0

    def hook(mod: Any, inputs: Any, output: Any) -> None:
        nonlocal macs
        per_sample = output.numel() // max(int(output.shape[0]), 1)
        if isinstance(mod, nn.Conv2d | nn.Conv1d):
            k = int(np.prod(mod.kernel_size))
            macs += per_sample * (mod.in_channels // mod.groups) * k
        else:
            macs += per_sample * mod.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*_args(model, example))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return int(params), int(macs)


def save(model: Any, path: Path, example: Mapping[str, np.ndarray]) -> None:
    """``torch.export.export`` the model at ``example``'s shapes and write it atomically."""
    torch = _torch()
    path = Path(path)
    args = _args(model, example)
    was = model.training
    model.eval()
    try:
        ep = torch.export.export(model, args)
    except Exception as exc:
        raise ConversionError(
            f"torch.export could not export the compressed model: {first_line(exc)}"
        ) from exc
    finally:
        model.train(was)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
    os.close(fd)
    try:
        torch.export.save(ep, tmp)
        # mkstemp creates 0600; the model is as public as any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply(model: Any, p: Any, data: Any) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """Run pass ``p`` on a copy of ``model``: (new model, changed layers, notes)."""
    torch = _torch()
    module = importlib.import_module(PASS_MODULES[p.kind])
    new, layers, notes = module.apply(model, p, data)
    for attr in (_NAMES, _EXAMPLE, _FIXED_BATCH):
        if hasattr(model, attr) and not hasattr(new, attr):
            object.__setattr__(new, attr, getattr(model, attr))
    feeds = data.example if data.example is not None else getattr(new, _EXAMPLE, None)
    if feeds is not None:
        try:
            with torch.no_grad():
                new.eval()(*_args(new, feeds))
        except Exception as exc:
            # A traced graph can hold sizes of the layers a pass changed (a reshape to a
            # literal channel count): say which pass broke it, not that the data is wrong.
            raise ConversionError(
                f"after the {p.kind} pass the model no longer runs ({first_line(exc)}); "
                "ignore the layers feeding that op (--ignore) or compress the nn.Module"
            ) from exc
    return new, layers, notes


def copy_model(model: Any) -> Any:
    """A deep copy (carried attributes included) in eval mode."""
    new = _deepcopy(model)
    for attr in (_NAMES, _EXAMPLE, _FIXED_BATCH):
        if hasattr(model, attr):
            object.__setattr__(new, attr, getattr(model, attr))
    return new.eval()


def _deepcopy(model: Any) -> Any:
    # Copying an exported module's pytree specs warns (a torch deprecation inside torch).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(model)
