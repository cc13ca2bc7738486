"""The build's content-hash cache: one folder per cell, named by the hash of everything that
decides the cell's artifact (source bytes, target profile, precision, data bytes, sample counts,
tool versions), holding the artifact's files and what was measured of it.

An entry is written into a temporary folder and renamed into place, so a build killed at any
point leaves whole entries only, and the next build reuses every cell that finished. The cache
lives in ``$EDGEKIT_CACHE_DIR/build`` (default ``~/.cache/edgekit/build``); deleting it costs
only time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORD = "record.json"


def cache_key(facts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def default_root() -> Path:
    base = os.environ.get("EDGEKIT_CACHE_DIR") or Path.home() / ".cache" / "edgekit"
    return Path(base) / "build"


class CellCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def get(self, key: str) -> tuple[dict[str, Any], list[Path]] | None:
        entry = self.root / key
        try:
            record = json.loads((entry / RECORD).read_text())
        except (OSError, ValueError):
            return None
        files = [entry / name for name in record.get("_files", [])]
        if not files or not all(f.is_file() for f in files):
            return None
        return {k: v for k, v in record.items() if k != "_files"}, files

    def put(self, key: str, record: dict[str, Any], files: Mapping[str, bytes]) -> list[Path]:
        """Store ``files`` (name -> bytes) and ``record`` under ``key``; the stored files'
        paths."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.root))
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / RECORD).write_text(json.dumps({**record, "_files": sorted(files)}))
        entry = self.root / key
        try:
            os.replace(tmp, entry)
        except OSError:  # another build stored it first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        return [entry / name for name in sorted(files)]

    def update(self, key: str, record: dict[str, Any]) -> None:
        """Replace an entry's record (timings added after the export), atomically."""
        path = self.root / key / RECORD
        try:
            names = json.loads(path.read_text())["_files"]
        except (OSError, ValueError, KeyError):
            return  # the entry is gone (cache cleared meanwhile): nothing to keep
        tmp = path.with_name(f".{RECORD}.{os.getpid()}.partial")
        tmp.write_text(json.dumps({**record, "_files": names}))
        os.replace(tmp, path)
