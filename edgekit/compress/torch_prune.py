"""PyTorch pruning: structured (channels physically removed) and unstructured (zeros baked in).

Structured pruning is torch-pruning's: its ``DependencyGraph`` finds every layer a channel
touches (the next conv's inputs, BatchNorm, residual adds, concatenations, depthwise convs), and
``MetaPruner`` removes whole coupled groups, so the result is a smaller dense model that every
runtime speeds up on. Criteria score a *group* (torch-pruning's default: the mean, over the
group's layers, of each layer's per-channel score), not a single conv:

* ``magnitude``: sum of ``|w|**norm`` per channel (``tp.importance.MagnitudeImportance(p=norm)``);
* ``gradient``: the same over the accumulated gradients of the loss instead of the weights;
* ``taylor``: first-order Taylor ``|w * dL/dw|`` (``tp.importance.TaylorImportance``);
* ``importance``: BatchNorm scale ``|gamma|`` (``BNScaleImportance``), and where a group has
  no BatchNorm, mean ``|activation|`` of the channel (``ActivationImportance``).

The loss of ``gradient``/``taylor`` is cross-entropy with labels, otherwise KL divergence to
the uncompressed model's outputs (so no labels are needed) — or, while the model is still the
uncompressed one (where that KL's gradient is exactly zero), cross-entropy against its own
top-1 classes. The classifier (the last conv or
linear layer to run) always keeps its outputs. Unstructured pruning zeros single weights of
conv/linear layers (optionally N:M) and bakes the zeros into the tensors: no mask or
parametrization is left for the exporter to trip on.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

from edgekit.compress.passes import CompressData, Prune
from edgekit.errors import DataError, UsageError, require

#: batches of training data the data-driven criteria look at (a few suffice: they rank)
CRITERION_BATCHES = 8
CRITERION_BATCH = 32


def _torch() -> Any:
    return require("torch", "torch")


def apply(model: Any, p: Prune, data: CompressData) -> tuple[Any, list[dict[str, Any]], list[str]]:
    from edgekit.compress.torch_model import copy_model

    new = copy_model(model)
    if p.structured:
        return _structured(new, p, data)
    return _unstructured(new, p, data)


# --- shared ---------------------------------------------------------------------------------


def _example_args(model: Any, data: CompressData) -> tuple[Any, ...]:
    from edgekit.compress.torch_model import _args, example

    feeds = data.example if data.example is not None else example(model)
    return _args(model, feeds)


def prunable_layers(model: Any) -> dict[str, Any]:
    torch = _torch()
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Conv1d | torch.nn.Linear)
    }


def classifier(model: Any, args: tuple[Any, ...]) -> str | None:
    """The last conv/linear layer to run: its outputs are the model's, never pruned."""
    torch = _torch()
    layers = prunable_layers(model)
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_a, _n=n: order.append(_n)) for n, m in layers.items()
    ]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return order[-1] if order else None


def _ignored(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(pat, name) for pat in patterns)


def _check_patterns(patterns: tuple[str, ...]) -> None:
    for pat in patterns:
        try:
            re.compile(pat)
        except re.error as exc:
            raise UsageError(f"--ignore {pat!r} is not a regular expression: {exc}") from None


def _ratio_for(name: str, p: Prune) -> float:
    for key, r in p.per_layer.items():
        if key == name or re.fullmatch(key, name):
            return float(r)
    return p.ratio


def _batches(model: Any, data: CompressData, what: str) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """A few (args, labels-or-None) batches of training data."""
    from edgekit.compress.torch_model import _args, fixed_batch

    if data.train is None:
        raise DataError(f"criterion {what} needs data: pass --data (images, .npy or .npz)")
    args = _args(model, data.train)
    labels = data.train_labels
    n = int(args[0].shape[0])
    fixed = fixed_batch(model)
    step = fixed or CRITERION_BATCH
    for k, i in enumerate(range(0, n - step + 1 if fixed else n, step)):
        if k >= CRITERION_BATCHES:
            return
        chunk = tuple(a[i : i + step] for a in args)
        yield chunk, None if labels is None else labels[i : i + step]


