"""fer_hf.inference.preprocess: the numpy/Pillow batch preprocessing equals timm's own evaluation transform (and
torchvision's TenCrop) to the bit, on real faces and on photos of other shapes and modes, for every crop mode."""

from __future__ import annotations

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from torchvision import transforms as T

from fer_hf.inference.preprocess import TENCROP_FRACTION, FacePreprocessor


def _config(size, crop_pct, crop_mode, interpolation="bicubic", channels=3, mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5)):
    return {"input_size": (channels, size, size), "interpolation": interpolation, "mean": mean[:channels],
            "std": std[:channels], "crop_pct": crop_pct, "crop_mode": crop_mode}


IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
CONFIGS = [
    _config(96, 1.0, "center"),  # the shipped model
    _config(64, 1.0, "center", "bicubic"),
    _config(48, 0.95, "center", "bilinear", **IMAGENET),  # timm's resnet a1 recipe at FER size
    _config(224, 0.875, "center", "bilinear", **IMAGENET),
    _config(112, 0.9, "squash", "bicubic", **IMAGENET),
    _config(96, 1.0, "border", "bilinear", **IMAGENET),
    _config(72, 1.15, "center", "bicubic", **IMAGENET),  # crop_pct > 1: the crop pads with black
    _config(72, 1.15, "border", "bicubic", **IMAGENET),  # ... or with the mean colour
    _config(64, 1.0, "center", "lanczos", channels=1, mean=(0.5,), std=(0.25,)),  # a grayscale-input backbone
    {**_config(56, 0.9, "center", "bilinear", **IMAGENET), "crop_border_pixels": 3},  # timm's TrimBorder first
]


def _timm_reference(config, faces):
    transform = timm.data.create_transform(**config, is_training=False)
    mode = "L" if config["input_size"][0] == 1 else "RGB"
    return torch.stack([transform(face.convert(mode)) for face in faces]).numpy()


@pytest.fixture(scope="module")
def faces(fer2013):
    """Real PrivateTest faces (48x48, mode L) and photos of other shapes and modes."""
    real = list(fer2013["test"].select(range(40))["image"])
    rng = np.random.default_rng(0)
    others = [Image.fromarray(rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)),  # RGB, taller than wide
              Image.fromarray(rng.integers(0, 256, (30, 90), dtype=np.uint8)),  # L, wide
              Image.fromarray(rng.integers(0, 256, (50, 50, 4), dtype=np.uint8), "RGBA"),
              real[0].convert("P")]
    return real + others


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['input_size'][1]}px-{c['crop_mode']}-"
                         f"{c['crop_pct']}-{c['interpolation']}-{c['input_size'][0]}ch-"
                         f"border{c.get('crop_border_pixels', 0)}")
def test_equals_timms_evaluation_transform_to_the_bit(config, faces):
    ours = FacePreprocessor(config)(faces)
    assert ours.shape == (len(faces), 1, *config["input_size"]) and ours.dtype == np.float32
    reference = _timm_reference(config, faces)
    assert np.array_equal(ours[:, 0], reference), np.abs(ours[:, 0] - reference).max()


def test_flip_and_ten_crop_views(faces):
    config = CONFIGS[0]
    preprocess = FacePreprocessor(config)
    plain = preprocess(faces)
    flipped = preprocess(faces, "hflip")
    assert np.array_equal(flipped[:, 0], plain[:, 0]) and np.array_equal(flipped[:, 1], plain[:, 0, ..., ::-1])
    size = config["input_size"][-1]
    resized = size + 2 * round((size / TENCROP_FRACTION - size) / 2)
    reference_transform = T.Compose([T.Resize((resized, resized), interpolation=T.InterpolationMode.BICUBIC),
                                     T.ToTensor(), T.Normalize(config["mean"], config["std"]), T.TenCrop(size)])
    reference = np.stack([torch.stack(reference_transform(face.convert("RGB"))).numpy() for face in faces])
    ten = preprocess(faces, "tencrop")
    assert ten.shape == (len(faces), 10, 3, size, size)
    assert np.array_equal(ten, reference)
    assert np.array_equal(ten[:, 5], ten[:, 1, ..., ::-1])  # the mirrored top-left is the top-right, mirrored


