"""What runs in integer arithmetic in a ``.tflite`` model, and what an Edge TPU would accept.

Read from the flatbuffer alone (no interpreter, so a malformed file cannot crash the process).
An op counts as float when one of its non-constant inputs or outputs is a float tensor; the
QUANTIZE at a float graph input and the DEQUANTIZE at a float graph output are the model's I/O
conversions, not islands. A *float island* is a run of float ops inside an otherwise integer
graph: each costs a DEQUANTIZE/QUANTIZE pair on CPU and stops an integer-only accelerator.

The Edge TPU check is static, following Coral's published rules for the Edge TPU compiler:
8-bit tensors only, static shapes, at most 3 dimensions larger than 1, and its operator list.
The compiler maps ops to the TPU up to the first one it cannot run; that op and every op after
it run on the CPU. ``edgetpu_compiler`` remains the authority.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ModelFormatError, require

# Coral "TensorFlow models on the Edge TPU", supported operations (compiler v16), TFLite names.
EDGETPU_OPS = frozenset(
    {
        "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS", "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM",
        "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE",
        "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
        "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
        "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM",
        "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    }
)  # fmt: skip
_FLOAT = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}
_EIGHT_BIT = {"INT8", "UINT8"}


@dataclass
class Op:
    index: int
    name: str
    #: dtypes of the non-constant inputs and outputs
    dtypes: set[str]
    dynamic: bool
    max_rank_over_1: int
    io_conversion: bool


@dataclass
class OpReport:
    ops: list[Op]
    subgraphs: int
    float_ops: list[Op] = field(default_factory=list)
    islands: list[list[Op]] = field(default_factory=list)

    @property
    def integer_only(self) -> bool:
        return not self.float_ops

    def to_json(self) -> dict[str, Any]:
        return {
            "ops": len(self.ops),
            "integer_only": self.integer_only,
            "float_ops": [f"#{o.index} {o.name}" for o in self.float_ops],
            "float_islands": [[f"#{o.index} {o.name}" for o in isl] for isl in self.islands],
        }

    def lines(self) -> list[str]:
        if self.integer_only:
            return [f"all {len(self.ops)} ops run in integer arithmetic (no float islands)"]
        out = [
            f"{len(self.float_ops)} of {len(self.ops)} ops run in float: not fully integer "
            f"({len(self.islands)} float island(s))"
        ]
        for isl in self.islands:
            names = ", ".join(f"#{o.index} {o.name}" for o in isl)
            out.append(f"  float island: {names}")
        return out


def _type_names() -> dict[int, str]:
    schema = require("ai_edge_litert.schema_py_generated", "tflite")
    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def analyze(data: bytes, name: str = "model") -> OpReport:
    """Classify every op of the main subgraph."""
    fbu = require("ai_edge_litert.tools.flatbuffer_utils", "tflite")
    try:
        model = fbu.convert_bytearray_to_object(bytearray(data))
        graph = model.subgraphs[0]
    except Exception as exc:
        raise ModelFormatError(f"{name} is not a readable TFLite flatbuffer: {exc}") from exc
    types = _type_names()
    graph_in = set(graph.inputs if graph.inputs is not None else [])
    graph_out = set(graph.outputs if graph.outputs is not None else [])

    def constant(i: int) -> bool:
        t = graph.tensors[i]
        buf = model.buffers[t.buffer] if 0 < t.buffer < len(model.buffers) else None
        if buf is None:
            return False
        return (buf.data is not None and len(buf.data) > 0) or buf.offset > 1

    ops: list[Op] = []
    for idx, op in enumerate(graph.operators or []):
        op_name = fbu.opcode_to_name(model, op.opcodeIndex) or "CUSTOM"
        live = [i for i in list(op.inputs) + list(op.outputs) if i >= 0 and not constant(i)]
        dtypes = {types.get(graph.tensors[i].type, str(graph.tensors[i].type)) for i in live}
        dynamic = any(
            graph.tensors[i].shapeSignature is not None
            and -1 in list(graph.tensors[i].shapeSignature)
            for i in live
        )
        big = max((sum(1 for d in graph.tensors[i].shape if d > 1) for i in live), default=0)
        io_conv = (op_name == "QUANTIZE" and set(op.inputs) <= graph_in) or (
            op_name == "DEQUANTIZE" and set(op.outputs) <= graph_out
        )
        ops.append(Op(idx, op_name, dtypes, dynamic, big, io_conv))
    report = OpReport(ops, len(model.subgraphs))
    report.float_ops = [o for o in ops if o.dtypes & _FLOAT and not o.io_conversion]
    island: list[Op] = []
    for o in ops:
        if o in report.float_ops:
            island.append(o)
        elif island:
            report.islands.append(island)
            island = []
    if island:
        report.islands.append(island)
    return report


def _edgetpu_reason(op: Op, on_cpu: set[int]) -> str | None:
    if op.index in on_cpu:
        return None
    if op.name not in EDGETPU_OPS:
        return "operator not supported by the Edge TPU"
    bad = op.dtypes - _EIGHT_BIT - {"INT32"}
    if bad:
        return f"{'/'.join(sorted(bad)).lower()} tensors (the Edge TPU runs 8-bit only)"
    if op.dynamic:
        return "dynamic shape (the Edge TPU needs static shapes)"
    if op.max_rank_over_1 > 3:
        return "a tensor with more than 3 dimensions larger than 1"
    return None


def edgetpu_lines(report: OpReport) -> list[str]:
    """What the Edge TPU compiler would map, and the first op it would stop at."""
    ops = report.ops
    # A float model's input QUANTIZE and output DEQUANTIZE run on the CPU before and after the
    # TPU segment without splitting it.
    on_cpu: set[int] = set()
    for seq, name in ((ops, "QUANTIZE"), (list(reversed(ops)), "DEQUANTIZE")):
        for o in seq:
            if o.name != name or not o.io_conversion:
                break
            on_cpu.add(o.index)
    lines = []
    if report.subgraphs > 1:
        lines.append(f"{report.subgraphs} subgraphs: control flow is not supported by the Edge TPU")
    for o in ops:
        reason = _edgetpu_reason(o, on_cpu)
        if reason:
            rest = len(ops) - o.index
            lines.append(
                f"Edge TPU: would reject op #{o.index} {o.name} ({reason}); the compiler maps "
                f"the ops before it, and that op with the {rest - 1} after it would run on the "
                "CPU"
            )
            others = sorted({x.name for x in ops[o.index + 1 :] if _edgetpu_reason(x, on_cpu)})
            if others:
                lines.append(f"  also unsupported further on: {', '.join(others)}")
            return lines
    lines.append(
        f"Edge TPU: all {len(ops) - len(on_cpu)} ops are mappable; compile with "
        "edgetpu_compiler to confirm"
    )
    if on_cpu:
        lines.append(
            f"  {len(on_cpu)} float I/O conversion op(s) run on the CPU: export with --io uint8 "
            "(or --target edgetpu) for integer I/O"
        )
    return lines


def target_report(path: Path, edgetpu: bool) -> dict[str, Any]:
    report = analyze(path.read_bytes(), path.name)
    lines = report.lines()
    if edgetpu:
        lines += edgetpu_lines(report)
    return {"lines": lines, **report.to_json()}
