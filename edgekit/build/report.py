"""``report.html``: one self-contained page (plots inlined as PNG data, no script, no network)
for a build's manifest.

Plots (matplotlib, ``edgekit[report]``; without it the page has the tables only and says so):

* latency per artifact: min-max whisker, p50 dot, p90 and p99 ticks of the counted runs (the
  benchmark keeps these statistics, not every run);
* the size / latency trade-off, each cell a point coloured by its top-1 agreement with the FP32
  source, each model's Pareto front (no other artifact of that model both smaller and faster)
  joined by a line and its cells ringed;
* accuracy per cell (top-1 agreement and cosine with the FP32 source);
* per-layer sensitivity where it was measured (a target whose recipe sets
  ``max_accuracy_drop``: the accuracy gate quantizes each layer alone and measures the drop),
  the layers the gate kept in float marked.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (smaller is better),
    sorted by the first coordinate."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points)
            if j != i
        )  # fmt: skip
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(cells: list[dict[str, Any]]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    timed = [c for c in cells if c.get("timing_ms")]
    if timed:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(timed) + 1.2))
        for y, c in enumerate(timed):
            t = c["timing_ms"]
            ax.plot([t["min"], t["max"]], [y, y], color="0.6", lw=1)
            ax.plot([t["p90"], t["p99"]], [y, y], "|", color="tab:orange", ms=10)
            ax.plot([t["p50"]], [y], "o", color="tab:blue")
        ax.set_yticks(range(len(timed)), [c["id"] for c in timed])
        ax.set_xlabel("latency per run, ms (min-max, p50 dot, p90/p99 ticks; 1 thread)")
        ax.invert_yaxis()
        out.append(("Latency per artifact", _png(fig)))
        plt.close(fig)
        pts = [(c["size_bytes"] / 2**20, c["p50_ms"]) for c in timed]
        # one front per model: a small model's artifacts do not compete with a large one's
        fronts = []
        for name in dict.fromkeys(c["model"] for c in timed):
            idx = [i for i, c in enumerate(timed) if c["model"] == name]
            fronts.append([idx[k] for k in pareto([pts[i] for i in idx])])
        acc = [(c.get("agreement") or {}).get("top1_agreement") for c in timed]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sc = ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            c=[a if a is not None else 0 for a in acc],
            cmap="viridis",
            # the colour scale spans at least 0.9..1, so a build where all agree is not a blur
            vmin=min([0.9, *[a for a in acc if a is not None]]),
            vmax=1.0,
            s=60,
        )
        for n, front in enumerate(fronts):
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="tab:red")
            ax.scatter(
                [pts[i][0] for i in front],
                [pts[i][1] for i in front],
                s=160,
                facecolors="none",
                edgecolors="tab:red",
                label="Pareto front per model (smaller and faster)" if n == 0 else None,
            )
        for (x, y), c in zip(pts, timed, strict=True):
            ax.annotate(c["id"], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        fig.colorbar(sc, label="top-1 agreement with FP32")
        ax.set_xlabel("size, MiB")
        ax.set_ylabel("p50 latency, ms")
        ax.legend(loc="best", fontsize=8)
        out.append(("Size / latency / accuracy", _png(fig)))
        plt.close(fig)
    scored = [c for c in cells if (c.get("agreement") or {}).get("mean_cosine") is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(scored) + 1.2))
        ys = range(len(scored))
        top1 = [(c["agreement"].get("top1_agreement") or 0) for c in scored]
        cos = [c["agreement"]["mean_cosine"] for c in scored]
        ax.barh([y - 0.2 for y in ys], top1, height=0.4, label="top-1 agreement")
        ax.barh([y + 0.2 for y in ys], cos, height=0.4, label="mean cosine")
        ax.set_yticks(list(ys), [c["id"] for c in scored])
        ax.set_xlim(min([*top1, *cos, 0.9]) - 0.02, 1.0)
        ax.invert_yaxis()
        ax.legend(loc="lower left", fontsize=8)
        ax.set_xlabel("agreement with the FP32 source on the eval samples")
        out.append(("Accuracy per artifact", _png(fig)))
        plt.close(fig)
    for c in cells:
        measured = c.get("sensitivity") or {}
        layers = sorted(measured.get("layers") or [], key=lambda s: -s["drop"])[:SENSITIVE_SHOWN]
        if not layers:
            continue
        kept = set(measured.get("float_layers") or [])
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(layers) + 1.2))
        colours = ["tab:red" if s["name"] in kept else "tab:blue" for s in layers]
        ax.barh(range(len(layers)), [s["drop"] for s in layers], color=colours)
        ax.set_yticks(range(len(layers)), [s["name"] for s in layers], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(
            f"{measured.get('metric') or 'metric'} drop with only that layer quantized, points "
            "(red: kept float by the gate)"
        )
        out.append((f"Per-layer sensitivity: {c['id']}", _png(fig)))
        plt.close(fig)
    return out


#: the most sensitive layers a sensitivity plot shows
SENSITIVE_SHOWN = 20


def _row(c: dict[str, Any]) -> str:
    agreement = c.get("agreement") or {}

    def num(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    budgets = "; ".join(
        f"{'✓' if b['ok'] else '✗'} {b['budget']} {b['op']} {b['limit']:g}" for b in c["budgets"]
    )
    size = c.get("size_bytes")
    cells = [
        c["id"],
        c["status"],
        num(size and size / 2**20, ".3f"),
        num(agreement.get("top1_agreement"), ".2%"),
        num(agreement.get("mean_cosine"), ".5f"),
        num(c.get("p50_ms"), ".3f"),
        num(c.get("peak_mib"), ".1f"),
        budgets or (c.get("error") or ""),
    ]
    klass = "bad" if c["status"] in ("over-budget", "failed") else ""
    return f'<tr class="{klass}">' + "".join(f"<td>{html.escape(v)}</td>" for v in cells) + "</tr>"


def render(manifest: dict[str, Any]) -> str:
    cells = manifest["cells"]
    try:
        plots = _plots(cells)
        note = ""
    except ImportError:
        plots, note = [], "<p>Plots need matplotlib: pip install 'edgekit[report]'.</p>"
    figures = "".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" '
        f'src="data:image/png;base64,{data}">'
        for title, data in plots
    )
    head = ["cell", "status", "size MiB", "top-1 agr.", "cosine", "p50 ms", "peak MiB", "budgets"]
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    table += "".join(_row(c) for c in cells) + "</table>"
    regressions = (manifest.get("baseline") or {}).get("regressions") or []
    base = ""
    if manifest.get("baseline"):
        items = "".join(
            f"<li>{html.escape(r['cell'])}: {html.escape(r['figure'])} {r['baseline']:.4g} → "
            f"{r['now']:.4g} ({html.escape(r['threshold'])})</li>"
            for r in regressions
        )
        base = f"<h2>Against the baseline</h2><ul>{items or '<li>no regression</li>'}</ul>"
    tools = ", ".join(f"{k} {v}" for k, v in manifest["toolchain"].items())
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>edgekit build</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}tr.bad td{background:#fdd}"
        "img{max-width:100%}</style></head><body><h1>edgekit build</h1>"
        f"<p>{len(cells)} cells in {manifest['seconds']:.1f} s. Toolchain: "
        f"{html.escape(tools)}.</p>{table}{base}{note}{figures}</body></html>\n"
    )
