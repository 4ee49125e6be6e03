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
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize

# Figures are files: matplotlib's Figure API draws without pyplot, so no window opens and the caller's backend (a
# notebook's inline one) is left alone.
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fer_hf.run_dir import read_args
from fer_hf.sweep.runner import TrialRecord
from fer_hf.sweep.spec import SweepSpec

AXES = ("learning_rate", "weight_decay")
_ORDER = {"finished": 0, "failed": 1, "running": 2}


def _scored(record: TrialRecord) -> bool:
    return record.status == "finished" and record.value is not None and not math.isnan(record.value)


def rank(spec: SweepSpec, records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Best first by the sweep metric and goal; then finished trials without a number (NaN), failed, unfinished."""
    sign = 1 if spec.goal == "minimize" else -1
    return sorted(records, key=lambda record: (0, sign * record.value, record.index) if _scored(record)
                  else (1 + _ORDER.get(record.status, 3), 0.0, record.index))


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(spec: SweepSpec, records: Sequence[TrialRecord]) -> str:
    """The ranked trials as a Markdown table (readable in a terminal, pasteable into a report)."""
    extra = [] if spec.metric == "eval/accuracy" else ["eval_accuracy"]
    header = ["rank", "trial", *spec.searched, spec.metric, *extra, "status", "time (s)"]
    rows, position = [], 0
    for record in rank(spec, records):
        scored = _scored(record)
        position += scored
        status = {"failed": f"failed, see {record.log}", "running": "unfinished"}.get(record.status, record.status)
        rows.append([
            str(position) if scored else "-",
            record.name,
            *(_format(record.params.get(name)) for name in spec.searched),
            f"{record.value:.4f}" if record.value is not None else "-",
            *(f"{record.metrics[key]:.4f}" if key in record.metrics else "-" for key in extra),
            f"finished; {record.error}" if record.status == "finished" and record.error else status,
            f"{record.duration_s:.0f}" if record.duration_s is not None else "-",
        ])
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]
    return "\n".join("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
                     for row in (header, ["-" * width for width in widths], *rows))


def describe(spec: SweepSpec, output_dir: str | os.PathLike, extra_args: Sequence[str]) -> str:
    """The lines above the table: what was searched, what was fixed, how it was run."""
    # output_dir is the W&B runs' folder; a local trial writes to its own, shown in results.jsonl
    fixed = ", ".join(f"{name}={_format(value)}" for name, value in spec.constants.items()
                      if name != "output_dir") or "-"
    return "\n".join([
        f"Sweep {spec.name} ({spec.source}): {spec.method} over {', '.join(spec.searched) or 'nothing'}, "
        f"ranked by {spec.metric} ({spec.goal})",
        f"fixed: {fixed}",
        *([f"extra arguments: {' '.join(extra_args)}"] if extra_args else []),
        f"results: {Path(output_dir) / 'results.jsonl'}",
    ])


def _axis_value(spec: SweepSpec, record: TrialRecord, name: str) -> Any:
    """The trial's value on a figure axis: the sweep's, else what the trial's args.yaml says it ran with. A number
    sampled from a distribution is shown to 1 significant figure, so that near trials share a cell."""
    value = record.params.get(name)
    if name not in record.params and record.output_dir:
        value = read_args(record.output_dir).get(name)
    sampled = name in spec.searched and "values" not in spec.parameters[name].spec
    return float(f"{value:.1g}") if sampled and isinstance(value, float) else value


def plot_results(spec: SweepSpec, records: Sequence[TrialRecord], path: str | os.PathLike) -> Path | None:
    """Save the metric per learning rate x weight decay, a panel per other searched setting; None if nothing ran."""
    others = [name for name in spec.searched if name not in AXES]
    points = [{"panel": ", ".join(f"{name}={_format(record.params.get(name))}" for name in others) or spec.name,
               **{axis: _axis_value(spec, record, axis) for axis in AXES},
               "value": record.value if record.status == "finished" else None}
              for record in records if record.status != "running"]
    if not points:
        return None
    frame = pd.DataFrame(points).astype({"value": float})  # NaN: failed, or finished without a number
    panels, values = list(frame["panel"].unique()), frame["value"].dropna()
    best_of = "min" if spec.goal == "minimize" else "max"
    best = values.agg(best_of)  # NaN, equal to no cell, when every trial failed
    vmin, vmax = (values.min(), values.max()) if len(values) else (0.0, 1.0)
    # A diverged run (loss in the hundreds) would flatten every other colour: spread the colours on a log scale.
    norm = (LogNorm if vmin > 0 and vmax / vmin > 10 else Normalize)(vmin, vmax)
    cmap = "viridis_r" if spec.goal == "minimize" else "viridis"  # bright is good either way

    if (frame.groupby("panel")[list(AXES)].nunique() <= 1).all(axis=None):
        # One learning rate and weight decay for all (stage 2a): a bar per optimizer (or other setting).
        heights = frame.groupby("panel", sort=False)["value"].agg(best_of)
        ax = (fig := Figure(figsize=(1.6 * len(panels) + 2.5, 3.8))).subplots()
        bars = ax.bar(heights.index, heights.fillna(0), color=[
            "0.85" if np.isnan(height) else matplotlib.colormaps[cmap](norm(height)) for height in heights])
        ax.bar_label(bars, ["failed" if np.isnan(height) else f"{height:.3f}" for height in heights], fontsize=9)
        ax.tick_params("x", labelrotation=15)
        ax.set_ylabel(spec.metric)
        lr, wd = frame[list(AXES)].bfill().iloc[0]  # the first known value of each
        ax.set_title(f"{spec.name}: {spec.metric} ({spec.goal}); learning rate {_format(lr)}, weight decay "
                     f"{_format(wd)}", fontsize=10)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return Path(path)

    columns, rows = min(len(panels), 3), math.ceil(len(panels) / 3)
    # Cells wide and tall enough for their text (a continuous search has many); a small grid gets the usual panel.
    width = max(4.6, 0.7 * frame["learning_rate"].nunique(dropna=False) + 1.5)
    height = max(3.8, 0.4 * frame["weight_decay"].nunique(dropna=False) + 1.5)
    axes = (fig := Figure(figsize=(width * columns + 1.2, height * rows))).subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels, strict=False):
        # Per cell: the best value, how many trials gave a number and how many ran (failed ones too).
        stats = frame[frame["panel"] == panel].pivot_table(index=AXES[1], columns=AXES[0], values="value",
                                                           aggfunc=[best_of, "count", "size"], dropna=False)
        cells, scored, tried = stats[best_of], stats["count"], stats["size"]
        image = ax.imshow(cells, cmap=cmap, norm=norm, aspect="auto")  # NaN cells show the grey face
        ax.set_facecolor("0.9")
        for (i, j), value in np.ndenumerate(cells.to_numpy()):
            if np.isnan(value):
                ax.text(j, i, "failed" if tried.iat[i, j] > 0 else "", ha="center", va="center", fontsize=8)
                continue
            brightness = 1 - norm(value) if spec.goal == "minimize" else norm(value)
            text = f"{value:.3f}" + (f"\n(best of {scored.iat[i, j]:.0f})" if scored.iat[i, j] > 1 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if brightness > 0.5 else "white")
            if value == best:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
        ax.set_xticks(range(len(cells.columns)), labels=[_format(v) for v in cells.columns])
        ax.set_yticks(range(len(cells.index)), labels=[_format(v) for v in cells.index])
        ax.set_xlabel("learning rate")
        if len(panels) > 1:
            ax.set_title(panel.replace(", ", "\n"), fontsize=9)  # one setting per line: long names overlap
    for ax in axes[:, 0]:
        ax.set_ylabel("weight decay")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9, label=spec.metric)
    fig.suptitle(f"{spec.name}: {spec.metric} ({spec.goal}); best boxed in red", fontsize=11)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return Path(path)
