"""``edgekit build``: the example config builds as written in an empty folder; a second build of
an unchanged config reuses every cell and a changed one rebuilds only what changed; an
impossible cell is refused before any work; budgets fail the build with exit 10 naming the cell;
the manifest's hashes are the files' on disk (hashed here, independently).

Real exports throughout (a one-conv ONNX model, random calibration: what is under test is the
build's bookkeeping, the exports themselves are the contract's)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import conv_model

CONFIG = """version = 1
[models.conv]
path = "conv.onnx"
[data]
calibration = "random"
calibration_samples = 8
eval_samples = 8
[targets.onnxruntime]
precisions = {precisions}
{recipe}
{budgets}
[targets.openvino]
precisions = ["fp32"]
"""


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEKIT_PROGRESS": "0", "EDGEKIT_CACHE_DIR": str(cwd / "cache")}
    env.pop("EDGEKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "edgekit", "build", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )


def _project(
    tmp: Path, precisions: str = '["fp32", "int8"]', budgets: str = "", recipe: str = ""
) -> Path:
    # 9216 weights: enough that int8 weights make a smaller file than float ones
    w = np.random.default_rng(0).standard_normal((64, 16, 3, 3)).astype(np.float32)
    onnx.save(conv_model(w, (1, 16, 8, 8)), str(tmp / "conv.onnx"))
    text = CONFIG.format(precisions=precisions, budgets=budgets, recipe=recipe)
    (tmp / "edgekit.toml").write_text(text)
    return tmp


def _manifest(tmp: Path) -> dict:
    return json.loads((tmp / "edgekit-build" / "manifest.json").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_reuses_unchanged_cells_and_rebuilds_a_changed_one(tmp_path):
    _project(tmp_path)
    first = _cli(tmp_path, "--json")
    assert first.returncode == 0, first.stderr
    cold = json.loads(first.stdout)
    assert [c["status"] for c in cold["cells"]] == ["built"] * 3
    # the manifest's hashes are the files' in the output folder
    for cell in cold["cells"]:
        folder = tmp_path / "edgekit-build" / cell["model"] / cell["target"]
        assert cell["files"] and all(_sha(folder / f["name"]) == f["sha256"] for f in cell["files"])
    assert cold["toolchain"]["onnxruntime"] and cold["toolchain"]["python"]
    _check_report(tmp_path / "edgekit-build" / "report.html", cells=3)

    warm = json.loads(_cli(tmp_path, "--json").stdout)
    assert [c["status"] for c in warm["cells"]] == ["cached"] * 3
    assert [c["files"] for c in warm["cells"]] == [c["files"] for c in cold["cells"]]

    # one recipe changed: ORT int8 -> fp16; the other cells stay cached
    _project(tmp_path, precisions='["fp32", "fp16"]')
    changed = json.loads(_cli(tmp_path, "--json").stdout)
    status = {c["id"]: c["status"] for c in changed["cells"]}
    assert status == {
        "conv/onnxruntime/fp32": "cached",
        "conv/onnxruntime/fp16": "built",
        "conv/openvino/fp32": "cached",
    }
    # --no-cache rebuilds, to the same bytes for the fp32 ONNX artifact (its sidecar records
    # the time of the export, so it differs)
    fresh = json.loads(_cli(tmp_path, "--json", "--no-cache").stdout)
    assert {c["status"] for c in fresh["cells"]} == {"built"}

    def onnx_files(cell: dict) -> list:
        return [f for f in cell["files"] if f["name"].endswith(".onnx")]

    assert onnx_files(fresh["cells"][0]) == onnx_files(changed["cells"][0])


def _check_report(path: Path, cells: int, plots: int = 3) -> None:
    """Self-contained (no script, nothing fetched) and its plots are real PNG images."""
    import base64
    import re

    text = path.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert text.count("<tr") == cells + 1
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == plots
    for data in images:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width > 300 and height > 100


def test_baseline_catches_the_regression_one_recipe_change_makes(tmp_path):
    _project(tmp_path, precisions='["int8"]')
    assert _cli(tmp_path).returncode == 0
    baseline = tmp_path / "baseline.json"
    baseline.write_text((tmp_path / "edgekit-build" / "manifest.json").read_text())
    same = _cli(tmp_path, "--baseline", str(baseline))
    assert same.returncode == 0, same.stderr  # all cached: nothing moved
    assert _manifest(tmp_path)["baseline"]["regressions"] == []

    # one recipe change: the conv kept float in the int8 artifact, 4x its weights' bytes
    _project(
        tmp_path,
        precisions='["int8"]',
        recipe='[targets.onnxruntime.recipe]\nkeep_float = ["conv"]',
    )
    done = _cli(tmp_path, "--baseline", str(baseline))
    assert done.returncode == 11
    found = {(r["cell"], r["figure"]) for r in _manifest(tmp_path)["baseline"]["regressions"]}
    assert ("conv/onnxruntime/int8", "size_bytes") in found
    assert "conv/onnxruntime/int8 size_bytes" in done.stderr
    assert (
        "regression: conv/onnxruntime/int8 size_bytes"
        in (tmp_path / "edgekit-build" / "summary.md").read_text()
    )


def test_compare_flags_only_what_passes_its_threshold():
    from edgekit.build.baseline import compare

    def cell(cid, size, p50, cv, top1, cos):
        agreement = {"top1_agreement": top1, "mean_cosine": cos}
        return {"id": cid, "status": "built", "size_bytes": size, "p50_ms": p50,
                "timing_ms": {"cv": cv}, "agreement": agreement}  # fmt: skip

    old = {"cells": [cell("a", 1000, 1.0, 0.01, 0.99, 0.999), cell("b", 1000, 1.0, 0.10, 1.0, 1.0),
                     cell("gone", 1, 1, 0, 1, 1)]}  # fmt: skip
    new = {"cells": [cell("a", 1011, 1.06, 0.01, 0.984, 0.9979),  # +1.1 %, +6 % > 5 %, -0.6 pt
                     cell("b", 1010, 1.29, 0.10, 0.996, 0.9991),  # +1.0 %, +29 % < 3 cv, -0.4 pt
                     cell("new", 1, 1, 0, 1, 1)]}  # fmt: skip
    result = compare(old, new)
    assert {(r["cell"], r["figure"]) for r in result["regressions"]} == {
        ("a", "size_bytes"), ("a", "p50_ms"), ("a", "top1_agreement"), ("a", "mean_cosine"),
    }  # fmt: skip
    assert result["added"] == ["new"] and result["removed"] == ["gone"]


def test_an_impossible_cell_is_refused_before_any_work(tmp_path):
    _project(tmp_path, precisions='["fp32", "int4-weights"]')
    done = _cli(tmp_path)
    assert done.returncode == 2
    assert "cell conv/onnxruntime/int4-weights" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "edgekit-build").exists()
    assert not (tmp_path / "cache").exists()


def test_a_budget_fails_the_build_naming_the_cell_and_keep_going_builds_the_rest(tmp_path):
    size = os.path.getsize(_project(tmp_path) / "conv.onnx")
    budget = f"[targets.onnxruntime.budgets]\nmax_size_mib = {size / 2**20 / 1000:.9f}"
    _project(tmp_path, budgets=budget)
    # one job at a time: which jobs a failure leaves unstarted is then the plan's order
    done = _cli(tmp_path, "-j", "1")
    assert done.returncode == 10
    lines = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "conv/onnxruntime/fp32 max_size_mib" in lines[0]
    status = {c["id"]: c["status"] for c in _manifest(tmp_path)["cells"]}
    # the first group (both ORT cells) is built and gated; without --keep-going the rest waits
    assert status == {
        "conv/onnxruntime/fp32": "over-budget",
        "conv/onnxruntime/int8": "over-budget",
        "conv/openvino/fp32": "skipped",
    }
    suite = ET.parse(tmp_path / "edgekit-build" / "junit.xml").getroot()
    assert suite.get("failures") == "2" and suite.get("skipped") == "1"
    assert "✗ max_size_mib" in (tmp_path / "edgekit-build" / "summary.md").read_text()

    kept = _cli(tmp_path, "--keep-going")
    assert kept.returncode == 10
    status = {c["id"]: c["status"] for c in _manifest(tmp_path)["cells"]}
    assert status["conv/openvino/fp32"] == "built"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 2\n", "version: this edgekit reads schema version 1, not 2"),
        (
            'version = 1\n[models.m]\npath = "x.onnx"\nentry = "a:b"\n',
            "models.m: give exactly one of path or entry",
        ),
        (
            'version = 1\n[models.m]\npath = "x.onnx"\n[targets.onnxruntime]\n'
            'precisions = ["fp32"]\nbudgets = { max_size = 1 }\n',
            "targets.onnxruntime.budgets: unknown key 'max_size'",
        ),
        ("version = 1\n[models\n", "not valid TOML"),
        (
            'version = 1\n[models.m]\npath = "x.onnx"\n[targets.onnxruntime]\n'
            'precisions = ["fp32"]\ndevices = ["local", "pi"]\n',
            "targets.onnxruntime.devices: no device 'pi'; define [devices.pi]",
        ),
        (
            'version = 1\n[models.m]\npath = "x.onnx"\n[targets.onnxruntime]\n'
            'precisions = ["fp32"]\n[devices.pi]\nurl = "ssh://-oProxyCommand=x"\n',
            "devices.pi.url:",
        ),
        (
            'version = 1\n[models.m]\npath = "x.onnx"\n[targets.onnxruntime]\n'
            'precisions = ["fp32"]\n[devices.pi]\nurl = "ssh://pi@host"\nuser = "x"\n',
            "devices.pi: unknown key 'user'",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, message):
    (tmp_path / "edgekit.toml").write_text(text)
    done = _cli(tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_init_then_build_works_in_an_empty_folder(tmp_path):
    """The example config builds the bundled sample (the digits CNN, trained on first use) on
    all three backends as written."""
    init = _cli(tmp_path, "--init")
    assert init.returncode == 0 and (tmp_path / "edgekit.toml").is_file()
    assert _cli(tmp_path, "--init").returncode == 2  # never overwrites a config
    done = _cli(tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    cells = json.loads(done.stdout)["cells"]
    assert {c["target"] for c in cells} == {"onnxruntime", "openvino", "tflite"}
    assert {c["status"] for c in cells} == {"built"}
    assert all(b["ok"] for c in cells for b in c["budgets"])
    assert all(c["p50_ms"] > 0 for c in cells)  # every cell timed here
    _check_report(tmp_path / "edgekit-build" / "report.html", cells=len(cells))


def test_pareto_front_by_hand():
    from edgekit.build.report import pareto

    # (3, 4) is beaten by (2, 3) and (1.5, 6) by (1, 5); ties in one coordinate do not dominate
    points = [(1, 5), (2, 3), (3, 4), (1.5, 6), (4, 1), (4, 1.5)]
    assert pareto(points) == [0, 1, 4]


RAY_CONFIG = """version = 1
[models.conv]
path = "conv.onnx"
[models.wide]
path = "wide.onnx"
[data]
calibration = "random"
calibration_samples = 8
eval_samples = 8
[targets.onnxruntime]
precisions = ["fp32", "int8"]
[targets.openvino]
precisions = ["fp32", "int8"]
[bench]
runs = 0
"""


@pytest.fixture
def ray_cluster(tmp_path):
    """A real local Ray cluster, started here with the ray command and stopped after."""
    ray = Path(sys.executable).parent / "ray"
    if not ray.exists():
        pytest.skip("ray is not installed (pip install 'edgekit[ray]')")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2"]
    started = subprocess.run(
        [*start, "--include-dashboard=false", "--disable-usage-stats"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, env=env, timeout=120)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_executor_builds_the_same_artifacts_as_the_local_pool(tmp_path, ray_cluster):
    """The same config on a local process pool and on a Ray cluster, each with its own empty
    caches (nothing converted is shared): every cell's artifact files hash the same."""
    rng = np.random.default_rng(1)
    onnx.save(
        conv_model(rng.standard_normal((64, 16, 3, 3), np.float32), (1, 16, 8, 8)),
        str(tmp_path / "conv.onnx"),
    )
    onnx.save(
        conv_model(rng.standard_normal((32, 8, 3, 3), np.float32), (1, 8, 12, 12)),
        str(tmp_path / "wide.onnx"),
    )
    (tmp_path / "edgekit.toml").write_text(RAY_CONFIG)
    builds = {}
    for name, args in {
        "local": ["-j", "2"],
        "ray": ["--executor", "ray", "--ray-address", ray_cluster],
    }.items():
        work = tmp_path / name
        work.mkdir()
        done = _cli(work, "-c", str(tmp_path / "edgekit.toml"), "-o", "out", "--json", *args)
        assert done.returncode == 0, done.stderr[-3000:]
        builds[name] = json.loads(done.stdout)
        assert builds[name]["executor"] == name
        for cell in builds[name]["cells"]:
            folder = work / "out" / cell["model"] / cell["target"]
            assert all(_sha(folder / f["name"]) == f["sha256"] for f in cell["files"])
    local, ray = ({c["id"]: c for c in b["cells"]} for b in builds.values())
    assert sorted(local) == sorted(ray) and len(local) == 8
    for cell_id, cell in local.items():
        assert cell["status"] == ray[cell_id]["status"] == "built"
        model_files = [f for f in cell["files"] if f["role"] == "artifact"]
        assert model_files, cell_id
        assert model_files == [f for f in ray[cell_id]["files"] if f["role"] == "artifact"]
        assert cell["artifact_sha256"] == ray[cell_id]["artifact_sha256"]


