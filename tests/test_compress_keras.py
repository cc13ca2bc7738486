"""Keras 3 compress passes on real small Keras models, checked against independent references.

Structured pruning is checked two ways: the kept kernel slices are the ones computed by hand
from L1 norms, and a pruned model computes exactly what the original computes with the removed
channels zeroed (which exercises Add, DepthwiseConv2D, BatchNorm, Concatenate and Flatten
mappings without reusing the implementation's index bookkeeping). Low-rank passes are checked
on kernels built with a known rank.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.compress import keras_model as km
from edgekit.compress.passes import CompressData, FineTune, LowRank, Prune
from edgekit.errors import ConversionError, DataError, UsageError

keras = pytest.importorskip("keras")
L = keras.layers
RNG = np.random.default_rng(0)


def _images(n: int = 32, size: int = 8, ch: int = 3) -> dict[str, np.ndarray]:
    return {"img": RNG.standard_normal((n, size, size, ch)).astype(np.float32)}


def _randomise_bn(model: keras.Model) -> None:
    """Non-trivial BatchNorm statistics, so slicing them wrongly shows in the outputs."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    RNG.uniform(0.5, 1.5, c),
                    RNG.normal(0, 0.1, c),
                    RNG.normal(0, 0.1, c),
                    RNG.uniform(0.5, 1.5, c),
                ]
            )


def _kept(original: np.ndarray, pruned: np.ndarray, axis: int = -1) -> list[int]:
    """Which original output channel each pruned channel is (matched by its weights)."""
    o = np.moveaxis(original, axis, 0).reshape(original.shape[axis], -1)
    p = np.moveaxis(pruned, axis, 0).reshape(pruned.shape[axis], -1)
    out = []
    for row in p:
        # a subset match: the channel's input axis may have been sliced too
        hits = [c for c in range(len(o)) if np.isin(row, o[c]).all()]
        assert len(hits) == 1
        out.append(hits[0])
    return out


def _zeroed(model: keras.Model, removed: dict[str, list[int]]) -> keras.Model:
    """A copy of ``model`` whose removed channels output exactly zero (relu(0) = 0, so the
    consumers see what the pruned model's consumers see)."""
    copy = km.copy_model(model)
    for name, idx in removed.items():
        layer = copy.get_layer(name)
        w = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            w[0][idx] = 0.0
            w[1][idx] = 0.0
        elif isinstance(layer, L.DepthwiseConv2D):
            w[0][..., idx, :] = 0.0
            w[1][idx] = 0.0
        elif isinstance(layer, L.SeparableConv2D):
            w[1][..., idx] = 0.0
            w[2][idx] = 0.0
        else:
            w[0][..., idx] = 0.0
            if len(w) > 1:
                w[1][idx] = 0.0
        layer.set_weights(w)
    return copy


def _removed(model: keras.Model, pruned: keras.Model, producers: list[str]) -> dict[str, list]:
    out = {}
    for name in producers:
        # a separable conv's output channels are its pointwise kernel's
        at = 1 if isinstance(model.get_layer(name), L.SeparableConv2D) else 0
        before = model.get_layer(name).get_weights()[at]
        after = pruned.get_layer(name).get_weights()[at]
        kept = _kept(before, after)
        out[name] = [c for c in range(before.shape[-1]) if c not in kept]
    return out


# --- structured pruning --------------------------------------------------------------------------


