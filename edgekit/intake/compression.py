"""How a source model stores its numbers: float32, fp16 weights, or already quantized.

``inspect`` shows it, and the plan stage uses it to refuse a request that would quantize an
already-quantized model again (the result would be a dequantized graph re-quantized, no
smaller and less accurate) and to explain an fp32 artifact larger than its source. Detection
reads the graph's structure only: op types and the dtypes and sizes of constants, never weight
values, so an ONNX file is parsed without its external data and a TFLite flatbuffer is read in
place with LiteRT's own generated schema.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: kinds, from least to most compressed; the ``int*`` ones are already quantized
KINDS = ("float32", "fp16-weights", "int8-weights", "int4-weights", "int8-dynamic", "int8-static")

# ONNX ops that compute on quantized activations from calibrated scales (QOperator format).
_ONNX_STATIC = {"QLinearConv", "QLinearMatMul", "QGemm", "QAttention", "QOrderedMatMul"}
# Ops that quantize activations at run time (ORT's quantize_dynamic and what it emits).
_ONNX_DYNAMIC = {
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat",
}
# Weight-only quantized ops (int4 blocks, dequantized inside the kernel).
_ONNX_NBITS = {"MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"}

# TensorProto.DataType -> (name, bytes per element); int4/uint4 pack two to a byte.
_ONNX_DTYPES: dict[int, tuple[str, float]] = {
    1: ("float32", 4),
    2: ("uint8", 1),
    3: ("int8", 1),
    4: ("uint16", 2),
    5: ("int16", 2),
    6: ("int32", 4),
    7: ("int64", 8),
    9: ("bool", 1),
    10: ("float16", 2),
    11: ("float64", 8),
    12: ("uint32", 4),
    13: ("uint64", 8),
    16: ("bfloat16", 2),
    17: ("float8e4m3fn", 1),
    18: ("float8e4m3fnuz", 1),
    19: ("float8e5m2", 1),
    20: ("float8e5m2fnuz", 1),
    21: ("uint4", 0.5),
    22: ("int4", 0.5),
}
_INT_WEIGHT = {"int8", "uint8", "int4", "uint4", "int16", "uint16"}


@dataclass(frozen=True)
class Numerics:
    """What a source's weights and compute are stored as, with the counts that show it."""

    kind: str
    #: one line of counts, e.g. "22 DynamicQuantizeLinear, 21 ConvInteger, 1 MatMulInteger"
    evidence: str
    #: bytes of constant tensors (weights, biases, shapes) by dtype
    weight_bytes: Mapping[str, int] = field(default_factory=dict)
    #: further facts, e.g. "int8 inputs/outputs", "3 sparse tensors"
    extra: tuple[str, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.kind.startswith("int")

    @property
    def fp16(self) -> bool:
        return self.kind == "fp16-weights"

    def describe(self) -> str:
        """What the source is, for messages: 'already quantized (int8-dynamic: 22 ...)'."""
        if self.quantized:
            return f"already quantized ({self.kind}: {self.evidence})"
        if self.fp16:
            return f"stored with fp16 weights ({self.evidence})"
        return "float32"

    def line(self) -> str | None:
        """The ``inspect`` line, or None for a plain float32 model."""
        tail = "; ".join(self.extra)
        tail = f"; {tail}" if tail else ""
        if self.quantized:
            return f"already quantized: {self.kind} ({self.evidence}){tail}"
        if self.fp16:
            return f"fp16 weights: {self.evidence}{tail}"
        return f"numerics: {tail[2:]}" if tail else None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "quantized": self.quantized,
            "evidence": self.evidence,
            "weight_bytes": dict(self.weight_bytes),
            "extra": list(self.extra),
            "summary": self.line(),
        }


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counter.items(), key=lambda kv: -kv[1]))


def _mib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


# --------------------------------------------------------------------------------------- ONNX


def _onnx_graphs(graph: Any) -> Iterable[Any]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from _onnx_graphs(attr.g)
            for sub in attr.graphs:
                yield from _onnx_graphs(sub)


def onnx_numerics(model: Any) -> Numerics:
    """Numerics of an ``onnx.ModelProto`` (its external data need not be loaded)."""
    ops: Counter[str] = Counter()
    const_dtype: dict[str, str] = {}
    weight_bytes: Counter[str] = Counter()
    nodes = []
    for graph in _onnx_graphs(model.graph):
        tensors = list(graph.initializer)
        for node in graph.node:
            nodes.append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                tensors += [a.t for a in node.attribute if a.name == "value"]
                for a in node.attribute:
                    if a.name == "value":
                        const_dtype[node.output[0]] = _ONNX_DTYPES.get(a.t.data_type, ("?", 0))[0]
        for t in tensors:
            name, size = _ONNX_DTYPES.get(t.data_type, ("other", 0))
            count = 1
            for d in t.dims:
                count *= d
            weight_bytes[name] += int(count * size)
            if t.name:
                const_dtype[t.name] = name
    qdq_weights = 0
    quantize_linear = 0
    for node in nodes:
        op = node.op_type
        if (
            op == "DequantizeLinear"
            and node.input
            and const_dtype.get(node.input[0]) in (_INT_WEIGHT)
        ):
            qdq_weights += 1
        elif op == "QuantizeLinear" and node.input and node.input[0] not in const_dtype:
            quantize_linear += 1
        elif op in _ONNX_STATIC | _ONNX_DYNAMIC | _ONNX_NBITS or op.startswith("QLinear"):
            key = op if node.domain in ("", "ai.onnx") else f"{node.domain}.{op}"
            ops[key] += 1
    plain = {k.rsplit(".", 1)[-1] for k in ops}
    evidence = Counter(ops)
    if quantize_linear:
        evidence["QuantizeLinear"] = quantize_linear
    if qdq_weights:
        evidence["DequantizeLinear of integer weights"] = qdq_weights
    if plain & _ONNX_STATIC or any(p.startswith("QLinear") for p in plain) or quantize_linear:
        kind = "int8-static"
    elif plain & _ONNX_DYNAMIC:
        kind = "int8-dynamic"
    elif plain & _ONNX_NBITS or (qdq_weights and weight_bytes["int4"] + weight_bytes["uint4"]):
        kind = "int4-weights"
    elif qdq_weights:
        kind = "int8-weights"
    elif weight_bytes["float16"] > weight_bytes["float32"]:
        kind = "fp16-weights"
        n = sum(1 for d in const_dtype.values() if d == "float16")
        evidence = Counter({f"fp16 constants ({_mib(weight_bytes['float16'])})": n})
    else:
        kind = "float32"
    extra = []
    io = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    io_names = sorted({_ONNX_DTYPES.get(e, ("?", 0))[0] for e in io} & {"float16", "int8", "uint8"})
    if io_names:
        extra.append(f"{'/'.join(io_names)} inputs/outputs")
    return Numerics(
        kind,
        _counts(evidence) or "no quantized ops",
        {k: v for k, v in weight_bytes.items() if v},
        tuple(extra),
    )


