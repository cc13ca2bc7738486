"""Progress bars on stderr for long work; silent when stderr is not a terminal or when
EDGEKIT_PROGRESS=0, so that pipelines and --json output stay clean."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


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
