"""The model fer_hf ships (`fer_hf/default_model/`): small, loads everywhere without `--model`, and scores on the real
PrivateTest split what its card says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data
from transformers import pipeline

from fer_hf import evaluate as fer_evaluate
from fer_hf import predict as fer_predict
from fer_hf.labels import LABEL_NAMES
from fer_hf.model_files import DEFAULT_MODEL_DIR
from fer_hf.run_dir import read_results


def card_test_accuracy() -> float:
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    match = re.search(r"^\| test \(PrivateTest\) \| 3589 \| (\d+\.\d+) \|", card, flags=re.M)
    assert match, "the card has no test (PrivateTest) row over the 3,589 images"
    return float(match.group(1))


def test_shipped_model_is_small_and_measured_on_both_splits():
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size <= 10_000_000
    results = read_results(DEFAULT_MODEL_DIR)
    assert results["test_samples"] == results["eval_samples"] == 3589
    assert abs(100 * results["test_accuracy"] - card_test_accuracy()) < 0.005  # the card prints the recorded value
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    # Its usage lines work in any clone: the package path, never the folder release wrote first or a machine's path.
    assert ".partial" not in card and 'model="fer_hf/default_model"' in card and str(Path.home()) not in card


def test_shipped_model_scores_what_its_card_says_on_real_privatetest(fer2013_path, tmp_path):
    metrics = fer_evaluate.main(["--dataset", str(fer2013_path), "--split", "test", "--output_dir", str(tmp_path)])
    assert metrics["num_samples"] == 3589 and metrics["model"] == str(DEFAULT_MODEL_DIR)
    assert abs(100 * metrics["accuracy"] - card_test_accuracy()) <= 0.1
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]


def test_predict_without_model_on_a_real_photo(tmp_path, capsys):
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    assert fer_predict.main([str(photo), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["error"] is None and len(record["faces"]) == 1
    assert record["faces"][0]["label"] in LABEL_NAMES


def test_transformers_pipeline_loads_the_shipped_folder():
    classifier = pipeline("image-classification", model=str(DEFAULT_MODEL_DIR), top_k=7)
    assert str(classifier.model.dtype) == "torch.float32"
    face = Image.fromarray(np.asarray(Image.fromarray(skimage_data.astronaut()).convert("L"))[30:190, 150:310])
    scores = classifier(face)
    assert sorted(s["label"] for s in scores) == sorted(LABEL_NAMES)
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-4
