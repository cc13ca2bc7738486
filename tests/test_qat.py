"""QAT (edgekit compress --qat) and --precision as-trained: the learned scales reach each
backend's artifact unchanged, and the artifact computes what the QAT model computes.

One tiny digits CNN (16x16, conv-BN-ReLU x2 + linear) is trained for a few steps, QAT'd for one
epoch, saved, and exported as-trained to ONNX Runtime, OpenVINO and TFLite. Scales are read
back from each artifact (ONNX Q/DQ initializers; OpenVINO FakeQuantize ranges; TFLite tensor
quantization parameters read before allocate_tensors) and compared with the ones read from the
QAT model's own graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")
pytest.importorskip("litert_torch")

from edgekit import export  # noqa: E402
from edgekit.compress.api import compress  # noqa: E402
from edgekit.compress.passes import QAT  # noqa: E402
from edgekit.errors import UsageError  # noqa: E402


def _digits(size: int = 16) -> tuple[np.ndarray, ...]:
    from edgekit.samples import split, to_input

    xtr, ytr, xte, yte = split()
    return to_input(xtr, size), ytr, to_input(xte, size), yte


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional
        x = f.relu(self.b1(self.c1(x)))
        x = f.relu(self.b2(self.c2(x)))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    xtr, ytr, xte, yte = _digits()
    model = _Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        i = torch.randint(0, len(ytr), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(xtr[i])), torch.from_numpy(ytr[i])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = tmp_path_factory.mktemp("qat")
    src = out / "net.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(xtr[:1]),)), str(src))
    result = compress(
        str(src),
        [QAT(epochs=1, mode="labels", lr=1e-3)],
        data=xtr[:600],
        labels=ytr[:600],
        eval_data=xte[:200],
        eval_labels=yte[:200],
        output_dir=out / "qat",
    )
    return {"result": result, "src": src, "xte": xte[:64], "out": out}


def _trained(path: Path) -> list[dict]:
    from edgekit.compress.torch_qat import trained_qparams
    from edgekit.intake.pt2_safety import load_pt2

    return trained_qparams(load_pt2(path).module())


def test_qat_pass_writes_a_quantized_program_and_sidecar(qat_run: dict) -> None:
    result = qat_run["result"]
    assert result.path.name == "net.pt2"
    report = result.reports[-1]
    assert report.kind == "qat" and report.metric_after is not None
    assert report.metric_after > 0.8
    qp = _trained(result.path)
    assert sum(q["kind"] == "activation" for q in qp) >= 3
    assert sum(q["kind"] == "weight" for q in qp) == 3
    assert (result.path.parent / "net.compress.json").is_file()
    # 7-bit weights exactly where this machine's int8 kernels saturate (edgekit.cpu)
    from edgekit.cpu import deployment_isa

    bound = 63 if deployment_isa().saturates else 127
    assert {q["quant_range"] for q in qp if q["kind"] == "weight"} == {(-bound, bound)}


def test_qat_weight_range_follows_the_deployment_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.compress.passes import qat_weight_range as weight_range

    monkeypatch.setenv("EDGEKIT_CPU_ISA", "x86-avx2")
    assert weight_range(QAT())[0] is True
    assert weight_range(QAT(reduce_range=False))[0] is False
    monkeypatch.setenv("EDGEKIT_CPU_ISA", "x86-vnni")
    assert weight_range(QAT())[0] is False
    monkeypatch.setenv("EDGEKIT_CPU_ISA", "arm64")
    assert weight_range(QAT())[0] is False
    assert weight_range(QAT(reduce_range=True))[0] is True


def test_as_trained_on_a_float_model_is_refused(qat_run: dict) -> None:
    with pytest.raises(UsageError, match="compress MODEL --qat"):
        export(str(qat_run["src"]), "onnxruntime", "as-trained", output_dir=qat_run["out"] / "x")
    with pytest.raises(UsageError, match="as-trained"):
        export(str(qat_run["result"].path), "onnxruntime", "int8", output_dir=qat_run["out"] / "y")


def test_cli_as_trained_on_a_float_model_exits_2(qat_run: dict) -> None:
    from edgekit.cli import main

    code = main(
        [
            "export",
            str(qat_run["src"]),
            "--target",
            "onnxruntime",
            "--precision",
            "as-trained",
            "-o",
            str(qat_run["out"] / "z"),
        ]
    )
    assert code == 2


def _fake_quant_outputs(qat_run: dict) -> np.ndarray:
    from edgekit.intake.pt2_safety import load_pt2

    module = load_pt2(qat_run["result"].path).module()
    x = torch.from_numpy(qat_run["xte"])
    with torch.no_grad():
        return np.concatenate([module(x[i : i + 1]).numpy() for i in range(len(x))])


def _out_step(trained: list[dict]) -> float:
    return [q for q in trained if q["kind"] == "activation"][-1]["scale"]


def _onnx_qparams(artifact: Path) -> tuple[set, list[np.ndarray]]:
    """An ONNX QDQ graph's per-tensor (scale, zero point) pairs and per-channel weight scales."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(artifact))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            inits[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    q_acts = {
        (np.float32(inits[n.input[1]]).item(), int(inits[n.input[2]]))
        for n in m.graph.node
        if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1
    }
    dq_w = [
        inits[n.input[1]].astype(np.float32)
        for n in m.graph.node
        if n.op_type == "DequantizeLinear" and inits[n.input[1]].size > 1
    ]
    return q_acts, dq_w


