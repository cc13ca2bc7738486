"""The ``edgekit`` command. Heavy modules are imported inside each subcommand so that
``edgekit --help`` starts fast and imports no framework."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from edgekit import __version__
from edgekit.errors import (
    EXIT_CODES,
    AccuracyGateError,
    BudgetError,
    ConversionError,
    EdgekitError,
    RegressionError,
    UsageError,
    cli_caller,
    first_line,
)

_EPILOG = "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


def _floats(text: str) -> tuple[str, ...]:
    """Comma-separated numbers or fractions (``0.5,1/2``), each checked by ImageOptions."""
    values = tuple(v.strip() for v in text.split(","))
    if not all(values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'")
    return values


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a number of at least {minimum}, got {value}"
            )
        return value

    return parse


def _precision_list(known: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [p.strip() for p in text.split(",") if p.strip()]
        bad = [p for p in items if p not in known]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"invalid precision {', '.join(map(repr, bad)) or repr(text)} "
                f"(choose from {', '.join(known)})"
            )
        return items

    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgekit: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    from edgekit.recipe import CALIBRATION_METHODS, PRECISIONS

    parser = _Parser(
        prog="edgekit",
        description="Convert, quantize and check models for edge backends.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    exp = sub.add_parser(
        "export",
        help="convert and quantize a model for a target",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("model", help=".onnx, .pt2, .keras, .h5 or SavedModel directory")
    exp.add_argument("--target", "-t", default="onnxruntime", help="target profile or backend")
    exp.add_argument(
        "--precision",
        "-p",
        type=_precision_list((*PRECISIONS, "auto")),
        metavar="P[,P...]",
        help=f"one or more of {', '.join(PRECISIONS)}, comma-separated (converted once); "
        "or auto: the fastest on this CPU within the accuracy budget; default: the target's",
    )
    exp.add_argument("-o", "--output-dir", default="edgekit-out", help="default: edgekit-out")
    exp.add_argument("--name", help="artifact file name stem (default: the model's)")
    exp.add_argument(
        "--force", action="store_true", help="replace an artifact another target exported"
    )
    data = exp.add_argument_group("calibration and evaluation data")
    data.add_argument(
        "--calibration", help="image folder, .npy/.npz, or 'random' (smoke tests only)"
    )
    data.add_argument("--calibration-samples", type=_positive_int, metavar="N")
    data.add_argument("--calibration-method", choices=CALIBRATION_METHODS)
    data.add_argument("--percentile", type=float, help="for --calibration-method percentile")
    data.add_argument(
        "--eval-data", help="held-out inputs to compare with FP32 (default: rest of calibration)"
    )
    data.add_argument("--eval-samples", type=int, metavar="N")
    data.add_argument("--seed", type=int, help="sampling seed (default 0)")
    data.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=DIMS",
        help="fix a dynamic input, e.g. input=1x3x224x224 (repeatable); with --dynamic, the "
        "shape calibration and checks use",
    )
    data.add_argument(
        "--dynamic",
        action="append",
        metavar="NAME",
        help="keep this ONNX input's dynamic dimensions in the artifact (ONNX Runtime, "
        "OpenVINO; repeatable)",
    )
    _image_flags(exp)
    q = exp.add_argument_group("quantization scheme")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", action="store_true", help="int8 symmetric activations")
    sym.add_argument("--asymmetric", action="store_true", help="uint8 asymmetric (default)")
    q.add_argument("--reduce-range", action="store_true", help="7-bit weights (CPUs w/o VNNI)")
    q.add_argument(
        "--keep-float",
        action="append",
        metavar="PATTERN",
        help="layers left in float: a regex matching the whole layer name (repeatable)",
    )
    q.add_argument(
        "--rules",
        metavar="FILE",
        help="layer rules file (TOML/JSON): ordered {pattern, precision} pairs, last match wins",
    )
    acc = exp.add_argument_group("accuracy gate")
    acc.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="PCT",
        help="most the held-out metric may drop vs FP32, in points; layers move to float "
        f"until it holds (exit {AccuracyGateError.exit_code} when it cannot)",
    )
    acc.add_argument("--metric", help="metric of the gate and of --precision auto (default auto)")
    acc.add_argument(
        "--max-float-layers",
        type=_count,
        metavar="N",
        help="the most layers the gate may keep in float (default: as many as it takes)",
    )
    q.add_argument(
        "--io", choices=("float", "int8", "uint8"), help="I/O dtype of full-integer models"
    )
    chk = exp.add_argument_group("agreement warnings")
    chk.add_argument(
        "--warn-cosine", type=float, metavar="X", help="warn below this output cosine (0.99)"
    )
    chk.add_argument(
        "--warn-top1", type=float, metavar="X", help="warn below this top-1 agreement (0.98)"
    )
    _compress_flags(exp, standalone=False)
    exp.add_argument(
        "--device", help="accelerator to check the artifact on, e.g. CPU, GPU, NPU, AUTO"
    )
    exp.add_argument("--json", action="store_true", help="print the report as JSON")
    exp.add_argument("--quiet", "-q", action="store_true", help="no stage lines on stderr")

    cmp = sub.add_parser(
        "compress",
        help="prune / factor / fine-tune a PyTorch .pt2 or Keras model before export",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("model", help=".pt2 (torch.export) or .keras file")
    cmp.add_argument("-o", "--output-dir", default="edgekit-out", help="default: edgekit-out")
    cmp.add_argument("--name", help="output file name stem (default: the model's)")
    _compress_flags(cmp, standalone=True)
    cmp.add_argument("--json", action="store_true", help="print the reports as JSON")
    cmp.add_argument("--quiet", "-q", action="store_true", help="no stage lines on stderr")

    ins = sub.add_parser("inspect", help="show a model's format, I/O, parameters and ops")
    ins.add_argument("model")
    ins.add_argument("--target", "-t", help="also check the model against a target's limits")
    ins.add_argument("--json", action="store_true")
    lay = ins.add_argument_group("layers on the target's backend (need --target)")
    lay.add_argument("--layers", action="store_true", help="list the quantizable layers")
    lay.add_argument(
        "--sensitivity",
        action="store_true",
        help="rank layers by the metric drop when each alone is quantized (needs --data)",
    )
    lay.add_argument("--data", help="image folder or .npy/.npz to calibrate and measure on")
    lay.add_argument("--eval-data", help="held-out data (default: a fifth of --data)")
    lay.add_argument(
        "--precision", "-p", default="int8", help="int8 (default), int16x8 or int8-dynamic"
    )
    lay.add_argument("--metric", default="auto", help="metric (default auto)")
    lay.add_argument("--calibration-samples", type=_positive_int, metavar="N")
    lay.add_argument("--eval-samples", type=_positive_int, metavar="N")
    lay.add_argument("--input-shape", action="append", metavar="NAME=DIMS")

    tg = sub.add_parser("targets", help="list target profiles")
    tg.add_argument("--json", action="store_true")

    bm = sub.add_parser(
        "benchmark",
        help="latency and memory of artifacts on a device",
        description="Time artifacts in a fresh runner process each; several artifacts run in "
        "interleaved rounds and the table shows ratios to the first.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bm.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".onnx, .xml (+.bin), .tflite")
    bm.add_argument(
        "--device",
        "-d",
        default="local",
        help="local (default), an accelerator (CPU, GPU, NPU), ssh://user@host[:port], adb://SERIAL",
    )
    bm.add_argument("--runs", type=_positive_int, default=100, help="counted runs (default 100)")
    bm.add_argument("--warmup", type=_count, default=10, help="warm-up runs (default 10)")
    bm.add_argument("--duration", type=_seconds, metavar="S", help="run each at least S seconds")
    bm.add_argument("--rounds", type=_positive_int, help="interleaved rounds (default 10)")
    bm.add_argument("--threads", type=_positive_int, help="runtime threads (default: its own)")
    bm.add_argument("--pin", metavar="CPUS", help="run on these CPUs, e.g. 0 or 0-3")
    bm.add_argument("--inputs", default="random", help="random (default) or a .npz/.npy file")
    bm.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    bm.add_argument(
        "--inference-precision",
        choices=("match", "auto", "f32", "f16", "bf16"),
        default="match",
        help="OpenVINO's precision hint: match (default: f32 for fp32 artifacts, else the "
        "runtime's choice), auto (always the runtime's), or forced f32/f16/bf16",
    )
    remote = bm.add_argument_group("remote devices")
    remote.add_argument("--remote-python", metavar="PY", help="python on an ssh device (python3)")
    remote.add_argument("--ssh-config", metavar="FILE", help="ssh -F FILE")
    remote.add_argument(
        "--ssh-option", action="append", default=[], metavar="OPT", help="ssh -o OPT (repeatable)"
    )
    remote.add_argument("--benchmark-binary", metavar="PATH", help="benchmark_model for adb://")
    remote.add_argument("--connect-timeout", type=_seconds, default=10.0, metavar="S")
    remote.add_argument("--timeout", type=_seconds, default=600.0, metavar="S", help="per step")
    bm.add_argument("--json", action="store_true", help="print the result as JSON")

    ev = sub.add_parser(
        "evaluate",
        help="task metric of artifacts against their FP32 source and labels",
        description="Run the FP32 source (named by each artifact's sidecar, or --source) and\n"
        "every artifact on the same data, and score them: accuracy on labels (class\n"
        "sub-folders of an image folder, a 'labels' array in a .npz), else agreement with\n"
        "the FP32 source's outputs. 'drop' is the FP32 score minus the artifact's.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".onnx, .xml (+.bin), .tflite")
    ev.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="image folder (class sub-folders give labels) or .npy/.npz (a 'labels' array)",
    )
    # Checked by edgekit.metrics (one line, exit 2) rather than argparse choices, so that
    # `edgekit --help` does not import numpy; tests check this list names every metric.
    ev.add_argument(
        "--metric",
        default="auto",
        help="auto (default: top1 for class scores, seq for (batch, steps, classes), else "
        "cosine), top1, topk, agreement, iou, mean-error, seq, cosine, snr, psnr",
    )
    ev.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="k of topk (5)")
    ev.add_argument("--source", metavar="MODEL", help="FP32 model (default: the sidecar's)")
    ev.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=DIMS",
        help="fix a dynamic input of the source as at export (repeatable)",
    )
    ev.add_argument("--limit", type=_positive_int, metavar="N", help="samples (default: all)")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.add_argument("--threads", type=_positive_int, help="runtime threads (default: its own)")
    _image_flags(ev)
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--quiet", "-q", action="store_true", help="no stage lines on stderr")

    bd = sub.add_parser(
        "build",
        help="build every model x target x precision of an edgekit.toml, gated by budgets",
        description="Plan the whole matrix of the config (refusing an impossible cell before\n"
        "any work), export each cell or reuse it from the content-hash cache, gate it by its\n"
        "target's budgets, and write manifest.json, summary.md and junit.xml into -o.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bd.add_argument("--config", "-c", default="edgekit.toml", help="default: ./edgekit.toml")
    bd.add_argument("-o", "--output-dir", default="edgekit-build", help="default: edgekit-build")
    bd.add_argument("--init", action="store_true", help="write an example edgekit.toml and stop")
    bd.add_argument("--no-cache", action="store_true", help="rebuild every cell")
    bd.add_argument("--keep-going", action="store_true", help="build the rest after a failure")
    bd.add_argument(
        "--baseline",
        metavar="MANIFEST",
        help="an earlier build's manifest.json (or folder): flag larger, slower or less "
        "accurate cells (exit 11)",
    )
    bd.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where cells are exported: a local process pool (default) or a Ray cluster "
        "(pip install 'edgekit[ray]'); benchmarks stay one at a time per device",
    )
    bd.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster to join (default: $RAY_ADDRESS, else a local cluster)",
    )
    bd.add_argument(
        "--jobs",
        "-j",
        type=_int_at_least(1),
        help="cells exported at once (default: the CPU count for local, the cluster for ray)",
    )
    bd.add_argument("--json", action="store_true", help="print the manifest as JSON")
    bd.add_argument("--quiet", "-q", action="store_true", help="no stage lines on stderr")
    return parser


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None


def _n_m(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N:M such as 2:4, got '{text}'") from None
    return n, m


def _compress_flags(parser: argparse.ArgumentParser, standalone: bool) -> None:
    """The compress passes' flags, the same on ``compress`` and ``export`` (which compresses
    first, then exports the compressed model). Passes run as prune, low-rank, fine-tune."""
    title = "compress passes" if standalone else "compress first (PyTorch / Keras sources)"
    g = parser.add_argument_group(title)
    g.add_argument("--prune", type=_ratio, metavar="RATIO", help="fraction to remove (0-1)")
    kind = g.add_mutually_exclusive_group()
    kind.add_argument(
        "--structured", action="store_true", help="remove whole channels (the default)"
    )
    kind.add_argument(
        "--unstructured", action="store_true", help="zero single weights (only zip size drops)"
    )
    g.add_argument(
        "--criterion",
        choices=("magnitude", "gradient", "taylor", "importance"),
        default="magnitude",
        help="what ranks channels/weights (default magnitude; gradient/taylor/importance "
        "use --data)",
    )
    g.add_argument("--scope", choices=("global", "layer"), default="layer", help="default layer")
    g.add_argument(
        "--ignore",
        action="extend",
        nargs="+",
        metavar="REGEX",
        help="layers left alone (regex searched in the layer name)",
    )
    g.add_argument("--round-to", type=_positive_int, metavar="N", help="kept channels, default 8")
    g.add_argument("--n-m", type=_n_m, metavar="N:M", help="N:M sparsity, e.g. 2:4")
    g.add_argument("--low-rank", choices=("svd", "tucker", "cp"), help="factor layers")
    rank = g.add_mutually_exclusive_group()
    rank.add_argument("--rank-energy", type=_ratio, metavar="F", help="default 0.9")
    rank.add_argument("--rank", type=_positive_int, metavar="R")
    rank.add_argument("--param-budget", type=_ratio, metavar="F", help="params kept per layer")
    if standalone:
        g.add_argument("--data", metavar="PATH", help="training data: image folder, .npy or .npz")
        g.add_argument(
            "--eval-data",
            metavar="PATH",
            help="held-out data for the metric (default: a fifth of --data)",
        )
    else:
        g.add_argument(
            "--data", metavar="PATH", help="compress training data (default: --calibration)"
        )
    g.add_argument(
        "--labels", metavar="PATH", help=".npy of class ids for --data (or use class folders)"
    )
    g.add_argument("--finetune-epochs", type=_positive_int, metavar="N")
    g.add_argument(
        "--finetune",
        choices=("labels", "distill"),
        help="fine-tune loss (default: labels with --labels, else distill)",
    )
    g.add_argument(
        "--distill-from",
        metavar="TEACHER",
        help="distill from this .pt2/.keras teacher (the model itself for --distill self)",
    )
    g.add_argument("--distill", choices=("offline", "online", "self", "data-free"))
    g.add_argument("--alpha", type=float, help="hard-label loss weight (needs --labels)")
    g.add_argument("--temperature", type=float, help="softening temperature T, default 4")
    g.add_argument("--distill-epochs", type=_positive_int, metavar="N", help="default 10")
    g.add_argument(
        "--qat",
        action="store_true",
        help="quantization-aware training (last pass); export with --precision as-trained",
    )
    g.add_argument("--qat-epochs", type=_positive_int, metavar="N", help="QAT epochs, default 2")
    g.add_argument(
        "--qat-mode",
        choices=("labels", "distill"),
        help="QAT loss (default: labels with --labels, else distill)",
    )
    g.add_argument(
        "--qat-lr", type=_positive_float, metavar="LR", help="QAT learning rate, default 1e-4"
    )


def _passes(args: argparse.Namespace) -> list[Any]:
    from edgekit.compress.passes import FineTune, LowRank, Prune

    passes: list[Any] = []
    prune_only = [
        f
        for f, v in (
            ("--unstructured", args.unstructured),
            ("--structured", args.structured),
            ("--ignore", args.ignore),
            ("--round-to", args.round_to),
            ("--n-m", args.n_m),
        )
        if v
    ]
    if args.prune is not None:
        fields: dict[str, Any] = {
            "structured": not args.unstructured,
            "criterion": args.criterion,
            "scope": args.scope,
            "ignore": tuple(args.ignore or ()),
            "n_m": args.n_m,
        }
        if args.round_to:
            fields["round_to"] = args.round_to
        passes.append(Prune(args.prune, **fields))
    elif prune_only:
        raise UsageError(f"{prune_only[0]} shapes pruning: add --prune RATIO")
    if args.low_rank:
        passes.append(
            LowRank(
                args.low_rank,
                energy=args.rank_energy,
                rank=args.rank,
                param_budget=args.param_budget,
                ignore=tuple(args.ignore or ()),
            )
        )
    elif args.rank_energy is not None or args.rank or args.param_budget is not None:
        raise UsageError("--rank-energy/--rank/--param-budget choose a rank: add --low-rank")
    distill = {
        "alpha": args.alpha,
        "temperature": args.temperature,
        "epochs": args.distill_epochs,
        "mode": args.distill,
    }
    if args.distill_from or args.distill == "self":
        from edgekit.compress.passes import Distill

        fields = {k: v for k, v in distill.items() if v is not None}
        passes.append(Distill(teacher=args.distill_from, **fields))
    elif any(v is not None for v in distill.values()):
        raise UsageError(
            "--alpha/--temperature/--distill/--distill-epochs shape distillation: add "
            "--distill-from TEACHER"
        )
    if args.finetune_epochs or args.finetune:
        mode = args.finetune or ("labels" if args.labels else "distill")
        passes.append(FineTune(epochs=args.finetune_epochs or 2, mode=mode))
    if args.qat:
        from edgekit.compress.passes import QAT

        mode = args.qat_mode or ("labels" if args.labels else "distill")
        lr = {"lr": args.qat_lr} if args.qat_lr else {}
        passes.append(QAT(epochs=args.qat_epochs or 2, mode=mode, **lr))
    elif args.qat_epochs or args.qat_mode or args.qat_lr:
        raise UsageError(
            "--qat-epochs/--qat-mode/--qat-lr shape quantization-aware training: add --qat"
        )
    return passes


def _print_compress(result: Any) -> None:
    print(result.table())


def _cmd_compress(args: argparse.Namespace) -> int:
    from edgekit import progress

    progress.QUIET = args.quiet
    passes = _passes(args)
    if not passes:
        raise UsageError("nothing to do: give --prune, --low-rank and/or --finetune-epochs")
    from edgekit.compress.api import compress

    result = compress(
        args.model,
        passes,
        data=args.data,
        labels=args.labels,
        eval_data=args.eval_data,
        output_dir=args.output_dir,
        name=args.name,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        _print_compress(result)
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, got {text}")
    return value


def _image_flags(parser: argparse.ArgumentParser) -> None:
    """The image-folder preprocessing options, the same on every command that reads data."""
    img = parser.add_argument_group("image preprocessing (image-folder data)")
    img.add_argument("--layout", choices=("NCHW", "NHWC"))
    img.add_argument("--color", choices=("rgb", "bgr", "gray"))
    # Strings, checked by ImageOptions like preprocess.toml values, so fractions work the same
    # in both places (--scale 1/127.5).
    img.add_argument("--scale", help="pixel multiplier, a number or fraction (default 1/255)")
    img.add_argument("--mean", type=_floats, help="per-channel mean, e.g. 0.485,0.456,0.406")
    img.add_argument("--std", type=_floats, help="per-channel std, e.g. 0.229,0.224,0.225")
    img.add_argument(
        "--resize", choices=("nearest", "bilinear", "bicubic"), help="default bilinear"
    )


def _image_options(args: argparse.Namespace) -> Any:
    from edgekit.calibration import ImageOptions

    return ImageOptions(
        layout=args.layout,
        color=args.color,
        scale=args.scale,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
    )


def _recipe_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "calibration_samples": args.calibration_samples,
        "calibration_method": args.calibration_method,
        "percentile": args.percentile,
        "eval_samples": args.eval_samples,
        "seed": args.seed,
        "warn_cosine": args.warn_cosine,
        "warn_top1": args.warn_top1,
    }
    if args.per_tensor:
        fields["per_channel"] = False
    if args.symmetric or args.asymmetric:
        fields["activation_symmetric"] = bool(args.symmetric)
    if args.reduce_range:
        fields["reduce_range"] = True
    if args.keep_float:
        fields["keep_float"] = tuple(args.keep_float)
    if args.rules:
        from edgekit.layers import load_rules_file

        fields["rules"] = load_rules_file(args.rules)
    fields["max_accuracy_drop"] = args.max_accuracy_drop
    fields["metric"] = args.metric
    fields["max_float_layers"] = args.max_float_layers
    if args.io:
        fields["io_dtype"] = args.io
    return fields


def _cmd_export(args: argparse.Namespace) -> int:
    from edgekit import progress

    progress.QUIET = args.quiet
    from edgekit.exporter import export
    from edgekit.model import parse_input_shapes

    image_options = _image_options(args)
    passes = _passes(args)
    if passes:
        return _compress_then_export(args, passes, image_options)
    reports = export(
        args.model,
        target=args.target,
        precision=args.precision,
        output_dir=args.output_dir,
        calibration=args.calibration,
        eval_data=args.eval_data,
        input_shapes=parse_input_shapes(args.input_shape),
        image_options=image_options,
        name=args.name,
        device=args.device,
        force=args.force,
        dynamic=args.dynamic,
        **_recipe_fields(args),
    )
    if not isinstance(reports, list):
        reports = [reports]
    if args.json:
        docs = [r.to_json() for r in reports]
        print(json.dumps(docs if len(docs) > 1 else docs[0], indent=2))
        return 0
    for i, report in enumerate(reports):
        if i:
            print()
        _print_report(report)
    return 0


def _compress_then_export(args: argparse.Namespace, passes: list[Any], image_options: Any) -> int:
    """``edgekit export --prune ...``: compress into a temporary folder, export that."""
    import tempfile

    from edgekit.compress.api import compress
    from edgekit.exporter import export
    from edgekit.model import parse_input_shapes

    data = args.data
    if data is None and args.calibration not in (None, "random"):
        data = args.calibration
    name = args.name or Path(args.model).name.split(".")[0]
    with tempfile.TemporaryDirectory(prefix="edgekit-compress-") as tmp:
        result = compress(
            args.model,
            passes,
            data=data,
            labels=args.labels,
            eval_data=args.eval_data,
            output_dir=tmp,
            name=name,
        )
        reports = export(
            str(result.path),
            target=args.target,
            precision=args.precision,
            output_dir=args.output_dir,
            calibration=args.calibration,
            eval_data=args.eval_data,
            input_shapes=parse_input_shapes(args.input_shape),
            image_options=image_options,
            name=name,
            device=args.device,
            force=args.force,
            dynamic=args.dynamic,
            **_recipe_fields(args),
        )
    if not isinstance(reports, list):
        reports = [reports]
    result.path = None  # it was a temporary file: the artifacts are what was written
    summary = result.to_json()
    line = "compressed first: " + "; ".join(
        f"{r.kind} params {r.params_before} -> {r.params_after}" for r in result.reports
    )
    for report in reports:
        report.notes.append(line)
    if args.json:
        docs = [{**r.to_json(), "compress": summary} for r in reports]
        print(json.dumps(docs if len(docs) > 1 else docs[0], indent=2, default=str))
        return 0
    _print_compress(result)
    for report in reports:
        print()
        _print_report(report)
    return 0


def _print_report(report: Any) -> None:
    a = report.agreement
    top1 = "n/a" if a.top1_agreement is None else f"{a.top1_agreement:.2%}"
    rows = [
        ("artifact", str(report.artifact)),
        ("target", f"{report.target} ({report.backend}), precision {report.recipe.precision}"),
        (
            "size",
            f"{_mib(report.size_bytes)} vs source {_mib(report.source_size_bytes)} "
            f"({report.size_ratio:.2f}x)",
        ),
        ("agreement", f"with the FP32 source on {a.samples} {report.eval_inputs}"),
        ("  max |diff|", "n/a" if a.max_abs_diff is None else f"{a.max_abs_diff:.4g}"),
        ("  cosine", "n/a" if a.mean_cosine is None else f"{a.mean_cosine:.6f}"),
        ("  top-1", top1),
        ("sidecar", str(report.sidecar)),
        ("time", f"{report.seconds:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if report.choices:
        _print_choices(report.choices)
    for note in report.notes:
        print(f"note: {note}")
    if a.non_finite_outputs:
        print(
            f"warning: {a.non_finite_outputs} output(s) of the exported model hold NaN or inf: "
            "the artifact is broken at this precision; try another precision or --keep-float"
        )
    for warning in report.warnings:
        print(f"warning: {warning}")


def _print_choices(rows: list[dict[str, Any]]) -> None:
    """--precision auto's table: every candidate it measured, the chosen one starred."""
    print("precision auto (latency vs fp32 on this CPU, 1 thread, interleaved):")
    for r in rows:
        mark = "*" if r.get("chosen") else " "
        if "value" not in r:
            print(f"  {mark} {r['precision']:<13} not within budget: {r.get('why', '')}")
            continue
        ratio = r["latency_vs_fp32"]
        latency = "too quick to time" if ratio is None else f"{ratio:.2f}x"
        fits = "within budget" if r["meets_budget"] else "over budget"
        floats = f", {len(r['float_layers'])} float layer(s)" if r.get("float_layers") else ""
        print(
            f"  {mark} {r['precision']:<13} {r['metric']} {r['value']:.2f} (drop "
            f"{r['drop']:+.2f}), latency {latency}, {_mib(r['size_bytes'])}, {fits}{floats}"
        )


