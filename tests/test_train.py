"""End-to-end runs of the train entry point, as a user would look at their output_dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, TINY_TRAIN_ARGS, wandb_history
from fer_hf.hub import HubAccessError
from fer_hf.labels import LABEL_NAMES
from fer_hf.sweep.runner import metric_value
from fer_hf.train import main


def test_training_run_writes_model_metrics_and_figures(trained_run):
    results = json.loads((trained_run / "all_results.json").read_text())
    for prefix in ("eval", "test"):  # validation picks the checkpoint; test is evaluated once, at the end
        for key in ("accuracy", "precision", "recall", "f1", "paper_f1", "f1_happy", "recall_disgust", "loss"):
            assert 0 <= results[f"{prefix}_{key}"] <= (10 if key == "loss" else 1), f"{prefix}_{key}"
    # It learns: about 0.5 on both held-out splits after 3 epochs (seed 0), where chance is 1/7 = 0.14.
    assert results["eval_accuracy"] > 0.35 and results["test_accuracy"] > 0.35
    state = json.loads((trained_run / "trainer_state.json").read_text())
    assert state["best_metric"] == pytest.approx(results["eval_accuracy"])  # the restored best epoch
    assert any("train_accuracy" in row for row in state["log_history"])
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert losses[-1] < 0.8 * losses[0]  # the training loss fell (2.27 to 1.32 at seed 0)
    for split, size in (("validation", 140), ("test", 140)):
        matrix = json.loads((trained_run / f"confusion_matrix_{split}.json").read_text())
        assert matrix["labels"] == list(LABEL_NAMES)
        assert np.asarray(matrix["matrix"]).sum() == size
        png = Image.open(trained_run / f"confusion_matrix_{split}.png")
        assert png.size[0] > 300 and np.asarray(png.convert("L")).std() > 10
    args = yaml.safe_load((trained_run / "args.yaml").read_text())
    assert args["learning_rate"] == 0.002 and args["dataset"] == "synthetic"
    assert (trained_run / "model.safetensors").is_file() and (trained_run / "config.json").is_file()
    # Readable as the other files are (safetensors alone writes 0600), in the run folder and its checkpoints.
    modes = {path.relative_to(trained_run).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in trained_run.rglob("*.safetensors")}
    assert len(modes) >= 2 and set(modes.values()) == {stat.S_IMODE((trained_run / "config.json").stat().st_mode)}


def test_saved_run_classifies_with_pipeline(trained_run):
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(trained_run))
    face = Image.fromarray(np.full((48, 48), 128, np.uint8))
    top = classifier(face)[0]
    assert top["label"] in LABEL_NAMES and 0 < top["score"] <= 1


def test_push_to_hub_without_credentials_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token either
    with pytest.raises(HubAccessError, match="--push_to_hub to 'me/fer'"):
        main([*TINY_TRAIN_ARGS, "--output_dir", str(tmp_path / "run"), "--push_to_hub", "true",
              "--hub_model_id", "me/fer"])
    assert not (tmp_path / "run").exists()  # nothing was trained


def test_overfit_recipe_memorises_64_images(tmp_path):
    """The paper's step 1: 64 training images fitted to 100% training accuracy."""
    results = main(["--config", str(REPO / "configs" / "overfit.yaml"), "--output_dir", str(tmp_path),
                    "--disable_tqdm", "true"])
    assert results["eval_accuracy"] == 1.0
    assert json.loads((tmp_path / "confusion_matrix_train.json").read_text())["split"] == "train"


