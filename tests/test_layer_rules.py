"""Layer rules: one pattern means the same layer on every backend, each mapped onto the backend's
own mechanism, and a rule the backend cannot honour is refused before any work.

The check of each artifact reads it independently of edgekit: the ONNX graph (does the layer's
weight come through a DequantizeLinear?), the OpenVINO IR (int8 weight constants), the TFLite
flatbuffer through LiteRT's interpreter (the dtype of each layer's weight tensor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import feeds

import edgekit
from edgekit.errors import UsageError
from edgekit.layers import Layer, Rule, assign, load_rules_file, parse_rules

EXAMPLE = (torch.zeros(1, 1, 32, 32),)
# The digits CNN is an nn.Sequential: its layers are named by their index in it.
LAYERS = ["0", "2", "5", "9", "11"]


def _export(torch_cnn, digits, tmp_path, target, **fields):
    x_train, _, x_test, _ = digits
    return edgekit.export(
        torch_cnn,
        target,
        "int8",
        example_inputs=EXAMPLE,
        output_dir=tmp_path / target,
        calibration=feeds(x_train[:32], "input"),
        eval_data=feeds(x_test[:8], "input"),
        eval_samples=8,
        **fields,
    )


def _quantized_layers_onnx(path) -> list[bool]:
    import onnx

    model = onnx.load(str(path))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return [
        producers.get(n.input[1]) == "DequantizeLinear"
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul")
    ]


def _quantized_layers_openvino(path) -> list[bool]:
    import openvino as ov

    model = ov.Core().read_model(str(path))

    def int8_weight(op) -> bool:
        node = op.input_value(1).get_node()
        # int8 weights reach the layer as Constant(i8) -> Convert -> [Subtract] -> Multiply
        for _ in range(4):
            if node.get_type_name() == "Constant":
                return node.get_output_element_type(0).get_type_name() == "i8"
            node = node.input_value(0).get_node()
        return False

    return [
        int8_weight(op)
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
        and op.input_value(1).get_node().get_type_name() != "Parameter"
    ]


def _quantized_layers_tflite(path) -> list[bool]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    layer_ops = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    return [
        tensors[op["inputs"][1]]["dtype"] == np.int8
        for op in interp._get_ops_details()
        if op["op_name"] in layer_ops
    ]


QUANTIZED_LAYERS = {
    "onnxruntime": _quantized_layers_onnx,
    "openvino": _quantized_layers_openvino,
    "tflite": _quantized_layers_tflite,
}


@pytest.mark.parametrize("backend", sorted(QUANTIZED_LAYERS))
def test_one_pattern_keeps_the_same_layer_float_on_every_backend(
    backend, torch_cnn, digits, tmp_path
):
    full = _export(torch_cnn, digits, tmp_path / "full", backend)
    kept = _export(torch_cnn, digits, tmp_path / "kept", backend, keep_float=("0", "1[01]"))
    read = QUANTIZED_LAYERS[backend]
    assert read(full.artifact) == [True] * 5
    # The first conv ("0") and the last Linear ("11"; "1[01]" also names "10", a ReLU, which is
    # not a layer) stay float; the rest is int8, in graph order.
    assert read(kept.artifact) == [False, True, True, True, False]
    side = json.loads(kept.sidecar.read_text())
    assert side["backend_details"]["layer_rules"]["assigned"] == {"0": "float", "11": "float"}


def test_layer_names_are_the_same_on_every_backend(torch_cnn):
    from edgekit.layer_report import list_layers

    for backend in QUANTIZED_LAYERS:
        names = [layer.name for layer in list_layers(torch_cnn, backend, example_inputs=EXAMPLE)]
        assert names == LAYERS, backend


def test_int16_layers_on_tflite_have_int16_activations(torch_cnn, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    report = _export(
        torch_cnn, digits, tmp_path, "tflite", rules=[{"pattern": "11", "precision": "int16"}]
    )
    interp = Interpreter(model_path=str(report.artifact))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    fcs = [op for op in interp._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    # The last Linear reads int16 activations with int8 weights; the one before stays int8.
    assert tensors[fcs[-1]["inputs"][0]]["dtype"] == np.int16
    assert tensors[fcs[-1]["inputs"][1]]["dtype"] == np.int8
    assert tensors[fcs[0]["inputs"][0]]["dtype"] == np.int8


@pytest.mark.parametrize(
    ("backend", "precision", "rule", "names"),
    [
        ("onnxruntime", "int8", "int16", "tflite"),
        ("openvino", "int8", "fp16", None),
        ("openvino", "fp16", "float", "onnxruntime or target tflite"),
    ],
)
def test_a_rule_the_backend_cannot_honour_is_refused_at_plan_time(
    backend, precision, rule, names, tmp_path
):
    import onnx
    from onnx_models import linear_model

    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(np.ones((4, 3), np.float32), np.zeros(3, np.float32), (1, 4)), path)
    # The message names the backends that can, or says what this one can when none can.
    expected = f"target {names} can" if names else "can give layers int8, float$"
    with pytest.raises(UsageError, match=expected) as err:
        edgekit.export(
            path,
            backend,
            precision,
            output_dir=tmp_path / "o",
            rules=[{"pattern": "x", "precision": rule}],
        )
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o").exists()


def test_last_matching_rule_wins_and_a_rule_matching_nothing_is_an_error():
    layers = [Layer(n, "Conv", (f"node_{n}",)) for n in ("conv1", "conv10", "fc")]
    rules = parse_rules(
        [
            {"pattern": ".*", "precision": "float"},
            {"pattern": "conv1.*", "precision": "int8"},
            ("conv10", "int16"),
        ]
    )
    # Whole-name matching: "conv1.*" names conv1 and conv10; the later rule wins for conv10.
    assert assign(layers, rules) == {"conv1": "int8", "conv10": "int16", "fc": "float"}
    with pytest.raises(UsageError, match=r"'conv' matches no layer.*'\.\*conv\.\*'"):
        assign(layers, [Rule("conv", "float")])
    with pytest.raises(UsageError, match="precision 'int4' for 'fc' is not one of"):
        parse_rules([{"pattern": "fc", "precision": "int4"}])
    with pytest.raises(UsageError, match="not a valid regular expression"):
        assign(layers, [Rule("conv(", "float")])


def test_rules_file_toml_and_json(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text(
        '[[rules]]\npattern = ".*"\nprecision = "int8"\n\n'
        '[[rules]]\npattern = "head"\nprecision = "float"\n'
    )
    as_json = tmp_path / "r.json"
    as_json.write_text(json.dumps({"rules": [[".*", "int8"], ["head", "float"]]}))
    expected = (Rule(".*", "int8"), Rule("head", "float"))
    assert load_rules_file(toml) == expected
    assert load_rules_file(as_json) == expected
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\npattern = "x"\n')
    with pytest.raises(UsageError, match="exactly the keys 'pattern' and 'precision'"):
        load_rules_file(bad)
    with pytest.raises(UsageError, match="no such file"):
        load_rules_file(tmp_path / "missing.toml")


def test_float_rule_reaches_the_mul_ort_expands_a_hardswish_into(digits, tmp_path):
    """ORT's pre-processing expands HardSwish into HardSigmoid + Mul, unnamed; ORT quantizes
    the Mul. Keeping everything float must leave no QuantizeLinear at all in the artifact (a
    real PP-LCNet kept 28 int8 Muls that no rule could reach), and the HardSwish is an op a
    rule can name."""
    import onnx

    from edgekit.layer_report import list_layers

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.Hardswish(), torch.nn.Conv2d(8, 4, 3)
    ).eval()
    names = {
        layer.name: layer.kind
        for layer in list_layers(model, "onnxruntime", example_inputs=EXAMPLE)
    }
    assert names == {"0": "layer", "1:HardSwish": "op", "2": "layer"}

    def quantize_nodes(**fields) -> int:
        report = _export(model, digits, tmp_path / str(len(fields)), "onnxruntime", **fields)
        graph = onnx.load(str(report.artifact)).graph
        return sum(n.op_type == "QuantizeLinear" for n in graph.node)

    assert quantize_nodes() > 0
    assert quantize_nodes(keep_float=("0", "2")) > 0  # the HardSwish's Mul is still int8
    assert quantize_nodes(keep_float=(".*",)) == 0
