"""Layers are named by the source model's names on every backend (issue 11).

For each backend and source kind the listed layer names are checked against the source itself
(torch ``named_modules()``, Keras ``model.layers``, the ONNX file's nodes read with onnx), the
same torch model must give the same names on all three backends, and each layer's native names
must address that op in the converted model, checked with the backend's own tools: the ONNX
graph and ORT's pre-processing, OpenVINO's IR and NNCF's ignored scope, ai-edge-quantizer
leaving exactly the selected ops float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx_models import conv_model, linear_model
from torch import nn

from edgekit import convert_cache, samples
from edgekit.backends import get_backend
from edgekit.backends.base import Converted
from edgekit.backends.openvino.layers import source_names
from edgekit.backends.tflite.layers import LAYER_NAMES, scope_regex
from edgekit.layers import Layer
from edgekit.model import SourceModel, load_model
from edgekit.prepare import prepare

BACKENDS = ("onnxruntime", "openvino", "tflite")
WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Awkward(nn.Module):
    """Names the IRs mangle or lose: a conv with a BatchNorm folded into it, ``patch_embed``
    (an underscore) and ``convT`` (a capital) in a depthwise and a transposed conv, a nested
    ``body.0.fc1``, and ``fc`` called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.patch_embed = nn.Conv2d(8, 8, 1, groups=8)
        self.convT = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.body = nn.Sequential(Inner())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(self.convT(self.patch_embed(self.stem(x))).mean((2, 3)))
        return self.fc(y) + self.fc(y * 2)


class Attention(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.proj(weights @ v)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x)


class MaskedAttention(Attention):
    """Attention with an additive mask buffer on the scores (Locality Self-Attention's -1e4
    diagonal): the mask Add follows a MatMul as a Linear's bias does, but is no bias."""

    def __init__(self, tokens: int = 5, dim: int = 16) -> None:
        super().__init__(dim)
        self.register_buffer("mask", torch.eye(tokens) * -1e4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale + self.mask, dim=-1)
        return self.proj(weights @ v)


class MaskedBlock(Block):
    def __init__(self) -> None:
        super().__init__()
        self.attn = MaskedAttention()


def _torch_source(module: nn.Module, shape: tuple[int, ...]) -> SourceModel:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics that make the folding change weights
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(1, 2)
    return load_model(module.eval(), example_inputs=(torch.zeros(shape),))


def _modules(module: nn.Module) -> list[str]:
    """The reference: the module paths of the source's weighted layers."""
    return [name for name, m in module.named_modules() if isinstance(m, WEIGHTED)]


def _convert(backend: str, source: SourceModel, tmp: Path) -> Converted:
    converted, _ = convert_cache.converted(get_backend(backend), source, tmp / backend)
    return converted


def _names(layers: list[Layer]) -> list[str]:
    # Elementwise ops (kind "op", not on OpenVINO) are not layers every backend lists.
    return [layer.name for layer in layers if layer.kind == "layer"]


def _assert_natives_exist(backend: str, converted: Converted, layers: list[Layer]) -> None:
    """Each layer's first native name names an op of that type in the converted file, read with
    the backend's own reader (not the code under test)."""
    if backend == "onnxruntime":
        graph = onnx.load(str(converted.path("model.onnx"))).graph
        ops = {n.name: n.op_type for n in graph.node}
    elif backend == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(converted.path("model.xml")))
        ops = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops()}
    else:
        from ai_edge_litert.tools import flatbuffer_utils as fbu

        flat = fbu.read_model_from_bytearray(bytearray(converted.path().read_bytes()))
        # ai-edge-quantizer's op scope: the output tensor names, each followed by ";"
        ops = {
            ";".join(g.tensors[i].name.decode() for i in op.outputs) + ";": fbu.opcode_to_name(
                flat, op.opcodeIndex
            )
            for g in flat.subgraphs
            for op in g.operators
        }
    assert {layer.native[0]: layer.op for layer in layers} == {
        layer.native[0]: ops.get(layer.native[0]) for layer in layers
    }, backend


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    return samples.train_torch_cnn(width=8, epochs=1, cache_dir=tmp_path_factory.mktemp("c"))


