"""int8 with ORT's own quantizers: static QDQ (``int8``), dynamic (``int8-dynamic``), the
dynamic LSTM pass after the static one, and the weight scheme (``reduce_range``) per ISA.

* QDQ format with uint8 asymmetric activations and int8 per-channel weights: ORT fuses this into
  its u8s8 integer kernels on x86 (VNNI) and ARM. QOperator S8S8 is several times slower on x86.
* Weights are 7-bit (``reduce_range``) when the deployment CPU is an x86 without VNNI (the
  target's ``isa``, else this machine's: :mod:`edgekit.cpu`), as ORT advises for u8s8 there;
  an explicit ``reduce_range`` in the recipe wins. A note says which and why.
* LSTM weights are int8 too: ORT's QDQ quantizer leaves LSTM float (it quantizes LSTM only
  dynamically), so after the static pass the LSTMs alone go through ``quantize_dynamic``
  (DynamicQuantizeLSTM). The sidecar's ``quantized_ops`` says which ops ended up how.

Calibration (streamed, bounded memory) is :mod:`edgekit.backends.onnxruntime.calibration`; the
names the quantizers generate are shortened afterwards by
:mod:`edgekit.backends.onnxruntime.names`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.backends.onnxruntime.calibration import calibrate
from edgekit.backends.onnxruntime.runtime import quiet
from edgekit.cpu import deployment_isa
from edgekit.model import Feeds
from edgekit.recipe import Recipe

# Op types whose weights int8-dynamic quantizes. Conv is left out on purpose: the dynamic
# ConvInteger kernel is slower than float Conv on CPU.
_DYNAMIC_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization"]


def _name_expanded_nodes(path: Path) -> None:
    """Name the nodes ``quant_pre_process`` made without a name: its optimizer expands a
    HardSwish into HardSigmoid + Mul, both unnamed, and ``nodes_to_exclude`` cannot reach an
    unnamed node (a real PP-LCNet kept 28 such Muls int8 with every layer excluded). Each gets
    ``<first output>:<op type>``, the name the layer listing predicts for it
    (:data:`edgekit.backends.onnxruntime.layers.EXPANDED`)."""
    import onnx

    model = onnx.load(str(path))
    unnamed = [n for n in model.graph.node if not n.name and n.output]
    if unnamed:
        for node in unnamed:
            node.name = f"{node.output[0]}:{node.op_type}"
        onnx.save(model, str(path))


def _conv_share(model: Any) -> tuple[int, int]:
    ops = [n.op_type for n in model.graph.node]
    convs = sum(op in ("Conv", "ConvTranspose") for op in ops)
    dense = sum(op in ("MatMul", "Gemm") for op in ops)
    return convs, dense


def static_int8(
    src: Path,
    out: Path,
    recipe: Recipe,
    reduce_range: bool,
    calibration: Sequence[Feeds],
    workdir: Path,
    keep_float: Sequence[str] = (),
) -> dict[str, Any]:
    """Static QDQ int8 of ``src`` into ``out``; ``keep_float`` are node names left in float
    (resolved from the recipe's layer rules by edgekit.layers)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = workdir / "prepared.onnx"
    try:
        with quiet():
            quant_pre_process(str(src), str(prepared))
        _name_expanded_nodes(prepared)
    except Exception:
        # Symbolic shape inference fails on some graphs; quantizing the unprepared model
        # still works, it only loses a few fusions.
        prepared = src
    ranges, calib = calibrate(prepared, recipe, calibration, workdir)
    cache = workdir / "calibration.json"
    save_tensors_data(ranges, cache)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration_method]
    act = QuantType.QInt8 if recipe.activation_symmetric else QuantType.QUInt8
    with quiet():
        quantize_static(
            str(prepared),
            str(out),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=reduce_range,
            activation_type=act,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(keep_float),
            calibrate_method=method,
            extra_options={
                "ActivationSymmetric": recipe.activation_symmetric,
                "WeightSymmetric": True,
            },
            calibration_cache_path=str(cache),
        )
    recurrent = quantize_recurrent(out, recipe, reduce_range, workdir, keep_float)
    return {
        **recurrent,
        "quant_format": "QDQ",
        "activation_type": "int8" if recipe.activation_symmetric else "uint8",
        "weight_type": "int8",
        "calibration_method": recipe.calibration_method,
        "calibration_samples": len(calibration),
        "calibration": calib,
        "note": calib.pop("note"),
    }


def dynamic_int8(
    src: Path, out: Path, recipe: Recipe, reduce_range: bool, keep_float: Sequence[str] = ()
) -> list[str]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    convs, dense = _conv_share(onnx.load(str(src), load_external_data=False))
    advice = []
    if convs > dense:
        advice.append(
            f"int8-dynamic quantizes MatMul/Gemm only: this graph's {convs} Conv layers stay "
            "float (dynamic ConvInteger is slower than float on CPU). For CNNs use "
            "--precision int8 with --calibration data."
        )
    with quiet():
        quantize_dynamic(
            str(src),
            str(out),
            op_types_to_quantize=_DYNAMIC_OPS,
            per_channel=recipe.per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(keep_float),
        )
    return advice


