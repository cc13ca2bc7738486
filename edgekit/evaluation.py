"""The evaluate arrow: exported artifacts -> a task metric against their FP32 source (and labels).

``edgekit evaluate ARTIFACT... --data PATH`` and ``edgekit.evaluate(...)``:

1. each artifact's sidecar names the source model it was exported from (``--source`` names it
   when there is no sidecar, or the source was an in-memory model); all artifacts of one call
   must come from one source, and a recorded source file that changed since is refused;
2. the data is read once (:func:`edgekit.labels.load_labelled`: labels from class sub-folders,
   a ``labels`` array, ``(feeds, label)`` pairs, or none) and the FP32 source runs on it in its
   own framework: that is the reference;
3. each artifact runs on the same samples with its backend's session, and is scored with the
   metric (:mod:`edgekit.metrics`): its ``drop`` is the FP32 source's score minus its own, in
   the metric's points, and its agreement (:func:`edgekit.agreement.compare`) the closeness of
   its outputs to the source's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.agreement import Agreement, compare
from edgekit.artifact import Sidecar, read_sidecar, sidecar_path
from edgekit.calibration import ImageOptions
from edgekit.errors import (
    EdgekitError,
    ModelFormatError,
    ModelNotFoundError,
    UsageError,
    first_line,
    speaks_api,
)
from edgekit.labels import class_folders, load_labelled
from edgekit.metrics import METRICS, Score, default_metric, score
from edgekit.model import Feeds, SourceModel, load_model
from edgekit.progress import progress, stage

SCHEMA_NAME = "edgekit.evaluation"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvaluationRow:
    """One model's figures: an artifact's, or the FP32 source's own (``artifact`` None)."""

    name: str
    artifact: Path | None
    backend: str
    precision: str
    size_bytes: int | None
    score: Score
    #: the FP32 source's score minus this one, in the metric's points (positive: worse); None
    #: when either is not finite (SNR of identical outputs is inf)
    drop: float | None
    #: closeness of the outputs to the FP32 source's; None for the source itself
    agreement: Agreement | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "artifact": None if self.artifact is None else str(self.artifact),
            "backend": self.backend,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "score": self.score.to_json(),
            "drop": self.drop,
            "agreement": None if self.agreement is None else self.agreement.to_json(),
        }


