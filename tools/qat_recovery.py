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

``--keras-model mobilenetv2`` runs the Keras rows on Keras' own MobileNetV2 architecture
(alpha 0.35, 32x32x3, trained on the digits here: no weights are downloaded) instead, the check
that Keras QAT takes a real mobile network (depthwise blocks, ReLU6, residual adds, softmax).

Run: ``python tools/qat_recovery.py [--framework torch keras] [--epochs N] [--lr LR]
[--decades D] [--keras-model unbalanced|mobilenetv2] [-o DIR]``; it exits 1 when a backend
fails.
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


def _mobilenet(x_train: np.ndarray, y_train: np.ndarray) -> object:
    """Keras' MobileNetV2 (alpha 0.35, 32x32x3, built without downloaded weights) trained on
    the digits for 8 epochs: depthwise-separable blocks, ReLU6, residual adds, BatchNorm and a
    softmax head -- what a user's mobile model is made of. BatchNorm momentum 0.9 (Keras'
    0.999 would leave the moving statistics unconverged after these ~200 steps)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    return model


def _source(
    framework: str, args: argparse.Namespace, out: Path, data: tuple[np.ndarray, ...]
) -> tuple[Path, np.ndarray]:
    """The model saved in its framework's format, and its float outputs on the test inputs
    (computed in the framework: the reference every row starts from)."""
    from edgekit import samples

    xtr, ytr, xte, _ = data
    if framework == "torch":
        import torch

        model = samples.train_torch_unbalanced_cnn(args.decades)
        path = out / "unbalanced.pt2"
        example = torch.zeros(1, 1, samples.SIZE, samples.SIZE)
        torch.export.save(torch.export.export(model, (example,)), str(path))
        with torch.no_grad():
            return path, model(torch.from_numpy(xte)).numpy()
    if args.keras_model == "mobilenetv2":
        model = _mobilenet(xtr, ytr)
        path = out / "mobilenetv2.keras"
    else:
        model = samples.train_keras_unbalanced_cnn(args.decades)
        path = out / "unbalanced.keras"
    model.save(path)
    return path, model.predict(xte, verbose=0)


def _inputs(framework: str, model: str) -> tuple[np.ndarray, ...]:
    """The digits split in the model's layout: NCHW for PyTorch, NHWC for Keras, and 32x32
    with the gray channel repeated three times for MobileNetV2."""
    from edgekit import samples

    x_train, y_train, x_test, y_test = samples.split()
    if framework == "torch":
        return samples.to_input(x_train), y_train, samples.to_input(x_test), y_test
    xtr = samples.to_input(x_train, layout="NHWC")
    xte = samples.to_input(x_test, layout="NHWC")
    if model == "mobilenetv2":
        xtr, xte = np.repeat(xtr, 3, -1), np.repeat(xte, 3, -1)
    return xtr, y_train, xte, y_test


def run(framework: str, args: argparse.Namespace, out: Path) -> bool:
    from edgekit import export, samples
    from edgekit.compress.api import compress
    from edgekit.compress.passes import QAT

    out = out / framework
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = _inputs(framework, args.keras_model)
    xtr, y_train, xte, y_test = data
    src, logits = _source(framework, args, out, data)
    calib = out / "calibration.npy"  # one input: a .npy needs no input name
    np.save(calib, xtr[:100])
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
            calibration=str(calib),
        )
        qa = export(str(qat.path), backend, "as-trained", output_dir=out / f"qat-{backend}")
        rows.append(
            (
                backend,
                _accuracy(backend, ptq.artifact, xte, y_test),
                _accuracy(backend, qa.artifact, xte, y_test),
            )
        )
    what = (
        "keras.applications.MobileNetV2(alpha=0.35, 32x32x3) trained on the digits"
        if framework == "keras" and args.keras_model == "mobilenetv2"
        else f"edgekit.samples.train_{framework}_unbalanced_cnn({args.decades:g} decades)"
    )
    print(
        f"\n{framework}: {what}; {len(y_test)} test digits; QAT {args.epochs} epoch(s), "
        f"labels, lr {args.lr:g}"
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
    ap.add_argument(
        "--keras-model",
        choices=("unbalanced", "mobilenetv2"),
        default="unbalanced",
        help="the Keras model: the unbalanced digits CNN, or Keras' MobileNetV2 architecture",
    )
    ap.add_argument("-o", type=Path, default=None)
    args = ap.parse_args()
    out = args.o or Path(tempfile.mkdtemp(prefix="qat-recovery-"))
    results = [run(framework, args, out) for framework in args.framework]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
