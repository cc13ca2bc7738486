"""What the modules of the ONNX Runtime backend share: one-line error text from ORT's
exceptions, and a quiet context for the console output of its quantization tools.

Kept apart from the package's ``__init__`` (the backend object, which imports the other
modules) so that those modules can use it without an import cycle.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator

from edgekit.errors import first_line


def error_text(exc: BaseException) -> str:
    # ORT prefixes load errors with the (temporary) path it was given; the user never saw it.
    return re.sub(r"^\[[^\]]*\]\s*|Load model from \S+ failed:", "", first_line(exc)).strip()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """ORT's quantization tools log advice at WARNING and print; the summary says what matters."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
