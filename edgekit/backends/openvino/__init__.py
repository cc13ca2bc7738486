"""OpenVINO backend: IR artifacts (``.xml`` + ``.bin``) for Intel CPUs, GPUs and NPUs.

Precisions: ``fp32``, ``fp16`` (weights stored as f16), ``int8`` (NNCF post-training
quantization) and ``int8-weights``/``int4-weights`` (NNCF weight compression, activations stay
float: meant for MatMul-heavy transformer models).

The flow for every source: convert it through OpenVINO's own frontend to an ``ov.Model`` with
the source's shapes and I/O names (:mod:`~edgekit.backends.openvino.convert`), compress it with
NNCF (:mod:`~edgekit.backends.openvino.quantize`), record the precision in the IR and save it.
Sessions, the compiled-model cache and device checks live in
:mod:`~edgekit.backends.openvino.session`; importing openvino/NNCF and their error text in
:mod:`~edgekit.backends.openvino.runtime`; the standalone benchmark runner, and what it shares
with the sessions (device matching, compile configuration, effective precision), in
:mod:`~edgekit.backends.openvino.runner`. Choices worth knowing:

* CPUs with AVX512-BF16 or AMX run a float model in bf16 unless told otherwise, which is not
  what "fp32" promises. Sessions on ``fp32`` artifacts therefore set
  ``INFERENCE_PRECISION_HINT=f32``; every session reports the precision that really runs
  (read back from the compiled model) in ``session.info``, and so does the export sidecar.
* Compiled models are cached in ``$EDGEKIT_CACHE_DIR/openvino`` (default
  ``~/.cache/edgekit/openvino``) so that opening the same artifact again does not recompile.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import Capabilities, Converted, ExportOutput, Unsupported
from edgekit.backends.openvino import runner as _runner
from edgekit.backends.openvino.convert import CONVERTERS, ROUTES, convert_source
from edgekit.backends.openvino.layers import layers as list_layers
from edgekit.backends.openvino.quantize import compress_weights, quantize_int8
from edgekit.backends.openvino.runner import RT_PRECISION
from edgekit.backends.openvino.runtime import (
    EXTRA,
    NAME,
    error_text,
    load_openvino,
    openvino_version,
    quiet,
    save_ir,
)
from edgekit.backends.openvino.session import OvSession, check_device, shared_core
from edgekit.errors import ConversionError, DataError, DeviceError, ModelFormatError, UsageError
from edgekit.layers import Layer, resolve
from edgekit.model import Feeds, SourceModel
from edgekit.recipe import Recipe


def constant_bytes(model: Any) -> dict[str, int]:
    """Bytes of a model's constants (its weights) per element type."""
    sizes: Counter[str] = Counter()
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        kind = op.get_output_element_type(0).get_type_name()
        count = int(np.prod([d.get_length() for d in op.get_output_partial_shape(0)]))
        sizes[kind] += (count * _BITS.get(kind, 32) + 7) // 8
    return dict(sizes.most_common())


_BITS = {"f32": 32, "f16": 16, "bf16": 16, "i64": 64, "i32": 32, "i8": 8, "u8": 8, "i4": 4, "u4": 4}


CAPABILITIES = Capabilities(
    sources=tuple(CONVERTERS),
    precisions=("fp32", "fp16", "int8", "int8-weights", "int4-weights", "as-trained"),
    # The ONNX frontend reads dynamic dims as OpenVINO's own (-1); NNCF quantizes such models.
    dynamic_sources=("onnx",),
    # Float layers are NNCF's IgnoredScope. fp16 takes no rules: the IR stores every weight as
    # f16 and the CPU plugin picks its own inference precision. NNCF has no int16 activations
    # for the CPU.
    layer_precisions={
        "int8": ("int8", "float"),
        "int8-weights": ("int8", "float"),
        "int4-weights": ("float",),
    },
    unsupported=(
        Unsupported(
            "io_dtype",
            ("int8", "uint8"),
            None,
            "--io int8/uint8: OpenVINO IRs keep float inputs and outputs (quantized layers "
            "dequantize inside); integer I/O is for --target tflite",
        ),
        Unsupported(
            "calibration_method",
            ("entropy",),
            ("int8",),
            "--calibration-method entropy: NNCF has no KL-entropy calibration; use minmax or "
            "percentile with OpenVINO targets (entropy is available with --target onnxruntime)",
        ),
        Unsupported(
            "per_channel",
            (False,),
            ("int8-weights", "int4-weights"),
            "--per-tensor is not available with int8-weights/int4-weights: NNCF compresses "
            "weights per output channel (int8) or per group of 128 (int4)",
        ),
    ),
)


