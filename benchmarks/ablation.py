"""Issue 9's ablation on a short budget: the base recipe `configs/ablation_lite0_48px.yaml` (ImageNet-pretrained
EfficientNet-Lite0, 48 px, 8 epochs, EMA, label smoothing 0.1; about 27 minutes a row on 2 cores), then one change per
row, trained one at a time through `fer_hf.train`.

    python benchmarks/ablation.py --dataset ../shared/data/fer2013            # every row, in ROWS' order
    python benchmarks/ablation.py mixup no_ema --dataset ../shared/data/fer2013
    python benchmarks/ablation.py --list                                       # the rows and their flags

A row whose folder already holds `all_results.json` is skipped and a stopped one continues from its last checkpoint,
so the same command carries the ablation over sessions. Each row logs to `OUTPUT_ROOT/ablation_lite0_48px_ROW/
train.log`. `python benchmarks/accuracy_table.py --ablation` tabulates the committed rows against the base one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ablation_lite0_48px.yaml"
PREFIX = "ablation_lite0_48px_"
BASE = "base"

# One change each against the base row; the order is the order they run in: first the ingredients no row has
# measured yet.
ROWS: dict[str, list[str]] = {
    BASE: [],
    "mixup": ["--mixup_alpha", "0.2", "--cutmix_alpha", "1.0", "--mixup_prob", "0.5", "--mixup_switch_prob", "0.5"],
    "layer_decay": ["--layer_decay", "0.8"],
    "class_weights": ["--class_weighting", "inverse_sqrt"],
    "no_ema": ["--model_ema", "false"],
    "no_smoothing": ["--label_smoothing_factor", "0.0"],
    "reprob": ["--reprob", "0.25", "--remode", "pixel"],  # measured at full budget already (cpu_lite0_64px_ema_reprob)
    "seed43": ["--seed", "43"],  # the base recipe again on another seed: how far apart chance alone puts two rows
    "scratch": ["--pretrained", "false"],  # measured at full budget already (cpu_lite0_64px_ema_scratch)
}


def row_command(row: str, dataset: str, output_dir: Path) -> list[str]:
    """The `fer_hf.train` command of one row (resuming when its folder holds a checkpoint)."""
    command = [sys.executable, "-m", "fer_hf.train", "--config", str(CONFIG), "--dataset", dataset,
               "--output_dir", str(output_dir), *ROWS[row]]
    if any(output_dir.glob("checkpoint-*")):
        command += ["--resume_from_checkpoint", "last"]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", help=f"rows to run (default: all): {', '.join(ROWS)}")
    parser.add_argument("--dataset", default=os.environ.get("FER2013_PATH", "../shared/data/fer2013"))
    parser.add_argument("--output_root", type=Path, default=REPO / "outputs")
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
        output_dir = args.output_root / f"{PREFIX}{row}"
        if (output_dir / "all_results.json").is_file():
            print(f"{row}: done ({output_dir / 'all_results.json'})", flush=True)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
