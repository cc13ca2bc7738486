"""Issue 13's must-show: a 50 %-pruned digits CNN distilled from its teacher without labels,
against the same pruned student trained on hard labels alone for the same number of steps.

Teacher: the bundled digits CNN (``edgekit.samples``). Student: ``Prune(0.5)`` of it. Both
runs see the digits train split; a fifth of it is carved off as the validation split (the
passes keep their best epoch by it); the held-out test split is only measured, at the end.

    .venv/bin/python tools/distill_pruned.py [--framework torch keras] [--epochs 10]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from edgekit import samples
from edgekit.compress.api import compress
from edgekit.compress.passes import Distill, Prune


def _splits(layout: str) -> tuple[np.ndarray, ...]:
    x_train, y_train, x_test, y_test = samples.split(seed=0)
    order = np.random.default_rng(1).permutation(len(x_train))
    val, train = order[: len(order) // 5], order[len(order) // 5 :]
    to = lambda a: samples.to_input(a, layout=layout)  # noqa: E731
    return (
        to(x_train[train]),
        y_train[train],
        to(x_train[val]),
        y_train[val],
        to(x_test),
        y_test,
    )


def run(framework: str, epochs: int, temperature: float, lr: float) -> list[tuple[Any, ...]]:
    if framework == "torch":
        import torch

        from edgekit.compress import torch_model as fw

        teacher = samples.train_torch_cnn(width=16)
        layout = "NCHW"
    else:
        from edgekit.compress import keras_model as fw

        teacher = samples.train_keras_cnn(width=16)
        layout = "NHWC"
    x, y, xv, _yv, xt, yt = _splits(layout)
    example = (torch.from_numpy(x[:1]),) if framework == "torch" else None
    t_pred = np.argmax(fw.run(fw.as_module(teacher, example), {"x": xt})[0], -1)
    rows = [(framework, "teacher", 0, 1.0, float(np.mean(t_pred == yt)))]
    steps = epochs * -(-len(x) // 64)
    for method, p, labels in (
        ("distill, no labels", Distill(temperature=temperature, epochs=epochs, lr=lr), None),
        ("hard labels only", Distill(alpha=1.0, epochs=epochs, lr=lr), y),
    ):
        result = compress(
            teacher,
            [Prune(0.5), p],
            data=x,
            labels=labels,
            eval_data=xv,
            eval_labels=None,
            example_inputs=example,
        )
        pred = np.argmax(fw.run(result.model, {"x": xt})[0], -1)
        rows.append(
            (framework, method, steps, float(np.mean(pred == t_pred)), float(np.mean(pred == yt)))
        )
        print(f"  {framework} {method}: " + "; ".join(result.reports[1].notes), file=sys.stderr)
    params = result.reports[0]
    print(f"  {framework} student params {params.params_before} -> {params.params_after}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", nargs="+", default=["torch", "keras"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    print("command: " + " ".join([sys.executable, *sys.argv]))
    rows = [("framework", "method", "steps", "agreement w/ teacher (test)", "accuracy (test)")]
    for fw in args.framework:
        for r in run(fw, args.epochs, args.temperature, args.lr):
            rows.append((r[0], r[1], str(r[2]), f"{r[3]:.4f}", f"{r[4]:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
