"""Distillation: the loss against a hand computation in numpy (both frameworks), offline
distillation of a pruned student without labels, data-free synthesis on a BatchNorm model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgekit.compress.passes import Distill, from_dict, to_dict
from edgekit.errors import UsageError

S = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], np.float32)
T_ = np.array([[1.0, 0.0, -1.0], [0.5, 2.5, 0.0]], np.float32)
Y = np.array([0, 2])


def _hand(alpha: float, temp: float, labels: np.ndarray | None) -> float:
    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    pt, ps = softmax(T_ / temp), softmax(S / temp)
    kl = np.mean(np.sum(pt * np.log(pt / ps), -1)) * temp**2
    if labels is None:
        return float(kl)
    ce = -np.mean(np.log(softmax(S)[np.arange(len(labels)), labels]))
    return float(alpha * ce + (1 - alpha) * kl)


CASES = [(0.0, 1.0, None), (0.0, 4.0, None), (0.3, 2.0, Y), (1.0, 3.0, Y)]


@pytest.mark.parametrize(("alpha", "temp", "labels"), CASES)
def test_torch_loss_matches_the_hand_computation(alpha, temp, labels):
    torch = pytest.importorskip("torch")
    from edgekit.compress.torch_distill import distill_loss

    y = None if labels is None else torch.from_numpy(labels)
    got = distill_loss(torch.from_numpy(S), torch.from_numpy(T_), y, alpha=alpha, temperature=temp)
    assert float(got) == pytest.approx(_hand(alpha, temp, labels), rel=1e-5)


@pytest.mark.parametrize(("alpha", "temp", "labels"), CASES)
def test_keras_loss_matches_the_hand_computation(alpha, temp, labels):
    pytest.importorskip("keras")
    from edgekit.compress.keras_distill import distill_loss

    got = distill_loss(S, T_, labels, alpha=alpha, temperature=temp)
    assert float(got) == pytest.approx(_hand(alpha, temp, labels), rel=1e-5)


def test_pass_validation_and_sidecar_round_trip():
    with pytest.raises(UsageError, match="alpha 2"):
        Distill(alpha=2.0)
    with pytest.raises(UsageError, match="mode"):
        Distill(mode="sideways")  # type: ignore[arg-type]
    d = Distill(teacher="t.pt2", mode="online", temperature=2.0)
    assert from_dict(to_dict(d)) == d and to_dict(d)["teacher"] == "t.pt2"
    with pytest.raises(UsageError, match="in-memory"):
        from_dict(to_dict(Distill(teacher=object())))


def test_torch_pruned_student_distilled_without_labels(torch_cnn, digits):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_pruning")
    from edgekit import samples
    from edgekit.compress.api import compress
    from edgekit.compress.passes import Prune

    x_train, _, x_test, _ = digits
    x, xt = samples.to_input(x_train[:600]), samples.to_input(x_test[:200])
    result = compress(
        torch_cnn, [Prune(0.5), Distill(epochs=2)], data=x, eval_data=xt,
        example_inputs=(torch.from_numpy(x[:1]),),
    )  # fmt: skip
    prune, dist = result.reports
    assert dist.metric_name == "top1_agreement"
    assert dist.metric_after >= prune.metric_after and dist.metric_after > 0.9


def test_torch_data_free_matches_bn_statistics_and_needs_bn():
    torch = pytest.importorskip("torch")
    from edgekit.compress import torch_distill

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    x, hist = torch_distill.synthesize(net, (1, 8, 8), 32, steps=60, batch_size=32)
    assert x.shape == (32, 1, 8, 8)
    assert hist[-1] < 0.3 * hist[0]
    with pytest.raises(UsageError, match="BatchNorm"):
        torch_distill.synthesize(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), (1, 8, 8), 4)


def test_distill_cli_flags_need_a_teacher_and_a_bad_alpha_exits_2(tmp_path):
    """The distillation flags of `edgekit compress`: shaping flags without a teacher, and an
    alpha outside [0, 1], are one-line usage errors (exit 2) that write nothing."""
    import subprocess
    import sys

    model = tmp_path / "m.pt2"
    model.write_bytes(b"not read: the flags are refused first")
    env = {**os.environ, "EDGEKIT_PROGRESS": "0"}
    for args, message in (
        (["--alpha", "0.5"], "add --distill-from TEACHER"),
        (["--distill-from", str(model), "--alpha", "2"], "alpha"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "edgekit", "compress", str(model), *args, "-o", "out"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()