# Recurrent ops whose weights ORT's QDQ quantizer leaves float. ORT quantizes LSTM only through
# its dynamic path (com.microsoft DynamicQuantizeLSTM: int8 weights, activations quantized per
# call inside the op); it has no quantized GRU or RNN kernel, so those stay float.
_RECURRENT_DYNAMIC = ("LSTM",)
_RECURRENT_FLOAT = ("GRU", "RNN")


def quantize_recurrent(
    model: Path, recipe: Recipe, reduce_range: bool, workdir: Path, keep_float: Sequence[str] = ()
) -> dict[str, Any]:
    """Quantize the LSTM weights of the static QDQ ``model`` in place with ORT's dynamic
    quantizer, restricted to LSTM, so that a CNN+LSTM (ddddocr: 4.2M of its 13.5M parameters
    are LSTM weights) is int8 throughout; the QDQ part is left as it is. Running the dynamic
    pass after the static one (not before) keeps calibration on a plain ONNX graph: the
    calibrator never has to run com.microsoft ops. What stayed float is said."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(model), load_external_data=False).graph
    keep = set(keep_float)
    lstm = [n.name for n in graph.node if n.op_type in _RECURRENT_DYNAMIC and n.name not in keep]
    floats = sorted({n.op_type for n in graph.node if n.op_type in _RECURRENT_FLOAT})
    found: dict[str, Any] = {}
    if floats:
        found["recurrent_float"] = (
            f"{', '.join(floats)} weights stay float: ONNX Runtime has no quantized kernel for them"
        )
    if not lstm:
        return found
    dynamic = workdir / "recurrent.onnx"
    with quiet():
        quantize_dynamic(
            str(model),
            str(dynamic),
            op_types_to_quantize=list(_RECURRENT_DYNAMIC),
            nodes_to_quantize=lstm,
            per_channel=recipe.per_channel,
            # DynamicQuantizeLSTM runs the same u8 x s8 kernels as the QDQ Convs.
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
        )
    shutil.move(str(dynamic), str(model))
    found["recurrent_dynamic"] = lstm
    return found


def quantized_ops(model: Any) -> dict[str, dict[str, int]]:
    """Op type -> count, by how the artifact computes it: ``static_qdq`` (reads a
    DequantizeLinear output: ORT fuses it into an integer kernel or runs it on dequantized
    int8 values), ``dynamic_int8`` (ORT's dynamically quantized ops), ``float``."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    found: dict[str, dict[str, int]] = {"static_qdq": {}, "dynamic_int8": {}, "float": {}}
    for node in model.graph.node:
        op = node.op_type
        if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"):
            continue
        if op.startswith("DynamicQuantize") or op in ("MatMulInteger", "ConvInteger"):
            kind = "dynamic_int8"
        elif any(producers.get(i) == "DequantizeLinear" for i in node.input):
            kind = "static_qdq"
        else:
            kind = "float"
        found[kind][op] = found[kind].get(op, 0) + 1
    return found


def weight_scheme(recipe: Recipe) -> tuple[bool, dict[str, Any]]:
    """Whether int8 weights are 7-bit (``reduce_range``), with the details and the note that
    say why. From the deployment ISA unless the recipe sets ``reduce_range`` itself.

    ORT's guidance (quantize_static's ``reduce_range`` and the quantization docs' "When and why
    do I need to try U8U8?"): x86 CPUs without VNNI run u8s8 through VPMADDUBSW, whose int16
    sums can saturate; 7-bit weights keep them in range and may improve accuracy there.
    VNNI/AMX and ARM accumulate in int32, so full 8 bits cost nothing and are more precise."""
    target = deployment_isa(recipe.isa)
    isa_default = target.saturates
    details: dict[str, Any] = {**target.to_json()}
    if recipe.reduce_range is None:
        reduce = isa_default
        details["reduce_range_from"] = "isa"
        if target.isa is None:
            note = (
                f"int8 weights for {target.describe()}: full 8 bits (ONNX Runtime's default); "
                "set isa in the target profile, or pass --reduce-range for an x86 CPU without "
                "VNNI"
            )
        elif reduce:
            note = (
                f"int8 scheme for {target.describe()}: reduce_range 7-bit weights, as ONNX "
                "Runtime advises for u8s8 without VNNI (VPMADDUBSW adds pairs of products in "
                "int16, which can saturate)"
            )
        else:
            why = (
                "ARM's int8 dot products accumulate in int32"
                if target.isa and target.isa.startswith("arm64")
                else "VNNI accumulates u8 x s8 in int32 without saturating"
            )
            note = f"int8 scheme for {target.describe()}: full 8-bit weights ({why})"
    else:
        reduce = recipe.reduce_range
        details["reduce_range_from"] = "recipe"
        chosen = "reduce_range 7-bit weights" if reduce else "full 8-bit weights"
        if target.isa is None:
            alone = "nothing (the CPU is unknown)"
        else:
            alone = "7-bit weights" if isa_default else "full 8-bit weights"
        note = (
            f"int8 scheme: {chosen}, set explicitly (--reduce-range, the recipe or the target's "
            f"[recipe] table), which wins over the ISA; {target.describe()} alone gives {alone}"
        )
    details["reduce_range"] = reduce
    details["note"] = note
    return reduce, details
