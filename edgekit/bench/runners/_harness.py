"""Device side of ``edgekit benchmark``: the timing loop, memory probe and protocol that every
backend runner shares.

This file and one backend runner (each backend's ``runner``, in ``edgekit/backends/``:
``onnxruntime/runner.py``, ``openvino/runner.py``, ``tflite/runner.py``) are all a device needs:
they import only the standard library, numpy and that backend's runtime, never edgekit, so
``edgekit benchmark --device ssh://...`` copies the two into one folder on a board and runs the
runner there. Locally the very same files run in a fresh subprocess per artifact, the runner
from its backend's package with this file's folder on ``PYTHONPATH``.

A runner module provides::

    RUNTIME = "onnxruntime"           # name reported in results
    PIP = "onnxruntime"               # what to install on a device that lacks it
    def import_runtime() -> module    # ImportError if absent
    def companion_files(path) -> [path]   # host side: other files the runtime reads
    def load(rt, path, options) -> model
        # model.inputs, model.outputs: [(name, numpy dtype str, [dims, None if dynamic])]
        # model.set_inputs({name: array}); model.run(); model.info: dict (effective_precision,
        # accelerator, threads, version, ...); model.fetch() -> the last run's outputs (what
        # edgekit's tests compare with its sessions; the protocol never sends them)

Protocol (one JSON object per line; the parent writes commands on stdin)::

    runner -> {"event": "ready", ...}      after import, idle probe, load, first inference
    parent -> {"cmd": "warmup", "n": 10}   runner -> {"event": "ok"}
    parent -> {"cmd": "run", "n": 20, "seconds": 0.5}
                                          runner -> {"event": "times", "ms": [...]}
    parent -> {"cmd": "exit"}              runner -> {"event": "bye", "peak_rss_kb": ...}
    on failure: {"event": "error", "kind": "runtime_missing|usage|model|data|device|run",
                 "message": "..."} and a non-zero exit

The runtime's own messages may be printed on fd 1 by native code; the protocol therefore gets a
private duplicate of stdout and fd 1 is pointed at stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from typing import Any

PROTOCOL = 1
# Flags worth showing from /proc/cpuinfo: the ones that decide which kernels a runtime picks.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "asimdhp",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
    "sme",
)


# Where /proc/cpuinfo names the CPU: x86, then ARM boards/phones, then MIPS.
_MODEL_KEYS = ("model name", "hardware", "cpu model")


class RunnerError(Exception):
    """A failure with a kind the parent maps to an edgekit error class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model and ISA flags from /proc/cpuinfo text (x86 ``flags``, ARM ``Features``)."""
    names: dict[str, str] = {}
    flags: list[str] = []
    processors = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor" and value.isdigit():
            processors += 1
        elif key in _MODEL_KEYS and value:
            names.setdefault(key, value)
        elif key in ("flags", "features") and not flags:
            flags = value.split()
    model = next((names[k] for k in _MODEL_KEYS if k in names), None)
    if model is None:
        parts = re.findall(r"^CPU (implementer|part)\s*:\s*(\S+)", text, re.M)
        if parts:
            model = "ARM " + " ".join(f"{k} {v}" for k, v in parts[:2])
    return {
        "model": model,
        "logical_cpus": processors or None,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "flags": flags,
    }


def cpu_info() -> dict[str, Any]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            info = parse_cpuinfo(f.read())
    except OSError:
        info = {"model": platform.processor() or None, "logical_cpus": None, "isa": [], "flags": []}
    info["logical_cpus"] = info["logical_cpus"] or os.cpu_count()
    info["machine"] = platform.machine()
    info["os"] = f"{platform.system()} {platform.release()}"
    return info


def memory_kb() -> tuple[int | None, int | None]:
    """Current and peak resident set size of this process (VmRSS, VmHWM) in KiB."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None, _ru_maxrss_kb()
    found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+)\s+kB", text, re.M))
    rss = int(found["VmRSS"]) if "VmRSS" in found else None
    hwm = int(found["VmHWM"]) if "VmHWM" in found else _ru_maxrss_kb()
    return rss, hwm


