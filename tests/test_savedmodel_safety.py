"""A SavedModel whose graph has side effects is refused before TensorFlow runs any of it.

Every malicious model here is built at test time and first shown to do its damage under plain
TensorFlow (the honest control), so a refusal is not just a model that would not have worked.
Genuine SavedModels (a Keras export, a tf.Module with a lookup table) still scan clean and
export.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import edgekit  # noqa: E402 - after the skip: these tests need TensorFlow
from edgekit.errors import ModelFormatError  # noqa: E402
from edgekit.intake.savedmodel_scan import (  # noqa: E402
    MAX_PROTO_BYTES,
    read_saved_model,
    scan,
    scan_proto,
)
from edgekit.model import describe  # noqa: E402

SPEC = [tf.TensorSpec([1, 2], tf.float32, name="x")]
WRITTEN = "written by the model"


def _save(path: Path, serve: Callable[..., Any], **attrs: Any) -> Path:
    module = tf.Module()
    for name, value in attrs.items():
        setattr(module, name, value)
    module.serve = tf.function(serve, input_signature=SPEC)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def _direct_write(marker: Path) -> Callable[..., Any]:
    def serve(x):
        tf.io.write_file(str(marker), WRITTEN)
        return {"y": x * 2.0}

    return serve


def _nested_write(marker: Path) -> Callable[..., Any]:
    @tf.function
    def leave_marker(x):
        tf.io.write_file(str(marker), WRITTEN)
        return x * 2.0

    return lambda x: {"y": leave_marker(x)}


@pytest.fixture(params=[_direct_write, _nested_write], ids=["direct", "nested"])
def writes_file(request, tmp_path: Path) -> tuple[Path, Path, str]:
    """(SavedModel, the file its signature writes, the function the write sits in)."""
    marker = tmp_path / "marker.txt"
    saved = _save(tmp_path / "saved", request.param(marker))
    loaded = tf.saved_model.load(str(saved))
    loaded.signatures["serving_default"](x=tf.zeros([1, 2]))
    assert marker.read_text() == WRITTEN, "control: plain TensorFlow should write the marker"
    marker.unlink()
    where = "leave_marker" if request.param is _nested_write else "serve"
    return saved, marker, where


def _assert_nothing_written(out: Path, marker: Path) -> None:
    assert not marker.exists(), "the model's graph ran"
    assert not out.exists() or not any(out.iterdir())


def test_file_write_refused_before_anything_runs(writes_file, tmp_path: Path) -> None:
    saved, marker, where = writes_file
    out = tmp_path / "out"
    with pytest.raises(ModelFormatError, match="WriteFile") as err:
        edgekit.export(saved, "onnxruntime", output_dir=out)
    message = str(err.value)
    assert "\n" not in message
    assert f"WriteFile (in __inference_{where}_" in message
    with pytest.raises(ModelFormatError, match="WriteFile"):
        describe(saved)
    _assert_nothing_written(out, marker)


@pytest.mark.parametrize(
    ("wrap", "op"),
    [(tf.py_function, "EagerPyFunc"), (tf.numpy_function, "PyFunc")],
    ids=["py_function", "numpy_function"],
)
def test_python_callback_refused(wrap, op: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"

    def callback(v):
        marker.write_text(WRITTEN)
        return v

    saved = _save(tmp_path / "saved", lambda x: {"y": wrap(callback, [x], tf.float32)})
    out = tmp_path / "out"
    with pytest.raises(ModelFormatError, match=rf"\b{op} \(in __inference_"):
        edgekit.export(saved, "onnxruntime", output_dir=out)
    with pytest.raises(ModelFormatError, match=op):
        describe(saved)
    _assert_nothing_written(out, marker)


def test_cli_refuses_with_one_line_exit_4(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    _save(tmp_path / "saved", _direct_write(marker))
    env = {**os.environ, "EDGEKIT_PROGRESS": "0"}
    env.pop("EDGEKIT_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "edgekit", "export", "saved", "-o", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgekit: error: saved: ") and "WriteFile" in lines[0]
    _assert_nothing_written(tmp_path / "out", marker)


# --- genuine SavedModels keep working --------------------------------------------------------


@pytest.fixture(scope="module")
def keras_savedmodel(tmp_path_factory) -> tuple[Path, Callable[[np.ndarray], np.ndarray]]:
    import keras

    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3)])
    path = tmp_path_factory.mktemp("keras") / "saved"
    model.export(str(path), verbose=False)
    return path, lambda x: np.asarray(model(x, training=False))


@pytest.fixture(scope="module")
def table_savedmodel(tmp_path_factory) -> tuple[Path, Callable[[np.ndarray], np.ndarray]]:
    """A tf.Module whose lookup table is filled by an initializer that runs at load time.

    tf2onnx's from_function bridge cannot convert hash tables, so the table backs a second
    signature; serving_default scales by a variable and is what gets exported.
    """
    keys = tf.constant([1, 2], tf.int64)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.constant([10.0, 20.0])), -1.0
    )
    scale = tf.Variable([[3.0, -0.5]])
    module = tf.Module()
    module.table, module.scale = table, scale
    module.serve = tf.function(lambda x: {"y": x * scale}, input_signature=SPEC)
    module.lookup = tf.function(
        lambda k: {"v": table.lookup(k)}, input_signature=[tf.TensorSpec([2], tf.int64)]
    )
    path = tmp_path_factory.mktemp("table") / "saved"
    signatures = {"serving_default": module.serve, "lookup": module.lookup}
    tf.saved_model.save(module, str(path), signatures=signatures)
    loaded = tf.saved_model.load(str(path))
    got = loaded.signatures["lookup"](k=keys)["v"].numpy()
    assert got.tolist() == [10.0, 20.0], "control: the initializer should fill the table"
    return path, lambda x: x * scale.numpy()


@pytest.mark.parametrize("kind", ["keras_savedmodel", "table_savedmodel"])
def test_genuine_savedmodel_scans_clean_and_exports(kind: str, request, tmp_path: Path) -> None:
    path, reference = request.getfixturevalue(kind)
    assert scan(path) == []
    report = edgekit.export(path, "onnxruntime", "fp32", output_dir=tmp_path / "out")
    session = edgekit.load(report.artifact)
    (name,) = [s.name for s in session.inputs]
    x = np.random.default_rng(0).standard_normal(session.inputs[0].shape).astype(np.float32)
    np.testing.assert_allclose(session.run({name: x})[0], reference(x), rtol=1e-5, atol=1e-5)
    info = describe(path)
    assert {"inputs", "outputs", "parameters", "ops"} <= info.keys()
    assert any("graph code runs" in note for note in info["notes"])


def _node(saved_model: Any, name: str) -> Any:
    (node,) = [n for n in saved_model.meta_graphs[0].graph_def.node if n.name == name]
    return node


def test_checkpoint_ops_allowed_only_in_the_saver_machinery(keras_savedmodel) -> None:
    genuine = read_saved_model(keras_savedmodel[0])
    meta = genuine.meta_graphs[0]
    save_node = _node(genuine, meta.saver_def.save_tensor_name.split(":")[0])
    save_fn = save_node.attr["f"].func.name
    serving = meta.signature_def["serving_default"].outputs["output_0"].name.split(":")[0]

    # The serving call rewired to the traced save function: SaveV2 now writes on every call.
    rewired = copy.deepcopy(genuine)
    _node(rewired, serving).attr["f"].func.name = save_fn
    assert {(f.op, f.where) for f in scan_proto(rewired)} >= {("SaveV2", save_fn)}

    # The saver's restore op pointed at the serving call: the real restore is no longer only
    # reachable from the saver, and neither is anything the serving call reaches.
    pointed = copy.deepcopy(genuine)
    pointed.meta_graphs[0].saver_def.restore_op_name = serving
    assert "RestoreV2" in {f.op for f in scan_proto(pointed)}

    # Bound into the object graph, the save function is callable after tf.saved_model.load.
    bound = copy.deepcopy(genuine)
    bound.meta_graphs[0].object_graph_def.concrete_functions[save_fn].SetInParent()
    assert "SaveV2" in {f.op for f in scan_proto(bound)}


def test_checkpoint_write_in_signature_refused(tmp_path: Path) -> None:
    def serve(x):
        tf.raw_ops.SaveV2(
            prefix=str(tmp_path / "ckpt"), tensor_names=["x"], shape_and_slices=[""], tensors=[x]
        )
        return {"y": x}

    assert [f.op for f in scan(_save(tmp_path / "saved", serve))] == ["SaveV2"]


@pytest.mark.parametrize("to_file", [True, False], ids=["file", "stderr"])
def test_print_refused_only_to_a_file(to_file: bool, tmp_path: Path) -> None:
    stream = f"file://{tmp_path / 'printed.txt'}" if to_file else sys.stderr
    saved = _save(tmp_path / "saved", lambda x: (tf.print(x, output_stream=stream), {"y": x})[1])
    assert [f.op for f in scan(saved)] == (["PrintV2"] if to_file else [])


def test_unreadable_saved_model_pb_refused(tmp_path: Path) -> None:
    (tmp_path / "dir" / "saved_model.pb").mkdir(parents=True)
    with pytest.raises(ModelFormatError, match="not a regular file"):
        scan(tmp_path / "dir")
    (tmp_path / "big").mkdir()
    with (tmp_path / "big" / "saved_model.pb").open("wb") as fh:
        fh.truncate(MAX_PROTO_BYTES + 1)  # sparse: no disk space is used
    with pytest.raises(ModelFormatError, match="2 GiB"):
        scan(tmp_path / "big")
