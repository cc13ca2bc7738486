"""``edgekit compress`` and ``edgekit export --prune`` through the real command, each in its
own subprocess: the files written, the JSON, and a bad flag's one-line exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
nn = torch.nn


def _edgekit(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "EDGEKIT_PROGRESS": "0"},
    )


@pytest.fixture(scope="module")
def pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    folder = tmp_path_factory.mktemp("model")
    ep = torch.export.export(model, (torch.randn(1, 1, 12, 12),))
    torch.export.save(ep, folder / "net.pt2")
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", rng.standard_normal((40, 1, 12, 12)).astype(np.float32))
    np.save(folder / "y.npy", rng.integers(0, 10, 40))
    return folder / "net.pt2"


def test_compress_writes_the_model_and_sidecar(pt2, tmp_path):
    out = _edgekit(
        "compress", str(pt2), "--prune", "0.5", "--round-to", "4", "--criterion", "taylor",
        "--data", str(pt2.parent / "x.npy"), "--labels", str(pt2.parent / "y.npy"),
        "--low-rank", "tucker", "--rank", "4", "--json", "-o", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["kind"] for r in doc["reports"]] == ["prune", "lowrank"]
    prune, lowrank = doc["reports"]
    assert prune["params_after"] < prune["params_before"]
    assert lowrank["params_after"] < lowrank["params_before"]
    assert doc["metric_name"] == "top1"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "net.compress.json",
        "net.pt2",
    ]
    sidecar = json.loads((tmp_path / "out" / "net.compress.json").read_text())
    assert sidecar["passes"][0]["criterion"] == "taylor" and sidecar["passes"][1]["rank"] == 4
    assert "torch" in sidecar["tool_versions"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--prune", "1.5"], "prune ratio 1.5 must be between 0 and 1"),
        (["--n-m", "2:4"], "add --prune"),
        (["--prune", "0.5", "--n-m", "2:4"], "--unstructured"),
    ],
)
def test_bad_flags_exit_2_on_one_line_and_write_nothing(pt2, tmp_path, argv, says):
    out = _edgekit("compress", str(pt2), *argv, "-o", "out", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("edgekit: error: ")
    assert says in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()


def test_export_prunes_first(pt2, tmp_path):
    out = _edgekit(
        "export", str(pt2), "--prune", "0.5", "--unstructured", "--target", "onnxruntime",
        "-p", "fp32", "--json", "-o", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert Path(doc["artifact"]).name == "net_fp32.onnx"
    assert doc["compress"]["passes"][0]["structured"] is False
    assert any("compressed first" in n for n in doc["notes"])
    assert not any(p.name.endswith(".pt2") for p in (tmp_path / "out").iterdir())


def test_compress_help_imports_no_framework():
    code = (
        "import sys\nfrom edgekit.cli import main\n"
        "try:\n    main(['compress', '--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'tensorflow', 'keras', 'openvino', 'onnxruntime') "
        "if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--low-rank" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"
