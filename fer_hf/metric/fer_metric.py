"""FER classification metrics as an `evaluate` module, loaded from this local path so it works offline.

Computes accuracy, macro precision / recall / F1, the paper's F1 (harmonic mean of macro precision and macro
recall, as in its Table I), per-class precision / recall / F1 / support and the confusion matrix, all from one
confusion matrix so the numbers are consistent with each other.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "Accuracy, macro P/R/F1, the paper's F1 (harmonic mean of macro P and R), per-class scores and the "
    "confusion matrix."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    label_names (list of str, optional): one name per class; the class count is its length.
    num_labels (int, optional): number of classes when label_names is not given (default: max id + 1).
Returns:
    accuracy, precision, recall, f1, paper_f1 (floats in 0-1), per_class ({name: {precision, recall, f1, support}}),
    confusion_matrix (list of rows; row = true class, column = predicted class).
"""


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # A class never predicted (or never present) scores 0, as scikit-learn does with zero_division=0.
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FerMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, label_names=None, num_labels=None):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if label_names is not None:
            num_labels = len(label_names)
        elif num_labels is None:
            num_labels = int(max(predictions.max(initial=0), references.max(initial=0))) + 1
        names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
        matrix = np.bincount(references * num_labels + predictions, minlength=num_labels**2)
        matrix = matrix.reshape(num_labels, num_labels)
        true_positive = np.diag(matrix).astype(float)
        support = matrix.sum(axis=1)
        precision = _safe_divide(true_positive, matrix.sum(axis=0))
        recall = _safe_divide(true_positive, support)
        f1 = _safe_divide(2 * precision * recall, precision + recall)
        macro_p, macro_r = float(precision.mean()), float(recall.mean())
        return {
            "accuracy": float(true_positive.sum() / max(len(references), 1)),
            "precision": macro_p,
            "recall": macro_r,
            "f1": float(f1.mean()),
            "paper_f1": 2 * macro_p * macro_r / (macro_p + macro_r) if macro_p + macro_r > 0 else 0.0,
            "per_class": {
                name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
            },
            "confusion_matrix": matrix.tolist(),
        }
