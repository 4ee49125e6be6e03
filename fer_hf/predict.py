"""Find faces in photos (or video frames) and classify their expression with a saved model.

    python -m fer_hf.predict photo.jpg holiday/ --model outputs/paper_resnet50
    python -m fer_hf.predict holiday/ --model outputs/paper_resnet50 --json --annotate annotated/
    python -m fer_hf.predict face_48x48.png --model DIR --no_detect
    python -m fer_hf.predict --video clip.mp4 --model DIR --annotate clip_annotated.mp4
    python -m fer_hf.predict photo.jpg --onnx model.onnx

Each face is found with OpenCV's Haar cascade (shipped in the opencv-python-headless wheel, see `fer_hf.faces`),
cropped with a margin, turned into a 48x48 grayscale image like FER-2013's and classified with the training's
evaluation transform. A file that cannot be read gets an error naming it; the others are still processed. The exit
status is 1 when any input had an error, 2 when the model could not be loaded, else 0.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from fer_hf.faces import (
    DEFAULT_MAX_MEGAPIXELS,
    IMAGE_SUFFIXES,
    MIN_FACE_SIZE,
    Box,
    HaarFaceDetector,
    ImageReadError,
    LoadedImage,
    crop_face,
    list_images,
    read_image,
    whole_image_face,
)
from fer_hf.inference import TTA_MODES, FerClassifier, load_classifier, softmax

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
WRITABLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
NO_FACE = "no face found (if the image already is a cropped face, pass --no_detect)"


@dataclass
class PredictArguments:
    model: str | None = field(
        default=None, metadata={"help": "Saved model folder. Optional with --onnx (the export embeds the config)."}
    )
    onnx: str | None = field(default=None, metadata={"help": "Run this exported .onnx with ONNX Runtime instead."})
    json: bool = field(default=False, metadata={"help": "Print one JSON list (an object per input) instead of text."})
    annotate: str | None = field(
        default=None,
        metadata={"help": "Write images (or the video) with boxes and labels: a folder, or a file name for 1 input."},
    )
    no_detect: bool = field(
        default=False, metadata={"help": "Classify the whole image as one face (inputs already are FER-style crops)."}
    )
    video: str | None = field(default=None, metadata={"help": "A video file: classify the faces of its frames."})
    frame_step: int = field(default=1, metadata={"help": "Video: classify every Nth frame (annotation keeps all)."})
    batch_size: int = field(default=32, metadata={"help": "Images read per batch; their faces share forward passes."})
    margin: float = field(default=0.2, metadata={"help": "Crop margin around a found face, as a share of its size."})
    min_neighbors: int = field(
        default=5, metadata={"help": "Detector strictness (OpenCV minNeighbors): higher finds fewer false faces."}
    )
    min_face_size: int = field(
        default=MIN_FACE_SIZE, metadata={"help": "Smallest face in pixels, on the image scaled to 1024 px."}
    )
    max_megapixels: float = field(
        default=DEFAULT_MAX_MEGAPIXELS,
        metadata={"help": "Larger images are decoded reduced (JPEG) or refused (other formats), bounding memory."},
    )
    tta: str = field(default="none", metadata={"help": "Test-time augmentation per face: none, hflip, tencrop."})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu; default cuda when available."})

    def __post_init__(self):
        if self.model is None and self.onnx is None:
            raise ValueError("Give the model: --model DIR (a saved model folder) or --onnx FILE.")
        if self.tta not in TTA_MODES:
            raise ValueError(f"--tta must be one of {TTA_MODES}, got {self.tta!r}.")
        if self.frame_step < 1 or self.batch_size < 1:
            raise ValueError("--frame_step and --batch_size must be at least 1.")


class FacePredictor:
    """Detector + crop + classifier: `faces(image)` gives the JSON face records of one image."""

    def __init__(
        self,
        classifier: FerClassifier,
        *,
        detect: bool = True,
        margin: float = 0.2,
        min_neighbors: int = 5,
        min_face_size: int = MIN_FACE_SIZE,
        tta: str = "none",
    ):
        self.classifier = classifier
        self.detector = HaarFaceDetector(min_neighbors=min_neighbors, min_face_size=min_face_size) if detect else None
        self.margin = margin
        self.tta = tta

    def locate(self, image: LoadedImage) -> tuple[list[Box], list]:
        """Boxes (in the working image's pixels) and their 48x48 grayscale crops."""
        gray = image.gray
        if self.detector is None:
            return [(0, 0, gray.shape[1], gray.shape[0])], [whole_image_face(gray)]
        boxes = self.detector.detect(gray)
        return boxes, [crop_face(gray, box, self.margin) for box in boxes]

    def classify(self, crops: list) -> np.ndarray:
        """Class probabilities (N, num_labels)."""
        if not crops:
            return np.zeros((0, len(self.classifier.label_names)), np.float32)
        return softmax(self.classifier.predict(crops, self.tta))

    def records(self, boxes: list[Box], probabilities: np.ndarray, scale: float) -> list[dict]:
        names = self.classifier.label_names
        return [
            {
                "box": [int(round(v * scale)) for v in box],  # in the file's (upright) pixels
                "label": names[int(np.argmax(p))],
                "scores": {name: round(float(v), 4) for name, v in zip(names, p, strict=True)},
            }
            for box, p in zip(boxes, probabilities, strict=True)
        ]

    def faces(self, image: LoadedImage) -> list[dict]:
        boxes, crops = self.locate(image)
        return self.records(boxes, self.classify(crops), image.scale)


# ----------------------------------------------------------------------------------------------------- images


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[dict]]:
    """Files to read (folders expanded, non-image files in them skipped) and error records for empty folders."""
    files: list[Path] = []
    errors: list[dict] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            images, skipped = list_images(path)
            if skipped:
                logger.info("%s: skipped %d non-image file(s)", path, skipped)
            if not images:
                errors.append({"file": str(path), "faces": [], "error": (
                    f"{path}: no image files in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})."
                )})
            files.extend(images)
        else:
            files.append(path)  # missing or unreadable files are reported when read, in order
    return files, errors


