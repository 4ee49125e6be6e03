"""The FER-2013 label set and split names: the one place where they are defined."""

from datasets import ClassLabel, Features, Image

# FER-2013's own order (fer2013.csv's `emotion` column, 0-6); every other label list derives from this one.
LABEL_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_LABELS = len(LABEL_NAMES)

# fer2013.csv's Usage column -> our split names (the usual protocol: validate on PublicTest, report PrivateTest).
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
SPLITS: tuple[str, ...] = ("train", "validation", "test")

IMAGE_SIZE = 48  # FER-2013 faces are 48x48 grayscale


def fer_features() -> Features:
    """The datasets schema every loader returns: a 48x48 mode-L `image` and a `label` ClassLabel."""
    return Features({"image": Image(), "label": ClassLabel(names=list(LABEL_NAMES))})


def id2label() -> dict[int, str]:
    return dict(enumerate(fer_features()["label"].names))


def label2id() -> dict[str, int]:
    return {name: i for i, name in id2label().items()}
