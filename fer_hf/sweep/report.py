"""A finished (or interrupted) sweep as a ranked table and as a figure like the paper's Fig. 3.

The figure shows the sweep metric per learning rate x weight decay, one panel per value of every other searched
parameter (the scheduler in stage 3, the optimizer in stage 2a). Values not in the sweep file come from each trial's
`args.yaml`, so a sweep that keeps the weight decay fixed still has its axis.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.colors
import numpy as np

# Figures are files: matplotlib's Figure API draws without pyplot, so no window opens and the caller's backend (a
# notebook's inline one) is left alone.
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fer_hf.run_dir import read_args
from fer_hf.sweep.runner import TrialRecord
from fer_hf.sweep.spec import SweepSpec

AXES = ("learning_rate", "weight_decay")
_ORDER = {"finished": 0, "failed": 1, "running": 2}


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def rank(spec: SweepSpec, records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Best first by the sweep metric and goal; then finished trials without a number (NaN), failed, unfinished."""
    sign = 1 if spec.goal == "minimize" else -1

    def key(record: TrialRecord):
        scored = record.status == "finished" and _finite(record.value)
        group = 0 if scored else 1 + _ORDER.get(record.status, 3)
        return group, sign * record.value if scored else 0.0, record.index

    return sorted(records, key=key)


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(spec: SweepSpec, records: Sequence[TrialRecord]) -> str:
    """The ranked trials as a Markdown table (readable in a terminal, pasteable into a report)."""
    extra = [key for key in ("eval_accuracy",) if f"{key.replace('_', '/', 1)}" != spec.metric]
    header = ["rank", "trial", *spec.searched, spec.metric, *extra, "status", "time (s)"]
    rows = []
    position = 0
    for record in rank(spec, records):
        scored = record.status == "finished" and _finite(record.value)
        position += scored
        status = {"failed": f"failed, see {record.log}", "running": "unfinished"}.get(record.status, record.status)
        if record.status == "finished" and record.error:
            status = f"finished; {record.error}"
        rows.append([
            str(position) if scored else "-",
            record.name,
            *(_format(record.params.get(name)) for name in spec.searched),
            f"{record.value:.4f}" if record.value is not None else "-",
            *(f"{record.metrics[key]:.4f}" if key in record.metrics else "-" for key in extra),
            status,
            f"{record.duration_s:.0f}" if record.duration_s is not None else "-",
        ])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
             for row in (header, *rows)]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def describe(spec: SweepSpec, output_dir: str | os.PathLike, extra_args: Sequence[str]) -> str:
    """The lines above the table: what was searched, what was fixed, how it was run."""
    # output_dir is the W&B runs' folder; a local trial writes to its own, shown in results.jsonl
    fixed = ", ".join(f"{name}={_format(value)}" for name, value in spec.constants.items()
                      if name != "output_dir") or "-"
    lines = [
        f"Sweep {spec.name} ({spec.source}): {spec.method} over {', '.join(spec.searched) or 'nothing'}, "
        f"ranked by {spec.metric} ({spec.goal})",
        f"fixed: {fixed}",
    ]
    if extra_args:
        lines.append(f"extra arguments: {' '.join(extra_args)}")
    lines.append(f"results: {Path(output_dir) / 'results.jsonl'}")
    return "\n".join(lines)


