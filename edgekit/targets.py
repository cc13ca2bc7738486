"""Target profiles: one TOML file per deployment target in the top-level ``targets/`` folder.

``--target X`` resolves ``targets/X.toml``, or a TOML path given directly. A bare backend name is
always a valid target even without a file. Adding a device is adding a file, not code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgekit.backends import backend_names
from edgekit.cpu import check_isa
from edgekit.errors import UsageError

_KEY_TYPES: dict[str, type] = {
    "name": str,
    "backend": str,
    "description": str,
    "device": str,
    "accelerator": str,
    "isa": str,
    "executes": list,
    "precision": dict,
    "recipe": dict,
    "benchmark": dict,
}
_KNOWN_KEYS = set(_KEY_TYPES)
_MAX_PROFILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    description: str = ""
    device: str = "local"
    #: the chip the artifact is made for, when a backend checks for it ("edgetpu": the TFLite
    #: backend's Edge TPU compiler report in ``edgekit inspect --target``); "" for none
    accelerator: str = ""
    #: the CPU instruction-set level the target's int8 kernels run on (one of
    #: edgekit.cpu.ISAS, e.g. "x86-avx2", "x86-vnni", "arm64"); "" for the exporting machine's.
    #: Backends choose their int8 weight scheme from it (edgekit.cpu explains why)
    isa: str = ""
    default_precision: str = "fp32"
    #: what the target's device executes natively, as layer precisions (edgekit.layers:
    #: int8, int16, fp16, float); empty: everything. A layer planned at anything else runs as
    #: a device fallback (an Edge TPU hands a float op back to the CPU), reported as such
    executes: tuple[str, ...] = ()
    #: recipe defaults for this target (e.g. per_channel); holds ``isa`` too when the profile
    #: states one, which is how the ISA reaches the backend's quantizer through the Recipe
    recipe: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)


def _profile_dir() -> Path:
    # Installed (wheel or editable): package data edgekit.profiles, mapped from targets/ in
    # pyproject.toml. A source checkout used without installing: ../targets.
    try:
        path = Path(str(resources.files("edgekit.profiles")))
        if path.is_dir() and any(path.glob("*.toml")):
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "targets"


def target_names() -> list[str]:
    """Every resolvable target: profile files plus bare backend names."""
    return sorted({p.stem for p in _profile_dir().glob("*.toml")} | set(backend_names()))


def _from_toml(path: Path) -> Target:
    if path.stat().st_size > _MAX_PROFILE_BYTES:
        raise UsageError(f"target profile {path} is larger than 1 MiB; is it a profile?")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"target profile {path} is not UTF-8 text ({exc.reason})") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"target profile {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise UsageError(f"target profile {path}: unknown key(s) {unknown}")
    for key, kind in _KEY_TYPES.items():
        if key in data and not isinstance(data[key], kind):
            want = {dict: "a table", list: "a list"}.get(kind, "a string")
            raise UsageError(f"target profile {path}: '{key}' must be {want}, got {data[key]!r}")
    backend = data.get("backend")
    if backend not in backend_names():
        raise UsageError(
            f"target profile {path}: backend '{backend}' is not one of {', '.join(backend_names())}"
        )
    precision = data.get("precision", {})
    if not isinstance(precision.get("default", "fp32"), str):
        raise UsageError(f"target profile {path}: precision.default must be a string")
    isa = data.get("isa", "")
    if isa:
        check_isa(isa, f"target profile {path}")
    executes = data.get("executes", [])
    from edgekit.layers import LAYER_PRECISIONS

    bad = [e for e in executes if e not in LAYER_PRECISIONS]
    if bad:
        raise UsageError(
            f"target profile {path}: executes {bad} must be among {', '.join(LAYER_PRECISIONS)}"
        )
    recipe = dict(data.get("recipe", {}))
    if isa:
        recipe["isa"] = isa
    return Target(
        name=data.get("name", path.stem),
        backend=backend,
        description=data.get("description", ""),
        device=data.get("device", "local"),
        accelerator=data.get("accelerator", ""),
        isa=isa,
        executes=tuple(executes),
        default_precision=precision.get("default", "fp32"),
        recipe=recipe,
        benchmark=dict(data.get("benchmark", {})),
    )


def resolve_target(name: str) -> Target:
    """Resolve ``--target`` to a profile, or raise listing the valid names."""
    as_path = Path(name)
    if as_path.suffix == ".toml" and as_path.exists() and not as_path.is_file():
        raise UsageError(f"target profile {as_path} is not a regular file")
    if as_path.suffix == ".toml" and as_path.is_file():
        return _from_toml(as_path)
    profile = _profile_dir() / f"{name}.toml"
    if profile.is_file():
        return _from_toml(profile)
    if name in backend_names():
        return Target(name=name, backend=name)
    raise UsageError(f"unknown target '{name}'; choose one of {', '.join(target_names())}")