def test_ray_unreachable_is_a_device_error(tmp_path):
    pytest.importorskip("ray")
    _project(tmp_path)
    done = _cli(tmp_path, "--executor", "ray", "--ray-address", f"127.0.0.1:{_free_port()}")
    assert done.returncode == 8, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert "cannot join the Ray cluster" in lines[-1] and "Traceback" not in done.stderr
    assert not (tmp_path / "edgekit-build").exists()


def test_sensitivity_the_accuracy_gate_measured_is_in_the_manifest_and_plotted(tmp_path):
    """A target whose recipe sets max_accuracy_drop: the gate quantizes each layer alone; the
    manifest carries those measurements (one per layer of the backend's list, the gate's float
    layers among them) and the report plots them."""
    (tmp_path / "edgekit.toml").write_text(
        "version = 1\n[models.digits]\nentry = 'edgekit.samples:sample_pt2'\n"
        "[data]\ncalibration = 'edgekit.samples:sample_calibration'\n"
        "eval = 'edgekit.samples:sample_eval'\ncalibration_samples = 32\neval_samples = 50\n"
        "[targets.onnxruntime]\nprecisions = ['int8']\n[targets.onnxruntime.recipe]\n"
        "max_accuracy_drop = 0.0001\nmetric = 'cosine'\n[bench]\nruns = 0\n"
    )
    done = _cli(tmp_path, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    (cell,) = json.loads(done.stdout)["cells"]
    measured = cell["sensitivity"]
    sidecar = json.loads(
        next(
            (tmp_path / "edgekit-build" / "digits" / "onnxruntime").glob("*.edgekit.json")
        ).read_text()
    )
    names = [s["name"] for s in measured["layers"]]
    # the digits CNN: 3 convs and 2 linears, each measured once
    assert len(names) == len(set(names)) == 5
    assert measured["float_layers"] and set(measured["float_layers"]) <= set(names)
    assert measured["metric"] == "cosine"
    assert all(s["drop"] >= 0 for s in measured["layers"])
    assert sidecar["recipe"]["max_accuracy_drop"] == 0.0001
    text = (tmp_path / "edgekit-build" / "report.html").read_text()
    assert "Per-layer sensitivity: digits/onnxruntime/int8" in text
    _check_report(tmp_path / "edgekit-build" / "report.html", cells=1, plots=2)


def test_compress_passes_of_a_target_run_before_its_export(tmp_path):
    """A target with compress passes exports the pruned model: the ONNX artifact holds about
    half the weights of the source .pt2 (counted here in both files), and the manifest says
    what the pass did."""
    import torch

    from edgekit.samples import sample_pt2

    (tmp_path / "edgekit.toml").write_text(
        "version = 1\n[models.digits]\nentry = 'edgekit.samples:sample_pt2'\n"
        "[data]\ncalibration = 'edgekit.samples:sample_calibration'\n"
        "eval = 'edgekit.samples:sample_eval'\ncalibration_samples = 16\neval_samples = 20\n"
        "[targets.onnxruntime]\nprecisions = ['fp32']\n"
        "compress = [{ kind = 'prune', ratio = 0.5 }]\n[bench]\nruns = 0\n"
    )
    done = _cli(tmp_path, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    (cell,) = json.loads(done.stdout)["cells"]
    (prune,) = cell["compress"]
    source = torch.export.load(str(sample_pt2())).state_dict
    source_params = sum(v.numel() for v in source.values())
    artifact = next((tmp_path / "edgekit-build" / "digits" / "onnxruntime").glob("*.onnx"))
    weights = sum(
        int(np.prod(t.dims)) for t in onnx.load(str(artifact)).graph.initializer if len(t.dims) > 1
    )
    assert prune["params_before"] == source_params
    assert weights < 0.6 * source_params
    assert prune["params_after"] < 0.6 * prune["params_before"]


def test_a_compress_pass_on_an_onnx_model_is_refused_at_plan_time(tmp_path):
    _project(tmp_path)
    text = (tmp_path / "edgekit.toml").read_text()
    text = text.replace(
        '[targets.openvino]\nprecisions = ["fp32"]',
        "[targets.openvino]\nprecisions = ['fp32']\ncompress = [{ kind = 'prune', ratio = 0.5 }]",
    )
    (tmp_path / "edgekit.toml").write_text(text)
    done = _cli(tmp_path)
    assert done.returncode == 2 and "cell conv/openvino: compress passes work on" in done.stderr
    (tmp_path / "edgekit.toml").write_text(text.replace("ratio = 0.5", "ratio = 1.5"))
    done = _cli(tmp_path)
    assert done.returncode == 2 and "targets.openvino.compress[0]: prune ratio 1.5" in done.stderr
    assert not (tmp_path / "edgekit-build").exists()
