"""Finding faces in photos and cropping them the way FER-2013's 48x48 grayscale faces were made.

Faces are found with OpenCV's Haar cascade `haarcascade_frontalface_alt2.xml`, which the opencv-python(-headless) 4.x
wheel ships in `cv2.data`: nothing is downloaded at run time. Of the bundled frontal cascades, alt2 gives far fewer
false faces on clothing and texture than `_default` (checked on scikit-image's sample photos). OpenCV 5.x dropped
`CascadeClassifier` and the bundled cascades, and its DNN detector YuNet needs an ONNX model file that no wheel
carries, so OpenCV is pinned below 5. FER-2013's own faces were cropped with OpenCV's face detector as well.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from fer_hf.inference.images import resize_to_side
from fer_hf.labels import IMAGE_SIZE

logger = logging.getLogger(__name__)

DETECTION_SIDE = 1024  # the cascade runs on a copy this size: seconds on a 48 MP photo become milliseconds
MIN_FACE_SIZE = 30  # pixels at detection scale; the cascade's own window is 24x24
# Each scale of the detector's image pyramid is this much larger than the last. 1.2 finds the same faces in about
# 60% of the time on the test photos, with boxes a few pixels different (so different crops and scores).
SCALE_FACTOR = 1.1
CASCADE = "haarcascade_frontalface_alt2.xml"

Box = tuple[int, int, int, int]  # x, y, width, height


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (alt2), shipped inside the opencv-python(-headless) 4.x wheel."""

    def __init__(self, min_neighbors: int = 5, scale_factor: float = SCALE_FACTOR, min_face_size: int = MIN_FACE_SIZE):
        if not scale_factor > 1:
            raise ValueError(f"the detector's scale factor must be above 1, got {scale_factor}.")
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            raise ImportError(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5); install "
                "`opencv-python-headless>=4.8,<5`."
            )
        cascade_file = Path(cv2.data.haarcascades) / CASCADE
        self.cascade = cv2.CascadeClassifier(str(cascade_file))
        if self.cascade.empty():
            raise OSError(f"{cascade_file}: could not load OpenCV's face cascade; reinstall opencv-python-headless.")
        self.min_neighbors = min_neighbors
        self.scale_factor = scale_factor
        self.min_face_size = min_face_size

    def detect(self, gray: np.ndarray) -> list[Box]:
        """Face boxes in `gray`'s pixel coordinates, left to right."""
        import cv2

        factor = min(1.0, DETECTION_SIDE / max(gray.shape))
        small = resize_to_side(gray, DETECTION_SIDE) if factor < 1 else gray
        small = cv2.equalizeHist(small)  # the cascade was trained on contrast-normalised faces; helps dim photos
        found = self.cascade.detectMultiScale(
            small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_face_size, self.min_face_size),
        )
        boxes = [tuple(int(round(v / factor)) for v in box) for box in np.asarray(found).reshape(-1, 4)]
        return sorted(_drop_nested(boxes), key=lambda b: (b[0], b[1]))


def _drop_nested(boxes: list[Box]) -> list[Box]:
    """The cascade sometimes reports a face and a part of it (an eye region); keep the larger box."""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
        x, y, w, h = box
        if all(_overlap(box, other) < 0.6 * w * h for other in kept):
            kept.append(box)
    return kept


def _overlap(a: Box, b: Box) -> int:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)


def crop_face(gray: np.ndarray, box: Box, margin: float = 0.2, size: int = IMAGE_SIZE) -> Image.Image:
    """A square crop around `box`, grown by `margin` of its size on each side, as a `size`x`size` mode-L image.

    FER-2013 faces include the forehead and chin; the cascade's box stops at the brows and mouth, hence the margin.
    Where the grown square leaves the photo the border pixels are repeated, so the face stays centred.
    """
    import cv2

    x, y, w, h = box
    side = round(max(w, h) * (1 + 2 * margin))
    left, top = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    pad = max(0, -left, -top, left + side - gray.shape[1], top + side - gray.shape[0])
    if pad:
        gray = np.pad(gray, pad, mode="edge")
        left, top = left + pad, top + pad
    face = gray[top: top + side, left: left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return Image.fromarray(cv2.resize(face, (size, size), interpolation=interpolation))  # uint8 2-D: mode L


def whole_image_face(gray: np.ndarray, size: int = IMAGE_SIZE) -> Image.Image:
    """The whole image as a `size`x`size` face (`--no_detect`: the input already is a FER-style crop)."""
    face = Image.fromarray(gray)
    # Pillow's resize to the same size is a copy: skipped for the crops that already are FER's size.
    return face if face.size == (size, size) else face.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
