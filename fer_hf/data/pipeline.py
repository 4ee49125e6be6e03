"""The data pipeline the Trainer is given: timm's per-image PIL transforms (`fer_hf.data.transforms`, what the
transformers image-classification example does), or the same transforms on whole uint8 batches (`fer_hf.data.batch`),
in the DataLoader or on the training device."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchvision.transforms
from datasets import DatasetDict
from timm.data.random_erasing import RandomErasing
from transformers import TimmWrapperImageProcessor

from fer_hf.config import AUGMENT_ON
from fer_hf.data.batch import FaceTensorDataset, FastImageTransform, collate_batches
from fer_hf.data.transforms import (
    AugmentationConfig,
    BatchTransform,
    collate,
    eval_transform,
    image_mode,
    train_transform,
)

logger = logging.getLogger(__name__)


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
    reprob: float = 0.0,
    remode: str = "pixel",
    recount: int = 1,
    teacher_probs: torch.Tensor | None = None,
) -> DataPipeline:
    """Datasets for `dataset`'s splits (train augmented, every split also unaugmented for evaluation).

    `per_sample` decodes and transforms each image with PIL through `with_transform`. `cpu` and `device` decode each
    split once into a uint8 tensor and apply the same transforms to whole batches, either in the DataLoader or on
    `device` after the uint8 batch has been moved there (the Trainer calls `device_transform`).

    `reprob` > 0 adds timm's `RandomErasing(reprob, mode=remode, max_count=recount)` to training images after
    normalisation, where timm's `create_transform(re_prob=...)` puts it: per image, or per batch on its device.
    `teacher_probs` (one row per training image): each training batch carries its rows as `teacher_probs`.
    """
    where = resolve_augment_on(augment_on, device)
    if where == "per_sample":
        mode = image_mode(processor)
        augment = train_transform(processor, augmentation)
        if reprob > 0:
            erase = RandomErasing(reprob, mode=remode, max_count=recount, device="cpu")
            augment = torchvision.transforms.Compose([augment, erase])
        train = dataset["train"]
        if teacher_probs is not None:
            train = train.add_column("teacher_probs", teacher_probs.tolist())
        train = train.with_transform(BatchTransform(augment, mode))
        evaluation = {split: part.with_transform(BatchTransform(eval_transform(processor), mode))
                      for split, part in dataset.items()}
        return DataPipeline(train, evaluation, collate)

    on_device = where == "device"
    erase = None
    if reprob > 0:  # timm's RandomErasing draws its noise on the device the batch is on
        erase_on = torch.device(device) if on_device else torch.device("cpu")
        erase = RandomErasing(reprob, mode=remode, max_count=recount, device=erase_on)
    transform = FastImageTransform(processor.data_config, augmentation, channels_last=channels_last, erase=erase)
    tensors = {split: FaceTensorDataset.from_dataset(part, transform, train=False, on_device=on_device)
               for split, part in dataset.items()}
    train = FaceTensorDataset(tensors["train"].faces, tensors["train"].labels, transform, train=True,
                              on_device=on_device, teacher_probs=teacher_probs)
    logger.info("Batch pipeline (%s): %s", where, transform)
    return DataPipeline(train, tensors, collate_batches, transform if on_device else None)
