"""What the web demo does with one photo, without the web: read it, find and classify the faces (`FacePredictor`, the
same path as `fer_hf.predict`), draw numbered boxes, and say in a sentence what was found or what went wrong.

`fer_hf.app` puts this behind a Gradio page; keeping it here keeps the page code to layout and keeps this testable
without a browser.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from huggingface_hub import ModelCard

from fer_hf.inference.annotate import draw_faces
from fer_hf.inference.images import DEFAULT_MAX_MEGAPIXELS, ImageReadError, LoadedImage, read_image
from fer_hf.inference.predictor import FacePredictor
from fer_hf.labels import split_display_name

logger = logging.getLogger(__name__)

NO_FACE_MESSAGE = "No face found in this photo. Try one where a face looks at the camera, upright and not too small."


@dataclass
class Analysis:
    """One photo's result: the annotated picture (None when the file could not be read), the face records as
    `fer_hf.predict --json` writes them, and a one-line message for the page."""

    image: np.ndarray | None
    faces: list[dict] = field(default_factory=list)
    message: str = ""

    def face_names(self) -> list[str]:
        """`Face 1: happy (88%)`, one per face, in box-number order."""
        return [f"Face {i}: {face['label']} ({face['scores'][face['label']]:.0%})"
                for i, face in enumerate(self.faces, start=1)]

    def scores(self, index: int) -> dict[str, float]:
        return dict(self.faces[index]["scores"]) if 0 <= index < len(self.faces) else {}


def analyse_image(predictor: FacePredictor, image: LoadedImage) -> Analysis:
    faces = predictor.faces(image)
    if not faces:
        return Analysis(image.rgb, [], NO_FACE_MESSAGE)
    analysis = Analysis(draw_faces(image.rgb, faces, image.scale, numbered=True), faces)
    analysis.message = f"{len(faces)} face{'s' if len(faces) > 1 else ''} found: {'; '.join(analysis.face_names())}."
    return analysis


def analyse_file(predictor: FacePredictor, path: str | os.PathLike | None,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Analysis:
    """Never raises for a bad file: an unreadable, empty, huge or non-image file becomes the message."""
    if path is None:
        return Analysis(None, [], "Upload a photo, take one with the webcam, or pick an example.")
    name = Path(path).name
    try:
        image = read_image(path, max_megapixels)
    except ImageReadError as error:
        return Analysis(None, [], f"Could not use {name}: {_reason(error, path)}")
    return analyse_image(predictor, image)


def _reason(error: Exception, path: str | os.PathLike) -> str:
    """The reader's message without the server-side path of the upload (the user knows the file by its name), and
    without advice about command-line options, which a visitor of the page cannot give."""
    return str(error).replace(str(path), Path(path).name).replace(" or raise --max_megapixels", "")


def card_accuracies(model_dir: str | os.PathLike) -> dict[str, float]:
    """{split: accuracy} from the model card's `model-index` (what the Hub shows), e.g. validation and test."""
    card_path = Path(model_dir) / "README.md"
    if not card_path.is_file():
        return {}
    try:
        results = ModelCard.load(card_path).data.eval_results or []
    except Exception as error:  # a hand-edited card must not stop the demo
        logger.warning("%s: model card not readable (%s); accuracy not shown.", card_path, error)
        return {}
    return {r.dataset_split: r.metric_value for r in results if r.metric_type == "accuracy" and r.dataset_split}


def describe_accuracies(accuracies: dict[str, float]) -> str:
    if not accuracies:
        return "The model card records no accuracy."
    return " · ".join(f"{split_display_name(split)} accuracy {100 * value:.2f}%"
                      for split, value in accuracies.items())
