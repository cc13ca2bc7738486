"""``edgekit.toml``: what ``edgekit build`` builds, schema version 1.

::

    version = 1                          # the schema; a newer one is refused by name

    [models.digits]                      # one table per model, named for the manifest
    entry = "edgekit.samples:sample_pt2" # a Python callable returning the model's path, or
    # path = "models/digits.pt2"         # a path, relative to this file
    # input_shapes = { input = [1, 1, 32, 32] }

    [data]                               # shared by every model (overridable per model)
    calibration = "edgekit.samples:sample_calibration"   # path, "random", or module:callable
    eval = "edgekit.samples:sample_eval"
    calibration_samples = 64
    eval_samples = 100

    [targets.onnxruntime]                # a target profile name (targets/*.toml) or backend
    precisions = ["fp32", "int8"]
    [targets.onnxruntime.recipe]         # Recipe fields for the target's cells (as export's)
    keep_float = ["head"]
    devices = ["local", "pi"]            # where its cells are timed (default: ["local"])
    compress = [{ kind = "prune", ratio = 0.5 }, { kind = "finetune", epochs = 1 }]
                                         # passes before export (a .pt2/.keras model; data
                                         # from the model's calibration and eval data)
    [targets.onnxruntime.budgets]        # gates: a cell over one fails the build (exit 10)
    max_size_mib = 2.0                   # artifact size
    min_top1_agreement = 0.98            # with the FP32 source on the eval samples
    min_cosine = 0.99
    max_p50_ms = 5.0                     # on every device of the target, 1 thread, one cell
    max_p90_ms = 6.0                     #   at a time per device
    max_peak_mib = 200                   # the runtime's memory increase running the model

    [devices.pi]                         # a device to time on ("local" is always there)
    url = "ssh://pi@raspberrypi.local"   # ssh://user@host[:port] or adb://SERIAL
    remote_python = "/home/pi/venv/bin/python"   # and what edgekit.benchmark takes:
    # ssh_config = "~/.ssh/config"       # ssh_options, benchmark_binary, connect_timeout

    [bench]                              # how every cell is timed
    runs = 30                            # counted runs per cell (0: no timing, no p50 budget)
    # pin = 1                            # the CPU the runner is pinned to (local device)

Entry points run code: a config is trusted like a Makefile or a CI file, never downloaded.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError

SCHEMA_VERSION = 1
BUDGETS = (
    "max_size_mib",
    "min_top1_agreement",
    "min_cosine",
    "max_p50_ms",
    "max_p90_ms",
    "max_peak_mib",
)
#: budgets measured on a device: checked on every device the target is timed on
DEVICE_BUDGETS = ("max_p50_ms", "max_p90_ms", "max_peak_mib")
#: [devices.NAME] keys besides url: edgekit.benchmark's keyword arguments of the same name
DEVICE_OPTIONS = (
    "remote_python",
    "ssh_config",
    "ssh_options",
    "benchmark_binary",
    "connect_timeout",
    "timeout",
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str | None = None
    entry: str | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetSpec:
    name: str
    precisions: tuple[str, ...]
    budgets: dict[str, float] = field(default_factory=dict)
    #: export keyword fields for every cell of the target (Recipe fields: keep_float, ...)
    recipe: dict[str, Any] = field(default_factory=dict)
    devices: tuple[str, ...] = ("local",)
    #: compress passes (edgekit.compress.passes, as their sidecar dicts) run before export
    compress: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class DeviceSpec:
    """A device cells are timed on: ``url`` as ``edgekit benchmark --device`` takes it."""

    name: str
    url: str = "local"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchSpec:
    runs: int = 30
    pin: int | None = None


@dataclass(frozen=True)
class BuildConfig:
    path: Path
    models: tuple[ModelSpec, ...]
    targets: tuple[TargetSpec, ...]
    data: dict[str, Any]
    bench: BenchSpec = field(default_factory=BenchSpec)
    devices: dict[str, DeviceSpec] = field(default_factory=lambda: {"local": DeviceSpec("local")})

    @property
    def root(self) -> Path:
        return self.path.parent


def _bad(where: str, what: str) -> UsageError:
    return UsageError(f"edgekit.toml: {where}: {what}")


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(where, f"expected a table, got {type(value).__name__}")
    return value


def _unknown(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise _bad(where, f"unknown key {extra[0]!r}; the keys are {', '.join(known)}")


_DATA_KEYS = ("calibration", "eval", "calibration_samples", "eval_samples")


def _data(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    _unknown(table, _DATA_KEYS, where)
    for key in ("calibration", "eval"):
        if key in table and not isinstance(table[key], str):
            raise _bad(f"{where}.{key}", "expected a path, 'random' or 'module:callable'")
    for key in ("calibration_samples", "eval_samples"):
        value = table.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise _bad(f"{where}.{key}", f"expected a positive integer, got {value!r}")
    return dict(table)


def load_config(path: str | Path) -> BuildConfig:
    """Read and validate ``path``; every error names the key that is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"{path}: no build config there; write an example with: edgekit build --init"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    _unknown(raw, ("version", "models", "data", "targets", "devices", "bench"), "top level")
    version = raw.get("version")
    if version != SCHEMA_VERSION:
        raise _bad(
            "version", f"this edgekit reads schema version {SCHEMA_VERSION}, not {version!r}"
        )
    models = []
    for name, table in _table(raw.get("models", {}), "models").items():
        where = f"models.{name}"
        table = _table(table, where)
        _unknown(table, ("path", "entry", "input_shapes", "data"), where)
        if ("path" in table) == ("entry" in table):
            raise _bad(where, "give exactly one of path or entry")
        shapes = _table(table.get("input_shapes", {}), f"{where}.input_shapes")
        for key, dims in shapes.items():
            if not isinstance(dims, list) or not all(isinstance(d, int) and d > 0 for d in dims):
                raise _bad(f"{where}.input_shapes.{key}", "expected a list of positive integers")
        models.append(
            ModelSpec(
                name,
                table.get("path"),
                table.get("entry"),
                {k: list(v) for k, v in shapes.items()},
                _data(_table(table.get("data", {}), f"{where}.data"), f"{where}.data"),
            )
        )
    targets = []
    for name, table in _table(raw.get("targets", {}), "targets").items():
        where = f"targets.{name}"
        table = _table(table, where)
        _unknown(table, ("precisions", "budgets", "recipe", "devices", "compress"), where)
        precisions = table.get("precisions")
        if not isinstance(precisions, list) or not precisions:
            raise _bad(f"{where}.precisions", "expected a non-empty list such as ['fp32', 'int8']")
        budgets = _table(table.get("budgets", {}), f"{where}.budgets")
        _unknown(budgets, BUDGETS, f"{where}.budgets")
        for key, value in budgets.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise _bad(f"{where}.budgets.{key}", f"expected a number >= 0, got {value!r}")
        recipe = dict(_table(table.get("recipe", {}), f"{where}.recipe"))
        fields = _recipe_fields()
        unknown = sorted(set(recipe) - fields)
        if unknown:
            known = ", ".join(sorted(fields))
            raise _bad(
                f"{where}.recipe", f"unknown field {unknown[0]!r}; Recipe fields are {known}"
            )
        compress = _passes(table.get("compress", []), f"{where}.compress")
        devices = table.get("devices", ["local"])
        if (
            not isinstance(devices, list)
            or not devices
            or not all(isinstance(d, str) for d in devices)
        ):
            raise _bad(f"{where}.devices", "expected a non-empty list of device names")
        targets.append(
            TargetSpec(
                name,
                tuple(precisions),
                {k: float(v) for k, v in budgets.items()},
                recipe,
                tuple(dict.fromkeys(devices)),
                compress,
            )
        )
    if not models or not targets:
        raise _bad("top level", "needs at least one [models.NAME] and one [targets.NAME]")
    data = _data(_table(raw.get("data", {}), "data"), "data")
    bench_table = _table(raw.get("bench", {}), "bench")
    _unknown(bench_table, ("runs", "pin"), "bench")
    runs, pin = bench_table.get("runs", 30), bench_table.get("pin")
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 0:
        raise _bad("bench.runs", f"expected an integer >= 0, got {runs!r}")
    if pin is not None and (not isinstance(pin, int) or pin < 0):
        raise _bad("bench.pin", f"expected a CPU number, got {pin!r}")
    known = _devices(_table(raw.get("devices", {}), "devices"), path.resolve().parent)
    for target in targets:
        if runs == 0 and set(DEVICE_BUDGETS) & set(target.budgets):
            raise _bad(
                f"targets.{target.name}.budgets", "latency/memory budgets need bench.runs > 0"
            )
        for name in target.devices:
            if name not in known:
                raise _bad(
                    f"targets.{target.name}.devices",
                    f"no device {name!r}; define [devices.{name}] with a url, or use local",
                )
    return BuildConfig(
        path.resolve(), tuple(models), tuple(targets), data, BenchSpec(runs, pin), known
    )


