"""Classification metrics for Trainer and for evaluation reports, through our offline `evaluate` module."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import evaluate
import numpy as np
from transformers import EvalPrediction

from fer_hf.labels import LABEL_NAMES

METRIC_PATH = Path(__file__).with_name("metric") / "fer_metric.py"
SUMMARY_KEYS = ("accuracy", "precision", "recall", "f1", "paper_f1")


@functools.cache
def load_metric() -> evaluate.EvaluationModule:
    # keep_in_memory and a unique id: several processes (DDP) compute at once without sharing a cache file lock.
    return evaluate.load(str(METRIC_PATH), keep_in_memory=True, experiment_id=uuid.uuid4().hex)


def classification_report(predictions, references, label_names=LABEL_NAMES) -> dict:
    """All metrics: the summary keys, `per_class` and `confusion_matrix` (rows true, columns predicted)."""
    return load_metric().compute(predictions=predictions, references=references, label_names=list(label_names))


PER_CLASS_METRICS = ("precision", "recall", "f1")


def flatten_report(report: dict) -> dict[str, float]:
    """The scalar view Trainer logs: summary keys plus `precision_<label>`, `recall_<label>`, `f1_<label>`."""
    flat = {key: report[key] for key in SUMMARY_KEYS}
    for name, scores in report["per_class"].items():
        flat.update({f"{metric}_{name}": scores[metric] for metric in PER_CLASS_METRICS})
    return flat


def reported_metrics(label_names=LABEL_NAMES) -> list[str]:
    """The names `compute_metrics` reports (and `eval_loss`'s `loss`): what --metric_for_best_model can choose."""
    return ["loss", *SUMMARY_KEYS, *(f"{metric}_{name}" for name in label_names for metric in PER_CLASS_METRICS)]


def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """Trainer's `compute_metrics`: logits and labels (gathered over all processes) to scalar metrics."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return flatten_report(classification_report(np.argmax(logits, axis=-1), eval_pred.label_ids))
