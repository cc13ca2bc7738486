"""Format detection, input-shape fixing and ONNX intake (dynamic dims, external data)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_models import linear_model, linear_reference

import edgekit
from edgekit.errors import ModelFormatError, ModelNotFoundError, UsageError
from edgekit.model import TensorSpec, detect_format, fix_shapes, load_model, parse_input_shapes

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def test_parse_input_shapes():
    assert parse_input_shapes(["x=1x3x224x224", "mask=1X8"]) == {
        "x": (1, 3, 224, 224),
        "mask": (1, 8),
    }
    for bad in ["x", "x=", "=1x2", "x=1xax2", "x=0x3"]:
        with pytest.raises(UsageError):
            parse_input_shapes([bad])


def test_fix_shapes_rules():
    notes: list[str] = []
    batch_only = TensorSpec("x", "float32", ("N", 3, 8, 8))
    assert fix_shapes([batch_only], {}, notes)[0].shape == (1, 3, 8, 8)
    assert "batch" in notes[0]
    spatial = TensorSpec("x", "float32", ("N", 3, "H", "W"))
    with pytest.raises(ModelFormatError, match="--input-shape x="):
        fix_shapes([spatial], {}, [])
    assert fix_shapes([spatial], {"x": (2, 3, 5, 7)}, [])[0].shape == (2, 3, 5, 7)
    with pytest.raises(UsageError, match="conflicts"):
        fix_shapes([spatial], {"x": (1, 4, 5, 7)}, [])
    with pytest.raises(UsageError, match="rank"):
        fix_shapes([spatial], {"x": (1, 3)}, [])
    with pytest.raises(UsageError, match="unknown input"):
        fix_shapes([spatial], {"y": (1, 3, 5, 7)}, [])


def test_detect_format(tmp_path):
    cases = {"m.onnx": "onnx", "m.pt2": "torch", "m.keras": "keras", "m.h5": "keras"}
    for name, fmt in cases.items():
        (tmp_path / name).write_bytes(b"x")
        assert detect_format(tmp_path / name) == fmt
    (tmp_path / "noext").write_bytes(b"\x1c\x00\x00\x00TFL3rest")
    assert detect_format(tmp_path / "noext") == "tflite"
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert detect_format(tmp_path / "sm") == "savedmodel"
    (tmp_path / "m.pth").write_bytes(b"x")
    with pytest.raises(ModelFormatError, match="pt2"):
        detect_format(tmp_path / "m.pth")
    with pytest.raises(ModelNotFoundError):
        detect_format(tmp_path / "missing.onnx")


def test_onnx_dynamic_dims_fixed_and_run(tmp_path):
    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(W, B, ("N", "F")), str(path))
    with pytest.raises(ModelFormatError, match="input_shapes"):
        load_model(path)
    source = load_model(path, {"x": (5, 4)})
    assert source.inputs[0].shape == (5, 4)
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(source.run({"x": x})[0], linear_reference(x, W, B), rtol=1e-6)


def test_onnx_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(
        linear_model(W, B, (2, 4)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.data").stat().st_size >= W.nbytes
    source = load_model(path)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(source.run({"x": x})[0], linear_reference(x, W, B), rtol=1e-6)
    report = edgekit.export(path, "onnxruntime", "fp32", output_dir=tmp_path / "out")
    got = edgekit.load(report.artifact).run({"x": x})[0]
    np.testing.assert_allclose(got, linear_reference(x, W, B), rtol=1e-6)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ModelFormatError, match="external data"):
        load_model(path)


def test_describe_counts_parameters_and_ops(tmp_path):
    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(W, B), str(path))
    info = edgekit.describe(path)
    assert info["parameters"] == W.size + B.size
    assert info["ops"] == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert info["inputs"][0]["shape"] == ["N", 4]