def test_conv_pruning_keeps_the_l1_largest_channels_and_slices_the_consumer() -> None:
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(4, name="head")(x))
    c1, b1 = model.get_layer("c1").get_weights()
    c2 = model.get_layer("c2").get_weights()[0]
    head = model.get_layer("head").get_weights()[0]

    pruned, changes, _ = km.apply(model, Prune(0.5, round_to=1), CompressData())

    keep1 = np.sort(np.argsort(-np.abs(c1).sum(axis=(0, 1, 2)))[:8])
    keep2 = np.sort(np.argsort(-np.abs(c2).sum(axis=(0, 1, 2)))[:4])
    k1, pb1 = pruned.get_layer("c1").get_weights()
    np.testing.assert_array_equal(k1, c1[..., keep1])
    np.testing.assert_array_equal(pb1, b1[keep1])
    np.testing.assert_array_equal(
        pruned.get_layer("c2").get_weights()[0], c2[:, :, keep1][..., keep2]
    )
    np.testing.assert_array_equal(pruned.get_layer("head").get_weights()[0], head[keep2])
    assert {c["layer"]: c["after"] for c in changes} == {"c1": {"filters": 8}, "c2": {"filters": 4}}
    # the output layer is never pruned, and the model handed in is untouched
    assert pruned.output.shape[-1] == 4
    np.testing.assert_array_equal(model.get_layer("c1").get_weights()[0], c1)
    assert model.get_layer("c1").filters == 16


def _residual() -> keras.Model:
    inp = keras.Input((8, 8, 3), name="img")
    stem = L.Conv2D(16, 3, padding="same", name="stem")(inp)
    x = L.BatchNormalization(name="bn1")(stem)
    x = L.ReLU()(x)
    y = L.Conv2D(16, 3, padding="same", name="branch")(x)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(5, name="head")(x))
    _randomise_bn(model)
    return model


def _depthwise() -> keras.Model:
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = L.Flatten()(x)
    model = keras.Model(inp, L.Dense(5, name="head")(x))
    _randomise_bn(model)
    return model


def _concat() -> keras.Model:
    inp = keras.Input((8, 8, 3), name="img")
    a = L.Conv2D(16, 3, padding="same", activation="relu", name="a")(inp)
    b = L.Conv2D(8, 1, activation="relu", name="b")(inp)
    x = L.Concatenate()([a, b])
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="mix")(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dense(32, activation="relu", name="fc")(x)
    return keras.Model(inp, L.Dense(5, name="head")(x))


def _separable() -> keras.Model:
    inp = keras.Input((8, 8, 3), name="img")
    x = L.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep1")(inp)
    x = L.SeparableConv2D(16, 3, padding="same", depth_multiplier=2, name="sep2")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.GlobalMaxPooling2D()(x)
    model = keras.Model(inp, L.Dense(5, name="head")(x))
    _randomise_bn(model)
    for name in ("sep1", "sep2"):  # non-zero biases, so a mis-sliced bias shows
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[2] = RNG.normal(0, 0.1, w[2].shape).astype(np.float32)
        layer.set_weights(w)
    return model


def _transformer_mlp() -> keras.Model:
    inp = keras.Input((6, 16), name="img")  # tokens x features; Dense acts on the last axis
    h = L.Dense(64, activation="gelu", name="up")(inp)
    h = L.Dense(16, name="down")(h)
    x = L.Add()([inp, h])
    x = L.LayerNormalization(name="ln")(x)
    x = L.Dense(32, activation="relu", name="ffn")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inp, L.Dense(5, name="head")(x))


@pytest.mark.parametrize(
    ("build", "producers", "tied"),
    [
        (_residual, ["stem", "branch"], {"bn1": "stem"}),
        (_depthwise, ["conv", "pw"], {"dw": "conv", "bn": "conv"}),
        (_concat, ["a", "b", "mix", "fc"], {}),
        (_separable, ["sep1", "sep2"], {"bn": "sep2"}),
        # "down" meets the model input at the Add: only "up" and "ffn" can shrink
        (_transformer_mlp, ["up", "ffn"], {}),
    ],
    ids=["residual", "depthwise", "concat", "separable", "mlp"],
)
def test_structured_pruning_equals_the_original_with_removed_channels_zeroed(
    build, producers, tied
) -> None:
    model = build()
    feeds = _images()
    if build is _transformer_mlp:
        feeds = {"img": RNG.standard_normal((32, 6, 16)).astype(np.float32)}
    pruned, changes, _ = km.apply(model, Prune(0.5, round_to=4), CompressData(train=feeds))

    assert {c["layer"] for c in changes} == set(producers)
    removed = _removed(model, pruned, producers)
    assert all(len(r) > 0 for r in removed.values())
    removed.update({name: removed[src] for name, src in tied.items()})
    if build is _residual:  # the two sides of the Add lose the same channels
        assert removed["stem"] == removed["branch"]
    expected = km.run(_zeroed(model, removed), feeds)[0]
    np.testing.assert_allclose(km.run(pruned, feeds)[0], expected, rtol=1e-5, atol=1e-5)
    params, macs = km.count(model, feeds)
    params2, macs2 = km.count(pruned, feeds)
    assert params2 < params and macs2 < macs


