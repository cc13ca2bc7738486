"""The bundled sample: a real CNN trained on scikit-learn's digits, used by ``make demo``,
the ``tools/`` benchmarks and the tests. Everything ships inside PyPI packages (no download).

Digits are 8x8 images with values 0..16. They become 8-bit grayscale pictures (the same PNGs
``calibration_data/digits`` holds) and are upscaled to 32x32 with PIL's bilinear filter, exactly
as edgekit's image-folder reader does, so a model trained here and calibrated from the PNG
folder sees the same pixels.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import require

SIZE = 32
CACHE_DIR = Path(".edgekit-cache")


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 8x8 pictures (0..255) and their labels."""
    datasets = require("sklearn.datasets", "dev")
    d = datasets.load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target.astype(np.int64)


def to_input(images: np.ndarray, size: int = SIZE, layout: str = "NCHW") -> np.ndarray:
    """uint8 pictures -> float32 model input in [0, 1], bilinear-resized like the reader does."""
    from PIL import Image

    resample = Image.Resampling.BILINEAR
    out = np.stack(
        [
            np.asarray(Image.fromarray(img, mode="L").resize((size, size), resample), np.float32)
            for img in images
        ]
    ) * np.float32(1.0 / 255.0)
    return out[:, None] if layout == "NCHW" else out[..., None]


