"""Run a saved model on face images: PyTorch or ONNX Runtime, with optional test-time augmentation (TTA).

Preprocessing is the evaluation transform used in training (`fer_hf.data.transforms.eval_transform` on the image
converted to the model's channel mode), so a face scored here is scored exactly as the validation split was.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from transformers import TimmWrapperConfig

from fer_hf.data.transforms import eval_transform, image_mode
from fer_hf.metrics import classification_report
from fer_hf.modeling import DEFAULT_MODEL_DIR, image_processor_for, load_saved_model

logger = logging.getLogger(__name__)

TTA_MODES = ("none", "hflip", "tencrop")
# Ten-crop takes crops of this fraction of the side (then scaled to the input size, as RandomResizedCrop does in
# training): the four corners and the centre, and their mirror images.
TENCROP_FRACTION = 0.875
ONNX_CONFIG_KEY = "fer_hf.config"  # metadata entry of an exported .onnx holding the model's config.json


class FerClassifier:
    """A FER model with its preprocessing: `logits(pixel_values)` on either backend, `transform(face)` per image."""

    def __init__(
        self,
        config: TimmWrapperConfig,
        run: Callable[[np.ndarray], np.ndarray],
        backend: str,
        model: torch.nn.Module | None = None,
    ):
        self.config = config
        self.model = model  # the PyTorch module behind `run`, when there is one
        self.backend = backend
        self._run = run
        self.processor = image_processor_for(config)
        self.mode = image_mode(self.processor)
        self.label_names: list[str] = [config.id2label[i] for i in range(config.num_labels)]

    def logits(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, C, H, W) normalised pixels -> (N, num_labels) float32 logits."""
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.numpy()
        return self._run(np.ascontiguousarray(pixel_values, dtype=np.float32))

    def views(self, tta: str = "none") -> Callable[[Image.Image], torch.Tensor]:
        """The function turning one face into its stack of views, (V, C, H, W): 1, 2 or 10 views."""
        return tta_views(self.processor, tta, self.mode)

    def predict(self, faces: Sequence[Image.Image], tta: str = "none", batch_size: int = 64) -> np.ndarray:
        """Logits (N, num_labels) for PIL faces, averaged over the TTA views."""
        return view_logits(self, faces, tta, batch_size).mean(axis=1)


def load_classifier(
    model_dir: str | os.PathLike | None = None,
    *,
    onnx_path: str | os.PathLike | None = None,
    device: str | None = None,
) -> FerClassifier:
    """A saved model folder (PyTorch) or an exported `.onnx` file (ONNX Runtime; config from its metadata or
    `model_dir`). With neither: the model shipped inside the package (`DEFAULT_MODEL_DIR`)."""
    if onnx_path is not None:
        return _load_onnx(Path(onnx_path), model_dir)
    model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # fp32 whatever the stored dtype: the shipped model keeps fp16 weights to stay small.
    model = load_saved_model(model_dir, dtype=torch.float32).to(device)

    @torch.inference_mode()
    def run(pixel_values: np.ndarray) -> np.ndarray:
        return model(pixel_values=torch.from_numpy(pixel_values).to(device)).logits.float().cpu().numpy()

    return FerClassifier(model.config, run, backend=f"pytorch ({device})", model=model)


def _load_onnx(path: Path, model_dir: str | os.PathLike | None) -> FerClassifier:
    import onnxruntime

    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such ONNX file; create it with `python -m fer_hf.export MODEL_DIR --onnx {path}`."
        )
    try:
        session = onnxruntime.InferenceSession(str(path), providers=onnxruntime.get_available_providers())
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types, not exported in a stable place
        raise ValueError(f"{path}: not a loadable ONNX model ({err}); export it again with fer_hf.export.") from err
    embedded = session.get_modelmeta().custom_metadata_map.get(ONNX_CONFIG_KEY)
    if embedded is not None:
        config = TimmWrapperConfig.from_dict(json.loads(embedded))
    elif model_dir is not None:
        config = TimmWrapperConfig.from_pretrained(model_dir)
    else:
        raise ValueError(f"{path}: has no embedded fer_hf config; pass the model folder it came from with --model.")
    input_name = session.get_inputs()[0].name

    def run(pixel_values: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: pixel_values})[0]

    return FerClassifier(config, run, backend=f"onnxruntime ({session.get_providers()[0]})")