@pytest.mark.parametrize(
    "criterion", ["gradient", "taylor", "importance"], ids=lambda c: f"criterion-{c}"
)
def test_data_criteria_prune_to_a_valid_model(criterion: str) -> None:
    model = _residual()
    feeds = _images()
    data = CompressData(train=feeds, train_labels=RNG.integers(0, 5, 32), original=model)
    pruned, changes, _ = km.apply(model, Prune(0.5, criterion=criterion, round_to=4), data)
    assert changes and km.run(pruned, feeds)[0].shape == (32, 5)
    if criterion == "importance":  # a BatchNorm follows: its |gamma| ranks, no data needed
        gamma = np.abs(model.get_layer("bn1").get_weights()[0])
        kept = _kept(
            model.get_layer("stem").get_weights()[0], pruned.get_layer("stem").get_weights()[0]
        )
        assert sorted(kept) == sorted(np.argsort(-gamma)[:8])
        model = _concat()  # no BatchNorm: mean activations, which need data
    with pytest.raises(DataError, match="training data"):
        km.apply(model, Prune(0.5, criterion=criterion), CompressData())


def test_global_scope_and_per_layer_ratios() -> None:
    model = _concat()
    pruned, changes, _ = km.apply(
        model, Prune(0.5, scope="global", per_layer={"fc": 0.75}, round_to=1), CompressData()
    )
    after = {c["layer"]: c["after"] for c in changes}
    assert after["fc"] == {"units": 8}
    assert sum(pruned.get_layer(n).filters for n in ("a", "b", "mix")) < 40


def test_nothing_removed_gives_the_same_outputs() -> None:
    model, feeds = _concat(), _images()
    ref = km.run(model, feeds)[0]
    for p in (Prune(0.1, round_to=64), Prune(0.5, ignore=(".*",))):
        same, changes, notes = km.apply(model, p, CompressData())
        assert changes == [] and notes
        np.testing.assert_array_equal(km.run(same, feeds)[0], ref)
        assert same is not model


def test_sequential_model_and_unmapped_layer_left_unpruned() -> None:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(16, 3, activation="relu", name="c1"),
            L.Conv2D(16, 3, activation="relu", name="c2"),
            L.Reshape((16, 16)),
            L.Flatten(),
            L.Dense(3, name="head"),
        ]
    )
    feeds = {model.inputs[0].name: _images()["img"]}
    pruned, changes, notes = km.apply(model, Prune(0.5, round_to=1), CompressData())
    assert [c["layer"] for c in changes] == ["c1"]  # c2 feeds the Reshape
    assert any("Reshape" in n for n in notes)
    assert km.run(pruned, feeds)[0].shape == (32, 3)


def test_keras_ops_in_the_graph() -> None:
    """Element-wise keras.ops pass channels through; a constant per-channel array pins them."""
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = keras.ops.relu(x) * np.linspace(0.5, 1.5, 16, dtype=np.float32)
    x = L.Conv2D(16, 3, padding="same", name="c2")(x)
    x = keras.ops.sigmoid(x) * 2.0
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(3, name="head")(x))
    feeds = _images()
    pruned, changes, notes = km.apply(model, Prune(0.5, round_to=4), CompressData())
    assert [c["layer"] for c in changes] == ["c2"]
    assert any("constant array" in n for n in notes)
    removed = _removed(model, pruned, ["c2"])
    assert len(removed["c2"]) == 8
    # a zeroed channel still reaches the head as sigmoid(0) * 2 = 1: take its share out
    head = model.get_layer("head").get_weights()[0]
    expected = km.run(_zeroed(model, removed), feeds)[0] - head[removed["c2"]].sum(0)
    np.testing.assert_allclose(km.run(pruned, feeds)[0], expected, rtol=1e-5, atol=1e-5)


