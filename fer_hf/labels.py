"""The FER-2013 facts every module shares, defined once: label names, split names and how to display them, the image
size, and the image file suffixes the tools read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # datasets takes a second to import; `predict --help` and the ONNX Runtime path never need it
    from datasets import Features

# FER-2013's own order (fer2013.csv's `emotion` column, 0-6); every other label list derives from this one.
LABEL_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_LABELS = len(LABEL_NAMES)

# fer2013.csv's Usage column -> our split names (the usual protocol: validate on PublicTest, report PrivateTest).
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_TO_USAGE: dict[str, str] = {split: usage for usage, split in USAGE_TO_SPLIT.items()}

IMAGE_SIZE = 48  # FER-2013 faces are 48x48 grayscale

# Test-time augmentation: the views of a face whose logits are averaged (evaluate, predict, distillation teachers).
TtaMode = Literal["none", "hflip", "tencrop"]
TTA_MODES: tuple[str, ...] = get_args(TtaMode)

# FER+ (microsoft/FERPlus, fer2013new.csv): ten annotators per FER-2013 image voted over these columns, in this order.
FERPLUS_COLUMNS: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                                    "contempt", "unknown", "NF")
# The FER+ classes that are FER-2013 classes; contempt, unknown and NF (not a face) have no FER-2013 counterpart.
FERPLUS_TO_LABEL: dict[str, str] = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise",
                                    "sadness": "sad", "anger": "angry", "disgust": "disgust", "fear": "fear"}

# Image files the folder loader and `predict` collect; anything else in a folder (.txt, .json, .DS_Store, videos) is
# skipped, not an error.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm",
                            ".pnm", ".jfif", ".avif", ".heic", ".heif"})


def split_display_name(split: str) -> str:
    """`test` -> `test (PrivateTest)`: our split name with fer2013.csv's Usage beside it."""
    usage = SPLIT_TO_USAGE.get(split)
    return f"{split} ({usage})" if usage else split


def fer_features() -> Features:
    """The datasets schema every loader returns: a 48x48 mode-L `image` and a `label` ClassLabel."""
    from datasets import ClassLabel, Features, Image

    return Features({"image": Image(), "label": ClassLabel(names=list(LABEL_NAMES))})


def id2label() -> dict[int, str]:
    return dict(enumerate(LABEL_NAMES))


def label2id() -> dict[str, int]:
    return {name: i for i, name in id2label().items()}
