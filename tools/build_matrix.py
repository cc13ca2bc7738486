"""Issue 14's figures: one edgekit.toml building 2 models x 3 backends x 3 precisions.

The models are the bundled digits CNN (a .pt2 from a Python entry point) and the real text-
orientation classifier (ONNX, from its PyPI package, with real calibration and evaluation
inputs from ``edgekit.realmodels``). Each step is the ``edgekit build`` command as a user runs
it, as a fresh process:

1. cold: an empty cache (build cache and conversion cache), local process pool;
2. warm: the same config again with that cache (every cell from the cache);
3. ray: the same config on a local Ray cluster started here, with its own empty caches; every
   cell's artifact files must hash as the cold local build's (``artifact_sha256``);
4. a deliberately tight budget (tflite artifacts at most 1 KiB): exit 10 naming the cell;
5. one recipe changed (ONNX Runtime per-tensor instead of per-channel) and ``--baseline`` the
   cold manifest: exit 11, the regressions it names, and which cells were rebuilt;
6. report.html of the cold build rendered by headless Chromium (when installed) to a PNG.

    .venv/bin/python tools/build_matrix.py [--cpu 0] [--runs 30] [--no-ray] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import realmodels
from edgekit.bench.sysinfo import cpu_info, describe_cpu

PRECISIONS = '["fp32", "fp16", "int8"]'


def _config(work: Path, cpu: int, runs: int, ort_recipe: str = "", budget: str = "") -> str:
    orientation = realmodels.REAL_MODELS["orientation"]
    ((name, shape),) = orientation.shapes.items()
    return f"""version = 1
[models.digits]
entry = "edgekit.samples:sample_pt2"
[models.digits.data]
calibration = "edgekit.samples:sample_calibration"
eval = "edgekit.samples:sample_eval"
[models.orientation]
path = "{realmodels.fetch(orientation)}"
input_shapes = {{ {name} = {list(shape)} }}
[models.orientation.data]
calibration = "{work / "orientation_calibration.npz"}"
eval = "{work / "orientation_eval.npz"}"
[data]
calibration_samples = 64
eval_samples = 100
[targets.onnxruntime]
precisions = {PRECISIONS}
{ort_recipe}
[targets.openvino]
precisions = {PRECISIONS}
[targets.tflite]
precisions = {PRECISIONS}
{budget}
[bench]
runs = {runs}
pin = {cpu}
"""


def _build(
    config: Path, out: Path, cache: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, float, dict[str, Any] | None, str]:
    env = {**os.environ, "EDGEKIT_CACHE_DIR": str(cache), "EDGEKIT_PROGRESS": "0", **(env or {})}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "edgekit", "build", "-c", str(config), "-o", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - started
    manifest = out / "manifest.json"
    doc = json.loads(manifest.read_text()) if manifest.exists() else None
    return done.returncode, seconds, doc, done.stderr.strip().splitlines()[-1:] and done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _statuses(doc: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in doc["cells"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    return counts


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("edgekit: error")]
    return lines[-1] if lines else (text.splitlines() or [""])[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", type=int, default=0, help="the CPU timings are pinned to")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", type=Path, help="keep the builds here (default: a temp folder)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="edgekit-build-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    orientation = realmodels.REAL_MODELS["orientation"]
    np.savez(work / "orientation_calibration.npz", **orientation.inputs(64, 1))
    np.savez(work / "orientation_eval.npz", **orientation.inputs(100, 2))
    config = work / "edgekit.toml"
    config.write_text(_config(work, args.cpu, args.runs))
    print(f"CPU: {describe_cpu(cpu_info())}")
    print(f"config: {config}\n")

    rows = []
    code, cold_s, cold, err = _build(config, work / "cold", work / "cache-local", "-j", "2")
    assert code == 0 and cold, err
    rows.append(("cold (local pool, -j 2)", code, cold_s, _statuses(cold)))
    code, warm_s, warm, err = _build(config, work / "warm", work / "cache-local")
    assert code == 0 and warm, err
    rows.append(("warm (same cache)", code, warm_s, _statuses(warm)))

    same = None
    if not args.no_ray:
        ray = Path(sys.executable).parent / "ray"
        port = _free_port()
        env = {"RAY_USAGE_STATS_ENABLED": "0"}
        subprocess.run(
            [
                str(ray),
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            check=True,
            capture_output=True,
            env={**os.environ, **env},
        )
        try:
            address = f"127.0.0.1:{port}"
            code, ray_s, on_ray, err = _build(
                config,
                work / "ray",
                work / "cache-ray",
                "--executor",
                "ray",
                "--ray-address",
                address,
            )
        finally:
            subprocess.run([str(ray), "stop", "--force"], capture_output=True)
        assert code == 0 and on_ray, err
        rows.append(("ray (own empty cache)", code, ray_s, _statuses(on_ray)))
        local = {c["id"]: c["artifact_sha256"] for c in cold["cells"]}
        remote = {c["id"]: c["artifact_sha256"] for c in on_ray["cells"]}
        same = sum(local[k] == remote.get(k) for k in local), len(local)

    tight = work / "tight.toml"
    tight.write_text(
        _config(work, args.cpu, args.runs, budget="[targets.tflite.budgets]\nmax_size_mib = 0.001")
    )
    code, tight_s, over, err = _build(tight, work / "tight", work / "cache-local")
    rows.append(("tight budget (tflite <= 1 KiB)", code, tight_s, over and _statuses(over)))
    tight_line = _last_line(err)

    changed = work / "changed.toml"
    changed.write_text(
        _config(
            work,
            args.cpu,
            args.runs,
            ort_recipe="[targets.onnxruntime.recipe]\nper_channel = false",
        )
    )
    code, base_s, base, err = _build(
        changed,
        work / "changed",
        work / "cache-local",
        "--baseline",
        str(work / "cold" / "manifest.json"),
    )
    rows.append(("ORT per_channel=false --baseline cold", code, base_s, base and _statuses(base)))
    base_line = _last_line(err)

    print("| step | exit | wall s | cells |")
    print("| --- | --- | --- | --- |")
    for step, code, seconds, counts in rows:
        print(f"| {step} | {code} | {seconds:.1f} | {counts} |")
    print()
    print(f"cells: {len(cold['cells'])}; toolchain lock: {json.dumps(cold['toolchain'])}")
    if same is not None:
        print(f"ray vs local: {same[0]} of {same[1]} cells with equal artifact_sha256")
    print(f"tight budget: {tight_line}")
    print(f"baseline: {base_line}")
    if base:
        rebuilt = [c["id"] for c in base["cells"] if c["status"] != "cached"]
        print(f"rebuilt after the recipe change: {rebuilt}")
        for r in base["baseline"]["regressions"]:
            print(f"  regression: {r}")
    print("\n| cell | size KiB | top-1 agr | cos | p50 ms |")
    print("| --- | --- | --- | --- | --- |")
    for c in cold["cells"]:
        a = c.get("agreement") or {}
        print(
            f"| {c['id']} | {c['size_bytes'] / 1024:.0f} | {a.get('top1_agreement', 0):.2%} | "
            f"{a.get('mean_cosine', 0):.5f} | {c['p50_ms']:.3f} |"
        )
    chromium = shutil.which("chromium")
    if chromium:
        png = work / "report.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--screenshot={png}",
                "--window-size=1200,3000",
                f"file://{work / 'cold' / 'report.html'}",
            ],
            capture_output=True,
            timeout=120,
        )
        print(f"\nreport screenshot: {png} ({png.stat().st_size if png.exists() else 0} bytes)")
    print(f"\nbuilds kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
