"""A ``.tflite`` source's FP32 form: the file itself, in a shape ai-edge-quantizer can quantize.

The ``.tflite`` -> TFLite route converts nothing. A float32 file with one signature is used
byte for byte; every precision is then ai-edge-quantizer run on it
(:mod:`edgekit.backends.tflite.quantize`), the same code and numerics as for a model converted
from PyTorch or Keras. Three things found in files from other tools stop that quantizer, and
are rewritten here with LiteRT's own flatbuffer object API (``schema_py_generated`` through
``tools.flatbuffer_utils``), never by parsing bytes ourselves:

* no signature (MediaPipe's models, older converters): the quantizer calibrates through a
  signature, and edgekit's sessions run one, so ``serving_default`` is added over the main
  subgraph's inputs and outputs, keyed by their tensor names;
* operator codes stored only in the deprecated 8-bit field (files from before the schema's
  32-bit ``builtin_code``): ai-edge-quantizer reads the new field alone, takes every op for an
  ADD and quantizes conv weights as activations (per tensor, asymmetric, int8 bias), which
  LiteRT then refuses to run. The code is copied into the new field; LiteRT reads the larger
  of the two, so the model means the same;
* fp16 weights (float16 constants, each feeding a DEQUANTIZE, as in MediaPipe BlazeFace):
  ai-edge-quantizer 0.10 fails on them. Each such constant is widened to float32 and its
  DEQUANTIZE dropped. Widening is exact (every fp16 value is a float32 value) and it is what the
  DEQUANTIZE did at load anyway; the export still checks, in LiteRT on the calibration samples,
  that the rewrite's outputs equal the source's (:func:`check_widened`) and says so in notes.

Files that are already quantized are exported at fp32 only, as they are: quantizing their
dequantized weights again would be no smaller and less accurate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.backends.tflite import runner as _runner
from edgekit.errors import ConversionError, UsageError, require
from edgekit.model import Feeds, SourceModel

SIGNATURE = "serving_default"
#: checking the rewrite on more samples than this adds time, not evidence: it is exact or wrong
CHECK_SAMPLES = 8


@dataclass
class Prepared:
    """The FP32 form of a ``.tflite`` source, and what was done to get it."""

    model: bytes
    signature: str
    #: per source input/output: its name (the tensor's) and its key in ``signature``
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    #: fp16 constants widened to float32 (0: the weights are the file's own)
    widened: int = 0
    #: how the source stores its numbers (edgekit.intake.compression), for quantize's refusal
    numerics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def prepare(source: SourceModel) -> Prepared:
    """The source file's FP32 form (see the module docstring)."""
    from edgekit.intake.compression import tflite_numerics

    fbu = require("ai_edge_litert.tools.flatbuffer_utils", "tflite")
    schema = require("ai_edge_litert.schema_py_generated", "tflite")
    if source.path is None or not source.path.is_file():
        raise UsageError("a .tflite source is exported from its file: pass the path")
    data = source.path.read_bytes()
    numerics = tflite_numerics(data)
    model = fbu.read_model_from_bytearray(bytearray(data))
    name = source.path.name
    changed = False
    notes: list[str] = []

    graph = model.subgraphs[0]
    sigs = model.signatureDefs or []
    if len(sigs) > 1:
        keys = ", ".join(_text(s.signatureKey) for s in sigs)
        raise ConversionError(
            f"{name} has {len(sigs)} signatures ({keys}); edgekit quantizes models with one: "
            "export each signature's model from the source framework"
        )
    if sigs:
        sig = sigs[0]
        key = _text(sig.signatureKey)
        ins = {m.tensorIndex: _text(m.name) for m in sig.inputs or []}
        outs = {m.tensorIndex: _text(m.name) for m in sig.outputs or []}
        if (
            sig.subgraphIndex != 0
            or sorted(ins) != sorted(graph.inputs)
            or sorted(outs) != sorted(graph.outputs)
        ):
            raise ConversionError(
                f"{name}: its signature '{key}' is not the main subgraph's inputs and outputs; "
                "edgekit quantizes single-graph models: export one from the source framework"
            )
    else:
        key = SIGNATURE
        ins = _keys(graph, graph.inputs, "input")
        outs = _keys(graph, graph.outputs, "output")
        sig = schema.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = key, 0
        sig.inputs = [_tensor_map(schema, k, i) for i, k in ins.items()]
        sig.outputs = [_tensor_map(schema, k, i) for i, k in outs.items()]
        model.signatureDefs = [sig]
        changed = True
        notes.append(
            f"{name} has no signature: a '{key}' signature over its inputs and outputs, keyed "
            "by tensor name, was added (ai-edge-quantizer and edgekit run models through one)"
        )

    if len(source.inputs) != len(graph.inputs) or len(source.outputs) != len(graph.outputs):
        raise ConversionError(f"{name}: LiteRT and its flatbuffer list different inputs/outputs")
    inputs = [
        {"name": s.name, "signature": ins[i]}
        for s, i in zip(source.inputs, graph.inputs, strict=True)
    ]
    outputs = [
        {"name": s.name, "signature": outs[i]}
        for s, i in zip(source.outputs, graph.outputs, strict=True)
    ]
    for code in model.operatorCodes or []:
        if code.builtinCode < code.deprecatedBuiltinCode:
            code.builtinCode = code.deprecatedBuiltinCode
            changed = True

    widened = 0
    if not numerics.quantized:
        widened = _widen_fp16(model, schema)
        changed = changed or bool(widened)
    if changed:
        data = bytes(fbu.convert_object_to_bytearray(model))
    return Prepared(data, key, inputs, outputs, widened, numerics.to_json(), notes)


