"""TFLite / LiteRT backend: ``.tflite`` artifacts at fp32, fp16, int8-dynamic, int8 and int16x8.

The flow for every source: convert to an FP32 ``.tflite`` (TFLiteConverter for Keras and
SavedModel, litert-torch for PyTorch, onnx2torch then litert-torch for ONNX;
:mod:`~edgekit.backends.tflite.convert`; a ``.tflite`` source is its own FP32 form, made
quantizable: :mod:`~edgekit.backends.tflite.source`), quantize it
with ai-edge-quantizer (:mod:`~edgekit.backends.tflite.quantize`), store the source<->artifact
I/O map in the file's metadata, check the file in a child process (LiteRT can crash on a bad
model; :mod:`~edgekit.backends.tflite.validate`), then report what is not integer
(:mod:`~edgekit.backends.tflite.ops`); whether quantizing paid off in speed is the exporter's
check for every backend (:mod:`edgekit.speed_check`). Sessions and the I/O map's storage are in
:mod:`~edgekit.backends.tflite.session`; the standalone benchmark runner, and what it shares
with the sessions (the map's reader, signatures, dtypes, effective precision), in
:mod:`~edgekit.backends.tflite.runner`.

* ``fp16``: float16 weights, dequantized at load; XNNPACK computes in fp32 on CPUs without
  fp16 arithmetic, so it halves the size, not the latency.
* ``int8-dynamic``: int8 weights, activations quantized on the fly per call; no calibration.
* ``int8``: full integer, int8 per-channel weights and asymmetric int8 activations from min/max
  calibration; float I/O by default, ``--io int8|uint8`` for integer I/O (Edge TPU, MCUs).
* ``int16x8``: int16 activations, int8 weights, for accuracy-sensitive models: runs on
  TFLite's reference kernels (no XNNPACK), many times slower than fp32 on CPU.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import Capabilities, Converted, ExportOutput, Unsupported, cpu_only
from edgekit.backends.tflite import runner as _runner
from edgekit.backends.tflite.layers import layers as list_layers
from edgekit.backends.tflite.session import TFLiteSession, write_io_map
from edgekit.backends.tflite.source import SIGNATURE
from edgekit.errors import UsageError, require
from edgekit.layers import Layer
from edgekit.model import Feeds, SourceModel
from edgekit.recipe import NEEDS_CALIBRATION, Recipe

_INT16_WARNING = (
    "int16x8 runs on TFLite's reference kernels (XNNPACK has none for it): expect it to be "
    "many times slower than fp32 on CPU; use it for accuracy on accelerators that support it"
)


def _calibration_feeds(
    calibration: Sequence[Feeds], inputs: Sequence[dict[str, Any]]
) -> list[dict[str, np.ndarray]]:
    """Source feeds (source names and layout) -> signature names and the artifact's layout."""
    out = []
    for feed in calibration:
        item = {}
        for entry in inputs:
            x = np.asarray(feed[entry["name"]])
            if entry.get("perm"):
                x = np.ascontiguousarray(np.transpose(x, entry["perm"]))
            item[entry["signature"]] = x
        out.append(item)
    return out


_PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int16x8", "as-trained")
CAPABILITIES = Capabilities(
    # ONNX goes through onnx2torch and litert-torch (onnx_route.py).
    sources=("keras", "savedmodel", "torch", "onnx", "tflite"),
    precisions=_PRECISIONS,
    # ai-edge-quantizer takes a config per op (regex rules), so every layer precision maps
    # onto one: float (NO_QUANTIZE), int8 (a8w8), int16 (a16w8), fp16 (weight-only casting).
    layer_precisions={
        "int8": ("int8", "int16", "float"),
        "int16x8": ("int16", "int8", "float"),
        "int8-dynamic": ("int8", "float"),
        "fp16": ("fp16", "float"),
    },
    unsupported=(
        Unsupported(
            "reduce_range",
            (True,),
            None,
            "--reduce-range is an ONNX Runtime option for x86 CPUs without VNNI; TFLite kernels "
            "(XNNPACK, Edge TPU, NNAPI) use full 8-bit weights: drop the flag",
        ),
        Unsupported(
            "calibration_method",
            ("entropy", "percentile"),
            NEEDS_CALIBRATION,
            "--calibration-method entropy/percentile is not available for TFLite: the LiteRT "
            "Quantizer calibrates with min/max ranges; use --calibration-method minmax (or "
            "--target onnxruntime for entropy/percentile)",
        ),
        Unsupported(
            "io_dtype",
            ("int8", "uint8"),
            tuple(p for p in _PRECISIONS if p != "int8"),
            "--io int8/uint8 (given, or set by the target, e.g. edgetpu) needs a full-integer "
            "model: use --precision int8, or --target tflite for the other precisions, which "
            "keep float inputs and outputs",
        ),
        Unsupported(
            "activation_symmetric",
            (True,),
            tuple(p for p in _PRECISIONS if p != "int8"),
            "--symmetric applies to int8 activations only (int16x8 activations are always "
            "symmetric in TFLite); drop it or use --precision int8",
        ),
    ),
)


