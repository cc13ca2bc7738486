"""The benchmark flow: artifacts -> one fresh runner process each on the device -> warm-up ->
interleaved timed rounds -> statistics, memory, ratios to the first artifact.

The runner for an artifact is its backend's (``backend.runner``, in the backend's package),
the backend found from the artifact's suffix through the backend registry, so a new backend
brings its runner with it.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.artifact import read_sidecar
from edgekit.backends import backend_for_artifact, get_backend
from edgekit.bench import devices
from edgekit.bench import inputs as bench_inputs
from edgekit.bench.devices.process import ErrorFor, RunnerProcess
from edgekit.bench.interleave import default_rounds, run_rounds
from edgekit.bench.memory import figures
from edgekit.bench.runners._harness import RunnerError, parse_cpus
from edgekit.bench.schema import TIMING_STATS, BenchmarkResult
from edgekit.bench.stats import summarize
from edgekit.errors import (
    ConversionError,
    DataError,
    DeviceError,
    EdgekitError,
    MissingDependencyError,
    ModelFormatError,
    ModelNotFoundError,
    UsageError,
    speaks_api,
)
from edgekit.progress import progress

INFERENCE_PRECISIONS = ("match", "auto", "f32", "f16", "bf16")
_TIMING_KEYS = ("runs", *TIMING_STATS)
# Runner error kinds -> what edgekit raises (runtime_missing is handled on its own).
_KINDS: dict[str, type[EdgekitError]] = {
    "usage": UsageError,
    "model": ModelFormatError,
    "data": DataError,
    "device": DeviceError,
    "run": ConversionError,
}


@dataclass(frozen=True)
class Artifact:
    """One artifact to benchmark: its files, backend and runner, and ``io_map``: how its
    inputs relate to the source model's (see :mod:`edgekit.bench.inputs`), when they differ."""

    path: Path
    backend: str
    extra: str
    runner: Path
    files: tuple[Path, ...]
    precision: str | None
    io_map: dict[str, Any] | None = None

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def files_json(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "bytes": f.stat().st_size} for f in self.files]