def predict_images(
    predictor: FacePredictor,
    files: list[Path],
    *,
    batch_size: int = 32,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    annotate: AnnotationTarget | None = None,
) -> Iterator[dict]:
    """One record per file, in order: `{"file", "faces": [{"box", "label", "scores"}], "error"}`.

    Files are read and their faces cropped a batch at a time; all faces of a batch go through the model together.
    Decoded photos are dropped once cropped, unless they are still to be annotated (then batches are smaller).
    """
    # (record, boxes, crops, scale to file pixels, the decoded photo only while it is still to be annotated)
    pending: list[tuple[dict, list[Box], list, float, LoadedImage | None]] = []
    max_pending = min(batch_size, 4) if annotate else batch_size
    progress = tqdm(total=len(files), unit="image", desc="predict", disable=None if len(files) > 1 else True)
    try:
        for path in files:
            record = {"file": str(path), "faces": [], "error": None}
            try:
                image = read_image(path, max_megapixels)
                boxes, crops = predictor.locate(image)
            except ImageReadError as err:
                record["error"] = str(err)
                pending.append((record, [], [], 1.0, None))
            else:
                pending.append((record, boxes, crops, image.scale, image if annotate else None))
            if len(pending) >= max_pending or sum(len(p[2]) for p in pending) >= batch_size:
                yield from _flush(predictor, pending, annotate)
                progress.update(len(pending))
                pending = []
        yield from _flush(predictor, pending, annotate)
        progress.update(len(pending))
    finally:
        progress.close()


def _flush(predictor: FacePredictor, pending: list, annotate: AnnotationTarget | None) -> Iterator[dict]:
    probabilities = predictor.classify([crop for _, _, crops, _, _ in pending for crop in crops])
    start = 0
    for record, boxes, crops, scale, image in pending:
        record["faces"] = predictor.records(boxes, probabilities[start: start + len(crops)], scale)
        start += len(crops)
        if annotate is not None and image is not None:
            annotate.write_image(image, record["faces"])
        yield record


# ----------------------------------------------------------------------------------------------------- drawing


