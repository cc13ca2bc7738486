"""Framework-level compress passes (prune, low-rank, fine-tune) that run before convert.

``edgekit.compress(model, passes=[...], data=..., labels=...)`` applies the passes to a
PyTorch or Keras model and returns the compressed model with one
:class:`~edgekit.compress.passes.PassReport` per pass. Heavy frameworks are imported by the
framework modules only.

This package is itself callable (``edgekit.compress(...)`` is
:func:`edgekit.compress.api.compress`): Python binds a package's name on its parent when it
is imported, so a function named ``compress`` on ``edgekit`` would be replaced by this
package the moment anyone imported ``edgekit.compress.passes``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from edgekit.compress.passes import (
    PASSES,
    CompressData,
    FineTune,
    LowRank,
    Pass,
    PassReport,
    Prune,
)

__all__ = [
    "PASSES",
    "CompressData",
    "CompressResult",
    "FineTune",
    "LowRank",
    "Pass",
    "PassReport",
    "Prune",
    "compress",
]


def __getattr__(name: str) -> Any:
    if name in ("compress", "CompressResult"):
        from edgekit.compress import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekit.compress' has no attribute '{name}'")


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from edgekit.compress.api import compress

        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
