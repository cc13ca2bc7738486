"""PyTorch quantization-aware training (the ``qat`` compress pass) through torchao's PT2E flow.

``torch.export`` (dynamic batch) -> ``prepare_qat_pt2e`` with litert-torch's ``PT2EQuantizer``
(int8 symmetric per-channel weights in [-127, 127], int8 asymmetric per-tensor activations,
conv+BN folded for training) -> train -> observers frozen -> ``convert_pt2e(fold_quantize=
False)``. That one quantizer was checked to export with exactly the trained scales to all three
backends (ONNX QDQ for ONNX Runtime and OpenVINO, and litert-torch's full-integer TFLite), so
one QAT run serves every target. The converted program is what ``.pt2`` saves: its
``quantize``/``dequantize`` ops carry the learned scales, and ``--precision as-trained`` reads
them from there (nothing is recalibrated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgekit.compress.passes import QAT, CompressData, qat_weight_range
from edgekit.errors import ConversionError, DataError, first_line, require

#: the quantized_decomposed ops whose presence marks a PT2E-quantized (QAT) program
QDQ_NAMESPACE = "quantized_decomposed"


def _torch() -> Any:
    return require("torch", "torch")


def _patch_litert_pattern_export() -> None:
    """litert-torch 0.10 with torch 2.13: its conv+BN annotator hands a bare function to
    torchao's ``_get_aten_graph_module_for_pattern``, which torch.export refuses ("Expected
    `mod` to be an instance of `torch.nn.Module`"); wrap it in a module."""
    import litert_torch.quantize.pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.export_utils import WrapperModule
    from torchao.quantization.pt2e.utils import _get_aten_graph_module_for_pattern as orig

    if getattr(utils, "_edgekit_patched", False):
        return
    torch = _torch()

    def wrapped(pattern: Any, example_inputs: Any, is_cuda: bool = False, **kw: Any) -> Any:
        if not isinstance(pattern, torch.nn.Module):
            pattern = WrapperModule(pattern)
        return orig(pattern, example_inputs, is_cuda, **kw)

    utils._get_aten_graph_module_for_pattern = wrapped
    utils._edgekit_patched = True


def quantizer(per_channel: bool = True, qat: bool = True, reduce_range: bool = False) -> Any:
    """litert-torch's PT2E quantizer: the scheme every backend's int8 kernels take.
    ``reduce_range``: weights on [-63, 63] instead of [-127, 127] (same int8 storage), so that
    a u8 x s8 pair sum stays under int16's limit on x86 CPUs without VNNI."""
    require("litert_torch", "tflite")
    _patch_litert_pattern_export()
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=qat)
    if reduce_range:
        # The config is lru_cached by litert: replace, never mutate.
        weight = dataclasses.replace(config.weight, quant_min=-63, quant_max=63)
        config = dataclasses.replace(config, weight=weight)
    return PT2EQuantizer().set_global(config)


def _wrapper_class() -> type:
    cached = globals().get("_WRAPPER")
    if cached is not None:
        return cached
    torch = _torch()

    class QATProgram(torch.nn.Module):
        """A converted PT2E program as a module whose train()/eval() only set the flag: an
        exported module refuses them, and the compress driver calls eval() around runs."""

        def __init__(self, program: Any) -> None:
            super().__init__()
            self.program = program

        def forward(self, *args: Any) -> Any:
            return self.program(*args)

        def train(self, mode: bool = True) -> Any:
            self.training = mode
            return self

    globals()["_WRAPPER"] = QATProgram
    return QATProgram


def is_qat_graph(graph: Any) -> bool:
    """Does an FX graph hold PT2E quantize/dequantize ops (a QAT or PTQ-converted program)?"""
    return any(
        n.op == "call_function" and str(n.target).startswith(QDQ_NAMESPACE) for n in graph.nodes
    )