def _passes(raw: Any, where: str) -> tuple[dict[str, Any], ...]:
    """Each pass checked now (a bad ratio is a config error before any work), kept as data."""
    from edgekit.compress.passes import from_dict

    if not isinstance(raw, list) or not all(isinstance(p, Mapping) for p in raw):
        raise _bad(where, "expected a list of tables such as [{ kind = 'prune', ratio = 0.5 }]")
    for i, p in enumerate(raw):
        try:
            from_dict(p)
        except UsageError as exc:
            raise _bad(f"{where}[{i}]", str(exc)) from exc
        except TypeError as exc:  # a field the pass does not have
            raise _bad(f"{where}[{i}]", str(exc).split(".__init__() ")[-1]) from exc
    return tuple(dict(p) for p in raw)


def _devices(raw: Mapping[str, Any], root: Path) -> dict[str, DeviceSpec]:
    from edgekit.bench.devices import resolve

    found = {"local": DeviceSpec("local")}
    for name, table in raw.items():
        where = f"devices.{name}"
        table = _table(table, where)
        if name == "local":
            raise _bad(where, "local is this machine and takes no settings; name yours otherwise")
        _unknown(table, ("url", *DEVICE_OPTIONS), where)
        url = table.get("url")
        if not isinstance(url, str) or not url:
            raise _bad(f"{where}.url", "expected ssh://user@host[:port] or adb://SERIAL")
        try:
            resolve(url)  # parses the url strictly, connects to nothing
        except UsageError as exc:
            raise _bad(f"{where}.url", str(exc)) from exc
        options = {k: v for k, v in table.items() if k != "url"}
        if "ssh_config" in options:  # relative to this file, like every path in it
            options["ssh_config"] = str(root / Path(str(options["ssh_config"])).expanduser())
        found[name] = DeviceSpec(name, url, options)
    return found


