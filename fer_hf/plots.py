"""Plot a training run's curves like the paper's Fig. 4 (accuracy) and Fig. 5 (validation loss).

    python -m fer_hf.plots outputs/paper_resnet50

Reads RUN_DIR/trainer_state.json (or the newest checkpoint's) and writes accuracy_curve.png and loss_curve.png, with
the best checkpoint's step marked.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from fer_hf.curves import plot_training_curves


@dataclass
class PlotArguments:
    output_dir: str | None = field(default=None, metadata={"help": "Where to write the PNGs; default RUN_DIR."})


def main(argv: list[str] | None = None) -> list[str]:
    parser = HfArgumentParser(PlotArguments, prog="python -m fer_hf.plots",
                              description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="A training output_dir (holding trainer_state.json or checkpoint-*).")
    args, extra = parser.parse_args_into_dataclasses(args=argv)
    try:
        paths = plot_training_curves(extra.run_dir, args.output_dir)
    except FileNotFoundError as err:
        raise SystemExit(f"fer_hf.plots: {err}") from err
    if not paths:
        raise SystemExit(f"fer_hf.plots: {extra.run_dir}: the Trainer logged no steps yet; nothing to plot.")
    for path in paths:
        print(f"Wrote {path}")
    return [str(p) for p in paths]


if __name__ == "__main__":
    main(sys.argv[1:])
