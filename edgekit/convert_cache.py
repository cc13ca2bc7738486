"""The conversion cache: a source is converted to a backend's FP32 form once, then quantized
at as many recipes as asked, in this process and in later ones.

Converting is the slow, fragile step (torch.onnx.export, tf2onnx, litert-torch, OpenVINO's
frontends); quantizing at another precision, or again in an accuracy loop, must not repeat it.
An entry is keyed by what determines the conversion's result: the source file's content hash,
its format and (fixed) input/output specs, the backend, and the versions of edgekit, the
backend's tools and the source framework. An in-memory model has no content hash, so it is
converted once per ``export`` call (all its precisions share it) and never stored.

Entries live in ``$EDGEKIT_CACHE_DIR/convert`` (default ``~/.cache/edgekit/convert``), one
folder each, written to a temporary name and renamed into place, so a killed conversion leaves
no half entry. The folder is safe to delete. Entries unused for 30 days, and the least recently
used beyond ``EDGEKIT_CONVERT_CACHE_MB`` (default 4096) in all, are removed after each write.
Quantize steps read an entry and never write into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from edgekit import __version__
from edgekit.backends.base import Backend, Converted
from edgekit.layer_names import NAMING_VERSION
from edgekit.model import SourceModel

#: conversions this process really ran, per backend name (what the cache saved is the rest)
CONVERSIONS: Counter[str] = Counter()
_MEMORY: dict[str, Converted] = {}
_MAX_AGE_S = 30 * 24 * 3600
# Source framework distributions whose version changes a conversion's output.
_FRAMEWORKS = {
    "torch": ("torch", "onnxscript", "onnx"),
    "keras": ("tensorflow-cpu", "keras", "tf2onnx", "onnx"),
    "savedmodel": ("tensorflow-cpu", "tf2onnx", "onnx"),
    "onnx": ("onnx", "onnxslim"),
    "tflite": ("ai-edge-litert",),
}


def cache_root() -> Path:
    base = os.environ.get("EDGEKIT_CACHE_DIR") or Path.home() / ".cache" / "edgekit"
    return Path(base) / "convert"


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for dist in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


def cache_key(backend: Backend, source: SourceModel) -> str | None:
    """The entry name for ``source`` on ``backend``; None for a source without content hash."""
    if not source.sha256:
        return None
    payload = {
        "edgekit": __version__,
        "naming": NAMING_VERSION,
        "backend": backend.name,
        "tools": backend.versions(),
        "frameworks": _versions(_FRAMEWORKS.get(source.format, ())),
        "source": source.sha256,
        "format": source.format,
        "inputs": [s.to_json() for s in source.inputs],
        "outputs": [s.to_json() for s in source.outputs],
    }
    prepared = [r["sha256"] for r in source.preparation if r.get("kept") and r.get("sha256")]
    if prepared:
        # The backend converts the prepared graph: an entry made from the unprepared one (or
        # from another set of kept steps) must not be reused. Unprepared keys stay as they were.
        payload["prepared"] = prepared
    if source.dynamic:  # the same file converted with dims kept dynamic is another graph
        payload["dynamic"] = [s.to_json() for s in source.dynamic]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _read_entry(folder: Path) -> Converted | None:
    try:
        meta = json.loads((folder / "entry.json").read_text(encoding="utf-8"))
        files = [str(f) for f in meta["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not files or not all((folder / f).is_file() for f in files):
        return None
    with contextlib.suppress(OSError):
        os.utime(folder / "entry.json")  # recently used: kept longest by the pruning
    return Converted(folder, files, dict(meta.get("meta") or {}))


def converted(backend: Backend, source: SourceModel, scratch: Path) -> tuple[Converted, str]:
    """The FP32 conversion of ``source`` for ``backend`` and where it came from: ``memory``,
    ``disk`` or ``converted`` (run now; into ``scratch`` when it cannot be cached)."""
    key = cache_key(backend, source)
    if key is None:
        scratch.mkdir(parents=True, exist_ok=True)
        CONVERSIONS[backend.name] += 1
        return backend.convert(source, scratch), "converted"
    hit = _MEMORY.get(key)
    if hit is not None and all(hit.path(f).is_file() for f in hit.files):
        return hit, "memory"
    try:
        stored, how = _from_disk(backend, source, key)
    except OSError:
        # A cache folder that cannot be written (read-only home, full disk) costs speed only.
        scratch.mkdir(parents=True, exist_ok=True)
        CONVERSIONS[backend.name] += 1
        return backend.convert(source, scratch), "converted"
    _MEMORY[key] = stored
    return stored, how


def _from_disk(backend: Backend, source: SourceModel, key: str) -> tuple[Converted, str]:
    root = cache_root()
    entry = root / key
    found = _read_entry(entry)
    if found is not None:
        return found, "disk"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{os.getpid()}-"))
    try:
        CONVERSIONS[backend.name] += 1
        result = backend.convert(source, tmp)
        record = {"files": result.files, "meta": result.meta, "backend": backend.name}
        (tmp / "entry.json").write_text(json.dumps(record, default=str), encoding="utf-8")
        if entry.exists() and _read_entry(entry) is None:
            # A damaged entry (a file deleted by hand): set aside, then replaced.
            dead = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{os.getpid()}-dead-"))
            os.replace(entry, dead / "entry")
            shutil.rmtree(dead, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process stored the same entry first: theirs is as good as ours.
            shutil.rmtree(tmp, ignore_errors=True)
            if _read_entry(entry) is None:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stored = _read_entry(entry) or Converted(entry, result.files, result.meta)
    prune(root)
    return stored, "converted"


def prune(root: Path | None = None, max_bytes: int | None = None) -> None:
    """Drop entries unused for 30 days, then the least recently used beyond the size limit."""
    root = root or cache_root()
    if max_bytes is None:
        max_bytes = int(os.environ.get("EDGEKIT_CONVERT_CACHE_MB", "4096")) << 20
    entries: list[tuple[float, int, Path]] = []
    now = time.time()
    with contextlib.suppress(OSError):
        for folder in root.iterdir():
            if folder.name.startswith(".tmp-"):
                # a conversion killed midway; a live one is younger than a day
                if now - folder.stat().st_mtime > 24 * 3600:
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                used = (folder / "entry.json").stat().st_mtime
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            except OSError:
                continue
            if now - used > _MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            entries.append((used, size, folder))
    total = sum(size for _, size, _ in entries)
    for _, size, folder in sorted(entries):
        if total <= max_bytes:
            break
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
    for key in [k for k, v in _MEMORY.items() if not v.folder.exists()]:
        del _MEMORY[key]


def describe_hit(how: str) -> str:
    return {
        "memory": "conversion reused from this process",
        "disk": f"conversion reused from the cache ({cache_root()})",
        "converted": "converted now",
        "export": "conversion shared with the other precisions of this export",
    }[how]


def clear_memory() -> None:
    """Forget in-process entries (tests; the on-disk cache is untouched)."""
    _MEMORY.clear()


__all__ = [
    "CONVERSIONS",
    "cache_key",
    "cache_root",
    "clear_memory",
    "converted",
    "describe_hit",
    "prune",
]