def _recipe_fields() -> set[str]:
    import dataclasses

    from edgekit.recipe import Recipe

    return {f.name for f in dataclasses.fields(Recipe)} - {"precision"}


def call_entry(entry: str, where: str) -> Path:
    """Run ``module:callable`` (no arguments) and return the path it gives."""
    module, _, attr = entry.partition(":")
    if not module or not attr:
        raise _bad(where, f"entry {entry!r} is not of the form module:callable")
    try:
        target = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise _bad(where, f"cannot import {entry!r}: {exc}") from exc
    result = target()
    return Path(result)


def resolve_path(value: str, root: Path, where: str) -> str | Path:
    """A data or model value: ``random``, ``module:callable`` or a path relative to ``root``."""
    if value == "random":
        return value
    if ":" in value and not Path(value).exists() and "/" not in value.split(":")[0]:
        return call_entry(value, where)
    path = (root / value).resolve()
    if not path.exists():
        raise _bad(where, f"{value} does not exist (paths are relative to the config file)")
    return path


EXAMPLE = """# edgekit build config, schema version 1 (README: "edgekit build").
# `edgekit build` builds every model x target x precision below into ./edgekit-build, with a
# manifest, a summary and JUnit results; budgets fail the build (exit 10) when a cell misses one.
version = 1

# The bundled sample: the digits CNN, trained on first use (about a minute) and cached.
[models.digits]
entry = "edgekit.samples:sample_pt2"
# path = "models/my_model.onnx"        # or a file, relative to this config
# input_shapes = { x = [1, 3, 224, 224] }

[data]
calibration = "edgekit.samples:sample_calibration"   # a path, "random", or module:callable
eval = "edgekit.samples:sample_eval"
calibration_samples = 64
eval_samples = 100

[targets.onnxruntime]
precisions = ["fp32", "int8"]
[targets.onnxruntime.budgets]
max_size_mib = 5.0
min_top1_agreement = 0.97

[targets.openvino]
precisions = ["fp32", "int8"]

[targets.tflite]
precisions = ["fp32", "int8"]
[targets.tflite.budgets]
min_cosine = 0.98
# max_p50_ms = 5.0                      # measured on this machine, 1 thread
# max_peak_mib = 200

[bench]
runs = 30                               # every cell is timed here (1 thread, one at a time)
"""
