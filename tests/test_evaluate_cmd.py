"""`edgekit evaluate` and `edgekit.evaluate`: task metrics of real artifacts against their FP32
source and labels, checked against computations that use the runtimes directly (ONNX Runtime,
OpenVINO, torch) and not edgekit's sessions or readers; every metric against a hand computation
on small hand-made arrays; and the mistakes a user can make, through the real command."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import export_digits
from PIL import Image

import edgekit
from edgekit.errors import EXIT_CODES, DataError, UsageError
from edgekit.labels import class_folders, load_labelled
from edgekit.metrics import METRICS, Score, default_metric, score
from edgekit.model import TensorSpec

N_CALIB = 64


# --- real artifacts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pt2(torch_cnn, tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("src") / "digits.pt2"
    torch.export.save(torch.export.export(torch_cnn, (torch.zeros(1, 1, 32, 32),)), str(path))
    return path


@pytest.fixture(scope="module")
def artifacts(pt2, digits, tmp_path_factory) -> dict[str, Path]:
    """fp32 and int8 ONNX Runtime artifacts and an int8 OpenVINO IR, exported from the .pt2."""
    out = tmp_path_factory.mktemp("out")
    ort = export_digits(
        pt2, "onnxruntime", ["fp32", "int8"], digits, out, "input", "NCHW", N_CALIB, 16
    )
    ov = export_digits(pt2, "openvino", "int8", digits, out, "input", "NCHW", N_CALIB, 16)
    return {"fp32": ort[0].artifact, "int8": ort[1].artifact, "ov-int8": ov.artifact}


@pytest.fixture(scope="module")
def labelled_folder(digits, tmp_path_factory) -> Path:
    """The digits test split as PNGs in one sub-folder per class, as
    tools/make_calibration_data.py writes digits (8-bit grayscale 8x8)."""
    _, _, x_test, y_test = digits
    root = tmp_path_factory.mktemp("labelled") / "digits"
    for i, (img, label) in enumerate(zip(x_test, y_test, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def _read_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pictures and labels of a class-folder tree, read with PIL alone: resized 32x32
    bilinear, scaled by 1/255 (the reader's documented defaults)."""
    xs, ys = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for png in sorted(folder.glob("*.png")):
            img = Image.open(png).convert("L").resize((32, 32), Image.Resampling.BILINEAR)
            xs.append((np.asarray(img).astype(np.float64) * (1 / 255)).astype(np.float32))
            ys.append(int(folder.name))
    return np.stack(xs)[:, None], np.array(ys)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))]
        )


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _ov_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    return np.concatenate([compiled(x[i : i + 1])[0] for i in range(len(x))])


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(np.argmax(logits, axis=-1) == labels))


def _edgekit(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "EDGEKIT_PROGRESS": "0"},
    )


def test_cli_accuracy_on_a_labelled_folder_equals_an_independent_computation(
    artifacts, labelled_folder, torch_cnn, digits
):
    paths = [artifacts["fp32"], artifacts["int8"], artifacts["ov-int8"]]
    done = _edgekit("evaluate", *map(str, paths), "--data", str(labelled_folder), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)

    x, y = _read_folder(labelled_folder)
    assert len(x) == len(digits[3]) == doc["samples"]
    assert doc["metric"] == "top1" and doc["against"] == "labels"
    assert doc["class_names"] == [str(c) for c in range(10)]
    source_acc = _accuracy(_torch_logits(torch_cnn, x), y)
    expected = [
        _accuracy(_ort_logits(artifacts["fp32"], x), y),
        _accuracy(_ort_logits(artifacts["int8"], x), y),
        _accuracy(_ov_logits(artifacts["ov-int8"], x), y),
    ]
    assert doc["reference"]["score"]["value"] == pytest.approx(source_acc, abs=1e-9)
    assert source_acc > 90  # a trained model: the figures mean something
    for row, want, path in zip(doc["results"], expected, paths, strict=True):
        assert row["artifact"] == str(path)
        assert row["score"]["value"] == pytest.approx(want, abs=1e-9)
        assert row["drop"] == pytest.approx(source_acc - want, abs=1e-9)
        assert row["agreement"]["samples"] == len(x)
        assert row["agreement"]["mean_cosine"] > 0.99
        assert row["size_bytes"] > 0
    assert [r["precision"] for r in doc["results"]] == ["fp32", "int8", "int8"]
    assert [r["backend"] for r in doc["results"]] == ["onnxruntime", "onnxruntime", "openvino"]
    # The exact FP32 artifact scores as its source does.
    assert doc["results"][0]["drop"] == 0.0