@dataclass(frozen=True)
class EvaluationReport:
    """What ``edgekit evaluate`` found: the FP32 source's row, then one row per artifact."""

    metric: str
    #: "labels" or "fp32 source": what the metric compared with
    against: str
    samples: int
    data: str
    source: dict[str, Any]
    reference: EvaluationRow
    rows: list[EvaluationRow]
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Schema ``edgekit.evaluation`` version 1; non-finite figures are ``null``."""
        return {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "edgekit_version": __version__,
            "metric": self.metric,
            "against": self.against,
            "samples": self.samples,
            "data": self.data,
            "class_names": self.class_names,
            "source": self.source,
            "reference": self.reference.to_json(),
            "results": [row.to_json() for row in self.rows],
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }

    def table(self) -> str:
        """One row per model, the FP32 source first."""
        what = "the labels" if self.against == "labels" else "the FP32 source's outputs"
        lines = [
            f"metric   {self.metric} against {what}, on {self.samples} samples of {self.data}",
            f"source   {self.source['path'] or 'in-memory model'} ({self.source['format']})",
        ]
        head = ["artifact", "backend", "precision", self.metric, "drop vs fp32", "cosine", "size"]
        rows = [head]
        for row in [self.reference, *self.rows]:
            cosine = row.agreement.mean_cosine if row.agreement else None
            rows.append(
                [
                    row.name,
                    row.backend,
                    row.precision,
                    _value(row.score.value, row.score.unit),
                    "-" if row.artifact is None else _drop(row.drop, row.score.unit),
                    "-" if cosine is None else f"{cosine:.6f}",
                    "?" if row.size_bytes is None else _mib(row.size_bytes),
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        right = {3, 4, 5, 6}
        for r in rows:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Artifact:
    path: Path
    backend: str
    sidecar: Sidecar | None
    size_bytes: int


@speaks_api
def evaluate(
    artifacts: str | Path | Sequence[str | Path],
    data: Any,
    *,
    metric: str | Callable[..., Any] = "auto",
    labels: Any = None,
    source: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Sequence[Any] | None = None,
    limit: int | None = None,
    seed: int = 0,
    image_options: ImageOptions | None = None,
    k: int = 5,
    threads: int | None = None,
) -> EvaluationReport:
    """Score exported artifacts against their FP32 source on ``data``, and against its labels.

    ``data`` is anything :func:`edgekit.labels.load_labelled` reads (an image folder, with
    class sub-folders for labels; a ``.npy``/``.npz``, with a ``labels`` array; an iterable of
    feed dicts or of ``(feeds, label)`` pairs); ``labels`` gives labels for data without them.
    ``metric`` is ``"auto"`` (:func:`edgekit.metrics.default_metric`), a name in
    :data:`edgekit.metrics.METRICS`, or a callable ``f(candidate, reference, labels) ->
    float``; ``k`` is top-k's k. ``source`` is the FP32 model to compare with (a path, or an
    in-memory model with ``example_inputs`` for PyTorch); default: the one each artifact's
    sidecar records. ``input_shapes`` fixes the source's dynamic inputs as at export.
    ``limit`` samples are drawn with ``seed`` (default: all).
    """
    started = time.perf_counter()
    paths = [artifacts] if isinstance(artifacts, str | Path) else list(artifacts)
    _check_request(paths, metric, k, limit, threads)
    arts = [_resolve(Path(p)) for p in paths]
    model, recorded = _source_of(arts, source)
    stage(f"loading the FP32 source {model if isinstance(model, str | Path) else 'model'}")
    src = load_model(model, input_shapes, example_inputs)
    notes = list(src.notes)
    if recorded and src.sha256 and src.sha256 != recorded:
        if source is None:
            raise UsageError(
                f"the FP32 source {model} has changed since the artifacts were exported from it "
                "(its sha256 differs from the sidecar's); pass --source MODEL with the model "
                "they were exported from"
            )
        notes.append(
            "the source given is not the file the artifacts were exported from (its sha256 "
            "differs from their sidecars'); the figures compare against it all the same"
        )

    feeds, labs = load_labelled(
        data, src.inputs, image_options=image_options, limit=limit, seed=seed, labels=labels
    )
    classes = _classes(data, notes)
    reference = [_run_source(src, f) for f in progress(feeds, desc="fp32 source")]
    name = default_metric(reference, labs) if metric == "auto" else metric
    baseline = score(name, reference, reference, labs, k=k)
    source_size = src.size_bytes or _recorded_size(arts)
    rows = []
    for art in arts:
        stage(f"running {art.path} ({art.backend})")
        outputs = _run_artifact(art, feeds, reference, threads)
        got = score(name, outputs, reference, labs, k=k)
        drop = baseline.value - got.value
        rows.append(
            EvaluationRow(
                name=str(art.path),
                artifact=art.path,
                backend=art.backend,
                precision=art.sidecar.precision if art.sidecar else "unknown",
                size_bytes=art.size_bytes,
                score=got,
                drop=drop if math.isfinite(drop) else None,
                agreement=compare(reference, outputs),
            )
        )
    source_name = str(src.path) if src.path else f"in-memory {src.format} model"
    return EvaluationReport(
        metric=baseline.metric,
        against="labels" if labs is not None and _uses_labels(metric, name) else "fp32 source",
        samples=len(feeds),
        data=_describe(data, classes),
        source={
            "path": str(src.path) if src.path else None,
            "format": src.format,
            "sha256": src.sha256 or None,
            "size_bytes": source_size,
        },
        reference=EvaluationRow(
            name=f"{Path(source_name).name if src.path else source_name} (FP32 source)",
            artifact=None,
            backend=src.format,
            precision="fp32",
            size_bytes=source_size,
            score=baseline,
            drop=0.0,
            agreement=None,
        ),
        rows=rows,
        class_names=classes,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def _check_request(paths: list[Any], metric: Any, k: Any, limit: Any, threads: Any) -> None:
    """Mistakes in the request fail before any model is loaded."""
    if not paths:
        raise UsageError("no artifacts to evaluate; pass one or more ARTIFACT paths")
    if not callable(metric) and metric != "auto" and metric not in METRICS:
        raise UsageError(
            f"unknown --metric {metric!r}; choose auto or one of {', '.join(METRICS)} (from "
            "Python, also a callable f(candidate, reference, labels) -> float)"
        )
    checks = [("--top-k", k)] + [(f, v) for f, v in (("--limit", limit), ("--threads", threads))]
    for flag, value in checks:
        if flag != "--top-k" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise UsageError(f"{flag} must be a whole number >= 1, got {value!r}")


def _resolve(path: Path) -> _Artifact:
    from edgekit.backends import backend_for_artifact

    if not path.is_file():
        raise ModelNotFoundError(f"artifact not found: {path}")
    backend = backend_for_artifact(str(path))
    sidecar = read_sidecar(path)
    if sidecar is not None:
        files = list(sidecar.files)
    else:
        files = [path, *(Path(f) for f in backend.runner_module.companion_files(str(path)))]
    size = sum(f.stat().st_size for f in files if f.is_file())
    return _Artifact(path, backend.name, sidecar, size)


def _source_of(arts: list[_Artifact], given: Any) -> tuple[Any, str | None]:
    """The FP32 model to load and the sha256 the sidecars record for it (None: unknown)."""
    sources: dict[str, tuple[_Artifact, dict[str, Any]]] = {}
    for art in arts:
        if art.sidecar is not None:
            rec = art.sidecar.raw["source"]
            sources.setdefault(rec["sha256"] or rec["path"] or "in-memory", (art, rec))
    if len(sources) > 1:
        which = "; ".join(
            f"{a.path.name} from {r['path'] or 'memory'}" for a, r in sources.values()
        )
        raise UsageError(
            f"the artifacts come from different source models ({which}); evaluate the "
            "artifacts of each source in a call of their own"
        )
    recorded = next(iter(sources.values()), None)
    sha = recorded[1]["sha256"] if recorded else None
    if given is not None:
        return given, sha
    bare = next((a for a in arts if a.sidecar is None), None)
    if bare is not None or recorded is None:
        path = (bare or arts[0]).path
        raise UsageError(
            f"{path} has no sidecar ({sidecar_path(path).name}), so its FP32 source is "
            "unknown; pass --source MODEL with the model it was exported from"
        )
    art, rec = recorded
    if rec["path"] is None:
        raise UsageError(
            f"{art.path} was exported from an in-memory model, so its sidecar names no source "
            "file; pass --source MODEL (a file, or the model object from Python)"
        )
    path = Path(rec["path"])
    if not path.exists():
        raise UsageError(
            f"the FP32 source {path} that {sidecar_path(art.path).name} records is not found; "
            "pass --source MODEL with the model the artifact was exported from"
        )
    return path, sha


def _recorded_size(arts: list[_Artifact]) -> int | None:
    for art in arts:
        if art.sidecar is not None:
            return int(art.sidecar.raw["source"]["size_bytes"])
    return None


def _run_source(src: SourceModel, feeds: Feeds) -> list[np.ndarray]:
    """The FP32 reference; a source that cannot run on the data cannot be compared with."""
    try:
        return [np.asarray(o) for o in src.run(feeds)]
    except EdgekitError:
        raise
    except Exception as exc:
        raise ModelFormatError(
            f"the {src.format} source model does not run on the evaluation data: "
            f"{first_line(exc)}; check that the data is prepared as the model's inputs are"
        ) from exc


def _run_artifact(
    art: _Artifact, feeds: list[Feeds], reference: list[list[np.ndarray]], threads: int | None
) -> list[list[np.ndarray]]:
    from edgekit.session import load

    session = load(art.path, threads=threads)
    outputs: list[list[np.ndarray]] = []
    for i, feed in enumerate(progress(feeds, desc=art.path.name)):
        got = [np.asarray(o) for o in session.run(feed)]
        if i == 0:
            _check_outputs(art.path, got, reference[0])
        outputs.append(got)
    return outputs


def _check_outputs(path: Path, got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """An artifact of another model would score as garbage; say what does not match."""
    shapes = [tuple(o.shape) for o in got]
    source = [tuple(o.shape) for o in want]
    if len(got) != len(want) or any(a.size != b.size for a, b in zip(got, want, strict=True)):
        raise UsageError(
            f"{path} gives outputs of shapes {shapes} but the FP32 source gives {source}: it is "
            "not an export of this source; pass --source MODEL with the model it came from"
        )


def _classes(data: Any, notes: list[str]) -> list[str] | None:
    if not isinstance(data, str | Path) or not Path(data).is_dir():
        return None
    classes = class_folders(data)
    if classes and all(c.isdigit() for c in classes):
        numeric = sorted(classes, key=int)
        if numeric != classes:
            moved = next(c for c, n in zip(classes, numeric, strict=True) if c != n)
            notes.append(
                f"the class folders are numbers, but labels follow their sorted names as "
                f"torchvision's ImageFolder and Keras do: folder '{moved}' is label "
                f"{classes.index(moved)}; if the model's classes are the numbers, rename the "
                "folders with leading zeros (00, 01, ...)"
            )
    return classes


def _uses_labels(metric: Any, name: str) -> bool:
    # agreement compares with the reference even when labels are given.
    return callable(metric) or name != "agreement"


def _describe(data: Any, classes: list[str] | None) -> str:
    if classes is not None:
        return f"{data} (image folder, {len(classes)} classes)"
    if isinstance(data, str | Path):
        return str(data)
    return f"a {type(data).__name__}"


def _value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return str(value)
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "dB":
        return f"{value:.2f} dB"
    return f"{value:.4g}"


def _drop(drop: float | None, unit: str) -> str:
    if drop is None:
        return "n/a"
    if unit == "%":
        return f"{drop:+.2f} pp"
    if unit == "dB":
        return f"{drop:+.2f} dB"
    return f"{drop:+.4g}"


def _mib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"
