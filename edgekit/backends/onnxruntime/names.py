"""Short names for the tensors and nodes that ORT's quantizers generate.

``quantize_static`` and ``quantize_dynamic`` name what they add after the tensor it serves:
``<tensor>_QuantizeLinear``, ``<tensor>_QuantizeLinear_Output``, ``<tensor>_DequantizeLinear``,
``<tensor>_DequantizeLinear_Output``, ``<tensor>_scale``, ``<tensor>_zero_point``,
``<weight>_quantized`` (with ``_scale``/``_zero_point``), each perhaps followed by ``_<n>``.
Real exports have long tensor names (PaddlePaddle's run to 60 characters and more), and every
such name is stored again in each node that reads it: on the PaddlePaddle layout detector
(edgekit.realmodels "layout") they were about 250 KB of a 2.3 MB int8 artifact, 0.312x the
7.4 MB source instead of 0.287x. After quantizing, each generated name becomes a short one
(``q`` and a hex counter) everywhere it occurs: node inputs and outputs, node names,
initializers, value_info, quantization annotations, and the subgraphs of If/Loop/Scan nodes.

What is never renamed: the graph's inputs and outputs (at every level, so that a subgraph's
signature and an outer-scope reference stay consistent) and every name the model had before
quantizing, even one that happens to end in ``_scale``: the source's tensor names stay, so that
activations can still be matched to the float model's by name, and so do node names
(``--keep-float`` names them). One mapping is applied to the whole model, and no short name is
one the model already uses, so the renaming is one-to-one and the graph computes the same.

ORT's own ``qdq_loss_debug`` pairs a QDQ model's pre- and post-quantization activations by these
suffixes; on an edgekit artifact run it on a model quantized without this step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_GENERATED = re.compile(
    r"_(?:QuantizeLinear(?:_Output)?|DequantizeLinear(?:_Output)?|scale|zero_point"
    r"|quantized(?:_scale|_zero_point)?)(?:_\d+)?$"
)


def is_generated(name: str) -> bool:
    """Whether ``name`` has the form of a name ORT's quantizers generate."""
    return bool(_GENERATED.search(name))


def shorten_generated_names(path: Path, source: Path) -> int:
    """Shorten the generated names of the quantized ONNX file at ``path`` in place, keeping
    every name the model ``source`` (what was quantized) already has; how many were renamed."""
    import onnx

    model = onnx.load(str(path))
    before = onnx.load(str(source), load_external_data=False)
    count = shorten_names(model, keep=model_names(before))
    if count:
        onnx.save(model, str(path))
    return count


def shorten_names(model: Any, keep: Iterable[str] = ()) -> int:
    """Rename the generated names of ``model`` (a ModelProto) in place to short unique ones,
    leaving ``keep``, the graph inputs/outputs and every other name as they are; how many names
    were renamed."""
    used = model_names(model)
    protected = set(keep)
    for graph in _graphs(model.graph):
        protected.update(v.name for v in (*graph.input, *graph.output))
    mapping: dict[str, str] = {}
    counter = 0

    def short(name: str) -> str:
        nonlocal counter
        if name not in mapping:
            while True:
                candidate = f"q{counter:x}"
                counter += 1
                if candidate not in used:
                    break
            used.add(candidate)
            mapping[name] = candidate
        return mapping[name]

    def rename(name: str) -> str:
        if not name or name in protected or not _GENERATED.search(name):
            return name
        return short(name)

    for graph in _graphs(model.graph):
        for node in graph.node:
            node.name = rename(node.name)
            for i, name in enumerate(node.input):
                node.input[i] = rename(name)
            for i, name in enumerate(node.output):
                node.output[i] = rename(name)
        for tensor in graph.initializer:
            tensor.name = rename(tensor.name)
        for sparse in graph.sparse_initializer:
            sparse.values.name = rename(sparse.values.name)
            sparse.indices.name = rename(sparse.indices.name)
        for info in graph.value_info:
            info.name = rename(info.name)
        for note in graph.quantization_annotation:
            note.tensor_name = rename(note.tensor_name)
            for entry in note.quant_parameter_tensor_names:
                entry.value = rename(entry.value)
    return len(mapping)


def model_names(model: Any) -> set[str]:
    """Every tensor and node name of ``model``, its subgraphs' included."""
    names: set[str] = set()
    for graph in _graphs(model.graph):
        names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        names.update(t.name for t in graph.initializer)
        for sparse in graph.sparse_initializer:
            names.update((sparse.values.name, sparse.indices.name))
        for node in graph.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
    names.discard("")
    return names


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and, depth first, every subgraph of its nodes (attributes ``g`` and ``graphs``)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)