def _ru_maxrss_kb() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0) so that the peak measured at the end is
    the peak since the idle baseline, not a transient spike while the runtime was imported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


_MAX_CPUS = 8192


def parse_cpus(text: str) -> set[int]:
    """``0``, ``0,2`` or ``0-3`` -> a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise RunnerError("usage", f"--pin {text}: expected CPU numbers like 0, 0,2 or 0-3")
        first, last = int(lo), int(hi or lo)
        # CPU numbers are below the kernel's limit (CONFIG_NR_CPUS is at most 8192); a larger
        # range is a typo and would only build a huge set.
        if last >= _MAX_CPUS or first > last:
            raise RunnerError(
                "usage", f"--pin {text}: expected CPU numbers from 0 to {_MAX_CPUS - 1}, low-high"
            )
        cpus.update(range(first, last + 1))
    return cpus


def make_inputs(specs: list, source: str, seed: int) -> dict[str, Any]:
    """One feed per model input: seeded random data (uniform 0..1 for floats; dynamic
    dimensions become 1), or arrays from a .npz/.npy file, cast to the input dtype, whose size
    fills dynamic dimensions (the way to time other shapes) and whose first rows fill a static
    batch dimension."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays: dict = {}
    if source != "random":
        try:
            loaded = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RunnerError("data", f"cannot read inputs {source}: {exc}") from None
        arrays = dict(loaded.items()) if hasattr(loaded, "files") else {"": loaded}
    feeds = {}
    for name, dtype, shape in specs:
        dims = [1 if d is None else int(d) for d in shape]
        try:
            np.dtype(dtype)
        except TypeError:
            raise RunnerError(
                "data", f"input '{name}' has type {dtype}, which numpy cannot hold"
            ) from None
        if source == "random":
            feeds[name] = _random(rng, np.dtype(dtype), dims)
            continue
        if name in arrays:
            arr = arrays[name]
        elif len(arrays) == 1 and len(specs) == 1:
            arr = next(iter(arrays.values()))
        else:
            raise RunnerError(
                "data",
                f"{source} has no array named '{name}' (it has: {', '.join(arrays) or 'none'}); "
                "save one array per model input under the input's name",
            )
        # Dynamic dimensions take the file's size; a static batch takes the first rows.
        want = [a if d is None else d for d, a in zip(shape, arr.shape, strict=False)]
        if arr.ndim == len(shape) and want[1:] == list(arr.shape[1:]) and arr.shape[0] >= want[0]:
            arr = arr[: want[0]]
        if arr.ndim != len(shape) or list(arr.shape) != want:
            model = ["?" if d is None else d for d in shape]
            raise RunnerError(
                "data",
                f"input '{name}': {source} holds shape {list(arr.shape)}, the model takes {model}",
            )
        feeds[name] = np.ascontiguousarray(arr.astype(dtype, copy=False))
    return feeds


def _random(rng, dtype, dims: list):
    import numpy as np

    if dtype.kind == "f":
        return rng.random(dims, dtype=np.float32).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, dims).astype(dtype)
    if dtype.kind == "b":
        return rng.random(dims) < 0.5
    raise RunnerError("data", f"cannot make random data of dtype {dtype}; pass --inputs FILE")


def _options(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="edgekit benchmark runner (see --help of edgekit)")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pin", default=None, help="CPUs to run on, e.g. 0 or 0-3")
    ap.add_argument("--inputs", default="random", help="random, or a .npz/.npy file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--accelerator", default=None, help="runtime device, e.g. CPU, GPU, NPU")
    ap.add_argument(
        "--inference-precision", default="match", help="match, auto, f32, f16 or bf16 (OpenVINO)"
    )
    return ap.parse_args(argv)


class _Channel:
    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        os.dup2(2, 1)

    def send(self, event: str, **fields) -> None:
        self._out.write(json.dumps({"event": event, **fields}) + "\n")
        self._out.flush()


def _timed_runs(model, n: int, seconds: float) -> list[float]:
    clock = time.perf_counter
    times = []
    start = clock()
    while len(times) < n or clock() - start < seconds:
        t0 = clock()
        model.run()
        times.append((clock() - t0) * 1e3)
    return times


