"""Evaluate a saved model on a FER-2013 split and report it like the paper (Table I, Table II, Fig. 6).

    python -m fer_hf.evaluate --model outputs/paper_resnet50 --dataset fer2013.npz --split test --tta hflip

Writes to --output_dir (default MODEL/evaluation_SPLIT): `metrics.json` (accuracy, macro precision / recall / F1,
the paper's F1, per-class scores, confusion matrix; with TTA, the same under `tta`), `confusion_matrix_SPLIT.png`
(and `..._tta_MODE.png`) and `comparison.md` (our rows beside the paper's Table II baselines).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

from fer_hf.data import load_fer2013
from fer_hf.figures import plot_confusion_matrix
from fer_hf.inference import TTA_MODES, FerClassifier, load_classifier, view_logits
from fer_hf.metrics import classification_report
from fer_hf.reporting import comparison_markdown, per_class_table, table1

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "test")


@dataclass
class EvaluateArguments:
    model: str = field(metadata={"help": "Saved model folder (a training output_dir or one of its checkpoint-*)."})
    dataset: str = field(
        metadata={"help": "fer2013.csv, fer2013.npz (or its folder), a Kaggle image folder, a Hub id, or `synthetic`."}
    )
    split: str = field(default="test", metadata={"help": "validation (PublicTest) or test (PrivateTest)."})
    tta: str = field(
        default="none",
        metadata={"help": "Test-time augmentation, reported beside the plain figures: none, hflip (2 views: image "
                  "and mirror) or tencrop (10 views: corners, centre and their mirrors). Logits are averaged."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where to write; default MODEL/evaluation_SPLIT."})
    onnx: str | None = field(default=None, metadata={"help": "Evaluate this exported .onnx instead (ONNX Runtime)."})
    batch_size: int = field(default=128, metadata={"help": "Images per forward pass (TTA views included)."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N images (quick look)."})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu; default cuda when available."})

    def __post_init__(self):
        if self.split not in EVAL_SPLITS:
            raise ValueError(f"--split must be one of {EVAL_SPLITS}, got {self.split!r}.")
        if self.tta not in TTA_MODES:
            raise ValueError(f"--tta must be one of {TTA_MODES}, got {self.tta!r}.")
        if self.output_dir is None:
            self.output_dir = str(Path(self.model) / f"evaluation_{self.split}")


def evaluate_model(
    classifier: FerClassifier, images, labels, tta: str = "none", batch_size: int = 128
) -> dict[str, dict]:
    """Reports keyed `plain` and, when `tta` is not none, by the TTA mode; each as `classification_report` returns."""
    labels = np.asarray(labels)
    if tta == "hflip":  # the first of the two views is the plain image: one pass gives both figures
        logits = view_logits(classifier, images, "hflip", batch_size)
        plain, augmented = logits[:, 0], logits.mean(axis=1)
    else:
        plain = view_logits(classifier, images, "none", batch_size)[:, 0]
        augmented = view_logits(classifier, images, tta, batch_size).mean(axis=1) if tta == "tencrop" else None
    names = classifier.label_names
    reports = {"plain": classification_report(plain.argmax(-1), labels, names)}
    if augmented is not None:
        reports[tta] = classification_report(augmented.argmax(-1), labels, names)
    return reports


def run(args: EvaluateArguments) -> tuple[dict, dict[str, dict]]:
    """Evaluate, write metrics.json, the confusion matrix figure(s) and comparison.md; return what metrics.json holds
    and the reports keyed `plain` / TTA mode."""
    classifier = load_classifier(args.model, onnx_path=args.onnx, device=args.device)
    split = load_fer2013(args.dataset)[args.split]
    if args.max_samples is not None:
        split = split.select(range(min(args.max_samples, len(split))))
    dataset_names = split.features["label"].names
    if list(dataset_names) != classifier.label_names:
        raise ValueError(
            f"{args.model}: the model's labels {classifier.label_names} differ from the dataset's {dataset_names}; "
            "evaluate with the label set it was trained on."
        )
    logger.info("Evaluating %s (%s) on %s/%s: %d images, TTA %s", args.model, classifier.backend, args.dataset,
                args.split, len(split), args.tta)
    images = (example["image"] for example in split)
    reports = evaluate_model(classifier, images, split["label"], args.tta, args.batch_size)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = reports["plain"]
    metrics = {
        **plain,
        "split": args.split,
        "num_samples": len(split),
        "model": str(args.model),
        "onnx": args.onnx,
        "dataset": args.dataset,
        "tta": {"mode": args.tta, **reports[args.tta]} if args.tta != "none" else None,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for key, report in reports.items():
        suffix = "" if key == "plain" else f"_tta_{key}"
        tta_note = "" if key == "plain" else f", TTA {key}"
        title = f"FER-2013 {args.split}{tta_note} — accuracy {100 * report['accuracy']:.2f}% (n={len(split)})"
        plot_confusion_matrix(report["confusion_matrix"], classifier.label_names, title,
                              out / f"confusion_matrix_{args.split}{suffix}.png")
    name = f"{classifier.config.architecture} ({Path(args.model).name})"
    (out / "comparison.md").write_text(comparison_markdown(name, reports, args.split, len(split)))
    return metrics, reports


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser(EvaluateArguments, prog="python -m fer_hf.evaluate",
                              description=__doc__.split("\n\n")[0])
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # the checks in EvaluateArguments.__post_init__
        parser.error(str(err))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("fer_hf").setLevel(logging.INFO)
    try:
        metrics, reports = run(args)
    except (OSError, ValueError) as err:  # model folder, dataset, labels: each message names the input and the fix
        raise SystemExit(f"fer_hf.evaluate: {err}") from err
    name = Path(args.model).name
    print(f"\nFER-2013 {args.split}, n={metrics['num_samples']} — Table I (F1 = harmonic mean of macro P and R)\n")
    print(table1(name, reports))
    for key, report in reports.items():
        print(f"\nPer class{'' if key == 'plain' else f' (TTA {key})'}:\n")
        print(per_class_table(report))
    print(f"\nWrote {args.output_dir}/metrics.json, confusion_matrix_{args.split}*.png and comparison.md")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