def test_npz_with_labels_keeps_labels_on_their_sampled_inputs(artifacts, digits, tmp_path):
    from edgekit import samples

    _, _, x_test, y_test = digits
    x = samples.to_input(x_test[:120])
    path = tmp_path / "eval.npz"
    np.savez(path, input=x, labels=y_test[:120])
    report = edgekit.evaluate(artifacts["int8"], path, limit=50, seed=3)
    chosen = sorted(np.random.default_rng(3).choice(120, 50, replace=False).tolist())
    want = _accuracy(_ort_logits(artifacts["int8"], x[chosen]), y_test[:120][chosen])
    assert report.samples == 50 and report.against == "labels"
    assert report.rows[0].score.value == pytest.approx(want, abs=1e-9)
    assert "int8" in report.table() and "(FP32 source)" in report.table()


def test_iterable_of_pairs_through_the_api(artifacts, torch_cnn, digits, pt2, tmp_path):
    from edgekit import samples

    _, _, x_test, y_test = digits
    x = samples.to_input(x_test[:40])
    pairs = [({"input": x[i : i + 1]}, int(y_test[i])) for i in range(len(x))]
    # Without a sidecar the source is given explicitly.
    bare = tmp_path / "copy.onnx"
    shutil.copy(artifacts["fp32"], bare)
    report = edgekit.evaluate([bare], pairs, metric="topk", k=2, source=pt2)
    logits = _torch_logits(torch_cnn, x)
    top2 = np.argsort(-logits, axis=-1, kind="stable")[:, :2]
    want = 100.0 * float(np.mean(np.any(top2 == y_test[:40, None], axis=1)))
    assert report.reference.score.value == pytest.approx(want, abs=1e-9)
    assert report.reference.score.details["k"] == 2
    assert report.rows[0].precision == "unknown"
    json.dumps(report.to_json(), allow_nan=False)
    # The same pairs through the reader, with labels in the order given.
    feeds, labels = load_labelled(pairs, [TensorSpec("input", "float32", (1, 1, 32, 32))])
    assert len(feeds) == 40 and labels.tolist() == y_test[:40].tolist()


def test_a_labelled_folder_with_limit_keeps_each_label_with_its_image(tmp_path):
    # Every class's images have their own constant value, so a feed names its class.
    for cls, value in (("ant", 10), ("bee", 120), ("cat", 250)):
        (tmp_path / cls).mkdir()
        for i in range(7):
            Image.fromarray(np.full((4, 4), value, np.uint8)).save(tmp_path / cls / f"{i}.png")
    spec = TensorSpec("x", "float32", (1, 1, 4, 4))
    feeds, labels = load_labelled(tmp_path, [spec], limit=9, seed=5)
    assert class_folders(tmp_path) == ["ant", "bee", "cat"]
    by_value = {10: 0, 120: 1, 250: 2}
    got = [by_value[round(float(f["x"].mean()) * 255)] for f in feeds]
    assert len(feeds) == 9 and labels.tolist() == got and len(set(got)) > 1
    # A flat folder has no labels; images beside class folders are refused.
    flat = tmp_path / "ant"
    assert load_labelled(flat, [spec])[1] is None
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "stray.png")
    with pytest.raises(DataError, match="both at its top level"):
        load_labelled(tmp_path, [spec])


