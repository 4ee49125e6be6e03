"""SHA-256 digests of files, read a block at a time: weights and datasets run to hundreds of MB."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fer_hf.model_files import LEGACY_WEIGHTS_FILE, WEIGHTS_FILE

BLOCK_BYTES = 1 << 20


def update_from_file(digest, path: str | os.PathLike):
    """Feed the bytes of `path` to `digest` (any hashlib object); returns `digest`."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
            digest.update(block)
    return digest


def file_sha256(path: str | os.PathLike) -> str:
    return update_from_file(hashlib.sha256(), path).hexdigest()


def images_sha256(images) -> str:
    """The digest of a sequence of PIL images' pixels, modes and sizes, in order: what a model's outputs on them
    depend on, however the dataset was stored or cached."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def weights_sha256(model_dir: str | os.PathLike) -> str | None:
    """The digest of a model folder's weights file (safetensors, else the legacy .bin); None where it has neither.
    It names the weights whatever the folder is called or wherever it was copied."""
    for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        if (Path(model_dir) / name).is_file():
            return file_sha256(Path(model_dir) / name)
    return None
