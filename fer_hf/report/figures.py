"""Figures saved beside a model: the confusion matrix (the paper's Fig. 6) and the training curves from the Trainer's
state (Fig. 4, accuracy, and Fig. 5, loss).

`trainer_state.json`'s `log_history` has training rows (`loss`, `train_accuracy`, `step`) and evaluation rows
(`eval_loss`, `eval_accuracy`, `step`); the best checkpoint is `best_global_step` (or the number in
`best_model_checkpoint`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Figures are files: matplotlib's Figure API draws without pyplot, so no window opens (servers, CI, DDP workers) and
# the caller's backend (a notebook's inline one) is left alone.
from matplotlib.figure import Figure

from fer_hf.run_dir import (
    ACCURACY_FIGURE,
    LOSS_FIGURE,
    confusion_file,
    find_trainer_state,
    step_of,
    write_atomic,
)

logger = logging.getLogger(__name__)


def save_split_report(
    output_dir: str | os.PathLike, split: str, report: Mapping, label_names: Sequence[str], tta: str | None = None
) -> Path:
    """`confusion_matrix_{split}.json` (matrix and per-class scores) and its figure, beside a model; the one schema
    training, `evaluate` and `release` write. With `tta`, the files are `confusion_matrix_{split}_tta_{tta}.*`."""
    out = Path(output_dir)
    name = f"{split}_tta_{tta}" if tta else split
    path = out / confusion_file(name)
    write_atomic(path, json.dumps({"split": split, "tta": tta, "labels": list(label_names),
                                   "matrix": report["confusion_matrix"], "per_class": report["per_class"]}, indent=2))
    total = sum(sum(row) for row in report["confusion_matrix"])
    title = f"FER-2013 {split}{f', TTA {tta}' if tta else ''} — accuracy {100 * report['accuracy']:.2f}% (n={total})"
    plot_confusion_matrix(report["confusion_matrix"], label_names, title, out / confusion_file(name, "png"))
    return path


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], label_names: Sequence[str], title: str, path: str | os.PathLike
) -> None:
    """Row-normalised percentages (each true class sums to 100%), counts beside them, names on both axes."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    percent = np.divide(100 * counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(5.0, 0.9 * len(label_names) + 1.5)
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.subplots()
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


@dataclass
class Curves:
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy_steps: list[int] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    best_step: int | None = None


def read_curves(state_path: str | os.PathLike) -> Curves:
    try:
        state = json.loads(Path(state_path).read_text())
    except ValueError as err:  # cut off by a kill, or edited by hand
        raise ValueError(f"{state_path}: not readable JSON ({err}).") from err
    if not isinstance(state, dict) or not isinstance(state.get("log_history", []), list):
        raise ValueError(f"{state_path}: not a Trainer state (an object with a log_history list).")
    curves = Curves()
    for row in state.get("log_history", []):
        if not isinstance(row, dict):
            continue
        step = row.get("step")
        if step is None:
            continue
        if "loss" in row:
            curves.train_steps.append(step)
            curves.train_loss.append(row["loss"])
        if "train_accuracy" in row:
            curves.train_accuracy_steps.append(step)
            curves.train_accuracy.append(row["train_accuracy"])
        if "eval_accuracy" in row and "eval_loss" in row:
            curves.eval_steps.append(step)
            curves.eval_loss.append(row["eval_loss"])
            curves.eval_accuracy.append(row["eval_accuracy"])
    curves.best_step = state.get("best_global_step") or step_of(state.get("best_model_checkpoint") or "")
    return curves


def _mark_best(ax, curves: Curves, values: list[float]) -> None:
    if curves.best_step is None:
        return
    ax.axvline(curves.best_step, color="tab:red", linestyle="--", linewidth=1, label=f"best checkpoint (step "
               f"{curves.best_step})")
    if curves.best_step in curves.eval_steps:
        i = curves.eval_steps.index(curves.best_step)
        ax.plot([curves.best_step], [values[i]], marker="*", markersize=14, color="tab:red", zorder=5)


def plot_training_curves(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write `accuracy_curve.png` (train and validation accuracy per step) and `loss_curve.png` (validation loss,
    with the training loss faint behind it) to `output_dir` (default: `run_dir`)."""
    state_path = find_trainer_state(run_dir)
    curves = read_curves(state_path)
    if not curves.eval_steps and not curves.train_steps:
        # A run shorter than one logging window: nothing to draw, and no reason to fail the run that called us.
        logger.warning("%s: log_history has no training or evaluation rows; no curves written.", state_path)
        return []
    out = Path(output_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if curves.train_accuracy:
        ax.plot(curves.train_accuracy_steps, [100 * a for a in curves.train_accuracy], label="training accuracy",
                color="tab:blue", alpha=0.8)
    if curves.eval_accuracy:
        ax.plot(curves.eval_steps, [100 * a for a in curves.eval_accuracy], label="validation accuracy",
                color="tab:orange", marker="o", markersize=4)
    _mark_best(ax, curves, [100 * a for a in curves.eval_accuracy])
    ax.set(xlabel="step", ylabel="accuracy (%)", title="Training and validation accuracy")
    accuracy_path = _finish(fig, ax, out / ACCURACY_FIGURE)

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if curves.train_loss:
        ax.plot(curves.train_steps, curves.train_loss, label="training loss", color="tab:blue", alpha=0.35)
    if curves.eval_loss:
        ax.plot(curves.eval_steps, curves.eval_loss, label="validation loss", color="tab:orange", marker="o",
                markersize=4)
    _mark_best(ax, curves, curves.eval_loss)
    ax.set(xlabel="step", ylabel="cross-entropy loss", title="Validation loss (training loss faint)")
    return [accuracy_path, _finish(fig, ax, out / LOSS_FIGURE)]


def _finish(fig, ax, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