# ------------------------------------------------------------------------------------- TFLite


def tflite_numerics(data: bytes) -> Numerics:
    """Numerics of a TFLite flatbuffer, read in place with LiteRT's generated schema."""
    from edgekit.errors import require

    schema = require("ai_edge_litert.schema_py_generated", "tflite")
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    builtins = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(data, 0)
    opnames = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes up to 127 live in the deprecated byte field of older files.
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        opnames.append(builtins.get(number, "CUSTOM"))

    def buffer_size(index: int) -> int:
        if index <= 0 or index >= model.BuffersLength():
            return 0
        buf = model.Buffers(index)
        return buf.DataLength() or (buf.Size() if buf.Offset() > 1 else 0)

    weight_bytes: Counter[str] = Counter()
    seen_buffers: set[int] = set()
    fp16_dequant = int_dequant = dynamic_ops = sparse = 0
    int_weights = int_acts = int16_acts = 0
    io_types: set[str] = set()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        dtype, const = [], []
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            dtype.append(types.get(tensor.Type(), "other"))
            size = buffer_size(tensor.Buffer())
            const.append(size > 0)
            if tensor.Sparsity() is not None:
                sparse += 1
            if size and tensor.Buffer() not in seen_buffers:
                seen_buffers.add(tensor.Buffer())
                weight_bytes[dtype[-1]] += size
            if size and dtype[-1] in ("int8", "uint8", "int4"):
                int_weights += 1
            quant = tensor.Quantization()
            if not size and quant is not None and quant.ScaleLength():
                int_acts += dtype[-1] in ("int8", "uint8")
                int16_acts += dtype[-1] == "int16"
        for k in range(graph.InputsLength()):
            io_types.add(dtype[graph.Inputs(k)])
        for k in range(graph.OutputsLength()):
            io_types.add(dtype[graph.Outputs(k)])
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            name = opnames[op.OpcodeIndex()] if op.OpcodeIndex() < len(opnames) else "CUSTOM"
            ins = [i for i in op.InputsAsNumpy().tolist() if i >= 0] if op.InputsLength() else []
            if name == "DEQUANTIZE" and ins and const[ins[0]]:
                fp16_dequant += dtype[ins[0]] == "float16"
                int_dequant += dtype[ins[0]] in ("int8", "uint8", "int4")
            elif name != "DEQUANTIZE":
                has_int_weight = any(const[i] and dtype[i] in ("int8", "uint8") for i in ins)
                float_act = any(not const[i] and dtype[i] == "float32" for i in ins)
                dynamic_ops += has_int_weight and float_act
    extra = []
    io_int = sorted(io_types & {"int8", "uint8", "int16"})
    if io_int:
        extra.append(f"{'/'.join(io_int)} inputs/outputs")
    if sparse:
        extra.append(f"{sparse} sparse tensor{'s' * (sparse != 1)}")
    if int16_acts:
        kind, evidence = "int8-static", f"{int16_acts} int16 activation tensors (int16x8)"
        evidence += f", {int_weights} int8 weight tensors"
    elif int_acts:
        kind = "int8-static"
        evidence = f"{int_acts} int8 activation tensors, {int_weights} int8 weight tensors"
    elif dynamic_ops:
        kind = "int8-dynamic"
        evidence = f"{dynamic_ops} ops with int8 weights on float inputs"
    elif int_dequant:
        kind, evidence = "int8-weights", f"{int_dequant} DEQUANTIZE of int8 tensors"
    elif fp16_dequant:
        kind, evidence = "fp16-weights", f"{fp16_dequant} DEQUANTIZE of fp16 tensors"
    else:
        kind, evidence = "float32", "no quantized tensors"
    return Numerics(kind, evidence, {k: v for k, v in weight_bytes.items() if v}, tuple(extra))


# ---------------------------------------------------------------------------------- by path


def detect(path: Path, fmt: str) -> Numerics | None:
    """Numerics of a model file, or None where ``fmt`` is not inspected this way (framework
    sources are float) or the file cannot be read (the load stage then says why)."""
    try:
        if fmt == "onnx":
            import onnx

            return onnx_numerics(onnx.load(str(path), load_external_data=False))
        if fmt == "tflite":
            return tflite_numerics(path.read_bytes())
    except Exception:  # a corrupt file is reported by the load stage, with its own message
        return None
    return None