def main(runner: Any) -> int:
    """Run ``runner`` (a backend runner module) as described in this module's docstring."""
    here = os.path.dirname(os.path.abspath(__file__))
    there = os.path.dirname(os.path.abspath(getattr(runner, "__file__", __file__)))
    # Neither folder may shadow the runtime: locally a runner's folder is its backend's
    # package (edgekit/backends/onnxruntime/, say), full of modules with common names.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) not in (here, there)]
    channel = _Channel()
    try:
        return _serve(runner, _options(sys.argv[1:]), channel)
    except RunnerError as exc:
        channel.send("error", kind=exc.kind, message=str(exc))
        return 3
    except KeyboardInterrupt:
        return 130


def _serve(runner, opts: argparse.Namespace, channel: _Channel) -> int:
    if opts.pin:
        cpus = parse_cpus(opts.pin)
        try:
            os.sched_setaffinity(0, cpus)
        except (OSError, AttributeError) as exc:
            raise RunnerError("usage", f"cannot pin to CPUs {opts.pin}: {exc}") from None
    try:
        rt = runner.import_runtime()
    except ImportError as exc:
        raise RunnerError(
            "runtime_missing",
            f"{runner.RUNTIME} is not installed for {sys.executable} ({exc}); "
            f"install it with: pip install {runner.PIP}",
        ) from None
    peak_reset = reset_peak()
    idle_rss, import_hwm = memory_kb()
    t0 = time.perf_counter()
    try:
        model = runner.load(rt, opts.model, opts)
    except RunnerError:
        raise
    except Exception as exc:
        # A runner marks failures that are not about the model file (e.g. an absent device).
        kind = getattr(exc, "runner_kind", "model")
        raise RunnerError(kind, f"{runner.RUNTIME}: {_line(exc)}") from None
    load_ms = (time.perf_counter() - t0) * 1e3
    feeds = make_inputs(model.inputs, opts.inputs, opts.seed)
    try:
        model.set_inputs(feeds)
        t0 = time.perf_counter()
        model.run()
        first_ms = (time.perf_counter() - t0) * 1e3
    except Exception as exc:
        raise RunnerError(
            "run", f"{runner.RUNTIME} failed to run the model: {_line(exc)}"
        ) from None
    channel.send(
        "ready",
        protocol=PROTOCOL,
        runtime=runner.RUNTIME,
        version=model.info.pop("version", None),
        load_ms=load_ms,
        first_ms=first_ms,
        idle_rss_kb=idle_rss,
        import_peak_rss_kb=import_hwm,
        peak_reset=peak_reset,
        inputs=[
            {"name": n, "dtype": d, "shape": [int(v.shape[i]) for i in range(v.ndim)]}
            for (n, d, _), v in zip(model.inputs, feeds.values(), strict=True)
        ],
        info=model.info,
        cpu=cpu_info(),
        python=platform.python_version(),
        pid=os.getpid(),
    )
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.get("cmd")
        try:
            if op == "warmup":
                _timed_runs(model, int(cmd.get("n", 0)), 0.0)
                channel.send("ok")
            elif op == "run":
                times = _timed_runs(model, int(cmd.get("n", 1)), float(cmd.get("seconds", 0.0)))
                channel.send("times", ms=times)
            elif op == "exit":
                rss, hwm = memory_kb()
                channel.send("bye", rss_kb=rss, peak_rss_kb=hwm)
                return 0
            else:
                raise RunnerError("usage", f"unknown command {op!r}")
        except RunnerError:
            raise
        except Exception as exc:
            raise RunnerError("run", f"{runner.RUNTIME} failed to run: {_line(exc)}") from None
    return 0


# OpenVINO's messages open with where in its C++ sources they were raised ("Exception from
# src/inference/src/cpp/core.cpp:84:", "Check '...' failed at ...cpp:887:"); the cause follows.
_SOURCE_LOCATION = re.compile(r"^(Exception from |Check '.*' failed at )?\S+\.(cpp|hpp|h):\d+:?$")


def _line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    told = [ln for ln in lines if not _SOURCE_LOCATION.match(ln)]
    return ((told or lines or [type(exc).__name__])[0])[:300]
