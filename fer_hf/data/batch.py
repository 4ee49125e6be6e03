"""Whole-batch versions of the transforms in `fer_hf.data.transforms`, for uint8 faces on any device.

FER-2013 is 83 MB of 48x48 bytes, so each split is decoded once into a uint8 tensor; each batch is sliced from it
and made model-ready in a few tensor operations instead of a PIL round trip per image:

- training: timm's `RandomResizedCropAndInterpolation` (boxes drawn per image as its `get_params` draws them),
  horizontal flip, scaling to [0, 1] and normalisation with the backbone's mean and std, then optionally timm's
  `RandomErasing` on the normalised batch (as timm's training transform appends it);
- evaluation: the processor's `val_transforms` (resize, centre crop by `crop_pct`, normalisation).

Resizing is separable, so each crop-and-resize is two small matrix products whose weights are PIL's own resampling
coefficients (same filter, support, antialiasing and renormalisation at the crop's edges), with the result rounded
to 8 bits after each pass as PIL does. Evaluation inputs therefore match `processor.val_transforms` to within one
grey level, and training inputs follow the same distribution as timm's per-image transform.

Random parameters are drawn where the batch is fetched (the DataLoader, with torch's seeded generator, so seeds and
resumed runs behave as with per-image transforms); the pixel work runs either there (`on_device=False`) or on the
accelerator after a uint8 transfer (the trainer's `device_transform`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import default_collate

from fer_hf.data.load import decode_faces
from fer_hf.data.transforms import AugmentationConfig

# ------------------------------------------------------------------------------------- PIL's resampling filters


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp(min=0)


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    a = -0.5  # PIL's Keys cubic (torch's bicubic uses -0.75, so F.interpolate would not match)
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _box(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x <= 0.5)).to(x.dtype)


def _hamming(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    px = math.pi * x
    value = torch.sin(px) / px.clamp(min=1e-12) * (0.54 + 0.46 * torch.cos(px))
    return torch.where(x == 0, torch.ones_like(x), torch.where(x < 1, value, torch.zeros_like(x)))


def _lanczos(x: torch.Tensor) -> torch.Tensor:
    inside = (x >= -3) & (x < 3)
    return torch.where(inside, torch.sinc(x) * torch.sinc(x / 3), torch.zeros_like(x))


# Pillow's Resample.c filters, each zero beyond its support (1, 2, 0.5, 1, 3 pixels). `nearest` takes another code
# path in PIL and is not offered.
FILTERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bilinear": _bilinear,
    "bicubic": _bicubic,
    "box": _box,
    "hamming": _hamming,
    "lanczos": _lanczos,
}


def resample_weights(
    start: torch.Tensor, span: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, in_size: int, out_size: int,
    interpolation: str,
) -> torch.Tensor:
    """PIL's resampling coefficients along one axis, one matrix per image: (B, out_size, in_size).

    Output pixel `o` of image `b` samples the input interval `start + span * [o, o + 1) / out_size`; only input
    pixels in `[lo, hi)` contribute (the crop: PIL crops before resizing), and the weights are renormalised there.
    All arguments but the sizes are float tensors of shape (B,).
    """
    if interpolation not in FILTERS:
        raise ValueError(
            f"interpolation {interpolation!r} has no batch version (have {', '.join(FILTERS)}); "
            "use --augment_on per_sample."
        )
    kernel = FILTERS[interpolation]
    scale = span / out_size
    filter_scale = scale.clamp(min=1.0)  # downscaling widens the filter: PIL's antialiasing
    outputs = torch.arange(out_size, device=start.device, dtype=start.dtype) + 0.5
    centre = start[:, None] + outputs * scale[:, None]
    pixels = torch.arange(in_size, device=start.device, dtype=start.dtype)
    distance = (pixels + 0.5 - centre[..., None]) / filter_scale[:, None, None]
    # PIL sums the filter over the input pixels within its support (where it is nonzero anyway) inside the crop.
    weights = kernel(distance) * ((pixels >= lo[:, None, None]) & (pixels < hi[:, None, None]))
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


def _to_8bit(values: torch.Tensor) -> torch.Tensor:
    # PIL keeps 8-bit images 8-bit between and after its two passes, rounding half up and clipping. In place: the
    # argument is always a fresh product.
    return values.add_(0.5).floor_().clamp_(0, 255)


def resample(pixels: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(B, H, W) grey levels -> (B, out_h, out_w): horizontal pass then vertical, as PIL does."""
    horizontal = _to_8bit(torch.matmul(pixels, columns.transpose(-1, -2)))
    return _to_8bit(torch.matmul(rows, horizontal))