# --- unstructured --------------------------------------------------------------------------------


def test_two_of_four_sparsity_and_global_unstructured() -> None:
    inp = keras.Input((8, 8, 4), name="img")
    x = L.Conv2D(16, 3, name="conv")(inp)
    x = L.Flatten()(x)
    x = L.Dense(32, name="fc")(x)
    model = keras.Model(inp, L.Dense(3, name="head")(x))
    sparse, changes, notes = km.apply(
        model, Prune(0.5, structured=False, n_m=(2, 4)), CompressData()
    )
    for name in ("conv", "fc"):
        k = sparse.get_layer(name).get_weights()[0]
        groups = np.moveaxis(k, -2, -1).reshape(-1, 4)
        assert np.all((groups == 0).sum(1) == 2)
        orig = np.moveaxis(model.get_layer(name).get_weights()[0], -2, -1).reshape(-1, 4)
        kept = np.sort(np.abs(groups), 1)[:, 2:]
        np.testing.assert_array_equal(kept, np.sort(np.abs(orig), 1)[:, 2:])
    np.testing.assert_array_equal(
        sparse.get_layer("head").get_weights()[0], model.get_layer("head").get_weights()[0]
    )
    assert any("no faster" in n for n in notes)
    sparse, changes, _ = km.apply(
        model, Prune(0.3, structured=False, scope="global"), CompressData()
    )
    zeros = sum(c["after"]["weights"] - c["after"]["nonzero"] for c in changes)
    total = sum(c["after"]["weights"] for c in changes)
    assert zeros == int(total * 0.3)
    feeds = {"img": RNG.standard_normal((32, 8, 8, 4)).astype(np.float32)}
    for criterion in ("gradient", "taylor"):
        p = Prune(
            0.3, structured=False, scope="global", per_layer={"conv": 0.5}, criterion=criterion
        )
        sparse, changes, _ = km.apply(model, p, CompressData(train=feeds, original=model))
        after = {c["layer"]: c["after"] for c in changes}
        assert after["conv"]["nonzero"] == after["conv"]["weights"] // 2
        assert after["fc"]["nonzero"] == after["fc"]["weights"] - int(after["fc"]["weights"] * 0.3)
    with pytest.raises(UsageError, match="importance"):
        km.apply(model, Prune(0.5, structured=False, criterion="importance"), CompressData())


# --- low rank ------------------------------------------------------------------------------------


def _mlp(d: int = 32) -> keras.Model:
    inp = keras.Input((6, d), name="tokens")
    h = L.Dense(4 * d, activation="gelu", name="up")(inp)
    return keras.Model(inp, L.Dense(d, name="down")(h))


def test_svd_exact_at_the_kernels_rank_and_error_falls_with_rank() -> None:
    model = _mlp()
    feeds = {"tokens": RNG.standard_normal((16, 6, 32)).astype(np.float32)}
    up = model.get_layer("up")
    low = RNG.standard_normal((32, 6)) @ RNG.standard_normal((6, 128))
    up.set_weights([low.astype(np.float32), up.get_weights()[1]])
    ref = km.run(model, feeds)[0]
    exact, changes, _ = km.apply(model, LowRank("svd", energy=1.0), CompressData())
    assert [c["after"]["rank"] for c in changes if c["layer"] == "up"] == [6]
    np.testing.assert_allclose(km.run(exact, feeds)[0], ref, rtol=1e-4, atol=1e-4)

    model = _mlp()
    ref = km.run(model, feeds)[0]
    errors = []
    for rank in (2, 8, 16, 24):
        approx, changes, _ = km.apply(model, LowRank("svd", rank=rank), CompressData())
        assert {c["layer"] for c in changes} == {"up", "down"}
        assert km.count(approx, feeds)[0] < km.count(model, feeds)[0]
        errors.append(float(np.linalg.norm(km.run(approx, feeds)[0] - ref)))
    assert errors == sorted(errors, reverse=True)
    assert approx.get_layer("down").name == "down"  # the output keeps its layer name


