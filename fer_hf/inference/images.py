"""Reading users' photos: every form a phone, a camera or the web produces (JPEG/PNG/WebP/BMP/GIF/TIFF, grayscale,
RGBA, palette, CMYK, 16-bit, EXIF-rotated, huge). `read_image` turns any of them into an upright 8-bit RGB array of
bounded size, or raises `ImageReadError` naming the file and saying how to fix it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from fer_hf.labels import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

DEFAULT_MAX_MEGAPIXELS = 50.0  # a decoded 50 MP photo is 150 MB of RGB; larger JPEGs are decoded at 1/2, 1/4 or 1/8
WORKING_SIDE = 4096  # longest side kept after decoding: enough for a 48x48 crop of a face 1% of the width
ORIENTATION_TAG = 0x0112


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


def list_images(folder: str | os.PathLike, unlisted: list[tuple[Path, OSError]] | None = None,
                linked: list[Path] | None = None) -> tuple[list[Path], int]:
    """Image files under `folder` (recursively, sorted, hidden files skipped) and how many other files were skipped;
    OSError where `folder` itself cannot be listed. A subfolder that cannot be listed is passed over, as Path.rglob
    does, and added to `unlisted` (with its error) when that list is given.

    Links to folders are not followed (so a link loop cannot recurse forever; each is added to `linked` when that
    list is given); a link to a file, even a broken one, is listed (read_image then names it). One `scandir` per
    folder: the file types come with the listing, where checking each path cost a tenth of a second for a folder of
    a few thousand face crops."""
    found: list[tuple[tuple[str, ...], str]] = []
    skipped = 0
    pending = [(os.fspath(folder), ())]
    while pending:
        directory, parts = pending.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except OSError as err:
            if not parts:  # the folder given itself: the caller says why it cannot be listed
                raise
            if unlisted is not None:
                unlisted.append((Path(directory), err))
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, (*parts, entry.name)))
                continue
            if entry.is_symlink():
                if os.path.isdir(entry.path):  # a link to a folder (False for a broken link or a link loop)
                    if linked is not None:
                        linked.append(Path(entry.path))
                    continue
            elif not entry.is_file(follow_symlinks=False):  # a FIFO, socket or device
                continue
            if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                found.append(((*parts, entry.name), entry.path))
            else:
                skipped += 1
    found.sort(key=lambda item: item[0])  # by path parts: a folder's files together, whatever the separators
    return [Path(path) for _, path in found], skipped


def read_image(path: str | os.PathLike, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> LoadedImage:
    """Decode any photo into an upright RGB uint8 array with at most `WORKING_SIDE` pixels on its longest side.

    Raises:
        ImageReadError: missing, empty, unreadable, truncated or too large file (the message says what to do).
    """
    path = Path(path)
    try:
        found = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageReadError(f"{path}: a loop of symbolic links (one leads back to another); fix the links.") \
                from None
        if path.is_symlink():
            raise ImageReadError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist.") from None
        if isinstance(err, FileNotFoundError):
            raise ImageReadError(f"{path}: no such file or folder; check the path.") from None
        raise ImageReadError(f"{path}: cannot be looked at ({err.strerror or err}).") from None
    if stat.S_ISDIR(found.st_mode):
        raise ImageReadError(f"{path}: is a folder, not an image.")
    if not stat.S_ISREG(found.st_mode):
        raise ImageReadError(f"{path}: not a plain file (a pipe, socket or device, e.g. standard input); save the "
                             "image to a file and pass that.")
    if found.st_size == 0 and not _has_data(path):  # /proc's files say 0 bytes and still hold some
        raise ImageReadError(f"{path}: the file is empty (0 bytes); copy or download it again.")
    max_pixels = int(max_megapixels * 1e6)
    try:
        with warnings.catch_warnings():
            # Pillow warns about large images at open(); the size is checked (and JPEGs reduced) just below instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                image = Image.open(path)
            except Image.DecompressionBombError:
                # Over twice Pillow's limit (179 MP: a 200 MP phone photo) Pillow refuses at open(), before a JPEG
                # could be decoded reduced; JPEG's own loader opens it without that check, and the size is bounded
                # below as for any other.
                if not _is_jpeg(path):
                    raise
                image = JpegImagePlugin.JpegImageFile(path)
        with image:
            width, height = image.size
            _refuse_scrambled_tiff(image, path)
            if width * height > max_pixels:
                _reduce_on_decode(image, path, max_pixels, max_megapixels)
            image.load()
            decoded = image.size
            # Phone photos are stored sideways with an EXIF Orientation tag. Pillow's TIFF loader applies the tag
            # itself (and drops it); turning such an image again would undo that.
            if image.getexif().get(ORIENTATION_TAG, 1) != 1 and not (
                image.format == "TIFF" and ORIENTATION_TAG not in getattr(image, "tag_v2", {})
            ):
                image = ImageOps.exif_transpose(image)  # a copy: only made for the photos that need turning
            rotated = image.size == decoded[::-1] != decoded
            rgb = to_rgb8(image)
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
    if rotated:  # by 90 degrees: width and height swap
        width, height = height, width
    if max(rgb.shape[:2]) > WORKING_SIDE:
        rgb = resize_to_side(rgb, WORKING_SIDE)
    return LoadedImage(path=str(path), rgb=rgb, original_size=(width, height))


# PNG chunks that change no pixel of a gray image as Pillow and OpenCV both decode it. Any other chunk (tRNS
# transparency, eXIf or a text chunk holding an EXIF orientation that Pillow applies, PLTE) sends the file to
# read_image.
_PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs",
                               b"tIME", b"bKGD"})


def read_plain_gray(
    path: str | os.PathLike, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, max_bytes: int = 1 << 20
) -> np.ndarray | None:
    """An 8-bit grayscale PNG with nothing but pixels in it (a dataset's face crop) decoded by OpenCV: the pixels
    `read_image(path).gray` gives, several times faster. None for any other file, which `read_image` then reads (and
    judges: missing, empty, corrupt, too large)."""
    import cv2

    try:
        # Non-blocking: a FIFO with no writer would otherwise hang here (it is not a plain file; read_image says so).
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        # Sized by the file: a read into a max_bytes buffer cost more than decoding a 2 KB crop.
        found = os.fstat(descriptor)
        if not stat.S_ISREG(found.st_mode) or found.st_size > max_bytes:
            return None
        data = os.read(descriptor, found.st_size + 1)  # one byte more tells a file that grew since
    except OSError:
        return None
    finally:
        os.close(descriptor)
    # IHDR (bytes 16-28): width, height, bit depth 8, colour type 0 (gray); checked before anything is decoded.
    if len(data) > max_bytes or data[:8] != b"\x89PNG\r\n\x1a\n" or data[24:26] != b"\x08\x00":
        return None
    width, height = struct.unpack(">II", data[16:24])
    if max(width, height) > WORKING_SIDE or width * height > max_megapixels * 1e6:
        return None
    at = 8
    while at + 12 <= len(data):  # every chunk known and whole (its CRC right), the last one IEND at the file's end
        length, kind = struct.unpack(">I4s", data[at: at + 8])
        end = at + 12 + length
        if kind not in _PLAIN_PNG_CHUNKS or end > len(data) \
                or zlib.crc32(data[at + 4: end - 4]) != struct.unpack(">I", data[end - 4: end])[0]:
            return None
        if kind == b"IEND":
            break
        at = end
    else:
        return None
    if end != len(data):
        return None
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if gray is None or gray.ndim != 2 or gray.dtype != np.uint8 or gray.shape != (height, width):
        return None
    return gray


# Modes whose sideways-stored TIFFs (EXIF orientation 5-8) Pillow 13 decodes correctly; for the others its TIFF
# loader returns scrambled pixels (found by tests/test_hostile_inputs.py).
_TIFF_MODES_ROTATED_RIGHT = {"RGB", "LA", "1", "I", "F"}


def _refuse_scrambled_tiff(image: Image.Image, path: Path) -> None:
    if image.format != "TIFF" or image.mode in _TIFF_MODES_ROTATED_RIGHT:
        return
    orientation = getattr(image, "tag_v2", {}).get(ORIENTATION_TAG, 1)
    if orientation in (5, 6, 7, 8):
        import PIL

        raise ImageReadError(
            f"{path}: a {image.mode} TIFF stored sideways (EXIF orientation {orientation}), which Pillow "
            f"{PIL.__version__} decodes into scrambled pixels; save it as PNG or JPEG first."
        )


def _has_data(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return bool(file.read(1))
    except OSError:
        return True  # said by the decoder below, with its reason


def _is_jpeg(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(3) == b"\xff\xd8\xff"


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


WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})  # Pillow's modes of more than 8 bits a pixel


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to RGB uint8: 16-bit and float scaled (not clipped), transparency composited on white.
    32-bit integers and floats already within 0-255 are kept, floats within 0-1 (the usual float image) scaled by 255,
    any other range stretched onto 0-255."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16"):
            values = values / 257.0  # 0-65535 -> 0-255; Pillow's convert("L") would clip everything above 255
        elif values.size:
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
            low, high = float(values.min()), float(values.max())
            if image.mode == "F" and low >= 0 and high <= 1:
                values = values * 255.0
            elif low < 0 or high > 255:
                values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        # A transparent background is often black underneath; put it on white, as a viewer shows it.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def resize_to_side(array: np.ndarray, side: int) -> np.ndarray:
    import cv2

    height, width = array.shape[:2]
    factor = side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)  # area averaging: no aliasing when shrinking
