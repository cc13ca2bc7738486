"""The range-unbalanced samples (tools/qat_recovery.py's models) compute what the trained CNN
computes, with the channel scales the docstring promises, checked against the unmodified model
and a hand rescaling of its weights."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit import samples


def test_channel_scales_span_the_decades() -> None:
    s = samples.channel_scales(16, 4.0, seed=0)
    assert s.shape == (16,) and (s > 0).all()
    assert np.all(np.abs(np.log10(s)) <= 2.0)
    # log-uniform over 4 decades: 16 draws spread over more than 2 of them
    assert np.log10(s.max() / s.min()) > 2.0
    assert np.array_equal(s, samples.channel_scales(16, 4.0, seed=0))


def test_torch_unbalanced_cnn_is_the_same_function(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    ref = samples.train_torch_cnn(cache_dir=tmp_path)
    model = samples.train_torch_unbalanced_cnn(cache_dir=tmp_path)
    s = torch.from_numpy(samples.channel_scales(16))
    # the hand rescaling of the first two convs' weights
    torch.testing.assert_close(model[0].weight, ref[0].weight * s[:, None, None, None])
    torch.testing.assert_close(model[2].weight, ref[2].weight / s[None, :, None, None])
    _, _, x_test, _ = samples.split()
    x = torch.from_numpy(samples.to_input(x_test[:64]))
    with torch.no_grad():
        want, got = ref(x), model(x)
        acts = model[1](model[0](x)).amax(dim=(0, 2, 3))
    # float32 rounding of the rescaled products only
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
    live = acts[acts > 0]
    assert np.log10((live.max() / live.min()).item()) > 2.0


def test_keras_unbalanced_cnn_is_the_same_function() -> None:
    keras = pytest.importorskip("keras")
    model = samples.keras_cnn()
    _, _, x_test, _ = samples.split()
    x = samples.to_input(x_test[:64], layout="NHWC")
    want = model.predict(x, verbose=0)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    k1, k2 = np.asarray(convs[0].kernel), np.asarray(convs[1].kernel)
    samples.unbalance_keras_cnn(model)
    s = samples.channel_scales(k1.shape[-1])
    np.testing.assert_allclose(np.asarray(convs[0].kernel), k1 * s, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(convs[1].kernel), k2 / s[:, None], rtol=1e-6)
    got = model.predict(x, verbose=0)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
