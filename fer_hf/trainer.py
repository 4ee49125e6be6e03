"""Trainer with training accuracy in its logs and the training ingredients of `fer_hf.ingredients`, and the one-time
evaluation of a split with its figures.

EMA of the weights (`model_ema_decay`): timm's `ModelEmaV3` is updated after every optimizer step. While training,
the EMA weights are swapped into the model around each evaluation and each checkpoint save, so the metric that picks
the best checkpoint is the EMA's and a checkpoint's `model.safetensors` holds the EMA weights (what
`load_best_model_at_end` restores, what `from_pretrained` reads); the raw weights the optimizer works on are saved
beside them as `training_weights.safetensors`, and resuming loads both back. After `train()` the model holds EMA
weights (the best checkpoint's, or the last ones), so `save_model()` and `predict()` use them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from datasets import Dataset
from timm.data import Mixup
from timm.utils import ModelEmaV3
from transformers import Trainer, TrainerCallback
from transformers.optimization import Adafactor
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from fer_hf.adafactor import ForeachAdafactor
from fer_hf.ingredients import classification_loss, distillation_loss, layer_decay_param_groups, mix_batch
from fer_hf.metrics import classification_report
from fer_hf.report.figures import save_split_report
from fer_hf.report.model_card import write_model_card
from fer_hf.run_dir import TRAINING_WEIGHTS_FILE, share_like_other_files

logger = logging.getLogger(__name__)


class FerTrainer(Trainer):
    """`Trainer` that also logs `train_accuracy` over each logging window (the paper's Fig. 4 plots it), with the
    training ingredients of `fer_hf.ingredients`, each off unless given:

    - `mixup`: timm's `Mixup`, applied to model-ready training batches; the loss is then against its soft targets;
    - `class_weights`: per-class cross-entropy weights (with label smoothing too, and in eval_loss);
    - `layer_decay`: layer-wise learning-rate decay of the optimizer built from `optim`, `learning_rate` and
      `weight_decay`;
    - `model_ema_decay`: an EMA of the weights that is evaluated, chosen and saved (see the module docstring);
    - `distill_alpha`: training batches that carry `teacher_probs` (the training set's teacher targets) are scored
      `(1 - alpha) * label loss + alpha * distillation_loss` at `distill_temperature`.
    """

    # Finishes each batch once it is on the training device: the batch pipeline moves uint8 faces and crop boxes, and
    # this crops, resizes and normalises them there (`fer_hf.data.pipeline.DataPipeline.device_transform`). None:
    # batches arrive model-ready.
    device_transform: Callable[[dict], dict] | None = None

    def __init__(
        self, *args, mixup: Mixup | None = None, class_weights: torch.Tensor | None = None,
        layer_decay: float | None = None, model_ema_decay: float | None = None, model_ema_warmup: bool = False,
        distill_alpha: float = 0.5, distill_temperature: float = 1.0, **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._train_hits: torch.Tensor | None = None  # [correct, seen], kept on the device: no sync per step
        self.mixup = mixup
        self.class_weights = class_weights
        self.layer_decay = layer_decay
        self.distill_alpha, self.distill_temperature = distill_alpha, distill_temperature
        self.model_ema: ModelEmaV3 | None = None
        if model_ema_decay is not None:
            # A copy of the model as the Trainer placed it (on its device), before any distributed wrapping.
            self.model_ema = ModelEmaV3(self.model, decay=model_ema_decay, use_warmup=model_ema_warmup)
            self.add_callback(_UpdateEma(self.model_ema))

    # ---- loss: mixup on training batches, class weights, a teacher; otherwise the Trainer's own (label-smoothed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher = inputs.pop("teacher_probs", None)
        labels = inputs.get("labels")  # taken first: with label smoothing the Trainer pops it from `inputs`
        if labels is None or (self.mixup is None and self.class_weights is None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            targets = labels
        else:
            inputs = {key: value for key, value in inputs.items() if key != "labels"}
            targets = labels
            if model.training and self.mixup is not None:
                inputs["pixel_values"], targets = mix_batch(self.mixup, inputs["pixel_values"], labels)
            outputs = model(**inputs)
            loss = classification_loss(outputs.logits, targets, class_weights=self.class_weights,
                                       label_smoothing=self.args.label_smoothing_factor)
        if model.training and teacher is not None:
            soft = distillation_loss(outputs.logits, teacher, self.distill_temperature)
            loss = (1 - self.distill_alpha) * loss + self.distill_alpha * soft
        if model.training and labels is not None:
            # Against the dominant label of a mixed image (its soft target's argmax): the hard label where unmixed.
            truth = targets.argmax(-1) if targets.is_floating_point() else labels
            correct = (outputs.logits.detach().argmax(-1) == truth).sum()
            # new_full fills on the device; torch.tensor(n, device=...) would copy from the host and wait for the
            # GPU to drain every step.
            hits = torch.stack([correct, correct.new_full((), labels.numel())])
            self._train_hits = hits if self._train_hits is None else self._train_hits + hits
        return (loss, outputs) if return_outputs else loss

    def _prepare_inputs(self, inputs: dict) -> dict:
        inputs = super()._prepare_inputs(inputs)
        return inputs if self.device_transform is None else self.device_transform(inputs)

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        if optimizer_cls is Adafactor:  # --optim adafactor: the same optimizer and state, a step's arithmetic batched
            optimizer_cls = ForeachAdafactor
        return optimizer_cls, optimizer_kwargs

    # ---- layer-wise learning-rate decay

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.layer_decay is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.accelerator.unwrap_model(self.model if model is None else model)
        optimizer_cls, optimizer_kwargs = (self.optimizer_cls_and_kwargs
                                           or self.get_optimizer_cls_and_kwargs(self.args, opt_model))
        takes_groups = isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
        if not takes_groups or {"params", "model", "optimizer_dict"} & optimizer_kwargs.keys():
            raise ValueError(f"--layer_decay needs an optimizer built from parameter groups; --optim "
                             f"{self.args.optim} builds its own. Use e.g. adamw_torch, sgd or adafactor.")
        groups = layer_decay_param_groups(opt_model, learning_rate=self.args.learning_rate,
                                          weight_decay=self.args.weight_decay, layer_decay=self.layer_decay)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)  # each group's own lr overrides kwargs' lr
        return self.optimizer

    # ---- EMA of the weights: evaluated, checkpointed and resumed

    @contextlib.contextmanager
    def _ema_weights(self) -> Iterator[None]:
        """While training with an EMA: the model holds the EMA weights inside, its raw weights again after."""
        if self.model_ema is None or not self.is_in_train:
            yield
            return
        raw = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        self.model.load_state_dict(self.model_ema.module.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(raw)

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        # With load_best_model_at_end the best checkpoint's model.safetensors (EMA weights) is loaded already.
        if self.model_ema is not None and not (self.args.load_best_model_at_end and self.state.best_model_checkpoint):
            self.model.load_state_dict(self.model_ema.module.state_dict())
        return output

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        with self._ema_weights():
            return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        if self.model_ema is None:
            return super()._save_checkpoint(model, trial)
        # Written before the Trainer's files, so a checkpoint with trainer_state.json (complete) always has it.
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            folder.mkdir(parents=True, exist_ok=True)
            raw = {key: value.detach().cpu().contiguous() for key, value in self.model.state_dict().items()}
            safetensors.torch.save_file(raw, folder / TRAINING_WEIGHTS_FILE, metadata={"format": "pt"})
            share_like_other_files(folder, TRAINING_WEIGHTS_FILE)
        with self._ema_weights():
            super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Saved into a folder beside, then each file renamed into place: a kill while saving leaves every file of
        # output_dir whole (the previous version or the new one), never a half-written model.safetensors.
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return super()._save(output_dir, state_dict)  # other ranks still join the gathers of a sharded model
        staging = output_dir / f".saving-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        super()._save(os.fspath(staging), state_dict)
        share_like_other_files(staging)
        for item in sorted(staging.iterdir()):
            os.replace(item, output_dir / item.name)
        staging.rmdir()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)  # model.safetensors: the EMA weights, if any
        raw = Path(resume_from_checkpoint) / TRAINING_WEIGHTS_FILE
        if self.model_ema is not None:
            self.model_ema.set(self.model)
            if not raw.is_file():
                logger.warning("%s has no %s (trained without --model_ema): the EMA starts from its weights.",
                               resume_from_checkpoint, TRAINING_WEIGHTS_FILE)
        if raw.is_file():
            self.model.load_state_dict(safetensors.torch.load_file(os.fspath(raw), device="cpu"))
            if self.model_ema is None:
                logger.warning("%s was trained with --model_ema; resuming without it continues its raw weights.",
                               resume_from_checkpoint)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training-step logs carry "loss" and are emitted on every process together, so the reduce is safe here.
        if "loss" in logs and self._train_hits is not None:
            correct, seen = self.accelerator.reduce(self._train_hits, reduction="sum").tolist()
            logs["train_accuracy"] = round(correct / max(seen, 1), 4)
            self._train_hits = None
        super().log(logs, start_time)

    def create_model_card(self, *args, **kwargs) -> None:
        # Trainer.push_to_hub calls this right before uploading output_dir; its generic card would replace ours.
        if self.is_world_process_zero() and (Path(self.args.output_dir) / "config.json").is_file():
            write_model_card(self.args.output_dir, repo_id=self.hub_model_id)


class _UpdateEma(TrainerCallback):
    """Updates the EMA after every optimizer step (timm's decay schedule counts optimizer steps)."""

    def __init__(self, model_ema: ModelEmaV3):
        self.model_ema = model_ema

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.model_ema.update(model, step=state.global_step)


def evaluate_split(
    trainer: Trainer, dataset: Dataset, prefix: str, split: str, label_names: Sequence[str]
) -> dict[str, float]:
    """Predict `dataset` once; log and save `{prefix}_*` metrics plus the confusion matrix (JSON and PNG)."""
    output = trainer.predict(dataset, metric_key_prefix=prefix)
    metrics = output.metrics
    trainer.log_metrics(prefix, metrics)
    trainer.save_metrics(prefix, metrics)
    if trainer.is_world_process_zero():
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        report = classification_report(np.argmax(logits, axis=-1), output.label_ids, label_names)
        save_split_report(trainer.args.output_dir, split, report, label_names)
    return metrics
