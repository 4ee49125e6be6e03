"""Metrics from our offline evaluate module, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from transformers import EvalPrediction

from fer_hf.labels import LABEL_NAMES
from fer_hf.metrics import classification_report, compute_metrics


@pytest.fixture
def example():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 7, 500)
    predictions = np.where(rng.random(500) < 0.6, references, rng.integers(0, 7, 500))
    predictions[predictions == 1] = 0  # a class never predicted: precision 0, as zero_division=0
    return predictions, references


def test_against_sklearn(example):
    predictions, references = example
    report = classification_report(predictions, references)
    labels = list(range(7))
    assert report["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    p, r, f, s = precision_recall_fscore_support(references, predictions, labels=labels, zero_division=0)
    assert report["precision"] == pytest.approx(p.mean())
    assert report["recall"] == pytest.approx(r.mean())
    assert report["f1"] == pytest.approx(f1_score(references, predictions, labels=labels, average="macro",
                                                  zero_division=0))
    assert report["paper_f1"] == pytest.approx(2 * p.mean() * r.mean() / (p.mean() + r.mean()))
    assert report["confusion_matrix"] == confusion_matrix(references, predictions, labels=labels).tolist()
    for i, name in enumerate(LABEL_NAMES):
        assert report["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
        )
    assert report["per_class"]["disgust"]["precision"] == 0


def test_paper_f1_is_harmonic_mean_of_macro_p_and_r_not_macro_f1():
    # Worked by hand: class a has P=1, R=1/2; class b has P=2/3, R=1. Macro P=5/6, macro R=3/4,
    # paper F1 = 2PR/(P+R) = 15/19, macro F1 = mean(2/3, 4/5) = 11/15.
    report = classification_report([0, 1, 1, 1], [0, 0, 1, 1], label_names=["a", "b"])
    assert report["precision"] == pytest.approx(5 / 6)
    assert report["recall"] == pytest.approx(3 / 4)
    assert report["paper_f1"] == pytest.approx(15 / 19)
    assert report["f1"] == pytest.approx(11 / 15)


def test_trainer_compute_metrics_flattens_scalars(example):
    predictions, references = example
    logits = np.eye(7)[predictions] + 0.01
    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=references))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert {f"f1_{name}" for name in LABEL_NAMES} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
