"""Trainer with training accuracy in its logs, and the one-time evaluation of a split with its figures."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer

from fer_hf.figures import plot_confusion_matrix
from fer_hf.metrics import classification_report
from fer_hf.model_card import write_model_card

logger = logging.getLogger(__name__)


class FerTrainer(Trainer):
    """`Trainer` that also logs `train_accuracy` over each logging window (the paper's Fig. 4 plots it)."""

    # Finishes each batch once it is on the training device: the batch pipeline moves uint8 faces and crop boxes, and
    # this crops, resizes and normalises them there (`fer_hf.transforms.DataPipeline.device_transform`). None: batches
    # arrive model-ready.
    device_transform: Callable[[dict], dict] | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._train_hits: torch.Tensor | None = None  # [correct, seen], kept on the device: no sync per step

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")  # taken first: with label smoothing the Trainer pops it from `inputs`
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and labels is not None:
            correct = (outputs.logits.detach().argmax(-1) == labels).sum()
            # new_full fills on the device; torch.tensor(n, device=...) would copy from the host and wait for the
            # GPU to drain every step.
            hits = torch.stack([correct, correct.new_full((), labels.numel())])
            self._train_hits = hits if self._train_hits is None else self._train_hits + hits
        return (loss, outputs) if return_outputs else loss

    def _prepare_inputs(self, inputs: dict) -> dict:
        inputs = super()._prepare_inputs(inputs)
        return inputs if self.device_transform is None else self.device_transform(inputs)

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
        out = Path(trainer.args.output_dir)
        (out / f"confusion_matrix_{split}.json").write_text(
            json.dumps({"split": split, "labels": list(label_names), "matrix": report["confusion_matrix"],
                        "per_class": report["per_class"]}, indent=2)
        )
        title = f"FER-2013 {split} — accuracy {100 * report['accuracy']:.2f}% (n={len(output.label_ids)})"
        plot_confusion_matrix(report["confusion_matrix"], label_names, title, out / f"confusion_matrix_{split}.png")
    return metrics
