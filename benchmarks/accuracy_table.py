"""The accuracy table of benchmarks/RESULTS.md, rebuilt from the committed result files of each run.

    python benchmarks/accuracy_table.py              # prints the markdown rows
    python benchmarks/accuracy_table.py --ablation   # the short-budget ablation (benchmarks/ablation.py) instead

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
from fer_hf.run_dir import RUN_INFO_FILE, read_args, read_json, read_results, read_trainer_state  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
ABLATION = RESULTS / "ablation"  # one folder per row of benchmarks/ablation.py, named after the row
ABLATION_BASE = "base"
# Arguments that differ between runs without changing what is trained.
NOT_A_CHANGE = frozenset({"output_dir", "logging_dir", "run_name", "resume_from_checkpoint", "dataset"})
FER_PACKAGE = 65.42  # the `fer` package's bundled model on PrivateTest (see PAPER_BASELINES)
PAPER_ACCURACY = 70.16
HEADER = ("run", "init", "px", "epochs (best)", "PublicTest", "PrivateTest", "macro F1", "paper F1",
          "vs `fer` 65.42", "vs paper 70.16", "train time")


def best_epoch(state: dict) -> int | str:
    best_step = state.get("best_global_step")
    steps_per_epoch = state["global_step"] / state["epoch"] if state.get("epoch") else None
    return round(best_step / steps_per_epoch) if best_step and steps_per_epoch else "?"


def train_time(args: dict, results: dict) -> str:
    # train_runtime covers one invocation: a resumed run's figure is the part after the resume only.
    minutes = results.get("train_runtime", 0) / 60
    return f"{minutes:.0f} min" + (" after resuming" if args.get("resume_from_checkpoint") else "")


def init(run_dir: Path, args: dict) -> str:
    """ImageNet or random; for a run that fine-tuned a saved model further, the run that made that model."""
    start = read_json(run_dir / RUN_INFO_FILE).get("start")
    made_by = ((start or {}).get("run") or {}).get("output_dir")
    if args.get("pretrained") and made_by:
        return f"`{Path(made_by).name}`"
    return "ImageNet" if args.get("pretrained") else "random"


def row(run_dir: Path) -> tuple[str, ...]:
    args, results, state = read_args(run_dir), read_results(run_dir), read_trainer_state(run_dir)
    test = 100 * results["test_accuracy"]
    return (
        f"`{run_dir.name}`",
        init(run_dir, args),
        str(args.get("image_size")),
        f"{args.get('num_train_epochs'):g} ({best_epoch(state)})",
        f"{100 * results['eval_accuracy']:.2f}",
        f"**{test:.2f}**",
        f"{100 * results['test_f1']:.2f}",
        f"{100 * results['test_paper_f1']:.2f}",
        f"{test - FER_PACKAGE:+.2f}",
        f"{test - PAPER_ACCURACY:+.2f}",
        train_time(args, results),
    )


def changes(args: dict, base: dict) -> str:
    """What a row's arguments change against the base row's, as `name: base -> row`."""
    changed = [f"`{key}` {base.get(key)!s} → {args.get(key)!s}" for key in sorted(set(args) | set(base))
               if key not in NOT_A_CHANGE and args.get(key) != base.get(key)]
    return ", ".join(changed) or "— (the base recipe)"


def ablation_table(folder: Path = ABLATION) -> str:
    """Each committed row of the short-budget ablation against its base row: PublicTest chose each row's
    checkpoint, PrivateTest was run once for each; the differences are in points."""
    base_dir = folder / ABLATION_BASE
    base_args, base_results = read_args(base_dir), read_results(base_dir)
    header = ("row", "change against the base row", "PublicTest", "Δ", "PrivateTest", "Δ", "macro F1",
              "paper F1", "best epoch", "train time")
    rows = []
    for run_dir in [base_dir, *sorted(p for p in folder.iterdir() if p.name != ABLATION_BASE)]:
        if not (run_dir / "all_results.json").is_file():
            continue
        args, results = read_args(run_dir), read_results(run_dir)
        valid, test = 100 * results["eval_accuracy"], 100 * results["test_accuracy"]
        rows.append((
            f"`{run_dir.name}`", changes(args, base_args),
            f"{valid:.2f}", f"{valid - 100 * base_results['eval_accuracy']:+.2f}",
            f"**{test:.2f}**", f"{test - 100 * base_results['test_accuracy']:+.2f}",
            f"{100 * results['test_f1']:.2f}", f"{100 * results['test_paper_f1']:.2f}",
            f"{best_epoch(read_trainer_state(run_dir))} of {args.get('num_train_epochs'):g}",
            train_time(args, results),
        ))
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> str:
    if "--ablation" in (sys.argv[1:] if argv is None else argv):
        table = ablation_table()
        print(table)
        return table
    rows = [row(folder) for folder in sorted(RESULTS.iterdir()) if (folder / "all_results.json").is_file()]
    quoted = [(f"{b.name} (quoted)", "ImageNet" if "paper" in b.name else "–", "224" if "paper" in b.name else "–",
               "30" if "paper" in b.name else "–", "–", b.accuracy, "–", b.f1, "–", "–", "–")
              for b in PAPER_BASELINES]
    table = markdown_table(HEADER, rows + quoted)
    print(table)
    return table


if __name__ == "__main__":
    main()
