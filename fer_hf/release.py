"""Make a trained run the model fer_hf ships: fp16 weights (small enough for the wheel), measured as shipped.

    python -m fer_hf.release outputs/cpu_lite0_80px --dataset fer2013.npz      # writes fer_hf/default_model/

The folder gets the model (`config.json` + fp16 `model.safetensors`, loaded in fp32), the run's recipe and curves
(`args.yaml`, `trainer_state.json`, the figures), and the metrics of the *shipped* weights on the validation split
(which chose the checkpoint) and the test split (touched here once), in the training run's schema
(`all_results.json`, `confusion_matrix_{split}.json`); the model card is written from those files. It is written
beside the target and renamed into place, so a stopped release leaves the previous model whole.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fer_hf import cli
from fer_hf.data.load import load_fer2013
from fer_hf.inference.classifier import evaluate_model, load_classifier
from fer_hf.metrics import flatten_report
from fer_hf.model_files import CONFIG_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE
from fer_hf.modeling import load_saved_model
from fer_hf.report.figures import save_split_report
from fer_hf.report.model_card import write_model_card
from fer_hf.run_dir import (
    ACCURACY_FIGURE,
    ALL_RESULTS,
    ARGS_FILE,
    LOSS_FIGURE,
    RUN_INFO_FILE,
    TRAINER_STATE,
    check_replaceable,
    read_args,
    replace_folder,
    share_like_other_files,
)

logger = logging.getLogger(__name__)

COPIED = (ARGS_FILE, TRAINER_STATE, ACCURACY_FIGURE, LOSS_FIGURE, RUN_INFO_FILE)


@dataclass
class ReleaseArguments:
    dataset: str = field(metadata={"help": "The data the run was trained on (fer2013.csv / .npz / folder / Hub id)."})
    output_dir: str = field(default=str(DEFAULT_MODEL_DIR), metadata={"help": "Default: the package's default model."})
    max_megabytes: float = field(default=10.0, metadata={"help": "Refuse weights larger than this (MB)."})
    batch_size: int = field(default=256, metadata={"help": "Images per forward pass while measuring."})


def release(run_dir: str | Path, dataset: str, output_dir: str | Path = DEFAULT_MODEL_DIR,
            max_megabytes: float = 10.0, batch_size: int = 256) -> dict[str, float]:
    """Write the fp16 model folder and return its measured `eval_*` / `test_*` metrics."""
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG_FILE}; give the output_dir of a finished `fer_hf.train` run.")
    check_replaceable(output_dir, CONFIG_FILE)
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model = load_saved_model(run_dir, dtype=torch.float32)
    model.half().save_pretrained(partial)
    share_like_other_files(partial)
    # Stored in fp16, computed in fp32: AutoModel, pipeline() and fer_hf load it as float32 (fp16 is slow on CPUs).
    config = json.loads((partial / CONFIG_FILE).read_text())
    config["dtype"] = "float32"
    (partial / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    megabytes = (partial / WEIGHTS_FILE).stat().st_size / 1e6
    if megabytes > max_megabytes:
        shutil.rmtree(partial)
        raise ValueError(f"{run_dir}: fp16 weights are {megabytes:.1f} MB, over --max_megabytes {max_megabytes:g}.")
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, partial / name)

    eval_split = read_args(run_dir).get("eval_split", "validation")
    data = load_fer2013(dataset)
    classifier = load_classifier(partial, device="cpu", backend="pytorch")  # the reference backend measures the card
    results: dict[str, float] = {}
    for prefix, split in (("eval", eval_split), ("test", "test")):
        part = data[split]
        report = evaluate_model(classifier, part["image"], part["label"], batch_size=batch_size)["plain"]
        results |= {f"{prefix}_{key}": value for key, value in flatten_report(report).items()}
        results[f"{prefix}_samples"] = len(part)
        save_split_report(partial, split, report, classifier.label_names)
        logger.info("Shipped weights on %s: accuracy %.4f (n=%d)", split, report["accuracy"], len(part))
    (partial / ALL_RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    write_model_card(partial, location=output_dir)
    replace_folder(partial, output_dir, ours=COPIED)  # an older run may lack one an earlier release had
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = cli.make_parser("fer_hf.release", __doc__, ReleaseArguments)
    parser.add_argument("run_dir", help="A finished training output_dir (its best checkpoint is the saved model).")
    args, extra = cli.parse(parser, argv)
    cli.setup_logging()
    with cli.exit_on_bad_input("fer_hf.release"):
        results = release(extra.run_dir, args.dataset, args.output_dir, args.max_megabytes, args.batch_size)
    print(f"Wrote {args.output_dir}: validation accuracy {100 * results['eval_accuracy']:.2f}%, "
          f"test accuracy {100 * results['test_accuracy']:.2f}%")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