_CONVERTERS = {
    "torch": "litert-torch",
    "onnx": "onnx2torch + litert-torch",
    "tflite": "none: the .tflite source's own graph",
}


def _tflite_source_notes(
    facts: dict[str, Any],
    converted: Any,
    source: SourceModel,
    recipe: Recipe,
    calibration: Sequence[Feeds],
) -> list[str]:
    """What a ``.tflite`` source's export says about its FP32 form (see tflite/source.py); an
    already-quantized source is refused at any precision but fp32."""
    from edgekit.backends.tflite.source import CHECK_SAMPLES, check_widened
    from edgekit.calibration import load_samples

    notes = list(facts.get("notes", []))
    numerics = facts.get("numerics") or {}
    name = source.path.name if source.path else "the source"
    if numerics.get("quantized"):
        if recipe.precision != "fp32":
            raise UsageError(
                f"{name} is already quantized ({numerics['kind']}: {numerics['evidence']}), and "
                f"--precision {recipe.precision} would quantize its dequantized weights again, "
                "no smaller and less accurate: export it at --precision fp32 to run it as it "
                "is, or quantize the float model it was made from"
            )
        notes.append(f"{name} is already quantized ({numerics['kind']}): fp32 keeps it as it is")
    if facts.get("widened"):
        feeds = list(calibration[:CHECK_SAMPLES])
        what = "calibration samples"
        if not feeds:
            feeds = load_samples("random", source.inputs, limit=4, seed=recipe.seed)
            what = "random inputs (no calibration data given)"
        notes.append(check_widened(converted.model, source, feeds, converted.io_map(), what))
        if recipe.precision == "fp32":
            ratio = len(converted.model) / max(source.size_bytes, 1)
            notes.append(
                f"fp32: {name} stores fp16 weights; this artifact holds them as float32 (the "
                f"same values, {ratio:.2f}x the source's size) and runs no DEQUANTIZE. "
                "--precision fp16 keeps the source's size"
            )
    return notes


