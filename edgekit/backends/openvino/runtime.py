"""What every part of the OpenVINO backend shares: importing openvino and NNCF without
telemetry, their versions, one-line error text from their exceptions, and a quiet context for
their console output.

Kept apart from the package's ``__init__`` (the backend object, which imports the conversion,
quantization and session modules) so that those modules can use it without an import cycle.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from edgekit.errors import require

NAME = "openvino"
EXTRA = "openvino"


def _no_telemetry() -> None:
    # openvino and nncf send usage events to an analytics service from a forked process unless
    # the user opted out; both fall back to a stub when openvino_telemetry cannot be imported.
    # edgekit sends nothing anywhere, and a fork after JAX/TF threads start can deadlock.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


def load_openvino() -> Any:
    """The ``openvino`` module, imported with telemetry off."""
    _no_telemetry()
    return require("openvino", EXTRA)


def load_nncf() -> Any:
    """The ``nncf`` module, imported with telemetry off and its logging at ERROR."""
    load_openvino()
    nncf = require("nncf", EXTRA)
    # NNCF logs its progress and advice at INFO; the export summary says what matters.
    nncf.set_log_level(logging.ERROR)
    return nncf


def error_text(exc: BaseException) -> str:
    """The informative part of an OpenVINO/NNCF error: drop the C++ 'Check ... failed at' and
    'Exception from src/...' framing lines, keep the rest on one line."""
    lines = [ln.strip(" -") for ln in str(exc).strip().splitlines()]
    keep = [
        ln
        for ln in lines
        if ln
        and not ln.startswith(("Check '", "Exception from src", "FrontEnd API failed"))
        and ln not in ("Summary:", "Model wasn't fully converted.")
    ]
    text = "; ".join(keep) or type(exc).__name__
    return text[:300]


def openvino_version() -> str:
    """The installed openvino version, or '?'."""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "?"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Frontends and NNCF print progress bars and warnings to stdout; keep the CLI clean."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


_AUTO_NAME = re.compile(r"([A-Za-z0-9]+)_(\d+)")


def save_ir(model: Any, xml: str, compress_to_fp16: bool) -> None:
    """``ov.save_model`` with reproducible names: OpenVINO names a node it creates (NNCF's
    weight Convert, a Constant) ``<Type>_<n>`` from a counter global to the process, so the
    same export in another process (a pool or Ray worker, a later build) wrote a different
    XML. Those names, and only those (type and prefix agree), become ``<Type>_<position>``."""
    ov = load_openvino()
    for position, op in enumerate(model.get_ordered_ops()):
        found = _AUTO_NAME.fullmatch(op.get_friendly_name())
        if found and found.group(1) == op.get_type_name():
            op.set_friendly_name(f"{found.group(1)}_{position}")
    ov.save_model(model, xml, compress_to_fp16=compress_to_fp16)
