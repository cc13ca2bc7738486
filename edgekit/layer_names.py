"""Mapping converter names back to source layer names, shared by every backend's ``layers.py``.

Each backend's layers module (:mod:`edgekit.backends.onnxruntime.layers`,
:mod:`edgekit.backends.openvino.layers`, :mod:`edgekit.backends.tflite.layers`) reads the names
its converter left in the converted file and traces them back to the **source model's** names
for the layer. What they share lives here, because it is about the source frameworks and not
about any one backend:

* Keras / TensorFlow: :func:`keras_layers` lists a Keras source's layer paths, and
  :func:`keras_name` maps a TensorFlow scope name (``functional_1/conv2d_1/BiasAdd``) back to
  the layer path (``conv2d``), undoing TensorFlow's uniquifying ``_N`` suffix. tf2onnx,
  TFLiteConverter and OpenVINO's TF frontend all carry the same scopes.
* PyTorch: :func:`torch_modules` and :func:`torch_parameters` list a torch source's module
  paths and parameter names; :func:`is_compute`, :func:`parent` and :func:`common_module` reason
  about module paths (which module of several is "the layer", the module an attention matmul
  runs in).
* The finishing step: a backend traces each quantizable op to a :class:`Traced`, and
  :func:`finish` turns those into uniquely named :class:`~edgekit.layers.Layer` objects, using the
  names a conversion recorded under :data:`LAYER_NAMES` (:func:`recorded_names`) when no source
  is at hand.

Heavy frameworks are imported inside the functions that need them, never at import time.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgekit.backends.base import Converted
from edgekit.errors import require
from edgekit.layers import Layer, unique
from edgekit.model import SourceModel

# ---------------------------------------------------------------- source framework names

# A Keras layer's tf.name_scope always comes out uniquified by TensorFlow's Graph.unique_name
# (the name is already in use when the scope opens), so one "_N" is appended: conv2d ->
# conv2d_1, conv2d_1 -> conv2d_1_2, and dense -> dense_2 when a layer dense_1 exists. Dropping
# one trailing _N undoes it. Observed alike on all three routes (tf2onnx, TFLiteConverter via
# model.export, OpenVINO's TF frontend), with Keras 3.15 / TF 2.21.
_SCOPE_SUFFIX = re.compile(r"_\d+$")
# Module classes whose op is "the layer" when one op carries several modules (a conv with the
# batch norm and ReLU fused into it): the weighted compute module, not the norm or activation.
_COMPUTE_CLASS = re.compile(r"Conv|Linear|LSTM|GRU|RNN|Bilinear|Dense|Attention|Embedding")


def keras_name(tf_name: str, known: Collection[str] | None = None) -> str | None:
    """The Keras layer path (``conv2d``; ``inner/dense`` inside a nested model) in a TensorFlow
    op or tensor name such as ``functional_1/conv2d_1/BiasAdd``: the scopes between the model's
    own (first) scope and the op name, each with TensorFlow's uniquifying ``_N`` dropped.

    With ``known`` (the source's layer paths) the first span of scopes that names a known layer,
    with or without the suffix, is taken, and an unknown one gives None."""
    scopes = tf_name.split(":")[0].split("/")[:-1]
    if known is None:
        if len(scopes) < 2:
            return None
        return "/".join(_SCOPE_SUFFIX.sub("", s) for s in scopes[1:])
    for start in range(len(scopes)):
        for end in range(len(scopes), start, -1):
            span = scopes[start:end]
            for form in ("/".join(_SCOPE_SUFFIX.sub("", s) for s in span), "/".join(span)):
                if form in known:
                    return form
    return None


def keras_layers(source: SourceModel) -> dict[str, Any]:
    """Layer path -> layer for a Keras source, nested models' layers as ``outer/inner``."""
    found: dict[str, Any] = {}

    def walk(model: Any, prefix: str) -> None:
        for layer in getattr(model, "layers", None) or []:
            path = prefix + layer.name
            found[path] = layer
            walk(layer, path + "/")

    if source.format == "keras":
        walk(source.handle, "")
    return found


def _class_name(cls: Any) -> str:
    if isinstance(cls, str):
        return cls
    return f"{cls.__module__}.{cls.__qualname__}"


def torch_modules(source: SourceModel) -> dict[str, str]:
    """Module path -> class (``torch.nn.modules.conv.Conv2d``) for a torch source: an
    ``nn.Module``, or an ExportedProgram, whose graph's ``nn_module_stack`` lists the modules it
    calls; ``""`` is the root."""
    torch = require("torch", "torch")
    handle = source.handle
    if isinstance(handle, torch.export.ExportedProgram):
        return {
            path: _class_name(cls)
            for node in handle.graph.nodes
            for path, cls in (node.meta.get("nn_module_stack") or {}).values()
        }
    return {path: _class_name(type(module)) for path, module in handle.named_modules()}


def torch_parameters(source: SourceModel) -> set[str]:
    """The source's parameter and buffer names (``features.0.weight``)."""
    torch = require("torch", "torch")
    handle = source.handle
    if isinstance(handle, torch.export.ExportedProgram):
        return set(handle.state_dict)
    return {name for name, _ in handle.named_parameters()} | {
        name for name, _ in handle.named_buffers()
    }


def is_compute(cls: str) -> bool:
    """Whether a module class computes a layer's weighted op (Conv2d, Linear, LSTM, ...)."""
    return bool(_COMPUTE_CLASS.search(cls.rpartition(".")[2]))


def parent(path: str) -> str:
    return path.rpartition(".")[0]


def common_module(paths: Iterable[str]) -> str:
    """The longest module path every one of ``paths`` lies in (``""`` when none is shared)."""
    split = [p.split(".") for p in paths if p]
    if not split:
        return ""
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if any(part != parts[0] for part in parts):
            break
        common.append(parts[0])
    return ".".join(common)


#: ``Converted.meta`` key under which a conversion may record ``{native name: source name}``
#: (:func:`source_names`), so that ``layers(converted)`` names exactly without the source
LAYER_NAMES = "layer_names"
#: what a conversion cache entry's recorded names were made by: raised when the naming changes
#: (2: elementwise ops listed on LiteRT too; 3: ONNX sources on LiteRT), so that an entry never
#: serves stale names
NAMING_VERSION = 3


@dataclass(frozen=True)
class Traced:
    """One quantizable op before naming: the source name traced for it (None: untraced), the
    backend's op type and native names, and the name it falls back to."""

    name: str | None
    op: str
    native: tuple[str, ...]
    fallback: str
    kind: str = "layer"
    weighted: bool = True

    @property
    def key(self) -> str:
        return self.native[0] if self.native else self.fallback


def finish(
    traced: Sequence[Traced], converted: Converted, source: SourceModel | None
) -> list[Layer]:
    """The layers, uniquely named. Without ``source``, names the conversion recorded
    (:data:`LAYER_NAMES`) replace what the converted file alone suggests, so that a listing
    with and without the source agree."""
    recorded = converted.meta.get(LAYER_NAMES) if source is None else None
    found = []
    for t in traced:
        name = recorded.get(t.key) if isinstance(recorded, Mapping) else t.name
        weighted = t.weighted and t.kind == "layer"
        found.append(Layer(name or t.fallback, t.op, t.native, t.kind, weighted))
    return unique(found)


def recorded_names(traced: Sequence[Traced]) -> dict[str, str]:
    return {t.key: t.name for t in traced if t.name}


__all__ = [
    "LAYER_NAMES",
    "NAMING_VERSION",
    "Traced",
    "common_module",
    "finish",
    "is_compute",
    "keras_layers",
    "keras_name",
    "parent",
    "recorded_names",
    "torch_modules",
    "torch_parameters",
]