def _resolved(record: TrialRecord, name: str) -> Any:
    """A parameter's value in this trial: the sweep's, else what the trial's args.yaml says it ran with."""
    if name in record.params:
        return record.params[name]
    return read_args(record.output_dir).get(name) if record.output_dir else None


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_results(spec: SweepSpec, records: Sequence[TrialRecord], path: str | os.PathLike) -> Path | None:
    """Save the metric per learning rate x weight decay, a panel per other searched setting; None if nothing ran."""
    if not records:
        return None
    panel_keys = [name for name in spec.searched if name not in AXES]
    points = []  # (panel, lr, wd, value or None)
    for record in records:
        if record.status == "running":
            continue
        panel = ", ".join(f"{name}={_label(record.params.get(name))}" for name in panel_keys) or spec.name
        value = record.value if record.status == "finished" and _finite(record.value) else None
        points.append((panel, _resolved(record, "learning_rate"), _resolved(record, "weight_decay"), value))
    if not points:
        return None
    panels = list(dict.fromkeys(p[0] for p in points))
    values = [p[3] for p in points if p[3] is not None]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 1e-6, vmax + 1e-6
    # A diverged run (loss in the hundreds) would flatten every other colour: spread the colours on a log scale.
    log_scale = vmin > 0 and vmax / vmin > 10
    norm = matplotlib.colors.LogNorm(vmin, vmax) if log_scale else matplotlib.colors.Normalize(vmin, vmax)
    best = (min if spec.goal == "minimize" else max)(values) if values else None
    cmap = "viridis_r" if spec.goal == "minimize" else "viridis"  # bright is good either way

    def _sort_key(value: Any):
        return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))

    axis_values = {panel: (sorted({p[1] for p in points if p[0] == panel}, key=_sort_key),
                           sorted({p[2] for p in points if p[0] == panel}, key=_sort_key)) for panel in panels}
    if all(len(lrs) == 1 and len(wds) == 1 for lrs, wds in axis_values.values()):
        return _plot_bars(spec, points, panels, norm, cmap, path)
    # A grid (or a search over a few discrete values) is a heat map; a continuous search is a scatter.
    heatmap = all(len(lrs) <= 12 and len(wds) <= 8 for lrs, wds in axis_values.values())
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.6 * columns + 1.2, 3.8 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    image = None
    for ax, panel in zip(axes.flat, panels, strict=False):  # spare axes are blanked below
        mine = [p for p in points if p[0] == panel]
        lrs, wds = axis_values[panel]
        if len(panels) > 1:
            ax.set_title(panel.replace(", ", "\n"), fontsize=9)  # one setting per line: long names overlap
        ax.set_xlabel("learning rate")
        if not heatmap:
            scored = [p for p in mine if p[3] is not None]
            image = ax.scatter([p[1] for p in scored], [p[3] for p in scored], cmap="plasma",
                               c=[p[2] if isinstance(p[2], (int, float)) else 0.0 for p in scored])
            if scored and all(isinstance(p[1], (int, float)) and p[1] > 0 for p in scored):
                ax.set_xscale("log")
            ax.set_ylabel(spec.metric)
            continue
        grid = np.full((len(wds), len(lrs)), np.nan)
        counts = np.zeros(grid.shape, dtype=int)
        tried = np.zeros(grid.shape, dtype=bool)
        for _, lr, wd, value in mine:
            i, j = wds.index(wd), lrs.index(lr)
            tried[i, j] = True
            if value is not None:
                counts[i, j] += 1
                if np.isnan(grid[i, j]) or spec.better(value, grid[i, j]):
                    grid[i, j] = value
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
        ax.set_facecolor("0.9")
        for (i, j), value in np.ndenumerate(grid):
            if np.isnan(value):
                ax.text(j, i, "failed" if tried[i, j] else "", ha="center", va="center", fontsize=8)
                continue
            goodness = float(norm(value))
            goodness = 1 - goodness if spec.goal == "minimize" else goodness
            text = f"{value:.3f}" + (f"\n(best of {counts[i, j]})" if counts[i, j] > 1 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if goodness > 0.5 else "white")
            if value == best:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
        ax.set_xticks(range(len(lrs)), labels=[_label(v) for v in lrs])
        ax.set_yticks(range(len(wds)), labels=[_label(v) for v in wds])
        if ax in axes[:, 0]:
            ax.set_ylabel("weight decay")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9,
                     label=spec.metric if heatmap else "weight decay")
    fig.suptitle(f"{spec.name}: {spec.metric} ({spec.goal})" + ("; best boxed in red" if heatmap else ""), fontsize=11)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return Path(path)


def _plot_bars(spec: SweepSpec, points: list, panels: list[str], norm, cmap: str, path: str | os.PathLike) -> Path:
    """One learning rate and weight decay for all (stage 2a): a bar per optimizer (or other setting)."""
    best_of = {}
    for panel, _, _, value in points:
        if value is not None and (panel not in best_of or spec.better(value, best_of[panel])):
            best_of[panel] = value
    fig = Figure(figsize=(1.6 * len(panels) + 2.5, 3.8))
    ax = fig.subplots()
    heights = [best_of.get(panel, np.nan) for panel in panels]
    colors = [matplotlib.colormaps[cmap](norm(h)) if not np.isnan(h) else "0.85" for h in heights]
    ax.bar(range(len(panels)), np.nan_to_num(heights), color=colors)
    for x, height in enumerate(heights):
        ax.text(x, 0 if np.isnan(height) else height, "failed" if np.isnan(height) else f"{height:.3f}",
                ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(panels)), labels=panels, rotation=15)
    ax.set_ylabel(spec.metric)
    lr, wd = points[0][1], points[0][2]
    ax.set_title(f"{spec.name}: {spec.metric} ({spec.goal}); learning rate {_label(lr)}, weight decay {_label(wd)}",
                 fontsize=10)
    return _save(fig, path)