def test_different_sources_in_one_call_are_refused(artifacts, tmp_path):
    other = tmp_path / "other.onnx"
    shutil.copy(artifacts["fp32"], other)
    doc = json.loads(Path(str(artifacts["fp32"]) + ".edgekit.json").read_text())
    doc["source"]["sha256"] = "0" * 64
    doc["source"]["path"] = "elsewhere.pt2"
    doc["artifact"]["files"] = ["other.onnx"]
    doc["artifact"]["sha256"] = {}
    Path(str(other) + ".edgekit.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="different source models"):
        edgekit.evaluate([artifacts["fp32"], other], "random")


# --- the metrics against hand computations -------------------------------------------------


def _samples(*arrays: list[list[float]] | np.ndarray) -> list[list[np.ndarray]]:
    return [[np.asarray(a, np.float32)] for a in arrays]


REF = _samples([[0.1, 0.9, 0.0]], [[0.8, 0.1, 0.1]], [[0.2, 0.3, 0.5]])
CAND = _samples([[0.1, 0.2, 0.7]], [[0.8, 0.1, 0.1]], [[0.1, 0.6, 0.3]])


def test_top1_topk_and_agreement_by_hand():
    labels = np.array([1, 2, 2])
    # argmax: cand 2, 0, 1; ref 1, 0, 2
    assert score("top1", CAND, REF, labels).value == pytest.approx(0.0)
    assert score("top1", REF, REF, labels).value == pytest.approx(200 / 3)
    assert score("top1", CAND, REF).value == pytest.approx(100 / 3)  # vs ref arg-max
    assert score("agreement", CAND, REF, labels).value == pytest.approx(100 / 3)
    # top-2 of cand: {2, 1}, {0, 1} (tie 0.1/0.1 to the lower index), {1, 2}
    top2 = score("topk", CAND, REF, labels, k=2)
    assert top2.value == pytest.approx(200 / 3) and top2.details["k"] == 2
    # reference top-1 (1, 0, 2) within candidate top-2: yes, yes, yes
    assert score("topk", CAND, REF, k=2).value == pytest.approx(100.0)
    assert top2.unit == "%" and top2.samples == 3


def test_iou_by_hand():
    # Two classes over a 2x3 map: the class axis is -3 (channels first).
    ref = np.zeros((1, 2, 2, 3), np.float32)
    ref[0, 1, 0, :] = 1.0  # class 1 on the top row
    cand = np.zeros((1, 2, 2, 3), np.float32)
    cand[0, 1, 0, :2] = 1.0
    cand[0, 1, 1, 0] = 1.0  # class 1 at (0,0), (0,1), (1,0)
    # class 1: I = 2, U = 4; class 0: ref (1,*) = 3 pixels, cand {(0,2), (1,1), (1,2)}: I 2, U 4
    got = score("iou", [[cand]], [[ref]])
    assert got.value == pytest.approx(50.0)
    assert got.details["per_class"] == {"0": pytest.approx(50.0), "1": pytest.approx(50.0)}
    # A single-channel sigmoid map is thresholded at 0.5; labels are a mask.
    prob = np.array([[[[0.9, 0.2], [0.7, 0.4]]]], np.float32)
    mask = np.array([[1, 1], [0, 0]])
    # pred fg {(0,0), (1,0)}; fg: I 1, U 3; bg: pred {(0,1), (1,1)}, truth {(1,0), (1,1)}: I 1, U 3
    assert score("iou", [[prob]], [[prob]], mask[None]).value == pytest.approx(100 / 3)
    with pytest.raises(DataError, match="iou needs an output of maps"):
        score("iou", CAND, REF)


def test_seq_by_hand():
    ref = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]][None]  # (1, 4 steps, 3 classes)
    cand = np.eye(3, dtype=np.float32)[[0, 1, 0, 1]][None]
    other = ref.copy()
    got = score("seq", [[cand], [other]], [[ref], [ref]])
    assert got.value == pytest.approx(700 / 8)  # 7 of 8 steps
    assert got.details["exact_sequence"] == pytest.approx(50.0)  # 1 of 2 sequences
    # Time-major (steps, 1, classes), labels as class ids per step.
    labels = np.array([[0, 1, 0, 0]])
    tm = score("seq", [[cand.transpose(1, 0, 2)]], [[ref.transpose(1, 0, 2)]], labels)
    assert tm.value == pytest.approx(75.0) and tm.details["exact_sequence"] == 0.0
    with pytest.raises(DataError, match="seq needs an output of sequences"):
        score("seq", CAND, REF)


