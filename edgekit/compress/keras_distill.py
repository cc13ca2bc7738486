"""Keras 3 knowledge distillation (the ``Distill`` pass): offline, online and self modes.

The loss is the one in :mod:`edgekit.compress.torch_distill`:
``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`` from log-softmaxes;
a softmax head's probabilities are turned into log-probabilities first (a valid logit).
Data-free distillation is PyTorch-only for now (refused here with a UsageError).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.compress import keras_model as km
from edgekit.compress.keras_finetune import _bar, _logits
from edgekit.compress.passes import CompressData, Distill
from edgekit.errors import DataError, UsageError


def distill_loss(
    student: Any, teacher: Any, labels: Any = None, *, alpha: float, temperature: float
) -> Any:
    """The distillation loss over a batch of logits (batch mean), as a TF scalar."""
    tf = km.tf()
    t = float(temperature)
    s = tf.convert_to_tensor(student, tf.float32)
    log_t = tf.nn.log_softmax(tf.stop_gradient(tf.convert_to_tensor(teacher, tf.float32)) / t)
    log_s = tf.nn.log_softmax(s / t)
    soft = t * t * tf.reduce_mean(tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), -1))
    if labels is None or alpha == 0.0:
        return soft
    hard = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), s)
    )
    return alpha * hard + (1.0 - alpha) * soft


def apply(model: Any, p: Distill, data: CompressData) -> tuple[Any, list[dict], list[str]]:
    tf = km.tf()
    k = km.keras()
    if p.mode == "data-free":
        raise UsageError("data-free distillation is PyTorch-only for now; give --data")
    if p.features is not None:
        raise UsageError("feature matching is PyTorch-only for now")
    if p.mode == "self":
        teacher = km.copy_model(model)
    else:
        if data.original is None:
            raise UsageError("distillation needs a teacher (teacher= or --distill-from)")
        if data.original is model:
            raise UsageError(
                "the student is the teacher: compress it first (--prune / --low-rank) or give "
                "another teacher (--distill-from)"
            )
        teacher = km.copy_model(data.original) if p.mode == "online" else data.original
    if data.train is None:
        raise DataError("distillation needs training data: pass --data (images, .npy, .npz)")
    labels = data.train_labels
    alpha = p.alpha if p.alpha is not None else (0.5 if labels is not None else 0.0)
    if alpha > 0 and labels is None:
        raise DataError(f"alpha {alpha} weighs a label loss: pass labels (--labels) or alpha 0")
    if p.mode == "self" and alpha == 0.0:
        raise UsageError(
            "self-distillation without a label loss only copies the model: give labels"
        )
    student = km.copy_model(model)
    train = {n: np.asarray(v) for n, v in data.train.items()}
    n = len(next(iter(train.values())))
    first = next(km.batches(train, 64))
    s_probs = km.outputs_are_probabilities(km.run(student, first)[0])
    t_probs = km.outputs_are_probabilities(km.run(teacher, first)[0])
    y_all = np.zeros(n, np.int64) if labels is None else np.asarray(labels).reshape(n)
    opt = k.optimizers.Adam(p.lr)
    opt.build(student.trainable_variables)
    t_opt = None
    if p.mode == "online":
        t_opt = k.optimizers.Adam(p.lr)
        t_opt.build(teacher.trainable_variables)
    temp = float(p.temperature)
    has_labels = labels is not None

    def logit(out: Any, probs: bool) -> Any:
        return _logits(tf, out, probs)

    # No AutoGraph: the step branches in Python only, and AutoGraph would try (and warn) to
    # convert every helper it calls, down to edgekit's lazy TensorFlow import.
    @tf.function(reduce_retracing=True, autograph=False)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape(persistent=True) as tape:
            s = logit(km.flat(student(x, training=True))[0], s_probs)
            t = logit(km.flat(teacher(x, training=t_opt is not None))[0], t_probs)
            loss = distill_loss(s, t, y if has_labels else None, alpha=alpha, temperature=temp)
            if t_opt is not None:
                # the teacher learns from the labels, else from the student (mutual learning)
                t_loss = (
                    distill_loss(t, s, y, alpha=1.0, temperature=temp)
                    if has_labels
                    else distill_loss(t, tf.stop_gradient(s), None, alpha=0.0, temperature=temp)
                )
        sv = student.trainable_variables
        opt.apply_gradients(zip(tape.gradient(loss, sv), sv, strict=True))
        if t_opt is not None:
            tv = teacher.trainable_variables
            t_opt.apply_gradients(zip(tape.gradient(t_loss, tv), tv, strict=True))
        del tape
        return loss

    def agreement() -> float | None:
        if data.eval is None:
            return None
        pred = np.argmax(km.run(student, data.eval)[0], -1)
        return float(np.mean(pred == np.argmax(km.run(teacher, data.eval)[0], -1)))

    notes = [f"distill ({p.mode}, alpha {alpha:g}, T {temp:g})"]
    best, best_epoch, best_weights = agreement(), 0, student.get_weights()
    rng = np.random.default_rng(0)
    steps = n // p.batch_size + (1 if n % p.batch_size >= 2 else 0)
    for epoch in range(1, p.epochs + 1):
        order = rng.permutation(n)
        losses = []
        for i in _bar(steps, f"distill epoch {epoch}/{p.epochs}"):
            idx = order[i * p.batch_size : (i + 1) * p.batch_size]
            x = km.model_args(student, {k_: v[idx] for k_, v in train.items()})
            losses.append(float(step(x, y_all[idx])))
        score = agreement()
        notes.append(
            f"epoch {epoch}: loss {np.mean(losses):.4f}"
            + (f", agreement with the teacher {score:.4f}" if score is not None else "")
        )
        if score is None or best is None or score >= best:
            best, best_epoch, best_weights = score, epoch, student.get_weights()
    student.set_weights(best_weights)
    if best_epoch < p.epochs and best is not None:
        notes.append(f"kept epoch {best_epoch}: agreement {best:.4f} is the best")
    return student, [], notes
