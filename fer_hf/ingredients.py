"""Training ingredients beyond the paper's recipe, each off unless its flag asks for it (`fer_hf.config`), each
timm's implementation where timm has one: mixup / cutmix (`timm.data.Mixup`, loss `SoftTargetCrossEntropy`),
class-weighted cross-entropy, layer-wise learning-rate decay (`timm.optim.param_groups_layer_decay`), a teacher's
soft targets (knowledge distillation; the targets come from `fer_hf.inference.teacher`). `FerTrainer`
applies them, and also keeps the EMA of the weights (`timm.utils.ModelEmaV3`); random erasing is a transform and
lives in the data pipeline (`fer_hf.data.pipeline`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay

from fer_hf.config import CLASS_WEIGHTING

logger = logging.getLogger(__name__)

# The power of the class frequency each `--class_weighting` scheme weights a class by.
_WEIGHTING_POWER = {"inverse": -1.0, "inverse_sqrt": -0.5}


def build_mixup(
    *, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float, label_smoothing: float,
    num_classes: int,
) -> Mixup | None:
    """timm's batch-wise Mixup / CutMix, or None when both alphas are 0. Its soft targets carry the label smoothing."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob, mode="batch",
                 label_smoothing=label_smoothing, num_classes=num_classes)


def mix_batch(mixup: Mixup, pixel_values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed images (in place) and their soft targets. Mixup pairs each image with the batch's reverse, so an odd
    batch (an epoch's last) is left unmixed, with the same smoothed one-hot targets an unmixed batch gets."""
    if len(labels) % 2:
        return pixel_values, mixup_target(labels, mixup.num_classes, 1.0, mixup.label_smoothing)
    return mixup(pixel_values, labels)


def class_weights(labels: Sequence[int] | np.ndarray, label_names: Sequence[str], scheme: str) -> torch.Tensor | None:
    """Per-class cross-entropy weights from the training labels: frequency ** -1 (`inverse`) or ** -0.5
    (`inverse_sqrt`), normalised to mean 1 over the classes; None for `none`."""
    if scheme not in CLASS_WEIGHTING:
        raise ValueError(f"class weighting must be one of {CLASS_WEIGHTING}, got {scheme!r}.")
    if scheme == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(label_names))
    missing = [name for index, name in enumerate(label_names) if counts[index] == 0]
    if missing:
        raise ValueError(f"--class_weighting {scheme}: the training split has no image of {', '.join(missing)}, so "
                         "its weight would be infinite; train on more images or use --class_weighting none.")
    weights = counts.astype(np.float64) ** _WEIGHTING_POWER[scheme]
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy against hard labels (smoothed by `label_smoothing`) or against Mixup's soft targets (already
    smoothed): timm's `SoftTargetCrossEntropy`, or torch's `cross_entropy` with `weight` where classes are weighted.

    Unweighted, both equal the Trainer's own label-smoothed loss on hard labels. Weighted, torch averages hard-label
    losses over the weights of the batch's labels and soft-target losses over the batch.
    """
    logits = logits.float()
    weight = None if class_weights is None else class_weights.to(logits.device)
    if targets.is_floating_point():
        if weight is None:
            return SoftTargetCrossEntropy()(logits, targets)
        return F.cross_entropy(logits, targets, weight=weight)
    return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)


def layer_decay_param_groups(
    model: torch.nn.Module, *, learning_rate: float, weight_decay: float, layer_decay: float
) -> list[dict]:
    """Optimizer parameter groups with layer-wise learning-rate decay, from timm's `param_groups_layer_decay` on the
    timm model inside a `TimmWrapperForImageClassification` (its `group_matcher` knows the model's blocks by their
    timm names). The head gets `learning_rate`, each block group below it `layer_decay` times the one above.

    Each group's `lr` is set here (timm's own schedulers apply `lr_scale` themselves; the Trainer's scale each group's
    initial `lr`). Weight decay follows timm: none on 1-d parameters (biases, norms) or on the model's
    `no_weight_decay()`.
    """
    backbone = getattr(model, "timm_model", model)
    no_weight_decay = getattr(backbone, "no_weight_decay", lambda: set())()
    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay,
                                      layer_decay=layer_decay)
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
    # A wrapper's own parameters outside the timm model (TimmWrapper has none) train at the full rate.
    grouped = {id(p) for group in groups for p in group["params"]}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in grouped]
    if rest:
        groups.append({"params": rest, "lr": learning_rate, "lr_scale": 1.0, "weight_decay": weight_decay})
    # Head first: the Trainer logs the first group's rate as `learning_rate`, which then follows --learning_rate.
    groups.sort(key=lambda group: -group["lr_scale"])
    scales = sorted({group["lr_scale"] for group in groups})
    logger.info("Layer-wise lr decay %s: %d layer groups, lr x %.3g (stem) .. x %.3g (head)", layer_decay,
                len(scales), scales[0], scales[-1])
    return groups


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton et al.'s soft-target term: KL(teacher || student) with both softened by `temperature`, times T^2 so
    its gradients keep their size as T changes. `teacher_probs` are probabilities (an ensemble's average has no
    logits); softening them is `softmax(log p / T)`."""
    log_student = F.log_softmax(logits.float() / temperature, dim=-1)
    teacher = teacher_probs.float()
    if temperature != 1.0:
        teacher = F.softmax(teacher.clamp_min(1e-12).log() / temperature, dim=-1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2
