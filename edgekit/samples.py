"""The bundled sample: a real CNN trained on scikit-learn's digits, used by ``make demo``,
the ``tools/`` benchmarks and the tests. Everything ships inside PyPI packages (no download).

Digits are 8x8 images with values 0..16. They become 8-bit grayscale pictures (the same PNGs
``calibration_data/digits`` holds) and are upscaled to 32x32 with PIL's bilinear filter, exactly
as edgekit's image-folder reader does, so a model trained here and calibrated from the PNG
folder sees the same pixels.
"""

from __future__ import annotations

import hashlib
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


def torch_cnn(width: int = 16) -> Any:
    """A VGG-style CNN for 1x32x32 inputs; width 16 gives ~1.1M parameters."""
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
        nn.Linear(4 * w * 8 * 8, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
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
