"""The accuracy table of benchmarks/RESULTS.md, rebuilt from the committed result files of each run.

    python benchmarks/accuracy_table.py            # prints the markdown rows

Each folder under benchmarks/results/ holds what `fer_hf.train` wrote for one run (`all_results.json`,
`trainer_state.json`, `args.yaml`, ...): the table reads them, so every figure in it can be checked against them.
The quoted rows (the paper, the `fer` package, published networks) are marked as quoted.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fer_hf.report.tables import PAPER_BASELINES, markdown_table  # noqa: E402
from fer_hf.run_dir import read_args, read_results, read_trainer_state  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FER_PACKAGE = 65.42  # the `fer` package's bundled model on PrivateTest (see PAPER_BASELINES)
PAPER_ACCURACY = 70.16
HEADER = ("run", "init", "px", "epochs (best)", "PublicTest", "PrivateTest", "macro F1", "paper F1",
          "vs `fer` 65.42", "vs paper 70.16", "train time")


def row(run_dir: Path) -> tuple[str, ...]:
    args, results, state = read_args(run_dir), read_results(run_dir), read_trainer_state(run_dir)
    best_step = state.get("best_global_step")
    steps_per_epoch = state["global_step"] / state["epoch"] if state.get("epoch") else None
    best_epoch = round(best_step / steps_per_epoch) if best_step and steps_per_epoch else "?"
    test = 100 * results["test_accuracy"]
    minutes = results.get("train_runtime", 0) / 60
    return (
        f"`{run_dir.name}`",
        "ImageNet" if args.get("pretrained") else "random",
        str(args.get("image_size")),
        f"{args.get('num_train_epochs'):g} ({best_epoch})",
        f"{100 * results['eval_accuracy']:.2f}",
        f"**{test:.2f}**",
        f"{100 * results['test_f1']:.2f}",
        f"{100 * results['test_paper_f1']:.2f}",
        f"{test - FER_PACKAGE:+.2f}",
        f"{test - PAPER_ACCURACY:+.2f}",
        # train_runtime covers one invocation: a resumed run's figure is the part after the resume only.
        f"{minutes:.0f} min" + (" after resuming" if args.get("resume_from_checkpoint") else ""),
    )


def main() -> str:
    rows = [row(folder) for folder in sorted(RESULTS.iterdir()) if (folder / "all_results.json").is_file()]
    quoted = [(f"{b.name} (quoted)", "ImageNet" if "paper" in b.name else "–", "224" if "paper" in b.name else "–",
               "30" if "paper" in b.name else "–", "–", b.accuracy, "–", b.f1, "–", "–", "–")
              for b in PAPER_BASELINES]
    table = markdown_table(HEADER, rows + quoted)
    print(table)
    return table


if __name__ == "__main__":
    main()
