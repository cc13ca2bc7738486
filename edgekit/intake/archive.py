"""Bounds for zip archives a source model arrives in (``.keras``, ``.pt2``), checked before a
framework reads them.

A 3 MB ``.keras`` can hold a 3 GiB ``config.json`` that Keras would decompress and parse (minutes
and gigabytes before it fails). The zip directory declares every member's uncompressed size, and
Python's zipfile (which Keras and torch use) never inflates a member past its declared size, so
checking the directory is enough to bound what loading can cost.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

from edgekit.errors import ModelFormatError

# Metadata members (JSON configs, pickled-free specs) are kilobytes in real models.
MAX_METADATA_BYTES = 64 << 20
# Weights can be large, but not larger than a machine can load.
MAX_TOTAL_BYTES = 64 << 30
MAX_MEMBERS = 100_000


def check_zip(path: Path, metadata: Mapping[str, int] | None = None) -> list[zipfile.ZipInfo]:
    """The archive's members, after refusing one that is not a zip or would inflate beyond the
    limits. ``metadata`` maps member-name suffixes (``config.json``) to their own size limit."""
    limits = {".json": MAX_METADATA_BYTES, **(metadata or {})}
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelFormatError(
            f"{path.name} is not a valid {path.suffix} archive (truncated or corrupt?): {exc}"
        ) from exc
    if len(members) > MAX_MEMBERS:
        raise ModelFormatError(f"{path.name} holds {len(members)} files; refusing to unpack it")
    total = 0
    for info in members:
        total += info.file_size
        limit = next((v for k, v in limits.items() if info.filename.endswith(k)), None)
        if limit is not None and info.file_size > limit:
            raise ModelFormatError(
                f"{path.name}: its {info.filename} would unpack to {info.file_size >> 20} MiB, "
                f"far beyond any real model's ({limit >> 20} MiB at most); refusing to read it"
            )
    if total > MAX_TOTAL_BYTES:
        raise ModelFormatError(
            f"{path.name} would unpack to {total >> 30} GiB; refusing to read it"
        )
    return members
