"""PyTorch knowledge distillation (the ``Distill`` pass): offline, online, self, data-free.

Loss (Hinton et al.): ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``,
the KL from log-softmaxes (stable for large logits), ``T^2`` keeping gradient sizes independent
of the temperature. Without labels alpha is 0 (pure soft targets).

* offline: the teacher (``CompressData.original``, which the driver sets to the pass's
  teacher) is frozen;
* online: a copy of the teacher trains alongside, on labels if given, else on the student's
  softened outputs (deep mutual learning);
* self: a frozen copy of the model as this pass receives it is the teacher while the model
  trains on labels (born-again self-distillation, without re-initialising: the model usually
  arrives pruned and trained, and throwing that away costs more than it gains);
* data-free: inputs are synthesised so that each BatchNorm layer's batch mean/variance match
  its running statistics (DeepInversion, plus an L2 / total-variation prior and a
  cross-entropy to evenly assigned classes), then offline distillation runs on them.

``features="auto"`` adds an MSE between the inputs of the teacher's and student's last
``nn.Linear`` (the penultimate features), the student's through a learned linear projection.
Each epoch's top-1 agreement with the teacher on the evaluation data is reported; the best
epoch's weights are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.compress.passes import CompressData, Distill
from edgekit.errors import DataError, UsageError, require
from edgekit.progress import enabled, stage


def _torch() -> Any:
    return require("torch", "torch")


def distill_loss(
    student: Any, teacher: Any, labels: Any = None, *, alpha: float, temperature: float
) -> Any:
    """``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(p_t || p_s)`` over a batch of
    logits (batch mean); ``labels`` None means the soft term alone."""
    torch = _torch()
    f = torch.nn.functional
    t = float(temperature)
    s2 = student.reshape(-1, student.shape[-1])
    t2 = teacher.detach().reshape(-1, teacher.shape[-1])
    soft = f.kl_div(
        f.log_softmax(s2 / t, -1), f.log_softmax(t2 / t, -1), log_target=True, reduction="batchmean"
    )
    soft = soft * t * t
    if labels is None or alpha == 0.0:
        return soft
    hard = f.cross_entropy(s2, torch.as_tensor(labels).long().reshape(-1))
    return alpha * hard + (1.0 - alpha) * soft


def _logits(out: Any) -> Any:
    from edgekit.compress.torch_finetune import logits

    return logits(out, "distillation")


def _bar(steps: list[Any], desc: str) -> Any:
    if not enabled():
        return steps
    import sys

    from tqdm import tqdm

    return tqdm(steps, desc=desc, file=sys.stderr, leave=False, unit="batch")


def _bns(model: Any) -> list[Any]:
    torch = _torch()
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def synthesize(
    teacher: Any,
    shape: tuple[int, ...],
    n: int,
    *,
    steps: int = 200,
    batch_size: int = 64,
    lr: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, list[float]]:
    """``n`` inputs of per-sample ``shape`` whose batch statistics at every BatchNorm layer of
    ``teacher`` match its running mean/variance; also the BN loss (mean over batches) per step."""
    torch = _torch()
    bns = _bns(teacher)
    if not bns:
        raise UsageError(
            "data-free distillation matches the teacher's BatchNorm statistics, and the "
            "teacher has no BatchNorm layers: give training data (--data) instead"
        )
    teacher.eval()
    seen: list[Any] = []

    def hook(mod: Any, inputs: Any, _out: Any) -> None:
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]
        seen.append(
            torch.norm(x.mean(dims) - mod.running_mean, 2)
            + torch.norm(x.var(dims, unbiased=False) - mod.running_var, 2)
        )

    handles = [m.register_forward_hook(hook) for m in bns]
    gen = torch.Generator().manual_seed(seed)
    history = np.zeros(steps)
    batches: list[np.ndarray] = []
    for p in teacher.parameters():
        p.requires_grad_(False)
    try:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = torch.randn((b, *shape), generator=gen).requires_grad_(True)
            classes = torch.arange(start, start + b) % _classes(teacher, x)
            opt = torch.optim.Adam([x], lr=lr)
            for i in range(steps):
                seen.clear()
                out = _logits(teacher(x))
                bn = torch.stack(seen).sum()
                loss = bn + 0.1 * torch.nn.functional.cross_entropy(out, classes)
                loss = loss + 1e-4 * x.pow(2).mean() + 1e-3 * _tv(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history[i] += bn.item() * b / n
            batches.append(x.detach().numpy())
    finally:
        for h in handles:
            h.remove()
        for p in teacher.parameters():
            p.requires_grad_(True)
    return np.concatenate(batches).astype(np.float32), history.tolist()


def _classes(teacher: Any, x: Any) -> int:
    torch = _torch()
    with torch.no_grad():
        return int(_logits(teacher(x[:2].detach())).shape[-1])


def _tv(x: Any) -> Any:
    # Total variation over the trailing two (spatial) axes: natural images are smooth.
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()


def _penultimate(model: Any) -> Any:
    torch = _torch()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise UsageError("features='auto' matches the inputs of the last nn.Linear; none found")
    return linears[-1]


def apply(
    model: Any, p: Distill, data: CompressData
) -> tuple[Any, list[dict[str, Any]], list[str]]:
    torch = _torch()
    from edgekit.compress.torch_model import _args, copy_model, fixed_batch, forward, run

    student = copy_model(model)
    notes: list[str] = []
    if p.mode == "self":
        teacher = copy_model(model)
    else:
        if data.original is None:
            raise UsageError("distillation needs a teacher (teacher= or --distill-from)")
        if data.original is model:
            raise UsageError(
                "the student is the teacher: compress it first (--prune / --low-rank) or give "
                "another teacher (--distill-from)"
            )
        teacher = copy_model(data.original) if p.mode == "online" else data.original.eval()
    if p.mode == "data-free":
        if data.example is None or len(data.example) != 1:
            raise UsageError("data-free distillation needs a model with exactly one input")
        name, ex = next(iter(data.example.items()))
        if not np.issubdtype(np.asarray(ex).dtype, np.floating):
            raise UsageError("data-free distillation synthesises float inputs only")
        x, hist = synthesize(
            teacher, tuple(np.asarray(ex).shape[1:]), p.synthetic,
            steps=p.synthetic_steps, batch_size=max(p.batch_size, 16),
        )  # fmt: skip
        notes.append(
            f"data-free: {len(x)} inputs synthesised; BatchNorm statistics loss "
            f"{hist[0]:.4g} -> {hist[-1]:.4g} over {len(hist)} steps"
        )
        train, labels = {name: x}, None
    else:
        if data.train is None:
            raise DataError("distillation needs training data: pass --data (images, .npy, .npz)")
        train, labels = data.train, data.train_labels
    alpha = p.alpha if p.alpha is not None else (0.5 if labels is not None else 0.0)
    if alpha > 0 and labels is None:
        raise DataError(f"alpha {alpha} weighs a label loss: pass labels (--labels) or alpha 0")
    if p.mode == "self" and alpha == 0.0:
        raise UsageError(
            "self-distillation without a label loss only copies the model: give labels"
        )
    labels_t = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    args = _args(student, train)
    n = int(args[0].shape[0])
    fixed = fixed_batch(student)
    batch = fixed or p.batch_size

    captured: dict[str, Any] = {}
    handles = []
    proj = None
    params = list(student.parameters())
    if p.features == "auto":
        for key, m in (("s", _penultimate(student)), ("t", _penultimate(teacher))):
            handles.append(
                m.register_forward_hook(lambda _m, i, _o, k=key: captured.__setitem__(k, i[0]))
            )
        with torch.no_grad():
            forward(student, tuple(a[:batch] for a in args))
            forward(teacher, tuple(a[:batch] for a in args))
        proj = torch.nn.Linear(captured["s"].shape[-1], captured["t"].shape[-1])
        params += list(proj.parameters())
    opt = torch.optim.Adam(params, lr=p.lr)
    t_opt = torch.optim.Adam(teacher.parameters(), lr=p.lr) if p.mode == "online" else None

    reference = None
    if data.eval is not None:
        reference = np.argmax(run(teacher, data.eval)[0], -1)

    def agreement() -> float | None:
        if data.eval is None:
            return None
        pred = np.argmax(run(student, data.eval)[0], -1)
        ref = reference if p.mode != "online" else np.argmax(run(teacher, data.eval)[0], -1)
        return float(np.mean(pred == ref))

    best = agreement()
    best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    best_epoch = 0
    gen = torch.Generator().manual_seed(0)
    temp = p.temperature
    try:
        for epoch in range(1, p.epochs + 1):
            student.train()
            if t_opt is not None:
                teacher.train()
            order = torch.randperm(n, generator=gen)
            steps = [order[i : i + batch] for i in range(0, n - (n % batch if fixed else 0), batch)]
            losses = []
            for idx in _bar(steps, f"distill epoch {epoch}/{p.epochs}"):
                if len(idx) < 2:
                    continue  # BatchNorm cannot train on one sample
                chunk = tuple(a[idx] for a in args)
                y = None if labels_t is None else labels_t[idx]
                s_out = _logits(forward(student, chunk))
                fs = captured.get("s")
                if t_opt is None:
                    with torch.no_grad():
                        t_out = _logits(forward(teacher, chunk))
                else:
                    t_out = _logits(forward(teacher, chunk))
                loss = distill_loss(s_out, t_out, y, alpha=alpha, temperature=temp)
                if proj is not None:
                    loss = loss + p.feature_weight * torch.nn.functional.mse_loss(
                        proj(fs), captured["t"].detach()
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if t_opt is not None:
                    # The teacher learns from the labels, else from the student (mutual).
                    t_loss = distill_loss(t_out, s_out.detach(), y, alpha=alpha, temperature=temp)
                    if y is not None:
                        t_loss = torch.nn.functional.cross_entropy(t_out, y)
                    t_opt.zero_grad(set_to_none=True)
                    t_loss.backward()
                    t_opt.step()
                losses.append(loss.item())
            student.eval()
            teacher.eval()
            score = agreement()
            line = f"epoch {epoch}: loss {np.mean(losses):.4f}" + (
                f", agreement with the teacher {score:.4f}" if score is not None else ""
            )
            notes.append(line)
            stage(f"distill {line}")
            if score is None or best is None or score >= best:
                best, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    finally:
        for h in handles:
            h.remove()
    student.load_state_dict(best_state)
    student.zero_grad(set_to_none=True)
    if best_epoch < p.epochs and best is not None:
        notes.append(f"kept epoch {best_epoch}: agreement {best:.4f} is the best")
    notes.insert(0, f"distill ({p.mode}, alpha {alpha:g}, T {temp:g})")
    return student.eval(), [], notes
