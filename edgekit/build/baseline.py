"""``edgekit build --baseline OLD/manifest.json``: what got worse since an earlier build.

Cells are matched by id (``model/target/precision``); a cell in only one of the two builds is
listed as added or removed, never as a regression. Thresholds, per figure:

* size: more than 1 % larger (a rebuild of the same recipe is byte-identical or a few header
  bytes apart; a real change in what is quantized moves it by far more);
* p50 latency: slower by more than the noise of the two measurements, taken as 3 x the larger
  coefficient of variation of their counted runs, and never less than 5 % (two short runs on a
  shared machine differ by that much with nothing changed);
* top-1 agreement with the FP32 source: down by more than 0.5 point; cosine: down by more than
  0.001 (both are measured on the same eval samples when the data did not change).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError

SIZE_TOLERANCE = 0.01
MIN_LATENCY_TOLERANCE = 0.05
TOP1_TOLERANCE = 0.005
COSINE_TOLERANCE = 0.001


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--baseline {path}: not a readable manifest.json ({exc})") from exc
    if not str(manifest.get("schema", "")).startswith("edgekit-build-manifest/"):
        raise UsageError(f"--baseline {path}: not an edgekit build manifest")
    return manifest


def _cv(cell: dict[str, Any]) -> float:
    return float((cell.get("timing_ms") or {}).get("cv") or 0.0)


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``{"regressions": [...], "added": [...], "removed": [...]}``, each regression naming the
    cell, the figure, both values and the threshold."""
    before = {c["id"]: c for c in old.get("cells", [])}
    after = {c["id"]: c for c in new.get("cells", [])}
    regressions = []
    for cid, cell in after.items():
        was = before.get(cid)
        if was is None or cell.get("status") not in ("built", "cached", "over-budget"):
            continue

        def worse(
            figure: str, then: Any, now: Any, limit: float, threshold: str, cid: str = cid
        ) -> None:
            if then is not None and now is not None and now > limit:
                regressions.append(
                    {"cell": cid, "figure": figure, "baseline": then, "now": now,
                     "threshold": threshold}
                )  # fmt: skip

        size_then, size_now = was.get("size_bytes"), cell.get("size_bytes")
        if size_then is not None:
            worse("size_bytes", size_then, size_now, size_then * (1 + SIZE_TOLERANCE), "+1%")
        p50_then, p50_now = was.get("p50_ms"), cell.get("p50_ms")
        if p50_then is not None:
            tol = max(MIN_LATENCY_TOLERANCE, 3 * max(_cv(was), _cv(cell)))
            worse("p50_ms", p50_then, p50_now, p50_then * (1 + tol), f"+{tol:.0%} (noise)")
        for figure, tolerance in (
            ("top1_agreement", TOP1_TOLERANCE),
            ("mean_cosine", COSINE_TOLERANCE),
        ):
            then = (was.get("agreement") or {}).get(figure)
            now = (cell.get("agreement") or {}).get(figure)
            if then is not None and now is not None and now < then - tolerance:
                regressions.append(
                    {"cell": cid, "figure": figure, "baseline": then, "now": now,
                     "threshold": f"-{tolerance:g}"}
                )  # fmt: skip
    return {
        "regressions": regressions,
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
    }


def describe(regression: dict[str, Any]) -> str:
    r = regression
    return f"{r['cell']} {r['figure']} {r['baseline']:.4g} -> {r['now']:.4g} ({r['threshold']})"
