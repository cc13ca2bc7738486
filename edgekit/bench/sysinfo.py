"""What machine a benchmark ran on: CPU model, logical CPUs and the ISA flags that decide which
kernels a runtime picks (AVX2/AVX-512/VNNI/AMX on x86, NEON/dotprod/i8mm/SVE on ARM).

The parsing lives in the device-side ``runners/_harness.py`` (a runner reports the machine it
runs on, which over ssh is not this one); this module is the host-side face of it.
"""

from __future__ import annotations

from typing import Any

from edgekit.bench.runners._harness import ISA_FLAGS, cpu_info, parse_cpuinfo

__all__ = ["ISA_FLAGS", "cpu_info", "describe_cpu", "parse_cpuinfo"]


def describe_cpu(cpu: dict[str, Any] | None) -> str:
    """One line for the table header, e.g. ``AMD EPYC, 2 CPUs, x86_64 (avx2 avx512f …)``."""
    if not cpu:
        return "unknown CPU"
    parts = [cpu.get("model") or "unknown CPU"]
    if cpu.get("logical_cpus"):
        parts.append(f"{cpu['logical_cpus']} CPUs")
    if cpu.get("machine"):
        parts.append(cpu["machine"])
    isa = " ".join(cpu.get("isa") or []) or "no notable ISA flags"
    return f"{', '.join(parts)} ({isa})"
