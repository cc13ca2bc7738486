"""Latency and memory of exported artifacts on a device: ``edgekit benchmark`` and
``edgekit.benchmark(...)``.

    result = edgekit.benchmark(["m_fp32.onnx", "m_int8.onnx"], threads=1, pin="0")
    print(result.table())           # ratios to the first artifact
    doc = result.to_json()          # schema: edgekit.bench.schema

Modules: ``harness`` (the flow), ``runners/`` (``_harness.py``, the device-side loop that
each backend's standalone runner, ``backend.runner``, runs with; both are copied to devices),
``devices/`` (local, ssh, adb), ``stats``, ``memory``, ``interleave``, ``sysinfo``,
``schema``.
"""

from __future__ import annotations

from edgekit.bench.harness import benchmark
from edgekit.bench.schema import SCHEMA_VERSION, BenchmarkResult

run_benchmark = benchmark

__all__ = ["SCHEMA_VERSION", "BenchmarkResult", "benchmark", "run_benchmark"]
