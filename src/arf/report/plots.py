"""WiSE-FT curves (the paper's Fig. 4): x = ID accuracy, y = an average (OOD or zero-shot), one curve per method.

Each curve joins a method's α points in order, averaged over replicates; the α = 0 end (the zero-shot model,
shared by every curve) is a black star, the α = 1 end (the finetuned model) a large marker in the curve's colour.
A method evaluated without a sweep is a single marker.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from arf.evaluate.records import Record, alpha_key, dedupe
from arf.io import atomic_path
from arf.report.tables import METHOD_ORDER, order_methods, summarize

log = logging.getLogger(__name__)

MARKERS = ("o", "s", "D", "^", "v", "P", "X", "h", "<", ">")
# matplotlib's ten-colour cycle (C0–C9) holds the methods ARF ships; further methods (ablations, sweeps) take these
# darker colours instead of wrapping round onto lp's blue and lpft's orange.
EXTRA_COLORS = ("#1b1b7a", "#8b0000", "#00695c", "#9a7400", "#c2185b", "#4a148c", "#33691e", "#3e2723")
LEGEND_INSIDE_MAX = 8  # legend entries (the star included) that fit inside the axes without hiding the data
OUTSIDE_LEGEND_WIDTH = 2.0  # inches added to the figure when the legend moves to the right of the axes


def style_color(i: int) -> str:
    """The colour of style slot ``i`` (:func:`style_index`): C0–C9, then EXTRA_COLORS, distinct up to 18 slots."""
    return f"C{i}" if i < 10 else EXTRA_COLORS[(i - 10) % len(EXTRA_COLORS)]


@dataclass
class CurvePoint:
    alpha: float | None
    x: float
    y: float


def curve_points(
    records: Sequence[Record], x: str = "ID", y: str = "OOD avg", metric: str = "top1"
) -> dict[str, list[CurvePoint]]:
    """Per method (in ``order_methods`` order, which fixes each method's colour), its points (sorted by α; α None
    last) where both ``x`` and ``y`` averages exist."""
    by: dict[tuple[str, float | None], list[Record]] = defaultdict(list)
    for r in dedupe(records):
        by[(r.method, alpha_key(r.alpha))].append(r)
    out: dict[str, list[CurvePoint]] = defaultdict(list)
    for (method, alpha), recs in by.items():
        cells = summarize(recs, metric)
        if x in cells and y in cells:
            out[method].append(CurvePoint(alpha, cells[x].mean, cells[y].mean))
    for pts in out.values():
        pts.sort(key=lambda p: (p.alpha is None, p.alpha or 0.0))
    return {m: out[m] for m in order_methods(out)}


def sweep_line(pts: Sequence[CurvePoint], zero: CurvePoint | None) -> list[CurvePoint]:
    """A method's WiSE-FT curve: its α points, closed by the zero-shot model (α = 0) and the finetuned model
    (α = 1) where the sweep did not evaluate those ends itself (e.g. ``arf wise --alphas 0.5``). Empty without
    a sweep: the finetuned model alone is a marker, not a curve."""
    swept = [p for p in pts if p.alpha is not None]
    if not swept:
        return []
    final = [p for p in pts if p.alpha is None]
    line = list(swept)
    if zero is not None and all(p.alpha != 0.0 for p in swept):
        line.insert(0, CurvePoint(0.0, zero.x, zero.y))
    if final and all(p.alpha != 1.0 for p in swept):
        line.append(CurvePoint(1.0, final[0].x, final[0].y))
    return line


def style_index(method: str, methods: Iterable[str]) -> int:
    """Which colour / marker ``method`` gets: fixed by METHOD_ORDER for the methods ARF ships, so FLYP is the
    same colour in the demo's figure and the full protocol's; other names take the slots after those, in order."""
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method) - 1  # zeroshot is the black star, not a slot
    others = [m for m in methods if m not in METHOD_ORDER]
    return len(METHOD_ORDER) - 1 + others.index(method)


def plot_curves(
    points: dict[str, list[CurvePoint]], path: str | Path, xlabel: str, ylabel: str, title: str
) -> int:
    """Draw every method on one figure and save a PNG; returns the number of curves (≥ 2 points).

    900×600 px with the legend inside the axes; with more than LEGEND_INSIDE_MAX entries (``arf demo --full``
    has 13) the legend goes to the right of the axes and the figure widens, so the axes keep their size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outside = 1 + sum(m != "zeroshot" for m in points) > LEGEND_INSIDE_MAX
    fig, ax = plt.subplots(figsize=(9 + OUTSIDE_LEGEND_WIDTH * outside, 6), dpi=100)
    # The zero-shot model once, first in the legend: its own evaluation if recorded, else a sweep's α = 0 point.
    zero = [p for p in points.get("zeroshot", []) if p.alpha is None]
    zero = zero or [p for pts in points.values() for p in pts if p.alpha == 0.0][:1]
    if zero:
        ax.plot(zero[0].x, zero[0].y, marker="*", ms=16, color="black", ls="none", label="zeroshot (α=0)", zorder=5)
    curves = 0
    for method, pts in points.items():
        if method == "zeroshot":
            continue
        i = style_index(method, points)
        color = style_color(i)
        marker = MARKERS[i % len(MARKERS)]
        line = sweep_line(pts, zero[0] if zero else None)
        if len(line) >= 2:
            curves += 1
            ax.plot([p.x for p in line], [p.y for p in line], "-", marker=marker, ms=4, color=color, lw=1.8,
                    label=method)
            for p in line:
                if p.alpha == 1.0:
                    ax.plot(p.x, p.y, marker=marker, ms=11, color=color, mec="black", ls="none", zorder=4)
        else:
            for k, p in enumerate(pts):
                ax.plot(p.x, p.y, marker=marker, ms=11, color=color, mec="black", ls="none",
                        label=method if k == 0 else None)
    if curves:
        ax.text(0.01, 0.01, "curves: WiSE-FT from α=0 (★ zero-shot) to α=1 (large marker: finetuned)",
                transform=ax.transAxes, fontsize=8, color="0.3", va="bottom")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        if outside:
            # loc="best" with a dozen entries covers curves or the zero-shot star (seen in the full demo's plots).
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=9)
        else:
            ax.legend(loc="best", fontsize=9, framealpha=0.9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return curves
