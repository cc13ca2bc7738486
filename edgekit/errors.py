"""One exception tree for everything a user can cause, with the CLI exit code of each class.

::

    EdgekitError                 exit 1   (base; never raised bare)
    ├── UsageError               exit 2   bad flag value, unknown target or precision
    ├── ModelNotFoundError       exit 3   the model path does not exist or cannot be read
    ├── ModelFormatError         exit 4   corrupt/truncated/unknown format, refused pickle,
    │                                     dynamic dimensions that were not fixed
    ├── DataError                exit 5   calibration/evaluation data missing, unreadable, or
    │                                     not matching the model's inputs
    ├── MissingDependencyError   exit 6   an optional dependency is not installed
    ├── ConversionError          exit 7   the backend could not convert, quantize or run it
    └── DeviceError              exit 8   a device is absent or unreachable

Exit 1 is also used for an unexpected internal error (a bug: the CLI says how to get the
traceback), and 130 for Ctrl-C. Backend exceptions are translated at the boundary and re-raised
``from`` the original so the cause stays inspectable from Python.
"""

from __future__ import annotations

from typing import Any


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose. ``str(err)`` is one line for the user."""

    exit_code: int = 1


class UsageError(EdgekitError):
    exit_code = 2


class ModelNotFoundError(EdgekitError):
    exit_code = 3


class ModelFormatError(EdgekitError):
    exit_code = 4


class DataError(EdgekitError):
    exit_code = 5


class MissingDependencyError(EdgekitError):
    exit_code = 6

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"the optional dependency '{module}' is not installed; "
            f"install it with: pip install 'edgekit[{extra}]'"
        )
        self.module = module
        self.extra = extra


class ConversionError(EdgekitError):
    exit_code = 7


class DeviceError(EdgekitError):
    exit_code = 8


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: rerun with EDGEKIT_DEBUG=1 for the traceback and report it)",
    2: "usage: bad option value, unknown target or precision",
    3: "model file not found or not readable",
    4: "model corrupt, truncated, of an unknown format, or with unfixed dynamic dimensions",
    5: "calibration/evaluation data missing or not matching the model inputs",
    6: "optional dependency missing (the message names the pip extra)",
    7: "the backend failed to convert, quantize or run the model",
    8: "device absent or unreachable",
    130: "interrupted (Ctrl-C)",
}


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of a framework exception, for a one-line message."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or raise MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra) from exc
