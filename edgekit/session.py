"""Open any backend's artifact as a Session (``load`` -> ``run(feeds)``)."""

from __future__ import annotations

from pathlib import Path

from edgekit.backends import backend_for_artifact
from edgekit.backends.base import Session
from edgekit.errors import ModelNotFoundError, speaks_api


@speaks_api
def load(path: str | Path, threads: int | None = None, device: str | None = None) -> Session:
    """Load an exported artifact with the backend its file suffix belongs to."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"artifact not found: {p}")
    return backend_for_artifact(str(p)).open_session(p, threads, device)
