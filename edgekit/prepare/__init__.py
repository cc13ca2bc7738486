"""The prepare stage: a loaded source model's graph cleaned for the converters and quantizers,
every step checked against the original on the evaluation inputs.

Only ONNX sources are prepared here. PyTorch and Keras sources reach ONNX through their own
exporters (torch.onnx / tf2onnx), which already write weights as initializers and fold what they
can, and the TFLite route never goes through ONNX. A format without a preparer passes through
unchanged; adding one is one entry in :data:`PREPARERS`.

For ONNX: ``Constant`` nodes become initializers, BatchNormalization folds into the Conv before
it, onnxslim simplifies, shapes are inferred (see :mod:`edgekit.prepare.pipeline`). The prepared
SourceModel's ``to_onnx`` writes and ``handle`` holds the prepared graph; ``run`` stays the
original model's reference, so the export's agreement check compares against the source itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edgekit.model import Feeds, SourceModel
from edgekit.progress import stage


def _prepare_onnx(source: SourceModel, feeds: Sequence[Feeds]) -> SourceModel:
    from edgekit.prepare.pipeline import prepare_onnx

    return prepare_onnx(source, feeds)


#: source format -> preparer; formats not listed are not prepared.
PREPARERS: dict[str, Callable[[SourceModel, Sequence[Feeds]], SourceModel]] = {
    "onnx": _prepare_onnx,
}


def prepare(source: SourceModel, feeds: Sequence[Feeds]) -> SourceModel:
    """``source`` with its graph prepared for its format (itself when there is no preparer),
    each step verified on ``feeds``; says in one stage line what was done."""
    preparer = PREPARERS.get(source.format)
    if preparer is None:
        return source
    prepared = preparer(source, feeds)
    from edgekit.prepare.pipeline import summary

    stage(summary(prepared.preparation))
    return prepared


__all__ = ["PREPARERS", "prepare"]
