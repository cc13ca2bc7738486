"""What every backend module provides: a Backend object and Sessions that run its artifacts.

Protocols, not base classes: a backend is any object with these attributes. The contract tests
in ``tests/test_backend_contract.py`` run the same checks against every registered backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.errors import DeviceError
from edgekit.model import Feeds, SourceModel, TensorSpec
from edgekit.recipe import Recipe


class Session(Protocol):
    """A loaded artifact ready to run. ``info`` says what actually runs (runtime, precision)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: dict[str, Any]

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...


@dataclass
class ExportOutput:
    """Files a backend wrote into the work directory; ``primary`` is what a session loads."""

    primary: Path
    files: list[Path]
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Backend(Protocol):
    name: str
    #: precisions this backend can produce, in the order the docs list them
    precisions: tuple[str, ...]
    #: suffix of the primary artifact file
    suffix: str
    #: the pip extra that installs this backend's runtime
    extra: str
    #: source formats (see edgekit.model.INTAKE) this backend can export from
    source_formats: tuple[str, ...]

    def export(
        self,
        source: SourceModel,
        recipe: Recipe,
        calibration: Sequence[Feeds],
        workdir: Path,
        stem: str,
    ) -> ExportOutput: ...

    def open_session(
        self, path: Path, threads: int | None = None, device: str | None = None
    ) -> Session:
        """Load ``path``. ``device`` is a local accelerator name (e.g. OpenVINO's ``GPU``);
        None or ``local`` means the backend's default. An absent device raises DeviceError
        listing the available ones."""
        ...

    def versions(self) -> dict[str, str]: ...

    def check_device(self, device: str | None) -> None:
        """Raise DeviceError listing the available devices when ``device`` is absent; called
        before any conversion work so that a missing GPU/NPU fails in a second, not after."""
        ...


def cpu_only(runtime: str, device: str | None) -> None:
    """check_device for runtimes that edgekit runs on the CPU only."""
    if device not in (None, "", "local", "CPU", "cpu"):
        raise DeviceError(
            f"{runtime} here runs on the CPU only; device '{device}' is not available "
            "(available: CPU)"
        )


def is_remote(device: str | None) -> bool:
    """``ssh://…`` and ``adb://…`` name another machine; anything else is local."""
    return bool(device) and "://" in str(device)
