"""Per-image training and evaluation transforms built from the backbone's timm data config (timm's own PIL
transforms, as the transformers image-classification example uses them). `fer_hf.data.batch` applies the same
transforms to whole uint8 batches; `fer_hf.data.pipeline` chooses between the two."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm.data
import torch
from transformers import TimmWrapperImageProcessor


@dataclass(frozen=True)
class AugmentationConfig:
    """The paper's augmentation: RandomResizedCrop to the input size and a horizontal flip."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5


def train_transform(processor: TimmWrapperImageProcessor, augmentation: AugmentationConfig) -> Callable:
    """RandomResizedCrop + flip + normalize with the backbone's mean/std (timm's own training transform)."""
    return timm.data.create_transform(
        **processor.data_config,
        is_training=True,
        scale=augmentation.crop_scale,
        ratio=augmentation.crop_ratio,
        hflip=augmentation.hflip,
        color_jitter=None,  # the paper uses crop and flip only; timm would add colour jitter by default
    )


def eval_transform(processor: TimmWrapperImageProcessor) -> Callable:
    """Resize + centre crop + normalize: the processor's own evaluation transform, as `pipeline` uses it."""
    return processor.val_transforms


def image_mode(processor: TimmWrapperImageProcessor) -> str:
    """`L` for a 1-channel backbone, else `RGB`: grayscale faces are duplicated into three channels (the paper)."""
    return "L" if processor.data_config["input_size"][0] == 1 else "RGB"


@dataclass
class BatchTransform:
    """A `datasets.with_transform` function: decoded PIL faces to normalised tensors (picklable for workers)."""

    transform: Callable
    mode: str = "RGB"

    def __call__(self, batch: dict) -> dict:
        out = {
            "pixel_values": [self.transform(image.convert(self.mode)) for image in batch["image"]],
            "label": batch["label"],
        }
        if "teacher_probs" in batch:  # distillation targets, a column of the training split
            out["teacher_probs"] = batch["teacher_probs"]
        return out


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    batch = {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["label"] for example in examples], dtype=torch.long),
    }
    if "teacher_probs" in examples[0]:
        batch["teacher_probs"] = torch.tensor([example["teacher_probs"] for example in examples], dtype=torch.float32)
    return batch
