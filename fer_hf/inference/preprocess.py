"""Faces to model inputs, a batch at a time, with numpy and Pillow only: the evaluation transform of the model's timm
data config (`processor.val_transforms`: resize, centre crop, to [0, 1], normalise), bit for bit, plus the
test-time-augmentation views.

Each face is resized by Pillow exactly as torchvision's `Resize` does on a PIL image (the same call), cropped and
padded as torchvision's and timm's crops do, and the whole batch is scaled and normalised in three float32 array
operations, the same operations in the same order as `ToTensor` and `Normalize`. Not importing torch keeps
`python -m fer_hf.predict` on ONNX Runtime quick to start; `tests/test_preprocess.py` checks the equality against
timm's own transform for every crop mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from fer_hf.labels import TTA_MODES

VIEWS_PER_FACE = {"none": 1, "hflip": 2, "tencrop": 10}
# Ten-crop takes crops of this fraction of the side (then scaled to the input size, as RandomResizedCrop does in
# training): the four corners and the centre, and their mirror images.
TENCROP_FRACTION = 0.875
DEFAULT_CROP_PCT = 0.875  # timm's, where a data config has none
# timm's interpolation names -> Pillow's filters (as torchvision maps its InterpolationMode onto Pillow's).
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def check_tta(tta: str) -> str:
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}.")
    return tta


class FacePreprocessor:
    """`preprocessor(faces, tta)`: PIL faces -> float32 (N, V, C, H, W) model inputs, V the views per face."""

    def __init__(self, data_config: Mapping):
        channels, height, width = data_config["input_size"]
        self.size = (int(height), int(width))
        self.mode = "L" if channels == 1 else "RGB"
        self.channels = int(channels)
        interpolation = data_config.get("interpolation", "bilinear")
        if interpolation not in PIL_FILTERS:
            raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(PIL_FILTERS)}.")
        self.filter = PIL_FILTERS[interpolation]
        self.crop_pct = data_config.get("crop_pct") or DEFAULT_CROP_PCT
        self.crop_mode = data_config.get("crop_mode") or "center"
        self.border = int(data_config.get("crop_border_pixels") or 0)  # timm's TrimBorder, before resizing
        self.scale_size = tuple(math.floor(side / self.crop_pct) for side in self.size)
        self.mean = np.asarray(data_config["mean"], np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(data_config["std"], np.float32).reshape(-1, 1, 1)
        # CenterCropOrPad (timm's `border` mode) pads with the mean colour; torchvision's CenterCrop with black.
        self.fill = [round(255 * v) for v in data_config["mean"]] if self.crop_mode == "border" else [0]

    def __call__(self, faces: Sequence[Image.Image], tta: str = "none") -> np.ndarray:
        return self.finish(self.prepare(faces, tta), tta)

    def prepare(self, faces: Sequence[Image.Image], tta: str = "none") -> np.ndarray:
        """The per-face work (Pillow resizing and cropping): uint8 (N, h, w, c). Safe to run in another thread
        than `finish`, so that it overlaps with the model."""
        if check_tta(tta) == "tencrop":
            side = self._ten_crop_side()
            arrays = [_as_array(_resize(self._mode(face), (side, side), self.filter)) for face in faces]
            return _stack(arrays) if arrays else np.zeros((0, side, side, self.channels), np.uint8)
        arrays = [self.geometry(face) for face in faces]
        return _stack(arrays) if arrays else np.zeros((0, *self.size, self.channels), np.uint8)

    def finish(self, prepared: np.ndarray, tta: str = "none") -> np.ndarray:
        """The batch work on `prepare`'s output: float32 (N, V, C, H, W) model inputs, V views per face."""
        batch = self.normalise(prepared)
        if check_tta(tta) == "tencrop":
            side = self.size[0]
            return np.stack([*_five_crops(batch, side), *_five_crops(batch[..., ::-1], side)], axis=1)  # TenCrop order
        if tta == "hflip":  # normalisation is per channel, so flipping commutes with it
            return np.stack([batch, batch[..., ::-1]], axis=1)
        return batch[:, None]

    # ------------------------------------------------------------------------------------------------ geometry

    def geometry(self, face: Image.Image) -> np.ndarray:
        """One face resized and cropped as timm's evaluation transform does it: uint8 (H, W, channels)."""
        image = self._trim(self._mode(face))
        width, height = image.size
        if self.crop_mode == "squash":
            image = _resize(image, self.scale_size, self.filter)
        elif self.crop_mode == "border":
            ratio = max(height / self.scale_size[0], width / self.scale_size[1])
            image = _resize(image, (round(height / ratio), round(width / ratio)), self.filter)
        elif self.scale_size[0] == self.scale_size[1]:  # torchvision's Resize(int): the shorter side to the size
            short, long = sorted((width, height))
            new_short, new_long = self.scale_size[0], int(self.scale_size[0] * long / short)
            image = _resize(image, (new_long, new_short) if width <= height else (new_short, new_long), self.filter)
        else:  # timm's ResizeKeepRatio: the shorter side to its target, the ratio kept
            ratio = min(height / self.scale_size[0], width / self.scale_size[1])
            image = _resize(image, (round(height / ratio), round(width / ratio)), self.filter)
        return _center_crop_or_pad(_as_array(image), self.size, self.fill)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, c) -> float32 (N, C, H, W): ToTensor's division by 255, then Normalize's subtraction of
        the mean and division by the std, in that order (so the values are torchvision's to the bit). A
        single-channel face feeds all channels of an RGB model (Pillow's L -> RGB conversion copies it)."""
        values = pixels.transpose(0, 3, 1, 2).astype(np.float32, order="C")
        values /= np.float32(255)
        if values.shape[1] != self.channels:
            values = np.repeat(values, self.channels, axis=1)
        values -= self.mean
        values /= self.std
        return values

    def _mode(self, face: Image.Image) -> Image.Image:
        # A grayscale face stays one channel through resizing for an RGB model: Pillow resizes each band alone,
        # so resizing L then copying it to three channels equals converting to RGB first, at a third of the work
        # (unless padding would fill the channels with different colours).
        if face.mode == self.mode or (face.mode == "L" and self.mode == "RGB" and len(set(self.fill)) == 1):
            return face
        return face.convert(self.mode)

    def _trim(self, image: Image.Image) -> Image.Image:
        """timm's TrimBorder: `crop_border_pixels` off every side, with its clamping (left by the height, too)."""
        if not self.border:
            return image
        width, height = image.size
        top = left = min(self.border, height)
        return image.crop((left, top, left + max(0, width - 2 * self.border), top + max(0, height - 2 * self.border)))

    def _ten_crop_side(self) -> int:
        """Ten-crop resizes the face to this side, then crops the input size from it."""
        height, width = self.size
        if height != width:
            raise ValueError("ten-crop needs a square input size.")
        # An even margin keeps the centre crop centred, so the mirrored views are exact mirror images.
        return height + 2 * round((height / TENCROP_FRACTION - height) / 2)


def _resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """torchvision's `F.resize` of a PIL image to (height, width): Pillow's resize, skipped when the size is already
    right."""
    if image.size == (size[1], size[0]):
        return image
    return image.resize((size[1], size[0]), resample)


def _as_array(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """(H, W, c) faces -> (N, H, W, c); grayscale faces among colour ones get their channel copied."""
    channels = max(array.shape[2] for array in arrays)
    return np.stack([array if array.shape[2] == channels else np.repeat(array, channels, axis=2) for array in arrays])


def _center_crop_or_pad(array: np.ndarray, size: tuple[int, int], fill: list[int]) -> np.ndarray:
    """torchvision's CenterCrop / timm's CenterCropOrPad on an (H, W, c) array: pad to the size where smaller (the
    odd pixel right and bottom), then crop the centre (rounding as they do)."""
    crop_height, crop_width = size
    height, width = array.shape[:2]
    if crop_width > width or crop_height > height:
        left, top = max(0, (crop_width - width) // 2), max(0, (crop_height - height) // 2)
        right, bottom = max(0, (crop_width - width + 1) // 2), max(0, (crop_height - height + 1) // 2)
        padded = np.empty((height + top + bottom, width + left + right, array.shape[2]), array.dtype)
        padded[...] = np.asarray(fill if len(fill) == array.shape[2] else fill[:1] * array.shape[2], array.dtype)
        padded[top: top + height, left: left + width] = array
        array, (height, width) = padded, padded.shape[:2]
    top, left = int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))
    return array[top: top + crop_height, left: left + crop_width]


def _five_crops(batch: np.ndarray, side: int) -> list[np.ndarray]:
    """torchvision's five_crop on (N, C, H, W): top-left, top-right, bottom-left, bottom-right, centre."""
    height, width = batch.shape[-2:]
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
    return [batch[..., :side, :side], batch[..., :side, width - side:], batch[..., height - side:, :side],
            batch[..., height - side:, width - side:], batch[..., top: top + side, left: left + side]]
