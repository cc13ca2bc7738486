"""fp16 with onnxconverter-common: float16 weights and compute, float32 graph I/O, and nodes
named by ``--keep-float`` left in fp32 on their original fp32 weights.

(A source that already stores fp16 weights is kept as it is at fp16: the backend copies it,
converting again would round nothing.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def to_fp16(src: Path, out: Path, keep_float: Sequence[str]) -> None:
    import onnx
    from onnxconverter_common import float16

    from edgekit.prepare.shapes import unique_value_info

    model = onnx.load(str(src))
    # A graph that did not pass through the prepare stage (a torch or Keras bridge, or a
    # preparation that was skipped) may repeat value_info, which the converter mis-types.
    unique_value_info(model)
    # Float32 I/O keeps the artifact a drop-in replacement: callers feed the same arrays.
    # The converter warns for every tiny weight it clamps to fp16's range; the agreement
    # figures in the summary are what tell whether that mattered.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(
            model, keep_io_types=True, node_block_list=list(keep_float) or None
        )
    if keep_float:
        _restore_fp32_weights(half, onnx.load(str(src)))
    onnx.save(half, str(out))


def _restore_fp32_weights(half: Any, original: Any) -> None:
    """onnxconverter-common turns every weight into fp16 and casts it back for a node kept in
    float, so the node computes in fp32 on rounded weights. Feed such Casts' consumers the
    original fp32 weight instead: a kept node keeps its real weights."""
    import onnx
    from onnx import numpy_helper

    fp32 = {t.name: t for t in original.graph.initializer}
    inits = {t.name for t in half.graph.initializer}
    consumers: dict[str, int] = {}
    for node in half.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    to_float = [
        n
        for n in half.graph.node
        if n.op_type == "Cast"
        and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)
    ]
    for cast in to_float:
        src = cast.input[0]
        if src not in inits or src not in fp32 or consumers.get(src) != 1:
            continue
        if numpy_helper.to_array(fp32[src]).dtype != np.float32:
            continue
        restored = numpy_helper.to_array(fp32[src])
        half.graph.initializer.append(numpy_helper.from_array(restored, cast.output[0]))
        half.graph.node.remove(cast)
        stale = next(t for t in half.graph.initializer if t.name == src)
        half.graph.initializer.remove(stale)