# ------------------------------------------------------------------------------------------ random parameters


def sample_crop_boxes(
    count: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float], attempts: int = 10,
) -> torch.Tensor:
    """(count, 4) int64 boxes (top, left, height, width), distributed as timm's RandomResizedCrop.get_params.

    Each image gets up to `attempts` draws of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio); the
    first box that fits is kept, at a uniformly drawn position. Images with no fitting draw get the centre crop
    at the nearest allowed aspect ratio. All draws use torch's global generator (seeded by `set_seed`).
    """
    area = height * width
    target_area = torch.empty(count, attempts, dtype=torch.float64).uniform_(*scale) * area
    aspect = torch.empty(count, attempts, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    box_w = torch.round(torch.sqrt(target_area * aspect))  # round half to even, as Python's round()
    box_h = torch.round(torch.sqrt(target_area / aspect))
    fits = (box_w <= width) & (box_h <= height) & (box_w >= 1) & (box_h >= 1)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    box_w, box_h = box_w.gather(1, first).squeeze(1), box_h.gather(1, first).squeeze(1)

    fallback_w, fallback_h = _fallback_size(height, width, ratio)
    box_w = torch.where(found, box_w, torch.full_like(box_w, fallback_w))
    box_h = torch.where(found, box_h, torch.full_like(box_h, fallback_h))
    top = torch.floor(torch.rand(count, dtype=torch.float64) * (height - box_h + 1))
    left = torch.floor(torch.rand(count, dtype=torch.float64) * (width - box_w + 1))
    top = torch.where(found, top, torch.div(height - box_h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - box_w, 2, rounding_mode="floor"))
    return torch.stack([top, left, box_h, box_w], dim=1).long()


def _fallback_size(height: int, width: int, ratio: Sequence[float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


# ------------------------------------------------------------------------------------------------ the transform


class FastImageTransform:
    """The processor's train and eval transforms for whole uint8 batches, on the batch's own device.

    A batch is a dict with `pixel_values` (B, H, W) uint8 and `labels`; training batches also carry `crop`
    (B, 4: top, left, height, width) and `flip` (B,) from `sample`. Calling the transform replaces `pixel_values`
    by the normalised float (B, C, size, size) the model takes and drops `crop` and `flip`. `erase` (timm's
    `RandomErasing`, made for the device the batch is on) then erases boxes in training batches, in place.
    """

    def __init__(
        self, data_config: Mapping, augmentation: AugmentationConfig | None = None, channels_last: bool = False,
        erase: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        channels, height, width = data_config["input_size"]
        self.channels = channels
        self.size = (height, width)
        self.interpolation = data_config.get("interpolation", "bilinear")
        self.crop_pct = data_config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
        self.crop_mode = data_config.get("crop_mode") or "center"
        self.augmentation = augmentation or AugmentationConfig()
        self.channels_last = channels_last
        self.erase = erase
        mean = np.broadcast_to(np.asarray(data_config["mean"], np.float64), (channels,))
        std = np.broadcast_to(np.asarray(data_config["std"], np.float64), (channels,))
        # ToTensor's /255 and Normalize folded into one multiply-add per channel.
        self._gain = torch.tensor(1 / (255 * std), dtype=torch.float32)
        self._offset = torch.tensor(-mean / std, dtype=torch.float32)
        self._eval_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._crop_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.interpolation not in FILTERS:
            raise ValueError(
                f"interpolation {self.interpolation!r} has no batch version (have {', '.join(FILTERS)}); "
                "use --augment_on per_sample."
            )

    def __repr__(self) -> str:
        erase = "" if self.erase is None else f", erase={self.erase}"
        return (f"{type(self).__name__}(size={self.size}, channels={self.channels}, interpolation={self.interpolation}"
                f", crop_pct={self.crop_pct}, {self.augmentation}{erase})")

    def sample(self, count: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """Draw the random training parameters of `count` images of `height` x `width` (on the CPU)."""
        aug = self.augmentation
        return {
            "crop": sample_crop_boxes(count, height, width, aug.crop_scale, aug.crop_ratio),
            "flip": torch.rand(count) < aug.hflip,
        }

    def __call__(self, batch: dict) -> dict:
        pixels = batch["pixel_values"]
        if pixels.dtype != torch.uint8:  # already model-ready
            return batch
        batch = dict(batch)
        crop, flip = batch.pop("crop", None), batch.pop("flip", None)
        grey = pixels.float()
        if crop is not None:
            grey = self._train_geometry(grey, crop.to(grey.device), flip.to(grey.device))
        else:
            grey = self._eval_geometry(grey)
        pixel_values = self._normalise(grey)
        if crop is not None and self.erase is not None:
            pixel_values = self.erase(pixel_values)
        batch["pixel_values"] = pixel_values
        return batch

    def _train_geometry(self, grey: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        top, left, height, width = crop.unbind(1)
        rows = self._crop_weights(grey.shape[1], self.size[0], grey.device, top, height)
        columns = self._crop_weights(grey.shape[2], self.size[1], grey.device, left, width)
        columns = torch.where(flip[:, None, None], columns.flip(1), columns)  # a flip reverses the output columns
        return resample(grey, rows, columns)

    def _crop_weights(self, in_size: int, out_size: int, device: torch.device, start: torch.Tensor,
                      span: torch.Tensor) -> torch.Tensor:
        """The weights of crops [start, start + span) along one axis, looked up in a table of every possible crop:
        an axis of 48 pixels has only 1176 of them, and a gather is far cheaper than evaluating the filter."""
        key = (in_size, out_size, device)
        if key not in self._crop_tables:
            spans = torch.arange(1, in_size + 1)
            starts = torch.cat([torch.arange(in_size - k + 1) for k in spans.tolist()])
            lengths = torch.repeat_interleave(spans, in_size - spans + 1)
            first_of_span = torch.cat([torch.zeros(2, dtype=torch.long), torch.cumsum(in_size - spans + 1, 0)[:-1]])
            table = resample_weights(*(t.double() for t in (starts, lengths, starts, starts + lengths)),
                                     in_size, out_size, self.interpolation)
            self._crop_tables[key] = (table.float().to(device), first_of_span.to(device))
        table, first_of_span = self._crop_tables[key]
        return table[first_of_span[span] + start]

    def _eval_geometry(self, grey: torch.Tensor) -> torch.Tensor:
        key = (grey.shape[1], grey.shape[2], grey.device)
        if key not in self._eval_cache:
            self._eval_cache[key] = self._eval_weights(grey.shape[1], grey.shape[2], grey.device)
        weights = self._eval_cache[key]
        return grey if weights is None else resample(grey, *weights)

    def _eval_weights(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """timm's eval transform (Resize to size / crop_pct, CenterCrop) as fixed weights; None: the identity."""
        out_h, out_w = self.size
        scaled = (math.floor(out_h / self.crop_pct), math.floor(out_w / self.crop_pct))
        if self.crop_mode == "squash" or (self.crop_mode == "center" and height == width and scaled[0] == scaled[1]):
            if self.crop_mode == "squash":
                resized = scaled
            else:  # torchvision Resize(int): the shorter edge becomes `scaled`
                resized = (scaled[0], scaled[0])
        else:
            raise ValueError(
                f"eval crop_mode {self.crop_mode!r} on {height}x{width} images has no batch version; "
                "use --augment_on per_sample."
            )
        if resized[0] < out_h or resized[1] < out_w:
            raise ValueError(f"crop_pct {self.crop_pct} > 1 pads the image; use --augment_on per_sample.")
        axes = []
        for in_size, new_size, out_size in ((height, resized[0], out_h), (width, resized[1], out_w)):
            offset = int(round((new_size - out_size) / 2.0))  # torchvision CenterCrop
            step = in_size / new_size
            args = torch.tensor([[offset * step], [out_size * step], [0.0], [float(in_size)]], device=device)
            axes.append(resample_weights(*args, in_size, out_size, self.interpolation))
        identity = all(w.shape[1] == w.shape[2] and torch.equal(w[0], torch.eye(w.shape[1], device=device))
                       for w in axes)
        return None if identity else (axes[0], axes[1])

    def _normalise(self, grey: torch.Tensor) -> torch.Tensor:
        if grey.device not in self._constants:
            self._constants[grey.device] = (self._gain.to(grey.device), self._offset.to(grey.device))
        gain, offset = self._constants[grey.device]
        # One fused multiply-add per output value: at 224 px this write is most of the transform's cost on a CPU.
        if self.channels_last:  # computed as NHWC and viewed as NCHW: the strides a channels_last conv wants
            return torch.addcmul(offset, grey[..., None], gain).permute(0, 3, 1, 2)
        return torch.addcmul(offset[:, None, None], grey[:, None], gain[:, None, None])


# ------------------------------------------------------------------------------------------ dataset and collate


class FaceTensorDataset(torch.utils.data.Dataset):
    """Faces held as one uint8 tensor; the DataLoader fetches whole batches at once (`__getitems__`).

    `train` batches get fresh random crops and flips; `on_device` leaves the pixel work to the trainer's
    `device_transform` (after the uint8 batch is moved), otherwise the batch leaves the DataLoader model-ready.
    `teacher_probs` (N, classes), when given, go with each batch under that name (distillation targets).
    """

    def __init__(
        self, faces: torch.Tensor, labels: torch.Tensor, transform: FastImageTransform, *, train: bool,
        on_device: bool = False, teacher_probs: torch.Tensor | None = None,
    ):
        if faces.dtype != torch.uint8 or faces.ndim != 3 or len(faces) != len(labels):
            raise ValueError(f"faces must be uint8 (N, H, W) with one label each; got {faces.dtype} {faces.shape} "
                             f"and {len(labels)} labels.")
        if teacher_probs is not None and len(teacher_probs) != len(labels):
            raise ValueError(f"{len(teacher_probs)} teacher targets for {len(labels)} faces.")
        self.faces, self.labels, self.teacher_probs = faces, labels, teacher_probs
        self.transform, self.train, self.on_device = transform, train, on_device

    @classmethod
    def from_dataset(cls, dataset: Dataset, transform: FastImageTransform, **kwargs) -> FaceTensorDataset:
        faces = torch.from_numpy(decode_faces(dataset))
        labels = torch.as_tensor(np.asarray(dataset.with_format("numpy")["label"], np.int64))
        return cls(faces, labels, transform, **kwargs)

    def __len__(self) -> int:
        return len(self.faces)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = {"pixel_values": self.faces[index], "labels": self.labels[index]}
        if self.teacher_probs is not None:
            batch["teacher_probs"] = self.teacher_probs[index]
        if self.train:
            batch |= self.transform.sample(len(index), *self.faces.shape[1:])
        return batch if self.on_device else self.transform(batch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


def collate_batches(batch: dict | list[dict]) -> dict:
    """The Trainer's `data_collator` for `FaceTensorDataset`: its batches arrive whole; single items are stacked."""
    return batch if isinstance(batch, dict) else default_collate(batch)