def _mib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _cmd_inspect(args: argparse.Namespace) -> int:
    if args.layers or args.sensitivity:
        return _cmd_layers(args)
    from edgekit.model import describe

    info = describe(args.model, target=args.target)
    # A target report that says the model cannot convert (an ONNX op the TFLite route has no
    # converter for) exits as the export would, so a pipeline can check before it builds.
    refused = (info.get("target_report") or {}).get("convertible") is False
    code = ConversionError.exit_code if refused else 0
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return code
    print(f"{info['path']}: {info['format']}, {_mib(info['size_bytes'])}")
    params = info.get("parameters")
    print(f"parameters: {'unknown' if params is None else f'{params:,}'}")
    numerics = (info.get("numerics") or {}).get("summary")
    if numerics:
        print(numerics)
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for spec in info.get(kind, []):
            shape = spec.get("shape")
            dims = "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"
            extra = [f"tensor {spec['tensor']}"] if spec.get("tensor") else []
            if spec.get("layout"):
                extra.append(
                    f"{spec['layout']}; source {spec.get('source_layout')} "
                    f"{spec.get('source_shape')}"
                )
            tail = f"  ({'; '.join(extra)})" if extra else ""
            print(f"  {spec['name']}: {spec.get('dtype', '?')} {dims}{tail}")
    ops = info.get("ops") or {}
    if ops:
        print("ops: " + ", ".join(f"{k} {v}" for k, v in ops.items()))
    for note in info.get("notes") or []:
        print(f"note: {note}")
    report = info.get("target_report")
    if report:
        print(f"target {args.target}:")
        for line in report.get("lines", []):
            print(f"  {line}")
    return code


