"""The batch pipeline (fer_hf.fast_transforms) against timm's per-image transforms it replaces.

Evaluation must match `processor.val_transforms` image for image; training must draw crops and flips from the same
distributions as timm's RandomResizedCropAndInterpolation + RandomHorizontalFlip and resample them as PIL does.
"""

from __future__ import annotations

import io
import json
import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from datasets import Dataset, DatasetDict
from PIL import Image
from scipy import stats
from timm.data.transforms import RandomResizedCropAndInterpolation

from fer_hf.data.batch import FaceTensorDataset, FastImageTransform, collate_batches, sample_crop_boxes
from fer_hf.data.load import decode_faces
from fer_hf.data.pipeline import build_pipeline
from fer_hf.data.synthetic import make_faces
from fer_hf.data.transforms import AugmentationConfig, eval_transform, image_mode, train_transform
from fer_hf.labels import fer_features
from fer_hf.modeling import build_model, image_processor_for


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return make_faces(48, seed=5)[0]


def processor_for(size: int, crop_pct: float = 1.0, in_chans: int = 3):
    return image_processor_for(build_model("resnet18", pretrained=False, image_size=size, crop_pct=crop_pct,
                                           in_chans=in_chans).config)


def grey_levels(pixels: torch.Tensor, processor) -> torch.Tensor:
    """Undo the normalisation: model input -> 0..255 grey levels."""
    config = processor.data_config
    std = torch.tensor(config["std"]).view(-1, 1, 1)
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    return (pixels * std + mean) * 255


def fast_batch(transform: FastImageTransform, faces: np.ndarray, **params) -> torch.Tensor:
    batch = {"pixel_values": torch.from_numpy(faces), "labels": torch.zeros(len(faces), dtype=torch.long), **params}
    return transform(batch)["pixel_values"]


# ------------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    ("size", "crop_pct", "in_chans"),
    [(48, 1.0, 3), (64, 0.875, 3), (112, 1.0, 3), (48, 0.9, 1), (32, 1.0, 3)],
)
def test_eval_matches_the_processor_transform(faces, size, crop_pct, in_chans):
    processor = processor_for(size, crop_pct, in_chans)
    mode = image_mode(processor)
    expected = torch.stack([eval_transform(processor)(Image.fromarray(face).convert(mode)) for face in faces])
    got = fast_batch(FastImageTransform(processor.data_config), faces)
    assert got.shape == expected.shape == (len(faces), in_chans, size, size)
    assert got.dtype == torch.float32
    diff = (grey_levels(got, processor) - grey_levels(expected, processor)).abs()
    # PIL works in fixed point and rounds to 8 bits after each pass; a rounding tie may land one level apart.
    assert diff.max() <= 1.001
    assert (diff > 0.01).float().mean() < 0.005


def test_eval_at_native_size_is_exact(faces):
    processor = processor_for(48, 1.0)
    got = grey_levels(fast_batch(FastImageTransform(processor.data_config), faces), processor)
    assert torch.allclose(got, torch.from_numpy(faces).float()[:, None].expand_as(got), atol=1e-3)


# ---------------------------------------------------------------------------------------------- training: pixels


@pytest.mark.parametrize("size", [48, 112])
def test_train_resampling_matches_pil_for_the_same_boxes(faces, size):
    processor = processor_for(size)
    transform = FastImageTransform(processor.data_config, AugmentationConfig())
    torch.manual_seed(0)
    params = transform.sample(len(faces), 48, 48)
    got = grey_levels(fast_batch(transform, faces, **params), processor)[:, 0]
    for face, (top, left, height, width), flip, mine in zip(faces, params["crop"].tolist(), params["flip"].tolist(),
                                                            got, strict=True):
        image = TF.resized_crop(Image.fromarray(face), top, left, height, width, [size, size],
                                TF.InterpolationMode.BICUBIC)
        expected = np.asarray(TF.hflip(image) if flip else image, dtype=np.float32)
        assert np.abs(mine.numpy() - expected).max() <= 1.001


