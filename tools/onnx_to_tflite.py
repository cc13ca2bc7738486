"""Issue 15's figures: the real-model set's ONNX models exported to TFLite (onnx2torch +
litert-torch) at fp32 and int8, against the ONNX original on real inputs, beside the same model
on ONNX Runtime.

Per model:

* conversion wall time of ``edgekit export MODEL --target tflite -p fp32`` as a fresh process,
  cold (an empty conversion cache) and warm (the cache from the cold run), with the network
  unreachable (``unshare -rn``: a user and network namespace with no interface but loopback)
  where the kernel allows it, so that anything that tried to fetch a file would fail here;
* size of each artifact over the ONNX file's;
* agreement with the ONNX original run in ONNX Runtime on real inputs (``realmodels``): top-1
  for the classifier, top-anchor for the detectors, cosine, max |diff| over the output range;
* p50 latency of LiteRT over ONNX Runtime at the same precision, from one ``edgekit.benchmark``
  run of the four artifacts (1 thread, pinned to ``--cpu``, interleaved rounds).

Models the route refuses (the OCR's LSTM, the already-quantized OCR) are listed with the
``inspect --target tflite`` pre-flight's exit code and the export's one-line error.

    .venv/bin/python tools/onnx_to_tflite.py [--models orientation,layout,ocr-det,ocr,ocr-old]
        [--cpu 1] [--runs 100] [--rounds 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGEKIT_PROGRESS", "0")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_models import closeness, task_metric

import edgekit
from edgekit import realmodels
from edgekit.bench.sysinfo import cpu_info, describe_cpu
from edgekit.errors import first_line
from edgekit.realmodels import original_runner, read_feeds

CLI = [sys.executable, "-m", "edgekit"]
DEFAULT = "orientation,layout,ocr-det,ocr,ocr-old"


def _offline_prefix() -> list[str]:
    """``unshare -rn`` where it works (no network inside), else nothing (said in the output)."""
    probe = shutil.which("unshare")
    if probe and subprocess.run([probe, "-rn", "true"], capture_output=True).returncode == 0:
        return [probe, "-rn"]
    return []


def _timed_export(path: Path, name: str, cache: Path, out: Path, prefix: list[str]) -> dict:
    cmd = [*prefix, *CLI, "export", str(path), "--target", "tflite", "-p", "fp32", "-o"]
    cmd += [str(out), *realmodels.shape_flags(name)]
    env = {**os.environ, "EDGEKIT_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    lines = done.stderr.splitlines()
    error = [line for line in lines if line.startswith("edgekit: error")] or lines[-1:]
    return {
        "seconds": round(seconds, 1),
        "exit": done.returncode,
        "error": error[:1] if done.returncode else [],
    }


def _preflight(path: Path) -> dict:
    done = subprocess.run(
        [*CLI, "inspect", str(path), "--target", "tflite", "--json"],
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout).get("target_report", {}) if done.stdout else {}
    return {"exit": done.returncode, "unconvertible": report.get("unconvertible_ops")}


def run_model(name: str, args: argparse.Namespace, prefix: list[str]) -> dict[str, Any]:
    path = realmodels.fetch(name)
    work = Path(tempfile.mkdtemp(prefix=f"o2t-{name}-"))
    row: dict[str, Any] = {"model": name, "preflight": _preflight(path)}
    cache = work / "cache"
    row["cold"] = _timed_export(path, name, cache, work / "cold", prefix)
    if row["cold"]["exit"] != 0:
        shutil.rmtree(work, ignore_errors=True)
        return row
    row["warm"] = _timed_export(path, name, cache, work / "warm", prefix)
    realmodels.write_inputs(name, work / "calib.npz", args.calibration_samples, 0)
    realmodels.write_inputs(name, work / "eval.npz", args.eval_samples, 1)
    one = {k: v[0] for k, v in np.load(work / "eval.npz").items()}
    np.savez(work / "bench.npz", **one)
    feeds = read_feeds(work / "eval.npz")
    run = original_runner(path)
    want = [run(f) for f in feeds]
    onnx_size = path.stat().st_size
    artifacts = {}
    for backend in ("onnxruntime", "tflite"):
        reports = edgekit.export(
            path,
            backend,
            ["fp32", "int8"],
            output_dir=work / backend,
            calibration=work / "calib.npz",
            eval_data=work / "eval.npz",
            input_shapes=realmodels.REAL_MODELS[name].shapes,
            calibration_samples=args.calibration_samples,
            eval_samples=args.eval_samples,
        )
        for precision, report in zip(("fp32", "int8"), reports, strict=True):
            session = edgekit.load(report.artifact)
            got = [session.run(f) for f in feeds]
            cos, rel = closeness(want, got)
            row[f"{backend}-{precision}"] = {
                "size_ratio": round(report.artifact.stat().st_size / onnx_size, 3),
                "task": task_metric(name, want, got),
                "cosine": round(cos, 5),
                "diff_over_range": float(f"{rel:.3g}"),
            }
            artifacts[(backend, precision)] = report.artifact
    order = [(b, p) for p in ("fp32", "int8") for b in ("onnxruntime", "tflite")]
    bench = edgekit.benchmark(
        [artifacts[k] for k in order],
        runs=args.runs,
        warmup=10,
        rounds=args.rounds,
        threads=1,
        pin=args.cpu,
        inputs=work / "bench.npz",
    )
    p50 = {k: r["timing_ms"]["p50"] for k, r in zip(order, bench.results, strict=True)}
    for backend, precision in order:
        row[f"{backend}-{precision}"]["p50_ms"] = round(p50[(backend, precision)], 3)
    for precision in ("fp32", "int8"):
        ratio = p50[("tflite", precision)] / p50[("onnxruntime", precision)]
        row[f"tflite-{precision}"]["p50_vs_ort"] = round(ratio, 2)
    shutil.rmtree(work, ignore_errors=True)
    return row


def _print(rows: list[dict], offline: bool, cpu: str) -> None:
    print(f"CPU: {cpu}; network {'unreachable (unshare -rn)' if offline else 'NOT isolated'}")
    for row in rows:
        pre = row["preflight"]
        cold = row["cold"]
        if cold["exit"] != 0:
            print(
                f"{row['model']:<12} refused: inspect exit {pre['exit']} "
                f"({', '.join(pre['unconvertible'] or [])}); export exit {cold['exit']}: "
                f"{(cold['error'] or [''])[0]}"
            )
            continue
        print(
            f"{row['model']:<12} convert cold {cold['seconds']} s, warm "
            f"{row['warm']['seconds']} s (exit {row['warm']['exit']})"
        )
        for key in ("onnxruntime-fp32", "tflite-fp32", "onnxruntime-int8", "tflite-int8"):
            c = row[key]
            vs = f"  LiteRT/ORT p50 {c['p50_vs_ort']:.2f}x" if "p50_vs_ort" in c else ""
            print(
                f"  {key:<17} size {c['size_ratio']:.2f}x  {c['task']:<17} cos {c['cosine']:.4f}"
                f"  diff/range {c['diff_over_range']:.2g}  p50 {c['p50_ms']:.2f} ms{vs}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT)
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    prefix = _offline_prefix()
    rows = []
    for name in args.models.split(","):
        try:
            rows.append(run_model(name, args, prefix))
        except Exception as exc:  # one model's failure is a row, the table goes on
            rows.append({"model": name, "error": f"{type(exc).__name__}: {first_line(exc)}"})
            print(f"{name}: {rows[-1]['error']}", file=sys.stderr)
    cpu = describe_cpu(cpu_info())
    if args.json:
        print(json.dumps({"cpu": cpu, "offline": bool(prefix), "rows": rows}, indent=2))
    else:
        _print([r for r in rows if "error" not in r], bool(prefix), cpu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