def trained_qparams(module: Any) -> list[dict[str, Any]]:
    """The learned (scale, zero point) of every quantize/dequantize op of a converted program,
    in graph order: activations per tensor, weights per channel (what the tests compare the
    exported artifacts against)."""
    torch = _torch()
    inner = getattr(module, "program", None)
    program = inner if hasattr(inner, "graph") else module
    q = torch.ops.quantized_decomposed
    out: list[dict[str, Any]] = []

    def value(arg: Any) -> Any:
        if getattr(arg, "op", None) == "get_attr":
            obj: Any = program
            for part in str(arg.target).split("."):
                obj = getattr(obj, part)
            return obj.detach().cpu().numpy()
        return arg

    for n in program.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target == q.quantize_per_tensor.default:
            out.append(
                {
                    "kind": "activation",
                    "name": n.name,
                    "scale": float(n.args[1]),
                    "zero_point": int(n.args[2]),
                }
            )
        elif n.target == q.dequantize_per_channel.default:
            out.append(
                {
                    "kind": "weight",
                    "name": n.name,
                    "scale": np.asarray(value(n.args[1])),
                    "zero_point": np.asarray(value(n.args[2])),
                    "axis": int(n.args[3]),
                    "quant_range": (int(n.args[4]), int(n.args[5])),
                }
            )
    return out


def apply(model: Any, p: QAT, data: CompressData) -> tuple[Any, list[dict[str, Any]], list[str]]:
    torch = _torch()
    from torchao.quantization.pt2e import (
        disable_observer,
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from edgekit.compress.torch_finetune import loss_of, metric
    from edgekit.compress.torch_model import _args, copy_model

    if data.train is None:
        raise DataError("QAT needs training data: pass --data (images, .npy or .npz)")
    if p.mode == "labels" and data.train_labels is None:
        raise DataError("QAT mode labels needs labels: pass --labels, or use --qat-mode distill")
    reduce, range_note = qat_weight_range(p)
    float_model = copy_model(model)
    args = _args(float_model, data.train)
    # Traced at batch 2: torch.export specializes a size-1 dimension, so batch 1 cannot be dynamic.
    ex_args = tuple(a[:2] for a in args)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    shapes = tuple({0: batch} if a.dim() else None for a in ex_args)
    try:
        # Dynamic batch: a program traced at the example's batch refuses the training batches.
        gm = torch.export.export(float_model.train(), ex_args, dynamic_shapes=shapes).module()
        prepared = prepare_qat_pt2e(gm, quantizer(p.per_channel, reduce_range=reduce))
    except Exception as exc:
        raise ConversionError(f"QAT could not prepare the model: {first_line(exc)}") from exc
    teacher = data.original.eval() if data.original is not None else None
    labels = None if p.mode == "distill" else np.asarray(data.train_labels)
    n = int(args[0].shape[0])
    opt = torch.optim.Adam(prepared.parameters(), lr=p.lr)
    gen = torch.Generator().manual_seed(0)
    history: list[str] = []
    move_exported_model_to_train(prepared)
    for epoch in range(p.epochs):
        order = torch.randperm(n, generator=gen)
        losses = []
        for i in range(0, n, p.batch_size):
            idx = order[i : i + p.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm (folded for QAT, still batch statistics) needs two
            chunk = tuple(a[idx] for a in args)
            t = None
            if labels is None:
                with torch.no_grad():
                    t = teacher(*chunk)
            loss = loss_of(
                prepared(*chunk),
                labels=None if labels is None else labels[idx.numpy()],
                teacher=t,
                temperature=p.temperature,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history.append(f"epoch {epoch + 1}: loss {float(np.mean(losses)):.4f}")
    move_exported_model_to_eval(prepared)
    # eval mode alone keeps the observers updating the ranges on every forward: freeze them.
    prepared.apply(disable_observer)
    # fold_quantize=False keeps float weights behind quantize ops: litert-torch's PT2E path
    # recognizes that form (its own tests use it) and the ONNX exporter writes it as Q/DQ.
    converted = convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(converted)
    new = _wrapper_class()(converted)
    new.training = False
    score = metric(new, data)
    if score is not None:
        history.append(f"int8 fake-quant metric {score:.4f}")
    qparams = trained_qparams(new)
    notes = [
        f"QAT ({p.mode}, {p.epochs} epoch(s), litert PT2E quantizer: int8 "
        f"{'per-channel' if p.per_channel else 'per-tensor'} weights, int8 per-tensor "
        f"activations): " + "; ".join(history),
        f"{sum(q['kind'] == 'activation' for q in qparams)} activation and "
        f"{sum(q['kind'] == 'weight' for q in qparams)} weight scales learned; export with "
        "--precision as-trained (no recalibration)",
        f"QAT weights: {range_note}",
    ]
    return new, [], notes
