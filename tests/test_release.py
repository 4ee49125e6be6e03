"""`fer_hf.release`: a trained run becomes a compact fp16 model folder, measured as shipped, with its card."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors import safe_open

from fer_hf.inference.classifier import evaluate_model, load_classifier
from fer_hf.release import main as release_main
from fer_hf.run_dir import read_results


def test_release_writes_fp16_weights_measured_as_shipped(trained_run, tmp_path):
    out = tmp_path / "shipped"
    # The test run is a ResNet-18 (11.7M parameters: 23 MB in fp16); the shipped Lite0 fits the default 10 MB.
    results = release_main([str(trained_run), "--dataset", "synthetic", "--output_dir", str(out),
                            "--max_megabytes", "30"])
    # safetensors writes owner-only files; a shipped or shared model must be readable by everyone its umask allows.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(k).dtype for k in weights.keys()}
    assert dtypes == {torch.float16, torch.int64}  # int64: BatchNorm's num_batches_tracked counters
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    classifier = load_classifier(out, device="cpu", backend="pytorch")
    assert next(classifier.model.parameters()).dtype == torch.float32
    assert not (tmp_path / "shipped.partial").exists()
    # The recorded figures are those of the fp16 weights on the named splits, in the training run's schema.
    from fer_hf.data.load import load_fer2013

    test = load_fer2013("synthetic")["test"]
    measured = evaluate_model(classifier, test["image"], test["label"])["plain"]
    assert read_results(out)["test_accuracy"] == results["test_accuracy"] == measured["accuracy"]
    assert results["test_samples"] == len(test) and "eval_accuracy" in results
    card = (out / "README.md").read_text()
    assert f"{100 * results['test_accuracy']:.2f}" in card and "Training recipe" in card
    # The card names the folder the model ends up in, not the one it was written in first.
    assert ".partial" not in card and f'model="{out.resolve()}"' in card and "- name: shipped" in card
    assert (out / "confusion_matrix_test.png").is_file() and (out / "args.yaml").is_file()


def test_release_refuses_weights_over_the_size_limit(trained_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        release_main([str(trained_run), "--dataset", "synthetic", "--output_dir", str(tmp_path / "m"),
                      "--max_megabytes", "1"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fer_hf.release: ") and last.endswith("MB, over --max_megabytes 1.")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()


def test_release_never_replaces_a_folder_it_did_not_write(trained_run, tmp_path, capsys):
    # `--output_dir` mistyped onto a folder of the user's: refused before any work, and nothing of it deleted.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        release_main([str(trained_run), "--dataset", "synthetic", "--output_dir", str(precious)])
    assert stop.value.code == 1
    assert "a folder with other contents (no config.json)" in capsys.readouterr().err
    assert [p.name for p in precious.iterdir()] == ["notes.txt"] and not (tmp_path / "precious.partial").exists()


def test_a_fine_tune_of_a_released_model_records_and_cards_the_chain_back_to_its_first_start(trained_run, tmp_path):
    from conftest import TINY_TRAIN_ARGS
    from fer_hf.hashing import weights_sha256
    from fer_hf.report.model_card import build_model_card
    from fer_hf.run_dir import start_info
    from fer_hf.train import main as train_main

    shipped = tmp_path / "shipped"
    release_main([str(trained_run), "--dataset", "synthetic", "--output_dir", str(shipped), "--max_megabytes", "30"])
    assert json.loads((shipped / "run_info.json").read_text())["command"]  # the release ships the run's record
    further = tmp_path / "further"
    train_main([*TINY_TRAIN_ARGS, "--model_name_or_path", str(shipped), "--pretrained", "true", "--max_steps", "2",
                "--output_dir", str(further)])
    start = json.loads((further / "run_info.json").read_text())["start"]
    assert start["path"] == str(shipped) and start["weights_sha256"] == weights_sha256(shipped)
    assert start["run"]["output_dir"] == str(trained_run) and start["run"]["model_name_or_path"] == "resnet18"
    assert start["run"]["pretrained"] is False and "start" not in start  # the chain's first start: resnet18, random
    card = str(build_model_card(further))
    # absolute paths are shown by their names only: a public card carries no local paths
    assert (f"| Initialised from | `{shipped.name}` as it was then (weights SHA-256 {start['weights_sha256'][:12]}…), "
            f"the model of the run `{trained_run.name}`, which started from `resnet18` (random init) |") in card
    assert "a further fine-tune of an earlier FER model, whose training started from random initialisation" in card
    assert str(tmp_path) not in next(line for line in card.splitlines() if line.startswith("| Initialised from"))
    # once `shipped` changes (a new release), a run that starts from `further` still knows the whole chain
    shutil.copy2(further / "model.safetensors", shipped / "model.safetensors")
    assert weights_sha256(shipped) != start["weights_sha256"]
    chain = start_info(str(further))
    assert chain["run"]["output_dir"] == str(further) and chain["start"] == start
    assert start_info("resnet18") is None and start_info("pypi:tf_efficientnet_lite0") is None
    # resumed after its start changed, the run keeps the start it began from
    train_main([*TINY_TRAIN_ARGS, "--model_name_or_path", str(shipped), "--pretrained", "true", "--max_steps", "3",
                "--output_dir", str(further), "--resume_from_checkpoint", "last"])
    resumed = json.loads((further / "run_info.json").read_text())
    assert "--resume_from_checkpoint" in resumed["command"] and resumed["start"] == start
    # a run from the backbone's own weights keeps its card as before: no chain
    assert "as it was then" not in str(build_model_card(trained_run))


def test_a_start_folder_with_unreadable_records_or_none_is_recorded_without_them(tmp_path, caplog):
    from fer_hf.report.model_card import _start_chain
    from fer_hf.run_dir import start_info

    folder = tmp_path / "timm_folder"  # a plain timm / transformers folder: weights, no record of a fer_hf run
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    plain = start_info(str(folder))
    assert set(plain) == {"path", "weights_sha256"} and _start_chain(plain) == ("", {})  # the card adds no story
    (folder / "run_info.json").write_text("{not json")
    (folder / "args.yaml").write_text("- a list, not a mapping\n")
    assert start_info(str(folder)) == plain
    assert "run_info.json: unreadable" in caplog.text and "args.yaml: not a mapping" in caplog.text
    (folder / "run_info.json").write_text('{"start": "not a record"}')
    assert start_info(str(folder)) == plain


def test_release_of_an_older_run_replaces_a_release_that_had_more_files(trained_run, tmp_path):
    older = tmp_path / "older_run"
    shutil.copytree(trained_run, older, ignore=shutil.ignore_patterns("checkpoint-*"))
    (older / "run_info.json").unlink()  # runs from before run_info.json was shipped
    shipped = tmp_path / "shipped"
    release_main([str(trained_run), "--dataset", "synthetic", "--output_dir", str(shipped), "--max_megabytes", "30"])
    assert (shipped / "run_info.json").is_file()
    release_main([str(older), "--dataset", "synthetic", "--output_dir", str(shipped), "--max_megabytes", "30"])
    assert not (shipped / "run_info.json").exists() and (shipped / "model.safetensors").is_file()
