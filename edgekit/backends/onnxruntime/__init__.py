"""ONNX Runtime backend: ONNX artifacts at fp32, fp16, static QDQ int8 and dynamic int8.

The flow for every source: export it to ONNX (its own bridge), then quantize with ORT's own
tools. The modules:

* :mod:`~edgekit.backends.onnxruntime.session`: sessions on the CPU execution provider;
* :mod:`~edgekit.backends.onnxruntime.fp16`: fp16 conversion (onnxconverter-common);
* :mod:`~edgekit.backends.onnxruntime.int8`: static QDQ int8, dynamic int8, the dynamic LSTM
  pass and the weight scheme (``reduce_range``) per deployment ISA;
* :mod:`~edgekit.backends.onnxruntime.calibration`: calibration streamed with bounded memory
  (ranges equal ORT's all-at-once ones) and its peak RSS;
* :mod:`~edgekit.backends.onnxruntime.names`: short names for the tensors and nodes ORT's
  quantizers generate (a tenth of a small int8 artifact);
* :mod:`~edgekit.backends.onnxruntime.graph`: the opset lift per-channel int8 needs, the fp32
  copy of an fp16-weight source, the ``--keep-float`` name check;
* :mod:`~edgekit.backends.onnxruntime.advice`: advice to try entropy calibration;
* :mod:`~edgekit.backends.onnxruntime.runtime`: ORT error text and a quiet context.

Sessions take their options, dtype names and I/O specs from the standalone benchmark runner,
:mod:`edgekit.backends.onnxruntime.runner` (it imports nothing of edgekit, so it can be copied
to a device).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.backends.base import Capabilities, Converted, ExportOutput, Unsupported, cpu_only
from edgekit.backends.onnxruntime import runner as _runner
from edgekit.backends.onnxruntime.advice import calibration_advice
from edgekit.backends.onnxruntime.fp16 import to_fp16
from edgekit.backends.onnxruntime.graph import opset_for_per_channel, upcast_if_fp16
from edgekit.backends.onnxruntime.int8 import (
    dynamic_int8,
    quantized_ops,
    static_int8,
    weight_scheme,
)
from edgekit.backends.onnxruntime.layers import layers as list_layers
from edgekit.backends.onnxruntime.names import shorten_generated_names
from edgekit.backends.onnxruntime.runtime import error_text
from edgekit.backends.onnxruntime.session import OrtSession
from edgekit.errors import ConversionError, EdgekitError, UsageError
from edgekit.layers import Layer, resolve
from edgekit.model import Feeds, SourceModel
from edgekit.recipe import Recipe

__all__ = ["BACKEND", "CAPABILITIES", "OnnxRuntimeBackend", "OrtSession"]


def _io_quantization(model: Any) -> dict[str, dict[str, Any]]:
    """Scale/zero point of the Q/DQ node right at each graph input/output, where there is one."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    ends = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    found: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in ends:
            name = node.input[0]
        elif node.op_type == "DequantizeLinear" and node.output[0] in ends:
            name = node.output[0]
        else:
            continue
        if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            continue
        zp = numpy_helper.to_array(inits[node.input[2]])
        found[name] = {
            "scale": numpy_helper.to_array(inits[node.input[1]]).ravel().tolist(),
            "zero_point": zp.ravel().tolist(),
            "dtype": zp.dtype.name,
        }
    return found


