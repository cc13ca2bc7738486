"""edgekit's median latency vs OpenVINO's own benchmark_app on the same IR (goal: within ±5 %).

The IR is the digits CNN (tools/digits_artifacts.py) at FP32. Both tools run synchronously,
one infer request, one thread, f32 inference precision, pinned to the same CPU, random inputs,
timing the inference call alone; trials alternate (edgekit, benchmark_app, edgekit, ...) so
that drift hits both alike.

    .venv/bin/python tools/bench_vs_benchmark_app.py [--trials 5] [--runs 3000] [--cpu 0]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from digits_artifacts import ROOT, prepare

import edgekit
from edgekit.backends import backend_names


def build_ir(out: Path) -> Path:
    pt2, _ = prepare(out)
    if "openvino" in backend_names():
        return edgekit.export(
            pt2, "openvino", "fp32", output_dir=out, calibration="random"
        ).artifact
    import openvino as ov
    import torch

    xml = out / "digits_cnn_fp32.xml"
    ov.save_model(ov.convert_model(torch.export.load(str(pt2))), str(xml), compress_to_fp16=False)
    return xml


def benchmark_app_median_ms(xml: Path, runs: int, cpu: str) -> float:
    tool = Path(sys.executable).with_name("benchmark_app")
    tool_path = str(tool) if tool.exists() else shutil.which("benchmark_app")
    if tool_path is None:
        raise SystemExit("benchmark_app not found: pip install openvino")
    with tempfile.TemporaryDirectory() as report:
        argv = ["taskset", "-c", cpu, tool_path, "-m", str(xml), "-d", "CPU", "-hint", "none"]
        argv += ["-api", "sync", "-nthreads", "1", "-nstreams", "1", "-niter", str(runs)]
        argv += ["-infer_precision", "f32", "-report_folder", report]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Median:\s+([\d.]+)\s*(ms|us)", out)
    if not found:
        raise SystemExit(f"no median in benchmark_app's output:\n{out[-2000:]}")
    value = float(found.group(1))
    return value / 1e3 if found.group(2) == "us" else value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--cpu", default="0")
    args = ap.parse_args()
    xml = build_ir(ROOT / "out" / "bench_vs_benchmark_app")
    ours, theirs = [], []
    print(f"IR {xml.name} ({xml.stat().st_size + xml.with_suffix('.bin').stat().st_size} bytes)")
    print(f"{args.runs} runs per trial, 1 thread pinned to CPU {args.cpu}, f32, sync, batch 1")
    print(f"{'trial':<7}{'edgekit p50 us':>15}{'benchmark_app median us':>25}{'ratio':>8}")
    for trial in range(1, args.trials + 1):
        result = edgekit.benchmark(
            xml,
            runs=args.runs,
            warmup=args.warmup,
            threads=1,
            pin=args.cpu,
            inference_precision="f32",
        ).results[0]
        ours.append(result["timing_ms"]["p50"])
        theirs.append(benchmark_app_median_ms(xml, args.runs, args.cpu))
        print(
            f"{trial:<7}{ours[-1] * 1e3:>15.1f}{theirs[-1] * 1e3:>25.1f}"
            f"{ours[-1] / theirs[-1]:>8.3f}"
        )
    a, b = statistics.median(ours), statistics.median(theirs)
    diff = a / b - 1
    verdict = "within" if abs(diff) <= 0.05 else "OUTSIDE"
    print(
        f"median over trials: edgekit {a * 1e3:.1f} us, benchmark_app {b * 1e3:.1f} us, "
        f"difference {diff:+.1%} ({verdict} the ±5% goal)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
