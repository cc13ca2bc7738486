"""OpenVINO latency, size and agreement of the digits CNN at each precision, side by side.

For each CNN (the 1.07M-parameter digits CNN of ``make demo``, and the same architecture at
twice the width, because the small one is dominated by per-inference overhead): export from a
``.pt2`` at fp32, fp16, int8 (symmetric activations, the OpenVINO targets' default; and
asymmetric), int8-weights and int4-weights, calibrating from ``calibration_data/digits``.
Then, in one process pinned to one CPU, with one stream and one inference thread, time every
artifact in interleaved rounds (A B C A B C ...), including the fp32 IR twice: with
``INFERENCE_PRECISION_HINT=f32`` (true FP32, what edgekit runs) and with the device default
(bf16 on CPUs with AVX512-BF16/AMX). Top-1 agreement is measured against the true-FP32 IR on
all 359 held-out digits. Finally OpenVINO's own ``benchmark_app`` times the same IRs with the
same settings (``taskset`` to the same CPU) and its median is printed beside edgekit's.

    .venv/bin/python tools/bench_openvino.py [--rounds 40] [--iters 25] [--cpu 0]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from digits_artifacts import CALIBRATION, ROOT, export_all, prepare

import edgekit
from edgekit import samples
from edgekit.backends.openvino import BACKEND

WIDTHS = {16: "digits CNN", 32: "digits CNN, 2x wider"}


@dataclass
class Row:
    key: str
    xml: Path
    hint: str | None  # None: the artifact's own choice (f32 for fp32 IRs)
    bench_precision: str | None  # benchmark_app -infer_precision, None for the default


def _export(pt2: Path, test: Path, out: Path) -> dict[str, Path]:
    reports = export_all(
        pt2, test, out, "openvino", ["fp32", "fp16", "int8", "int8-weights", "int4-weights"]
    )
    n_test = len(np.load(test)["labels"])
    asym = edgekit.export(
        pt2,
        "openvino",
        "int8",
        output_dir=out,
        name="digits_cnn_asym",
        calibration=CALIBRATION,
        eval_data=test,
        eval_samples=n_test,
        activation_symmetric=False,
    )
    paths = {p: r.artifact for p, r in reports.items()}
    paths["int8-asym"] = asym.artifact
    return paths


def _rows(paths: dict[str, Path]) -> list[Row]:
    return [
        Row("fp32 (f32 hint)", paths["fp32"], None, "f32"),
        Row("fp32 (bf16 default)", paths["fp32"], "default", None),
        Row("fp16", paths["fp16"], None, None),
        Row("int8", paths["int8"], None, None),
        Row("int8 asym (MIXED)", paths["int8-asym"], None, None),
        Row("int8-weights", paths["int8-weights"], None, None),
        Row("int4-weights", paths["int4-weights"], None, None),
    ]


def _time(rows: list[Row], x: np.ndarray, rounds: int, iters: int) -> tuple[dict, dict]:
    sessions = {
        r.key: BACKEND.open_session(r.xml, threads=1, inference_precision=r.hint) for r in rows
    }
    name = sessions[rows[0].key].inputs[0].name
    feed = {name: x[:1]}
    for s in sessions.values():
        for _ in range(50):
            s.run(feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, s in sessions.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(feed)
                times[key].append(time.perf_counter() - t0)
    return sessions, times


def _benchmark_app(xml: Path, precision: str | None, cpu: int, niter: int) -> float | None:
    """benchmark_app's median latency in microseconds (sync API: one request at a time)."""
    exe = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "openvino.tools.benchmark.main"]
    # -nstreams/-nthreads need -hint none (a benchmark_app rule); -api sync measures latency.
    cmd += ["-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", "1"]
    cmd += ["-nireq", "1", "-api", "sync", "-niter", str(niter)]
    if precision:
        cmd += ["-infer_precision", precision]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    found = re.search(r"Median:\s*([\d.]+)\s*(ms|us)", out)
    if not found:
        return None
    value = float(found.group(1))
    return value * 1000 if found.group(2) == "ms" else value


