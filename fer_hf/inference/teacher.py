"""Distillation targets: saved models' class probabilities on every training image, computed once and kept.

The teachers run through the same path as `fer_hf.evaluate --model A B --tta MODE` (`ensemble_probabilities`: each
model's logits averaged over its views, then the models' probabilities averaged), each at its own input size. The
result is saved in the run folder with what it was computed from (the teachers' weights, the views, the images'
pixels), so a resumed run reads it back instead of computing it again, and a changed teacher is never read stale.
(The teachers' label names need no check here: `load_classifier` refuses a model whose labels are not FER-2013's.)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import safetensors.numpy
from datasets import Dataset
from PIL import Image

from fer_hf.hashing import images_sha256, weights_sha256
from fer_hf.inference.classifier import ensemble_probabilities, load_classifier
from fer_hf.inference.preprocess import check_tta
from fer_hf.model_files import read_model_config

logger = logging.getLogger(__name__)


def _identity(folders: Sequence[str | os.PathLike], images: Sequence[Image.Image], tta: str) -> dict:
    """What the targets depend on: the teachers' weights (not their paths), the views, and the images' pixels."""
    weights = []
    for folder in folders:
        read_model_config(folder)  # names a folder that is no model before anything runs
        weights.append(weights_sha256(folder) or str(folder))
    return {"weights_sha256": weights, "tta": tta, "images": len(images), "pixels_sha256": images_sha256(images)}


def teacher_probabilities(
    folders: Sequence[str | os.PathLike], split: Dataset, *, tta: str = "tencrop", batch_size: int = 128,
    cache: str | os.PathLike | None = None, backend: str = "auto",
) -> np.ndarray:
    """(len(split), num_labels) float32: the teachers' averaged probabilities on `split`'s images, in its order.

    `cache`: a file to read them from when it was computed from the same teachers, views and images, and to save them
    to otherwise."""
    check_tta(tta)
    images = list(split["image"])  # decoded once: hashed for the identity, then run through the teachers
    identity = _identity(folders, images, tta)
    cache = Path(cache) if cache is not None else None
    if cache is not None and cache.is_file():
        try:
            with safetensors.safe_open(cache, "np") as saved:
                if json.loads(saved.metadata().get("identity", "null")) == identity:
                    logger.info("Teacher targets: read back from %s", cache)
                    return saved.get_tensor("probs")
            # Resuming a run against other targets than it started with changes what it learns: said, not silent.
            logger.warning("%s was computed from other teachers, views or images than these; computing the teacher "
                           "targets again.", cache)
        except Exception as err:  # a damaged file is computed again
            logger.warning("%s is unreadable (%s); computing the teacher targets again.", cache, err)
    classifiers = [load_classifier(folder, backend=backend) for folder in folders]
    logger.info("Teacher targets: %s on %d training images, TTA %s (%s)", " + ".join(map(str, folders)), len(split),
                tta, classifiers[0].backend)
    probs = ensemble_probabilities(classifiers, images, tta, batch_size, progress="teacher targets")
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    if cache is not None:
        partial = cache.with_name(f".{cache.name}.{os.getpid()}")
        safetensors.numpy.save_file({"probs": probs}, partial, metadata={"identity": json.dumps(identity)})
        os.replace(partial, cache)
    agreement = float((probs.argmax(-1) == np.asarray(split["label"])).mean())
    logger.info("Teacher targets: the teachers agree with %.2f%% of the training labels.", 100 * agreement)
    return probs
