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
    ├── DeviceError              exit 8   a device is absent or unreachable
    ├── AccuracyGateError        exit 9   --max-accuracy-drop could not be met (the message
    │                                     says the best drop reached and with which layers)
    ├── BudgetError              exit 10  edgekit build: a cell is over a budget of its config
    └── RegressionError          exit 11  edgekit build --baseline: a cell got worse

Exit 1 is also used for an unexpected internal error (a bug: the CLI says how to get the
traceback), and 130 for Ctrl-C. Backend exceptions are translated at the boundary and re-raised
``from`` the original so the cause stays inspectable from Python.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar


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


class BudgetError(EdgekitError):
    """``edgekit build``: a cell missed a budget (the message names the cell, figure, budget)."""

    exit_code = 10


class RegressionError(EdgekitError):
    """``edgekit build --baseline``: a cell is larger, slower or less accurate than before."""

    exit_code = 11


class DeviceError(EdgekitError):
    exit_code = 8


class AccuracyGateError(EdgekitError):
    """The accuracy budget could not be met: nothing is written, the best reached is said."""

    exit_code = 9


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: rerun with EDGEKIT_DEBUG=1 for the traceback and report it)",
    2: "usage: bad option value, unknown target or precision",
    3: "model file not found or not readable",
    4: "model corrupt, truncated, of an unknown format, or with unfixed dynamic dimensions",
    5: "calibration/evaluation data missing or not matching the model inputs",
    6: "optional dependency missing (the message names the pip extra)",
    7: "the backend failed to convert, quantize or run the model (also: inspect --target T "
    "found the model cannot convert)",
    8: "device absent or unreachable",
    9: "accuracy gate: --max-accuracy-drop could not be met (nothing written)",
    10: "edgekit build: a cell is over a budget of its config (the summary names it)",
    11: "edgekit build --baseline: a cell is larger, slower or less accurate than before",
    130: "interrupted (Ctrl-C)",
    141: "the reader of the output went away (e.g. | head); nothing is wrong with the model",
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


# --- one message, two spellings -------------------------------------------------------------
#
# Messages are written once, naming command-line flags (what most users type). Called from
# Python, the same message names the API's keyword arguments instead: the public functions
# rewrite the flags they know on the way out, unless the CLI is the caller.

_FROM_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("edgekit_cli", default=False)
#: flags whose API spelling is not the flag with '-' turned into '_'
_API_NAMES = {
    "--per-tensor": "per_channel=False",
    "--symmetric": "activation_symmetric=True",
    "--asymmetric": "activation_symmetric=False",
    "--io": "io_dtype",
    "--input-shape": "input_shapes",
    "--ssh-option": "ssh_options",
    "--ssh-config": "ssh_config",
    "--force": "force=True",
    "-o": "output_dir",
}
#: flags spelled as their keyword argument
_SAME_NAME = [
    "--target",
    "--precision",
    "--device",
    "--name",
    "--calibration",
    "--calibration-samples",
    "--calibration-method",
    "--percentile",
    "--eval-data",
    "--eval-samples",
    "--data",
    "--labels",
    "--seed",
    "--reduce-range",
    "--keep-float",
    "--warn-cosine",
    "--warn-top1",
    "--layout",
    "--color",
    "--scale",
    "--mean",
    "--std",
    "--resize",
    "--runs",
    "--warmup",
    "--duration",
    "--rounds",
    "--threads",
    "--pin",
    "--inputs",
    "--inference-precision",
    "--remote-python",
    "--benchmark-binary",
    "--connect-timeout",
    "--timeout",
]
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-o)(?![\w-])")

F = TypeVar("F", bound=Callable[..., Any])


def api_spelling(message: str) -> str:
    """``message`` with each known flag replaced by its keyword argument."""

    def swap(m: re.Match[str]) -> str:
        flag = m.group(1)
        if flag in _API_NAMES:
            return _API_NAMES[flag]
        return flag[2:].replace("-", "_") if flag in _SAME_NAME else flag

    return _FLAG.sub(swap, message)


def speaks_api(fn: F) -> F:
    """Decorate a public function: its EdgekitErrors name keyword arguments, not flags."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgekitError as exc:
            if not _FROM_CLI.get() and exc.args and isinstance(exc.args[0], str):
                exc.args = (api_spelling(exc.args[0]), *exc.args[1:])
            raise

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def cli_caller() -> Iterator[None]:
    """While the CLI runs a command, messages keep the flags the user typed."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)