def accumulate_gradients(model: Any, data: CompressData, what: str) -> None:
    """Sum the loss gradients of a few batches into ``.grad`` (the model stays in eval mode:
    the scores are of the deployed network, BatchNorm statistics untouched).

    Without labels the loss is the KL divergence to the original model's outputs, but where
    the model still *is* the original (the first pass) that KL and its gradient are exactly
    zero; there the original's own top-1 classes serve as labels (cross-entropy).
    """
    torch = _torch()
    from edgekit.compress.torch_finetune import logits, loss_of
    from edgekit.compress.torch_model import forward

    model.eval()
    model.zero_grad(set_to_none=True)
    teacher = data.original
    for args, labels in _batches(model, data, what):
        out = forward(model, args)
        target = None
        if labels is None:
            if teacher is None:
                raise DataError(f"criterion {what} needs labels or the original model")
            with torch.no_grad():
                target = forward(teacher.eval(), args)
            t, s = logits(target), logits(out).detach()
            if t.shape == s.shape and torch.allclose(t, s, rtol=1e-5, atol=1e-6):
                labels, target = t.argmax(-1).numpy(), None
        loss = loss_of(out, labels=labels, teacher=target, temperature=1.0)
        loss.backward()


# --- structured -----------------------------------------------------------------------------


class _GradientImportance:
    """Magnitude importance computed over each layer's accumulated gradient."""

    def __init__(self, norm: int) -> None:
        tp = require("torch_pruning", "compress")
        self.inner = tp.importance.MagnitudeImportance(p=norm)

    def __call__(self, group: Any) -> Any:
        torch = _torch()
        swapped: list[tuple[Any, Any]] = []
        seen: set[int] = set()
        for dep, _ in group:
            layer = dep.target.module
            for name in ("weight", "bias"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.nn.Parameter) and id(t) not in seen:
                    seen.add(id(t))
                    grad = t.grad if t.grad is not None else torch.zeros_like(t)
                    swapped.append((t, t.data))
                    t.data = grad.detach().abs()
        try:
            return self.inner(group)
        finally:
            for t, original in swapped:
                t.data = original


class _BNOrActivation:
    """BatchNorm scale where the group has a BatchNorm, else mean |activation|."""

    def __init__(self) -> None:
        tp = require("torch_pruning", "compress")
        self.bn = tp.importance.BNScaleImportance()
        self.act = tp.importance.ActivationImportance()

    def __call__(self, group: Any) -> Any:
        imp = self.bn(group)
        return imp if imp is not None else self.act(group)


def _activation_statistics(model: Any, data: CompressData) -> None:
    """Mean |input| per input channel of every conv/linear over a few batches, stored where
    ActivationImportance reads it (its own hooks keep only the last batch)."""
    torch = _torch()
    from edgekit.compress.torch_model import forward

    sums: dict[Any, Any] = {}
    counts: dict[Any, int] = {}

    def hook(mod: Any, inputs: Any, _out: Any) -> None:
        x = inputs[0].detach().abs()
        if isinstance(mod, torch.nn.Linear):
            per = x.reshape(-1, x.shape[-1]).mean(0)
        else:
            per = x.transpose(0, 1).reshape(x.shape[1], -1).mean(1)
        sums[mod] = sums.get(mod, 0) + per
        counts[mod] = counts.get(mod, 0) + 1

    layers = list(prunable_layers(model).values())
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            for args, _ in _batches(model, data, "importance"):
                forward(model, args)
    finally:
        for h in handles:
            h.remove()
    for mod, total in sums.items():
        mod._importance = total / counts[mod]


def _importance(p: Prune, model: Any, data: CompressData, notes: list[str]) -> Any:
    tp = require("torch_pruning", "compress")
    torch = _torch()
    if p.criterion == "magnitude":
        return tp.importance.MagnitudeImportance(p=p.norm)
    if p.criterion == "gradient":
        accumulate_gradients(model, data, "gradient")
        return _GradientImportance(p.norm)
    if p.criterion == "taylor":
        accumulate_gradients(model, data, "taylor")
        return tp.importance.TaylorImportance()
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if data.train is None:
        if not has_bn:
            raise DataError(
                "criterion importance: the model has no BatchNorm, so it needs --data to "
                "measure activations"
            )
        notes.append("importance: BatchNorm scale only (no data: groups without BN kept)")
        return tp.importance.BNScaleImportance()
    _activation_statistics(model, data)
    notes.append("importance: BatchNorm scale, mean |activation| where a group has no BN")
    return _BNOrActivation()


