"""A Keras-2.x-layout ``.h5`` file of the digits CNN, written with h5py (no tf_keras needed)."""

from __future__ import annotations

import json

import h5py
import numpy as np


def write_keras2_h5(model, path) -> None:
    """Write ``model`` (the digits CNN) as Keras 2.x's ``model.save('x.h5')`` did: Keras-2 layer
    configs (``batch_input_shape``, string dtypes, nested-list ``inbound_nodes``) and weights
    named ``layer/kernel:0``. tf_keras is not needed to produce or read it."""
    init = {"kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}}}
    init["bias_initializer"] = {"class_name": "Zeros", "config": {}}
    for k in ("kernel", "bias", "activity"):
        init[f"{k}_regularizer"] = None
    init.update(kernel_constraint=None, bias_constraint=None)
    inp = model.layers[0]
    layers = [
        {
            "class_name": "InputLayer",
            "name": inp.name,
            "inbound_nodes": [],
            "config": {
                "batch_input_shape": [None, 32, 32, 1],
                "dtype": "float32",
                "name": inp.name,
            },
        }
    ]
    prev = inp.name
    for layer in model.layers[1:]:
        kind = type(layer).__name__
        cfg = {"name": layer.name, "trainable": True, "dtype": "float32"}
        if kind == "Conv2D":
            cfg.update(
                filters=layer.filters,
                kernel_size=list(layer.kernel_size),
                strides=[1, 1],
                padding=layer.padding,
                data_format="channels_last",
                dilation_rate=[1, 1],
                groups=1,
                activation=layer.activation.__name__,
                use_bias=True,
                **init,
            )
        elif kind == "Dense":
            cfg.update(
                units=layer.units, activation=layer.activation.__name__, use_bias=True, **init
            )
        elif kind == "MaxPooling2D":
            cfg.update(pool_size=[2, 2], padding="valid", strides=[2, 2])
        elif kind == "Flatten":
            cfg["data_format"] = "channels_last"
        layers.append(
            {
                "class_name": kind,
                "config": cfg,
                "name": layer.name,
                "inbound_nodes": [[[prev, 0, 0, {}]]],
            }
        )
        prev = layer.name
    config = {
        "class_name": "Functional",
        "config": {
            "name": "model",
            "layers": layers,
            "input_layers": [[inp.name, 0, 0]],
            "output_layers": [[prev, 0, 0]],
        },
        "keras_version": "2.15.0",
        "backend": "tensorflow",
    }
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([la.name.encode() for la in model.layers])
        weights.attrs["backend"] = b"tensorflow"
        weights.attrs["keras_version"] = b"2.15.0"
        for layer in model.layers:
            group = weights.create_group(layer.name)
            names = []
            for kind, value in zip(("kernel", "bias"), layer.get_weights(), strict=False):
                names.append(f"{layer.name}/{kind}:0".encode())
                group.create_dataset(f"{layer.name}/{kind}:0", data=value)
            group.attrs["weight_names"] = np.array(names, dtype="S")
