"""Convert once, quantize many: the conversion cache and several precisions in one export.

Conversions are counted independently of the cache's own counter, by wrapping the framework
converters themselves (``torch.onnx.export``, ``openvino.convert_model``) in the process that
exports; a second process is checked the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit import convert_cache
from edgekit.errors import UsageError

torch = pytest.importorskip("torch")


def _module(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)
    ).eval()


def _pt2(path: Path, seed: int = 0) -> Path:
    program = torch.export.export(_module(seed), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, str(path))
    return path


def _calib(n: int = 12) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"input": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(n)]


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(root))
    convert_cache.clear_memory()
    yield root / "convert"
    convert_cache.clear_memory()


@pytest.fixture
def onnx_exports(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts real torch.onnx.export calls."""
    calls: list[int] = []
    real = torch.onnx.export

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    return calls


def _input_name(path: Path) -> str:
    return torch.export.load(str(path)).graph_signature.user_inputs[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_SECOND_PROCESS = textwrap.dedent(
    """
    import json, sys, numpy as np, torch, edgekit
    calls = []
    real = torch.onnx.export
    torch.onnx.export = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    reports = edgekit.export(sys.argv[1], "onnxruntime", ["fp32", "fp16"], output_dir=sys.argv[2],
                             eval_samples=2)
    print(json.dumps({"calls": len(calls), "notes": [r.notes for r in reports],
                      "artifacts": [str(r.artifact) for r in reports]}))
    """
)


def test_three_precisions_of_a_pt2_convert_once_and_a_second_process_reuses_it(
    tmp_path: Path, fresh_cache: Path, onnx_exports: list[int]
) -> None:
    src = _pt2(tmp_path / "m.pt2")
    name = _input_name(src)
    calib = [{name: f["input"]} for f in _calib()]
    reports = edgekit.export(
        src, "onnxruntime", ["fp32", "fp16", "int8"], output_dir=tmp_path / "a", calibration=calib
    )
    assert [r.recipe.precision for r in reports] == ["fp32", "fp16", "int8"]
    assert len(onnx_exports) == 1
    assert [e.name for e in fresh_cache.iterdir()] and len(list(fresh_cache.iterdir())) == 1
    # The same process again: nothing is converted, from memory.
    edgekit.export(src, "onnxruntime", "fp32", output_dir=tmp_path / "b", eval_samples=2)
    assert len(onnx_exports) == 1
    # A new process with the same cache folder: nothing is converted, from disk; the fp32
    # artifact is the same file as the first process's.
    env = {**os.environ, "EDGEKIT_CACHE_DIR": str(fresh_cache.parent), "EDGEKIT_PROGRESS": "0"}
    child = subprocess.run(
        [sys.executable, "-c", _SECOND_PROCESS, str(src), str(tmp_path / "c")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    assert seen["calls"] == 0
    assert "reused from the cache" in " ".join(seen["notes"][0])
    assert _sha(Path(seen["artifacts"][0])) == _sha(reports[0].artifact)


def test_changed_source_is_converted_again(
    tmp_path: Path, fresh_cache: Path, onnx_exports: list[int]
) -> None:
    first = _pt2(tmp_path / "m.pt2", seed=0)
    edgekit.export(first, "onnxruntime", "fp32", output_dir=tmp_path / "a", eval_samples=2)
    _pt2(first, seed=1)  # same path, other weights
    edgekit.export(first, "onnxruntime", "fp32", output_dir=tmp_path / "b", eval_samples=2)
    assert len(onnx_exports) == 2
    assert len(list(fresh_cache.iterdir())) == 2


def test_in_memory_module_converts_once_per_call_and_is_not_stored(
    tmp_path: Path, fresh_cache: Path, onnx_exports: list[int]
) -> None:
    module = _module()
    x = torch.zeros(1, 1, 8, 8)
    calib = [{"input": f["input"]} for f in _calib()]
    reports = edgekit.export(
        module,
        "onnxruntime",
        ["fp32", "int8"],
        example_inputs=(x,),
        output_dir=tmp_path / "a",
        calibration=calib,
    )
    assert len(reports) == 2 and len(onnx_exports) == 1
    # Without a content hash nothing is kept: a later call converts again, and may see
    # weights changed in between.
    assert not fresh_cache.exists() or not list(fresh_cache.iterdir())
    edgekit.export(module, "onnxruntime", "fp32", example_inputs=(x,), output_dir=tmp_path / "b")
    assert len(onnx_exports) == 2


def test_openvino_converts_once_for_every_precision(
    tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ov = pytest.importorskip("openvino")
    calls: list[int] = []
    real = ov.convert_model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ov, "convert_model", counting)
    src = _pt2(tmp_path / "m.pt2")
    name = _input_name(src)
    calib = [{name: f["input"]} for f in _calib()]
    reports = edgekit.export(
        src, "openvino", ["fp32", "fp16", "int8"], output_dir=tmp_path / "o", calibration=calib
    )
    assert len(calls) == 1 and len(reports) == 3
    # The cached fp32 IR is uncompressed: fp16 is chosen per artifact, not at conversion.
    fp32_bin = reports[0].artifact.with_suffix(".bin").stat().st_size
    fp16_bin = reports[1].artifact.with_suffix(".bin").stat().st_size
    assert fp16_bin < 0.6 * fp32_bin


def test_broken_cache_entry_is_converted_again(
    tmp_path: Path, fresh_cache: Path, onnx_exports: list[int]
) -> None:
    src = _pt2(tmp_path / "m.pt2")
    edgekit.export(src, "onnxruntime", "fp32", output_dir=tmp_path / "a", eval_samples=2)
    (entry,) = fresh_cache.iterdir()
    (entry / "model.onnx").unlink()
    convert_cache.clear_memory()
    edgekit.export(src, "onnxruntime", "fp32", output_dir=tmp_path / "b", eval_samples=2)
    assert len(onnx_exports) == 2


def test_prune_keeps_the_most_recently_used_within_the_size_limit(tmp_path: Path) -> None:
    root = tmp_path / "convert"
    now = time.time()
    # e1 was used longest ago, and e3 over 30 days ago.
    for i, age in enumerate([100.0, 300.0, 200.0, 31 * 24 * 3600.0]):
        entry = root / f"e{i}"
        entry.mkdir(parents=True)
        (entry / "model.onnx").write_bytes(b"x" * 1000)
        (entry / "entry.json").write_text('{"files": ["model.onnx"]}')
        os.utime(entry / "entry.json", (now - age, now - age))
    sizes = sum(p.stat().st_size for p in (root / "e0").iterdir())
    convert_cache.prune(root, max_bytes=2 * sizes)
    assert sorted(p.name for p in root.iterdir()) == ["e0", "e2"]


def test_same_precision_twice_is_refused_before_loading(tmp_path: Path) -> None:
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(UsageError, match="same precision twice"):
        edgekit.export(bad, "onnxruntime", ["fp32", "fp32"], output_dir=tmp_path / "o")
