"""Faces to model inputs, a batch at a time, with numpy and Pillow only: the evaluation transform of the model's timm
data config (`processor.val_transforms`: resize, centre crop, to [0, 1], normalise), bit for bit, plus the
test-time-augmentation views.

Each face is resized by Pillow exactly as torchvision's `Resize` does on a PIL image (faces of one size together, in
two calls on a stack of them: the same arithmetic), cropped and padded as torchvision's and timm's crops do, and the
whole batch is scaled and normalised in three float32 array operations, the same operations in the same order as
`ToTensor` and `Normalize`. Not importing torch keeps `python -m fer_hf.predict` on ONNX Runtime quick to start;
`tests/test_preprocess.py` checks the equality against timm's own transform for every crop mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from fer_hf.inference.images import WIDE_MODES, to_rgb8
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
        than `finish`, so that it overlaps with the model. Faces of one size and mode (a detector's crops) are
        resized together, two Pillow calls for the batch."""
        check_tta(tta)
        images = [self._trim(self._mode(face)) for face in faces]
        if len({(image.size, image.mode) for image in images}) == 1:  # contiguous: normalising strided pixels is slow
            return np.ascontiguousarray(self._geometry(np.stack([np.asarray(image) for image in images]), tta))
        if images:
            return _stack([self._geometry(np.asarray(image)[None], tta)[0] for image in images])
        side = self._ten_crop_side() if tta == "tencrop" else None
        return np.zeros((0, *((side, side) if side else self.size), self.channels), np.uint8)

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

    def _geometry(self, stack: np.ndarray, tta: str) -> np.ndarray:
        """(N, h, w[, c]) uint8 faces of one mode -> (N, H, W, c): resized and cropped as timm's evaluation
        transform does it (for ten-crop, resized to a square: the crops are taken from the normalised batch)."""
        height, width = stack.shape[1:3]
        if tta == "tencrop":
            side = self._ten_crop_side()
            return _channels_last(_resize_stack(stack, (side, side), self.filter))
        if self.crop_mode == "squash":
            size = self.scale_size
        elif self.crop_mode == "border":
            ratio = max(height / self.scale_size[0], width / self.scale_size[1])
            size = (round(height / ratio), round(width / ratio))
        elif self.scale_size[0] == self.scale_size[1]:  # torchvision's Resize(int): the shorter side to the size
            short, long = sorted((width, height))
            new_short, new_long = self.scale_size[0], int(self.scale_size[0] * long / short)
            size = (new_long, new_short) if width <= height else (new_short, new_long)
        else:  # timm's ResizeKeepRatio: the shorter side to its target, the ratio kept
            ratio = min(height / self.scale_size[0], width / self.scale_size[1])
            size = (round(height / ratio), round(width / ratio))
        return _center_crop_or_pad(_channels_last(_resize_stack(stack, size, self.filter)), self.size, self.fill)

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
        if face.mode in WIDE_MODES:
            # 16-bit and float faces as a file of that mode is read: Pillow's own convert clips 16-bit values above
            # 255 to white and floats in 0-1 to black. Other modes convert as timm's transform converts them.
            face = Image.fromarray(to_rgb8(face))
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


def _resize_stack(stack: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """torchvision's `F.resize` of each PIL face in an (N, h, w[, c]) stack to (height, width), bit for bit, in two
    Pillow calls for the whole stack: Pillow resamples the width row by row, then the height column by column
    (rounding to uint8 in between), each row and column clamped at its own ends; so faces stacked top to bottom
    take the first pass, and side by side the second, exactly as each would alone. A side already right is left."""
    count, height, width = stack.shape[:3]
    rest = stack.shape[3:]
    if count > 1 and height > 100 * width and size[0] < height:  # Pillow resamples such slivers height first
        return np.stack([_resize_stack(face[None], size, resample)[0] for face in stack])
    if count == 1 and (height, width) != size:  # both passes in one call
        return np.asarray(Image.fromarray(stack[0]).resize(size[::-1], resample))[None]
    if width != size[1]:
        tall = Image.fromarray(np.ascontiguousarray(stack).reshape(count * height, width, *rest))
        stack = np.asarray(tall.resize((size[1], count * height), resample)).reshape(count, height, size[1], *rest)
    if height != size[0]:
        wide = np.ascontiguousarray(stack.swapaxes(0, 1)).reshape(height, count * size[1], *rest)
        resized = np.asarray(Image.fromarray(wide).resize((count * size[1], size[0]), resample))
        stack = resized.reshape(size[0], count, size[1], *rest).swapaxes(0, 1)
    return stack


def _channels_last(stack: np.ndarray) -> np.ndarray:
    return stack[..., None] if stack.ndim == 3 else stack


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """(H, W, c) faces -> (N, H, W, c); grayscale faces among colour ones get their channel copied."""
    channels = max(array.shape[2] for array in arrays)
    return np.stack([array if array.shape[2] == channels else np.repeat(array, channels, axis=2) for array in arrays])


def _center_crop_or_pad(stack: np.ndarray, size: tuple[int, int], fill: list[int]) -> np.ndarray:
    """torchvision's CenterCrop / timm's CenterCropOrPad on an (N, H, W, c) stack: pad to the size where smaller
    (the odd pixel right and bottom), then crop the centre (rounding as they do)."""
    crop_height, crop_width = size
    count, height, width, channels = stack.shape
    if crop_width > width or crop_height > height:
        left, top = max(0, (crop_width - width) // 2), max(0, (crop_height - height) // 2)
        right, bottom = max(0, (crop_width - width + 1) // 2), max(0, (crop_height - height + 1) // 2)
        padded = np.empty((count, height + top + bottom, width + left + right, channels), stack.dtype)
        padded[...] = np.asarray(fill if len(fill) == channels else fill[:1] * channels, stack.dtype)
        padded[:, top: top + height, left: left + width] = stack
        stack, (height, width) = padded, padded.shape[1:3]
    top, left = int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))
    return stack[:, top: top + crop_height, left: left + crop_width]


def _five_crops(batch: np.ndarray, side: int) -> list[np.ndarray]:
    """torchvision's five_crop on (N, C, H, W): top-left, top-right, bottom-left, bottom-right, centre."""
    height, width = batch.shape[-2:]
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
    return [batch[..., :side, :side], batch[..., :side, width - side:], batch[..., height - side:, :side],
            batch[..., height - side:, width - side:], batch[..., top: top + side, left: left + side]]
