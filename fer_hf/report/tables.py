"""Tables in the paper's layout: its Table I row, a per-class table, and Table II beside published baselines.

Every number of ours comes from a metrics report just computed (`fer_hf.metrics.classification_report`); the other
rows are quoted, each labelled with where it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fer_hf.labels import split_display_name


@dataclass(frozen=True)
class Baseline:
    name: str
    source: str
    accuracy: str
    precision: str = "–"
    recall: str = "–"
    f1: str = "–"


# Only figures we can attribute. The paper's own result, the `fer` package's bundled model (measured on the real
# PrivateTest split with that package's bundled model; benchmarks/RESULTS.md) and the range published single networks
# reach; no other Table II rows are reproduced.
PAPER_BASELINES: tuple[Baseline, ...] = (
    Baseline("Fine-tuned ResNet-50 (the paper)", "quoted from the paper", "70.16", "71.22", "69.39", "70.29"),
    Baseline("`fer` package, bundled model",
             "measured on the real PrivateTest split with that package's bundled model", "65.42"),
    Baseline("Published single networks", "literature", "73–74"),
)
TABLE_COLUMNS = ("Accuracy (%)", "Precision", "Recall", "F1")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def table_row(report: Mapping) -> tuple[str, str, str, str]:
    """Accuracy, macro precision, macro recall and F1 in percent, as the paper's Table I prints them.

    The paper's F1 is the harmonic mean of macro precision and macro recall (`paper_f1`), not the mean of per-class F1.
    """
    return (_pct(report["accuracy"]), _pct(report["precision"]), _pct(report["recall"]), _pct(report["paper_f1"]))


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table1(name: str, reports: Mapping[str, Mapping]) -> str:
    """The paper's Table I layout, one row per named report (e.g. plain and with TTA)."""
    rows = [(name if key == "plain" else f"{name} + TTA {key}", *table_row(report)) for key, report in reports.items()]
    return markdown_table(("Model", *TABLE_COLUMNS), rows)


def per_class_table(report: Mapping) -> str:
    rows = [
        (label, _pct(s["precision"]), _pct(s["recall"]), _pct(s["f1"]), str(s["support"]))
        for label, s in report["per_class"].items()
    ]
    total = sum(s["support"] for s in report["per_class"].values())
    rows.append(("**macro avg**", _pct(report["precision"]), _pct(report["recall"]), _pct(report["f1"]), str(total)))
    return markdown_table(("Label", "Precision (%)", "Recall (%)", "F1 (%)", "Support"), rows)


def comparison_markdown(name: str, reports: Mapping[str, Mapping], split: str, num_samples: int) -> str:
    """Table II: quoted baselines, then our measured rows (plain, and with TTA when it was run)."""
    rows = [(b.name, b.source, b.accuracy, b.precision, b.recall, b.f1) for b in PAPER_BASELINES]
    for key, report in reports.items():
        label = name if key == "plain" else f"{name} + TTA {key}"
        where = f"measured here: {split_display_name(split)}, n={num_samples}"
        rows.append((f"**{label}**", where, *table_row(report)))
    notes = [
        "Quoted rows are copied from their sources, not re-run; our rows come from `metrics.json` beside this file.",
        "F1 is the paper's: the harmonic mean of macro precision and macro recall.",
    ]
    if split != "test":
        notes.append(
            f"Our rows are on {split_display_name(split)}, which chose the checkpoint; only the test split "
            "(PrivateTest) is comparable with the quoted figures."
        )
    body = markdown_table(("Model", "Source", *TABLE_COLUMNS), rows)
    return f"# Comparison with published results (FER-2013)\n\n{body}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