def _low_rank_conv(kernel: np.ndarray, strides: int = 1) -> keras.Model:
    kh, kw, cin, cout = kernel.shape
    inp = keras.Input((10, 10, cin), name="img")
    conv = L.Conv2D(cout, (kh, kw), strides=strides, padding="same", activation="relu", name="conv")
    model = keras.Model(inp, conv(inp))
    conv.set_weights([kernel.astype(np.float32), RNG.normal(0, 0.1, cout).astype(np.float32)])
    return model


def test_tucker_recovers_a_rank_4_conv_and_error_falls_with_rank() -> None:
    core = RNG.standard_normal((3, 3, 4, 4))
    kernel = np.einsum(
        "hwab,ia,ob->hwio", core, RNG.standard_normal((24, 4)), RNG.standard_normal((24, 4))
    )
    model = _low_rank_conv(kernel)
    feeds = _images(8, 10, 24)
    ref = km.run(model, feeds)[0]
    approx, changes, _ = km.apply(model, LowRank("tucker", rank=4), CompressData())
    assert changes[0]["after"]["rank"] == [4, 4] and changes[0]["after"]["error"] < 1e-6
    np.testing.assert_allclose(km.run(approx, feeds)[0], ref, rtol=1e-4, atol=1e-4)
    assert [type(x).__name__ for x in approx.layers[1:]] == ["Conv2D"] * 3

    model = _low_rank_conv(RNG.standard_normal((3, 3, 24, 24)), strides=2)
    ref = km.run(model, feeds)[0]
    errors = []
    for rank in (4, 8, 16):
        approx, changes, _ = km.apply(model, LowRank("tucker", rank=rank), CompressData())
        assert changes
        errors.append(float(np.linalg.norm(km.run(approx, feeds)[0] - ref)))
    assert errors == sorted(errors, reverse=True)


@pytest.mark.parametrize("strides", [1, 2])
def test_cp_recovers_a_rank_3_conv(strides: int) -> None:
    pytest.importorskip("tensorly")
    factors = [RNG.standard_normal((n, 3)) for n in (3, 3, 16, 16)]
    kernel = np.einsum("hr,wr,ir,or->hwio", *factors)
    model = _low_rank_conv(kernel, strides)
    feeds = _images(8, 10, 16)
    ref = km.run(model, feeds)[0]
    approx, changes, _ = km.apply(model, LowRank("cp", rank=3), CompressData())
    out = km.run(approx, feeds)[0]
    assert np.all(np.isfinite(out)) and changes[0]["after"]["error"] < 1e-2
    np.testing.assert_allclose(out, ref, atol=2e-2 * np.abs(ref).max())
    kinds = [type(x).__name__ for x in approx.layers[1:]]
    assert kinds == (
        ["Conv2D", "DepthwiseConv2D", "DepthwiseConv2D", "Conv2D"]
        if strides == 1
        else ["Conv2D"] * 4
    )


def test_cp_nan_is_refused_naming_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorly's ALS diverging is faked: a real divergence is not reproducible on demand."""
    decomposition = pytest.importorskip("tensorly.decomposition")

    def nan_parafac(tensor, rank, **_):
        return np.full(rank, np.nan), [np.full((n, rank), np.nan) for n in tensor.shape]

    monkeypatch.setattr(decomposition, "parafac", nan_parafac)
    model = _low_rank_conv(RNG.standard_normal((3, 3, 16, 16)))
    with pytest.raises(ConversionError, match="conv"):
        km.apply(model, LowRank("cp", rank=3), CompressData())


def test_low_rank_leaves_a_layer_that_would_grow() -> None:
    model = _mlp(8)
    _, changes, notes = km.apply(model, LowRank("svd", energy=1.0), CompressData())
    assert changes == [] and notes