def tta_views(processor, tta: str, mode: str = "RGB") -> Callable[[Image.Image], torch.Tensor]:
    """One face -> its (V, C, H, W) views: `none` the evaluation transform, `hflip` it and its mirror image,
    `tencrop` four corner and one centre crop plus their mirrors."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}.")
    base = eval_transform(processor)
    if tta == "tencrop":
        cfg = processor.data_config
        size = cfg["input_size"][-1]
        interpolation = T.InterpolationMode(cfg.get("interpolation", "bicubic"))
        # An even margin keeps the centre crop centred, so the mirrored views are exact mirror images.
        resized = size + 2 * round((size / TENCROP_FRACTION - size) / 2)
        base = T.Compose([
            T.Resize((resized, resized), interpolation=interpolation),
            T.ToTensor(),
            T.Normalize(cfg["mean"], cfg["std"]),
            T.TenCrop(size),
        ])

    def views(image: Image.Image) -> torch.Tensor:
        out = base(image.convert(mode))
        if tta == "none":
            return out.unsqueeze(0)
        if tta == "hflip":
            return torch.stack([out, out.flip(-1)])  # normalisation is per channel, so flipping commutes with it
        return torch.stack(out)

    return views


def view_logits(
    classifier: FerClassifier, faces: Iterable[Image.Image], tta: str = "none", batch_size: int = 64
) -> np.ndarray:
    """Logits of every view of every face: (N, V, num_labels). Faces are batched; views go in the same batch."""
    to_views = classifier.views(tta)
    per_face = {"none": 1, "hflip": 2, "tencrop": 10}[tta]
    faces_per_batch = max(1, batch_size // per_face)
    out: list[np.ndarray] = []
    batch: list[torch.Tensor] = []
    for face in faces:
        batch.append(to_views(face))
        if len(batch) == faces_per_batch:
            out.append(_run_batch(classifier, batch))
            batch = []
    if batch:
        out.append(_run_batch(classifier, batch))
    if not out:
        return np.zeros((0, per_face, classifier.config.num_labels), np.float32)
    return np.concatenate(out)


def _run_batch(classifier: FerClassifier, batch: list[torch.Tensor]) -> np.ndarray:
    stacked = torch.stack(batch)  # (B, V, C, H, W)
    logits = classifier.logits(stacked.flatten(0, 1))
    return logits.reshape(stacked.shape[0], stacked.shape[1], -1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def evaluate_model(
    classifiers: FerClassifier | Sequence[FerClassifier], images, labels, tta: str = "none", batch_size: int = 128
) -> dict[str, dict]:
    """Reports keyed `plain` and, when `tta` is not none, by the TTA mode; each as `classification_report` returns.

    Each model's logits are averaged over its TTA views; several models (an ensemble) average their class
    probabilities. With one model the predictions are its logits' argmax either way."""
    classifiers = [classifiers] if isinstance(classifiers, FerClassifier) else list(classifiers)
    images, labels = list(images), np.asarray(labels)
    plain, augmented = [], []
    for classifier in classifiers:
        if tta == "hflip":  # the first of the two views is the plain image: one pass gives both figures
            logits = view_logits(classifier, images, "hflip", batch_size)
            plain.append(softmax(logits[:, 0]))
            augmented.append(softmax(logits.mean(axis=1)))
        else:
            plain.append(softmax(view_logits(classifier, images, "none", batch_size)[:, 0]))
            if tta == "tencrop":
                augmented.append(softmax(view_logits(classifier, images, tta, batch_size).mean(axis=1)))
    names = classifiers[0].label_names
    reports = {"plain": classification_report(np.mean(plain, axis=0).argmax(-1), labels, names)}
    if augmented:
        reports[tta] = classification_report(np.mean(augmented, axis=0).argmax(-1), labels, names)
    return reports
