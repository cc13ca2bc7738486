"""The commit stage: an artifact set switches whole or not at all, and nothing is left behind.

The kill test re-exports an OpenVINO artifact (``.xml`` + ``.bin`` + sidecar) over an older one
in a child process that SIGKILLs itself at the N-th file-system rename/link/unlink of the
commit, for every N until the export completes. After each kill, the artifact under its usual
name must load in OpenVINO and give the outputs of either the old source or the new one, with a
sidecar whose file hashes and source hash match what was loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import conv_model

import edgekit
from edgekit.commit import STORE, TMP_PREFIX, commit, remove_stale
from edgekit.errors import ModelFormatError, UsageError

X = np.random.default_rng(7).standard_normal((1, 2, 6, 6)).astype(np.float32)


def _source(tmp: Path, name: str, seed: int) -> Path:
    weight = np.random.default_rng(seed).standard_normal((3, 2, 3, 3)).astype(np.float32)
    path = tmp / name
    onnx.save(conv_model(weight), str(path))
    return path


def _ort(path: Path) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})[
        0
    ]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import edgekit, edgekit.exporter as exporter

    kill_at = int(sys.argv[1])
    calls = 0

    def counting(fn):
        def wrapped(*args, **kwargs):
            global calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped

    real_commit = exporter.commit

    def commit(*args, **kwargs):
        # From the commit stage on, every rename, link and unlink is a place to die.
        for name in ("replace", "rename", "symlink", "link", "unlink"):
            setattr(os, name, counting(getattr(os, name)))
        return real_commit(*args, **kwargs)

    exporter.commit = commit
    edgekit.export(sys.argv[2], "openvino", "fp32", output_dir=sys.argv[3], name="m")
    """
)


def test_killed_openvino_export_leaves_old_or_new_artifact_whole(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    old_src, new_src = _source(tmp_path, "old.onnx", 1), _source(tmp_path, "new.onnx", 2)
    expected = {"old": _ort(old_src), "new": _ort(new_src)}
    source_sha = {_sha(old_src): "old", _sha(new_src): "new"}
    assert not np.allclose(expected["old"], expected["new"], atol=1e-3)
    template = tmp_path / "template"
    edgekit.export(old_src, "openvino", "fp32", output_dir=template, name="m")
    env = {**os.environ, "EDGEKIT_PROGRESS": "0"}
    seen: list[str] = []
    for kill_at in range(1, 60):
        out = tmp_path / f"out{kill_at}"
        shutil.copytree(template, out, symlinks=True)
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(kill_at), str(new_src), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert child.returncode in (0, -9), child.stderr
        xml = out / "m_fp32.xml"
        compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = compiled({"x": X})[compiled.outputs[0]]
        which = next((k for k, v in expected.items() if np.allclose(got, v, atol=1e-4)), None)
        assert which is not None, f"kill at {kill_at}: outputs match neither the old nor new"
        side = json.loads((out / "m_fp32.xml.edgekit.json").read_text())
        assert source_sha[side["source"]["sha256"]] == which, f"kill at {kill_at}: stale sidecar"
        for name, digest in side["artifact"]["sha256"].items():
            assert _sha(out / name) == digest, f"kill at {kill_at}: {name} is not the sidecar's"
        seen.append(which)
        if child.returncode == 0:
            break
    else:
        pytest.fail("the export never completed")
    print(f"kill points: {len(seen)}: {seen}")
    # The kills landed on both sides of the switch, and the completed export is the new one.
    assert seen[0] == "old" and seen[-1] == "new", seen
    assert len(seen) >= 4, seen
    # The export that completed removed what the killed ones left (dead process ids).
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(TMP_PREFIX))
    generations = [p for p in (out / STORE / "m_fp32.xml").iterdir() if not p.is_symlink()]
    assert left == [] and len(generations) == 1


def _staged(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / n for n in files]


def test_commit_switches_sets_and_drops_files_the_new_set_lacks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    first = _staged(out / ".stage1", {"a.xml": b"x1", "a.bin": b"b1", "a.xml.edgekit.json": b"{}"})
    commit(out, first, first[0])
    assert (out / "a.xml").read_bytes() == b"x1" and (out / "a.bin").read_bytes() == b"b1"
    second = _staged(out / ".stage2", {"a.xml": b"x2", "a.xml.edgekit.json": b"{}"})
    commit(out, second, second[0])
    assert (out / "a.xml").read_bytes() == b"x2"
    assert not (out / "a.bin").exists() and not (out / "a.bin").is_symlink()
    assert len([p for p in (out / STORE / "a.xml").iterdir() if not p.is_symlink()]) == 1


def test_commit_adopts_plain_files_of_an_older_export(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.xml").write_bytes(b"old-x")
    (out / "a.bin").write_bytes(b"old-b")
    staged = _staged(out / ".stage", {"a.xml": b"new-x", "a.bin": b"new-b"})
    commit(out, staged, staged[0])
    assert (out / "a.xml").read_bytes() == b"new-x" and (out / "a.bin").read_bytes() == b"new-b"
    assert (out / "a.xml").is_symlink()


def test_stale_temp_folders_of_dead_exports_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)
    stale = tmp_path / f"{TMP_PREFIX}{pid}-abc"
    mine = tmp_path / f"{TMP_PREFIX}{os.getpid()}-abc"
    stale.mkdir()
    mine.mkdir()
    remove_stale(tmp_path)
    assert not stale.exists() and mine.exists()


def test_failed_export_leaves_no_output_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFormatError):
        edgekit.export(bad, "onnxruntime", output_dir=tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()


def test_failure_inside_the_backend_removes_created_folder(tmp_path: Path) -> None:
    """An unknown --keep-float name is found by the ONNX Runtime quantizer step, after the
    output folder and the staging folder exist."""
    src = _source(tmp_path, "m.onnx", 1)
    calib = [{"x": X}] * 4
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="nosuch"):
        edgekit.export(
            src, "onnxruntime", "int8", output_dir=out, calibration=calib, keep_float=("nosuch",)
        )
    assert not out.exists()
