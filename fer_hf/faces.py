"""Reading users' photos and finding faces in them, the way FER-2013's 48x48 grayscale faces were made.

Photos come in every form a phone, a camera or the web produces: JPEG/PNG/WebP/BMP/GIF/TIFF, grayscale, RGBA,
palette, CMYK, 16-bit, EXIF-rotated, huge. `read_image` turns any of them into an upright 8-bit RGB array of bounded
size, or raises `ImageReadError` naming the file and saying how to fix it.

Faces are found with OpenCV's Haar cascade `haarcascade_frontalface_alt2.xml`, which the opencv-python(-headless) 4.x
wheel ships in `cv2.data`: nothing is downloaded at run time. Of the bundled frontal cascades, alt2 gives far fewer
false faces on clothing and texture than `_default` (checked on scikit-image's sample photos). OpenCV 5.x dropped
`CascadeClassifier` and the bundled cascades, and its DNN detector YuNet needs an ONNX model file that no wheel
carries, so OpenCV is pinned below 5. FER-2013's own faces were cropped with OpenCV's face detector as well.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_hf.labels import IMAGE_SIZE

logger = logging.getLogger(__name__)

# Suffixes collected from a folder; anything else there (.txt, .json, .DS_Store, videos) is skipped, not an error.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm",
                            ".pnm", ".jfif", ".avif", ".heic", ".heif"})
DEFAULT_MAX_MEGAPIXELS = 50.0  # a decoded 50 MP photo is 150 MB of RGB; larger JPEGs are decoded at 1/2, 1/4 or 1/8
WORKING_SIDE = 4096  # longest side kept after decoding: enough for a 48x48 crop of a face 1% of the width
DETECTION_SIDE = 1024  # the cascade runs on a copy this size: seconds on a 48 MP photo become milliseconds
MIN_FACE_SIZE = 30  # pixels at detection scale; the cascade's own window is 24x24
ORIENTATION_TAG = 0x0112
CASCADE = "haarcascade_frontalface_alt2.xml"


class ImageReadError(ValueError):
    """A file that cannot be used as an image: the message names it and says how to fix it."""


@dataclass
class LoadedImage:
    """An upright 8-bit RGB photo, possibly downscaled; `scale` maps its pixels back to the file's (upright) pixels."""

    path: str
    rgb: np.ndarray
    original_size: tuple[int, int]  # (width, height) of the file after EXIF rotation

    @classmethod
    def from_array(cls, rgb: np.ndarray, name: str) -> LoadedImage:
        """A decoded RGB frame (e.g. from a video), downscaled like a photo."""
        height, width = rgb.shape[:2]
        if max(height, width) > WORKING_SIDE:
            rgb = resize_to_side(rgb, WORKING_SIDE)
        return cls(path=name, rgb=rgb, original_size=(width, height))

    @property
    def scale(self) -> float:
        return self.original_size[0] / self.rgb.shape[1]

    @property
    def gray(self) -> np.ndarray:
        import cv2

        return cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)  # ITU-R 601 luma, as PIL's convert("L")


def list_images(folder: str | os.PathLike) -> tuple[list[Path], int]:
    """Image files under `folder` (recursively, sorted, hidden files skipped) and how many other files were skipped."""
    images, skipped = [], 0
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            skipped += 1
    return images, skipped


def read_image(path: str | os.PathLike, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> LoadedImage:
    """Decode any photo into an upright RGB uint8 array with at most `WORKING_SIDE` pixels on its longest side.

    Raises:
        ImageReadError: missing, empty, unreadable, truncated or too large file (the message says what to do).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder; check the path.")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image.")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); copy or download it again.")
    max_pixels = int(max_megapixels * 1e6)
    try:
        with warnings.catch_warnings():
            # Pillow warns about large images at open(); the size is checked (and JPEGs reduced) just below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            if width * height > max_pixels:
                _reduce_on_decode(image, path, max_pixels, max_megapixels)
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos are stored sideways with an Orientation tag
            rgb = _to_rgb8(image)
    except ImageReadError:
        raise
    except PermissionError as err:
        raise ImageReadError(f"{path}: permission denied; make the file readable (chmod) or copy it.") from err
    except Image.DecompressionBombError as err:
        raise ImageReadError(
            f"{path}: too large to decode safely ({err}). Downscale it (e.g. to 4000 px on the long side)."
        ) from err
    except UnidentifiedImageError as err:
        hint = ("HEIC/HEIF photos need `pip install pillow-heif`, or export them as JPEG"
                if path.suffix.lower() in {".heic", ".heif"} else
                "supported: JPEG, PNG, WebP, BMP, GIF, TIFF; convert it to PNG or JPEG")
        raise ImageReadError(f"{path}: not an image Pillow can read ({hint}).") from err
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        # Pillow reports a cut-off download as OSError("image file is truncated"), broken chunks as SyntaxError.
        raise ImageReadError(
            f"{path}: the image is truncated or corrupt ({type(err).__name__}: {err}); download or export it again."
        ) from err
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: width and height swap
        width, height = height, width
    if max(rgb.shape[:2]) > WORKING_SIDE:
        rgb = resize_to_side(rgb, WORKING_SIDE)
    return LoadedImage(path=str(path), rgb=rgb, original_size=(width, height))


def _reduce_on_decode(image: Image.Image, path: Path, max_pixels: int, max_megapixels: float) -> None:
    """Decode a huge JPEG at 1/2, 1/4 or 1/8 scale (libjpeg does it while decoding: memory stays bounded)."""
    width, height = image.size
    if image.format == "JPEG":
        for scale in (2, 4, 8):
            size = (-(-width // scale), -(-height // scale))
            if size[0] * size[1] <= max_pixels:
                image.draft("RGB", size)  # libjpeg decodes at the smallest scale at least this size: exactly 1/scale
                logger.info("%s: %dx%d decoded at %dx%d to bound memory", path, width, height, *image.size)
                return
    raise ImageReadError(
        f"{path}: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is over the {max_megapixels:g} MP limit "
        f"for decoding{' this format' if image.format != 'JPEG' else ''}; downscale it (e.g. to 4000 px on the long "
        "side) or raise --max_megapixels."
    )


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to RGB uint8: 16-bit and float scaled (not clipped), transparency composited on white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16"):
            values = values / 257.0  # 0-65535 -> 0-255; Pillow's convert("L") would clip everything above 255
        elif values.size and (values.max() > 255 or values.min() < 0 or image.mode == "F"):
            low, high = float(values.min()), float(values.max())
            values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # A transparent background is often black underneath; put it on white, as a viewer shows it.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_to_side(array: np.ndarray, side: int) -> np.ndarray:
    import cv2

    height, width = array.shape[:2]
    factor = side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)  # area averaging: no aliasing when shrinking


# ----------------------------------------------------------------------------------------------------- faces


Box = tuple[int, int, int, int]  # x, y, width, height


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (alt2), shipped inside the opencv-python(-headless) 4.x wheel."""

    def __init__(self, min_neighbors: int = 5, scale_factor: float = 1.1, min_face_size: int = MIN_FACE_SIZE):
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
    return Image.fromarray(gray).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