CAPABILITIES = Capabilities(
    # Everything with a bridge to ONNX; a .tflite's is tf2onnx (edgekit.intake.tflite_onnx).
    sources=("onnx", "torch", "keras", "savedmodel", "tflite"),
    # as-trained: a QAT .pt2 exports to QDQ ONNX with its learned scales (quantize copies it)
    precisions=("fp32", "fp16", "int8", "int8-dynamic", "as-trained"),
    # An ONNX source's graph states its dynamic dims and every ORT precision keeps them.
    dynamic_sources=("onnx",),
    # Float layers are nodes_to_exclude (int8) or node_block_list (fp16). ORT's QDQ path
    # quantizes activations to 16 bits only with com.microsoft Q/DQ ops or opset 21, and its
    # x86 kernels for them are not the fused integer ones: int16 layers are TFLite's.
    layer_precisions={
        "fp16": ("fp16", "float"),
        "int8": ("int8", "float"),
        "int8-dynamic": ("int8", "float"),
    },
    unsupported=(
        Unsupported(
            "io_dtype",
            ("int8", "uint8"),
            None,
            "--io int8/uint8: ONNX Runtime artifacts keep float inputs and outputs (the QDQ "
            "graph quantizes inside); integer I/O is for --target tflite",
        ),
    ),
)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    #: the standalone benchmark runner, and the same file as a module (what it shares)
    runner = Path(_runner.__file__)
    runner_module = _runner
    capabilities = CAPABILITIES
    precisions = CAPABILITIES.precisions
    source_formats = CAPABILITIES.sources
    suffix = ".onnx"
    extra = "onnx"

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

    def open_session(
        self, path: Path, threads: int | None = None, device: str | None = None
    ) -> OrtSession:
        self.check_device(device)
        return OrtSession(Path(path), threads)

    def check_device(self, device: str | None) -> None:
        cpu_only("ONNX Runtime", device)

    def layers(self, converted: Converted, source: SourceModel | None = None) -> list[Layer]:
        """The quantizable layers of ``converted`` named by the source model's names, with
        the native names ORT's quantizers take; pass ``source`` where it is at hand
        (:mod:`edgekit.backends.onnxruntime.layers`)."""
        return list_layers(converted, source)

    def convert(self, source: SourceModel, folder: Path) -> Converted:
        source.to_onnx(folder / "model.onnx")
        return Converted(folder, sorted(p.name for p in folder.iterdir()))

    def quantize(
        self,
        converted: Converted,
        source: SourceModel,
        recipe: Recipe,
        calibration: Sequence[Feeds],
        workdir: Path,
        stem: str,
    ) -> ExportOutput:
        import onnx

        from edgekit.intake.compression import onnx_numerics

        fp32 = converted.path("model.onnx")
        out = workdir / f"{stem}{self.suffix}"
        advice: list[str] = []
        notes: list[str] = []
        details: dict[str, Any] = {}
        numerics = onnx_numerics(onnx.load(str(fp32), load_external_data=False))
        layer_plan = resolve(self, converted, recipe, source)
        keep = layer_plan.native("float") if layer_plan else []
        if layer_plan:
            details["layer_rules"] = layer_plan.to_json()
        try:
            if recipe.precision == "fp32":
                shutil.copyfile(fp32, out)
            elif recipe.precision == "as-trained":
                from edgekit.compress.as_trained import facts

                # The conversion of a QAT source is already its QDQ graph: copied unchanged.
                shutil.copyfile(fp32, out)
                facts_details, facts_notes = facts(source)
                details["as_trained"] = facts_details
                notes += facts_notes
                details["quantized_ops"] = quantized_ops(onnx.load(str(out)))
            elif recipe.precision == "fp16" and numerics.fp16:
                # Converting again would round nothing and onnxconverter-common refuses it.
                if keep:
                    raise UsageError(
                        "a float layer at fp16 keeps its fp32 weights, and this source has "
                        f"none ({numerics.describe()}); export it at --precision fp32, or "
                        "from an fp32 source"
                    )
                shutil.copyfile(fp32, out)
                notes.append(
                    f"the source already stores fp16 weights ({numerics.evidence}): the fp16 "
                    "artifact is its graph unchanged"
                )
                details["fp16_source"] = "kept as is"
            elif recipe.precision == "fp16":
                to_fp16(fp32, out, keep)
                advice.append(
                    "fp16 halves the size but is not faster on ONNX Runtime's CPU provider "
                    "(1.0-1.16x fp32 latency in tools/bench_ort.py); for CPU speed use int8"
                )
            elif recipe.precision == "int8":
                fp32 = upcast_if_fp16(fp32, numerics, workdir, notes, details)
                src, note = opset_for_per_channel(fp32, recipe, workdir)
                advice += note
                reduce, scheme = weight_scheme(recipe)
                notes.append(scheme.pop("note"))
                details.update(static_int8(src, out, recipe, reduce, calibration, workdir, keep))
                notes.append(details.pop("note"))
                details["scheme"] = scheme
                if details.get("recurrent_dynamic"):
                    notes.append(
                        f"{len(details['recurrent_dynamic'])} LSTM quantized dynamically "
                        "(int8 weights, DynamicQuantizeLSTM: ONNX Runtime's QDQ path leaves "
                        "LSTM float); the rest is static QDQ"
                    )
                if details.get("recurrent_float"):
                    advice.append(details["recurrent_float"])
                advice += calibration_advice(src, out, recipe, calibration)
            else:  # int8-dynamic; Recipe.validate has already rejected anything else
                fp32 = upcast_if_fp16(fp32, numerics, workdir, notes, details)
                src, note = opset_for_per_channel(fp32, recipe, workdir)
                advice += note
                reduce, scheme = weight_scheme(recipe)
                notes.append(scheme.pop("note"))
                advice += dynamic_int8(src, out, recipe, reduce, keep)
                details["scheme"] = scheme
            if recipe.precision in ("int8", "int8-dynamic"):
                details["generated_names_shortened"] = shorten_generated_names(out, src)
                details["quantized_ops"] = quantized_ops(onnx.load(str(out)))
        except EdgekitError:
            raise
        except Exception as exc:
            raise ConversionError(
                f"ONNX Runtime {recipe.precision} conversion failed: {error_text(exc)}"
            ) from exc
        model = onnx.load(str(out), load_external_data=False)
        details["io_quantization"] = _io_quantization(model)
        details["opset"] = next((o.version for o in model.opset_import if o.domain == ""), None)
        return ExportOutput(primary=out, files=[out], details=details, warnings=advice, notes=notes)


BACKEND = OnnxRuntimeBackend()
