"""Fast tests for the procedurally drawn FER-2013-shaped dataset."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fer_hf.data import synthetic
from fer_hf.data.synthetic import make_faces

NUM_CLASSES = 7


def test_shapes_and_dtypes() -> None:
    pixels, labels = make_faces(20, seed=0)
    assert pixels.shape == (20, 48, 48)
    assert pixels.dtype == np.uint8
    assert labels.shape == (20,)
    assert labels.dtype == np.int64
    assert labels.min() >= 0
    assert labels.max() < NUM_CLASSES


def test_empty() -> None:
    pixels, labels = make_faces(0, seed=3)
    assert pixels.shape == (0, 48, 48)
    assert labels.shape == (0,)


@pytest.mark.parametrize(("num_images", "seed"), [(-1, 0), (5, -1)])
def test_rejects_invalid_arguments(num_images: int, seed: int) -> None:
    with pytest.raises(ValueError):
        make_faces(num_images, seed=seed)


def test_deterministic() -> None:
    first = make_faces(15, seed=7)
    second = make_faces(15, seed=7)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_larger_n_extends_smaller_n(monkeypatch: pytest.MonkeyPatch) -> None:
    small_pixels, small_labels = make_faces(10, seed=5)
    large_pixels, large_labels = make_faces(40, seed=5)
    np.testing.assert_array_equal(small_pixels, large_pixels[:10])
    np.testing.assert_array_equal(small_labels, large_labels[:10])
    # Post-processing runs in chunks; chunk boundaries must not change any image.
    monkeypatch.setattr(synthetic, "_CHUNK", 3)
    chunked_pixels, chunked_labels = make_faces(40, seed=5)
    np.testing.assert_array_equal(chunked_pixels, large_pixels)
    np.testing.assert_array_equal(chunked_labels, large_labels)


def test_seeds_give_different_data() -> None:
    pixels_a, _ = make_faces(7, seed=0)
    pixels_b, _ = make_faces(7, seed=1)
    assert not np.array_equal(pixels_a, pixels_b)


def test_classes_balanced_and_all_present() -> None:
    _, labels = make_faces(7 * 6, seed=11)
    np.testing.assert_array_equal(np.bincount(labels, minlength=NUM_CLASSES), np.full(NUM_CLASSES, 6))
    # Any prefix is within one image per class of perfect balance.
    counts = np.bincount(labels[:30], minlength=NUM_CLASSES)
    assert counts.max() - counts.min() <= 1


def test_images_are_not_constant() -> None:
    pixels, _ = make_faces(28, seed=2)
    per_image_std = pixels.reshape(len(pixels), -1).std(axis=1)
    assert per_image_std.min() > 5.0
    # Distinct images, not one face repeated.
    assert len({image.tobytes() for image in pixels}) == len(pixels)


def test_class_mean_images_differ() -> None:
    pixels, labels = make_faces(7 * 20, seed=4)
    means = np.stack([pixels[labels == c].astype(np.float64).mean(axis=0) for c in range(NUM_CLASSES)])
    for a in range(NUM_CLASSES):
        for b in range(a + 1, NUM_CLASSES):
            assert np.abs(means[a] - means[b]).mean() > 1.0, (a, b)


def test_expression_alone_changes_the_face() -> None:
    # Nuisance draws do not depend on the label, so rendering one (seed, index) with every label isolates the
    # expression: all seven renderings must differ, and mostly in the eye/brow and mouth rows, not everywhere.
    canvas = synthetic._Canvas.build()
    faces = []
    for label in range(NUM_CLASSES):
        drawn = np.empty((48, 48), dtype=np.float32)
        noise = np.empty_like(drawn)
        synthetic._render(3, label, 9, canvas, drawn, noise)
        faces.append(drawn)
    for a in range(NUM_CLASSES):
        for b in range(a + 1, NUM_CLASSES):
            assert np.abs(faces[a] - faces[b]).max() > 30.0, (a, b)
    # The face outline and background are shared: corners are identical across expressions.
    corners = np.stack([face[:4, :4] for face in faces])
    np.testing.assert_array_equal(corners, np.broadcast_to(corners[0], corners.shape))


def test_generation_is_fast() -> None:
    make_faces(7, seed=0)  # warm-up (imports, first-call allocations)
    start = time.perf_counter()
    make_faces(350, seed=0)
    # ~0.5 ms per image on one core; a generous bound so loaded CI machines do not flake.
    assert time.perf_counter() - start < 3.0