def _bench_model(width: int, args: argparse.Namespace) -> dict[str, float]:
    out = ROOT / "out" / "bench_openvino" / f"w{width}"
    pt2, test = prepare(out, width=width)
    paths = _export(pt2, test, out)
    data = np.load(test)
    x, labels = data["input"], data["labels"]
    rows = _rows(paths)

    os.sched_setaffinity(0, {args.cpu})
    sessions, times = _time(rows, x, args.rounds, args.iters)
    name = sessions[rows[0].key].inputs[0].name
    logits = {
        k: np.concatenate([s.run({name: x[i : i + 1]})[0] for i in range(len(x))])
        for k, s in sessions.items()
    }
    # benchmark_app: every IR once per pass, passes repeated so drift hits all alike.
    app: dict[str, list[float]] = {r.key: [] for r in rows}
    for _ in range(args.app_passes):
        for r in rows:
            value = _benchmark_app(r.xml, r.bench_precision, args.cpu, args.app_niter)
            if value is not None:
                app[r.key].append(value)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

    import torch

    params = sum(int(np.prod(t.shape)) for t in torch.export.load(str(pt2)).state_dict.values())
    base_key = rows[0].key
    base = float(np.median(times[base_key]))
    app_base = float(np.median(app[base_key])) if app[base_key] else float("nan")
    fp32_bin = paths["fp32"].with_suffix(".bin").stat().st_size
    info = sessions[base_key].info
    print(
        f"\n{WIDTHS[width]} ({params / 1e6:.2f}M parameters, input {tuple(x[:1].shape)}), "
        f"OpenVINO {info['version']}, 1 thread pinned to CPU {args.cpu}, 1 stream, batch 1"
    )
    print(
        f"edgekit: {args.rounds} interleaved rounds x {args.iters} runs of Session.run; "
        f"benchmark_app: {args.app_passes} passes x {args.app_niter} iterations, -api sync"
    )
    head = (
        f"{'artifact':<21}{'bin MiB':>8}{'vs fp32':>8}  {'runs in':<12}{'p50 us':>8}"
        f"{'p90 us':>8}{'p50/f32':>8}{'app p50':>9}{'app/f32':>8}{'top-1 vs f32':>13}"
        f"{'accuracy':>9}"
    )
    print(head)
    ratios: dict[str, float] = {}
    for r in rows:
        t = np.asarray(times[r.key]) * 1e6
        size = r.xml.with_suffix(".bin").stat().st_size
        runs_in = "+".join(sessions[r.key].info["layer_precisions"]) or "?"
        floats = sessions[r.key].info["inference_precision"]
        if floats not in runs_in.split("+"):
            runs_in += f"/{floats}"
        app_p50 = float(np.median(app[r.key])) if app[r.key] else float("nan")
        agree = float(np.mean(logits[r.key].argmax(1) == logits[base_key].argmax(1)))
        acc = samples.accuracy(logits[r.key], labels)
        ratios[r.key] = float(np.median(t)) / 1e6 / base
        print(
            f"{r.key:<21}{size / 2**20:>8.2f}{size / fp32_bin:>8.3f}  {runs_in:<12}"
            f"{np.median(t):>8.1f}{np.percentile(t, 90):>8.1f}{ratios[r.key]:>8.3f}"
            f"{app_p50:>9.1f}{app_p50 / app_base:>8.3f}{agree:>13.2%}{acc:>9.2%}"
        )
    int8 = ratios["int8"]
    int8_agree = float(np.mean(logits["int8"].argmax(1) == logits[base_key].argmax(1)))
    int8_size = paths["int8"].with_suffix(".bin").stat().st_size / fp32_bin
    fp16_size = paths["fp16"].with_suffix(".bin").stat().st_size / fp32_bin
    app_int8 = float(np.median(app["int8"])) / app_base if app["int8"] else float("nan")
    print(
        f"goals: INT8/true-FP32 p50 {int8:.3f} (benchmark_app {app_int8:.3f}; goal <= 0.5), "
        f"INT8 top-1 vs FP32 {int8_agree:.2%} on {len(x)} held-out digits (>= 98%), "
        f"INT8 .bin {int8_size:.3f}x (<= 0.3), FP16 .bin {fp16_size:.3f}x (<= 0.51)"
    )
    return {"int8_ratio": int8, "app_int8_ratio": app_int8}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--iters", type=int, default=25, help="runs per artifact per round")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to")
    ap.add_argument("--widths", type=int, nargs="+", default=sorted(WIDTHS), choices=WIDTHS)
    ap.add_argument("--app-niter", type=int, default=2000, help="benchmark_app iterations")
    ap.add_argument("--app-passes", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("EDGEKIT_PROGRESS", "0")
    import openvino as ov

    core = ov.Core()
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    print(
        f"CPU: {core.get_property('CPU', 'FULL_DEVICE_NAME')}; OpenVINO capabilities "
        f"{', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}; default "
        f"inference precision {default}"
    )
    for width in args.widths:
        _bench_model(width, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
