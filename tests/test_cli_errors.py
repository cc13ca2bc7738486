"""Bad input through the real ``edgekit`` command, each case in its own subprocess.

The contract (DESIGN.md, edgekit/errors.py): a mistake a user can make ends in exactly one
``edgekit: error: ...`` line on stderr that says what was wrong and what to do, the exit code
documented in ``EXIT_CODES``, no traceback, and no partial output — the ``-o`` folder holds
nothing afterwards (hidden temporary folders included) and nothing was written anywhere else.
Models are built here with ``onnx.helper``; no model file is committed.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends import get_backend
from edgekit.errors import EXIT_CODES
from edgekit.recipe import PRECISIONS
from edgekit.targets import target_names

INPUT_SHAPE = (1, 2, 6, 6)
OUT = "out"
EXPORT = ("export", "model.onnx", "-o", OUT)


# --- models and data, built in code ---------------------------------------------------------


def conv_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "b1": rng.standard_normal(4).astype(np.float32),
        "w2": rng.standard_normal((3, 4, 3, 3)).astype(np.float32),
        "b2": rng.standard_normal(3).astype(np.float32),
    }


def conv_nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["y"], name="pool"),
    ]


def make_model(
    nodes: list[onnx.NodeProto],
    input_shape: tuple[int | str, ...],
    weights: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(a, n) for n, a in (weights or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def conv_model(input_shape: tuple[int | str, ...] = INPUT_SHAPE) -> onnx.ModelProto:
    return make_model(conv_nodes(), input_shape, conv_weights())


def samples(n: int, seed: int = 1) -> np.ndarray:
    """``n`` samples of shape (1, 2, 6, 6), stacked along the batch axis."""
    return np.random.default_rng(seed).standard_normal((n, *INPUT_SHAPE[1:])).astype(np.float32)


# --- input builders: each writes files into the case's working directory ---------------------

Builder = Callable[[Path], None]


def nothing(tmp: Path) -> None:
    pass


def valid_onnx(tmp: Path) -> None:
    onnx.save(conv_model(), str(tmp / "model.onnx"))


def openvino_ir_like(tmp: Path) -> None:
    # The format is told by the .xml/.bin pair; export refuses it before reading the graph.
    (tmp / "model.xml").write_text('<?xml version="1.0"?>\n<net name="m" version="11"></net>\n')
    (tmp / "model.bin").write_bytes(b"")


def det_onnx(tmp: Path) -> None:
    """A graph ONNX Runtime runs whose op (Det) the ONNX -> TFLite route cannot convert."""
    node = helper.make_node("Det", ["x"], ["y"], name="det")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp / "model.onnx"))


def corrupt_onnx(tmp: Path) -> None:
    (tmp / "model.onnx").write_bytes(np.random.default_rng(1).bytes(256))


def truncated_onnx(tmp: Path) -> None:
    data = conv_model().SerializeToString()
    (tmp / "model.onnx").write_bytes(data[: len(data) // 2])


def empty_onnx(tmp: Path) -> None:
    (tmp / "model.onnx").write_bytes(b"")


def text_model(tmp: Path) -> None:
    (tmp / "model.txt").write_text("not a model\n")


def pickle_model(tmp: Path) -> None:
    (tmp / "model.pt").write_bytes(pickle.dumps({"weight": [1.0, 2.0, 3.0]}))


def dynamic_onnx(tmp: Path) -> None:
    onnx.save(conv_model(("N", 2, "H", "W")), str(tmp / "model.onnx"))


def savedmodel_without_pb(tmp: Path) -> None:
    (tmp / "saved" / "variables").mkdir(parents=True)
    (tmp / "saved" / "variables" / "variables.index").write_bytes(b"")


def unknown_op_onnx(tmp: Path) -> None:
    """Valid ONNX protobuf that ONNX Runtime refuses: the op does not exist."""
    model = make_model([helper.make_node("NoSuchOp", ["x"], ["y"], name="bad")], (1, 4))
    onnx.save(model, str(tmp / "model.onnx"))


def npy_wrong_shape(tmp: Path) -> None:
    np.save(tmp / "calib.npy", np.zeros((3, 5), np.float32))


def npz_with_nan(tmp: Path) -> None:
    data = samples(8)
    data[3, 0, 0, 0] = np.nan
    np.savez(tmp / "calib.npz", x=data)


def npz_wrong_key(tmp: Path) -> None:
    np.savez(tmp / "calib.npz", image=samples(8))


def npz_good(tmp: Path) -> None:
    np.savez(tmp / "calib.npz", x=samples(8))


def a_file_named_taken(tmp: Path) -> None:
    (tmp / "taken").write_text("an existing file, not a folder\n")


def both(*builders: Builder) -> Builder:
    def build(tmp: Path) -> None:
        for b in builders:
            b(tmp)

    return build


# --- the cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    build: Builder
    argv: tuple[str, ...]
    code: int
    #: substrings the one error line must contain (what was wrong / what to do)
    says: tuple[str, ...]


ORT_PRECISIONS = get_backend("onnxruntime").precisions

CASES = [
    Case("model-missing", nothing, EXPORT, 3, ("model.onnx", "not found")),
    Case("keras-missing-checked-before-import", nothing, ("export", "m.keras"), 3, ("m.keras",)),
    Case("onnx-corrupt", corrupt_onnx, EXPORT, 4, ("model.onnx", "not a valid ONNX", "re-export")),
    Case("onnx-truncated", truncated_onnx, EXPORT, 4, ("model.onnx", "truncated")),
    Case("onnx-empty", empty_onnx, EXPORT, 4, ("model.onnx", "no ONNX graph")),
    Case(
        "format-unknown",
        text_model,
        ("export", "model.txt", "-o", OUT),
        4,
        ("model.txt", "unknown model format", ".onnx", ".pt2"),
    ),
    Case(
        "pickle-refused",
        pickle_model,
        ("export", "model.pt", "-o", OUT),
        4,
        ("model.pt", "torch.export", ".pt2"),
    ),
    Case(
        "savedmodel-dir-without-pb",
        savedmodel_without_pb,
        ("export", "saved", "-o", OUT),
        4,
        ("saved", "saved_model.pb"),
    ),
    Case(
        "dynamic-dims-unfixed",
        dynamic_onnx,
        EXPORT,
        4,
        ("'x'", "dynamic", "--input-shape x="),
    ),
    Case(
        "onnxruntime-cannot-load",
        unknown_op_onnx,
        EXPORT,
        4,
        ("NoSuchOp",),
    ),
    Case("target-unknown", valid_onnx, (*EXPORT, "--target", "tpu"), 2, ("'tpu'", *target_names())),
    Case(
        "precision-unknown", valid_onnx, (*EXPORT, "--precision", "int4"), 2, ("int4", *PRECISIONS)
    ),
    Case(
        "precision-unsupported-by-backend",
        both(valid_onnx, npz_good),
        (*EXPORT, "--precision", "int16x8", "--calibration", "calib.npz"),
        2,
        ("int16x8", *ORT_PRECISIONS),
    ),
    Case(
        "input-shape-bad-syntax",
        valid_onnx,
        (*EXPORT, "--input-shape", "x=abc"),
        2,
        ("x=abc", "NAME="),
    ),
    Case(
        "input-shape-unknown-input",
        valid_onnx,
        (*EXPORT, "--input-shape", "z=1x2x6x6"),
        2,
        ("'z'", "'x'"),
    ),
    Case(
        "input-shape-wrong-rank",
        valid_onnx,
        (*EXPORT, "--input-shape", "x=1x2x6"),
        2,
        ("rank 3", "rank 4"),
    ),
    Case(
        "calibration-samples-zero",
        both(valid_onnx, npz_good),
        (*EXPORT, "-p", "int8", "--calibration", "calib.npz", "--calibration-samples", "0"),
        2,
        ("--calibration-samples", "at least 1"),
    ),
    Case("eval-samples-negative", valid_onnx, (*EXPORT, "--eval-samples", "-1"), 2, ("--eval-",)),
    Case(
        "percentile-out-of-range",
        both(valid_onnx, npz_good),
        (
            *EXPORT,
            *("-p", "int8", "--calibration", "calib.npz"),
            *("--calibration-method", "percentile", "--percentile", "20"),
        ),
        2,
        ("percentile", "100"),
    ),
    Case(
        "image-option-with-array-data",
        both(valid_onnx, npz_good),
        (*EXPORT, "-p", "int8", "--calibration", "calib.npz", "--mean", "0.5,0.5"),
        2,
        ("--mean", "image folders"),
    ),
    Case(
        "int8-without-calibration",
        valid_onnx,
        (*EXPORT, "--precision", "int8"),
        5,
        ("int8", "--calibration"),
    ),
    Case(
        "calibration-missing",
        valid_onnx,
        (*EXPORT, "-p", "int8", "--calibration", "nothere.npz"),
        5,
        ("nothere.npz", "not found"),
    ),
    Case(
        "calibration-wrong-shape",
        both(valid_onnx, npy_wrong_shape),
        (*EXPORT, "-p", "int8", "--calibration", "calib.npy"),
        5,
        ("calib.npy", "(3, 5)", "(1, 2, 6, 6)"),
    ),
    Case(
        "calibration-nan",
        both(valid_onnx, npz_with_nan),
        (*EXPORT, "-p", "int8", "--calibration", "calib.npz"),
        5,
        ("sample 3", "NaN"),
    ),
    Case(
        "calibration-npz-wrong-key",
        both(valid_onnx, npz_wrong_key),
        (*EXPORT, "-p", "int8", "--calibration", "calib.npz"),
        5,
        ("image", "input(s) x"),
    ),
    Case("inspect-missing", nothing, ("inspect", "model.onnx"), 3, ("model.onnx", "not found")),
    Case("inspect-corrupt", corrupt_onnx, ("inspect", "model.onnx"), 4, ("not a valid ONNX",)),
    # -o naming a file, and --name with a path in it, are refused before any work starts.
    Case(
        "output-dir-is-a-file",
        both(valid_onnx, a_file_named_taken),
        ("export", "model.onnx", "-o", "taken"),
        2,
        ("taken",),
    ),
    Case(
        "name-with-parent-dir",
        unknown_op_onnx,
        (*EXPORT, "--name", "../x"),
        2,
        ("--name",),
    ),
    Case(
        "name-with-subfolder",
        valid_onnx,
        (*EXPORT, "--name", "a/b"),
        2,
        ("--name",),
    ),
    Case(
        "an-artifact-is-not-a-source",
        openvino_ir_like,
        ("export", "model.xml", "-o", OUT),
        2,
        ("no backend exports from a openvino-ir model", "export from the model it was made"),
    ),
    Case(
        "tflite-route-has-no-converter-for-an-op",
        det_onnx,
        (*EXPORT, "--target", "tflite"),
        7,
        ("no converter for Det (opset 17)", "--target onnxruntime"),
    ),
    Case(
        "output-dir-cannot-be-created",
        valid_onnx,
        ("export", "model.onnx", "-o", "/proc/edgekit-out"),
        2,
        ("cannot create the output folder", "-o"),
    ),
    Case(
        "device-absent-before-any-work",
        valid_onnx,
        (*EXPORT, "--device", "GPU"),
        8,
        ("device 'GPU' is not available", "CPU"),
    ),
]


# --- running and checking --------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {**os.environ, "EDGEKIT_PROGRESS": "0"}
    env.pop("EDGEKIT_DEBUG", None)  # a developer's debug setting would turn errors into tracebacks
    return env


def run_cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *argv],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(root: Path) -> dict[str, int]:
    """Every file and folder below ``root``, dotfiles included: path -> size (-1 for folders)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            found[os.path.relpath(os.path.join(dirpath, d), root)] = -1
        for f in filenames:
            path = os.path.join(dirpath, f)
            found[os.path.relpath(path, root)] = os.path.getsize(path)
    return found


