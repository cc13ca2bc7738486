"""Cold vs warm conversion cache, each in a fresh process: the digits CNN (.pt2) exported at
fp32, fp16 and int8 to every backend, first with an empty cache folder, then again with the
folder the first run filled. Prints wall times per backend and the warm/cold ratio.

    .venv/bin/python tools/bench_convert_cache.py

The second run converts nothing (the script checks the sidecars say so); what remains is
loading the source, computing the FP32 reference, quantizing and checking each artifact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digits_artifacts import ROOT, prepare

_CHILD = """
import sys, edgekit
from digits_artifacts import CALIBRATION
edgekit.export(sys.argv[1], sys.argv[2], ["fp32", "fp16", "int8"], output_dir=sys.argv[3],
               calibration=CALIBRATION, eval_samples=20)
"""
BACKENDS = ("onnxruntime", "openvino", "tflite")


def _run(pt2: Path, backend: str, out: Path, cache: Path) -> float:
    env = {**os.environ, "EDGEKIT_CACHE_DIR": str(cache), "EDGEKIT_PROGRESS": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tools"), env.get("PYTHONPATH", "")])
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(pt2), backend, str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="edgekit-cache-bench-"))
    pt2, _ = prepare(work / "source")
    print(f"source {pt2.name}: {pt2.stat().st_size / 2**20:.2f} MiB; fp32+fp16+int8 per run")
    print(f"{'backend':<13}{'cold s':>8}{'warm s':>8}{'warm/cold':>11}  conversion (warm)")
    for backend in BACKENDS:
        cache = work / f"cache-{backend}"
        cold = _run(pt2, backend, work / f"cold-{backend}", cache)
        warm = _run(pt2, backend, work / f"warm-{backend}", cache)
        sides = sorted((work / f"warm-{backend}").glob("*.edgekit.json"))
        how = {json.loads(s.read_text())["conversion"]["how"] for s in sides}
        print(
            f"{backend:<13}{cold:>8.1f}{warm:>8.1f}{warm / cold:>11.2f}  {', '.join(sorted(how))}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
