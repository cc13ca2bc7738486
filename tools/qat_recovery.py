"""Does QAT recover what post-training int8 loses? FP32 / PTQ INT8 / QAT INT8 test accuracy on
each backend, for PyTorch and for Keras.

The models are :func:`edgekit.samples.train_torch_unbalanced_cnn` and
:func:`edgekit.samples.train_keras_unbalanced_cnn`: the digits CNN (~1.1M parameters) with its
first conv's output channels rescaled over ``--decades`` decades and the second conv's inputs
by the inverse, the same function in float (cross-layer range imbalance, Nagel et al. 2019; see
the samples' comment). PTQ is ``edgekit export --precision int8`` on the float model
(calibrated on 100 training digits); QAT is ``edgekit compress --qat`` (labels, ``--epochs``
epochs at ``--lr``) then ``edgekit export --precision as-trained`` (no recalibration). Accuracy
is on the 359 held-out test digits, each artifact run through its edgekit session.

A backend passes when QAT recovers at least half of a PTQ loss of 2 points or more; where PTQ
loses less than 2 points, QAT must not be more than 2 points worse than PTQ.

Run: ``python tools/qat_recovery.py [--framework torch keras] [--epochs N] [--lr LR]
[--decades D] [-o DIR]``; it exits 1 when a backend fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKENDS = ("onnxruntime", "openvino", "tflite")


def _accuracy(backend: str, artifact: Path, x: np.ndarray, y: np.ndarray) -> float:
    from edgekit.backends import get_backend

    session = get_backend(backend).open_session(artifact)
    name = session.inputs[0].name
    pred = [int(np.argmax(session.run({name: s[None]})[0])) for s in x]
    return float(np.mean(np.asarray(pred) == y))


def _source(framework: str, decades: float, out: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    """The unbalanced model saved in its framework's format, and its float logits on ``x``
    (computed in the framework: the reference every row starts from)."""
    from edgekit import samples

    if framework == "torch":
        import torch

        model = samples.train_torch_unbalanced_cnn(decades)
        path = out / "unbalanced.pt2"
        example = torch.zeros(1, 1, samples.SIZE, samples.SIZE)
        torch.export.save(torch.export.export(model, (example,)), str(path))
        with torch.no_grad():
            return path, model(torch.from_numpy(x)).numpy()
    model = samples.train_keras_unbalanced_cnn(decades)
    path = out / "unbalanced.keras"
    model.save(path)
    return path, model.predict(x, verbose=0)


def run(framework: str, args: argparse.Namespace, out: Path) -> bool:
    from edgekit import export, samples
    from edgekit.compress.api import compress
    from edgekit.compress.passes import QAT

    out = out / framework
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    layout, input_name = ("NCHW", "input") if framework == "torch" else ("NHWC", "image")
    x_train, y_train, x_test, y_test = samples.split()
    xtr, xte = samples.to_input(x_train, layout=layout), samples.to_input(x_test, layout=layout)
    src, logits = _source(framework, args.decades, out, xte)
    fp32 = samples.accuracy(logits, y_test)
    qat = compress(
        str(src),
        [QAT(epochs=args.epochs, mode="labels", lr=args.lr)],
        data=xtr,
        labels=y_train,
        output_dir=out / "qat",
    )
    rows = []
    for backend in BACKENDS:
        ptq = export(
            str(src),
            backend,
            "int8",
            output_dir=out / f"ptq-{backend}",
            calibration=[{input_name: xtr[i : i + 1]} for i in range(100)],
        )
        qa = export(str(qat.path), backend, "as-trained", output_dir=out / f"qat-{backend}")
        rows.append(
            (
                backend,
                _accuracy(backend, ptq.artifact, xte, y_test),
                _accuracy(backend, qa.artifact, xte, y_test),
            )
        )
    print(
        f"\n{framework}: edgekit.samples.train_{framework}_unbalanced_cnn({args.decades:g} "
        f"decades); {len(y_test)} test digits; QAT {args.epochs} epoch(s), labels, lr "
        f"{args.lr:g}"
    )
    print(
        f"{'backend':<12} {'FP32':>7} {'PTQ int8':>9} {'QAT int8':>9} {'loss':>7} "
        f"{'recovered':>10}  verdict"
    )
    ok_all = True
    for backend, ptq_acc, qat_acc in rows:
        loss = fp32 - ptq_acc
        rec = (qat_acc - ptq_acc) / loss if loss > 0 else float("nan")
        ok = (loss < 0.02 and qat_acc >= ptq_acc - 0.02) or (loss >= 0.02 and rec >= 0.5)
        ok_all &= ok
        print(
            f"{backend:<12} {fp32:7.4f} {ptq_acc:9.4f} {qat_acc:9.4f} {loss * 100:6.2f}p "
            f"{rec:10.2f}  {'ok' if ok else 'FAILS'}"
            + ("" if loss >= 0.02 else " (PTQ loses < 2 points here)")
        )
    print(
        f"{framework}: every backend recovers at least half the PTQ loss: {ok_all} "
        f"({time.perf_counter() - t0:.0f} s; artifacts in {out})"
    )
    return ok_all


def main() -> None:
    from edgekit.samples import UNBALANCE_DECADES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--framework", nargs="+", choices=("torch", "keras"), default=["torch", "keras"]
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--decades", type=float, default=UNBALANCE_DECADES)
    ap.add_argument("-o", type=Path, default=None)
    args = ap.parse_args()
    out = args.o or Path(tempfile.mkdtemp(prefix="qat-recovery-"))
    results = [run(framework, args, out) for framework in args.framework]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
