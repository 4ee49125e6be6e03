"""Choose an ensemble and TTA mode on PublicTest (validation) alone, among saved models, before PrivateTest is touched.

    python benchmarks/ensemble_search.py --dataset ../shared/data/fer2013 --models RUN_A RUN_B fer_hf/default_model \
        --max_members 3 --output_dir benchmarks/results/ensemble_search_validation

Each model's class probabilities on the validation split are computed once per view mode (plain, and `--tta`,
default ten crops) exactly as `python -m fer_hf.evaluate --model A B --tta MODE` computes them (each model's logits
averaged over its views, then softmax), and kept in `--output_dir/probabilities.npz` keyed by what they depend on
(the folder's weights, config and preprocessing files, the view mode, the images' pixels), so a later search with one
more model computes only that one. Every combination of up to `--max_members` models
under each view mode is then scored as `evaluate` scores an ensemble (the members' probabilities averaged).

Writes `search.json` (every configuration, ranked; the split's size; the models' digests) and prints the best ones
with the one `fer_hf.evaluate` command that measures the chosen configuration on PrivateTest. The script never
loads the test split: the choice cannot see it. The more configurations compared, the more the winner's PublicTest
figure flatters it (it is the maximum of many noisy figures); its PrivateTest figure, measured once, does not.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fer_hf.data.load import load_fer2013  # noqa: E402
from fer_hf.hashing import images_sha256, weights_sha256  # noqa: E402
from fer_hf.inference.classifier import TTA_MODES, ensemble_probabilities, load_classifier  # noqa: E402
from fer_hf.run_dir import write_atomic  # noqa: E402

logger = logging.getLogger("ensemble_search")

SPLIT = "validation"  # PublicTest: the split that chooses; the test split is never loaded here
PROBABILITIES_FILE = "probabilities.npz"
SEARCH_FILE = "search.json"


def rank_configurations(probabilities: dict[tuple[str, str], np.ndarray], labels: np.ndarray,
                        max_members: int) -> list[dict]:
    """Every combination of 1..max_members models under each view mode, scored by accuracy, best first.

    `probabilities[(model, mode)]`: (N, num_labels) probabilities of one model under one view mode. Ties go to fewer
    members (cheaper at run time), then to the plain view, then to the order the models were given in."""
    models = list(dict.fromkeys(model for model, _ in probabilities))
    modes = list(dict.fromkeys(mode for _, mode in probabilities))
    labels = np.asarray(labels)
    rows = []
    for mode_rank, mode in enumerate(modes):
        for size in range(1, min(max_members, len(models)) + 1):
            for members in itertools.combinations(models, size):
                averaged = np.mean([probabilities[(model, mode)] for model in members], axis=0)
                correct = int((averaged.argmax(-1) == labels).sum())
                rows.append({"models": list(members), "tta": mode, "correct": correct,
                             "accuracy": correct / len(labels), "_order": (size, mode_rank)})
    rows.sort(key=lambda row: (-row["correct"], *row["_order"]))
    for row in rows:
        del row["_order"]
    return rows


def folder_identity(folder: str, weights: str | None) -> str | None:
    """A digest of what a folder's probabilities depend on: its weights (`weights`, their SHA-256), config and
    preprocessing files (the same weights at another input size score differently). None for a folder without a
    weights file."""
    if weights is None:
        return None
    digest = hashlib.sha256(weights.encode())
    for name in ("config.json", "preprocessor_config.json"):
        path = Path(folder) / name
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return digest.hexdigest()


def model_probabilities(folders: list[str], dataset: str, modes: list[str], cache: Path, batch_size: int,
                        max_samples: int | None) -> tuple[dict[tuple[str, str], np.ndarray], np.ndarray, dict]:
    """Each model's validation probabilities under each mode, read from `cache` where the same folder contents, mode
    and images were scored before."""
    split = load_fer2013(dataset, splits=(SPLIT,))[SPLIT]
    if max_samples is not None:
        split = split.select(range(min(max_samples, len(split))))
    images, labels = list(split["image"]), np.asarray(split["label"])
    pixels = images_sha256(images)
    saved = {}
    if cache.is_file():
        with np.load(cache) as stored:
            saved = dict(stored)
    digests = {folder: weights_sha256(folder) for folder in folders}
    probabilities = {}
    for folder in folders:
        classifier = None
        identity = folder_identity(folder, digests[folder])
        for mode in modes:
            # A folder without a weights file (nothing to digest) is computed every time, never read back.
            key = hashlib.sha256(f"{identity}/{mode}/{pixels}".encode()).hexdigest() if identity else None
            if key is None or key not in saved:
                classifier = classifier or load_classifier(folder)
                logger.info("%s, %s: %d images (%s)", folder, mode, len(images), classifier.backend)
                computed = ensemble_probabilities([classifier], images, mode, batch_size).astype(np.float32)
                if key is not None:
                    saved[key] = computed
            probabilities[(folder, mode)] = saved[key] if key is not None else computed
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.name}.partial.npz")
    np.savez(partial, **saved)
    partial.replace(cache)
    return probabilities, labels, digests


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="As fer_hf.evaluate's --dataset (only PublicTest is read).")
    parser.add_argument("--models", nargs="+", required=True, help="Saved model folders (fer_hf.train output_dirs, "
                        "fer_hf/default_model, released folders).")
    parser.add_argument("--tta", default="tencrop", choices=[m for m in TTA_MODES if m != "none"],
                        help="The view mode searched beside the plain view.")
    parser.add_argument("--max_members", type=int, default=3, help="Largest ensemble tried.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=128,
                        help="Images per forward pass, views included; the test command uses the same.")
    parser.add_argument("--max_samples", type=int, default=None, help="First N validation images only (smoke).")
    parser.add_argument("--top", type=int, default=10, help="Configurations printed.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(set(args.models)) != len(args.models):
        parser.error("--models: each folder once.")
    if args.max_members < 1:
        parser.error("--max_members must be 1 or more.")

    out = Path(args.output_dir)
    probabilities, labels, digests = model_probabilities(
        args.models, args.dataset, ["none", args.tta], out / PROBABILITIES_FILE, args.batch_size, args.max_samples)
    ranked = rank_configurations(probabilities, labels, args.max_members)
    best = ranked[0]
    tta = f" --tta {best['tta']}" if best["tta"] != "none" else ""
    command = (f"python -m fer_hf.evaluate --model {' '.join(best['models'])} --dataset {args.dataset} --split test"
               f"{tta} --batch_size {args.batch_size}")
    result = {"split": SPLIT, "images": len(labels), "dataset": args.dataset, "max_members": args.max_members,
              "models": {folder: digests[folder] for folder in args.models}, "configurations": len(ranked),
              "chosen": best, "test_command": command, "ranked": ranked}
    write_atomic(out / SEARCH_FILE, json.dumps(result, indent=1))
    print(f"PublicTest, n={len(labels)}: {len(ranked)} configurations of {len(args.models)} models")
    print("| accuracy | correct | views | models |\n|---|---|---|---|")
    for row in ranked[:args.top]:
        print(f"| {100 * row['accuracy']:.2f} | {row['correct']} | {row['tta']} | {' + '.join(row['models'])} |")
    print(f"\nChosen: {' + '.join(best['models'])}, {best['tta']}. Measure it once on PrivateTest:\n  {command}")
    return result


if __name__ == "__main__":
    main()
