"""The export sidecar: where it lives next to an artifact, and reading one back safely.

A sidecar (``<artifact>.edgekit.json``) says which files make up the artifact, the recipe that
made it and how its inputs map to the source model's. Export writes it; benchmark and every later
step read it through :func:`read_sidecar`, which treats the file as untrusted input: a sidecar is
a JSON object whose file list names plain files in the artifact's own folder (no absolute paths,
no ``..``, no symlinks that lead out of the folder). Anything else is a ModelFormatError, because
a benchmark copies the listed files to a device and counts their size: a list naming
``/etc/passwd`` must never be followed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ModelFormatError

SIDECAR_SUFFIX = ".edgekit.json"
SIDECAR_SCHEMA_VERSION = 1
# A sidecar is a few KiB; anything far larger is not one, and is not read into memory.
MAX_SIDECAR_BYTES = 16 << 20


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class Sidecar:
    """The parts of a sidecar that readers act on, validated; ``raw`` keeps the whole object."""

    path: Path
    files: tuple[Path, ...]
    precision: str | None
    io_map: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)


def _bad(side: Path, why: str) -> ModelFormatError:
    return ModelFormatError(
        f"{side} is not a valid edgekit sidecar ({why}); re-export the artifact or delete the "
        "sidecar"
    )


def _typed(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], side: Path) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise _bad(side, f"'{key}' is a {type(value).__name__}")
    return value


def confined_file(folder: Path, name: Any, side: Path) -> Path:
    """``folder/name`` if ``name`` is a plain file name whose real path stays in ``folder``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise _bad(side, f"file entry {name!r} is not a file name")
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
        raise _bad(side, f"file entry {name!r} is not a plain file name in the artifact's folder")
    path = folder / name
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([real_folder, real]) != real_folder:
        raise _bad(side, f"file entry {name!r} leads outside the artifact's folder")
    return path


def read_sidecar(artifact: Path) -> Sidecar | None:
    """The validated sidecar of ``artifact``, or None when it has none."""
    side = sidecar_path(artifact)
    if not side.exists():
        return None
    if not side.is_file():
        raise _bad(side, "not a regular file")
    if side.stat().st_size > MAX_SIDECAR_BYTES:
        raise _bad(side, f"larger than {MAX_SIDECAR_BYTES >> 20} MiB")
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _bad(side, f"not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise _bad(side, f"a JSON {type(raw).__name__}, not an object")
    art = _typed(raw, "artifact", dict, side) or {}
    names = _typed(art, "files", list, side) or []
    files = tuple(confined_file(artifact.parent, n, side) for n in names)
    if files and artifact.name not in names:
        raise _bad(side, f"its file list does not name {artifact.name}")
    recipe = _typed(raw, "recipe", dict, side) or {}
    details = _typed(raw, "backend_details", dict, side) or {}
    return Sidecar(
        path=side,
        files=files,
        precision=_typed(recipe, "precision", str, side),
        io_map=_typed(details, "io_map", dict, side),
        raw=raw,
    )