def resolve_artifact(path: str | Path) -> Artifact:
    """Check ``path`` and find its backend, runner, companion files and recipe precision."""
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"artifact not found: {p}")
    backend = backend_for_artifact(str(p))
    if not backend.runner.is_file():
        raise UsageError(
            f"{p}: backend '{backend.name}' has no benchmark runner ({backend.runner})"
        )
    sidecar = read_sidecar(p)
    module = backend.runner_module
    # The runtime needs the companions (an .xml's .bin) whatever a sidecar lists.
    files = [p, *(Path(f) for f in module.companion_files(str(p)))]
    if sidecar:
        files += [f for f in sidecar.files if f not in files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModelNotFoundError(f"{p}: file(s) of this artifact are missing: {', '.join(missing)}")
    precision = sidecar.precision if sidecar else None
    io_map = sidecar.io_map if sidecar else None
    if io_map is None and hasattr(module, "io_map"):
        # Without a sidecar, a runner may read the map the file itself carries (host side).
        io_map = module.io_map(str(p))
    return Artifact(p, backend.name, backend.extra, backend.runner, tuple(files), precision, io_map)


@speaks_api
def benchmark(
    artifacts: str | Path | Sequence[str | Path],
    *,
    device: str | None = None,
    runs: int = 100,
    warmup: int = 10,
    duration: float | None = None,
    threads: int | None = None,
    pin: str | int | None = None,
    inputs: str | Path = "random",
    rounds: int | None = None,
    seed: int = 0,
    inference_precision: str = "match",
    remote_python: str | None = None,
    ssh_config: str | Path | None = None,
    ssh_options: Sequence[str] = (),
    benchmark_binary: str | None = None,
    connect_timeout: float = 10.0,
    timeout: float = 600.0,
) -> BenchmarkResult:
    """Benchmark one or more artifacts on a device; see ``edgekit benchmark --help``.

    Each artifact loads in its own fresh runner process. With several artifacts the counted
    runs go in interleaved rounds (A B C A B C ...), and the result gives ratios to the first.
    ``duration`` (seconds) makes each artifact run at least that long in total.
    ``inference_precision`` sets OpenVINO's INFERENCE_PRECISION_HINT: ``match`` (default) is
    f32 for FP32 artifacts and the runtime's choice for others, as edgekit's OpenVINO sessions
    do; ``auto`` is always the runtime's choice (bf16/f16 on CPUs that have it).
    ``remote_python`` is the interpreter that runs the runners (ssh default: ``python3`` or
    $EDGEKIT_REMOTE_PYTHON; locally: this one). ``ssh_config``/``ssh_options`` go to ssh as
    ``-F``/``-o``; ``benchmark_binary`` is adb's benchmark_model; ``timeout`` bounds each step.
    """
    paths = [artifacts] if isinstance(artifacts, str | Path) else list(artifacts)
    _check_settings(paths, runs, warmup, duration, threads, rounds, inference_precision, timeout)
    cpus = _parse_pin(pin)
    inputs_path = _inputs(inputs)
    arts = [resolve_artifact(p) for p in paths]
    rounds = rounds or default_rounds(runs, len(arts))
    dev = devices.resolve(
        device,
        python=remote_python,
        ssh_config=ssh_config,
        ssh_options=tuple(ssh_options),
        benchmark_binary=benchmark_binary,
        connect_timeout=connect_timeout,
        timeout=timeout,
    )
    if cpus is not None and hasattr(dev, "check_pin"):
        dev.check_pin(cpus)
    settings = {
        "runs": runs,
        "warmup": warmup,
        "duration_s": duration,
        "rounds": rounds,
        "interleaved": dev.protocol == "runner" and len(arts) > 1 and rounds > 1,
        "threads": threads,
        "pin": None if pin is None else str(pin),
        "inputs": "random" if inputs_path is None else str(inputs_path),
        "seed": seed,
        "inference_precision": inference_precision,
    }
    try:
        if dev.protocol == "runner":
            results, cpu = _run_runners(dev, arts, settings, inputs_path)
            info = {**dev.describe(), "cpu": cpu}
        else:
            results = [dev.measure(a, settings, inputs_path) for a in progress(arts, "benchmark")]
            info = dev.describe()
    finally:
        dev.close()
    _add_ratios(results)
    return BenchmarkResult(
        device=info,
        settings=settings,
        results=results,
        edgekit_version=__version__,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def _check_settings(
    paths: list, runs, warmup, duration, threads, rounds, precision, timeout
) -> None:
    if not paths:
        raise UsageError("benchmark: give at least one artifact")
    for name, value, low in (("--runs", runs, 1), ("--warmup", warmup, 0), ("--rounds", rounds, 1)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise UsageError(f"{name} {value}: expected a whole number of at least {low}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads {threads}: expected a whole number of at least 1")
    if duration is not None and not duration > 0:
        raise UsageError(f"--duration {duration}: expected a number of seconds above 0")
    if not timeout > 0:
        raise UsageError(f"--timeout {timeout}: expected a number of seconds above 0")
    if precision not in INFERENCE_PRECISIONS:
        raise UsageError(
            f"--inference-precision {precision}: choose one of {', '.join(INFERENCE_PRECISIONS)}"
        )


def _parse_pin(pin: str | None) -> set[int] | None:
    if pin is None:
        return None
    try:
        return parse_cpus(str(pin))
    except RunnerError as exc:
        raise UsageError(str(exc)) from None


def _inputs(inputs: str | Path) -> Path | None:
    if str(inputs) == "random":
        return None
    p = Path(inputs)
    if not p.is_file():
        raise DataError(f"--inputs {p}: no such file; give a .npz/.npy file or 'random'")
    if p.suffix.lower() not in (".npz", ".npy"):
        raise DataError(
            f"--inputs {p}: expected a .npz (one array per input name) or .npy file, or 'random'"
        )
    return p


def _runner_args(dev: Any, settings: dict[str, Any]) -> list[str]:
    args = ["--seed", str(settings["seed"])]
    args += ["--inference-precision", settings["inference_precision"]]
    if settings["threads"]:
        args += ["--threads", str(settings["threads"])]
    if settings["pin"]:
        args += ["--pin", str(settings["pin"])]
    if getattr(dev, "accelerator", None):
        args += ["--accelerator", dev.accelerator]
    return args


def _error_for(art: Artifact, label: str, remote: bool, where: str) -> ErrorFor:
    def make(kind: str, message: str) -> EdgekitError:
        if kind == "runtime_missing":
            if remote:
                return DeviceError(f"{label}: {message} (on {where}; or pass --remote-python)")
            return MissingDependencyError(get_backend(art.backend).runner_module.PIP, art.extra)
        return _KINDS.get(kind, ConversionError)(f"{label}: {message}")

    return make


def _run_runners(
    dev: Any, arts: list[Artifact], settings: dict[str, Any], inputs: Path | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    args = _runner_args(dev, settings)
    handles: list[RunnerProcess] = []
    # Per-artifact copies of --inputs, renamed/transposed to each artifact's own inputs.
    staging = Path(tempfile.mkdtemp(prefix="edgekit-inputs-"))
    try:
        for i, art in enumerate(progress(arts, desc="loading", total=len(arts))):
            label = f"{art.path.name} on {dev.spec}"
            error_for = _error_for(art, label, dev.remote, dev.spec)
            fed = inputs
            if inputs is not None and bench_inputs.renames_or_transposes(art.io_map):
                (staging / str(i)).mkdir()
                fed = bench_inputs.prepare(inputs, art.io_map, staging / str(i))
            handles.append(dev.start(art.runner, art.files, args, fed, label, error_for))
        for h in handles:
            h.warmup(settings["warmup"])
        times = run_rounds(
            handles,
            settings["runs"],
            settings["rounds"],
            settings["duration_s"] or 0.0,
            lambda h, n, s: h.run(n, s),
        )
        byes = [h.finish() for h in handles]
    finally:
        for h in handles:
            h.close()
        shutil.rmtree(staging, ignore_errors=True)
    results = [
        _result(a, h, bye, t, dev.remote)
        for a, h, bye, t in zip(arts, handles, byes, times, strict=True)
    ]
    return results, handles[0].ready.get("cpu")


def _result(
    art: Artifact, h: RunnerProcess, bye: dict[str, Any], times: list[float], remote: bool
) -> dict:
    ready = h.ready
    st = summarize(times)
    info = dict(ready.get("info") or {})
    effective = info.pop("effective_precision", None)
    accelerator = info.pop("accelerator", None)
    threads = info.pop("threads", None)
    notes = []
    if not ready.get("peak_reset"):
        notes.append("peak memory includes the runtime import (no /proc/self/clear_refs here)")
    return {
        "artifact": str(art.path),
        "backend": art.backend,
        "files": art.files_json(),
        "size_bytes": art.size_bytes,
        "runtime": {
            "name": ready.get("runtime"),
            "version": ready.get("version"),
            "tool": "edgekit runner",
            "accelerator": accelerator,
            "threads": threads,
            "python": ready.get("python"),
            "details": info,
        },
        "precision": {"artifact": art.precision, "effective": effective},
        "inputs": bench_inputs.describe(ready.get("inputs", []), art.io_map),
        "timing_ms": {
            "load": ready.get("load_ms"),
            "first_inference": ready.get("first_ms"),
            **{k: st[k] for k in _TIMING_KEYS},
        },
        "throughput_ips": st["throughput_ips"],
        # Over ssh the local child is the ssh client; its rusage says nothing of the runner.
        "memory_mib": figures(ready, bye, None if remote else h.wait4_kb),
        "vs_first": {},
        "notes": notes,
    }


def _add_ratios(results: list[dict[str, Any]]) -> None:
    first = results[0]
    pairs = {
        "p50": lambda r: r["timing_ms"]["p50"],
        "mean": lambda r: r["timing_ms"]["mean"],
        "memory_increase": lambda r: r["memory_mib"]["increase"],
        "size_bytes": lambda r: r["size_bytes"],
    }
    for r in results:
        r["vs_first"] = {k: _ratio(get(r), get(first)) for k, get in pairs.items()}


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base or base <= 0:
        return None
    return value / base
