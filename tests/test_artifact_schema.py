"""One sidecar schema: what every backend's export writes conforms to it, and what benchmark and
the other readers get back through ``read_sidecar`` is the same, typed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import linear_model

import edgekit
from edgekit.artifact import SIDECAR_JSON_SCHEMA, check_sidecar, read_sidecar
from edgekit.backends import backend_names, get_backend
from edgekit.errors import ModelFormatError

RNG = np.random.default_rng(5)
W = RNG.standard_normal((6, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def _source(tmp: Path, backend: str) -> Path:
    if "onnx" in get_backend(backend).capabilities.sources:
        path = tmp / "lin.onnx"
        onnx.save(linear_model(W, B, (1, 6)), str(path))
        return path
    keras = pytest.importorskip("keras")
    inp = keras.Input((6,), batch_size=1, name="x")
    dense = keras.layers.Dense(3, activation="relu")
    model = keras.Model(inp, dense(inp))
    dense.set_weights([W, B])
    path = tmp / "lin.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("backend", backend_names())
def test_every_backend_writes_a_sidecar_that_conforms(backend: str, tmp_path: Path) -> None:
    report = edgekit.export(_source(tmp_path, backend), backend, "fp32", output_dir=tmp_path / "o")
    doc = json.loads(report.sidecar.read_text())
    assert check_sidecar(doc) == []
    side = read_sidecar(report.artifact)
    assert side is not None
    session = edgekit.load(report.artifact)
    assert list(side.inputs) == list(session.inputs)
    assert side.backend == backend and side.precision == "fp32"
    assert report.artifact in side.files
    assert doc["artifact"]["sha256"].keys() == {f.name for f in side.files}


def test_schema_violations_are_named(tmp_path: Path) -> None:
    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(W, B, (1, 6)), str(path))
    report = edgekit.export(path, "onnxruntime", "fp32", output_dir=tmp_path / "o")
    doc = json.loads(report.sidecar.read_text())
    doc["source"]["size_bytes"] = -1
    doc["recipe"]["precision"] = 8
    del doc["inputs"]
    problems = check_sidecar(doc)
    assert "$: missing 'inputs'" in problems
    assert "$.source.size_bytes: -1 is below 0" in problems
    assert "$.recipe.precision: expected string, got int" in problems
    report.sidecar.unlink()
    report.sidecar.write_text(json.dumps(doc))
    with pytest.raises(ModelFormatError, match="not a valid edgekit sidecar"):
        read_sidecar(report.artifact)


def test_schema_is_plain_json_schema() -> None:
    """Standard keywords only, so any JSON Schema validator can check sidecars too."""
    allowed = {"$schema", "title", "type", "required", "properties", "items", "enum", "minimum"}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            keys = set(node) - allowed
            assert not keys, keys
            for key, value in node.items():
                if key == "properties":
                    for sub in value.values():
                        walk(sub)
                elif key == "items":
                    walk(value)

    walk(SIDECAR_JSON_SCHEMA)
    assert SIDECAR_JSON_SCHEMA["$schema"].endswith("2020-12/schema")