class TFLiteBackend:
    name = "tflite"
    #: the standalone benchmark runner, and the same file as a module (what it shares)
    runner = Path(_runner.__file__)
    runner_module = _runner
    capabilities = CAPABILITIES
    precisions = CAPABILITIES.precisions
    source_formats = CAPABILITIES.sources
    suffix = ".tflite"
    extra = "tflite"

    def versions(self) -> dict[str, str]:
        import importlib.metadata

        found = {}
        for dist in ("ai-edge-litert", "ai-edge-quantizer", "litert-torch", "onnx2torch"):
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return found

    def open_session(
        self, path: Path, threads: int | None = None, device: str | None = None
    ) -> TFLiteSession:
        from edgekit.backends.tflite.validate import validate

        self.check_device(device)
        path = Path(path)
        require("ai_edge_litert.interpreter", "tflite")
        if path.is_file():
            validate(path)
        return TFLiteSession(path, threads)

    def check_device(self, device: str | None) -> None:
        cpu_only("LiteRT (XNNPACK)", device)

    def target_report(self, path: Path, target: Any) -> dict[str, Any]:
        from edgekit.backends.tflite.ops import target_report
        from edgekit.model import detect_format

        fmt = detect_format(Path(path))
        if fmt == "onnx":
            from edgekit.backends.tflite.onnx_route import preflight

            return preflight(Path(path))
        if fmt != "tflite":
            raise UsageError(
                f"the {target.name} checks read a .tflite artifact, not {Path(path).name}: "
                f"export it with --target {target.name} first, then inspect the .tflite"
            )
        # The target profile says what it runs on (targets/edgetpu.toml: accelerator =
        # "edgetpu"); a profile's name or description is for people, not for this check.
        return target_report(Path(path), target.accelerator == "edgetpu")

    def layers(self, converted: Converted, source: SourceModel | None = None) -> list[Layer]:
        """The quantizable layers of ``converted`` named by the source model's names, with
        the native names ai-edge-quantizer's regex rules match; pass ``source`` where it is at hand
        (:mod:`edgekit.backends.tflite.layers`)."""
        return list_layers(converted, source)

    def convert(self, source: SourceModel, folder: Path) -> Converted:
        from edgekit.backends.tflite.convert import convert
        from edgekit.backends.tflite.source import prepare

        require("ai_edge_litert.interpreter", "tflite")
        if source.format == "tflite":
            prepared = prepare(source)
            (folder / "model.tflite").write_bytes(prepared.model)
            meta = {
                "inputs": prepared.inputs,
                "outputs": prepared.outputs,
                "notes": [],
                "signature": prepared.signature,
                "tflite_source": {
                    "widened": prepared.widened,
                    "numerics": prepared.numerics,
                    "notes": prepared.notes,
                },
            }
            return Converted(folder, ["model.tflite"], meta)
        scratch = folder / ".work"
        scratch.mkdir()
        try:
            converted = convert(source, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        (folder / "model.tflite").write_bytes(converted.model)
        meta = {
            "inputs": converted.inputs,
            "outputs": converted.outputs,
            "notes": converted.notes,
            **converted.extra,
        }
        return Converted(folder, ["model.tflite"], meta)

    def quantize(
        self,
        fp32: Converted,
        source: SourceModel,
        recipe: Recipe,
        calibration: Sequence[Feeds],
        workdir: Path,
        stem: str,
    ) -> ExportOutput:
        from edgekit.backends.tflite import ops
        from edgekit.backends.tflite.convert import Converted as TFLiteModel
        from edgekit.backends.tflite.quantize import quantize
        from edgekit.backends.tflite.validate import validate
        from edgekit.layers import resolve

        require("ai_edge_litert.interpreter", "tflite")
        converted = TFLiteModel(
            fp32.path("model.tflite").read_bytes(),
            fp32.meta["inputs"],
            fp32.meta["outputs"],
            list(fp32.meta.get("notes", [])),
        )
        warnings: list[str] = list(converted.notes)
        notes: list[str] = []
        signature = fp32.meta.get("signature", SIGNATURE)
        from_tflite = fp32.meta.get("tflite_source")
        if from_tflite is not None:
            notes += _tflite_source_notes(from_tflite, converted, source, recipe, calibration)
        details: dict[str, Any] = {
            "converter": _CONVERTERS.get(source.format, "TFLiteConverter"),
            "quantizer": None
            if recipe.precision in ("fp32", "as-trained")
            else "ai-edge-quantizer",
            "io_map": converted.io_map(),
            "fp32_size_bytes": len(converted.model),
        }
        if any(e.get("perm") for e in converted.inputs):
            details["input_layout"] = {
                e["name"]: {
                    "layout": e["layout"],
                    "shape": e["shape"],
                    "source_layout": e["source_layout"],
                    "source_shape": e["source_shape"],
                }
                for e in converted.inputs
                if e.get("perm")
            }
        model = converted.model
        if recipe.precision == "as-trained":
            from edgekit.compress.as_trained import facts

            # litert-torch's PT2E path already wrote the integer model at the trained scales.
            details["as_trained"], more = facts(source)
            notes += more
        elif recipe.precision != "fp32":
            layer_plan = resolve(self, fp32, recipe, source)
            if layer_plan:
                details["layer_rules"] = layer_plan.to_json()
            calib = _calibration_feeds(calibration, converted.inputs)
            model = quantize(model, recipe, calib, signature, layer_plan)
        out = workdir / f"{stem}{self.suffix}"
        tmp = workdir / f".{stem}.partial"
        tmp.write_bytes(write_io_map(model, converted.io_map()))
        os.replace(tmp, out)
        validate(out, fresh=True)

        if recipe.precision in ("int8", "int16x8", "as-trained"):
            report = ops.analyze(out.read_bytes(), out.name)
            details["ops"] = report.to_json()
            if not report.integer_only:
                islands = "; ".join(
                    ", ".join(f"#{o.index} {o.name}" for o in isl) for isl in report.islands
                )
                warnings.append(
                    f"{report.lines()[0]}: {islands}. Integer-only accelerators (Edge TPU, NPUs) "
                    f"stop at the first; see: edgekit inspect {out.name} --target edgetpu"
                )
        if recipe.precision == "int16x8":
            warnings.append(_INT16_WARNING)
        return ExportOutput(
            primary=out, files=[out], details=details, warnings=warnings, notes=notes
        )


BACKEND = TFLiteBackend()
