"""Fine-tuning of a compressed Keras 3 model: with labels, by distillation, or by a callback.

``labels`` trains on sparse cross-entropy; ``distill`` matches the uncompressed model
(``CompressData.original``) with ``T^2 * KL(softmax(t/T) || softmax(s/T))`` and needs no labels;
``callback`` hands the model to the user's ``callback(model, data) -> model``. After every epoch
the metric (top-1 accuracy with labels, else top-1 agreement with the original) is measured on
the evaluation data (the training data without it), and training stops early once it is within
``tolerance`` of the original's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit import progress
from edgekit.compress import keras_model as km
from edgekit.compress.passes import CompressData, FineTune
from edgekit.errors import DataError, UsageError


def _bar(steps: int, desc: str) -> Any:
    """Batches of one epoch, with a progress bar on a terminal (``edgekit.progress`` counts
    samples; an epoch is counted in batches)."""
    if not progress.enabled():
        return range(steps)
    import sys

    from tqdm import tqdm

    return tqdm(range(steps), desc=desc, total=steps, file=sys.stderr, leave=False, unit="batch")


def _first(outs: list[np.ndarray]) -> np.ndarray:
    return outs[0]


def metric(model: Any, data: CompressData) -> tuple[str, float | None, float | None]:
    """(metric name, the original's value, ``model``'s value) on the evaluation data."""
    feeds, labels = (
        (data.eval, data.eval_labels)
        if data.eval is not None
        else (
            data.train,
            data.train_labels,
        )
    )
    if feeds is None:
        return "none", None, None
    pred = np.argmax(_first(km.run(model, feeds)), -1)
    if labels is not None:
        labels = np.asarray(labels).reshape(pred.shape)
        before = None
        if data.original is not None:
            before = float(np.mean(np.argmax(_first(km.run(data.original, feeds)), -1) == labels))
        return "accuracy", before, float(np.mean(pred == labels))
    if data.original is None:
        return "none", None, None
    ref = np.argmax(_first(km.run(data.original, feeds)), -1)
    return "agreement", 1.0, float(np.mean(pred == ref))


def _logits(tf: Any, out: Any, probs: bool) -> Any:
    return tf.math.log(tf.clip_by_value(out, 1e-7, 1.0)) if probs else out


def trainer(
    student: Any, ref: Any, data: CompressData, mode: str, lr: float, temperature: float
) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """The traced training step of ``student`` (Adam at ``lr``) on ``data.train``, with the
    training feeds and the per-sample targets it takes: the labels (``mode`` "labels": sparse
    cross-entropy) or ``ref``'s outputs as logits (else: ``T^2``-scaled KL at
    ``temperature``). Fine-tuning and Keras QAT train with it."""
    from edgekit.compress.keras_distill import distill_loss

    tf = km.tf()
    k = km.keras()
    train = {n: np.asarray(v) for n, v in data.train.items()}
    probs = km.outputs_are_probabilities(_first(km.run(ref, next(km.batches(train, 64)))))
    if mode == "labels":
        target = np.asarray(data.train_labels)
    else:  # the teacher's outputs once, as logits at temperature T
        target = np.asarray(_first(km.run(ref, train)), np.float32)
        if probs:
            target = np.log(np.clip(target, 1e-7, 1.0))
    optimizer = k.optimizers.Adam(lr)
    # the optimizer's slots must exist before the traced step runs (tf.function creates no
    # variables after its first trace)
    optimizer.build(student.trainable_variables)
    temp = float(temperature)

    # No AutoGraph: the step branches in Python only, and AutoGraph would try (and warn) to
    # convert every helper it calls, down to edgekit's lazy TensorFlow import.
    @tf.function(reduce_retracing=True, autograph=False)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            out = km.flat(student(x, training=True))[0]
            if mode == "labels":
                ce = k.losses.sparse_categorical_crossentropy(y, out, from_logits=not probs)
                loss = tf.reduce_mean(ce)
            else:
                loss = distill_loss(_logits(tf, out, probs), y, alpha=0.0, temperature=temp)
        variables = student.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return step, train, target


def run_epoch(
    step: Any,
    student: Any,
    train: dict[str, np.ndarray],
    target: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    desc: str,
) -> float:
    """One shuffled pass of ``step`` over the data; the mean batch loss. A last batch of one
    sample is skipped: BatchNorm's batch statistics need two."""
    n = len(target)
    order = rng.permutation(n)
    losses = []
    for i in _bar((n + batch_size - 1) // batch_size, desc):
        idx = order[i * batch_size : (i + 1) * batch_size]
        if len(idx) < 2:
            continue
        x = km.model_args(student, {k_: v[idx] for k_, v in train.items()})
        losses.append(float(step(x, target[idx])))
    return float(np.mean(losses)) if losses else float("nan")


def apply(model: Any, p: FineTune, data: CompressData) -> tuple[Any, list[dict], list[str]]:
    notes: list[str] = []
    if p.mode == "callback":
        out = p.callback(km.copy_model(model), data)
        if out is None or not km.owns(out):
            raise UsageError("the fine-tune callback must return the (trained) Keras model")
        name, _, after = metric(out, data)
        if after is not None:
            notes.append(f"after the callback: {name} {after:.4f}")
        return km.functional(out), [], notes
    if data.train is None:
        raise DataError(f"fine-tune mode '{p.mode}' needs training data (data=...)")
    if p.mode == "labels" and data.train_labels is None:
        raise DataError("fine-tune mode 'labels' needs training labels (labels=...)")
    if p.mode == "distill" and data.original is None:
        raise UsageError("fine-tune mode 'distill' needs the original model as the teacher")
    student = km.copy_model(model)
    if len(student.outputs) > 1:
        notes.append("the model has several outputs: fine-tuning trains the first one only")
    ref = data.original if data.original is not None else model
    step, train, target = trainer(student, ref, data, p.mode, p.lr, p.temperature)
    name, goal, start = metric(model, data)
    # the best state seen (the input counts as epoch 0): an epoch that makes the metric worse,
    # which a deep chain of low-rank factors can do at the first epochs, is not handed on
    best_value, best_epoch, best_weights = start, 0, student.get_weights()
    rng = np.random.default_rng(0)
    value = None
    for epoch in range(1, p.epochs + 1):
        loss = run_epoch(
            step, student, train, target, p.batch_size, rng, f"fine-tune epoch {epoch}/{p.epochs}"
        )
        _, _, value = metric(student, data)
        shown = f"{name} {value:.4f}" if value is not None else "no metric"
        notes.append(f"epoch {epoch}: loss {loss:.4f}, {shown}")
        if value is not None and best_value is not None and value > best_value:
            best_value, best_epoch, best_weights = value, epoch, student.get_weights()
        if value is not None and goal is not None and goal - value <= p.tolerance:
            if epoch < p.epochs:
                notes.append(f"stopped early: within {p.tolerance} of the original's {goal:.4f}")
            break
    if value is not None and best_value is not None and value < best_value:
        student.set_weights(best_weights)
        kept = f"epoch {best_epoch}'s" if best_epoch else "the un-tuned"
        notes.append(f"kept {kept} weights: {name} {best_value:.4f} beats the last epoch's")
    return student, [], notes
