"""Issue 9's ablation on a short budget: the base recipe `configs/ablation_lite0_48px.yaml` (ImageNet-pretrained
EfficientNet-Lite0, 48 px, 8 epochs, EMA, label smoothing 0.1; 15-30 minutes a row on 2 cores), then one change per
row, trained one at a time through `fer_hf.train`.

    python benchmarks/ablation.py --dataset ../shared/data/fer2013            # every row, in ROWS' order
    python benchmarks/ablation.py mixup no_ema --dataset ../shared/data/fer2013
    python benchmarks/ablation.py --list                                       # the rows and their flags

A row already committed (`benchmarks/results/ablation/ROW/all_results.json`) or finished in its folder is skipped
(the latter's files copied then), and a stopped one continues from its last checkpoint, so the same command carries
the ablation over sessions and fresh clones. Each row logs to `OUTPUT_ROOT/ablation_lite0_48px_ROW/train.log`; a
finished row's small result files (no checkpoints) are copied to `benchmarks/results/ablation/ROW/`, where
`python benchmarks/accuracy_table.py --ablation` tabulates them against the base row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy_table import ABLATION as RESULTS  # noqa: E402  (one folder per row, named after it)
from accuracy_table import ABLATION_BASE as BASE  # noqa: E402

from fer_hf.run_dir import (  # noqa: E402
    ACCURACY_FIGURE,
    ALL_RESULTS,
    ARGS_FILE,
    LOSS_FIGURE,
    RUN_INFO_FILE,
    SPLIT_RESULTS,
    TRAINER_STATE,
    confusion_file,
)

CONFIG = REPO / "configs" / "ablation_lite0_48px.yaml"
PREFIX = "ablation_lite0_48px_"
# What a row's committed folder holds: its figures and the files that let anyone check them; never a checkpoint.
# ALL_RESULTS marks a row as done, so it is copied last: a copy stopped half-way leaves the row to copy again.
RESULT_FILES = (*SPLIT_RESULTS, TRAINER_STATE, ARGS_FILE, RUN_INFO_FILE, confusion_file("validation"),
                confusion_file("test"), confusion_file("test", "png"), ACCURACY_FIGURE, LOSS_FIGURE, ALL_RESULTS)

# One change each against the base row; the order is the order they run in: first the ingredients no row has
# measured yet, and the seed row that says how far apart chance alone puts two rows.
ROWS: dict[str, list[str]] = {
    BASE: [],
    "mixup": ["--mixup_alpha", "0.2", "--cutmix_alpha", "1.0", "--mixup_prob", "0.5", "--mixup_switch_prob", "0.5"],
    "layer_decay": ["--layer_decay", "0.8"],
    "class_weights": ["--class_weighting", "inverse_sqrt"],
    "no_ema": ["--model_ema", "false"],
    "no_smoothing": ["--label_smoothing_factor", "0.0"],
    "seed43": ["--seed", "43"],  # the base recipe again on another seed: how far apart chance alone puts two rows
    "reprob": ["--reprob", "0.25", "--remode", "pixel"],  # measured at full budget already (cpu_lite0_64px_ema_reprob)
    "scratch": ["--pretrained", "false"],  # measured at full budget already (cpu_lite0_64px_ema_scratch)
}


def in_repo(path: Path) -> str:
    """`path` relative to the checkout where it lies in it: the row's recorded arguments then hold no local path."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def row_command(row: str, dataset: str, output_dir: Path) -> list[str]:
    """The `fer_hf.train` command of one row, run in the checkout (resuming when its folder holds a checkpoint)."""
    command = [sys.executable, "-m", "fer_hf.train", "--config", in_repo(CONFIG), "--dataset", dataset,
               "--output_dir", in_repo(output_dir.resolve()), *ROWS[row]]
    if any(output_dir.glob("checkpoint-*")):
        command += ["--resume_from_checkpoint", "last"]
    return command


def commit_results(output_dir: Path, results_dir: Path) -> list[str]:
    """Copy a finished row's small result files into its committed folder; returns the names copied."""
    results_dir.mkdir(parents=True, exist_ok=True)
    copied = [name for name in RESULT_FILES if (output_dir / name).is_file()]
    for name in copied:
        shutil.copy2(output_dir / name, results_dir / name)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", help=f"rows to run (default: all): {', '.join(ROWS)}")
    parser.add_argument("--dataset", default=os.environ.get("FER2013_PATH", "../shared/data/fer2013"))
    parser.add_argument("--output_root", type=Path, default=REPO / "outputs")
    parser.add_argument("--results_root", type=Path, default=RESULTS, help="where finished rows' result files go")
    parser.add_argument("--list", action="store_true", help="print the rows and their flags, train nothing")
    args = parser.parse_args(argv)
    unknown = [row for row in args.rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; the rows are {', '.join(ROWS)}.")
    if args.list:
        for row, flags in ROWS.items():
            print(f"{row}: {' '.join(flags) or '(the recipe as it is)'}")
        return 0
    for row in args.rows or list(ROWS):
        output_dir, results_dir = args.output_root / f"{PREFIX}{row}", args.results_root / row
        if (results_dir / ALL_RESULTS).is_file():
            print(f"{row}: done ({results_dir / ALL_RESULTS})", flush=True)
            continue
        if (output_dir / ALL_RESULTS).is_file():  # finished while no runner watched it
            copied = commit_results(output_dir, results_dir)
            print(f"{row}: done ({output_dir}); {len(copied)} result files copied to {results_dir}", flush=True)
            continue
        output_dir.mkdir(parents=True, exist_ok=True)
        print(f"{row}: training into {output_dir}", flush=True)
        with open(output_dir / "train.log", "ab") as log:
            finished = subprocess.run(row_command(row, args.dataset, output_dir), cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT)
        if finished.returncode:
            print(f"{row}: fer_hf.train exited with {finished.returncode}; see {output_dir / 'train.log'}",
                  file=sys.stderr)
            return finished.returncode
        copied = commit_results(output_dir, results_dir)
        print(f"{row}: finished; {len(copied)} result files copied to {results_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
