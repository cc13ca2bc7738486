"""The device side of ``edgekit benchmark``: :data:`HARNESS`, the timing loop and protocol that
every backend's standalone runner (``backend.runner``, in the backend's own package) runs with.

A device gets ``_harness.py`` and the runner in one folder; locally the runner runs where it
is, with this folder on its ``PYTHONPATH``. Neither file imports edgekit.
"""

from __future__ import annotations

from pathlib import Path

HARNESS: Path = Path(__file__).resolve().with_name("_harness.py")