def _cmd_layers(args: argparse.Namespace) -> int:
    """inspect --layers / --sensitivity: the model as the target's backend sees it."""
    from edgekit import progress

    progress.QUIET = args.json
    from edgekit.layer_report import list_layers, sensitivity
    from edgekit.model import parse_input_shapes

    if not args.target:
        raise UsageError(
            "--layers and --sensitivity need --target T: layers are the target backend's"
        )
    shapes = parse_input_shapes(args.input_shape)
    if args.layers and not args.sensitivity:
        layers = list_layers(args.model, args.target, input_shapes=shapes)
        if args.json:
            print(json.dumps([layer.to_json() for layer in layers], indent=2))
            return 0
        print(f"{len(layers)} quantizable layers on {args.target} (rules match these names):")
        for layer in layers:
            print(f"  {layer.name:<40} {layer.op}")
        return 0
    report = sensitivity(
        args.model,
        args.target,
        args.data,
        precision=args.precision,
        metric=args.metric,
        eval_data=args.eval_data,
        input_shapes=shapes,
        calibration_samples=args.calibration_samples,
        eval_samples=args.eval_samples,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(
        f"sensitivity on {report.target} ({report.backend}) at {report.precision}: {report.metric}"
        f" drop in points with only that layer quantized, against {report.against} "
        f"(FP32 {report.fp32_value:.2f}, {report.samples} samples); SNR of the outputs (proxy)"
    )
    print(f"  {'rank':>4}  {'layer':<40} {'op':<18} {'drop':>7}  {'SNR dB':>7}")
    for i, s in enumerate(report.layers, 1):
        snr = "inf" if s.snr_db is None else f"{s.snr_db:.1f}"
        print(f"  {i:>4}  {s.name:<40} {s.op:<18} {s.drop:>7.2f}  {snr:>7}")
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgekit.targets import resolve_target, target_names

    targets = [resolve_target(n) for n in target_names()]
    if args.json:
        print(json.dumps([t.__dict__ for t in targets], indent=2))
        return 0
    for t in targets:
        print(f"{t.name:<22} {t.backend:<12} {t.default_precision:<6} {t.description}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from edgekit.bench import benchmark

    result = benchmark(
        args.artifacts,
        device=args.device,
        runs=args.runs,
        warmup=args.warmup,
        duration=args.duration,
        threads=args.threads,
        pin=args.pin,
        inputs=args.inputs,
        rounds=args.rounds,
        seed=args.seed,
        inference_precision=args.inference_precision,
        remote_python=args.remote_python,
        ssh_config=args.ssh_config,
        ssh_options=args.ssh_option,
        benchmark_binary=args.benchmark_binary,
        connect_timeout=args.connect_timeout,
        timeout=args.timeout,
    )
    print(json.dumps(result.to_json(), indent=2) if args.json else result.table())
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from edgekit import progress

    progress.QUIET = args.quiet
    from edgekit.evaluation import evaluate
    from edgekit.model import parse_input_shapes

    image_options = _image_options(args)
    report = evaluate(
        args.artifacts,
        args.data,
        metric=args.metric,
        source=args.source,
        input_shapes=parse_input_shapes(args.input_shape),
        limit=args.limit,
        seed=args.seed,
        image_options=image_options,
        k=args.top_k,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2, allow_nan=False))
    else:
        print(report.table())
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from edgekit import progress
    from edgekit.build import EXAMPLE, build
    from edgekit.build.run import summary_markdown

    config = Path(args.config)
    if args.init:
        if config.exists():
            raise UsageError(f"{config} exists already; remove it or pass --config NEW.toml")
        config.write_text(EXAMPLE)
        print(f"wrote {config}; build it with: edgekit build --config {config}")
        return 0
    progress.QUIET = args.json or args.quiet
    manifest: dict[str, Any] | None = None
    code = 0
    try:
        manifest = build(
            config,
            args.output_dir,
            use_cache=not args.no_cache,
            keep_going=args.keep_going,
            baseline=args.baseline,
            executor=args.executor,
            ray_address=args.ray_address,
            jobs=args.jobs,
        )
    except (BudgetError, RegressionError) as exc:
        # Everything was written; the summary says which cell missed which budget.
        manifest = json.loads((Path(args.output_dir) / "manifest.json").read_text())
        code = exc.exit_code
        print(f"edgekit: error: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(summary_markdown(manifest), end="")
        out = Path(args.output_dir)
        print(f"manifest {out / 'manifest.json'}, report {out / 'report.html'}")
    return code


_COMMANDS = {
    "build": _cmd_build,
    "compress": _cmd_compress,
    "export": _cmd_export,
    "inspect": _cmd_inspect,
    "targets": _cmd_targets,
    "benchmark": _cmd_benchmark,
    "evaluate": _cmd_evaluate,
}


def _quiet_frameworks() -> None:
    """The frameworks' start-up chatter (TF's C++ log, torch's registration warnings) buries
    edgekit's one-screen summary; users who want it can set the variables themselves."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("torch").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_frameworks()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with cli_caller():
            return _COMMANDS[args.command](args)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `edgekit inspect m.onnx | head`: the reader left, which is no error of edgekit's.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        print(
            f"edgekit: internal error: {type(exc).__name__}: {first_line(exc)} "
            "(rerun with EDGEKIT_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
