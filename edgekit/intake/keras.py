"""Keras 3 (``.keras``, ``.h5``) and TensorFlow SavedModel intake; bridge to ONNX via tf2onnx.

``.keras`` files load with ``safe_mode=True``: a Lambda layer's pickled Python code is refused,
so opening an untrusted model file cannot run code. A SavedModel is graph code that TensorFlow
runs (initializers on load, the signature when probed), so its graph is scanned first and one
with file, network or Python-callback ops is refused (:mod:`edgekit.intake.savedmodel_scan`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compress import keras_qat
from edgekit.errors import ConversionError, ModelFormatError, UsageError, first_line, require
from edgekit.intake import savedmodel_scan
from edgekit.intake.archive import check_zip
from edgekit.model import Feeds, SourceModel, TensorSpec, fix_shapes, output_list

OPSET = 17


def _tf() -> Any:
    # TensorFlow's C++ start-up logging is noise for our users. TF 2.21 prints its oneDNN
    # banner at import whatever TF_CPP_MIN_LOG_LEVEL says, which breaks the CLI's one-line
    # errors; edgekit runs only small probe and reference batches, so the plain kernels it
    # falls back to cost nothing noticeable.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    return require("tensorflow", "tensorflow")


def _keras() -> Any:
    _tf()
    return require("keras", "tensorflow")


def _load_keras(path: Path) -> Any:
    keras = _keras()
    if path.suffix.lower() == ".keras":
        check_zip(path)
    # edgekit's QAT layers (registered serializables) must be known before a QAT model loads.
    keras_qat.classes()
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            raise ModelFormatError(
                f"{path.name} contains a Lambda layer with Python code, which edgekit does not "
                "run from a file; rebuild the model without Lambda layers"
            ) from exc
        raise ModelFormatError(
            f"{path.name} is not a loadable Keras model: {first_line(exc)}"
        ) from exc
    except Exception as exc:
        raise ModelFormatError(
            f"{path.name} is not a loadable Keras model (truncated or corrupt?): {first_line(exc)}"
        ) from exc


def _keras_specs(model: Any) -> tuple[list[TensorSpec], list[str]]:
    inputs = [
        TensorSpec(
            t.name,
            str(getattr(t.dtype, "name", t.dtype)),
            tuple("?" if d is None else int(d) for d in t.shape),
        )
        for t in model.inputs
    ]
    out_names = list(getattr(model, "output_names", None) or [])
    if len(out_names) != len(model.outputs):
        out_names = [f"output_{i}" for i in range(len(model.outputs))]
    return inputs, out_names


def _build(
    fmt: str,
    handle: Any,
    call: Callable[[list[Any]], Any],
    raw_inputs: list[TensorSpec],
    out_names: list[str],
    overrides: Mapping[str, Sequence[int]],
) -> SourceModel:
    tf = _tf()
    notes: list[str] = []
    inputs = fix_shapes(raw_inputs, overrides, notes)
    names = [s.name for s in inputs]

    def run(feeds: Feeds) -> list[np.ndarray]:
        outs = call([tf.constant(feeds[n]) for n in names])
        return [np.asarray(v) for v in output_list(outs)]

    probe = run({s.name: np.zeros(s.shape, dtype=s.dtype) for s in inputs})
    made: list[SourceModel] = []
    outputs = [
        TensorSpec(n, a.dtype.name, tuple(a.shape)) for n, a in zip(out_names, probe, strict=True)
    ]

    def to_onnx(dst: Path) -> None:
        if fmt == "keras" and keras_qat.is_qat_model(handle):
            keras_qat.to_onnx(made[0], dst)
            return
        tf2onnx = require("tf2onnx", "tensorflow")
        spec = [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in inputs]

        @tf.function(input_signature=spec)
        def fn(*args: Any) -> dict[str, Any]:
            outs = output_list(call(list(args)))
            return dict(zip(out_names, outs, strict=True))

        try:
            tf2onnx.convert.from_function(
                fn, input_signature=spec, opset=OPSET, output_path=str(dst)
            )
        except Exception as exc:
            raise ConversionError(
                f"tf2onnx could not convert the model: {first_line(exc)}"
            ) from exc

    source = SourceModel(
        format=fmt,
        inputs=inputs,
        outputs=outputs,
        handle=handle,
        run=run,
        to_onnx=to_onnx,
        notes=notes,
    )
    made.append(source)  # a QAT model's ONNX is made from its TFLite conversion of this source
    return source


def _from_keras(model: Any, overrides: Mapping[str, Sequence[int]]) -> SourceModel:
    if not getattr(model, "inputs", None):
        raise UsageError("the Keras model has no defined inputs; build it (model.build) first")
    inputs, out_names = _keras_specs(model)

    def call(args: list[Any]) -> Any:
        return model(args[0] if len(args) == 1 else args, training=False)

    return _build("keras", model, call, inputs, out_names, overrides)


SAVEDMODEL_NOTE = (
    "a SavedModel's graph code runs when edgekit loads and exports it; edgekit refuses graphs "
    "with file, network or Python-callback ops, but export only SavedModels you trust"
)


def _refuse_side_effects(path: Path) -> None:
    found = savedmodel_scan.scan(path)
    if not found:
        return
    listed = ", ".join(str(f) for f in found[:4])
    if len(found) > 4:
        listed += f" and {len(found) - 4} more"
    raise ModelFormatError(
        f"{path}: the SavedModel's graph calls {listed} and edgekit does not run graph code "
        "with side effects; re-export it without file I/O or Python ops, or export it to ONNX "
        "yourself"
    )


def _load_savedmodel(path: Path) -> tuple[Any, Any]:
    tf = _tf()
    # Before tf.saved_model.load: loading already runs the model's resource initializers.
    _refuse_side_effects(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelFormatError(
            f"{path} is not a loadable SavedModel (corrupt or incomplete?): {first_line(exc)}"
        ) from exc
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise ModelFormatError(
            f"{path} has no 'serving_default' signature; re-save it with model.export(path)"
        )
    return loaded, sig


def _savedmodel_specs(sig: Any) -> tuple[list[TensorSpec], list[str]]:
    kwargs = sig.structured_input_signature[1]
    inputs = [
        TensorSpec(
            name,
            spec.dtype.name,
            tuple("?" if d is None else int(d) for d in spec.shape.as_list()),
        )
        for name, spec in kwargs.items()
    ]
    return inputs, list(sig.structured_outputs)


def load(path: Path, overrides: Mapping[str, Sequence[int]]) -> SourceModel:
    if path.is_dir():
        loaded, sig = _load_savedmodel(path)
        inputs, out_names = _savedmodel_specs(sig)
        names = [s.name for s in inputs]

        def call(args: list[Any]) -> Any:
            outs = sig(**dict(zip(names, args, strict=True)))
            return [outs[n] for n in out_names]

        return _build("savedmodel", loaded, call, inputs, out_names, overrides)
    return _from_keras(_load_keras(path), overrides)


def from_object(
    obj: Any, overrides: Mapping[str, Sequence[int]], example_inputs: Sequence[Any] | None
) -> SourceModel:
    if example_inputs is not None:
        raise UsageError("example_inputs is for PyTorch modules; for Keras use input_shapes")
    return _from_keras(obj, overrides)


def describe(path: Path) -> dict[str, Any]:
    if path.is_dir():
        loaded, sig = _load_savedmodel(path)
        inputs, out_names = _savedmodel_specs(sig)
        params = sum(int(np.prod(v.shape)) for v in getattr(loaded, "variables", []))
        return {
            "inputs": [s.to_json() for s in inputs],
            "outputs": [{"name": n} for n in out_names],
            "parameters": params,
            "ops": {},
            "notes": [SAVEDMODEL_NOTE],
        }
    model = _load_keras(path)
    inputs, out_names = _keras_specs(model)
    layers: Counter[str] = Counter(type(layer).__name__ for layer in model.layers)
    return {
        "inputs": [s.to_json() for s in inputs],
        "outputs": [
            {"name": n, "shape": ["?" if d is None else d for d in t.shape]}
            for n, t in zip(out_names, model.outputs, strict=True)
        ],
        "parameters": int(model.count_params()),
        "ops": dict(layers.most_common()),
    }