def _shapes(model: Any) -> dict[str, list[int]]:
    torch = _torch()
    return {
        n: list(m.weight.shape)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Conv1d | torch.nn.Linear)
        or (isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None)
    }


def _width(m: Any) -> int:
    return int(getattr(m, "out_channels", getattr(m, "out_features", 0)))


def _layer_ratios(
    p: Prune, layers: dict[str, Any], ignored: set[str], notes: list[str]
) -> dict[Any, float]:
    """Per-layer ratios whose kept channel counts are rounded *up* to ``round_to`` (never
    past the layer's width). torch-pruning's own ``round_to`` rounds the kept count down, so
    30 % of 16 channels at round_to 8 would remove half of them."""
    out: dict[Any, float] = {}
    rounded = []
    for name, m in layers.items():
        if name in ignored:
            continue
        n, r = _width(m), _ratio_for(name, p)
        kept = int(n * (1 - r))  # torch-pruning's own count of what stays
        up = min(n, -(-kept // p.round_to) * p.round_to)
        if up != kept:
            rounded.append(f"{name} {kept}->{up}")
        elif r == p.ratio:
            # Left to the pruner's default: a layer coupled with this one (a residual add)
            # then takes the ratio a per_layer entry gives its partner.
            continue
        # int(n * (1 - ratio)) == up, clear of float rounding at the boundary.
        out[m] = 1.0 - (up + 0.5) / n
    if rounded:
        notes.append(
            f"kept channels rounded up to a multiple of {p.round_to}: " + ", ".join(rounded)
        )
    return out


def _global_round_to(p: Prune, layers: dict[str, Any], ignored: set[str], notes: list[str]) -> int:
    """Global ranking decides each layer's count inside torch-pruning, which rounds it *down*
    to ``round_to`` and would empty a layer left with fewer: lowered for small layers."""
    kept = [int(_width(m) * (1 - p.ratio)) for n, m in layers.items() if n not in ignored]
    rt = p.round_to
    smallest = min(kept) if kept else rt
    while rt > 1 and rt > smallest:
        rt //= 2
    notes.append(f"global scope: kept channels rounded down to a multiple of {rt}")
    return max(rt, 1)


def _structured(
    model: Any, p: Prune, data: CompressData
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    tp = require("torch_pruning", "compress")
    _check_patterns(p.ignore)
    notes: list[str] = []
    args = _example_args(model, data)
    layers = prunable_layers(model)
    head = classifier(model, args)
    ignored_names = {n for n in layers if _ignored(n, p.ignore)} | ({head} if head else set())
    ignored = [layers[n] for n in ignored_names]
    round_to = 1
    if p.scope == "global":
        ratio_dict = {
            layers[n]: _ratio_for(n, p)
            for n in layers
            if n not in ignored_names and _ratio_for(n, p) != p.ratio
        }
        round_to = _global_round_to(p, layers, ignored_names, notes)
    else:
        ratio_dict = _layer_ratios(p, layers, ignored_names, notes)
    before = _shapes(model)
    importance = _importance(p, model, data, notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            args,
            importance=importance,
            global_pruning=p.scope == "global",
            pruning_ratio=p.ratio,
            pruning_ratio_dict=ratio_dict or None,
            max_pruning_ratio=max(0.95, *ratio_dict.values(), p.ratio),
            ignored_layers=ignored,
            round_to=round_to if round_to > 1 else None,
        )
        pruner.step()
    model.zero_grad(set_to_none=True)
    for m in model.modules():
        if hasattr(m, "_importance"):
            del m._importance
    after = _shapes(model)
    changed = [
        {"layer": n, "before": before[n], "after": after[n]}
        for n in before
        if n in after and before[n] != after[n]
    ]
    if head:
        notes.append(f"classifier {head} keeps its outputs")
    return model.eval(), changed, notes


# --- unstructured ---------------------------------------------------------------------------


def _scores(model: Any, p: Prune, names: list[str], data: CompressData) -> dict[str, Any]:
    layers = prunable_layers(model)
    if p.criterion == "importance":
        raise UsageError(
            "criterion importance ranks channels: use it with --structured, or pick "
            "magnitude, gradient or taylor for --unstructured"
        )
    if p.criterion in ("gradient", "taylor"):
        accumulate_gradients(model, data, p.criterion)
    out = {}
    for n in names:
        w = layers[n].weight
        if p.criterion == "magnitude":
            s = w.detach().abs()
        elif p.criterion == "gradient":
            s = w.grad.detach().abs() if w.grad is not None else w.detach().abs() * 0
        else:
            s = (w.detach() * w.grad.detach()).abs() if w.grad is not None else w.detach() * 0
        out[n] = s.pow(p.norm) if p.criterion == "magnitude" else s
    return out


def nm_mask(score: Any, n: int, m: int) -> Any:
    """Keep the ``n`` highest of every ``m`` consecutive weights along each output row of
    ``weight.reshape(out, -1)`` (the input dimension, as sparse tensor cores group them)."""
    torch = _torch()
    rows = score.reshape(score.shape[0], -1)
    groups = rows.reshape(rows.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    idx = groups.topk(n, dim=-1).indices
    keep.scatter_(-1, idx, True)
    return keep.reshape(score.shape)


def _unstructured(
    model: Any, p: Prune, data: CompressData
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    torch = _torch()
    _check_patterns(p.ignore)
    notes: list[str] = []
    args = _example_args(model, data)
    layers = prunable_layers(model)
    head = classifier(model, args)
    names = [n for n in layers if n != head and not _ignored(n, p.ignore)]
    scores = _scores(model, p, names, data)
    model.zero_grad(set_to_none=True)
    masks: dict[str, Any] = {}
    if p.n_m is not None:
        n_keep, m = p.n_m
        for name in names:
            w = layers[name].weight
            if w[0].numel() % m:
                notes.append(f"{name}: {w[0].numel()} weights per output is not a multiple of {m}")
                continue
            masks[name] = nm_mask(scores[name], n_keep, m)
        notes.append(f"{n_keep}:{m} sparsity: ratio ignored, {m - n_keep} of every {m} zeroed")
    elif p.scope == "global" and not p.per_layer:
        flat = torch.cat([scores[n].flatten() for n in names]) if names else torch.zeros(0)
        k = int(p.ratio * flat.numel())
        if k:
            # Exactly the k lowest (a threshold would also zero every weight tied with it).
            keep_flat = torch.ones_like(flat, dtype=torch.bool)
            keep_flat[flat.argsort(stable=True)[:k]] = False
            start = 0
            for n in names:
                size = scores[n].numel()
                masks[n] = keep_flat[start : start + size].reshape(scores[n].shape)
                start += size
    else:
        for n in names:
            r = _ratio_for(n, p)
            flat = scores[n].flatten()
            k = int(r * flat.numel())
            keep = torch.ones_like(flat, dtype=torch.bool)
            keep[flat.argsort(stable=True)[:k]] = False
            masks[n] = keep.reshape(scores[n].shape)
    changed = []
    with torch.no_grad():
        for n, keep in masks.items():
            w = layers[n].weight
            before = int((w == 0).sum())
            w.mul_(keep.to(w.dtype))
            zeros = int((w == 0).sum())
            changed.append(
                {
                    "layer": n,
                    "before": {"zeros": before, "weights": w.numel()},
                    "after": {"zeros": zeros, "sparsity": round(zeros / w.numel(), 4)},
                }
            )
    notes.append(
        "unstructured zeros are baked into dense weights: the file compresses (see zip size) "
        "but dense runtimes run no faster"
    )
    if head:
        notes.append(f"classifier {head} left dense")
    return model.eval(), changed, notes


def sparsity(model: Any) -> float:
    """Fraction of zero weights over the conv/linear layers."""
    total = zeros = 0
    for m in prunable_layers(model).values():
        w = m.weight.detach()
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0
