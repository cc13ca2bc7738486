"""The plan stage refuses what a backend cannot do before anything is loaded.

Every refusal a backend declares in its Capabilities is triggered here against a corrupt model
file: the error must be the plan's UsageError with the declared reason, not the loader's
ModelFormatError, which proves the request was refused before the file was read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgekit
from edgekit.backends import backend_names, get_backend
from edgekit.errors import ModelFormatError, UsageError, api_spelling
from edgekit.recipe import Recipe

_SUFFIX = {"onnx": ".onnx", "keras": ".keras", "torch": ".pt2", "tflite": ".tflite"}


def _rules() -> list[tuple[str, object]]:
    return [(n, rule) for n in backend_names() for rule in get_backend(n).capabilities.unsupported]


def _value(field: str, values: tuple | None) -> object:
    if values:
        return values[0]
    default = getattr(Recipe(), field)
    return ("some_node",) if isinstance(default, tuple) else not default


@pytest.mark.parametrize("backend,rule", _rules(), ids=lambda r: getattr(r, "field", r))
def test_declared_refusal_comes_before_loading(backend: str, rule, tmp_path: Path) -> None:
    caps = get_backend(backend).capabilities
    fmt = next(f for f in caps.sources if f in _SUFFIX)
    model = tmp_path / f"m{_SUFFIX[fmt]}"
    model.write_bytes(b"\x00 not a model")
    precision = (rule.precisions or caps.precisions)[0]
    fields = {rule.field: _value(rule.field, rule.values)}
    with pytest.raises(UsageError) as err:
        edgekit.export(model, backend, precision, output_dir=tmp_path / "o", **fields)
    assert str(err.value) == api_spelling(rule.why)
    assert not (tmp_path / "o").exists()
    # The same request without the refused setting reaches the loader, which rejects the file.
    with pytest.raises(ModelFormatError):
        edgekit.export(model, backend, precision, output_dir=tmp_path / "o")


def test_every_backend_declares_capabilities_as_data() -> None:
    for name in backend_names():
        backend = get_backend(name)
        caps = backend.capabilities
        assert caps.precisions == backend.precisions and caps.sources == backend.source_formats
        for rule in caps.unsupported:
            assert rule.field in Recipe.__dataclass_fields__
            assert rule.precisions is None or set(rule.precisions) <= set(caps.precisions)


def test_a_recipe_object_is_the_starting_point(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx_models import linear_model

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(w, b, (1, 4)), str(path))
    base = Recipe(precision="int8", per_channel=False, calibration_samples=8)
    report = edgekit.export(
        path, "onnxruntime", recipe=base, output_dir=tmp_path / "o", calibration="random"
    )
    assert report.recipe.precision == "int8" and report.recipe.per_channel is False
    assert report.recipe.calibration_samples == 8


def _linear(tmp_path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx_models import linear_model

    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    path = tmp_path / "lin.onnx"
    onnx.save(linear_model(w, b, (1, 4)), str(path))
    return path


def test_another_targets_artifact_is_not_replaced_without_force(tmp_path: Path) -> None:
    """onnxruntime and onnxruntime-novnni name their artifacts alike (lin_fp32.onnx)."""
    src = _linear(tmp_path)
    first = edgekit.export(src, "onnxruntime", "fp32", output_dir=tmp_path / "o")
    before = first.artifact.read_bytes()
    with pytest.raises(UsageError, match=r"target onnxruntime export.*force=True"):
        edgekit.export(src, "onnxruntime-novnni", "fp32", output_dir=tmp_path / "o")
    assert first.artifact.read_bytes() == before
    again = edgekit.export(src, "onnxruntime", "fp32", output_dir=tmp_path / "o")
    assert again.target == "onnxruntime"
    forced = edgekit.export(
        src, "onnxruntime-novnni", "fp32", output_dir=tmp_path / "o", force=True
    )
    assert json.loads(forced.sidecar.read_text())["target"] == "onnxruntime-novnni"