# --- round trip and a realistic run --------------------------------------------------------------


def test_pruned_model_saves_loads_safely_and_exports(tmp_path) -> None:
    import edgekit

    model = _residual()
    feeds = _images(4)
    pruned, _, _ = km.apply(model, Prune(0.5, round_to=4), CompressData())
    path = tmp_path / "pruned.keras"
    km.save(pruned, path, feeds)
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.keras"]
    loaded = km.load(path)
    np.testing.assert_allclose(km.run(loaded, feeds)[0], km.run(pruned, feeds)[0], atol=1e-6)
    report = edgekit.export(
        str(path), target="onnxruntime", precision="fp32", output_dir=tmp_path / "out"
    )
    assert report.artifact.exists()
    session = edgekit.load(report.artifact)
    one = feeds["img"][:1]  # the export fixes the batch dimension to 1
    out = session.run({km.input_names(loaded)[0]: one})
    np.testing.assert_allclose(out[0], km.run(pruned, {"img": one})[0], atol=1e-4)


def test_digits_cnn_pruned_half_and_distilled_keeps_accuracy(keras_cnn, digits) -> None:
    from edgekit import samples

    x_train, _, x_test, y_test = digits
    train = {"image": samples.to_input(x_train, layout="NHWC")}
    test = {"image": samples.to_input(x_test, layout="NHWC")}
    data = CompressData(train=train, eval=test, eval_labels=y_test, original=keras_cnn)
    before = samples.accuracy(km.run(keras_cnn, test)[0], y_test)

    pruned, changes, _ = km.apply(keras_cnn, Prune(0.5), data)
    # the first conv's 8 filters halve to 4, which round_to=8 rounds back up: left alone
    assert [c["after"] for c in changes] == [{"filters": 8}, {"filters": 16}, {"units": 128}]
    tuned, _, notes = km.apply(pruned, FineTune(epochs=1, mode="distill", lr=1e-3), data)
    after = samples.accuracy(km.run(tuned, test)[0], y_test)
    assert km.count(tuned, test)[0] < 0.5 * km.count(keras_cnn, test)[0]
    assert after >= before - 0.05, notes
    assert any(n.startswith("epoch 1") for n in notes)


def test_finetune_labels_and_callback() -> None:
    model = _residual()
    feeds = _images(64)
    labels = np.argmax(km.run(model, feeds)[0], -1)
    data = CompressData(
        train=feeds, train_labels=labels, eval=feeds, eval_labels=labels, original=model
    )
    _, _, notes = km.apply(model, FineTune(epochs=3, mode="labels", tolerance=0.5), data)
    # within tolerance of the original's accuracy after one epoch
    assert [n for n in notes if n.startswith("epoch")] == notes[:1]
    assert any("stopped early" in n for n in notes)
    seen = []
    out, _, _ = km.apply(
        model, FineTune(mode="callback", callback=lambda m, d: seen.append(d) or m), data
    )
    assert seen == [data] and out is not model
    with pytest.raises(DataError):
        km.apply(model, FineTune(mode="labels"), CompressData(train=feeds))


def test_driver_compresses_a_keras_model_end_to_end(tmp_path) -> None:
    """Through ``edgekit.compress.api``: the protocol as the driver uses it."""
    from edgekit.compress import api

    model = _residual()
    x = RNG.standard_normal((40, 8, 8, 3)).astype(np.float32)
    result = api.compress(
        model,
        [Prune(0.5, round_to=4), LowRank("svd", rank=2), FineTune(epochs=1, batch_size=16)],
        data=x,
        output_dir=tmp_path,
        name="small",
    )
    prune, lowrank, tune = result.reports
    assert [c["layer"] for c in lowrank.layers] == ["head"]
    assert prune.params_after < prune.params_before and prune.macs_after < prune.macs_before
    assert tune.metric_after is not None and result.path == tmp_path / "small.keras"
    loaded = km.load(result.path)
    np.testing.assert_allclose(
        km.run(loaded, {"img": x})[0], km.run(result.model, {"img": x})[0], atol=1e-5
    )