def test_train_downscaling_is_close_to_pil(faces):
    # Below 48 px a crop can shrink; Pillow then sometimes runs its vertical pass first (we always run the
    # horizontal one first), so a few pixels differ by a few grey levels after 8-bit rounding.
    processor = processor_for(32)
    transform = FastImageTransform(processor.data_config, AugmentationConfig())
    torch.manual_seed(1)
    params = transform.sample(len(faces), 48, 48)
    got = grey_levels(fast_batch(transform, faces, **params), processor)[:, 0]
    expected = np.stack([
        np.asarray(TF.resized_crop(Image.fromarray(face), *box, [32, 32], TF.InterpolationMode.BICUBIC), np.float32)
        for face, box in zip(faces, params["crop"].tolist(), strict=True)
    ])
    flip = params["flip"].numpy()
    expected[flip] = expected[flip][..., ::-1]
    diff = np.abs(got.numpy() - expected)
    assert diff.mean() < 0.05
    assert diff.max() <= 12


def test_flip_mirrors_the_same_crop(faces):
    processor = processor_for(48)
    transform = FastImageTransform(processor.data_config, AugmentationConfig())
    crop = sample_crop_boxes(len(faces), 48, 48, (0.3, 1.0), (3 / 4, 4 / 3))
    plain = fast_batch(transform, faces, crop=crop, flip=torch.zeros(len(faces), dtype=torch.bool))
    mirrored = fast_batch(transform, faces, crop=crop, flip=torch.ones(len(faces), dtype=torch.bool))
    assert torch.equal(mirrored, plain.flip(-1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_shapes_dtype_range_and_layout(faces, channels_last):
    processor = processor_for(64)
    transform = FastImageTransform(processor.data_config, AugmentationConfig(), channels_last=channels_last)
    out = fast_batch(transform, faces, **transform.sample(len(faces), 48, 48))
    assert out.shape == (len(faces), 3, 64, 64) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    mean = torch.tensor(processor.data_config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(processor.data_config["std"]).view(1, -1, 1, 1)
    assert (out >= (0 - mean) / std - 1e-5).all() and (out <= (1 - mean) / std + 1e-5).all()
    grey = out * std + mean
    assert torch.allclose(grey[:, 0], grey[:, 2], atol=1e-6)  # the grey face in every channel


def test_unsupported_interpolation_says_what_to_do():
    config = {**processor_for(48).data_config, "interpolation": "nearest"}
    with pytest.raises(ValueError, match="per_sample"):
        FastImageTransform(config)


# ------------------------------------------------------------------------------------ training: distributions


def timm_boxes(count: int, scale, ratio, seed: int) -> np.ndarray:
    random.seed(seed)
    image = Image.new("L", (48, 48))
    return np.array([RandomResizedCropAndInterpolation.get_params(image, scale, ratio) for _ in range(count)])


@pytest.mark.parametrize(("scale", "ratio"), [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (3 / 4, 4 / 3)),
                                              ((0.9, 1.0), (1 / 3, 3.0))])
def test_crop_boxes_are_distributed_as_timm_draws_them(scale, ratio):
    count = 20000
    torch.manual_seed(0)
    ours = sample_crop_boxes(count, 48, 48, scale, ratio).numpy()
    theirs = timm_boxes(count, scale, ratio, seed=0)
    for boxes in (ours, theirs):
        top, left, height, width = boxes.T
        assert (height >= 1).all() and (width >= 1).all()
        assert (top >= 0).all() and (left >= 0).all() and (top + height <= 48).all() and (left + width <= 48).all()

    def features(boxes):
        top, left, height, width = boxes.T.astype(float)
        return {
            "area": height * width / 48**2,
            "log_aspect": np.log(width / height),
            "top": (top + 0.5) / (48 - height + 1),  # position within the free range, in (0, 1)
            "left": (left + 0.5) / (48 - width + 1),
        }

    ours_f, theirs_f = features(ours), features(theirs)
    for name in ours_f:
        assert stats.ks_2samp(ours_f[name], theirs_f[name]).pvalue > 1e-3, name
    # The centre-crop fallback (no fitting draw in 10 attempts) happens as often.
    fallback = [np.mean(np.all(b == b[np.argmax(b[:, 2] * b[:, 3])], axis=1)) for b in (ours, theirs)]
    assert abs(fallback[0] - fallback[1]) < 4 * math.sqrt(max(fallback[1], 1e-4) / count) + 1e-3


@pytest.mark.parametrize("hflip", [0.0, 0.5, 1.0])
def test_flip_rate(hflip):
    transform = FastImageTransform(processor_for(48).data_config, AugmentationConfig(hflip=hflip))
    torch.manual_seed(0)
    rate = transform.sample(20000, 48, 48)["flip"].float().mean().item()
    assert abs(rate - hflip) <= 4 * math.sqrt(hflip * (1 - hflip) / 20000)


def test_augmented_images_match_the_per_sample_transform_in_distribution(faces):
    """One face augmented many times by each path: the per-pixel mean and spread agree within sampling noise."""
    processor = processor_for(48)
    augmentation = AugmentationConfig(crop_scale=(0.08, 1.0))
    count = 3000
    face = faces[0]
    random.seed(0)
    torch.manual_seed(0)
    timm_transform = train_transform(processor, augmentation)
    theirs = torch.stack([timm_transform(Image.fromarray(face).convert("RGB")) for _ in range(count)])[:, 0]
    transform = FastImageTransform(processor.data_config, augmentation)
    repeated = np.repeat(face[None], count, axis=0)
    ours = fast_batch(transform, repeated, **transform.sample(count, 48, 48))[:, 0]
    spread = theirs.std(0).clamp(min=0.05)
    mean_gap = (ours.mean(0) - theirs.mean(0)).abs() / spread
    std_ratio = ours.std(0) / theirs.std(0).clamp(min=1e-3)
    # Two means of 3000 draws differ by about 0.026 spreads; the max over 2304 pixels stays below ~0.12.
    assert mean_gap.mean() < 0.04 and mean_gap.max() < 0.15
    assert 0.9 < std_ratio.median() < 1.1
    assert abs(ours.min() - theirs.min()) < 0.05 and abs(ours.max() - theirs.max()) < 0.05


# ------------------------------------------------------------------------------------------ datasets and loader


def tiny_dataset(faces: np.ndarray) -> DatasetDict:
    from fer_hf.data.load import _to_dataset

    labels = np.arange(len(faces)) % 7
    return DatasetDict({split: _to_dataset(faces, labels) for split in ("train", "validation", "test")})


def test_decode_faces_reads_pgm_png_and_index_maps(faces):
    dataset = tiny_dataset(faces)["train"]
    assert np.array_equal(decode_faces(dataset), faces)
    picked = dataset.shuffle(seed=3).select(range(10))
    assert np.array_equal(decode_faces(picked), np.stack([np.asarray(image) for image in picked["image"]]))

    def png(face):
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="PNG")
        return buffer.getvalue()

    pngs = Dataset.from_dict({"image": [{"bytes": png(face), "path": None} for face in faces[:5]], "label": [0] * 5},
                             features=fer_features())
    assert np.array_equal(decode_faces(pngs), faces[:5])


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_pipeline_batches_through_a_dataloader(faces, augment_on):
    processor = processor_for(48)
    pipeline = build_pipeline(tiny_dataset(faces), processor, AugmentationConfig(), augment_on=augment_on)
    assert (pipeline.device_transform is not None) == (augment_on == "device")
    loader = torch.utils.data.DataLoader(pipeline.train, batch_size=16, shuffle=True, collate_fn=pipeline.collate)
    torch.manual_seed(0)
    batch = next(iter(loader))
    if pipeline.device_transform is not None:
        assert batch["pixel_values"].dtype == torch.uint8 and {"crop", "flip"} <= set(batch)
        batch = pipeline.device_transform(batch)
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (16, 3, 48, 48) and batch["labels"].shape == (16,)
    evaluation = next(iter(torch.utils.data.DataLoader(pipeline.evaluation["test"], batch_size=48,
                                                       collate_fn=pipeline.collate)))
    if pipeline.device_transform is not None:
        evaluation = pipeline.device_transform(evaluation)
    expected = torch.stack([eval_transform(processor)(Image.fromarray(face).convert("RGB")) for face in faces])
    assert torch.allclose(evaluation["pixel_values"], expected, atol=1e-5)
    assert torch.equal(evaluation["labels"], torch.arange(48) % 7)
    single = collate_batches([pipeline.evaluation["test"][i] for i in range(3)])  # items stack like a batch
    assert single["pixel_values"].shape[0] == 3


def test_cpu_and_device_paths_give_identical_batches(faces):
    processor = processor_for(64)
    batches = {}
    for augment_on in ("cpu", "device"):
        pipeline = build_pipeline(tiny_dataset(faces), processor, AugmentationConfig(), augment_on=augment_on)
        torch.manual_seed(7)
        batch = pipeline.train.__getitems__(list(range(16)))
        batches[augment_on] = (pipeline.device_transform or (lambda b: b))(batch)
    assert torch.equal(batches["cpu"]["pixel_values"], batches["device"]["pixel_values"])


def test_face_tensor_dataset_checks_its_input():
    transform = FastImageTransform(processor_for(48).data_config)
    with pytest.raises(ValueError, match="uint8"):
        FaceTensorDataset(torch.zeros(4, 48, 48), torch.zeros(4), transform, train=False)


def test_real_faces_decode(fer2013):
    faces = decode_faces(fer2013["validation"])
    assert faces.shape == (3589, 48, 48) and faces.dtype == np.uint8
    assert np.array_equal(faces[0], np.asarray(fer2013["validation"][0]["image"]))


@pytest.mark.slow
def test_train_entry_point_on_the_device_path(tmp_path, monkeypatch):
    """`--augment_on device` end to end: uint8 batches reach the trainer, which finishes them on the device. On a
    CPU the process keeps the memory it frees (`fer_hf.allocator`), set once before training."""
    import fer_hf.train as train
    from conftest import TINY_TRAIN_ARGS
    from fer_hf.train import main

    kept = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: kept.append(True) or True)
    results = main([*TINY_TRAIN_ARGS, "--synthetic_train_size", "128", "--synthetic_eval_size", "64",
                    "--num_train_epochs", "1", "--augment_on", "device", "--output_dir", str(tmp_path)])
    assert 0 <= results["test_accuracy"] <= 1
    assert (tmp_path / "args.yaml").read_text().count("augment_on: device") == 1
    report = json.loads((tmp_path / "confusion_matrix_test.json").read_text())
    assert sum(map(sum, report["matrix"])) == 64  # every test image once
    assert kept == ([] if torch.cuda.is_available() else [True])  # the tiny run trains on the CPU where no GPU is


@pytest.mark.slow
def test_train_entry_point_with_torch_compile(tmp_path):
    """The opt-in `--torch_compile true` on the device path and channels_last: the compiled model trains, evaluates
    and saves weights that load back without torch.compile's `_orig_mod.` prefixes. The `aot_eager` backend (a stock
    TrainingArguments field) traces the same graphs, forward and backward, as the default `inductor` but skips its
    C++/Triton code generation, which is most of the wall time and is torch's to test, not ours."""
    from transformers import AutoModelForImageClassification

    from conftest import TINY_TRAIN_ARGS
    from fer_hf.train import main

    results = main([*TINY_TRAIN_ARGS, "--synthetic_train_size", "64", "--synthetic_eval_size", "32",
                    "--image_size", "32", "--num_train_epochs", "1", "--augment_on", "device",
                    "--channels_last", "true", "--torch_compile", "true", "--torch_compile_backend", "aot_eager",
                    "--output_dir", str(tmp_path)])
    assert 0 <= results["test_accuracy"] <= 1
    report = json.loads((tmp_path / "confusion_matrix_test.json").read_text())
    assert sum(map(sum, report["matrix"])) == 32  # every test image once
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert not any("_orig_mod" in name for name, _ in reloaded.named_parameters())
