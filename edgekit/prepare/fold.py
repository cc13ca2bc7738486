"""Folding rewrites on an ONNX graph: ``Constant`` nodes into initializers, and
``BatchNormalization`` into the ``Conv`` before it, and the four-node hardswish into one op.

Both matter for quantization, not only for tidiness: ONNX Runtime's and OpenVINO's quantizers
quantize a Conv's weights only when they are an initializer. Weights produced by a ``Constant``
node (PaddlePaddle's exporter writes them so) stay float while the activations around them get
Q/DQ pairs, and an "int8" artifact comes out larger than its source. A BatchNormalization left
after a Conv is one more float op between quantized ones, and its scale belongs in the weights.

Each function takes a ModelProto, returns a new one (the input is not modified) and counts of
what it changed. Only the main graph is rewritten: subgraphs (If/Loop bodies) keep their nodes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

# Constant attributes (opset 12+) that hold a value directly, and the dtype each one means.
_SCALAR_ATTRS = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def _copy(model: Any) -> Any:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _constant_tensor(node: Any) -> Any | None:
    """The TensorProto a Constant node produces, or None for forms left alone (sparse,
    strings)."""
    from onnx import helper, numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in _SCALAR_ATTRS:
            value = helper.get_attribute_value(attr)
            return numpy_helper.from_array(np.asarray(value, dtype=_SCALAR_ATTRS[attr.name]))
    return None


def constants_to_initializers(model: Any) -> tuple[Any, dict[str, int]]:
    """Move every ``Constant`` node of the main graph into an initializer of the same name."""
    out = _copy(model)
    graph = out.graph
    graph_outputs = {o.name for o in graph.output}
    kept, moved = [], 0
    for node in graph.node:
        tensor = _constant_tensor(node) if node.op_type == "Constant" else None
        # A graph output has to be produced by a node for some runtimes: leave that one.
        if tensor is None or node.output[0] in graph_outputs:
            kept.append(node)
            continue
        init = graph.initializer.add()
        init.CopyFrom(tensor)
        init.name = node.output[0]
        moved += 1
    if out.ir_version < 4 and moved:
        # Before IR 4 an initializer must also be declared as a graph input.
        from onnx import helper

        for init in graph.initializer[len(graph.initializer) - moved :]:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    del graph.node[:]
    graph.node.extend(kept)
    return out, {"constants_folded": moved}


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def fold_batchnorm(model: Any) -> tuple[Any, dict[str, int]]:
    """Fold each inference-mode BatchNormalization that directly follows a Conv (whose output
    nothing else reads) into that Conv's weights and bias.

    y = s * (conv(x, W) + b - mean) + B with s = scale / sqrt(var + eps) is conv(x, s W) +
    s (b - mean) + B, with s applied per output channel (W's first axis, whatever the groups).
    """
    from onnx import numpy_helper

    out = _copy(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: Counter[str] = Counter(i for n in graph.node for i in n.input)
    for sub_reader in _subgraph_inputs(graph):
        readers[sub_reader] += 1
    graph_outputs = {o.name for o in graph.output}
    used_names = set(inits) | set(producer) | {i.name for i in graph.input}
    dropped: set[int] = set()
    folded = 0
    for node in graph.node:
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        conv = producer.get(node.input[0])
        if (
            conv is None
            or conv.op_type != "Conv"
            or conv.domain not in ("", "ai.onnx")
            or readers[conv.output[0]] != 1
            or conv.output[0] in graph_outputs
            or any(o for o in node.output[1:])  # training outputs in use
            or _attr(node, "training_mode", 0)
            or not _attr(node, "spatial", 1)
            or not all(name in inits for name in node.input[1:5])
            or conv.input[1] not in inits
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
        ):
            continue
        scale, bias, mean, var = (
            numpy_helper.to_array(inits[n]).astype(np.float64) for n in node.input[1:5]
        )
        w_init = inits[conv.input[1]]
        w = numpy_helper.to_array(w_init)
        if w.dtype.kind != "f" or w.shape[0] != scale.shape[0]:
            continue
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else 0.0
        s = scale / np.sqrt(var + float(_attr(node, "epsilon", 1e-5)))
        new_w = (w.astype(np.float64) * s.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        new_b = ((b - mean) * s + bias).astype(w.dtype)
        # New names: the old weights may be shared with another Conv that is not folded.
        w_name = _fresh(f"{conv.input[1]}_bnfold", used_names)
        b_name = _fresh(f"{conv.name or conv.output[0]}_bnfold_bias", used_names)
        graph.initializer.append(numpy_helper.from_array(new_w, w_name))
        graph.initializer.append(numpy_helper.from_array(new_b, b_name))
        inputs = [conv.input[0], w_name, b_name]
        del conv.input[:]
        conv.input.extend(inputs)
        conv.output[0] = node.output[0]
        dropped.add(id(node))
        folded += 1
    if folded:
        nodes = [n for n in graph.node if id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused_initializers(graph)
        produced = {o for n in graph.node for o in n.output}
        kept_info = [v for v in graph.value_info if v.name in produced or v.name in inits]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    return out, {"batchnorm_folded": folded}


def _fresh(name: str, used: set[str]) -> str:
    candidate, i = name, 1
    while candidate in used:
        candidate, i = f"{name}_{i}", i + 1
    used.add(candidate)
    return candidate


def _subgraph_inputs(graph: Any) -> list[str]:
    """Names subgraphs read from outer scopes (counted as readers so nothing they need moves)."""
    names: list[str] = []
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for sub in subs:
                names += [i for n in sub.node for i in n.input]
                names += _subgraph_inputs(sub)
    return names


def _drop_unused_initializers(graph: Any) -> None:
    read = {i for n in graph.node for i in n.input} | set(_subgraph_inputs(graph))
    read |= {o.name for o in graph.output}
    gone = {t.name for t in graph.initializer if t.name not in read}
    keep = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # Before IR 4 initializers are declared as graph inputs too: those go with them, or they
    # would become inputs the caller has to feed.
    inputs = [i for i in graph.input if i.name not in gone]
    del graph.input[:]
    graph.input.extend(inputs)


def _scalar(inits: dict[str, Any], name: str) -> float | None:
    from onnx import numpy_helper

    if name not in inits:
        return None
    value = numpy_helper.to_array(inits[name])
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind == "f" else None


def fuse_hardswish(model: Any) -> tuple[Any, dict[str, int]]:
    """Replace ``x * clip(x + 3, 0, 6) / 6`` (how PaddlePaddle and older exporters write
    hardswish: four nodes) by one ``HardSwish`` (opset 14; an older graph is lifted with ONNX's
    version converter, and the step's check covers the lift too).

    Four float ops become one, and the quantizers put Q/DQ pairs around the one instead of
    around the Add, the Clip and the Mul: a smaller artifact with fewer rounding points.
    """
    from onnx import helper, version_converter

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: Counter[str] = Counter(i for n in graph.node for i in n.input)
    for name in _subgraph_inputs(graph):
        readers[name] += 1
    for o in graph.output:
        readers[o.name] += 1

    def near(name: str, want: float) -> bool:
        got = _scalar(inits, name)
        return got is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))

    matches = []  # (x, the Add, Clip, Mul nodes, the last node)
    for last in graph.node:
        divides = last.op_type == "Div" and near(last.input[1], 6.0)
        if divides or (last.op_type == "Mul" and near(last.input[1], 1 / 6)):
            scaled = last.input[0]
        elif last.op_type == "Mul" and near(last.input[0], 1 / 6):
            scaled = last.input[1]
        else:
            continue
        mul = producer.get(scaled)
        if mul is None or mul.op_type != "Mul" or readers[scaled] != 1:
            continue
        for x, clipped in (tuple(mul.input), tuple(reversed(mul.input))):
            clip = producer.get(clipped)
            if clip is None or clip.op_type != "Clip" or readers[clipped] != 1:
                continue
            if len(clip.input) < 3 or not (near(clip.input[1], 0.0) and near(clip.input[2], 6.0)):
                continue
            add = producer.get(clip.input[0])
            if add is None or add.op_type != "Add" or readers[clip.input[0]] != 1:
                continue
            others = [i for i in add.input if i != x]
            if len(add.input) != 2 or len(others) != 1 or not near(others[0], 3.0):
                continue
            matches.append((x, add, clip, mul, last))
            break
    if not matches:
        return model, {"hardswish_fused": 0}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    out = version_converter.convert_version(model, 14) if opset < 14 else _copy(model)
    names = {id(n): i for i, n in enumerate(graph.node)}
    # The version converter keeps node order, so the matches carry over by position.
    drop = {names[id(n)] for m in matches for n in m[1:]}
    fused = {
        names[id(m[4])]: helper.make_node(
            "HardSwish", [m[0]], [m[4].output[0]], name=f"{m[4].name or m[4].output[0]}_hardswish"
        )
        for m in matches
    }
    nodes = []
    for i, node in enumerate(out.graph.node):
        if i in fused:
            nodes.append(fused[i])
        elif i not in drop:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    _drop_unused_initializers(out.graph)
    return out, {"hardswish_fused": len(matches), "opset": max(opset, 14)}
