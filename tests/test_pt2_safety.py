"""edgekit refuses every known way a crafted .pt2 runs code, and still loads genuine ones.

Each malicious archive (built at test time by ``pt2_evil``) is first shown to run its payload
under plain torch, in a fresh interpreter: the honest control. edgekit then gets the same file
through ``describe`` and ``export``, also in a fresh interpreter (so a payload that fires on
import or load cannot hide), and must raise ModelFormatError without the payload running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pt2_evil  # noqa: E402 - needs torch

import edgekit  # noqa: E402
from edgekit.errors import ModelFormatError  # noqa: E402
from edgekit.intake.pt2_safety import load_pt2  # noqa: E402
from edgekit.model import load_model  # noqa: E402

HELPER = Path(pt2_evil.__file__)


def _env() -> dict[str, str]:
    env = {**os.environ, "EDGEKIT_PROGRESS": "0"}
    env.pop("EDGEKIT_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Build every variant, run edgekit on all of them in one fresh interpreter, then plain
    torch on all of them in another (edgekit first: its markers must not exist yet)."""
    folder = tmp_path_factory.mktemp("evil")
    markers = folder / "markers"
    pt2_evil.build(folder, markers)
    assert not list(markers.iterdir()), "building an archive ran a payload"
    out = {}
    for mode in ("edgekit", "plain"):
        report = folder / f"{mode}.json"
        argv = [sys.executable, str(HELPER), mode, str(folder), str(markers), str(report)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[mode] = json.loads(report.read_text())
    return out


def _needs(variant: str) -> None:
    if variant == "aoti_so" and not pt2_evil.has_compiler():
        pytest.skip("the aoti_so variant compiles a shared library: no gcc/cc on this machine")


@pytest.mark.parametrize("variant", list(pt2_evil.VARIANTS))
def test_plain_torch_runs_the_payload(variant: str, reports: dict[str, dict]) -> None:
    """The honest control: the archive really is malicious for torch.export.load."""
    _needs(variant)
    stage = pt2_evil.VARIANTS[variant][1]
    assert reports["plain"][variant]["marker"], (stage, reports["plain"][variant])


@pytest.mark.parametrize("variant", list(pt2_evil.VARIANTS))
def test_edgekit_refuses_without_running_it(variant: str, reports: dict[str, dict]) -> None:
    _needs(variant)
    got = reports["edgekit"][variant]
    for how in ("describe", "export"):
        message = got[how]
        assert message.startswith(f"ModelFormatError: {variant}.pt2: "), message
        assert "\n" not in message and "re-export it with torch.export.save" in message
        assert not got[f"{how}_marker"], f"{how} ran the payload"
    if variant in pt2_evil.GUARDED:  # the guard around torch.export.load blocks it alone
        assert got["guard_only"].startswith("_Unsafe: loading it "), got["guard_only"]
        assert not got["guard_only_marker"]
    assert not got["marker"]


# --- genuine archives -------------------------------------------------------------------------


class _Dynamic(torch.nn.Module):
    """Sequential children ("body.0.weight") and a dynamic batch: guards and sympy exprs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("genuine")
    static = pt2_evil.make_genuine(folder / "net.pt2")
    torch.manual_seed(1)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(
        _Dynamic().eval(), (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},)
    )
    assert ep.range_constraints, "the batch dimension stayed symbolic"
    torch.export.save(ep, str(folder / "dynamic.pt2"))
    return {"static": static, "dynamic": folder / "dynamic.pt2"}


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_genuine_loads_with_torch_outputs(kind: str, genuine: dict[str, Path]) -> None:
    path = genuine[kind]
    reference = torch.export.load(str(path))
    source = load_model(path)
    x = torch.randn(*source.inputs[0].shape)
    (got,) = source.run({source.inputs[0].name: x.numpy()})
    with torch.no_grad():
        want = reference.module()(x).numpy()
    np.testing.assert_array_equal(got, want)
    ep = load_pt2(path)
    assert set(ep.state_dict) == set(reference.state_dict)
    assert all(torch.equal(ep.state_dict[k], reference.state_dict[k]) for k in ep.state_dict)
    assert all(torch.equal(ep.constants[k], reference.constants[k]) for k in ep.constants)
    if kind == "dynamic":  # another batch size than the example's, through the guards
        x = torch.randn(5, 3, 8, 8)
        with torch.no_grad():
            assert torch.equal(ep.module()(x), reference.module()(x))


def test_genuine_exports_to_onnxruntime(genuine: dict[str, Path], tmp_path: Path) -> None:
    report = edgekit.export(genuine["static"], "onnxruntime", "fp32", output_dir=tmp_path)
    assert report.artifact.is_file()


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "m.pt2")
    with pytest.raises(ModelFormatError, match="not a regular file"):
        load_pt2(tmp_path / "m.pt2")


# --- the CLI: exit 4 and one line -------------------------------------------------------------


def test_cli_refuses_bad_pt2_in_one_line(genuine: dict[str, Path], tmp_path: Path) -> None:
    data = genuine["static"].read_bytes()
    files = {
        "empty.pt2": b"",
        "truncated.pt2": data[: len(data) // 2],
        "random.pt2": np.random.default_rng(0).bytes(4096),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    pt2_evil.corrupt(genuine["static"], tmp_path / "corrupt.pt2")  # fails inside torch
    pt2_evil.weight_use_pickle(genuine["static"], tmp_path / "evil.pt2", tmp_path / "marker")
    procs = {  # concurrently: each pays for its own torch import
        name: subprocess.Popen(
            [sys.executable, "-m", "edgekit", "inspect", name],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in [*files, "corrupt.pt2", "evil.pt2"]
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 4, (name, proc.returncode, err)
        assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), (name, err)
        assert "Traceback" not in out + err
    assert not (tmp_path / "marker").exists()
