"""Model tests: random init offline, pretrained from a local timm checkpoint, clear failure when the Hub is
unreachable, and the saved folder loading with AutoModel, pipeline and timm."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from fer_hf.labels import LABEL_NAMES
from fer_hf.modeling import PretrainedWeightsUnavailableError, build_model, image_processor_for, load_timm_model


def test_random_init_uses_backbone_data_config_and_fer_labels():
    model = build_model("timm/resnet18.a1_in1k", pretrained=False, image_size=48)
    cfg = model.config.pretrained_cfg
    reference = timm.models.get_pretrained_cfg("resnet18.a1_in1k")
    assert tuple(cfg["mean"]) == reference.mean and tuple(cfg["std"]) == reference.std
    assert tuple(cfg["input_size"]) == (3, 48, 48)
    assert model.config.id2label == dict(enumerate(LABEL_NAMES))
    logits = model(torch.randn(2, 3, 48, 48)).logits
    assert logits.shape == (2, 7)


def test_default_image_size_comes_from_the_backbone():
    model = build_model("resnet50", pretrained=False)
    assert tuple(model.config.pretrained_cfg["input_size"]) == (3, 224, 224)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown timm architecture 'resnet_nope'"):
        build_model("resnet_nope", pretrained=False)


def test_pretrained_offline_fails_clearly_never_random():
    with pytest.raises(PretrainedWeightsUnavailableError, match="--pretrained false"):
        build_model("timm/resnet18.a1_in1k", pretrained=True)


@pytest.fixture(scope="module")
def local_timm_checkpoint(tmp_path_factory):
    """A checkpoint as timm saves it for the Hub (config.json + model.safetensors, 1000-class head)."""
    from timm.models._hub import save_for_hf

    folder = tmp_path_factory.mktemp("timm_resnet18")
    source = timm.create_model("resnet18", pretrained=False, pretrained_cfg_overlay={"num_classes": 1000})
    torch.manual_seed(0)
    with torch.no_grad():
        source.conv1.weight.normal_()
    save_for_hf(source, str(folder))
    return folder, source


def test_pretrained_from_local_timm_checkpoint_replaces_head(local_timm_checkpoint):
    folder, source = local_timm_checkpoint
    model = build_model(str(folder), pretrained=True, image_size=64)
    assert torch.equal(model.timm_model.conv1.weight, source.conv1.weight)  # backbone weights loaded
    assert model.timm_model.fc.out_features == 7  # 1000-class head replaced
    assert tuple(model.config.pretrained_cfg["input_size"]) == (3, 64, 64)


def test_in_chans_1_folds_rgb_weights(local_timm_checkpoint):
    folder, source = local_timm_checkpoint
    model = build_model(str(folder), pretrained=True, in_chans=1, image_size=48)
    assert model.timm_model.conv1.weight.shape[1] == 1
    assert torch.allclose(model.timm_model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert len(model.config.pretrained_cfg["mean"]) == 1
    gray = torch.rand(1, 1, 48, 48)
    assert model(gray).logits.shape == (1, 7)
    processor = image_processor_for(model.config)
    assert processor.data_config["input_size"] == (1, 48, 48)


def test_saved_folder_loads_offline_with_automodel_pipeline_and_timm(tmp_path):
    model = build_model("resnet18", pretrained=False, image_size=48).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, model(x).logits, atol=1e-6)
    assert reloaded.config.id2label[3] == "happy"

    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.data_config["input_size"] == (3, 48, 48)
    face = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48), np.uint8)).convert("RGB")
    predictions = pipeline("image-classification", model=str(tmp_path), top_k=7)(face)
    assert sorted(p["label"] for p in predictions) == sorted(LABEL_NAMES)
    assert abs(sum(p["score"] for p in predictions) - 1) < 1e-4

    timm_model = load_timm_model(tmp_path)
    with torch.no_grad():
        assert torch.allclose(timm_model(x), model(x).logits, atol=1e-6)


@pytest.mark.parametrize("size", [0, -5])
def test_image_size_must_be_positive_not_replaced_by_the_default(size):
    # 0 used to be read as "unset" and built a 224-px model; a negative size failed only at the first training step.
    with pytest.raises(ValueError, match=rf"image_size must be a positive integer .*got {size}\."):
        build_model("resnet18", pretrained=False, image_size=size)
    assert tuple(build_model("resnet18", pretrained=False, image_size=1).config.pretrained_cfg["input_size"]) == (
        3, 1, 1)
