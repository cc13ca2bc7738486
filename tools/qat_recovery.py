"""Does QAT recover what post-training int8 loses? FP32 / PTQ INT8 / QAT INT8 test accuracy on
each backend for one PyTorch model.

The model is :func:`edgekit.samples.train_torch_sensitive_cnn` (digits 32x32 with a per-pixel
standardizing Mul that per-tensor int8 hurts; see its docstring). PTQ is ``edgekit export
--precision int8`` on the float ``.pt2`` (calibrated on training digits); QAT is ``edgekit
compress --qat`` (labels) then ``edgekit export --precision as-trained``. Accuracy is on the
held-out digits test split, each artifact run through its edgekit session.

Run: ``python tools/qat_recovery.py [--epochs N] [-o DIR]``. Keras QAT is not wired yet.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _accuracy(backend: str, artifact: Path, x: np.ndarray, y: np.ndarray) -> float:
    from edgekit.backends import get_backend

    session = get_backend(backend).open_session(artifact)
    name = session.inputs[0].name
    pred = [int(np.argmax(session.run({name: s[None]})[0])) for s in x]
    return float(np.mean(np.asarray(pred) == y))


def main() -> None:
    import torch

    from edgekit import export
    from edgekit.compress.api import compress
    from edgekit.compress.passes import QAT
    from edgekit.samples import sample_data, train_torch_sensitive_cnn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("-o", type=Path, default=None)
    args = ap.parse_args()
    out = args.o or Path(tempfile.mkdtemp(prefix="qat-recovery-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = train_torch_sensitive_cnn()
    train, test = np.load(sample_data("train")), np.load(sample_data("test"))
    xtr, ytr = train["input"], train["labels"]
    xte, yte = test["input"], test["labels"]
    src = out / "sensitive.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(xtr[:1]),)), str(src))
    with torch.no_grad():
        fp32 = float(np.mean(model(torch.from_numpy(xte)).argmax(1).numpy() == yte))
    qat = compress(
        str(src),
        [QAT(epochs=args.epochs, mode="labels", lr=1e-4)],
        data=xtr,
        labels=ytr,
        output_dir=out / "qat",
    )
    rows = []
    for backend in ("onnxruntime", "openvino", "tflite"):
        ptq = export(
            str(src),
            backend,
            "int8",
            output_dir=out / f"ptq-{backend}",
            calibration=[{"x": xtr[i : i + 1]} for i in range(100)],
        )
        qa = export(str(qat.path), backend, "as-trained", output_dir=out / f"qat-{backend}")
        rows.append(
            (
                backend,
                _accuracy(backend, ptq.artifact, xte, yte),
                _accuracy(backend, qa.artifact, xte, yte),
            )
        )
    print(
        f"model: edgekit.samples.train_torch_sensitive_cnn; test digits: {len(yte)}; "
        f"QAT {args.epochs} epoch(s), labels"
    )
    print(
        f"{'backend':<12} {'FP32':>7} {'PTQ int8':>9} {'QAT int8':>9} {'loss':>7} "
        f"{'recovered':>10}  verdict"
    )
    ok_all = True
    for backend, ptq_acc, qat_acc in rows:
        loss = fp32 - ptq_acc
        rec = (qat_acc - ptq_acc) / loss if loss > 0 else float("nan")
        # a backend PTQ does not hurt must not be hurt by QAT either
        ok = (loss < 0.02 and qat_acc >= ptq_acc - 0.02) or (loss >= 0.02 and rec >= 0.5)
        ok_all &= ok
        print(
            f"{backend:<12} {fp32:7.4f} {ptq_acc:9.4f} {qat_acc:9.4f} {loss * 100:6.2f}p "
            f"{rec:10.2f}  {'ok' if ok else 'FAILS: QAT recovers < half the loss'}"
            + ("" if loss >= 0.02 else " (PTQ loses < 2 points here)")
        )
    print(
        f"all backends recover at least half the PTQ loss: {ok_all} "
        f"({time.perf_counter() - t0:.0f} s; artifacts in {out})"
    )


if __name__ == "__main__":
    main()