def split(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """Deterministic train/test split of the uint8 pictures: x_train, y_train, x_test, y_test."""
    images, labels = digits_uint8()
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(len(images) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def torch_cnn(width: int = 16, hidden: int = 256) -> Any:
    """A VGG-style CNN for 1x32x32 inputs; width 16 gives ~1.1M parameters. Its first eight
    modules are the convolutional features, the last four the classifier."""
    nn = require("torch.nn", "torch")
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * w * 8 * 8, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def train_torch_cnn(
    width: int = 16, epochs: int = 8, seed: int = 0, cache_dir: Path | None = CACHE_DIR
) -> Any:
    """Train (or load from the cache) the digits CNN; returns the module in eval mode."""
    torch = require("torch", "torch")
    key = hashlib.sha256(f"torch-cnn-{width}-{epochs}-{seed}-v1".encode()).hexdigest()[:12]
    model = torch_cnn(width)
    cached = cache_dir / f"digits_cnn_{key}.pt" if cache_dir else None
    if cached and cached.exists():
        model.load_state_dict(torch.load(cached, weights_only=True))
        return model.eval()
    torch.manual_seed(seed)
    x_train, y_train, _, _ = split(seed)
    x = torch.from_numpy(to_input(x_train))
    y = torch.from_numpy(y_train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(cached)
    return model


def keras_cnn(width: int = 16) -> Any:
    """The same architecture in Keras 3 (NHWC input 32x32x1)."""
    keras = require("keras", "tensorflow")
    w = width
    layers = keras.layers
    inp = keras.Input((SIZE, SIZE, 1), name="image")
    x = layers.Conv2D(w, 3, padding="same", activation="relu")(inp)
    x = layers.Conv2D(2 * w, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(4 * w, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    out = layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out)


def train_keras_cnn(width: int = 16, epochs: int = 4, seed: int = 0) -> Any:
    keras = require("keras", "tensorflow")
    keras.utils.set_random_seed(seed)
    model = keras_cnn(width)
    x_train, y_train, _, _ = split(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(to_input(x_train, layout="NHWC"), y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


# --- Models on which plain post-training int8 loses accuracy (issue 11) ---------------------
#
# Well-trained digits models are int8-robust on every backend: the VGG CNN above, and plain
# ViTs of 64 or 256 tokens, lose under 1 point (usually 0) on ONNX Runtime, OpenVINO and
# LiteRT, because every tensor they quantize has a range of about 7-15 standard deviations.
# The two models below are not corrupted after training; each carries one common design choice
# that puts a tensor with a huge dynamic range where a backend quantizes it with one scale.


def _torch_modules() -> dict[str, Any]:
    """The nn.Module classes of the sensitive samples (built on first use: torch is optional)."""
    cached = globals().get("_TORCH_MODULES")
    if cached is not None:
        return cached
    torch = require("torch", "torch")
    nn = torch.nn
    functional = torch.nn.functional

    class Attention(nn.Module):
        """Multi-head self-attention from nn.Linear + matmul + softmax (every exporter takes
        these ops). ``lsa``: Locality Self-Attention (Lee et al. 2021, "Vision Transformer for
        Small-Size Datasets"): a learnable temperature per head, and each token is kept from
        attending to itself by an additive mask of -1e4 on the diagonal of the scores."""

        def __init__(self, dim: int, heads: int, tokens: int, lsa: bool) -> None:
            super().__init__()
            self.heads = heads
            head_dim = dim // heads
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, dim)
            self.proj = nn.Linear(dim, dim)
            scale = torch.full((heads, 1, 1), float(np.log(head_dim**-0.5)))
            self.log_scale = nn.Parameter(scale, requires_grad=lsa)
            self.register_buffer("mask", torch.eye(tokens) * -1e4 if lsa else None)

        def _split(self, x: Any, b: int, n: int) -> Any:
            return x.reshape(b, n, self.heads, -1).transpose(1, 2)

        def forward(self, x: Any) -> Any:
            b, n, d = x.shape
            q = self._split(self.q(x), b, n) * torch.exp(self.log_scale)
            k = self._split(self.k(x), b, n)
            v = self._split(self.v(x), b, n)
            if self.training:  # the same function, fused: half the training time
                out = functional.scaled_dot_product_attention(q, k, v, self.mask, scale=1.0)
            else:
                scores = torch.matmul(q, k.transpose(-2, -1))
                if self.mask is not None:
                    scores = scores + self.mask
                out = torch.matmul(torch.softmax(scores, dim=-1), v)
            return self.proj(out.transpose(1, 2).reshape(b, n, d))

    class Block(nn.Module):
        """Pre-norm encoder block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

        def __init__(self, dim: int, heads: int, tokens: int, mlp: int, lsa: bool) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention(dim, heads, tokens, lsa)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(
                nn.Linear(dim, mlp * dim), nn.GELU(), nn.Linear(mlp * dim, dim)
            )

        def forward(self, x: Any) -> Any:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class Transformer(nn.Module):
        """ViT for 1x32x32 inputs: patch embedding (a strided conv), learned positions,
        ``depth`` blocks, LayerNorm, mean over tokens, linear head."""

        def __init__(
            self, dim: int, depth: int, heads: int, patch: int, mlp: int, lsa: bool
        ) -> None:
            super().__init__()
            tokens = (SIZE // patch) ** 2
            self.embed = nn.Conv2d(1, dim, patch, stride=patch)
            self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
            # Sequential, not ModuleList: a called container keeps its name in converters' scopes.
            blocks = (Block(dim, heads, tokens, mlp, lsa) for _ in range(depth))
            self.blocks = nn.Sequential(*blocks)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x: Any) -> Any:
            x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
            return self.head(self.norm(self.blocks(x)).mean(dim=1))

    class PixelScaler(nn.Module):
        """scikit-learn's StandardScaler, one mean and std per pixel, as the first layer."""

        def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
            self.register_buffer("inv_std", torch.from_numpy((1.0 / std).astype(np.float32)))

        def forward(self, x: Any) -> Any:
            return (x - self.mean) * self.inv_std

    class ScaledCNN(nn.Module):
        """``torch_cnn``'s layers (hidden width ``hidden``) behind a per-pixel scaler."""

        def __init__(self, mean: np.ndarray, std: np.ndarray, width: int, hidden: int) -> None:
            super().__init__()
            self.scaler = PixelScaler(mean, std)
            # torch_cnn's modules, re-indexed from 0 in each part (features.0, classifier.1)
            layers = list(torch_cnn(width, hidden))
            self.features = nn.Sequential(*layers[:8])
            self.classifier = nn.Sequential(*layers[8:])

        def forward(self, x: Any) -> Any:
            return self.classifier(self.features(self.scaler(x)))

    for cls in (Attention, Block, Transformer, PixelScaler, ScaledCNN):
        # Converters name ops by the classes' qualified names (LiteRT: "samples.Block_0/..."):
        # keep "<locals>" out of them.
        cls.__qualname__ = cls.__name__
    cached = {"Transformer": Transformer, "ScaledCNN": ScaledCNN}
    globals()["_TORCH_MODULES"] = cached
    return cached


def _train_torch(
    model: Any,
    key: str,
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
    cache_dir: Path | None,
    weight_decay: float = 0.0,
    one_cycle: bool = False,
) -> Any:
    """Train ``model`` on the training digits (or load it from the cache by ``key``); returns
    it in eval mode. Deterministic for a seed."""
    torch = require("torch", "torch")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    cached = cache_dir / f"digits_{key.split('-')[0]}_{digest}.pt" if cache_dir else None
    if cached and cached.exists():
        model.load_state_dict(torch.load(cached, weights_only=True))
        return model.eval()
    x_train, y_train, _, _ = split(seed)
    x = torch.from_numpy(to_input(x_train))
    y = torch.from_numpy(y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch)
    schedule = (
        torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
        if one_cycle
        else None
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if schedule is not None:
                schedule.step()
    model.eval()
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(cached)
    return model


def torch_transformer(
    dim: int = 64, depth: int = 2, heads: int = 4, patch: int = 4, mlp: int = 2, lsa: bool = True
) -> Any:
    """A small ViT for 1x32x32 inputs: (32/patch)^2 tokens (64 by default), ``depth`` pre-norm
    blocks of ``heads``-head self-attention (nn.Linear q/k/v/proj + matmul + softmax) and a
    GELU MLP, mean pooling, linear head; ~73k parameters by default. Module paths:
    ``embed``, ``blocks.0.attn.q``/``k``/``v``/``proj``, ``blocks.0.mlp.0``/``2``, ``head``.

    ``lsa`` (default) makes its attention Locality Self-Attention, the published recipe for
    ViTs trained from scratch on small datasets (Lee et al. 2021): a learnable temperature per
    head and an additive -1e4 mask on the diagonal of the attention scores, so that no token
    attends to itself. That mask is what int8 cannot take where the softmax *input* is quantized
    (ONNX Runtime's QDQ quantizes the Add and the Softmax; LiteRT's int8 ADD and SOFTMAX): the
    scores' calibrated range becomes [-1e4, ~30], one int8 step is ~40, and every unmasked
    score rounds to the same value, so attention turns uniform. OpenVINO (NNCF) leaves the Add
    and Softmax in float and quantizes only MatMul inputs: there int8 keeps the accuracy. With
    ``lsa=False`` it is a plain ViT, which int8 does not hurt on any backend.
    """
    return _torch_modules()["Transformer"](dim, depth, heads, patch, mlp, lsa)


def train_torch_transformer(
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    patch: int = 4,
    mlp: int = 2,
    lsa: bool = True,
    epochs: int = 30,
    seed: int = 0,
    cache_dir: Path | None = CACHE_DIR,
) -> Any:
    """Train (or load from the cache) :func:`torch_transformer` on the digits: AdamW (weight
    decay 0.05) with a one-cycle schedule peaking at 3e-3, batch 32; about 30-40 s on two
    cores and ~98.5 % test accuracy with the defaults. Returns the module in eval mode."""
    torch = require("torch", "torch")
    torch.manual_seed(seed)
    model = torch_transformer(dim, depth, heads, patch, mlp, lsa)
    key = f"transformer-{dim}-{depth}-{heads}-{patch}-{mlp}-{lsa}-{epochs}-{seed}-v1"
    return _train_torch(model, key, epochs, 3e-3, 32, seed, cache_dir, 0.05, one_cycle=True)


def pixel_statistics(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std (1x1x32x32 each) of the training pictures as the model sees them,
    as scikit-learn's StandardScaler computes them (a constant pixel keeps std 1)."""
    x_train, _, _, _ = split(seed)
    x = to_input(x_train)
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True)
    return mean, np.where(std < 1e-8, 1.0, std).astype(np.float32)


def torch_sensitive_cnn(width: int = 16, hidden: int = 128, seed: int = 0) -> Any:
    """``torch_cnn``'s VGG layers behind a first layer that standardizes each pixel with the
    training set's per-pixel mean and std, ``(x - mean) * (1 / std)``: scikit-learn's
    StandardScaler, the preprocessing of scikit-learn's own digits examples, folded into the
    model so that it takes plain [0, 1] pictures. ~550k parameters (width 16, hidden 128).
    Module paths: ``scaler``, ``features.0`` (first conv), ``classifier.1``/``3``.

    Why int8 breaks it: pixels at the edge of the digits are almost always blank, so their std
    is tiny (down to 3e-4) and ``1 / std`` spans 2.6 to ~3400. ONNX Runtime's QDQ quantizer and
    LiteRT quantize that constant operand of the Mul per tensor with one scale (a step of ~13),
    so the factors of the ordinary pixels (2.6-10) round to 0 or 13 and the picture is lost.
    OpenVINO (NNCF) keeps an elementwise op with a constant in float and quantizes only the
    first Conv's input (the standardized picture, range ~[-4, 38]): there int8 keeps the
    accuracy."""
    mean, std = pixel_statistics(seed)
    return _torch_modules()["ScaledCNN"](mean, std, width, hidden)


def train_torch_sensitive_cnn(
    width: int = 16,
    hidden: int = 128,
    epochs: int = 8,
    seed: int = 0,
    cache_dir: Path | None = CACHE_DIR,
) -> Any:
    """Train (or load from the cache) :func:`torch_sensitive_cnn`: Adam at 1e-3, batch 64, as
    ``train_torch_cnn``; about 10-15 s on two cores, ~98 % test accuracy. Eval mode."""
    torch = require("torch", "torch")
    torch.manual_seed(seed)
    model = torch_sensitive_cnn(width, hidden, seed)
    key = f"sensitive_cnn-{width}-{hidden}-{epochs}-{seed}-v1"
    return _train_torch(model, key, epochs, 1e-3, 64, seed, cache_dir)


# --- A model on which post-training int8 loses and QAT wins it back (issue 13) -------------
#
# Cross-layer range imbalance, the failure Nagel et al. describe in "Data-Free Quantization
# Through Weight Equalization and Bias Correction" (ICCV 2019) for MobileNets: ReLU is
# positive-homogeneous, relu(s*x) = s*relu(x) for s > 0, so scaling a conv's output channel c by
# s_c and the next conv's input-channel-c weights by 1/s_c computes exactly the same function
# while the per-channel ranges spread over decades. Trained networks end up like this on their
# own (Nagel et al. Fig. 2, MobileNetV2's depthwise layers); here it is made explicitly, by
# rescaling a well-trained digits CNN, so that its size is known and the float model is the
# trained one to the last bit of rounding. Int8 suffers twice: the first conv's output is
# quantized per tensor, so channels scaled down fall below one step; the second conv's weights
# are quantized per output channel, and within that channel the weights of the channels scaled
# up are orders of magnitude smaller than the rest, so they round to zero. No backend
# equalizes ranges by default (ONNX Runtime's QDQ, NNCF's default PTQ, LiteRT), so all three
# lose. QAT keeps the quantizers in the forward pass and retrains the weights around them.

#: decades spanned by the channel scales of the unbalanced samples (4: from 10^-2 to 10^2)
UNBALANCE_DECADES = 4.0


def channel_scales(channels: int, decades: float = UNBALANCE_DECADES, seed: int = 0) -> np.ndarray:
    """Deterministic per-channel factors, log-uniform over ``decades`` centred on 1."""
    rng = np.random.default_rng(seed)
    return (10.0 ** rng.uniform(-decades / 2, decades / 2, size=channels)).astype(np.float32)


def unbalance_torch_cnn(model: Any, decades: float = UNBALANCE_DECADES, seed: int = 0) -> Any:
    """``model`` (a :func:`torch_cnn`) with its first conv's output channels scaled by
    :func:`channel_scales` and the second conv's input channels by their inverse: the same
    function (ReLU between them), ranges spread over ``decades``. Changes ``model`` in place."""
    torch = require("torch", "torch")
    first, second = model[0], model[2]
    s = torch.from_numpy(channel_scales(first.out_channels, decades, seed))
    with torch.no_grad():
        first.weight.mul_(s[:, None, None, None])
        first.bias.mul_(s)
        second.weight.div_(s[None, :, None, None])
    return model


def train_torch_unbalanced_cnn(
    decades: float = UNBALANCE_DECADES, seed: int = 0, cache_dir: Path | None = CACHE_DIR
) -> Any:
    """:func:`train_torch_cnn` (trained or cached) made range-unbalanced by
    :func:`unbalance_torch_cnn`; eval mode. At 4 decades post-training int8 drops it from
    ~98.6 % to 10-15 % on each backend, and two epochs of QAT bring it back to ~94 %
    (``tools/qat_recovery.py``; at 3 decades int8 loses ~15 points)."""
    return unbalance_torch_cnn(train_torch_cnn(seed=seed, cache_dir=cache_dir), decades, seed)


def unbalance_keras_cnn(model: Any, decades: float = UNBALANCE_DECADES, seed: int = 0) -> Any:
    """The Keras counterpart of :func:`unbalance_torch_cnn` on a :func:`keras_cnn` (its first
    two Conv2D layers; kernels are HWIO). Changes ``model`` in place."""
    keras = require("keras", "tensorflow")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    first, second = convs[0], convs[1]
    kernel, bias = (np.asarray(v) for v in first.get_weights())
    s = channel_scales(kernel.shape[-1], decades, seed)
    first.set_weights([kernel * s, bias * s])
    kernel2, bias2 = (np.asarray(v) for v in second.get_weights())
    second.set_weights([kernel2 / s[None, None, :, None], bias2])
    return model


def train_keras_unbalanced_cnn(decades: float = UNBALANCE_DECADES, seed: int = 0) -> Any:
    """:func:`train_keras_cnn` made range-unbalanced by :func:`unbalance_keras_cnn`."""
    return unbalance_keras_cnn(train_keras_cnn(seed=seed), decades, seed)


# ---------------------------------------------------------------- the build sample


def sample_pt2(cache_dir: Path | None = CACHE_DIR) -> Path:
    """The digits CNN (trained once, cached) saved as a torch.export program: what
    ``edgekit build --init`` points its example config at (``edgekit.samples:sample_pt2``)."""
    torch = require("torch", "torch")
    base = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="edgekit-sample-"))
    path = base / "digits_cnn.pt2"
    if not path.exists():
        model = train_torch_cnn(cache_dir=cache_dir)
        program = torch.export.export(model, (torch.zeros(1, 1, SIZE, SIZE),))
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".digits_cnn.{os.getpid()}.pt2"
        torch.export.save(program, str(tmp))
        tmp.replace(path)
    return path


def sample_data(split_name: str, cache_dir: Path | None = CACHE_DIR) -> Path:
    """``.npz`` of the digits split ``train`` (calibration) or ``test`` (evaluation, with
    ``labels``), input ``input`` in the CNN's NCHW layout."""
    if split_name not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split_name!r}")
    base = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="edgekit-sample-"))
    path = base / f"digits_{split_name}.npz"
    if not path.exists():
        x_train, y_train, x_test, y_test = split()
        x, y = (x_train, y_train) if split_name == "train" else (x_test, y_test)
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".digits_{split_name}.{os.getpid()}.npz"
        with open(tmp, "wb") as fh:
            np.savez(fh, input=to_input(x), labels=y)
        tmp.replace(path)
    return path


def sample_calibration(cache_dir: Path | None = CACHE_DIR) -> Path:
    return sample_data("train", cache_dir)


def sample_eval(cache_dir: Path | None = CACHE_DIR) -> Path:
    return sample_data("test", cache_dir)
