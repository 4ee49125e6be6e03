"""CPU inference speed of a saved model (default: the shipped one), PyTorch and ONNX Runtime side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/inference.py [--model DIR] [--json OUT]

Measured per backend:
- `model_faces_per_s`: the network alone on ready (preprocessed) batches of `--batch_size` real faces;
- `end_to_end_faces_per_s`: `FerClassifier.predict` on the same PIL faces (preprocessing included), what
  `fer_hf.evaluate` and `predict --no_detect` do per batch;
- `single_face_ms`: one face through `predict`, median of repeats;
- `photo_ms`: one photograph (scikit-image's astronaut, 512x512) through face detection, cropping and the classifier
  (`FacePredictor.faces`), median of repeats.
Faces are the first `--num_faces` real PrivateTest faces (the archive found as the tests find it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_ARCHIVE = Path(os.environ.get("FER2013_PATH", REPO.parent / "shared" / "data" / "fer2013"))

from fer_hf.data.load import load_fer2013  # noqa: E402
from fer_hf.export import export_onnx  # noqa: E402
from fer_hf.inference.classifier import FerClassifier, load_classifier  # noqa: E402
from fer_hf.inference.images import LoadedImage  # noqa: E402
from fer_hf.inference.predictor import FacePredictor  # noqa: E402
from fer_hf.modeling import DEFAULT_MODEL_DIR  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 2)


def measure(classifier: FerClassifier, faces: list, batch_size: int, photo: np.ndarray) -> dict:
    to_view = classifier.views("none")
    ready = torch.stack([to_view(face)[0] for face in faces]).numpy()
    classifier.logits(ready[:batch_size])  # warm-up: allocations, ONNX Runtime's first run
    start = time.perf_counter()
    for i in range(0, len(ready), batch_size):
        classifier.logits(ready[i: i + batch_size])
    model_seconds = time.perf_counter() - start
    start = time.perf_counter()
    classifier.predict(faces, batch_size=batch_size)
    end_to_end_seconds = time.perf_counter() - start
    predictor = FacePredictor(classifier)
    image = LoadedImage.from_array(photo, "astronaut")
    predictor.faces(image)
    return {
        "backend": classifier.backend,
        "model_faces_per_s": round(len(faces) / model_seconds, 1),
        "end_to_end_faces_per_s": round(len(faces) / end_to_end_seconds, 1),
        "single_face_ms": _median_ms(lambda: classifier.predict(faces[:1]), 20),
        "photo_ms": _median_ms(lambda: predictor.faces(image), 10),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--dataset", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--num_faces", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    from skimage import data as skimage_data

    test = load_fer2013(args.dataset)["test"]
    faces = list(test.select(range(min(args.num_faces, len(test))))["image"])
    photo = skimage_data.astronaut()
    results = {"model": args.model, "faces": len(faces), "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "rows": []}
    results["rows"].append(measure(load_classifier(args.model, device="cpu"), faces, args.batch_size, photo))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(args.model, Path(tmp) / "model.onnx")
        results["rows"].append(measure(load_classifier(onnx_path=onnx_path), faces, args.batch_size, photo))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
