"""Evaluate a saved model on a FER-2013 split and report it like the paper (Table I, Table II, Fig. 6).

    python -m fer_hf.evaluate --model outputs/paper_resnet50 --dataset fer2013.npz --split test --tta hflip

Writes to --output_dir (default MODEL/evaluation_SPLIT): `metrics.json` (accuracy, macro precision / recall / F1,
the paper's F1, per-class scores, confusion matrix; with TTA, the same under `tta`; `split_note` where the split holds
something else than its name says), `confusion_matrix_SPLIT.json`
and `.png` in the schema a training run writes (and `..._tta_MODE.*`), and `comparison.md` (our rows beside the
paper's Table II baselines).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fer_hf import cli
from fer_hf.data.load import MIXED_TEST_SPLIT, load_fer2013
from fer_hf.inference.classifier import (
    BACKEND_HELP,
    THREADS_HELP,
    TTA_MODES,
    check_backend_options,
    evaluate_model,
    load_classifier,
)
from fer_hf.model_files import DEFAULT_MODEL_DIR
from fer_hf.report.figures import save_split_report
from fer_hf.report.tables import comparison_markdown, per_class_table, table1
from fer_hf.run_dir import write_atomic

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "test")


@dataclass
class EvaluateArguments:
    dataset: str = field(
        metadata={"help": "fer2013.csv, fer2013.npz (or its folder), a Kaggle image folder, a Hub id, or `synthetic`."}
    )
    model: list[str] | None = field(
        default=None,
        metadata={"help": "Saved model folder(s) (a training output_dir or one of its checkpoint-*); default: the "
                  "model shipped with fer_hf. Several (`--model A B`) are evaluated as an ensemble: their class "
                  "probabilities are averaged."},
    )
    split: str = field(default="test", metadata={"help": "validation (PublicTest) or test (PrivateTest)."})
    tta: str = field(
        default="none",
        metadata={"help": "Test-time augmentation, reported beside the plain figures: none, hflip (2 views: image "
                  "and mirror) or tencrop (10 views: corners, centre and their mirrors). Logits are averaged."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where to write; default MODEL/evaluation_SPLIT for one model folder, else "
                  "./evaluation_SPLIT (the shipped model, an ensemble)."},
    )
    onnx: str | None = field(default=None, metadata={"help": "Evaluate this exported .onnx instead (ONNX Runtime)."})
    batch_size: int = field(default=128, metadata={"help": "Images per forward pass (TTA views included)."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N images (quick look)."})
    skip_bad_rows: bool = field(
        default=False,
        metadata={"help": "Skip malformed CSV rows / unreadable images (count logged) instead of failing."},
    )
    device: str | None = field(default=None, metadata={"help": "cuda / cpu; default cuda when available."})
    backend: str = field(default="auto", metadata={"help": BACKEND_HELP})
    threads: int | None = field(default=None, metadata={"help": THREADS_HELP})

    def __post_init__(self):
        check_backend_options(self.backend, self.threads)
        if self.split not in EVAL_SPLITS:
            raise ValueError(f"--split must be one of {EVAL_SPLITS}, got {self.split!r}.")
        if self.tta not in TTA_MODES:
            raise ValueError(f"--tta must be one of {TTA_MODES}, got {self.tta!r}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max_samples must be 1 or more (or left out for the whole split), got "
                             f"{self.max_samples}.")
        if self.onnx is not None and self.model is not None and len(self.model) > 1:
            raise ValueError("--onnx evaluates one exported model; give at most one --model (its folder) with it.")
        if self.output_dir is None:
            one_folder = self.model is not None and len(self.model) == 1
            self.output_dir = str(Path(self.model[0] if one_folder else ".") / f"evaluation_{self.split}")
        elif Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            # Said now, not after the whole evaluation has run.
            raise ValueError(f"--output_dir {self.output_dir}: an existing file, not a folder; name a folder.")


def run(args: EvaluateArguments) -> tuple[dict, dict[str, dict]]:
    """Evaluate, write metrics.json, the confusion matrix figure(s) and comparison.md; return what metrics.json holds
    and the reports keyed `plain` / TTA mode."""
    folders = args.model or [None]
    classifiers = [load_classifier(folder, onnx_path=args.onnx, device=args.device, backend=args.backend,
                                   threads=args.threads) for folder in folders]
    # What each classifier is: its folder, else the exported file, else the shipped model.
    names = [str(folder or args.onnx or DEFAULT_MODEL_DIR) for folder in folders]
    # Only the evaluated split must be there: a CSV of PrivateTest rows alone is enough to evaluate on test.
    split = load_fer2013(args.dataset, skip_bad_rows=args.skip_bad_rows, splits=(args.split,))[args.split]
    # The loader's warning says it too; this puts it into metrics.json and the printed header.
    note = split.info.description if split.info.description == MIXED_TEST_SPLIT else None
    if args.max_samples is not None:
        split = split.select(range(min(args.max_samples, len(split))))
    dataset_names = split.features["label"].names
    for name, classifier in zip(names, classifiers, strict=True):
        if list(dataset_names) != classifier.label_names:
            raise ValueError(
                f"{name}: the model's labels {classifier.label_names} differ from the dataset's {dataset_names}; "
                "evaluate with the label set it was trained on."
            )
    logger.info("Evaluating %s (%s) on %s/%s: %d images, TTA %s", " + ".join(names), classifiers[0].backend,
                args.dataset, args.split, len(split), args.tta)
    images = (example["image"] for example in split)
    reports = evaluate_model(classifiers, images, split["label"], args.tta, args.batch_size)
    classifier = classifiers[0]

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = reports["plain"]
    metrics = {
        **plain,
        "split": args.split,
        "split_note": note,
        "num_samples": len(split),
        "model": names[0] if len(names) == 1 else names,
        "onnx": args.onnx,
        "dataset": args.dataset,
        "tta": {"mode": args.tta, **reports[args.tta]} if args.tta != "none" else None,
    }
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    for key, report in reports.items():
        save_split_report(out, args.split, report, classifier.label_names, tta=None if key == "plain" else key)
    name = " + ".join(f"{c.config['architecture']} ({Path(n).name})" for c, n in zip(classifiers, names, strict=True))
    comparison = comparison_markdown(name, reports, args.split, len(split))
    if note:
        comparison += f"- Our rows are on {note}: PublicTest and PrivateTest mixed, not PrivateTest alone.\n"
    write_atomic(out / "comparison.md", comparison)
    return metrics, reports


def main(argv: list[str] | None = None) -> dict:
    parser = cli.make_parser("fer_hf.evaluate", __doc__, EvaluateArguments)
    (args,) = cli.parse(parser, argv)
    cli.setup_logging()
    with cli.exit_on_bad_input("fer_hf.evaluate"):  # model folder, dataset, labels: each message names the input
        metrics, reports = run(args)
    name = " + ".join(Path(folder).name for folder in args.model or [args.onnx or DEFAULT_MODEL_DIR])
    split = f"{args.split} [{metrics['split_note']}]" if metrics["split_note"] else args.split
    print(f"\nFER-2013 {split}, n={metrics['num_samples']} — Table I (F1 = harmonic mean of macro P and R)\n")
    print(table1(name, reports))
    for key, report in reports.items():
        print(f"\nPer class{'' if key == 'plain' else f' (TTA {key})'}:\n")
        print(per_class_table(report))
    print(f"\nWrote {args.output_dir}/metrics.json, confusion_matrix_{args.split}*.png and comparison.md")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
    cli.exit_now(0)
