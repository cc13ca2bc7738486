"""Framework-level compress passes (prune, low-rank, fine-tune) that run before convert.

``edgekit.compress(model, passes=[...], data=..., labels=...)`` applies the passes to a
PyTorch or Keras model and returns the compressed model with one
:class:`~edgekit.compress.passes.PassReport` per pass. Heavy frameworks are imported by the
framework modules only.
"""

from __future__ import annotations

from edgekit.compress.passes import PASSES, FineTune, LowRank, Pass, PassReport, Prune

__all__ = ["PASSES", "FineTune", "LowRank", "Pass", "PassReport", "Prune"]
