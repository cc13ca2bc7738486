"""The ONNX preparation pipeline: each step rewrites the graph, is checked on real inputs, and
is kept only if the model still computes what it did.

Steps run in order from the last graph that was kept. A step that raises, breaks the graph's
inputs/outputs, or moves an output beyond what float re-association allows (see
:mod:`edgekit.prepare.verify`) is dropped with the reason, and the next step starts from the
graph before it. The record of every step (kept or not, what it changed, the deviation it
measured) goes into the SourceModel's ``preparation`` and from there into the sidecar.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.errors import first_line
from edgekit.model import Feeds, SourceModel
from edgekit.prepare import fold, shapes, simplify, verify

#: Evaluation feeds each step is checked on. An exact rewrite that is wrong is wrong on any
#: real input; the export's agreement check afterwards still runs on all of them.
VERIFY_SAMPLES = 4


@dataclass(frozen=True)
class Step:
    """One graph rewrite: ModelProto -> (new ModelProto, counts of what it changed)."""

    name: str
    run: Callable[[Any], tuple[Any, dict[str, Any]]]


#: The steps, in order. Folding first, so that the simplifier and the quantizers see weights as
#: initializers; shape inference last, so the final graph carries its shapes.
STEPS: list[Step] = [
    Step("constants-to-initializers", fold.constants_to_initializers),
    Step("fold-batchnorm", fold.fold_batchnorm),
    Step("fuse-hardswish", fold.fuse_hardswish),
    Step("simplify-onnxslim", simplify.simplify),
    Step("shape-inference", shapes.infer_shapes),
]


def node_count(graph: Any) -> int:
    """Nodes in a graph and in every subgraph (If/Loop bodies)."""
    count = 0
    for node in graph.node:
        count += 1
        for attr in node.attribute:
            if attr.HasField("g"):
                count += node_count(attr.g)
            for sub in attr.graphs:
                count += node_count(sub)
    return count


def _interface(model: Any) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    ins = [i.name for i in model.graph.input if i.name not in inits]
    return ins, [o.name for o in model.graph.output]


def _finite(x: float) -> float | None:
    # The sidecar is strict JSON: an infinite deviation (a changed shape) is recorded as null.
    return None if x != x or x in (float("inf"), float("-inf")) else float(f"{x:.3g}")


def prepare_onnx(source: SourceModel, feeds: Sequence[Feeds]) -> SourceModel:
    """``source`` with its graph prepared; ``run`` stays the original model's reference."""
    feeds = list(feeds)[:VERIFY_SAMPLES]
    original = source.handle
    if not feeds:
        record = {"step": "prepare", "kept": False, "reason": "no inputs to verify steps on"}
        return replace(source, preparation=[record])
    try:
        expected = verify.run_graph(original, feeds)
    except Exception as exc:
        reason = f"the original graph does not run unoptimized in ONNX Runtime: {first_line(exc)}"
        return replace(source, preparation=[{"step": "prepare", "kept": False, "reason": reason}])
    bounds = verify.Bounds.of(expected)
    interface = _interface(original)
    current, current_out = original, expected
    current_bytes = original.SerializeToString()
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for step in STEPS:
        started = time.perf_counter()
        record: dict[str, Any] = {"step": step.name, "nodes_before": node_count(current.graph)}
        try:
            candidate, changes = step.run(current)
            record["changes"] = changes
            record["nodes_after"] = node_count(candidate.graph)
            data = candidate.SerializeToString()
            if data == current_bytes:
                record.update(kept=True, changed=False)
            elif _interface(candidate) != interface:
                record.update(kept=False, reason="it renamed the graph's inputs or outputs")
            else:
                got = verify.run_graph(candidate, feeds)
                dev, problem = verify.deviation(current_out, got, bounds)
                dev_source, problem_source = verify.deviation(expected, got, bounds)
                record.update(
                    max_deviation=_finite(dev),
                    max_deviation_from_source=_finite(dev_source),
                    tolerance=verify.RELATIVE_TOLERANCE,
                    samples=len(feeds),
                )
                problem = problem or (problem_source and f"{problem_source} (from the source)")
                if problem:
                    record.update(kept=False, reason=problem)
                else:
                    record.update(kept=True, changed=True, sha256=hashlib.sha256(data).hexdigest())
                    current, current_out, current_bytes = candidate, got, data
        except Exception as exc:
            record.update(kept=False, reason=f"failed: {first_line(exc)[:300]}")
        record["seconds"] = round(time.perf_counter() - started, 2)
        if not record["kept"]:
            notes.append(f"graph preparation step {step.name} dropped: {record['reason']}")
        records.append(record)
    if current is original:
        return replace(source, preparation=records, notes=[*source.notes, *notes])

    def to_onnx(dst: Path, data: bytes = current_bytes) -> None:
        dst.write_bytes(data)

    return replace(
        source,
        handle=current,
        to_onnx=to_onnx,
        preparation=records,
        notes=[*source.notes, *notes],
    )


def summary(records: Sequence[dict[str, Any]]) -> str:
    """One line saying what preparation did."""
    kept = [r for r in records if r.get("kept") and r.get("changed")]
    dropped = [r for r in records if not r.get("kept")]
    parts = []
    for r in kept:
        ch = r.get("changes", {})
        if ch.get("constants_folded"):
            parts.append(f"{ch['constants_folded']} Constant nodes made initializers")
        if ch.get("batchnorm_folded"):
            parts.append(f"{ch['batchnorm_folded']} BatchNormalization folded into Conv")
        if ch.get("hardswish_fused"):
            parts.append(f"{ch['hardswish_fused']} hardswish patterns fused")
        if r["step"].startswith("simplify"):
            parts.append(f"simplified {r['nodes_before']} -> {r['nodes_after']} nodes")
        if r["step"] == "shape-inference":
            parts.append("shapes inferred")
    if not parts and not dropped:
        return "graph preparation changed nothing"
    if len(records) == 1 and records[0]["step"] == "prepare":
        return f"graph preparation skipped: {records[0]['reason']}"
    samples = max((r.get("samples", 0) for r in records), default=0)
    text = "prepared the graph: " + (", ".join(parts) or "no step kept")
    text += f" (each step checked on {samples} samples)" if samples else ""
    if dropped:
        text += "; dropped " + ", ".join(f"{r['step']} ({r['reason']})" for r in dropped)
    return text