class OpenVinoBackend:
    name = NAME
    #: the standalone benchmark runner, and the same file as a module (what it shares)
    runner = Path(_runner.__file__)
    runner_module = _runner
    capabilities = CAPABILITIES
    precisions = CAPABILITIES.precisions
    source_formats = CAPABILITIES.sources
    suffix = ".xml"
    extra = EXTRA

    def versions(self) -> dict[str, str]:
        found = {}
        for dist in ("openvino", "nncf"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[dist] = importlib.metadata.version(dist)
        return found

    def open_session(
        self,
        path: Path,
        threads: int | None = None,
        device: str | None = None,
        inference_precision: str | None = None,
    ) -> OvSession:
        """``inference_precision`` overrides the artifact's own choice: ``f32``, ``bf16``,
        ``f16``, or ``default`` for whatever the device picks (bf16 on AVX512-BF16/AMX CPUs)."""
        return OvSession(Path(path), threads, device, inference_precision)

    def check_device(self, device: str | None) -> None:
        check_device(shared_core(), device)

    def target_report(self, path: Path, target: Any) -> dict[str, Any]:
        """For ``edgekit inspect --target``: does OpenVINO convert the model, to which ops,
        and is the target's device present on this machine."""
        import tempfile

        from edgekit.model import load_model

        lines: list[str] = []
        report: dict[str, Any] = {"convertible": None}
        try:
            source = load_model(path)
            with tempfile.TemporaryDirectory() as tmp:
                converted = self.convert(source, Path(tmp))
                model = shared_core().read_model(str(converted.path()))
        except (ConversionError, ModelFormatError) as exc:
            # a model that does not load says nothing about OpenVINO: convertible stays None
            if isinstance(exc, ConversionError):
                report["convertible"] = False
            lines.append(str(exc))
        else:
            ops = Counter(
                op.get_type_name()
                for op in model.get_ordered_ops()
                if op.get_type_name() not in ("Parameter", "Result", "Constant")
            )
            report.update(convertible=True, openvino_ops=dict(ops.most_common()))
            top = ", ".join(f"{k} {v}" for k, v in ops.most_common(8))
            lines.append(
                f"OpenVINO {openvino_version()} converts it: {sum(ops.values())} ops ({top})"
            )
        device = getattr(target, "device", None)
        if device and "://" not in device:
            try:
                lines.append(f"device {check_device(shared_core(), device)} is available")
            except DeviceError as exc:
                lines.append(str(exc))
        report["lines"] = lines
        return report

    def layers(self, converted: Converted, source: SourceModel | None = None) -> list[Layer]:
        """The quantizable layers of ``converted`` named by the source model's names, with
        the native names NNCF's IgnoredScope takes; pass ``source`` where it is at hand
        (:mod:`edgekit.backends.openvino.layers`)."""
        return list_layers(converted, source)

    def convert(self, source: SourceModel, folder: Path) -> Converted:
        """The source as an FP32 IR with the source's static shapes and I/O names."""
        load_openvino()
        scratch = folder / ".work"
        scratch.mkdir()
        try:
            from edgekit.compress.as_trained import is_qat

            route = ROUTES[source.format]
            if not is_qat(source.handle):
                model = convert_source(source, scratch)
            else:
                # A QAT program through its QDQ ONNX: OpenVINO reads each Q/DQ pair as a
                # FakeQuantize at the trained range (the PyTorch frontend is not checked on
                # quantized_decomposed ops).
                onnx_path = scratch / "qat.onnx"
                source.to_onnx(onnx_path)
                model = load_openvino().convert_model(str(onnx_path))
                route = "QDQ ONNX (scales as trained) -> ONNX frontend"
            # Uncompressed: fp16 is a precision of its own, chosen at quantize time.
            save_ir(model, str(folder / "model.xml"), compress_to_fp16=False)
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"OpenVINO could not save the IR: {error_text(exc)}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return Converted(folder, ["model.xml", "model.bin"], {"route": route})

    def quantize(
        self,
        converted: Converted,
        source: SourceModel,
        recipe: Recipe,
        calibration: Sequence[Feeds],
        workdir: Path,
        stem: str,
    ) -> ExportOutput:
        load_openvino()
        model = shared_core().read_model(str(converted.path("model.xml")))
        details: dict[str, Any] = {"route": converted.meta["route"]}
        if not source.size_bytes:
            # An in-memory source has no file to compare sizes with: its weights as f32 are
            # the FP32 size the export summary compares against.
            details["fp32_size_bytes"] = sum(constant_bytes(model).values())
        advice: list[str] = []
        notes: list[str] = []
        layer_plan = resolve(self, converted, recipe, source)
        keep = layer_plan.native("float") if layer_plan else []
        if layer_plan:
            details["layer_rules"] = layer_plan.to_json()
        try:
            with quiet():
                if recipe.precision == "as-trained":
                    from edgekit.compress.as_trained import facts

                    details["as_trained"], more_notes = facts(source)
                    notes += more_notes
                elif recipe.precision == "int8":
                    model, more = quantize_int8(model, recipe, calibration, keep)
                    notes.append(more["scheme"].pop("note"))
                    details["quantization"] = more
                elif recipe.precision in ("int8-weights", "int4-weights"):
                    model, more = compress_weights(model, recipe, keep)
                    details["quantization"] = more
                    if more["model_type"] != "transformer":
                        advice.append(
                            f"{recipe.precision} compresses weights only and suits "
                            "transformer/MatMul-heavy models; on a CNN --precision int8 "
                            "(weights and activations) runs faster on CPU: 0.42x true-FP32 "
                            "latency against about 0.5x for int8-weights and int4-weights on "
                            "the digits CNN, measured by tools/bench_openvino.py"
                        )
        except (UsageError, DataError, ConversionError):
            raise
        except Exception as exc:
            if type(exc).__name__ == "ValidationError":
                raise UsageError(f"NNCF rejected the recipe: {error_text(exc)}") from exc
            raise ConversionError(
                f"NNCF {recipe.precision} compression failed: {error_text(exc)}"
            ) from exc
        model.set_rt_info(recipe.precision, RT_PRECISION)
        xml = workdir / f"{stem}{self.suffix}"
        compress = recipe.precision == "fp16"
        try:
            save_ir(model, str(xml), compress_to_fp16=compress)
        except Exception as exc:
            raise ConversionError(f"OpenVINO could not save the IR: {error_text(exc)}") from exc
        details.update(
            # read back from the saved IR: what the .bin really holds
            constant_bytes_by_type=constant_bytes(shared_core().read_model(str(xml))),
            inference_precision_hint="f32" if recipe.precision == "fp32" else "device default",
        )
        if recipe.precision == "fp16":
            advice.append(
                "fp16 stores f16 weights; the CPU runs the model in its default inference "
                "precision (bf16 on CPUs with AVX512-BF16/AMX, f32 otherwise): see "
                "runtime.inference_precision in the sidecar"
            )
        return ExportOutput(
            primary=xml,
            files=[xml, xml.with_suffix(".bin")],
            details=details,
            warnings=advice,
            notes=notes,
        )


BACKEND = OpenVinoBackend()
