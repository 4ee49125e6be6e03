"""Figures saved beside a model: the confusion matrix (like the paper's Fig. 6)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window (servers, CI, DDP workers)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], label_names: Sequence[str], title: str, path: str | os.PathLike
) -> None:
    """Row-normalised percentages (each true class sums to 100%), counts beside them, names on both axes."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    percent = np.divide(100 * counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(5.0, 0.9 * len(label_names) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    ticks = np.arange(len(label_names))
    ax.set_xticks(ticks, labels=label_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=label_names)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title)
    for i in ticks:
        for j in ticks:
            color = "white" if percent[i, j] > 55 else "black"
            ax.text(j, i, f"{percent[i, j]:.1f}%\n({int(counts[i, j])})", ha="center", va="center",
                    fontsize=7, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