@pytest.fixture(scope="module")
def cnn_converted(cnn: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    source = _torch_source(cnn, (1, 1, 32, 32))
    tmp = tmp_path_factory.mktemp("cnn")
    return {"source": source, **{b: _convert(b, source, tmp) for b in BACKENDS}}


# ---------------------------------------------------------------- names


def test_torch_cnn_has_the_same_module_names_on_every_backend(cnn, cnn_converted):
    source = cnn_converted["source"]
    expected = _modules(cnn)
    assert expected == ["0", "2", "5", "9", "11"]
    for backend in BACKENDS:
        layers = get_backend(backend).layers(cnn_converted[backend], source)
        assert sorted(_names(layers)) == sorted(expected), backend
        _assert_natives_exist(backend, cnn_converted[backend], layers)
        # Module paths without "_" are traced from the converted file alone on every backend.
        assert _names(get_backend(backend).layers(cnn_converted[backend])) == _names(layers)


@pytest.mark.parametrize(
    ("model", "shape", "expected"),
    [
        (
            Awkward,
            (1, 3, 16, 18),
            ["stem.0", "patch_embed", "convT", "body.0.fc1", "body.0.fc2", "fc", "fc#2"],
        ),
        (Block, (1, 5, 16), ["attn.q", "attn.k", "attn.v", "attn", "attn#2", "attn.proj"]),
    ],
    ids=["awkward-names", "attention"],
)
def test_torch_names_agree_across_backends(model, shape, expected, tmp_path):
    module = model()
    source = _torch_source(module, shape)
    # The reference: the weighted modules, a module called twice once more, and the module the
    # attention's two activation matmuls run in.
    reference = _modules(module) + (["fc#2"] if model is Awkward else ["attn", "attn#2"])
    assert sorted(reference) == sorted(expected)
    found = {}
    for backend in BACKENDS:
        converted = _convert(backend, source, tmp_path)
        found[backend] = get_backend(backend).layers(converted, source)
        assert sorted(_names(found[backend])) == sorted(expected), backend
        _assert_natives_exist(backend, converted, found[backend])
        if backend != "openvino":
            # ORT's node metadata and litert-torch's tensor names hold the module paths.
            assert _names(get_backend(backend).layers(converted)) == _names(found[backend])
        else:
            # The IR loses them (fx node names only); names the conversion records restore them.
            recorded = Converted(
                converted.folder,
                converted.files,
                {**converted.meta, LAYER_NAMES: source_names(converted, source)},
            )
            assert get_backend(backend).layers(recorded) == found[backend]
    ops = {b: {x.name: x.op for x in found[b] if x.kind == "layer"} for b in BACKENDS}
    if model is Awkward:
        assert ops["openvino"]["patch_embed"] == "GroupConvolution"
        assert ops["tflite"]["patch_embed"] == "DEPTHWISE_CONV_2D"
        assert ops["onnxruntime"]["convT"] == "ConvTranspose"
    else:
        assert {ops[b]["attn"] for b in BACKENDS} == {"MatMul", "FULLY_CONNECTED"}


def test_keras_layers_are_named_by_keras_layer_names(tmp_path):
    keras = pytest.importorskip("keras")
    # Keras numbers layer names per process (conv2d_5 after other tests made conv2d..): a
    # fresh session gives the names the listing is checked against below.
    keras.backend.clear_session()
    model = samples.train_keras_cnn(width=8, epochs=1)
    expected = [
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
    ]
    assert expected == ["conv2d", "conv2d_1", "conv2d_2", "dense", "logits"]
    source = load_model(model)
    for backend in BACKENDS:
        converted = _convert(backend, source, tmp_path)
        layers = get_backend(backend).layers(converted, source)
        assert _names(layers) == expected, backend
        _assert_natives_exist(backend, converted, layers)
        alone = _names(get_backend(backend).layers(converted))
        if backend == "openvino":
            # The TF frontend drops the Convolutions' names; only the source's kernels tell.
            assert alone[3:] == expected[3:]
        else:
            assert alone == expected


def _onnx_source(path: Path, shape: tuple[int, ...]) -> SourceModel:
    source = load_model(path)
    feed = {source.inputs[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    return prepare(source, [feed])  # as the exporter does before converting


def test_onnx_layers_are_named_by_onnx_node_names(cnn, tmp_path):
    torch_file = tmp_path / "digits.onnx"
    # Written by torch itself, so its nodes carry torch's module metadata: an ONNX source is
    # still named by its node names.
    torch.onnx.export(cnn, (torch.zeros(1, 1, 32, 32),), str(torch_file), dynamo=True)
    helper_file = tmp_path / "conv.onnx"
    onnx.save(conv_model(np.ones((3, 2, 3, 3), np.float32)), str(helper_file))
    for path, shape in ((torch_file, (1, 1, 32, 32)), (helper_file, (1, 2, 6, 6))):
        nodes = onnx.load(str(path)).graph.node
        expected = [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")]
        source = _onnx_source(path, shape)
        for backend in ("onnxruntime", "openvino"):
            converted = _convert(backend, source, tmp_path / path.stem)
            layers = get_backend(backend).layers(converted, source)
            assert _names(layers) == expected
            _assert_natives_exist(backend, converted, layers)
            assert _names(get_backend(backend).layers(converted)) == expected


@pytest.mark.xfail(
    strict=True,
    reason="the prepare stage's onnxslim fuses MatMul + Add into a Gemm named after the "
    "MatMul's output tensor ('xw'), so the file's node name 'matmul' is gone before conversion",
)
def test_onnx_matmul_add_keeps_its_node_name(tmp_path):
    path = tmp_path / "linear.onnx"
    w, b = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    onnx.save(linear_model(w, b, (1, 4)), str(path))
    source = _onnx_source(path, (1, 4))
    converted = _convert("onnxruntime", source, tmp_path)
    assert _names(get_backend("onnxruntime").layers(converted, source)) == ["matmul"]


def test_elementwise_ops_are_named_alike_on_onnxruntime_and_tflite(tmp_path):
    """The ops both quantizers quantize on their own are listed (kind "op") under one name on
    both: the mask Add and the Softmax in ``attn``, the residual Add in the root module. A
    Linear's bias Add is part of its layer, not an op; the mask Add after QK^T is one."""
    source = _torch_source(MaskedBlock(), (1, 5, 16))
    ops = {}
    for backend in ("onnxruntime", "tflite"):
        converted = _convert(backend, source, tmp_path)
        layers = get_backend(backend).layers(converted, source)
        ops[backend] = {layer.name for layer in layers if layer.kind == "op"}
        _assert_natives_exist(backend, converted, layers)
        assert {"attn:Add", "attn:Softmax", "Add"} <= ops[backend], backend
        # no bias Add of q/k/v/proj listed as an op of its own
        assert not any(n.startswith("attn.") for n in ops[backend]), backend
    # the attention's scale Mul is the only other op, on both
    assert ops["onnxruntime"] == ops["tflite"] == {"attn:Add", "attn:Softmax", "attn:Mul", "Add"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_products_of_two_activations_are_the_unweighted_layers(backend, tmp_path):
    """QK^T and AV (``attn``, ``attn#2``) read no weight; q, k, v and proj do: what the gate's
    speed step may move to float without losing a weight byte."""
    source = _torch_source(Block(), (1, 5, 16))
    layers = get_backend(backend).layers(_convert(backend, source, tmp_path), source)
    unweighted = {layer.name for layer in layers if layer.kind == "layer" and not layer.weighted}
    assert unweighted == {"attn", "attn#2"}
    assert all(not layer.weighted for layer in layers if layer.kind == "op")


# ---------------------------------------------------------------- native names


def test_ort_native_names_are_the_nodes_ort_excludes(cnn_converted, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    converted, source = cnn_converted["onnxruntime"], cnn_converted["source"]
    layers = get_backend("onnxruntime").layers(converted, source)
    first_dense = next(layer for layer in layers if layer.name == "9")
    out = tmp_path / "dynamic.onnx"
    quantize_dynamic(
        str(converted.path()),
        str(out),
        op_types_to_quantize=["Gemm", "MatMul"],
        nodes_to_exclude=list(first_dense.native),
        weight_type=QuantType.QInt8,
    )
    after = {n.name: n.op_type for n in onnx.load(str(out)).graph.node}
    # quantize_dynamic renames each Gemm to "<name>_MatMul" before it reads nodes_to_exclude;
    # the excluded one stays a float MatMul, the other dense layer became MatMulInteger.
    assert [after.get(n) for n in first_dense.native] == [None, "MatMul"]
    other = next(layer for layer in layers if layer.name == "11")
    assert not any(after.get(n) == "MatMul" for n in other.native)
    assert "MatMulInteger" in after.values()

    # A torch Linear on a 3-D input is MatMul + Add; the pre-processing quantize_static runs
    # fuses them into a Gemm with another name, which native lists second.
    block = _torch_source(Block(), (1, 5, 16))
    fp32 = _convert("onnxruntime", block, tmp_path)
    layers = get_backend("onnxruntime").layers(fp32, block)
    quant_pre_process(str(fp32.path()), str(tmp_path / "pre.onnx"))
    pre = {n.name for n in onnx.load(str(tmp_path / "pre.onnx")).graph.node}
    linears = [layer for layer in layers if layer.name.startswith("attn.")]
    assert len(linears) == 4
    assert all(layer.native[0] not in pre and layer.native[1] in pre for layer in linears)
    assert all(layer.native[0] in pre for layer in layers if layer not in linears)


def test_openvino_native_names_are_what_nncf_ignores(cnn_converted):
    import nncf
    import openvino as ov

    converted, source = cnn_converted["openvino"], cnn_converted["source"]
    layers = get_backend("openvino").layers(converted, source)
    model = ov.Core().read_model(str(converted.path("model.xml")))
    keep = next(layer for layer in layers if layer.name == "9")
    # NNCF validates an ignored scope: a name that is no node of its graph raises.
    compressed = nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT8_ASYM,
        ignored_scope=nncf.IgnoredScope(names=list(keep.native)),
    )
    weights = {
        op.get_friendly_name(): _weight_type(op)
        for op in compressed.get_ordered_ops()
        if op.get_type_name() == "MatMul"
    }
    assert weights[keep.native[0]] == "f32"
    other = next(layer for layer in layers if layer.name == "11")
    assert weights[other.native[0]] in ("u8", "i8")


def _weight_type(op: Any) -> str:
    node = op.input_value(1).get_node()
    while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
        node = node.input_value(0).get_node()
    return node.get_output_element_type(0).get_type_name()


def test_tflite_native_scope_regex_selects_exactly_that_op(cnn_converted):
    from ai_edge_litert.tools import flatbuffer_utils as fbu
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    converted, source = cnn_converted["tflite"], cnn_converted["source"]
    layers = get_backend("tflite").layers(converted, source)
    keep = [layer for layer in layers if layer.name in ("2", "11")]
    q = quantizer.Quantizer(bytearray(converted.path().read_bytes()))
    q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    q.update_quantization_recipe(
        regex=scope_regex([n for layer in keep for n in layer.native]),
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        op_config=qtyping.OpQuantizationConfig(),
        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE,
    )
    result = fbu.read_model_from_bytearray(bytearray(q.quantize().quantized_model))
    float_ops = _float_weight_outputs(result, fbu)
    # The float ones are exactly the kept ones (found by their output tensors' names).
    assert float_ops == {layer.native[0] for layer in keep}


def _float_weight_outputs(model: Any, fbu: Any) -> set[str]:
    """Scopes (output names + ';') of the conv/FC ops whose weights stayed float32."""
    graph = model.subgraphs[0]
    found = set()
    for op in graph.operators:
        if fbu.opcode_to_name(model, op.opcodeIndex) not in (
            "CONV_2D",
            "DEPTHWISE_CONV_2D",
            "FULLY_CONNECTED",
        ):
            continue
        weight = graph.tensors[op.inputs[1]]
        if weight.type == 0:  # TensorType.FLOAT32
            found.add(";".join(graph.tensors[i].name.decode() for i in op.outputs) + ";")
    return found