@pytest.mark.slow
def test_two_processes_make_one_run(tmp_path):
    """Two training processes (DDP on CPU) make one set of outputs and one W&B run; an odd-sized eval set is
    evaluated image by image, not padded; each sweep metric is a key the Trainer logs, and its last value (the run
    summary W&B's sweep reads) is the one the local runner reads from the output_dir."""
    output_dir = tmp_path / "ddp"
    args = [*TINY_TRAIN_ARGS]
    overrides = {"--synthetic_train_size": "128", "--synthetic_eval_size": "71", "--num_train_epochs": "1",
                 "--per_device_eval_batch_size": "16", "--eval_strategy": "steps", "--save_strategy": "steps",
                 "--metric_for_best_model": "loss", "--logging_steps": "1", "--report_to": "wandb"}
    for flag, value in overrides.items():
        args[args.index(flag) + 1] = value
    # A multi-GPU `accelerate launch` starts its processes with torch.distributed.run, as here, on CPU with gloo.
    # (`accelerate launch --cpu --num_processes 2` would start ONE process: CPU multi-process needs mpirun. Without
    # --use_cpu, two CPU-only processes are not distributed for accelerate: they train unsynchronised and each
    # evaluates only its own shard.)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fer_hf.train", *args, "--eval_steps", "1", "--save_steps", "1", "--ddp_backend", "gloo",
               "--use_cpu", "true", "--output_dir", str(output_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "fer_hf-tests"}
    env.pop("WANDB_SWEEP_ID", None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(1)  # 2 steps of 2 processes x 32 = 128
    results = json.loads((output_dir / "all_results.json").read_text())
    for split, prefix in (("validation", "eval"), ("test", "test")):
        matrix = np.asarray(json.loads((output_dir / f"confusion_matrix_{split}.json").read_text())["matrix"])
        assert matrix.sum() == 71
        assert results[f"{prefix}_accuracy"] == pytest.approx(np.trace(matrix) / 71)
    assert sorted(p.name for p in output_dir.glob("*_results.json")) == [
        "all_results.json", "eval_results.json", "test_results.json", "train_results.json"]
    assert (done.stdout + done.stderr).count("***** test metrics *****") == 1  # only the main process reports
    # The same weights evaluated by one process give the two processes' test-split figures.
    from fer_hf.data.load import load_fer2013
    from fer_hf.inference.classifier import evaluate_model, load_classifier

    test = load_fer2013("synthetic", synthetic_train_size=128, synthetic_eval_size=71, seed=0)["test"]
    alone = evaluate_model(load_classifier(output_dir, device="cpu"), test["image"], test["label"])["plain"]
    assert alone["accuracy"] == pytest.approx(results["test_accuracy"])
    assert alone["f1"] == pytest.approx(results["test_f1"])

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # only the main process logs: one W&B run
    history = wandb_history(runs[0])
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["metric"]["name"] in history, path.name
    assert len(history["eval/loss"]) == 3  # after each of the 2 steps, then the final evaluation
    # The final evaluation is the restored best checkpoint's. It matches that step's evaluation to about 1e-5 only:
    # between steps each process keeps its own BatchNorm running statistics, and the checkpoint holds the main one's.
    *during, final = history["eval/loss"]
    assert min(during, key=lambda loss: abs(loss - final)) == min(during)
    assert final == pytest.approx(min(during), rel=1e-4)
    assert metric_value(output_dir, "eval/loss") == pytest.approx(final) == results["eval_loss"]
    assert {"eval/accuracy", "test/accuracy", "train/loss", "train/learning_rate"} <= set(history)


def test_resuming_after_a_crash_continues_the_same_run(tmp_path, trained_run, monkeypatch, caplog):
    """Killed right after the first epoch's checkpoint, then again while writing another one: `--resume_from_checkpoint
    last` skips the half-written folder and finishes the run as if it had never stopped."""
    import logging

    from transformers import TrainerCallback

    import fer_hf.train as train

    class KilledAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    class CrashingTrainer(train.FerTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KilledAfterFirstSave())

    out = tmp_path / "run"
    argv = [*TINY_TRAIN_ARGS, "--output_dir", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(train, "FerTrainer", CrashingTrainer)
        with pytest.raises(KeyboardInterrupt):
            train.main(argv)
    first = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(first) == 1 and not (out / "all_results.json").exists()
    half_written = out / "checkpoint-100000"  # as a run killed mid-save leaves it: no trainer_state.json
    half_written.mkdir()
    (half_written / "config.json").write_text("{}")

    with caplog.at_level(logging.WARNING, logger="fer_hf"):
        results = train.main([*argv, "--resume_from_checkpoint", "last"])
    assert "checkpoint-100000 is incomplete (no readable trainer_state.json" in caplog.text

    # Same seed, same data order, the RNG state restored from the checkpoint: the same run as the uninterrupted one.
    # (The Trainer's `train_loss` averages only the steps this process ran, so it is not compared.)
    reference = json.loads((trained_run / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_loss", "test_accuracy", "test_loss"):
        assert results[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), key

    def history(run):
        rows = json.loads((run / "trainer_state.json").read_text())["log_history"]
        return {(row["step"], key): row[key] for row in rows for key in ("loss", "train_accuracy", "eval_loss")
                if key in row}

    resumed, uninterrupted = history(out), history(trained_run)
    assert resumed.keys() == uninterrupted.keys()  # every logging window, the ones before the crash included
    # The training window that spans the crash averages only its steps after the checkpoint in the resumed run.
    crash_step = int(first[0].split("-")[1])
    spanning = min(step for step, key in resumed if key == "loss" and step > crash_step)
    for key in ("loss", "train_accuracy"):
        del resumed[spanning, key], uninterrupted[spanning, key]
    assert resumed == pytest.approx(uninterrupted, rel=1e-4, abs=1e-6)


def test_resume_from_checkpoint_names_what_is_wrong(tmp_path):
    from fer_hf.run_dir import CheckpointError, resolve_resume_checkpoint

    run = tmp_path / "run"
    assert resolve_resume_checkpoint(None, run) is None and resolve_resume_checkpoint("false", run) is None
    with pytest.raises(CheckpointError, match=r"last: no complete checkpoint-\* folder in .*run\. Drop the flag"):
        main([*TINY_TRAIN_ARGS, "--output_dir", str(run), "--resume_from_checkpoint", "last"])
    for step, complete in ((10, True), (20, True), (30, False)):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (run / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resolve_resume_checkpoint("TRUE", run) == str(run / "checkpoint-20")
    assert resolve_resume_checkpoint(str(run / "checkpoint-10"), run) == str(run / "checkpoint-10")
    with pytest.raises(CheckpointError, match="not a complete Trainer checkpoint.*checkpoint-20, checkpoint-10"):
        resolve_resume_checkpoint(str(run / "checkpoint-30"), run)
    with pytest.raises(CheckpointError, match="checkpoint-99: no such folder"):
        resolve_resume_checkpoint(str(run / "checkpoint-99"), run)


def test_training_accuracy_is_counted_with_label_smoothing(tmp_path):
    # With label smoothing the Trainer pops `labels` from the inputs before the forward pass.
    import torch
    from transformers import TrainingArguments

    from fer_hf.modeling import build_model
    from fer_hf.trainer import FerTrainer

    model = build_model("resnet18", pretrained=False, image_size=32, crop_pct=1.0).train()
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1, use_cpu=True, report_to="none")
    trainer = FerTrainer(model=model, args=args)
    pixels, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    smoothed = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels})
    with torch.no_grad():  # training mode: batch statistics, so the same logits as inside compute_loss
        logits = model(pixel_values=pixels).logits
    assert trainer._train_hits.tolist() == [int((logits.argmax(-1) == labels).sum()), 6]
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert not torch.isclose(smoothed.detach(), plain)  # the smoothed loss was the one computed