def failure_problems(
    result: subprocess.CompletedProcess[str],
    code: int,
    says: tuple[str, ...],
    cwd: Path,
    before: dict[str, int],
) -> list[str]:
    """Everything wrong with how a bad input failed, so one run shows all of it at once."""
    problems = []
    if code not in EXIT_CODES:
        problems.append(f"test bug: exit code {code} is not documented in EXIT_CODES")
    if result.returncode != code:
        problems.append(f"exit code {result.returncode}, expected {code} ({EXIT_CODES[code]})")
    if "Traceback" in result.stdout + result.stderr:
        problems.append("a traceback was printed")
    if result.stdout:
        problems.append(f"stdout is not empty: {result.stdout[:300]!r}")
    out = cwd / OUT
    if out.exists() and (not out.is_dir() or os.listdir(out)):
        problems.append(f"partial output left in {OUT}/: {sorted(snapshot(out))}")
    after = {p: s for p, s in snapshot(cwd).items() if p != OUT and not p.startswith(OUT + os.sep)}
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        problems.append(f"files outside {OUT}/ were written or changed: {changed}")
    lines = result.stderr.splitlines()
    if len(lines) != 1:
        problems.append(f"stderr has {len(lines)} lines, expected 1")
    line = lines[0] if lines else ""
    if not line.startswith("edgekit: error: "):
        problems.append("stderr does not start with 'edgekit: error: '")
    missing = [s for s in says if s not in line]
    if missing:
        problems.append(f"message does not mention {missing}")
    if ".edgekit-tmp" in line:
        problems.append("message points at a temporary path that no longer exists")
    if problems:
        problems.append(f"stderr was: {result.stderr!r}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly(case: Case, tmp_path: Path) -> None:
    case.build(tmp_path)
    before = snapshot(tmp_path)
    result = run_cli(tmp_path, *case.argv)
    problems = failure_problems(result, case.code, case.says, tmp_path, before)
    assert not problems, "\n".join(problems)


def _keras_file(tmp: Path) -> str:
    # Any bytes: edgekit needs TensorFlow before it can read a Keras file, so the missing
    # dependency must be reported before the file's content is looked at.
    (tmp / "classifier.keras").write_bytes(b"PK\x03\x04 not really a zip")
    return "classifier.keras"


def _h5_file(tmp: Path) -> str:
    (tmp / "classifier.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    return "classifier.h5"


def _savedmodel_dir(tmp: Path) -> str:
    (tmp / "exported").mkdir()
    (tmp / "exported" / "saved_model.pb").write_bytes(b"\x08\x01")
    return "exported"


@pytest.mark.parametrize("command", ["export", "inspect"])
@pytest.mark.parametrize("make", [_keras_file, _h5_file, _savedmodel_dir], ids=lambda f: f.__name__)
def test_missing_tensorflow_names_the_extra(
    command: str, make: Callable[[Path], str], tmp_path: Path
) -> None:
    """sys.modules[name] = None makes ``import name`` fail as if the package were absent."""
    model = make(tmp_path)
    argv = [command, model] + (["-o", OUT] if command == "export" else [])
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "sys.modules['keras'] = None\n"
        "from edgekit.cli import main\n"
        f"raise SystemExit(main({argv!r}))\n"
    )
    before = snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    says = ("'tensorflow'", "pip install 'edgekit[tensorflow]'")
    problems = failure_problems(result, 6, says, tmp_path, before)
    assert not problems, "\n".join(problems)


# --- the happy path, through the same command ------------------------------------------------


def test_export_int8_writes_artifact_and_sidecar(tmp_path: Path) -> None:
    valid_onnx(tmp_path)
    np.savez(tmp_path / "data.npz", x=samples(24))
    result = run_cli(
        tmp_path,
        "export",
        "model.onnx",
        "--precision",
        "int8",
        "--calibration",
        "data.npz",
        "--calibration-samples",
        "16",
        "--json",
        "-o",
        OUT,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["precision"] == "int8"
    artifact = tmp_path / report["artifact"]
    sidecar = tmp_path / report["sidecar"]
    assert artifact.is_file() and sidecar.is_file()
    assert sidecar.name == artifact.name + ".edgekit.json"
    # Only the artifact and its sidecar (plus the store their names point into, see
    # edgekit/commit.py): no temporary folder or calibration cache left behind.
    assert sorted(os.listdir(tmp_path / OUT)) == sorted([".edgekit", artifact.name, sidecar.name])
    store = tmp_path / OUT / ".edgekit" / artifact.name
    generations = [p for p in store.iterdir() if not p.is_symlink()]
    assert len(generations) == 1
    assert sorted(os.listdir(generations[0])) == sorted([artifact.name, sidecar.name])

    meta = json.loads(sidecar.read_text())
    assert meta["recipe"]["precision"] == "int8"
    assert meta["recipe"]["calibration_samples"] == 16
    assert meta["artifact"]["files"] == [artifact.name]
    assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["shape"] == list(INPUT_SHAPE)

    ops = Counter(n.op_type for n in onnx.load(str(artifact)).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0 and ops["Conv"] == 2
    # 24 samples: 16 calibrate, the other 8 are the held-out comparison.
    assert report["eval_inputs"] == "held-out calibration samples"
    assert report["agreement"]["samples"] == 8
    assert report["agreement"]["mean_cosine"] > 0.9


def test_inspect_counts_parameters_and_ops(tmp_path: Path) -> None:
    weights = conv_weights()
    nodes = conv_nodes()
    onnx.save(make_model(nodes, INPUT_SHAPE, weights), str(tmp_path / "model.onnx"))
    result = run_cli(tmp_path, "inspect", "model.onnx", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "onnx"
    expected = sum(a.size for a in weights.values())
    assert expected == (4 * 2 * 3 * 3 + 4) + (3 * 4 * 3 * 3 + 3)
    assert info["parameters"] == expected
    assert info["ops"] == {"Conv": 2, "Relu": 2, "GlobalAveragePool": 1}
    assert info["ops"] == dict(Counter(n.op_type for n in nodes))
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": list(INPUT_SHAPE)}]


def test_closed_output_pipe_is_not_an_internal_error(tmp_path: Path) -> None:
    """`edgekit inspect m.onnx | head` closes the pipe while edgekit still writes."""
    valid_onnx(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before edgekit writes a byte
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edgekit", "inspect", "model.onnx", "--json"],
            cwd=tmp_path,
            env=_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""
