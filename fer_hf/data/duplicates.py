"""Near-duplicate faces across splits, by a difference hash (dHash): two faces whose 64-bit hashes differ in a few
bits are the same photo up to compression, a small shift or a brightness change.

Blank or nearly flat images all hash to (almost) zero and so look alike; `is_flat` marks them for the caller to set
aside.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

HASH_SIZE = 8  # 8 x 8 = 64 bits, one uint64 per face


def dhash(faces: np.ndarray) -> np.ndarray:
    """(N,) uint64 hashes of (N, H, W) grayscale faces: is each pixel of the face area-resized to 8 x 9 brighter than
    its left neighbour."""
    x = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.float32))[:, None]
    small = F.adaptive_avg_pool2d(x, (HASH_SIZE, HASH_SIZE + 1))[:, 0]
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(faces), -1).numpy()
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


def is_flat(faces: np.ndarray, min_std: float = 2.0) -> np.ndarray:
    """Faces with (almost) no contrast, whose hashes mean nothing."""
    return np.asarray(faces, dtype=np.float32).reshape(len(faces), -1).std(axis=1) < min_std


def nearest_twins(query: np.ndarray, reference: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the index of the closest reference hash and their Hamming distance (in bits)."""
    index = np.full(len(query), -1, np.int64)
    distance = np.full(len(query), HASH_SIZE * HASH_SIZE + 1, np.int64)  # "no twin" when there is no reference
    if len(reference) == 0:
        return index, distance
    for start in range(0, len(query), chunk):
        bits = np.bitwise_count(query[start:start + chunk, None] ^ reference[None, :])
        index[start:start + chunk] = bits.argmin(axis=1)
        distance[start:start + chunk] = bits.min(axis=1)
    return index, distance