def _keys(graph: Any, indices: Sequence[int], stem: str) -> dict[int, str]:
    """Tensor index -> signature key: the tensor's name, unless two share one."""
    names = [_text(graph.tensors[i].name) for i in indices]
    unique = len(set(names)) == len(names) and all(names)
    return {
        i: n if unique else f"{stem}_{k}"
        for k, (i, n) in enumerate(zip(indices, names, strict=True))
    }


def _tensor_map(schema: Any, key: str, index: int) -> Any:
    entry = schema.TensorMapT()
    entry.name, entry.tensorIndex = key, index
    return entry


def _widen_fp16(model: Any, schema: Any) -> int:
    """Replace each DEQUANTIZE of a float16 constant by that constant in float32; drop the
    float16 tensors no op uses any more and empty their buffers. Returns how many."""
    f16, f32 = schema.TensorType.FLOAT16, schema.TensorType.FLOAT32
    dequantize = {
        i
        for i, code in enumerate(model.operatorCodes or [])
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE
    }
    if not dequantize:
        return 0
    widened_buffers: dict[int, int] = {}  # float16 buffer -> its float32 copy
    count = 0
    for graph in model.subgraphs:
        outputs = set(graph.outputs)
        kept = []
        for op in graph.operators or []:
            src = graph.tensors[op.inputs[0]] if len(op.inputs) == 1 else None
            buf = model.buffers[src.buffer] if src is not None and src.buffer > 0 else None
            if (
                op.opcodeIndex in dequantize
                and src is not None
                and src.type == f16
                and buf is not None
                and buf.data is not None
                and len(buf.data)
                and len(op.outputs) == 1
                and op.outputs[0] not in outputs
                and graph.tensors[op.outputs[0]].type == f32
            ):
                if src.buffer not in widened_buffers:
                    values = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.float16)
                    wide = schema.BufferT()
                    wide.data = np.frombuffer(values.astype(np.float32).tobytes(), np.uint8)
                    model.buffers.append(wide)
                    widened_buffers[src.buffer] = len(model.buffers) - 1
                dst = graph.tensors[op.outputs[0]]
                dst.buffer = widened_buffers[src.buffer]
                dst.quantization = None
                count += 1
                continue
            kept.append(op)
        graph.operators = kept
        _drop_unused_tensors(model, graph)
    used = {t.buffer for g in model.subgraphs for t in g.tensors}
    for old in widened_buffers:
        if old not in used:
            model.buffers[old].data = None
    return count


def _drop_unused_tensors(model: Any, graph: Any) -> None:
    """Remove tensors no op, graph input/output or signature refers to, renumbering the rest."""
    index = model.subgraphs.index(graph)
    sigs = [s for s in model.signatureDefs or [] if s.subgraphIndex == index]
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators or []:
        for group in (op.inputs, op.outputs, op.intermediates):
            used.update(i for i in (group if group is not None else []) if i >= 0)
    for sig in sigs:
        used.update(m.tensorIndex for m in (sig.inputs or []) + (sig.outputs or []))
    if len(used) == len(graph.tensors):
        return
    order = sorted(used)
    new = {old: k for k, old in enumerate(order)}

    def remap(group: Any) -> Any:
        return None if group is None else [new[i] if i >= 0 else i for i in group]

    graph.tensors = [graph.tensors[i] for i in order]
    graph.inputs, graph.outputs = remap(graph.inputs), remap(graph.outputs)
    for op in graph.operators or []:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        if op.intermediates is not None:
            op.intermediates = remap(op.intermediates)
    for sig in sigs:
        for m in (sig.inputs or []) + (sig.outputs or []):
            m.tensorIndex = new[m.tensorIndex]


def check_widened(
    model: bytes,
    source: SourceModel,
    feeds: Sequence[Feeds],
    io_map: dict[str, Any],
    what: str,
) -> str:
    """Run the float32 rewrite and the source file in LiteRT on ``feeds`` (described by
    ``what``); raise ConversionError unless their outputs are equal. Returns the note."""
    interp_mod = require("ai_edge_litert.interpreter", "tflite")
    with _runner.NativeStderr(handled=()):
        interp = interp_mod.Interpreter(model_content=model, num_threads=1)
        interp.allocate_tensors()
    run: Callable[..., dict[str, np.ndarray]] = interp.get_signature_runner(
        _runner.signature_key(interp.get_signature_list())
    )
    worst = scale = 0.0
    for feed in feeds:
        want = source.run(feed)
        got = run(**{e["signature"]: np.asarray(feed[e["name"]]) for e in io_map["inputs"]})
        for entry, ref in zip(io_map["outputs"], want, strict=True):
            out = np.asarray(got[entry["signature"]], np.float64)
            worst = max(worst, float(np.abs(out - np.asarray(ref, np.float64)).max()))
            scale = max(scale, float(np.abs(ref).max()))
    # The same weights in another container: only another summation order may differ, far
    # below 1e-6 of the outputs' scale.
    if worst > 1e-6 * max(scale, 1e-30):
        raise ConversionError(
            f"widening the source's fp16 weights to float32 changed its outputs (max |diff| "
            f"{worst:.3g} of {scale:.3g} on {len(feeds)} {what}); please report it with the "
            "model. --precision fp16 does not need the rewrite"
        )
    return (
        f"fp16 weights widened to float32 for ai-edge-quantizer (the same values, DEQUANTIZE "
        f"ops dropped): outputs equal the source's in LiteRT on {len(feeds)} {what} (max |diff| "
        f"{worst:.3g})"
    )
