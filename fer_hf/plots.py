"""Plot a training run's curves like the paper's Fig. 4 (accuracy) and Fig. 5 (validation loss).

    python -m fer_hf.plots outputs/paper_resnet50

Reads RUN_DIR/trainer_state.json (or the newest checkpoint's) and writes accuracy_curve.png and loss_curve.png, with
the best checkpoint's step marked.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from fer_hf import cli
from fer_hf.report.figures import plot_training_curves


@dataclass
class PlotArguments:
    output_dir: str | None = field(default=None, metadata={"help": "Where to write the PNGs; default RUN_DIR."})


def main(argv: list[str] | None = None) -> list[str]:
    parser = cli.make_parser("fer_hf.plots", __doc__, PlotArguments)
    parser.add_argument("run_dir", help="A training output_dir (holding trainer_state.json or checkpoint-*).")
    args, extra = cli.parse(parser, argv)
    with cli.exit_on_bad_input("fer_hf.plots"):  # no state, a malformed one, an output folder it cannot write
        paths = plot_training_curves(extra.run_dir, args.output_dir)
    if not paths:
        raise SystemExit(f"fer_hf.plots: {extra.run_dir}: the Trainer logged no steps yet; nothing to plot.")
    for path in paths:
        print(f"Wrote {path}")
    return [str(p) for p in paths]


if __name__ == "__main__":
    main(sys.argv[1:])