def test_empty_batches_and_bad_modes():
    preprocess = FacePreprocessor(CONFIGS[0])
    assert preprocess([], "none").shape == (0, 1, 3, 96, 96)
    assert preprocess([], "tencrop").shape == (0, 10, 3, 96, 96)
    with pytest.raises(ValueError, match="tta must be one of"):
        preprocess([], "fivecrop")
    with pytest.raises(ValueError, match="interpolation"):
        FacePreprocessor({**CONFIGS[0], "interpolation": "random"})


@pytest.mark.parametrize("config", [*CONFIGS, _config(64, 0.9, "center", "nearest"), _config(40, 1.0, "border", "box"),
                                    _config(52, 0.95, "center", "hamming", **IMAGENET)],
                         ids=lambda c: f"{c['input_size'][1]}px-{c['crop_mode']}-{c['interpolation']}")
def test_a_batch_of_one_size_resized_together_equals_timm_and_each_face_alone(config, faces, monkeypatch):
    """Faces of one size and mode (a detector's crops) go through Pillow as one stack (two resize calls at most);
    every face comes out as timm's transform and as the same face prepared alone give it, plain and ten-crop: real
    faces, a wide RGB stack, stacks where one side is already right (124 high: squash-112 at crop_pct 0.9 resizes
    only the width; 124 wide: only the height), and slivers over 100 times taller than wide (which Pillow resamples
    height first: they go one by one)."""
    preprocess = FacePreprocessor(config)
    rng = np.random.default_rng(1)
    batches = [faces[:40], [Image.fromarray(rng.integers(0, 256, (37, 70, 3), dtype=np.uint8)) for _ in range(5)],
               [Image.fromarray(rng.integers(0, 256, (124, 70), dtype=np.uint8)) for _ in range(3)],
               [Image.fromarray(rng.integers(0, 256, (70, 124), dtype=np.uint8)) for _ in range(3)]]
    if config["crop_mode"] != "border":  # which would fit the 850 px side and leave the 8 px one no pixel
        batches.append([Image.fromarray(rng.integers(0, 256, (850, 8), dtype=np.uint8)) for _ in range(4)])
    resize = Image.Image.resize
    calls = []
    monkeypatch.setattr(Image.Image, "resize", lambda *args, **kwargs: calls.append(1) or resize(*args, **kwargs))
    for batch in batches:
        calls.clear()
        together = preprocess.prepare(batch)
        assert len(calls) <= (2 if batch[0].size[1] <= 100 * batch[0].size[0] else 2 * len(batch))
        assert np.array_equal(together, np.concatenate([preprocess.prepare([face]) for face in batch]))
        assert np.array_equal(preprocess.finish(together)[:, 0], _timm_reference(config, batch))
        tencrop = preprocess.prepare(batch, "tencrop")
        assert np.array_equal(tencrop, np.concatenate([preprocess.prepare([face], "tencrop") for face in batch]))


def test_ten_crop_trims_the_border_first_as_the_plain_view_does(faces):
    """timm's TrimBorder (`crop_border_pixels`) comes before every resize, ten-crop's too."""
    config = {**_config(64, 1.0, "center"), "crop_border_pixels": 4}
    side = 64 + 2 * round((64 / TENCROP_FRACTION - 64) / 2)
    reference = T.Compose([timm.data.transforms.TrimBorder(4),
                           T.Resize((side, side), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize(config["mean"], config["std"]), T.TenCrop(64)])
    expected = np.stack([torch.stack(reference(face.convert("RGB"))).numpy() for face in faces[:10]])
    assert np.array_equal(FacePreprocessor(config)(faces[:10], "tencrop"), expected)
