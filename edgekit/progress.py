"""What a long command says while it works, all on stderr so stdout (--json) stays clean:

* stage lines (``edgekit: converting for openvino ...``), also without a terminal, so a CI log
  shows what an export is doing during its first quiet seconds; ``--quiet`` (``QUIET``) or
  ``EDGEKIT_PROGRESS=0`` silences them;
* progress bars, only on a terminal (or with EDGEKIT_PROGRESS=1).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
#: set by ``--quiet``: no stage lines
QUIET = False


def enabled() -> bool:
    if os.environ.get("EDGEKIT_PROGRESS") == "0":
        return False
    return os.environ.get("EDGEKIT_PROGRESS") == "1" or sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    if not enabled():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, unit="sample")


def stage(text: str) -> None:
    """One line saying what starts now."""
    if QUIET or os.environ.get("EDGEKIT_PROGRESS") == "0":
        return
    print(f"edgekit: {text}", file=sys.stderr, flush=True)