def _assert_onnx_keeps(trained: list[dict], artifact: Path) -> None:
    q_acts, dq_w = _onnx_qparams(artifact)
    for q in trained:
        if q["kind"] == "activation":
            assert (np.float32(q["scale"]).item(), q["zero_point"]) in q_acts
        else:
            assert any(np.array_equal(w, q["scale"].astype(np.float32)) for w in dq_w)


def test_onnxruntime_and_openvino_keep_the_trained_scales(qat_run: dict) -> None:
    path = qat_run["result"].path
    trained = _trained(path)
    rep = export(str(path), "onnxruntime", "as-trained", output_dir=qat_run["out"] / "ort")
    assert "no recalibration: scales as trained" in rep.notes
    _assert_onnx_keeps(trained, rep.artifact)
    from edgekit.backends import get_backend

    ref = _fake_quant_outputs(qat_run)
    step = _out_step(trained)
    session = get_backend("onnxruntime").open_session(rep.artifact)
    name = session.inputs[0].name
    got = np.concatenate([session.run({name: x[None]})[0] for x in qat_run["xte"]])
    assert np.abs(got - ref).max() <= step * 1.01

    ov_rep = export(str(path), "openvino", "as-trained", output_dir=qat_run["out"] / "ov")
    import openvino as ov

    ov_model = ov.Core().read_model(str(ov_rep.artifact))
    ranges = []
    for op in ov_model.get_ops():
        if op.get_type_name() == "FakeQuantize":
            lo = op.input_value(1).get_node()
            hi = op.input_value(2).get_node()
            if lo.get_type_name() == "Constant" and hi.get_type_name() == "Constant":
                ranges.append((lo.get_data().ravel(), hi.get_data().ravel(), op.get_levels()))
    for q in trained:
        if q["kind"] != "activation":
            continue
        want_lo = (-128 - q["zero_point"]) * q["scale"]
        want_hi = (127 - q["zero_point"]) * q["scale"]
        assert any(
            lv == 256
            and lo.size == 1
            and np.isclose(lo[0], want_lo, rtol=1e-6, atol=1e-9)
            and np.isclose(hi[0], want_hi, rtol=1e-6, atol=1e-9)
            for lo, hi, lv in ranges
        ), q
    ov_session = get_backend("openvino").open_session(ov_rep.artifact)
    name = ov_session.inputs[0].name
    got = np.concatenate([ov_session.run({name: x[None]})[0] for x in qat_run["xte"]])
    assert np.abs(got - ref).max() <= step * 1.01 + 1e-5


def test_tflite_is_full_integer_at_the_trained_scales(qat_run: dict) -> None:
    from ai_edge_litert.interpreter import Interpreter

    path = qat_run["result"].path
    trained = _trained(path)
    rep = export(str(path), "tflite", "as-trained", output_dir=qat_run["out"] / "tfl")
    assert "no recalibration: scales as trained" in rep.notes
    # Before allocate_tensors: XNNPACK's delegate renames or drops constant tensors.
    details = Interpreter(model_path=str(rep.artifact)).get_tensor_details()
    params = [(np.dtype(d["dtype"]), d["quantization_parameters"]) for d in details]
    for q in trained:
        if q["kind"] == "activation":
            assert any(
                t == np.int8
                and p["scales"].size == 1
                and np.float32(p["scales"][0]) == np.float32(q["scale"])
                and int(p["zero_points"][0]) == q["zero_point"]
                for t, p in params
            ), q
        else:
            s = q["scale"].astype(np.float32)
            assert any(
                t == np.int8
                and p["scales"].size == s.size
                and np.array_equal(p["scales"].astype(np.float32), s)
                for t, p in params
            ), q["name"]
    from edgekit.backends import get_backend

    ref = _fake_quant_outputs(qat_run)
    step = _out_step(trained)
    session = get_backend("tflite").open_session(rep.artifact)
    name = session.inputs[0].name
    got = np.concatenate([session.run({name: x[None]})[0] for x in qat_run["xte"]])
    # int8 in and out: one step of the output grid, plus one of the input's own rounding
    assert np.abs(got - ref).max() <= 2 * step * 1.01


def test_cli_compress_qat_then_export_as_trained(
    qat_run: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command-line flow end to end: compress --qat from .npz/.npy files, then export
    --precision as-trained --json; the artifact holds the scales the CLI's QAT trained."""
    import json

    from edgekit.cli import main

    out = qat_run["out"] / "cli"
    out.mkdir()
    xtr, ytr, _, _ = _digits()
    np.savez(out / "train.npz", x=xtr[:400])
    np.save(out / "labels.npy", ytr[:400])
    argv = ["compress", str(qat_run["src"]), "--qat", "--qat-epochs", "1", "--qat-lr", "1e-3"]
    argv += ["--data", str(out / "train.npz"), "--labels", str(out / "labels.npy")]
    assert main([*argv, "-o", str(out / "qat"), "--json", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    qat_pass = [p for p in doc["passes"] if p["kind"] == "qat"]
    assert qat_pass and qat_pass[0]["lr"] == 1e-3 and qat_pass[0]["epochs"] == 1
    model = out / "qat" / "net.pt2"
    argv = ["export", str(model), "--target", "onnxruntime", "--precision", "as-trained"]
    assert main([*argv, "-o", str(out / "ort"), "--json", "-q"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert "no recalibration: scales as trained" in rep["notes"]
    side = json.loads(Path(rep["sidecar"]).read_text())
    facts = side["backend_details"]["as_trained"]
    assert facts["recalibrated"] is False and facts["training"]["lr"] == 1e-3
    _assert_onnx_keeps(_trained(model), Path(rep["artifact"]))
