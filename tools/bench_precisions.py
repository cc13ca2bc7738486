"""FP32 vs FP16 vs INT8 on every registered backend, for one real model (the digits CNN),
measured side by side in ONE interleaved `edgekit benchmark` run: latency and the peak-memory
increase over each runtime's idle baseline (each artifact in its own fresh process).

    .venv/bin/python tools/bench_precisions.py [--runs 2000] [--rounds 20] [--cpu 0]
"""

from __future__ import annotations

import argparse

from bench_models import artifacts

import edgekit

PRECISIONS = ["fp32", "fp16", "int8"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--cpu", default="0", help="CPU to pin to")
    args = ap.parse_args()
    arts = artifacts(PRECISIONS)
    keys = list(arts)
    result = edgekit.benchmark(
        [arts[k] for k in keys],
        runs=args.runs,
        warmup=args.warmup,
        rounds=args.rounds,
        threads=1,
        pin=args.cpu,
    )
    rows = dict(zip(keys, result.results, strict=True))
    print(result.table().splitlines()[0])
    print(
        f"{args.runs} runs + {args.warmup} warm-up each, {args.rounds} interleaved rounds over "
        f"all {len(keys)} artifacts, 1 thread pinned to CPU {args.cpu}, batch 1"
    )
    head = f"{'backend':<12}{'precision':<10}{'effective':<22}{'size MiB':>9}{'p50 us':>9}"
    head += f"{'p90 us':>9}{'p50/fp32':>10}{'+MiB':>8}{'+MiB/fp32':>11}"
    print(head)
    for backend, precision in keys:
        r, base = rows[backend, precision], rows.get((backend, "fp32"))
        t, m = r["timing_ms"], r["memory_mib"]
        speed = t["p50"] / base["timing_ms"]["p50"] if base else float("nan")
        mem = m["increase"] / base["memory_mib"]["increase"] if base else float("nan")
        print(
            f"{backend:<12}{precision:<10}{r['precision']['effective'] or '-':<22}"
            f"{r['size_bytes'] / 2**20:>9.2f}{t['p50'] * 1e3:>9.1f}{t['p90'] * 1e3:>9.1f}"
            f"{speed:>10.3f}{m['increase']:>8.1f}{mem:>11.3f}"
        )
    print("peak-memory increase over the idle runtime, INT8 vs FP32:")
    for backend in dict.fromkeys(b for b, _ in keys):
        if (backend, "int8") in rows and (backend, "fp32") in rows:
            i8 = rows[backend, "int8"]["memory_mib"]["increase"]
            f32 = rows[backend, "fp32"]["memory_mib"]["increase"]
            verdict = "below" if i8 < f32 else "NOT below"
            print(f"  {backend:<12} int8 {i8:6.1f} MiB vs fp32 {f32:6.1f} MiB: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