def draw_faces(rgb: np.ndarray, faces: list[dict], scale: float = 1.0) -> np.ndarray:
    """A copy of `rgb` with each face's box and top label (boxes given in file pixels, drawn at 1/`scale`)."""
    import cv2

    canvas = np.ascontiguousarray(rgb.copy())
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1200)
    for face in faces:
        x, y, w, h = (round(v / scale) for v in face["box"])
        text = f"{face['label']} {face['scores'][face['label']]:.2f}"
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 220, 0), thickness)
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = max(0, y - th - baseline - 2)
        cv2.rectangle(canvas, (x, top), (x + tw + 2, top + th + baseline + 2), (0, 220, 0), -1)
        cv2.putText(canvas, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return canvas


class AnnotationTarget:
    """Where annotated images go: one named file (a single input) or a folder (names kept, clashes numbered)."""

    def __init__(self, target: str, single_input: bool):
        self.target = Path(target)
        self.is_file = self.target.suffix.lower() in WRITABLE_SUFFIXES | set(VIDEO_SUFFIXES)
        if self.is_file and not single_input:
            raise ValueError(f"--annotate {target}: a file name takes one input; give a folder for several inputs.")
        (self.target.parent if self.is_file else self.target).mkdir(parents=True, exist_ok=True)
        self._used: set[Path] = set()

    def path_for(self, source: str, default_suffix: str) -> Path:
        if self.is_file:
            return self.target
        source_path = Path(source)
        suffix = source_path.suffix.lower() if source_path.suffix.lower() in WRITABLE_SUFFIXES else default_suffix
        candidate = self.target / f"{source_path.stem}_annotated{suffix}"
        counter = 1
        while candidate in self._used:
            counter += 1
            candidate = self.target / f"{source_path.stem}_annotated_{counter}{suffix}"
        self._used.add(candidate)
        return candidate

    def write_image(self, image: LoadedImage, faces: list[dict]) -> Path:
        from PIL import Image

        path = self.path_for(image.path, ".png")
        Image.fromarray(draw_faces(image.rgb, faces, image.scale)).save(path)
        return path


# ----------------------------------------------------------------------------------------------------- video


def predict_video(
    predictor: FacePredictor, path: str, *, frame_step: int = 1, annotate: AnnotationTarget | None = None
) -> dict:
    """`{"file", "frames": [{"frame", "time", "faces"}], "frames_per_second", "video_fps", "error"}`."""
    import cv2

    record: dict = {"file": str(path), "frames": [], "frames_per_second": None, "video_fps": None, "error": None}
    if not Path(path).is_file():
        record["error"] = f"{path}: no such video file; check the path."
        return record
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        record["error"] = (f"{path}: OpenCV cannot open this video; convert it to H.264 MP4 (e.g. "
                           f"`ffmpeg -i {path} -c:v libx264 out.mp4`).")
        return record
    video_fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    faces: list[dict] = []
    index = classified = 0
    start = time.perf_counter()
    progress = tqdm(total=total, unit="frame", desc=Path(path).name, disable=None)
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            if index % frame_step == 0:
                frame = LoadedImage.from_array(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{path}#{index}")
                faces = predictor.faces(frame)
                record["frames"].append({"frame": index, "time": round(index / video_fps, 3), "faces": faces})
                classified += 1
            if annotate is not None:
                if writer is None:
                    writer = _video_writer(annotate.path_for(str(path), ".mp4"), video_fps, bgr.shape[1], bgr.shape[0])
                # Skipped frames keep the last classified faces, so the boxes do not flicker.
                writer.write(draw_faces(bgr, faces))  # drawn on the BGR frame: green is green in either order
            index += 1
            progress.update(1)
    finally:
        progress.close()
        capture.release()
        if writer is not None:
            writer.release()
    elapsed = time.perf_counter() - start
    if index == 0:
        record["error"] = f"{path}: no frame could be read; the file is empty, truncated or not a video."
        return record
    record["frames_per_second"] = round(classified / elapsed, 2) if elapsed > 0 else None
    record["video_fps"] = round(video_fps, 3)
    return record


def _video_writer(path: Path, fps: float, width: int, height: int):
    import cv2

    fourcc = VIDEO_SUFFIXES.get(path.suffix.lower(), "mp4v")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"--annotate {path}: OpenCV cannot write this video format; use a .mp4 or .avi file name.")
    return writer


# ----------------------------------------------------------------------------------------------------- entry point


def format_record(record: dict) -> str:
    """The human-readable lines for one input."""
    if record["error"]:
        return f"error: {record['error']}"  # the message names the file
    if "frames" in record:
        seen = [f for f in record["frames"] if f["faces"]]
        counts = Counter(face["label"] for f in record["frames"] for face in f["faces"])
        summary = ", ".join(f"{label} {n}" for label, n in counts.most_common())
        return (f"{record['file']}: {len(record['frames'])} frames classified at {record['frames_per_second']} "
                f"frames/s (video: {record['video_fps']} fps); faces in {len(seen)} frames"
                f"{'; top emotions per face: ' + summary if summary else ''}")
    if not record["faces"]:
        return f"{record['file']}: {NO_FACE}"
    lines = [f"{record['file']}: {len(record['faces'])} face{'s' if len(record['faces']) > 1 else ''}"]
    for i, face in enumerate(record["faces"], 1):
        scores = "  ".join(f"{name} {100 * p:.1f}%" for name, p in face["scores"].items())
        lines.append(f"  face {i} at [x, y, w, h] = {face['box']}: {face['label'].upper()} "
                     f"({100 * face['scores'][face['label']]:.1f}%)  |  {scores}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(PredictArguments, prog="python -m fer_hf.predict",
                              description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="Image files and/or folders of images.")
    try:
        args, extra = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # the checks in PredictArguments.__post_init__
        parser.error(str(err))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    if not extra.inputs and args.video is None:
        parser.error("give image files or folders, or --video FILE.")

    files, folder_errors = expand_inputs(extra.inputs)
    try:
        classifier = load_classifier(args.model, onnx_path=args.onnx, device=args.device)
        annotate = None
        if args.annotate:
            annotate = AnnotationTarget(args.annotate, single_input=len(files) + (args.video is not None) == 1)
    except (OSError, ValueError) as err:  # the model folder / ONNX file / --annotate target; each message says why
        print(f"fer_hf.predict: {err}", file=sys.stderr)
        return 2
    predictor = FacePredictor(classifier, detect=not args.no_detect, margin=args.margin,
                              min_neighbors=args.min_neighbors, min_face_size=args.min_face_size, tta=args.tta)

    records: list[dict] = []

    def emit(record: dict) -> None:
        records.append(record)
        if not args.json:
            tqdm.write(format_record(record), file=sys.stderr if record["error"] else sys.stdout)

    for record in folder_errors:
        emit(record)
    for record in predict_images(predictor, files, batch_size=args.batch_size, max_megapixels=args.max_megapixels,
                                 annotate=annotate):
        emit(record)
    if args.video is not None:
        emit(predict_video(predictor, args.video, frame_step=args.frame_step, annotate=annotate))
    if args.json:
        print(json.dumps(records, indent=2))
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