def test_cosine_snr_psnr_mean_error_by_hand():
    r = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    c = np.array([1.0, 2.0, 3.0, 5.0], np.float32)
    ref, cand = [[r]], [[c]]
    cos = float(r @ c / (np.linalg.norm(r) * np.linalg.norm(c)))
    assert score("cosine", cand, ref).value == pytest.approx(100 * cos)
    assert score("snr", cand, ref).value == pytest.approx(10 * math.log10(30 / 1))
    assert score("psnr", cand, ref).value == pytest.approx(10 * math.log10(3**2 / 0.25))
    err = score("mean-error", cand, ref)
    assert err.value == pytest.approx(-0.25) and err.details["mean_abs_error"] == 0.25
    # drop = baseline - candidate, in points; identical outputs have inf SNR, JSON null.
    same = score("snr", ref, ref)
    assert same.value == math.inf and same.to_json()["value"] is None
    assert score("mean-error", ref, ref).value - err.value == pytest.approx(0.25)
    # With labels: targets of the output's shape.
    target = np.array([[1.0, 2.0, 3.0, 3.0]])
    assert score("mean-error", cand, ref, target).value == pytest.approx(-0.5)


def test_callable_unknown_and_misfit_metrics():
    def worst_margin(candidate, reference, labels):
        return 42.0

    got = score(worst_margin, CAND, REF)
    assert isinstance(got, Score) and got.metric == "worst_margin" and got.value == 42.0
    with pytest.raises(UsageError, match="unknown metric 'f1'; choose one of top1, topk"):
        score("f1", CAND, REF)
    with pytest.raises(DataError, match="2 labels for 3 samples"):
        score("top1", CAND, REF, np.array([1, 2]))
    with pytest.raises(DataError, match="top-5 needs at least 5 classes"):
        score("topk", CAND, REF)
    assert default_metric(REF, None) == "top1"
    assert default_metric([[np.zeros((1, 5, 3), np.float32)]], None) == "seq"
    assert default_metric([[np.zeros((1, 3, 8, 8), np.float32)]], None) == "cosine"


# --- the command's mistakes ----------------------------------------------------------------


def _one_line_error(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code and code in EXIT_CODES, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), done.stderr
    assert text in lines[0] and "Traceback" not in done.stderr


def test_unknown_metric_exits_2(artifacts, labelled_folder):
    done = _edgekit(
        "evaluate", str(artifacts["fp32"]), "--data", str(labelled_folder), "--metric", "f1"
    )
    _one_line_error(done, 2, "unknown --metric 'f1'; choose auto or one of top1")


def test_missing_sidecar_without_source_exits_2(artifacts, labelled_folder, tmp_path):
    bare = tmp_path / "bare.onnx"
    shutil.copy(artifacts["int8"], bare)
    done = _edgekit("evaluate", str(bare), "--data", str(labelled_folder))
    _one_line_error(done, 2, "pass --source MODEL")


def test_labels_count_mismatch_exits_5(artifacts, digits, tmp_path):
    from edgekit import samples

    path = tmp_path / "bad.npz"
    np.savez(path, input=samples.to_input(digits[2][:10]), labels=digits[3][:9])
    done = _edgekit("evaluate", str(artifacts["fp32"]), "--data", str(path))
    _one_line_error(done, 5, "9 labels for 10 samples")


def test_help_lists_every_metric_and_imports_no_framework():
    code = (
        "import sys\nfrom edgekit.cli import main\n"
        "try:\n    main(['evaluate', '--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'tensorflow', 'openvino', 'onnxruntime', 'numpy') "
        "if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    flat = " ".join(out.stdout.split())
    assert all(m in flat for m in METRICS)


def test_edgekit_evaluate_is_the_function_after_an_export_module_loads():
    import edgekit.exporter

    assert edgekit.evaluate.__module__ == "edgekit.evaluation"
    assert "evaluate" in edgekit.__all__ and edgekit.EvaluationReport and edgekit.Score
