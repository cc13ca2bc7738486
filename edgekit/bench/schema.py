"""The JSON document ``edgekit benchmark --json`` prints (``BenchmarkResult.to_json()``).

Version 1. Times are milliseconds, memory MiB (2**20 bytes), sizes bytes; a figure a device
cannot give is ``null``. Fields::

    schema            "edgekit.benchmark"
    schema_version    1 (bumped when a field changes meaning or goes away; new fields may be
                      added within a version)
    edgekit_version   the edgekit that ran the benchmark
    created           UTC time, ISO 8601
    device            spec ("local", "GPU", "ssh://pi@board", "adb://SERIAL"), kind
                      (local|ssh|adb), accelerator, host/serial/product where known, and cpu:
                      model, logical_cpus, machine, os, isa (notable ISA flags), flags (all)
    settings          runs, warmup, duration_s, rounds, interleaved, threads, pin, inputs,
                      seed, inference_precision
    results[]         one per artifact, in the order given:
      artifact        path as given;  backend: registry name;  files[]: {name, bytes}
      size_bytes      all files of the artifact (.xml + .bin for OpenVINO)
      runtime         name, version, tool ("edgekit runner" or "benchmark_model"),
                      accelerator, threads (null = the runtime's default), details{}
      precision       artifact: the export recipe's precision from the sidecar (null without
                      one); effective: what the runtime reports it computes in (OpenVINO's
                      inference precision / integer kernels, TFLite's op types; null for ONNX
                      Runtime, which runs the graph's own types)
      inputs[]        name, dtype, shape actually fed; name is the source model's input name
                      and, where the artifact differs (a TFLite export of a PyTorch model),
                      signature is the artifact's own name, layout/source_layout its layout
      timing_ms       load (read + compile), first_inference, and over the counted runs:
                      runs, p50, p90, p99, min, max, mean, std (population), cv (std/mean, a
                      ratio); percentiles interpolate linearly (numpy's default)
      throughput_ips  counted runs per second of inference time (batch as in inputs)
      memory_mib      idle (runtime imported, no model), peak (high-water mark since idle),
                      increase (peak - idle), process_peak (whole process), method
      vs_first        p50, mean, memory_increase, size_bytes: ratios to the first result
      notes[]         caveats for this result (e.g. figures the device's tool lacks)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_NAME = "edgekit.benchmark"
SCHEMA_VERSION = 1

#: statistics over the counted runs, in timing_ms (besides load, first_inference and runs)
TIMING_STATS: tuple[str, ...] = ("p50", "p90", "p99", "min", "max", "mean", "std", "cv")
_NUM = ["number", "null"]
_STR = ["string", "null"]

#: JSON Schema (draft 2020-12) of the document; ``validate`` checks documents against it.
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgekit benchmark result",
    "type": "object",
    "required": [
        "schema",
        "schema_version",
        "edgekit_version",
        "created",
        "device",
        "settings",
        "results",
    ],
    "properties": {
        "schema": {"const": SCHEMA_NAME},
        "schema_version": {"const": SCHEMA_VERSION},
        "edgekit_version": {"type": "string"},
        "created": {"type": "string"},
        "device": {
            "type": "object",
            "required": ["spec", "kind", "cpu"],
            "properties": {
                "spec": {"type": "string"},
                "kind": {"enum": ["local", "ssh", "adb"]},
                "cpu": {
                    "type": ["object", "null"],
                    "required": ["model", "isa", "flags"],
                    "properties": {
                        "model": {"type": _STR},
                        "isa": {"type": "array"},
                        "flags": {"type": "array"},
                    },
                },
            },
        },
        "settings": {
            "type": "object",
            "required": ["runs", "warmup", "rounds", "interleaved", "threads", "inputs"],
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "artifact",
                    "backend",
                    "files",
                    "size_bytes",
                    "runtime",
                    "precision",
                    "inputs",
                    "timing_ms",
                    "throughput_ips",
                    "memory_mib",
                    "vs_first",
                    "notes",
                ],
                "properties": {
                    "size_bytes": {"type": "integer"},
                    "runtime": {
                        "type": "object",
                        "required": ["name", "version", "tool", "threads"],
                    },
                    "precision": {"type": "object", "required": ["artifact", "effective"]},
                    "timing_ms": {
                        "type": "object",
                        "required": ["load", "first_inference", "runs", *TIMING_STATS],
                        "properties": {
                            k: {"type": _NUM} for k in ("load", "first_inference", *TIMING_STATS)
                        },
                    },
                    "throughput_ips": {"type": _NUM},
                    "memory_mib": {
                        "type": "object",
                        "required": ["idle", "peak", "increase", "process_peak", "method"],
                        "properties": {
                            k: {"type": _NUM} for k in ("idle", "peak", "increase", "process_peak")
                        },
                    },
                    "vs_first": {"type": "object", "required": ["p50", "mean"]},
                    "notes": {"type": "array"},
                },
            },
        },
    },
}


@dataclass
class BenchmarkResult:
    """A finished benchmark: the JSON document plus a text table of it."""

    device: dict[str, Any]
    settings: dict[str, Any]
    results: list[dict[str, Any]]
    edgekit_version: str
    created: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "edgekit_version": self.edgekit_version,
            "created": self.created,
            "device": self.device,
            "settings": self.settings,
            "results": self.results,
        }

    def table(self) -> str:
        """Human-readable figures, one row per artifact, ratios to the first."""
        from edgekit.bench.sysinfo import describe_cpu

        s = self.settings
        threads = "runtime default threads" if s["threads"] is None else f"{s['threads']} thr"
        pin = f", pinned to CPU {s['pin']}" if s.get("pin") else ""
        if s["interleaved"]:
            how = f"{s['rounds']} interleaved rounds"
        else:
            how = "one artifact" if len(self.results) == 1 else "one after another"
        lines = [
            f"device   {self.device['spec']}: {describe_cpu(self.device.get('cpu'))}",
            f"runs     {s['runs']} counted + {s['warmup']} warm-up per artifact, {how}, "
            f"{threads}{pin}, inputs {s['inputs']}",
        ]
        cols = [
            ("artifact", "<"),
            ("runtime", "<"),
            ("precision", "<"),
            ("size", ">"),
            ("load ms", ">"),
            ("1st ms", ">"),
            ("p50 ms", ">"),
            ("p90 ms", ">"),
            ("p99 ms", ">"),
            ("mean ms", ">"),
            ("cv", ">"),
            ("inf/s", ">"),
            ("peak MiB", ">"),
            ("+MiB", ">"),
            ("p50 ×", ">"),
            ("+MiB ×", ">"),
        ]
        rows = [[c for c, _ in cols]]
        for r in self.results:
            t, m, v = r["timing_ms"], r["memory_mib"], r["vs_first"]
            prec = r["precision"]["artifact"] or "?"
            if r["precision"]["effective"]:
                prec += f" [{r['precision']['effective']}]"
            rows.append(
                [
                    r["artifact"].rsplit("/", 1)[-1],
                    f"{r['runtime']['name']} {r['runtime']['version'] or ''}".strip(),
                    prec,
                    _size(r["size_bytes"]),
                    _num(t["load"], 1),
                    _num(t["first_inference"], 3),
                    _num(t["p50"], 3),
                    _num(t["p90"], 3),
                    _num(t["p99"], 3),
                    _num(t["mean"], 3),
                    "n/a" if t["cv"] is None else f"{t['cv']:.1%}",
                    _num(r["throughput_ips"], 0),
                    _num(m["peak"], 1),
                    _num(m["increase"], 1),
                    _num(v["p50"], 3),
                    _num(v.get("memory_increase"), 3),
                ]
            )
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(cols))]
        for row in rows:
            cells = [f"{row[i]:{a}{widths[i]}}" for i, (_, a) in enumerate(cols)]
            lines.append("  ".join(cells).rstrip())
        for r in self.results:
            lines += [f"note: {r['artifact'].rsplit('/', 1)[-1]}: {n}" for n in r["notes"]]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _size(n: int) -> str:
    return f"{n / 1024:.1f}K" if n < 1 << 20 else f"{n / (1 << 20):.2f}M"
