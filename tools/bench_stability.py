"""Spread of edgekit's median latency over repeated trials, pinned to one thread (goal: the
medians of 5 trials within 5 % of each other), for the digits CNN at FP32 on every registered
backend. Each trial is a separate `edgekit benchmark` call (fresh processes, the backends
interleaved inside it).

    .venv/bin/python tools/bench_stability.py [--trials 5] [--runs 2000] [--cpu 0]
"""

from __future__ import annotations

import argparse
import statistics

from bench_models import artifacts

import edgekit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--cpu", default="0")
    args = ap.parse_args()
    arts = artifacts(["fp32"])
    names = [backend for backend, _ in arts]
    medians: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.trials):
        result = edgekit.benchmark(
            list(arts.values()), runs=args.runs, warmup=args.warmup, threads=1, pin=args.cpu
        )
        for name, r in zip(names, result.results, strict=True):
            medians[name].append(r["timing_ms"]["p50"])
    print(result.table().splitlines()[0])
    print(
        f"{args.trials} trials x {args.runs} runs, 1 thread pinned to CPU {args.cpu}, "
        "digits CNN fp32, batch 1"
    )
    print(f"{'backend':<13}{'p50 per trial (us)':<48}{'spread':>8}  goal <= 5%")
    for name, values in medians.items():
        spread = (max(values) - min(values)) / statistics.median(values)
        cells = " ".join(f"{v * 1e3:7.1f}" for v in values)
        verdict = "ok" if spread <= 0.05 else "OVER"
        print(f"{name:<13}{cells:<48}{spread:>8.1%}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
