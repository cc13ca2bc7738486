"""What every backend module provides: a Backend object and Sessions that run its artifacts.

Protocols, not base classes: a backend is any object with these attributes. The contract tests
in ``tests/test_backend_contract.py`` run the same checks against every registered backend.

A backend works in two steps so that one conversion serves every precision (and every try of an
accuracy loop): ``convert`` writes the source's FP32 form in the backend's own format into a
folder (which :mod:`edgekit.convert_cache` keeps, keyed by the source's content), and
``quantize`` turns that into an artifact at one recipe. What a backend can and cannot do is
data, :class:`Capabilities`, which the plan stage checks before any model is loaded.

Each backend also names its standalone benchmark runner (``runner``: a script that imports
only its runtime and numpy, run by :mod:`edgekit.bench` locally or copied to a device next to
``edgekit/bench/runners/_harness.py``). The backend's session imports from that same file what
both must agree on, so a benchmark and a session see the same inputs and precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from edgekit.errors import DeviceError
from edgekit.layers import Layer
from edgekit.model import Feeds, SourceModel, TensorSpec
from edgekit.recipe import Recipe


class Session(Protocol):
    """A loaded artifact ready to run. ``info`` says what actually runs (runtime, precision)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: dict[str, Any]

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        """Outputs for ``feeds``; a missing, unknown, misshapen or wrongly typed feed raises
        DataError (every session checks with :func:`edgekit.backends.feeds.check_feeds`)."""
        ...


@dataclass(frozen=True)
class Unsupported:
    """A recipe setting a backend cannot honour: refused at plan time with ``why``.

    The setting is ``field`` holding one of ``values`` (None: any value but the default) at one
    of ``precisions`` (None: at every precision)."""

    field: str
    values: tuple[Any, ...] | None
    precisions: tuple[str, ...] | None
    why: str

    def matches(self, recipe: Recipe) -> bool:
        if self.precisions is not None and recipe.precision not in self.precisions:
            return False
        value = getattr(recipe, self.field)
        if self.values is None:
            return value != getattr(Recipe(), self.field)
        return value in self.values


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers, as data: the plan stage decides from this alone whether a request
    can run, before anything is loaded or converted."""

    #: source formats (keys of edgekit.model.INTAKE) it converts from
    sources: tuple[str, ...]
    #: precisions it produces, in the order the docs list them
    precisions: tuple[str, ...]
    #: recipe settings it refuses, each with the reason and what to do instead
    unsupported: tuple[Unsupported, ...] = ()
    #: source formats whose dynamic input dimensions it can keep in the artifact (--dynamic)
    dynamic_sources: tuple[str, ...] = ()
    #: per recipe precision, the layer precisions a rule may give (edgekit.layers): each one
    #: mapped onto the backend's own mechanism; a precision absent here takes no rules
    layer_precisions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def refusals(self, recipe: Recipe) -> list[str]:
        return [u.why for u in self.unsupported if u.matches(recipe)]


@dataclass
class Converted:
    """A source in a backend's own FP32 format: ``files`` in ``folder`` plus JSON-able ``meta``
    (what quantize needs besides the files, e.g. TFLite's source<->signature I/O map). Kept on
    disk by the conversion cache, so it must not hold live framework objects."""

    folder: Path
    files: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str | None = None) -> Path:
        return self.folder / (name or self.files[0])


@dataclass
class ExportOutput:
    """Files a backend wrote into the work directory; ``primary`` is what a session loads."""

    primary: Path
    files: list[Path]
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: what the backend chose and why (scheme for this CPU, calibration memory), not a problem
    notes: list[str] = field(default_factory=list)


class Backend(Protocol):
    name: str
    capabilities: Capabilities
    #: = capabilities.precisions and .sources, for callers that only list them
    precisions: tuple[str, ...]
    source_formats: tuple[str, ...]
    #: suffix of the primary artifact file
    suffix: str
    #: the pip extra that installs this backend's runtime
    extra: str
    #: its standalone benchmark runner (see bench/runners/_harness.py for what it provides)
    runner: Path
    #: the same file imported as a module of edgekit (companion_files, PIP, shared helpers)
    runner_module: ModuleType

    def convert(self, source: SourceModel, folder: Path) -> Converted:
        """Write ``source`` in this backend's FP32 format into the empty ``folder``."""
        ...

    def quantize(
        self,
        converted: Converted,
        source: SourceModel,
        recipe: Recipe,
        calibration: Sequence[Feeds],
        workdir: Path,
        stem: str,
    ) -> ExportOutput:
        """The artifact at ``recipe``, written into ``workdir`` (never into ``converted``)."""
        ...

    def layers(self, converted: Converted, source: SourceModel | None = None) -> list[Layer]:
        """The quantizable layers of ``converted``, named by ``source``'s names where they can
        be traced (edgekit.layers): what layer rules and the accuracy gate address."""
        ...

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
