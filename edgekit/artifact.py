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
from edgekit.model import TensorSpec
from edgekit.schema_check import validate

SIDECAR_SUFFIX = ".edgekit.json"
#: 2 added artifact.sha256 (per file) and conversion (cache key, how it was obtained)
SIDECAR_SCHEMA_VERSION = 2
_STR = ["string", "null"]
_SPEC = {
    "type": "object",
    "required": ["name", "dtype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "dtype": {"type": "string"},
        "shape": {"type": "array"},
        "quantization": {"type": "object"},
    },
}
#: JSON Schema (draft 2020-12) of a sidecar; export checks what it writes against it and
#: :func:`read_sidecar` what it reads.
SIDECAR_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgekit export sidecar",
    "type": "object",
    "required": [
        "schema_version",
        "edgekit_version",
        "created",
        "source",
        "target",
        "backend",
        "recipe",
        "tools",
        "inputs",
        "outputs",
        "artifact",
        "backend_details",
        "agreement",
        "runtime",
        "warnings",
        "notes",
    ],
    "properties": {
        "schema_version": {"enum": [1, 2]},
        "edgekit_version": {"type": "string"},
        "created": {"type": "string"},
        "source": {
            "type": "object",
            "required": ["path", "format", "sha256", "size_bytes"],
            "properties": {
                "path": {"type": _STR},
                "format": {"type": "string"},
                "sha256": {"type": _STR},
                "size_bytes": {"type": "integer", "minimum": 0},
            },
        },
        "target": {"type": "string"},
        "backend": {"type": "string"},
        "recipe": {
            "type": "object",
            "required": ["precision"],
            "properties": {"precision": {"type": "string"}, "keep_float": {"type": "array"}},
        },
        "tools": {"type": "object"},
        "inputs": {"type": "array", "items": _SPEC},
        "outputs": {"type": "array", "items": _SPEC},
        "artifact": {
            "type": "object",
            "required": ["files", "size_bytes"],
            "properties": {
                "files": {"type": "array", "items": {"type": "string"}},
                "size_bytes": {"type": "integer", "minimum": 0},
                "sha256": {"type": "object"},
            },
        },
        "conversion": {
            "type": "object",
            "required": ["cache_key", "how"],
            "properties": {"cache_key": {"type": _STR}, "how": {"type": "string"}},
        },
        # optional: sidecars written before the prepare stage have none
        "preparation": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["step", "kept"],
                "properties": {
                    "step": {"type": "string"},
                    # a boolean, spelled as an enum for edgekit's small schema checker
                    "kept": {"enum": [True, False]},
                    "reason": {"type": "string"},
                    "changes": {"type": "object"},
                    "nodes_before": {"type": "integer", "minimum": 0},
                    "nodes_after": {"type": "integer", "minimum": 0},
                    "max_deviation": {"type": ["number", "null"]},
                    "max_deviation_from_source": {"type": ["number", "null"]},
                },
            },
        },
        "backend_details": {
            "type": "object",
            "properties": {"io_map": {"type": ["object", "null"]}},
        },
        "agreement": {"type": "object"},
        "runtime": {"type": "object"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}
# A sidecar is a few KiB; anything far larger is not one, and is not read into memory.
MAX_SIDECAR_BYTES = 16 << 20


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class Sidecar:
    """A sidecar read back and checked: the fields readers act on, typed; ``raw`` keeps the
    whole document (valid under :data:`SIDECAR_JSON_SCHEMA`)."""

    path: Path
    files: tuple[Path, ...]
    precision: str
    backend: str
    target: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source_sha256: str | None
    io_map: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)


def check_sidecar(doc: dict[str, Any]) -> list[str]:
    """What is wrong with ``doc`` under the sidecar schema; empty when it conforms."""
    return validate(doc, SIDECAR_JSON_SCHEMA)


def _spec(d: dict[str, Any]) -> TensorSpec:
    return TensorSpec(d["name"], d["dtype"], tuple(d["shape"]), d.get("quantization"))


def _bad(side: Path, why: str) -> ModelFormatError:
    return ModelFormatError(
        f"{side} is not a valid edgekit sidecar ({why}); re-export the artifact or delete the "
        "sidecar"
    )


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
    problems = check_sidecar(raw)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise _bad(side, problems[0] + more)
    names = raw["artifact"]["files"]
    files = tuple(confined_file(artifact.parent, n, side) for n in names)
    if artifact.name not in names:
        raise _bad(side, f"its file list does not name {artifact.name}")
    return Sidecar(
        path=side,
        files=files,
        precision=raw["recipe"]["precision"],
        backend=raw["backend"],
        target=raw["target"],
        inputs=tuple(_spec(d) for d in raw["inputs"]),
        outputs=tuple(_spec(d) for d in raw["outputs"]),
        source_sha256=raw["source"]["sha256"],
        io_map=raw["backend_details"].get("io_map"),
        raw=raw,
    )
