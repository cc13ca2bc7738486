"""ONNX Runtime latency of the digits CNN (1.07M parameters) at each precision, side by side.

All artifacts are loaded in one process, pinned to one CPU with one intra-op thread, and timed
in interleaved rounds (A B C A B C ...) so machine drift hits them alike. Prints p50/p90 per
artifact and the ratio of each p50 to FP32's. Also times int8 with symmetric (S8S8) activations
to show why uint8 asymmetric activations are edgekit's default on x86.

    .venv/bin/python tools/bench_ort.py [--rounds 40] [--iters 25]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from digits_artifacts import CALIBRATION, ROOT, export_all, prepare

import edgekit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--iters", type=int, default=25, help="runs per artifact per round")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to")
    args = ap.parse_args()
    out = ROOT / "out" / "bench_ort"
    pt2, test = prepare(out)
    reports = export_all(pt2, test, out, "onnxruntime", ["fp32", "fp16", "int8", "int8-dynamic"])
    s8 = edgekit.export(
        pt2,
        "onnxruntime",
        "int8",
        output_dir=out,
        name="digits_cnn_s8s8",
        calibration=CALIBRATION,
        eval_data=test,
        activation_symmetric=True,
    )
    artifacts: dict[str, Path] = {p: r.artifact for p, r in reports.items()}
    artifacts["int8 (S8S8)"] = s8.artifact

    os.sched_setaffinity(0, {args.cpu})
    sessions = {k: edgekit.load(p, threads=1) for k, p in artifacts.items()}
    x = np.load(test)["input"][:1]
    name = sessions["fp32"].inputs[0].name
    for s in sessions.values():
        for _ in range(50):
            s.run({name: x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for key, s in sessions.items():
            for _ in range(args.iters):
                t0 = time.perf_counter()
                s.run({name: x})
                times[key].append(time.perf_counter() - t0)
    base = float(np.median(times["fp32"]))
    print(f"ONNX Runtime {sessions['fp32'].info['version']}, 1 thread pinned to CPU {args.cpu}, ")
    print(f"{args.rounds} interleaved rounds x {args.iters} runs, batch 1, input {x.shape}")
    print(f"{'artifact':<14}{'size MiB':>9}{'p50 us':>9}{'p90 us':>9}{'p50/fp32':>10}{'top-1':>8}")
    for key, t in times.items():
        arr = np.asarray(t) * 1e6
        size = artifacts[key].stat().st_size / 2**20
        agree = (reports.get(key) or s8).agreement.top1_agreement
        print(
            f"{key:<14}{size:>9.2f}{np.median(arr):>9.1f}{np.percentile(arr, 90):>9.1f}"
            f"{np.median(arr) / 1e6 / base:>10.3f}{agree:>8.2%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
