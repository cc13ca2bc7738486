"""``edgekit.compress``: apply compress passes to a PyTorch or Keras model, measuring each.

Framework-agnostic: everything framework-specific goes through the module :data:`FRAMEWORKS`
names (imported only when used), which implements the protocol described in
``edgekit/compress/torch_model.py``: ``SUFFIX``, ``owns``, ``load``, ``save``, ``run``,
``count``, ``apply``, ``input_names``, and optionally ``example(model, given)`` (the feed the
model is traced at), and ``as_module(obj, given)`` (normalize an in-memory object).

Each pass gets a :class:`~edgekit.compress.passes.PassReport`: parameters and MACs, the size of
the saved model and its deflate size (where unstructured zeros show), the metric (top-1 against
labels, else top-1 agreement with the uncompressed model) on held-out data, and the time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compress.passes import CompressData, FineTune, Pass, PassReport, to_dict
from edgekit.errors import DataError, ModelNotFoundError, UsageError, speaks_api

#: framework name -> module implementing the protocol (imported lazily)
FRAMEWORKS: dict[str, str] = {
    "torch": "edgekit.compress.torch_model",
    "keras": "edgekit.compress.keras_model",
}
#: without eval_data, this fraction of data is held out for the metric (never trained on)
HOLDOUT = 0.2


@dataclass
class CompressResult:
    """The compressed model, one report per pass, the written file and its sidecar."""

    model: Any
    reports: list[PassReport]
    path: Path | None = None
    sidecar: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "reports": [asdict(r) for r in self.reports],
            **{k: v for k, v in self.sidecar.items() if k not in ("reports",)},
        }

    def table(self) -> str:
        """One row per pass: params, MACs, size, zip size and metric, before -> after."""
        head = ("pass", "params", "MACs", "size", "zip", "metric", "s")
        rows = [head]
        for r in self.reports:
            metric = "-"
            if r.metric_after is not None:
                metric = f"{r.metric_before:.4f} -> {r.metric_after:.4f}"
            rows.append(
                (
                    r.kind,
                    f"{_num(r.params_before)} -> {_num(r.params_after)}",
                    f"{_num(r.macs_before)} -> {_num(r.macs_after)}",
                    f"{_size(r.size_before)} -> {_size(r.size_after)}",
                    f"{_size(r.zip_before)} -> {_size(r.zip_after)}",
                    metric,
                    f"{r.seconds:.1f}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        for r in self.reports:
            lines.extend(f"  {r.kind}: {note}" for note in r.notes)
        if self.path:
            lines.append(f"wrote {self.path}")
        if self.sidecar.get("metric_name"):
            lines.append(f"metric: {self.sidecar['metric_name']} on {self.sidecar['eval']}")
        return "\n".join(lines)


def _num(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _size(n: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def framework_of(model: Any) -> tuple[str, Any]:
    """The framework name and protocol module owning ``model`` (a path or an object)."""
    for name, module_name in FRAMEWORKS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # a framework module another helper has not written yet
        if module.owns(model):
            return name, module
    if isinstance(model, str | os.PathLike):
        raise UsageError(
            f"cannot compress {Path(model).name}: pass a PyTorch .pt2 (torch.export) or a "
            "Keras .keras file"
        )
    raise UsageError(
        f"cannot compress a {type(model).__name__}: pass a torch.nn.Module (with "
        "example_inputs), a keras.Model, or a .pt2/.keras path"
    )


def _specs(example: Mapping[str, np.ndarray]) -> list[Any]:
    from edgekit.model import TensorSpec

    # One sample per feed: the readers then stack any number of samples along axis 0.
    return [
        TensorSpec(n, np.asarray(a).dtype.name, (1, *np.asarray(a).shape[1:]))
        for n, a in example.items()
    ]


def _stack(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def _read(
    source: Any, labels: Any, example: Mapping[str, np.ndarray], what: str
) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
    """Stacked feeds (first axis = samples) and labels from any source the readers take."""
    if source is None:
        if labels is not None:
            raise UsageError(f"labels for the {what} data were given without the data")
        return None, None
    from edgekit.labels import load_labelled

    labels = _labels_file(labels)
    specs = _specs(example)
    if isinstance(source, np.ndarray) and len(specs) == 1 and source.ndim == len(specs[0].shape):
        feeds = {specs[0].name: source.astype(specs[0].dtype, copy=False)}
        found = None if labels is None else np.asarray(labels)
        if found is not None and len(found) != len(source):
            raise DataError(f"{len(found)} labels for {len(source)} {what} samples")
        return feeds, found
    samples, found = load_labelled(source, specs, labels=labels)
    if not samples:
        raise DataError(f"the {what} data holds no samples")
    return _stack(samples), found


def _labels_file(labels: Any) -> Any:
    """A labels path (.npy, or .npz with a ``labels`` array) read; anything else as given."""
    if not isinstance(labels, str | os.PathLike):
        return labels
    path = Path(labels)
    if not path.is_file():
        raise DataError(f"labels not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read labels {path.name}: {exc}") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        key = next((k for k in ("labels", "label") if k in loaded.files), None)
        if key is None:
            raise DataError(f"{path.name} holds no 'labels' array")
        return loaded[key]
    return loaded


def _split(
    feeds: dict[str, np.ndarray], labels: np.ndarray | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, np.ndarray], np.ndarray | None]:
    n = len(next(iter(feeds.values())))
    order = np.random.default_rng(0).permutation(n)
    held = np.sort(order[: max(1, int(n * HOLDOUT))])
    train = np.sort(order[len(held) :])

    def take(idx: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        return {k: v[idx] for k, v in feeds.items()}, None if labels is None else labels[idx]

    return (*take(train), *take(held))


def _top1(outputs: list[np.ndarray], reference: np.ndarray) -> float:
    pred = np.argmax(outputs[0], axis=-1)
    ref = reference if reference.ndim == pred.ndim else np.argmax(reference, axis=-1)
    return float(np.mean(pred == ref))


class _Measure:
    """Size/params/metric of a model state, each measured once."""

    def __init__(self, fw: Any, example: dict[str, np.ndarray], data: CompressData) -> None:
        self.fw, self.example, self.data = fw, example, data
        self.reference: list[np.ndarray] | None = None
        if data.eval is not None and data.eval_labels is None:
            self.reference = fw.run(data.original, data.eval)
        self.tmp = tempfile.TemporaryDirectory(prefix="edgekit-compress-")
        #: sha256 of the uncompressed model as saved (the source hash of an in-memory model)
        self.first_sha = ""

    def sizes(self, model: Any) -> tuple[int, int, bytes]:
        path = Path(self.tmp.name) / f"m{self.fw.SUFFIX}"
        self.fw.save(model, path, self.example)
        blob = path.read_bytes()
        return len(blob), len(zlib.compress(blob, 9)), blob

    def metric(self, model: Any) -> float | None:
        if self.data.eval is None:
            return None
        outs = self.fw.run(model, self.data.eval)
        if self.data.eval_labels is not None:
            return _top1(outs, np.asarray(self.data.eval_labels))
        assert self.reference is not None
        return _top1(outs, self.reference[0])

    def state(self, model: Any) -> dict[str, Any]:
        params, macs = self.fw.count(model, self.example)
        size, zipped, blob = self.sizes(model)
        return {
            "params": params,
            "macs": macs,
            "size": size,
            "zip": zipped,
            "metric": self.metric(model),
            "sha256": hashlib.sha256(blob).hexdigest(),
        }


def _atomic_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write JSON next to ``path`` under a temporary name; the caller renames it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, default=str)
        fh.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def _example(fw: Any, model: Any, given: Any) -> dict[str, np.ndarray]:
    """One feed at the model's shapes: the framework's own rule, else ``given``."""
    if hasattr(fw, "example"):
        return dict(fw.example(model, given))
    if given is None:
        raise UsageError("pass example_inputs= so the model's input shapes are known")
    if isinstance(given, Mapping):
        return {k: np.asarray(v) for k, v in given.items()}
    arrays = [np.asarray(v) for v in (given if isinstance(given, list | tuple) else [given])]
    return dict(zip(fw.input_names(model), arrays, strict=True))


def _check_passes(passes: Sequence[Pass]) -> list[Pass]:
    from edgekit.compress.passes import PASSES

    items = [passes] if isinstance(passes, tuple(PASSES.values())) else list(passes)
    if not items:
        raise UsageError("give at least one compress pass (--prune, --low-rank, --finetune-epochs)")
    for p in items:
        if not isinstance(p, tuple(PASSES.values())):
            raise UsageError(f"a compress pass is a Prune, LowRank or FineTune, not {p!r}")
    return items


@speaks_api
def compress(
    model: Any,
    passes: Sequence[Pass] | Pass,
    *,
    data: Any = None,
    labels: Any = None,
    eval_data: Any = None,
    eval_labels: Any = None,
    example_inputs: Any = None,
    output_dir: str | Path | None = None,
    name: str | None = None,
) -> CompressResult:
    """Apply ``passes`` in order to ``model`` and measure each; write ``OUT/<name><suffix>``
    and ``OUT/<name>.compress.json`` when ``output_dir`` is given.

    ``model`` is a ``.pt2``/``.keras`` path, a ``torch.nn.Module`` (with ``example_inputs``)
    or ``ExportedProgram``, or a ``keras.Model``; it is not modified. ``data`` (an image
    folder, .npy/.npz, arrays or feed dicts) feeds the data-driven criteria and fine-tuning;
    ``labels`` are its labels (or come with the data: class folders, a ``labels`` key).
    ``eval_data``/``eval_labels`` are held out for the metric; without them a fifth of
    ``data`` is held out (and not trained on).
    """
    started = time.perf_counter()
    items = _check_passes(passes)
    framework, fw = framework_of(model)
    source_path: Path | None = None
    if isinstance(model, str | os.PathLike):
        source_path = Path(model)
        if not source_path.exists():
            raise ModelNotFoundError(f"model not found: {source_path}")
        model = fw.load(source_path)
    elif hasattr(fw, "as_module"):
        model = fw.as_module(model, example_inputs)
    example = _example(fw, model, example_inputs)
    train, train_labels = _read(data, labels, example, "training")
    held, held_labels = _read(eval_data, eval_labels, example, "evaluation")
    described = "evaluation data"
    if held is None and train is not None:
        if len(next(iter(train.values()))) >= 10:
            train, train_labels, held, held_labels = _split(train, train_labels)
            described = f"a held-out {HOLDOUT:.0%} of the data"
        else:
            held, held_labels = train, train_labels
            described = "the training data (too few samples to hold some out)"
    teacher, items_run = _teacher(fw, items, example_inputs)
    cdata = CompressData(
        train=train,
        train_labels=train_labels,
        eval=held,
        eval_labels=held_labels,
        # A distill pass's teacher is the reference model: agreement is measured against it
        original=model if teacher is None else teacher,
        example=example,
    )
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir} is a file; give a folder")
    stem = name or (source_path.name.split(".")[0] if source_path else "model")
    measure = _Measure(fw, example, cdata)
    try:
        reports, current = _run_passes(fw, model, items_run, cdata, measure)
        for r, p in zip(reports, items, strict=True):
            r.config = to_dict(p)  # the teacher as given (its path), not the loaded copy
        metric_name = None
        if held is not None:
            metric_name = "top1" if held_labels is not None else "top1_agreement"
        for r in reports:
            r.metric_name = metric_name if r.metric_after is not None else None
        source_sha = measure.first_sha
        if source_path is not None:
            from edgekit.model import file_digest

            source_sha = file_digest(source_path)[0]
        from edgekit import __version__
        from edgekit.exporter import tool_versions

        sidecar: dict[str, Any] = {
            "edgekit": __version__,
            "framework": framework,
            "source": str(source_path) if source_path else None,
            "source_sha256": source_sha,
            "passes": [to_dict(p) for p in items],
            "reports": [asdict(r) for r in reports],
            "metric_name": metric_name,
            "eval": described if held is not None else None,
            "tool_versions": tool_versions(),
            "seconds": round(time.perf_counter() - started, 3),
        }
        path = None
        if out_dir is not None:
            path = _write(fw, current, out_dir, stem, example, sidecar)
    finally:
        measure.tmp.cleanup()
    return CompressResult(model=current, reports=reports, path=path, sidecar=sidecar)


def _teacher(fw: Any, items: list[Pass], given: Any) -> tuple[Any, list[Pass]]:
    """The one teacher the distill passes name, loaded (None: the model itself), and the
    passes to run (their teacher then is ``CompressData.original``)."""
    from dataclasses import replace

    from edgekit.compress.passes import Distill, teacher_name

    named = [p.teacher for p in items if isinstance(p, Distill) and p.teacher is not None]
    if not named:
        return None, items
    if len({teacher_name(t) if isinstance(t, str | os.PathLike) else id(t) for t in named}) > 1:
        raise UsageError("one teacher per compress run: the distill passes name different ones")
    teacher = named[0]
    if not fw.owns(teacher):
        raise UsageError(
            f"the teacher {teacher_name(teacher)} is not a model of the student's kind"
        )
    if isinstance(teacher, str | os.PathLike):
        if not Path(teacher).exists():
            raise ModelNotFoundError(f"teacher not found: {teacher}")
        teacher = fw.load(Path(teacher))
    elif hasattr(fw, "as_module"):
        teacher = fw.as_module(teacher, given)
    run = [replace(p, teacher=None) if isinstance(p, Distill) else p for p in items]
    return teacher, run


def _run_passes(
    fw: Any, model: Any, items: list[Pass], data: CompressData, measure: _Measure
) -> tuple[list[PassReport], Any]:
    from edgekit.progress import stage

    reports: list[PassReport] = []
    current = model
    state = measure.state(current)
    measure.first_sha = state["sha256"]
    for p in items:
        stage(f"compress: {p.kind} {_describe(p)}")
        t0 = time.perf_counter()
        new, layers, notes = fw.apply(current, p, data)
        seconds = time.perf_counter() - t0
        after = measure.state(new)
        reports.append(
            PassReport(
                kind=p.kind,
                config=to_dict(p),
                params_before=state["params"],
                params_after=after["params"],
                macs_before=state["macs"],
                macs_after=after["macs"],
                size_before=state["size"],
                size_after=after["size"],
                zip_before=state["zip"],
                zip_after=after["zip"],
                metric_before=state["metric"],
                metric_after=after["metric"],
                seconds=round(seconds, 3),
                layers=layers,
                notes=notes,
            )
        )
        current, state = new, after
    return reports, current


def _describe(p: Pass) -> str:
    if isinstance(p, FineTune):
        return f"{p.mode}, {p.epochs} epoch(s)"
    cfg = to_dict(p)
    return ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "kind" and v not in (None, {}, ()))


def _write(
    fw: Any,
    model: Any,
    out_dir: Path,
    stem: str,
    example: dict[str, np.ndarray],
    sidecar: dict[str, Any],
) -> Path:
    """The model and its sidecar, each renamed into place only once both are written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out_dir}: {exc.strerror}") from exc
    path = out_dir / f"{stem}{fw.SUFFIX}"
    side = out_dir / f"{stem}.compress.json"
    sidecar["artifact"] = path.name
    tmp_side = _atomic_json(side, sidecar)
    fd, tmp_model = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=fw.SUFFIX)
    os.close(fd)
    try:
        fw.save(model, Path(tmp_model), example)
        os.replace(tmp_model, path)
        os.replace(tmp_side, side)
    except BaseException:
        Path(tmp_model).unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
        raise
    return path


def distill(
    teacher: Any,
    student: Any,
    data: Any = None,
    *,
    labels: Any = None,
    eval_data: Any = None,
    eval_labels: Any = None,
    alpha: float | None = None,
    temperature: float = 4.0,
    mode: str = "offline",
    epochs: int = 10,
    example_inputs: Any = None,
    output_dir: str | Path | None = None,
    name: str | None = None,
    **fields: Any,
) -> CompressResult:
    """Train ``student`` to match ``teacher`` on ``data``: the :class:`Distill` pass alone
    (``alpha`` weighs the hard-label loss, only with ``labels``; without them the student
    learns the teacher's softened outputs only). Other :class:`Distill` fields by keyword."""
    from edgekit.compress.passes import Distill

    step = Distill(
        teacher=teacher,
        alpha=alpha,
        temperature=temperature,
        mode=mode,  # type: ignore[arg-type]
        epochs=epochs,
        **fields,
    )
    return compress(
        student,
        [step],
        data=data,
        labels=labels,
        eval_data=eval_data,
        eval_labels=eval_labels,
        example_inputs=example_inputs,
        output_dir=output_dir,
        name=name,
    )
