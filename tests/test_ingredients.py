"""The training ingredients beyond the paper (mixup / cutmix, random erasing, EMA of the weights, layer-wise lr
decay, class weighting, distillation): off by default, flags and YAML keys, and each doing what it says, on tiny
random-init models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from transformers import TrainerCallback, TrainingArguments

from fer_hf.adafactor import ForeachAdafactor
from fer_hf.config import make_parser, parse_args, recipe_to_argv
from fer_hf.data.load import load_fer2013
from fer_hf.data.pipeline import build_pipeline
from fer_hf.data.transforms import AugmentationConfig
from fer_hf.ingredients import class_weights, distillation_loss
from fer_hf.labels import LABEL_NAMES
from fer_hf.modeling import build_model, image_processor_for
from fer_hf.run_dir import TRAINING_WEIGHTS_FILE
from fer_hf.trainer import FerTrainer

INGREDIENTS = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mixup_prob": 0.9, "mixup_switch_prob": 0.3, "reprob": 0.25,
               "remode": "rand", "recount": 2, "class_weighting": "inverse_sqrt", "layer_decay": 0.75,
               "model_ema": True, "model_ema_decay": 0.99, "model_ema_warmup": True}
OFF = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "reprob": 0.0, "class_weighting": "none", "layer_decay": None,
       "model_ema": False, "distill_from": None}
TINY = ["--model_name_or_path", "resnet18", "--pretrained", "false", "--dataset", "synthetic",
        "--synthetic_train_size", "64", "--synthetic_eval_size", "32", "--image_size", "32",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32", "--optim", "adamw_torch",
        "--learning_rate", "0.001", "--report_to", "none", "--seed", "0", "--disable_tqdm", "true",
        "--logging_steps", "1"]


def tiny_model():
    return build_model("resnet18", pretrained=False, image_size=32, crop_pct=1.0)


def tiny_trainer(tmp_path, model, **kwargs) -> FerTrainer:
    training = {key: kwargs.pop(key) for key in ("label_smoothing_factor", "optim", "weight_decay") if key in kwargs}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-3, **training)
    return FerTrainer(model=model, args=args, **kwargs)


# ------------------------------------------------------------------------------------------------- the flags


def test_ingredients_are_off_by_default_and_are_flags_and_yaml_keys(tmp_path, capsys):
    model_args, data_args, _ = parse_args([])
    defaults = {**vars(model_args), **vars(data_args)}
    assert {key: defaults[key] for key in OFF} == OFF
    help_text = make_parser().format_help()
    for name in INGREDIENTS:
        assert f"--{name}" in help_text, name
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(INGREDIENTS))
    model_args, data_args, _ = parse_args(["--config", str(recipe), "--reprob", "0.5"])
    parsed = {**vars(model_args), **vars(data_args)}
    assert {key: parsed[key] for key in INGREDIENTS} == {**INGREDIENTS, "reprob": 0.5}  # the command line wins
    for flag, value, message in [("--mixup_alpha", "-1", "mixup_alpha must be >= 0"),
                                 ("--reprob", "1.5", "reprob must be a probability"),
                                 ("--recount", "0", "recount must be >= 1"),
                                 ("--layer_decay", "0", "layer_decay must be in"),
                                 ("--model_ema_decay", "1", "model_ema_decay must be in"),
                                 ("--distill_alpha", "1.5", "distill_alpha must be in"),
                                 ("--distill_temperature", "0", "distill_temperature must be > 0")]:
        with pytest.raises(ValueError, match=message):
            parse_args([flag, value])
    for flag, value in [("--remode", "noise"), ("--class_weighting", "balanced"), ("--augment_on", "gpu"),
                        ("--distill_tta", "fivecrop")]:
        with pytest.raises(SystemExit):  # a Literal field: argparse refuses the value, naming the choices
            parse_args([flag, value])
        err = capsys.readouterr().err
        assert f"argument {flag}" in err and f"invalid choice: '{value}'" in err

# ------------------------------------------------------------------------------------------ class weighting


def test_class_weights_are_inverse_frequencies_normalised_to_mean_one():
    counts = np.array([4, 1, 4, 16, 4, 4, 4])  # disgust rare, happy common, as in FER-2013
    labels = np.repeat(np.arange(7), counts)
    inverse = class_weights(labels, LABEL_NAMES, "inverse")
    expected = (1 / counts) / (1 / counts).mean()
    assert inverse.numpy() == pytest.approx(expected, rel=1e-6)
    assert inverse.mean().item() == pytest.approx(1.0)
    assert inverse[1] / inverse[0] == pytest.approx(4.0) and inverse[3] / inverse[0] == pytest.approx(0.25)
    inverse_sqrt = class_weights(labels, LABEL_NAMES, "inverse_sqrt")
    assert inverse_sqrt.numpy() == pytest.approx(counts ** -0.5 / (counts ** -0.5).mean(), rel=1e-6)
    assert inverse_sqrt[1] / inverse_sqrt[0] == pytest.approx(2.0)
    assert class_weights(labels, LABEL_NAMES, "none") is None
    with pytest.raises(ValueError, match="no image of disgust"):
        class_weights(labels[labels != 1], LABEL_NAMES, "inverse")


def test_class_weighted_loss_is_the_weighted_smoothed_cross_entropy(tmp_path):
    model = tiny_model().eval()
    weights = class_weights(np.repeat(np.arange(7), [4, 1, 4, 16, 4, 4, 4]), LABEL_NAMES, "inverse")
    weighted = tiny_trainer(tmp_path, model, label_smoothing_factor=0.1, class_weights=weights)
    plain = tiny_trainer(tmp_path, model, label_smoothing_factor=0.1)
    pixels, labels = torch.randn(6, 3, 32, 32), torch.tensor([1, 1, 3, 3, 0, 6])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        loss = weighted.compute_loss(model, {"pixel_values": pixels, "labels": labels})
        stock = plain.compute_loss(model, {"pixel_values": pixels, "labels": labels})
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, weight=weights, label_smoothing=0.1).item())
    assert stock.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item())
    assert abs(loss.item() - stock.item()) > 1e-3


# ------------------------------------------------------------------------------------------- mixup / cutmix


def test_mixup_trains_on_soft_targets_and_still_counts_accuracy(tmp_path):
    model = tiny_model().train()
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=7)
    trainer = tiny_trainer(tmp_path, model, label_smoothing_factor=0.1, mixup=mixup)
    pixels, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])

    hits = 0
    for seed in range(3):  # mixup and cutmix batches
        np.random.seed(seed)
        loss = trainer.compute_loss(model, {"pixel_values": pixels.clone(), "labels": labels})
        np.random.seed(seed)
        mixed, soft = mixup(pixels.clone(), labels)
        assert not torch.equal(mixed, pixels) and soft.shape == (6, 7)
        with torch.no_grad():  # training mode: batch statistics, so the same logits as inside compute_loss
            logits = model(pixel_values=mixed).logits
        assert loss.item() == pytest.approx(SoftTargetCrossEntropy()(logits, soft).item(), rel=1e-5)
        hits += int((logits.argmax(-1) == soft.argmax(-1)).sum())  # against each mixed image's dominant label
        assert trainer._train_hits.tolist() == [hits, 6 * (seed + 1)]

    # An odd batch (an epoch's last) cannot be paired: left unmixed, with the smoothed hard-label loss.
    odd, odd_labels = pixels[:5].clone(), labels[:5]
    loss = trainer.compute_loss(model, {"pixel_values": odd, "labels": odd_labels})
    assert torch.equal(odd, pixels[:5])
    with torch.no_grad():
        logits = model(pixel_values=odd).logits
    assert loss.item() == pytest.approx(F.cross_entropy(logits, odd_labels, label_smoothing=0.1).item(), rel=1e-5)

    # Evaluation batches are never mixed.
    model.eval()
    evaluated = pixels.clone()
    with torch.no_grad():
        loss = trainer.compute_loss(model, {"pixel_values": evaluated, "labels": labels})
        logits = model(pixel_values=pixels).logits
    assert torch.equal(evaluated, pixels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- random erasing


@pytest.mark.parametrize("augment_on", ["cpu", "device", "per_sample"])
def test_random_erasing_erases_a_box_of_normalised_training_images_only(augment_on):
    dataset = load_fer2013("synthetic", synthetic_train_size=8, synthetic_eval_size=8)
    processor = image_processor_for(tiny_model().config)
    pipeline = build_pipeline(dataset, processor, AugmentationConfig(), augment_on=augment_on, reprob=1.0,
                              remode="const")

    def batch(data) -> torch.Tensor:
        if augment_on == "per_sample":
            return pipeline.collate([data[i] for i in range(8)])["pixel_values"]
        out = data.__getitems__(list(range(8)))
        return (pipeline.device_transform(out) if pipeline.device_transform else out)["pixel_values"]

    train = batch(pipeline.train)
    assert train.shape == (8, 3, 32, 32)
    # `const` fills the box with 0 in every channel, which a normalised grey level never is exactly.
    for image in train:
        erased = (image == 0).all(0)
        rows, cols = erased.any(1).nonzero().squeeze(1), erased.any(0).nonzero().squeeze(1)
        assert len(rows) and len(cols)
        box = erased[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.all(), "the erased pixels form one rectangle"
        assert 0.02 * 32 * 32 * 0.5 <= box.numel() <= 32 * 32 / 3 * 1.5  # timm's area range (with rounding)
    assert not (batch(pipeline.evaluation["train"]) == 0).all(1).any()  # evaluation: never erased


# ------------------------------------------------------------------------------------ layer-wise lr decay


@pytest.mark.parametrize("optim, optimizer_cls", [("adamw_torch", torch.optim.AdamW), ("adafactor", ForeachAdafactor)])
def test_layer_decay_gives_the_head_the_full_rate_and_the_stem_less(tmp_path, optim, optimizer_cls):
    model = tiny_model()
    trainer = tiny_trainer(tmp_path, model, optim=optim, weight_decay=0.05, layer_decay=0.5)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    optimizer = trainer.optimizer
    assert isinstance(optimizer, optimizer_cls)
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    params = dict(model.named_parameters())
    assert len(group_of) == len(params) == sum(len(group["params"]) for group in optimizer.param_groups)

    def lr(name):
        return group_of[id(params[f"timm_model.{name}"])]["lr"]

    assert lr("fc.weight") == lr("fc.bias") == pytest.approx(1e-3)  # the new head: the full rate
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # what the Trainer logs as learning_rate
    stages = [lr("conv1.weight"), *(lr(f"layer{i}.0.conv1.weight") for i in range(1, 5)), lr("fc.weight")]
    assert stages == sorted(stages) and stages[0] < stages[1] < stages[-1]
    assert stages[0] == pytest.approx(1e-3 * 0.5 ** 9)  # resnet18 in timm's groups: stem, 8 blocks, head
    assert group_of[id(params["timm_model.conv1.weight"])]["weight_decay"] == 0.05
    assert group_of[id(params["timm_model.bn1.weight"])]["weight_decay"] == 0.0  # 1-d: no decay, as in timm

    optimizer.step()  # no gradients yet: nothing moves
    trainer.lr_scheduler.step()  # the schedule scales each group's own rate
    assert lr("conv1.weight") / lr("fc.weight") == pytest.approx(stages[0] / stages[-1])


# ------------------------------------------------------------------------------------------- EMA of weights


def test_ema_weights_are_evaluated_chosen_saved_and_resumed(tmp_path, monkeypatch):
    import fer_hf.train as train

    seen: list[tuple[int, dict]] = []
    trainers: list[FerTrainer] = []

    class RecordEvaluatedWeights(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, **kwargs):
            seen.append((state.global_step, {k: v.detach().clone() for k, v in model.state_dict().items()}))

    class RecordingTrainer(train.FerTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(RecordEvaluatedWeights())
            trainers.append(self)

    # Batches of 32 of 64 images: each checkpoint ends an epoch, where a resumed run draws the same crops again.
    argv = [*TINY, "--per_device_train_batch_size", "32", "--max_steps", "4", "--eval_strategy", "steps",
            "--eval_steps", "2", "--save_steps", "2",
            "--load_best_model_at_end", "true", "--metric_for_best_model", "loss", "--model_ema", "true",
            "--model_ema_decay", "0.999"]
    monkeypatch.setattr(train, "FerTrainer", RecordingTrainer)
    out = tmp_path / "run"
    results = train.main([*argv, "--output_dir", str(out)])

    def close(a: dict, b: dict) -> bool:
        return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)

    assert [step for step, _ in seen] == [2, 4]
    for step, evaluated in seen:
        checkpoint = out / f"checkpoint-{step}"
        assert close(evaluated, load_file(checkpoint / "model.safetensors"))  # evaluated = saved as the model
        assert not close(evaluated, load_file(checkpoint / TRAINING_WEIGHTS_FILE))  # ... and not the raw weights
    trainer = trainers[0]
    assert close(seen[-1][1], trainer.model_ema.module.state_dict())  # the EMA's weights
    state = json.loads((out / "trainer_state.json").read_text())
    best = out / f"checkpoint-{state['best_global_step']}"
    assert close(load_file(out / "model.safetensors"), load_file(best / "model.safetensors"))  # the best EMA, saved
    best_eval = next(row for row in state["log_history"]
                     if row.get("step") == state["best_global_step"] and "eval_loss" in row)
    assert results["eval_loss"] == pytest.approx(best_eval["eval_loss"], rel=1e-5)  # and the one tested

    # Resumed from the first checkpoint, the run ends where the uninterrupted one did: EMA and raw weights restored.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    train.main([*argv, "--output_dir", str(resumed), "--resume_from_checkpoint", "last"])
    for name in ("model.safetensors", TRAINING_WEIGHTS_FILE):
        assert close(load_file(resumed / "checkpoint-4" / name), load_file(out / "checkpoint-4" / name)), name


# ----------------------------------------------------------------------------------------- all of them at once


@pytest.mark.parametrize("augment_on", ["cpu", "per_sample"])
def test_every_ingredient_trains_end_to_end(tmp_path, augment_on):
    from fer_hf.train import main

    out = tmp_path / "run"
    flags = recipe_to_argv(INGREDIENTS)
    # 63 images in batches of 20: the last batch (3) is odd and cannot be mixed.
    results = main([*TINY, *flags, "--augment_on", augment_on, "--max_train_samples", "63",
                    "--per_device_train_batch_size", "20", "--max_steps", "4", "--eval_strategy", "steps",
                    "--eval_steps", "4", "--save_steps", "4", "--label_smoothing_factor", "0.1",
                    "--output_dir", str(out)])
    assert 0 <= results["test_accuracy"] <= 1 and np.isfinite(results["eval_loss"])
    rows = json.loads((out / "trainer_state.json").read_text())["log_history"]
    training = [row for row in rows if "loss" in row]
    assert len(training) == 4 and all(0 <= row["train_accuracy"] <= 1 and np.isfinite(row["loss"])
                                      for row in training)
    recorded = yaml.safe_load((out / "args.yaml").read_text())
    assert {key: recorded[key] for key in INGREDIENTS} == INGREDIENTS
    assert (out / "checkpoint-4" / TRAINING_WEIGHTS_FILE).is_file() and (out / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ distillation


def test_distillation_loss_is_the_temperature_scaled_kl_to_the_teacher():
    torch.manual_seed(0)
    logits, teacher = torch.randn(5, 7), torch.softmax(torch.randn(5, 7), dim=-1)
    assert distillation_loss(teacher.log(), teacher).item() == pytest.approx(0.0, abs=1e-6)  # student = teacher
    for temperature in (1.0, 2.0, 4.0):
        soft_teacher = torch.softmax(teacher.log() / temperature, dim=-1)
        log_student = torch.log_softmax(logits / temperature, dim=-1)
        kl = (soft_teacher * (soft_teacher.log() - log_student)).sum(-1).mean() * temperature**2
        assert distillation_loss(logits, teacher, temperature).item() == pytest.approx(kl.item(), rel=1e-5)


def test_distillation_mixes_the_teachers_term_into_training_batches_only(tmp_path):
    model = tiny_model().train()
    trainer = tiny_trainer(tmp_path, model, label_smoothing_factor=0.1, distill_alpha=0.3, distill_temperature=2.0)
    torch.manual_seed(0)
    pixels, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    teacher = torch.softmax(torch.randn(6, 7), dim=-1)
    loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels, "teacher_probs": teacher})
    with torch.no_grad():  # training mode: batch statistics, so the same logits as inside compute_loss
        logits = model(pixel_values=pixels).logits
    hard = F.cross_entropy(logits, labels, label_smoothing=0.1)
    expected = 0.7 * hard + 0.3 * distillation_loss(logits, teacher, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and abs(loss.item() - hard.item()) > 1e-3
    model.eval()  # evaluation scores the labels alone, whatever a batch carries
    loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels, "teacher_probs": teacher})
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-5)


def test_teacher_targets_are_the_shipped_models_probabilities_and_are_kept(fer2013, tmp_path, monkeypatch):
    from fer_hf.inference import teacher as teacher_module
    from fer_hf.inference.classifier import load_classifier, softmax, view_logits
    from fer_hf.model_files import DEFAULT_MODEL_DIR

    split = fer2013["train"].select(range(40))
    cache = tmp_path / "teacher.safetensors"
    probs = teacher_module.teacher_probabilities([DEFAULT_MODEL_DIR], split, tta="hflip", cache=cache)
    assert probs.shape == (40, 7) and probs.dtype == np.float32 and np.allclose(probs.sum(-1), 1, atol=1e-5)
    # The same faces through PyTorch (not the ONNX Runtime default), view by view.
    pytorch = load_classifier(DEFAULT_MODEL_DIR, backend="pytorch")
    expected = softmax(view_logits(pytorch, list(split["image"]), "hflip").mean(axis=1))
    assert np.abs(probs - expected).max() < 1e-3
    assert (probs.argmax(-1) == np.asarray(split["label"])).mean() > 0.5  # it was trained on these faces

    def no_teacher(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(teacher_module, "load_classifier", no_teacher)
    assert np.array_equal(teacher_module.teacher_probabilities([DEFAULT_MODEL_DIR], split, tta="hflip", cache=cache),
                          probs)  # read back
    with pytest.raises(AssertionError, match="computed again"):  # other views: not the saved targets
        teacher_module.teacher_probabilities([DEFAULT_MODEL_DIR], split, tta="none", cache=cache)
    with pytest.raises(AssertionError, match="computed again"):  # as many images, with the same labels: other faces
        others = fer2013["train"].select(range(40, 2000))
        same_labels = [next(i for i, label in enumerate(others["label"]) if label == wanted)
                       for wanted in split["label"]]
        teacher_module.teacher_probabilities([DEFAULT_MODEL_DIR], others.select(same_labels), tta="hflip",
                                             cache=cache)
    # The same teacher under another path is the same teacher.
    assert np.array_equal(teacher_module.teacher_probabilities([f"{DEFAULT_MODEL_DIR}/."], split, tta="hflip",
                                                               cache=cache), probs)


def test_distillation_trains_end_to_end_and_refuses_mixup(tmp_path):
    from fer_hf.model_files import DEFAULT_MODEL_DIR
    from fer_hf.run_dir import TEACHER_FILE
    from fer_hf.train import main

    out = tmp_path / "run"
    flags = [*TINY, "--distill_from", str(DEFAULT_MODEL_DIR), "--distill_tta", "none", "--distill_alpha", "0.7",
             "--output_dir", str(out)]
    with pytest.raises(ValueError, match="does not combine with mixup"):
        main([*flags, "--mixup_alpha", "0.2", "--max_steps", "1"])
    results = main([*flags, "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no",
                    "--load_best_model_at_end", "false"])
    assert np.isfinite(results["train_loss"]) and (out / TEACHER_FILE).is_file()
    recorded = yaml.safe_load((out / "args.yaml").read_text())
    assert recorded["distill_from"] == [str(DEFAULT_MODEL_DIR)] and recorded["distill_alpha"] == 0.7


def test_a_distilled_run_records_its_teachers_weights_and_its_card_names_them(tmp_path, caplog):
    # A teacher folder may hold another model later (fer_hf/default_model does at each release): the run records the
    # teachers' weights and runs, the card names them by those, and a resume after a teacher changed keeps both.
    from safetensors.torch import save_file

    from fer_hf.hashing import weights_sha256
    from fer_hf.model_files import DEFAULT_MODEL_DIR
    from fer_hf.report.model_card import build_model_card
    from fer_hf.train import main

    teacher = tmp_path / "teacher"
    shutil.copytree(DEFAULT_MODEL_DIR, teacher)
    first_sha = weights_sha256(teacher)
    out = tmp_path / "run"
    flags = [*TINY, "--distill_from", str(teacher), "--distill_tta", "none", "--distill_alpha", "0.7",
             "--output_dir", str(out), "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1",
             "--load_best_model_at_end", "false"]
    main([*flags, "--max_steps", "1"])
    info = json.loads((out / "run_info.json").read_text())
    shipped_run = yaml.safe_load((DEFAULT_MODEL_DIR / "args.yaml").read_text())
    assert [t["path"] for t in info["teachers"]] == [str(teacher)] and "teachers_before_resume" not in info
    assert info["teachers"][0]["weights_sha256"] == first_sha
    assert info["teachers"][0]["run"]["output_dir"] == shipped_run["output_dir"]  # the run that made the teacher
    card = str(build_model_card(out))
    assert (f"distilled from `{teacher.name}` as it was then (weights SHA-256 {first_sha[:12]}…), the model of the "
            f"run `{shipped_run['output_dir']}`, none views, alpha 0.7, temperature") in card
    assert str(tmp_path) not in next(line for line in card.splitlines() if "distilled from" in line)  # no local paths
    # The teacher changes (a new release), then the run is resumed: its targets are computed again, both recorded.
    weights = load_file(teacher / "model.safetensors")
    save_file({name: tensor + 0.01 if tensor.is_floating_point() else tensor for name, tensor in weights.items()},
              teacher / "model.safetensors")
    main([*flags, "--max_steps", "2", "--resume_from_checkpoint", "last"])
    info = json.loads((out / "run_info.json").read_text())
    assert info["teachers"][0]["weights_sha256"] == weights_sha256(teacher) != first_sha
    assert info["teachers_before_resume"][0]["weights_sha256"] == first_sha
    assert "teachers' weights changed since this run started" in caplog.text
    assert f"(before the run was resumed: `{teacher.name}` as it was then (weights SHA-256 {first_sha[:12]}…)" in str(
        build_model_card(out))
    # A resume with the teachers unchanged keeps the record of the earlier ones.
    main([*flags, "--max_steps", "3", "--resume_from_checkpoint", "last"])
    assert json.loads((out / "run_info.json").read_text())["teachers_before_resume"][0]["weights_sha256"] == first_sha
