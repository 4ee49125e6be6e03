"""fer_hf.evaluate and fer_hf.plots: the paper's tables and figures, checked against scikit-learn on real faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fer_hf import evaluate as fer_evaluate
from fer_hf import plots
from fer_hf.inference.classifier import load_classifier, view_logits
from fer_hf.labels import LABEL_NAMES
from fer_hf.report.figures import read_curves

NUM_REAL = 200  # real PrivateTest faces: enough for every class but disgust to appear, a second of CPU


@pytest.fixture
def shared_dataset_cache(tmp_path_factory, monkeypatch):
    """The CLIs parse FER-2013 into the datasets cache: use one temporary cache for the whole session."""
    import datasets

    cache = tmp_path_factory.getbasetemp() / "fer_hf_cli_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def assert_nontrivial_png(path: Path, min_size=(400, 300)) -> None:
    assert path.is_file(), path
    image = Image.open(path)
    assert image.format == "PNG" and image.width >= min_size[0] and image.height >= min_size[1]
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn, not blank


def assert_matches_sklearn(report: dict, predictions: np.ndarray, references: np.ndarray) -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(LABEL_NAMES)))
    assert report["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    p, r, f, _ = precision_recall_fscore_support(references, predictions, labels=labels, average="macro",
                                                 zero_division=0)
    assert (report["precision"], report["recall"], report["f1"]) == pytest.approx((p, r, f))
    assert report["paper_f1"] == pytest.approx(2 * p * r / (p + r))
    per_p, per_r, per_f, support = precision_recall_fscore_support(references, predictions, labels=labels,
                                                                   zero_division=0)
    for i, name in enumerate(LABEL_NAMES):
        scores = report["per_class"][name]
        assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((per_p[i], per_r[i], per_f[i]))
        assert scores["support"] == support[i]
    assert report["confusion_matrix"] == confusion_matrix(references, predictions, labels=labels).tolist()


def test_evaluate_real_faces_matches_sklearn_with_tta(trained_run, fer2013, fer2013_path, shared_dataset_cache,
                                                     tmp_path, capsys):
    out = tmp_path / "eval"
    fer_evaluate.main(["--model", str(trained_run), "--dataset", str(fer2013_path), "--split", "test", "--tta",
                       "hflip", "--max_samples", str(NUM_REAL), "--output_dir", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "precision", "recall", "f1", "paper_f1", "per_class"} <= set(metrics)
    assert metrics["split"] == "test" and metrics["num_samples"] == NUM_REAL

    # Independently: the same faces through the model, plain and mirrored (PIL's mirror, not our flip).
    faces = [example["image"] for example in fer2013["test"].select(range(NUM_REAL))]
    references = np.asarray(fer2013["test"]["label"][:NUM_REAL])
    classifier = load_classifier(trained_run, device="cpu")
    plain = view_logits(classifier, faces)[:, 0]
    mirrored = view_logits(classifier, [ImageOps.mirror(face) for face in faces])[:, 0]
    assert_matches_sklearn(metrics, plain.argmax(-1), references)
    assert metrics["tta"]["mode"] == "hflip"
    assert_matches_sklearn(metrics["tta"], ((plain + mirrored) / 2).argmax(-1), references)

    # Table I row and the per-class table, as printed; the comparison beside the paper's quoted figures.
    ours = f"{100 * metrics['accuracy']:.2f} | {100 * metrics['precision']:.2f} | {100 * metrics['recall']:.2f} | " \
           f"{100 * metrics['paper_f1']:.2f}"
    assert f"| {trained_run.name} | {ours} |" in printed
    assert "TTA hflip" in printed and "| angry |" in printed and "**macro avg**" in printed
    comparison = (out / "comparison.md").read_text()
    assert "| Fine-tuned ResNet-50 (the paper) | quoted from the paper | 70.16 | 71.22 | 69.39 | 70.29 |" in comparison
    assert "| measured on the real PrivateTest split with that package's bundled model | 65.42 |" in comparison
    assert "| literature | 73–74 |" in comparison
    assert ours in comparison and f"n={NUM_REAL}" in comparison
    assert_nontrivial_png(out / "confusion_matrix_test.png")
    assert_nontrivial_png(out / "confusion_matrix_test_tta_hflip.png")


def test_tta_views_and_logit_shapes(trained_run, fer2013):
    classifier = load_classifier(trained_run, device="cpu")
    faces = [fer2013["validation"][i]["image"] for i in range(3)]
    channels, height, width = classifier.data_config["input_size"]
    for mode, count in (("none", 1), ("hflip", 2), ("tencrop", 10)):
        views = classifier.views(mode)(faces[0])
        assert views.shape == (count, channels, height, width)
        logits = view_logits(classifier, faces, mode, batch_size=8)  # batches split faces, never their views
        assert logits.shape == (3, count, len(LABEL_NAMES))
        assert classifier.predict(faces, mode).shape == (3, len(LABEL_NAMES))
    assert np.allclose(classifier.views("hflip")(faces[0])[1], classifier.views("none")(faces[0])[0][..., ::-1])
    tencrop = classifier.views("tencrop")(faces[0])
    # Corners and centre, then the same five crops of the mirrored face: top-left of the mirror = mirrored top-right.
    assert np.allclose(tencrop[[6, 5, 8, 7, 9]], tencrop[:5][..., ::-1])
    assert not np.allclose(tencrop[0], tencrop[4])


def test_evaluate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="--tta must be one of"):
        fer_evaluate.EvaluateArguments(model="m", dataset="synthetic", tta="fivecrop")
    with pytest.raises(ValueError, match="--split must be one of"):
        fer_evaluate.EvaluateArguments(model="m", dataset="synthetic", split="train")


@pytest.mark.parametrize("max_samples", ["0", "-5"])
def test_evaluate_refuses_max_samples_below_one(max_samples, tmp_path, capsys):
    """--max_samples 0 used to evaluate nothing and write a metrics.json of 0.00%: a usage error (status 2) now."""
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        fer_evaluate.main(["--dataset", "synthetic", "--max_samples", max_samples, "--output_dir", str(out)])
    assert exit_info.value.code == 2
    assert f"--max_samples must be 1 or more (or left out for the whole split), got {max_samples}." \
        in capsys.readouterr().err
    assert not out.exists()


def test_plots_accuracy_and_loss_curves_mark_the_best_step(trained_run, tmp_path, capsys):
    written = plots.main([str(trained_run), "--output_dir", str(tmp_path)])
    assert sorted(Path(p).name for p in written) == ["accuracy_curve.png", "loss_curve.png"]
    for path in written:
        assert_nontrivial_png(Path(path))
    assert "accuracy_curve.png" in capsys.readouterr().out

    state = json.loads((trained_run / "trainer_state.json").read_text())
    curves = read_curves(trained_run / "trainer_state.json")
    assert curves.best_step == state["best_global_step"]
    assert len(curves.eval_steps) == 3 and len(curves.train_accuracy) == len(curves.train_loss) > 0
    # Older transformers wrote only best_model_checkpoint; the step comes from its name.
    del state["best_global_step"]
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    assert read_curves(tmp_path / "trainer_state.json").best_step == int(state["best_model_checkpoint"].split("-")[-1])
