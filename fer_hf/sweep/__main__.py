"""Run a W&B sweep file locally, without a W&B server, then rank the trials and plot them like the paper's Fig. 3.

    python -m fer_hf.sweep sweeps/optimizers.yaml --dataset PATH
    python -m fer_hf.sweep sweeps/grid.yaml --dry_run
    python -m fer_hf.sweep sweeps/grid.yaml --output_dir /tmp/smoke --dataset synthetic --max_steps 20 --report_to none

Arguments after the YAML that are not the runner's own (below) go to every trial, after the sweep's `${args}`, so
they override the sweep's constants and the base recipe (not what the sweep searches). The same files run on W&B:

    wandb sweep sweeps/grid.yaml && wandb agent ENTITY/PROJECT/SWEEP_ID
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fer_hf import cli
from fer_hf.sweep.report import describe, format_table, plot_results, rank
from fer_hf.sweep.runner import SweepFolder, TrialRecord, planned_commands, run_sweep
from fer_hf.sweep.spec import load_sweep


@dataclass
class SweepArguments:
    output_dir: str | None = field(
        default=None, metadata={"help": "Where trials, results.jsonl, results.md and results.png go. "
                                        "Default: outputs/sweeps/<sweep file name>."}
    )
    max_runs: int | None = field(
        default=None, metadata={"help": "Run at most N trials in all (the smaller of this and the file's run_cap)."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the commands the sweep would launch; run nothing."})
    sweep_seed: int = field(default=0, metadata={"help": "Seed of the random / Bayesian proposals (not of training)."})
    retry_failed: bool = field(
        default=False, metadata={"help": "Rerun trials recorded as failed (interrupted ones always rerun)."}
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep each finished trial's checkpoint-* folders (its chosen model is "
                                         "always kept in the trial folder)."}
    )

    def __post_init__(self):
        if self.max_runs is not None and self.max_runs < 1:
            raise ValueError(f"--max_runs must be at least 1 (or left out for the file's run_cap), got "
                             f"{self.max_runs}.")


def main(argv: list[str] | None = None) -> list[TrialRecord]:
    """Run the sweep; print and save the ranked table and the figure. Returns the trial records, best first."""
    parser = cli.make_parser("fer_hf.sweep", __doc__, SweepArguments)
    # No abbreviations: `--output` or `--max` must not be taken for the runner's flags when meant for the trials.
    parser.allow_abbrev = False
    parser.add_argument("sweep_file", help="A W&B sweep YAML, e.g. sweeps/grid.yaml.")
    args, namespace, extra_args = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    cli.setup_logging()  # the runner's progress lines at info; other libraries stay quiet
    spec = load_sweep(namespace.sweep_file)
    output_dir = Path(args.output_dir or Path("outputs") / "sweeps" / Path(namespace.sweep_file).stem)

    if args.dry_run:
        commands = planned_commands(spec, output_dir, extra_args, max_runs=args.max_runs, sweep_seed=args.sweep_seed)
        note = " (bayes: later proposals depend on results)" if spec.method == "bayes" else ""
        print(f"# {len(commands)} trial(s) of {spec.source}{note}; nothing is run")
        print("\n".join(" ".join(command) for command in commands))
        return []

    # SIGTERM too raises KeyboardInterrupt: stop the trial and keep results.jsonl consistent.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    interrupted = False
    try:
        records = run_sweep(spec, output_dir, extra_args, max_runs=args.max_runs, sweep_seed=args.sweep_seed,
                            retry_failed=args.retry_failed, keep_checkpoints=args.keep_checkpoints)
    except KeyboardInterrupt:
        interrupted = True
        records = list(SweepFolder(output_dir).load().values())
    finally:
        signal.signal(signal.SIGTERM, previous)

    summary = f"{describe(spec, output_dir, extra_args)}\n\n{format_table(spec, records)}\n"
    (output_dir / "results.md").write_text(summary)
    figure = plot_results(spec, records, output_dir / "results.png")
    print(f"\n{summary}")
    print(f"table: {output_dir / 'results.md'}" + (f"\nfigure: {figure}" if figure else ""))
    if interrupted:
        print("interrupted: run the same command again to resume (finished trials are kept)")
        raise KeyboardInterrupt
    return rank(spec, records)


if __name__ == "__main__":
    try:
        # A bad sweep file or a folder of another sweep: a message and status 2 (1 means a trial failed).
        with cli.exit_on_bad_input("fer_hf.sweep", status=2):
            ranked = main(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(1 if any(record.status == "failed" for record in ranked) else 0)
