"""PyTorch compress passes on real small models, each checked against an independent
reference: kept channels computed by hand from the weights, exact SVD reconstruction, N:M
counts, the ONNX Runtime export of a compressed ``.pt2``."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
pytest.importorskip("tensorly")
nn = torch.nn

import edgekit  # noqa: E402
from edgekit import samples  # noqa: E402
from edgekit.compress import torch_lowrank, torch_model, torch_prune  # noqa: E402
from edgekit.compress.api import compress  # noqa: E402
from edgekit.compress.passes import CompressData, FineTune, LowRank, Prune  # noqa: E402
from edgekit.errors import ConversionError, DataError, UsageError  # noqa: E402


def _seed() -> None:
    torch.manual_seed(0)


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = self.b(torch.relu(self.a(y))) + y
        return self.fc(torch.relu(z).mean((2, 3)))


def depthwise() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 5),
    )


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.1, 2.0)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def _x(n: int = 1, shape=(3, 8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _data(model, n: int = 64, **kw) -> CompressData:
    return CompressData(example={"x": _x()}, train={"x": _x(n, seed=1)}, original=model, **kw)


# --- structured pruning -------------------------------------------------------------------


def test_structured_magnitude_keeps_the_hand_ranked_channel_slices():
    _seed()
    model = Plain().eval()
    w1 = model.conv1.weight.detach().clone()
    b1 = model.conv1.bias.detach().clone()
    w2 = model.conv2.weight.detach().clone()
    wf = model.fc.weight.detach().clone()
    new, layers, _ = torch_model.apply(model, Prune(0.5, round_to=1), _data(model))
    # torch-pruning scores a group: the mean over its layers of each layer's per-channel
    # sum |w| — conv1's output filter and conv2's input slice for conv1's channels.
    score1 = (w1.abs().sum((1, 2, 3)) + w2.abs().sum((0, 2, 3))) / 2
    keep1 = score1.argsort(descending=True)[:4].sort().values
    score2 = (w2.abs().sum((1, 2, 3)) + wf.abs().sum(0)) / 2
    keep2 = score2.argsort(descending=True)[:3].sort().values
    assert torch.equal(new.conv1.weight, w1[keep1])
    assert torch.equal(new.conv1.bias, b1[keep1])
    assert torch.equal(new.conv2.weight, w2[keep2][:, keep1])
    assert torch.equal(new.fc.weight, wf[:, keep2])  # the classifier keeps its 4 outputs
    assert {d["layer"] for d in layers} == {"conv1", "conv2", "fc"}
    assert model.conv1.weight.shape[0] == 8  # the input model is not modified


def test_residual_model_pruned_half_runs_and_shrinks():
    _seed()
    model = Residual().eval()
    data = _data(model)
    before = torch_model.count(model, data.example)
    new, _, _ = torch_model.apply(model, Prune(0.5, criterion="taylor", round_to=1), data)
    after = torch_model.count(new, data.example)
    # The skip add ties stem and b: both keep the same channels.
    assert new.stem.out_channels == new.b.out_channels == 8
    assert new.a.out_channels == 8 and new.fc.in_features == 8 and new.fc.out_features == 5
    assert after[0] < before[0] / 2 and after[1] < before[1] / 2
    out = torch_model.run(new, {"x": _x(4)})[0]
    assert out.shape == (4, 5) and np.isfinite(out).all()


def test_taylor_without_labels_has_gradients_on_the_original():
    model = Residual().eval()
    torch_prune.accumulate_gradients(model, _data(model), "taylor")
    assert float(model.stem.weight.grad.abs().sum()) > 0  # not the zero gradient of KL(p||p)


def test_depthwise_bn_model_pruned_half_by_bn_scale():
    _seed()
    model = depthwise().eval()
    _randomize_bn(model)
    data = _data(model)
    gamma = model[1].weight.detach().abs() + model[4].weight.detach().abs()
    new, _, notes = torch_model.apply(model, Prune(0.5, criterion="importance"), data)
    assert new[0].out_channels == 8 and new[3].groups == new[3].in_channels == 8
    assert new[6].in_channels == 8 and new[6].out_channels == 16
    assert new[9].out_features == 5
    # Conv -> BN -> depthwise -> BN is one group: kept channels are the largest mean |gamma|.
    keep = gamma.argsort(descending=True)[:8].sort().values
    assert torch.equal(new[1].weight, model[1].weight[keep])
    out = torch_model.run(new, {"x": _x(3)})[0]
    assert out.shape == (3, 5) and np.isfinite(out).all()
    assert any("BatchNorm" in n for n in notes)


def test_ignore_and_per_layer_ratio():
    model = Residual().eval()
    new, _, _ = torch_model.apply(
        model, Prune(0.5, ignore=("^a$",), per_layer={"stem": 0.25}, round_to=1), _data(model)
    )
    assert new.a.out_channels == 16
    assert new.stem.out_channels == 12


def test_gradient_criterion_needs_data():
    model = Plain().eval()
    with pytest.raises(DataError, match="needs data"):
        torch_model.apply(
            model, Prune(0.5, criterion="gradient"), CompressData(example={"x": _x()})
        )


# --- unstructured -----------------------------------------------------------------------------


def test_unstructured_2_of_4_zeros_each_group_and_bakes_them():
    _seed()
    model = Residual().eval()
    new, _layers, notes = torch_model.apply(
        model, Prune(0.5, structured=False, n_m=(2, 4)), _data(model)
    )
    for name in ("a", "b"):
        w = getattr(new, name).weight.detach()
        groups = w.reshape(w.shape[0], -1).reshape(w.shape[0], -1, 4)
        assert ((groups == 0).sum(-1) == 2).all()
        # The two kept are the two largest |w| of each group of the original.
        orig = getattr(model, name).weight.detach().reshape(w.shape[0], -1, 4).abs()
        kept = groups != 0
        assert (
            orig[kept].reshape(*orig.shape[:2], 2).min(-1).values
            >= orig[~kept].reshape(*orig.shape[:2], 2).max(-1).values
        ).all()
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in new.modules())
    assert set(new.state_dict()) == set(model.state_dict())
    assert (new.fc.weight != 0).all()  # the classifier is left dense
    assert any("no faster" in n for n in notes)


def test_unstructured_global_magnitude_zeroes_exactly_the_smallest():
    model = Residual().eval()
    new, _, _ = torch_model.apply(model, Prune(0.3, structured=False, scope="global"), _data(model))
    names = ["stem", "a", "b"]
    old = torch.cat([getattr(model, n).weight.detach().flatten() for n in names])
    got = torch.cat([getattr(new, n).weight.detach().flatten() for n in names])
    k = int(0.3 * old.numel())
    assert int((got == 0).sum()) == k
    assert float(old.abs()[got == 0].max()) <= float(old.abs()[got != 0].min())


# --- low-rank --------------------------------------------------------------------------------


def _mlp(d: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)).eval()


def test_svd_full_rank_is_exact_and_error_falls_with_rank():
    _seed()
    model = _mlp()
    x = {"x": np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)}
    data = CompressData(example={"x": x["x"][:1]}, original=model)
    want = torch_model.run(model, x)[0]
    full = torch_lowrank.svd_factor(model[0], 16)
    with torch.no_grad():
        inp = torch.from_numpy(x["x"])
        assert torch.allclose(full(inp), model[0](inp), atol=1e-5)
    errors = []
    for rank in (2, 4, 8, 12):
        new, layers, _ = torch_model.apply(model, LowRank("svd", rank=rank), data)
        assert [d["after"]["rank"] for d in layers] == [rank, rank]
        errors.append(float(np.abs(torch_model.run(new, x)[0] - want).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 2
    # Full rank is no smaller: nothing is replaced.
    same, layers, _notes = torch_model.apply(model, LowRank("svd", rank=16), data)
    assert layers == [] and isinstance(same[0], nn.Linear)


def test_svd_energy_rank_matches_singular_values():
    model = _mlp()
    s = torch.linalg.svdvals(model[0].weight.detach().double())
    share = (s**2).cumsum(0) / (s**2).sum()
    want = int((share < 0.6).sum()) + 1
    _new, layers, _ = torch_model.apply(
        model,
        LowRank("svd", energy=0.6),
        CompressData(example={"x": np.zeros((1, 16), np.float32)}),
    )
    assert layers[0]["layer"] == "0" and layers[0]["after"]["rank"] == want


def _conv(c_in=8, c_out=12, k=3, **kw) -> nn.Module:
    _seed()
    return nn.Conv2d(c_in, c_out, k, **kw).eval()


@pytest.mark.parametrize("kw", [{"padding": 1}, {"stride": 2, "padding": 2, "dilation": 2}])
def test_tucker_full_rank_reproduces_the_conv(kw):
    conv = _conv(**kw)
    x = torch.randn(2, 8, 9, 9)
    full = torch_lowrank.tucker_factor(conv, 12, 8)
    with torch.no_grad():
        assert torch.allclose(full(x), conv(x), atol=1e-4)
        low = torch_lowrank.tucker_factor(conv, 4, 4)(x)
    assert torch.isfinite(low).all()


@pytest.mark.parametrize("kw", [{"padding": 1}, {"stride": 2, "padding": (1, 0)}])
def test_cp_high_rank_approximates_the_conv(kw):
    conv = _conv(c_in=4, c_out=6, **kw)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        want = conv(x)
        errs = []
        for rank in (2, 40):
            got = torch_lowrank.cp_factor(conv, rank, 1e-6)(x)
            assert torch.isfinite(got).all()
            errs.append(float((got - want).norm() / want.norm()))
    assert errs[1] < 0.05 and errs[1] < errs[0]


def test_cp_nan_names_the_layer():
    conv = _conv()
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConversionError, match="layer7"):
        torch_lowrank.cp_factor(conv, 4, 1e-3, "layer7")


def test_lowrank_skips_grouped_convs_and_only_shrinks():
    model = depthwise().eval()
    new, layers, notes = torch_model.apply(
        model, LowRank("tucker", param_budget=0.3), CompressData(example={"x": _x()})
    )
    assert "3" not in {d["layer"] for d in layers}
    assert any("grouped" in n and "3" in n for n in notes)
    for d in layers:
        assert d["after"]["params"] < d["before"]["params"]
    assert np.isfinite(torch_model.run(new, {"x": _x(2)})[0]).all()


# --- .pt2 and the driver ---------------------------------------------------------------------


def _bn_pt2(tmp_path: Path) -> Path:
    _seed()
    model = depthwise().eval()
    _randomize_bn(model)
    ep = torch.export.export(model, (torch.from_numpy(_x()),))
    path = tmp_path / "dw.pt2"
    torch.export.save(ep, path)
    return path


def test_pt2_modularize_prune_save_and_export(tmp_path):
    src = _bn_pt2(tmp_path)
    loaded = torch_model.load(src)
    kinds = {type(m).__name__ for m in loaded.modules()}
    assert {"Conv2d", "BatchNorm2d", "Linear"} <= kinds
    ep = torch.export.load(src)
    x = torch.from_numpy(_x(1, seed=3))
    with torch.no_grad():
        assert torch.allclose(loaded(x), ep.module()(x), atol=1e-6)
    result = compress(
        src, [Prune(0.5, criterion="importance")], output_dir=tmp_path / "out", name="small"
    )
    assert result.path == tmp_path / "out" / "small.pt2" and result.path.is_file()
    sidecar = json.loads((tmp_path / "out" / "small.compress.json").read_text())
    assert sidecar["passes"][0]["kind"] == "prune" and sidecar["source_sha256"]
    r = result.reports[0]
    assert r.params_after < r.params_before and r.macs_after < r.macs_before
    assert r.size_after < r.size_before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "small.compress.json",
        "small.pt2",
    ]
    report = edgekit.export(
        result.path, target="onnxruntime", precision="fp32", output_dir=tmp_path / "onnx"
    )
    assert report.artifact.is_file() and report.agreement.top1_agreement == 1.0


def test_unstructured_zip_size_drops(tmp_path):
    model = Residual().eval()
    result = compress(
        model,
        [Prune(0.75, structured=False)],
        example_inputs=(torch.from_numpy(_x()),),
        data=_x(20),
    )
    r = result.reports[0]
    assert r.params_after == r.params_before and abs(r.size_after - r.size_before) < 4096
    assert r.zip_after < r.zip_before * 0.8
    assert r.metric_name == "top1_agreement" and r.metric_before == 1.0
    assert result.path is None


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UsageError, match="between 0 and 1"):
        Prune(1.5)
    with pytest.raises(UsageError, match="example_inputs"):
        compress(Residual(), [Prune(0.5)])
    with pytest.raises(UsageError, match="structured"):
        compress(
            Residual(),
            [Prune(0.5, structured=False, criterion="importance")],
            example_inputs=(torch.from_numpy(_x()),),
        )
    (tmp_path / "m.pth").write_bytes(b"x")
    with pytest.raises(UsageError, match="pt2"):
        compress(tmp_path / "m.pth", [Prune(0.5)])


def test_digits_cnn_prune_then_finetune_recovers(tmp_path, torch_cnn, digits):
    """The bundled digits CNN (conftest's, trained on real digits): half the channels out,
    labelled fine-tuning, held-out accuracy within a few points of the original's."""
    model = torch_cnn
    x_train, y_train, x_test, y_test = digits
    x, xt = samples.to_input(x_train[:800]), samples.to_input(x_test)
    original = samples.accuracy(torch_model.run(model, {"input": xt})[0], y_test)
    result = compress(
        model,
        [Prune(0.5, criterion="taylor"), FineTune(epochs=2, mode="labels")],
        data=x,
        labels=y_train[:800],
        eval_data=xt,
        eval_labels=y_test,
        example_inputs=(torch.from_numpy(x[:1]),),
        output_dir=tmp_path / "out",
    )
    prune, tune = result.reports
    assert prune.metric_before == pytest.approx(original)
    assert prune.params_after < prune.params_before / 3
    assert tune.metric_after >= prune.metric_after
    assert tune.metric_after > original - 0.05
    assert zipfile.is_zipfile(result.path)


def test_distill_needs_no_labels_and_callback_is_called():
    _seed()
    model = Residual().eval()
    x = _x(48, seed=5)
    seen = []

    def tune(m, data):
        seen.append(data.train["x"].shape)
        return m

    result = compress(
        model,
        [
            Prune(0.5, round_to=1),
            FineTune(epochs=2, mode="distill", lr=1e-3, batch_size=16),
            FineTune(mode="callback", callback=tune),
        ],
        data=x,
        example_inputs=(torch.from_numpy(x[:1]),),
    )
    prune, distill, callback = result.reports
    assert distill.metric_name == "top1_agreement"
    # The best epoch is kept, so distillation never ends below where it started.
    assert distill.metric_after >= prune.metric_after
    assert seen == [(39, 3, 8, 8)]  # 48 samples, int(48 * 0.2) = 9 held out for the metric
    assert callback.params_after == prune.params_after


def test_structured_gradient_ranks_by_gradient_magnitude():
    _seed()
    model = Plain().eval()
    data = _data(model)
    probe = Plain().eval()
    probe.load_state_dict(model.state_dict())
    torch_prune.accumulate_gradients(probe, CompressData(train=data.train, original=model), "x")
    g1, g2 = probe.conv1.weight.grad, probe.conv2.weight.grad
    keep = ((g1.abs().sum((1, 2, 3)) + g2.abs().sum((0, 2, 3))) / 2).argsort(descending=True)
    new, _, _ = torch_model.apply(model, Prune(0.5, criterion="gradient", round_to=1), data)
    assert torch.equal(new.conv1.weight, model.conv1.weight[keep[:4].sort().values])


def test_global_scope_removes_the_ratio_over_all_groups():
    model = Residual().eval()
    new, _, _ = torch_model.apply(model, Prune(0.5, scope="global", round_to=1), _data(model))
    # Two groups of 16 channels each ({stem, b} tied by the skip add, and {a}): 16 removed.
    assert new.stem.out_channels + new.a.out_channels == 16
    assert new.stem.out_channels == new.b.out_channels


def test_missing_torch_pruning_names_the_extra(monkeypatch):
    import sys

    from edgekit.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # what an absent package does
    model = Plain().eval()
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgekit\[compress\]'"):
        torch_model.apply(model, Prune(0.5), _data(model))


class Reshaping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(x.shape[0], 16 * 8 * 8))


