"""PyTorch fine-tuning after a compress pass: labels (cross-entropy), distill, or a callback.

``distill`` needs no labels: the loss is ``KL(softmax(t/T) || softmax(s/T)) * T**2`` against
the uncompressed model's outputs (Hinton et al.; the ``T**2`` keeps gradient sizes independent
of the temperature). Training uses Adam; each epoch is measured on the evaluation data (top-1
with labels, else top-1 agreement with the original) and training stops as soon as that is
within ``tolerance`` of the original's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.compress.passes import CompressData, FineTune
from edgekit.errors import DataError, UsageError, require
from edgekit.progress import enabled, stage


def _torch() -> Any:
    return require("torch", "torch")


def logits(out: Any, what: str = "fine-tuning") -> Any:
    """The first output of a model as a tensor (the one a loss trains)."""
    torch = _torch()
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise UsageError(f"{what} needs a tensor output, the model returns {type(out).__name__}")


def loss_of(out: Any, *, labels: Any = None, teacher: Any = None, temperature: float) -> Any:
    """Cross-entropy with ``labels``, else temperature-scaled KL to ``teacher``'s outputs."""
    torch = _torch()
    f = torch.nn.functional
    s = logits(out)
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels)).long()
        if s.dim() > 2 and tuple(y.shape) == tuple(s.shape[:-1]):
            s = s.movedim(-1, 1)  # (N, steps, C) sequences: cross_entropy wants classes on 1
        return f.cross_entropy(s, y)
    from edgekit.compress.torch_distill import distill_loss

    return distill_loss(s, logits(teacher), alpha=0.0, temperature=temperature)


def top1(outputs: list[np.ndarray], reference: np.ndarray) -> float:
    """Top-1 of the first output against class ids, or against a reference output."""
    pred = np.argmax(outputs[0], axis=-1)
    ref = reference if reference.ndim == pred.ndim else np.argmax(reference, axis=-1)
    return float(np.mean(pred == ref))


def metric(model: Any, data: CompressData, reference_outputs: Any = None) -> float | None:
    """Top-1 on the evaluation data: against its labels, else agreement with the original."""
    from edgekit.compress.torch_model import run

    if data.eval is None:
        return None
    outs = run(model, data.eval)
    if data.eval_labels is not None:
        return top1(outs, np.asarray(data.eval_labels))
    if reference_outputs is None:
        if data.original is None:
            return None
        reference_outputs = run(data.original, data.eval)
    return top1(outs, reference_outputs[0])


def apply(
    model: Any, p: FineTune, data: CompressData
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    torch = _torch()
    from edgekit.compress.torch_model import _args, copy_model, fixed_batch, forward

    new = copy_model(model)
    if p.mode == "callback":
        assert p.callback is not None
        out = p.callback(new, data)
        if not isinstance(out, torch.nn.Module):
            raise UsageError("the fine-tune callback must return the model (an nn.Module)")
        return out.eval(), [], [f"fine-tuned by {getattr(p.callback, '__qualname__', 'callback')}"]
    if data.train is None:
        raise DataError("fine-tuning needs training data: pass --data (images, .npy or .npz)")
    if p.mode == "labels" and data.train_labels is None:
        raise DataError(
            "fine-tune mode labels needs labels: pass --labels or labelled --data, or use "
            "--finetune distill"
        )
    if p.mode == "distill" and data.original is None:
        raise UsageError("fine-tune mode distill needs the original model as its teacher")
    args = _args(new, data.train)
    labels = None if p.mode == "distill" else np.asarray(data.train_labels)
    teacher = data.original.eval() if data.original is not None else None
    n = int(args[0].shape[0])
    fixed = fixed_batch(new)
    batch = fixed or p.batch_size
    target = None
    reference = None
    if data.eval is not None:
        from edgekit.compress.torch_model import run

        if data.eval_labels is not None:
            target = 1.0 if teacher is None else top1(run(teacher, data.eval), data.eval_labels)
        elif teacher is not None:
            reference = run(teacher, data.eval)
            target = 1.0
    # The compressed model's own score is epoch 0: an epoch that makes things worse (a few
    # Adam steps can, on a model that was already good) is not kept.
    best_score = metric(new, data, reference)
    best_state = {k: v.detach().clone() for k, v in new.state_dict().items()}
    best_epoch = 0
    opt = torch.optim.Adam(new.parameters(), lr=p.lr)
    gen = torch.Generator().manual_seed(0)
    history: list[str] = []
    for epoch in range(p.epochs):
        new.train()
        order = torch.randperm(n, generator=gen)
        steps = [order[i : i + batch] for i in range(0, n - (n % batch if fixed else 0), batch)]
        losses = []
        for idx in _bar(steps, f"fine-tune epoch {epoch + 1}/{p.epochs}"):
            if len(idx) < 2 and not fixed:
                continue  # BatchNorm cannot train on one sample
            chunk = tuple(a[idx] for a in args)
            out = forward(new, chunk)
            t = None
            if labels is None:
                with torch.no_grad():
                    t = forward(teacher, chunk)
            loss = loss_of(
                out,
                labels=None if labels is None else labels[idx.numpy()],
                teacher=t,
                temperature=p.temperature,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        new.eval()
        score = metric(new, data, reference)
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        line = f"epoch {epoch + 1}: loss {mean_loss:.4f}" + (
            f", metric {score:.4f}" if score is not None else ""
        )
        history.append(line)
        stage(f"fine-tune {line}")
        if score is None or best_score is None or score >= best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in new.state_dict().items()}
        if score is not None and target is not None and score >= target - p.tolerance:
            history.append(f"stopped early: within {p.tolerance} of the original's {target:.4f}")
            break
    new.load_state_dict(best_state)
    new.zero_grad(set_to_none=True)
    if best_epoch < len([h for h in history if h.startswith("epoch")]):
        history.append(
            f"kept epoch {best_epoch}"
            + (" (the model before fine-tuning)" if not best_epoch else "")
            + f": its metric {best_score:.4f} is the best"
        )
    return new.eval(), [], [f"fine-tune ({p.mode}) " + "; ".join(history)]


def _bar(steps: list[Any], desc: str) -> Any:
    if not enabled():
        return steps
    import sys

    from tqdm import tqdm

    return tqdm(steps, desc=desc, file=sys.stderr, leave=False, unit="batch")
