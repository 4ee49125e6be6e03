"""Training and evaluation transforms built from the backbone's timm data config, and the data pipeline around them.

`build_pipeline` gives the Trainer its datasets in one of two forms: timm's per-image PIL transforms (what the
transformers image-classification example does), or the same transforms on whole uint8 batches
(`fer_hf.fast_transforms`), in the DataLoader or on the training device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import timm.data
import torch
from datasets import DatasetDict
from transformers import TimmWrapperImageProcessor

logger = logging.getLogger(__name__)

# Where images are cropped, flipped, resized and normalised; see DataArguments.augment_on.
AUGMENT_ON = ("auto", "device", "cpu", "per_sample")


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
        return {
            "pixel_values": [self.transform(image.convert(self.mode)) for image in batch["image"]],
            "label": batch["label"],
        }


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["label"] for example in examples], dtype=torch.long),
    }


@dataclass
class DataPipeline:
    """What the Trainer is given: the training set, every split for evaluation, their collate function, and the step
    that finishes a batch once it is on the training device (None when batches leave the DataLoader model-ready)."""

    train: torch.utils.data.Dataset
    evaluation: dict[str, torch.utils.data.Dataset]
    collate: Callable
    device_transform: Callable[[dict], dict] | None = field(default=None, repr=False)


def resolve_augment_on(augment_on: str, device: torch.device | str) -> str:
    """`auto` -> `device` on an accelerator (the GPU is idle between steps otherwise) and `cpu` on a CPU."""
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}.")
    if augment_on == "auto":
        return "cpu" if torch.device(device).type == "cpu" else "device"
    return augment_on


def build_pipeline(
    dataset: DatasetDict,
    processor: TimmWrapperImageProcessor,
    augmentation: AugmentationConfig,
    *,
    augment_on: str = "auto",
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> DataPipeline:
    """Datasets for `dataset`'s splits (train augmented, every split also unaugmented for evaluation).

    `per_sample` decodes and transforms each image with PIL through `with_transform`. `cpu` and `device` decode each
    split once into a uint8 tensor and apply the same transforms to whole batches, either in the DataLoader or on
    `device` after the uint8 batch has been moved there (the Trainer calls `device_transform`).
    """
    where = resolve_augment_on(augment_on, device)
    if where == "per_sample":
        mode = image_mode(processor)
        train = dataset["train"].with_transform(BatchTransform(train_transform(processor, augmentation), mode))
        evaluation = {split: part.with_transform(BatchTransform(eval_transform(processor), mode))
                      for split, part in dataset.items()}
        return DataPipeline(train, evaluation, collate)

    from fer_hf.fast_transforms import FaceTensorDataset, FastImageTransform, collate_batches

    transform = FastImageTransform(processor.data_config, augmentation, channels_last=channels_last)
    on_device = where == "device"
    tensors = {split: FaceTensorDataset.from_dataset(part, transform, train=False, on_device=on_device)
               for split, part in dataset.items()}
    train = FaceTensorDataset(tensors["train"].faces, tensors["train"].labels, transform, train=True,
                              on_device=on_device)
    logger.info("Batch pipeline (%s): %s", where, transform)
    return DataPipeline(train, tensors, collate_batches, transform if on_device else None)