def test_pt2_literal_reshape_survives_pruning_and_batching(tmp_path):
    # torch.export writes reshape(x, [1, 1024]): pruned channels and other batch sizes
    # would break it unless modularize frees it.
    ep = torch.export.export(Reshaping().eval(), (torch.from_numpy(_x()),))
    torch.export.save(ep, tmp_path / "r.pt2")
    loaded = torch_model.load(tmp_path / "r.pt2")
    assert torch_model.fixed_batch(loaded) is None
    new, _, _ = torch_model.apply(loaded, Prune(0.5, round_to=1), _data(loaded))
    assert new.fc.in_features == 8 * 8 * 8
    torch_model.save(new, tmp_path / "small.pt2", torch_model.example(loaded))
    again = torch_model.load(tmp_path / "small.pt2")
    x = {"x": _x(5, seed=9)}
    np.testing.assert_allclose(
        torch_model.run(again, x)[0], torch_model.run(new, x)[0], rtol=1e-5, atol=1e-5
    )


def test_round_to_rounds_the_kept_count_up():
    model = Residual().eval()
    new, _, notes = torch_model.apply(model, Prune(0.6, round_to=4), _data(model))
    # 16 * 0.4 = 6.4 -> 6 kept, rounded up to 8 (torch-pruning's own round_to would keep 4).
    assert new.stem.out_channels == new.a.out_channels == new.b.out_channels == 8
    assert any("rounded up" in n for n in notes)


def test_public_api_and_an_in_memory_exported_program():
    assert "compress" in edgekit.__all__ and callable(edgekit.compress)
    _seed()
    model = Residual().eval()
    ep = torch.export.export(model, (torch.from_numpy(_x()),))
    result = edgekit.compress(ep, Prune(0.5, round_to=1), data=_x(12))
    assert result.model.stem.out_channels == 8  # modularized: real layers, pruned
    assert result.reports[0].metric_name == "top1_agreement"
    assert result.sidecar["framework"] == "torch" and result.sidecar["source"] is None


def test_importance_without_bn_ranks_by_mean_activation():
    _seed()
    model = Plain().eval()
    data = _data(model)
    with torch.no_grad():
        act = torch.relu(model.conv1(torch.from_numpy(data.train["x"])))
    keep = act.abs().mean((0, 2, 3)).argsort(descending=True)[:4].sort().values
    new, _, notes = torch_model.apply(model, Prune(0.5, criterion="importance", round_to=1), data)
    assert torch.equal(new.conv1.weight, model.conv1.weight[keep])
    assert any("activation" in n for n in notes)
