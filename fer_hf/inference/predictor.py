"""Photos and video frames to face records: detection, cropping and classification, batched across files.

A record is `{"file", "faces": [{"box": [x, y, w, h], "label", "scores": {label: p}}], "error"}` (boxes in the file's
upright pixels); a video's is `{"file", "frames": [{"frame", "time", "faces"}], ...}`. `fer_hf.predict`, `evaluate`
and the web demo all go through `FacePredictor`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np

from fer_hf.inference.annotate import AnnotationTarget, draw_faces, partial_name, video_writer
from fer_hf.inference.background import chunks, read_ahead
from fer_hf.inference.classifier import FerClassifier, prepared_logits, softmax
from fer_hf.inference.faces import MIN_FACE_SIZE, SCALE_FACTOR, Box, HaarFaceDetector, crop_face, whole_image_face
from fer_hf.inference.images import (
    DEFAULT_MAX_MEGAPIXELS,
    ImageReadError,
    LoadedImage,
    list_images,
    read_image,
    read_plain_gray,
)
from fer_hf.labels import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

READ_CHUNKS = 4  # a batch's files are read in this many tasks
NO_FACE = "no face found (if the image already is a cropped face, pass --no_detect)"


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
        scale_factor: float = SCALE_FACTOR,
        tta: str = "none",
    ):
        self.classifier = classifier
        self.detector = HaarFaceDetector(min_neighbors=min_neighbors, min_face_size=min_face_size,
                                         scale_factor=scale_factor) if detect else None
        self.margin = margin
        self.tta = tta

    def locate(self, gray: np.ndarray) -> tuple[list[Box], list]:
        """Boxes (in the pixels of `gray`, a working image's `.gray`) and their 48x48 grayscale crops."""
        if self.detector is None:
            return [(0, 0, gray.shape[1], gray.shape[0])], [whole_image_face(gray)]
        boxes = self.detector.detect(gray)
        return boxes, [crop_face(gray, box, self.margin) for box in boxes]

    def classify(self, crops: list, whole: bool = False) -> np.ndarray:
        """Class probabilities (N, num_labels) of crops (`whole`: see `FerClassifier.logits`)."""
        if not crops:
            return np.zeros((0, len(self.classifier.label_names)), np.float32)
        prepared = self.classifier.preprocess.prepare(crops, self.tta)
        return softmax(prepared_logits(self.classifier, prepared, self.tta, whole).mean(axis=1))

    def records(self, boxes: list[Box], probabilities: np.ndarray, scale: float | list[float]) -> list[dict]:
        """A face record per box; `scale` maps the boxes to the file's pixels (one for all, or one per box)."""
        names = self.classifier.label_names
        scales = [scale] * len(boxes) if np.ndim(scale) == 0 else scale
        return [
            {
                "box": [int(round(v * box_scale)) for v in box],  # in the file's (upright) pixels
                "label": names[label],
                "scores": dict(zip(names, scores, strict=True)),
            }
            for box, box_scale, label, scores in zip(boxes, scales, np.argmax(probabilities, axis=-1).tolist(),
                                                     round_scores(probabilities), strict=True)
        ]

    def faces(self, image: LoadedImage) -> list[dict]:
        boxes, crops = self.locate(image.gray)
        return self.records(boxes, self.classify(crops), image.scale)


def round_scores(probabilities: np.ndarray, digits: int = 4) -> list[list[float]]:
    """`round(float(p), digits)` of every probability, a batch at once. For float32 (what both backends give) the
    result is the same to the bit: p * 10**digits is exact in float64 (24 + 14 bits), so numpy's rint, half to even
    like Python's round, picks the same integer, and the division gives the float nearest to it / 10**digits."""
    if probabilities.dtype in (np.float16, np.float32) and 0 <= digits <= 4:
        return np.round(probabilities.astype(np.float64), digits).tolist()
    return [[round(float(p), digits) for p in row] for row in probabilities]


# ----------------------------------------------------------------------------------------------------- images


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, **kwargs):
    """tqdm's bar where tqdm would show one (standard error a terminal, or a notebook), else a silent stand-in:
    tqdm's imports cost 50 ms, a tenth of a one-photo run."""
    if not (getattr(sys.stderr, "isatty", lambda: False)() or "ipykernel" in sys.modules):  # tqdm.auto's widget
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, **kwargs)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[dict]]:
    """Files to read (folders expanded, non-image files in them skipped) and error records for empty folders."""
    files: list[Path] = []
    errors: list[dict] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            unlisted: list[tuple[Path, OSError]] = []
            linked: list[Path] = []
            try:
                images, skipped = list_images(path, unlisted, linked)
            except OSError as err:
                images, skipped = [], 0
                error = f"{path}: cannot list this folder ({err.strerror or err}); check its permissions."
            else:
                error = f"{path}: no image files in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})."
                if linked:
                    error = error[:-1] + (f"; {len(linked)} link(s) to folders were not followed ({linked[0]}"
                                          f"{', ...' if len(linked) > 1 else ''}): pass the folders themselves.")
            if skipped:
                logger.info("%s: skipped %d non-image file(s)", path, skipped)
            if linked and images:
                logger.warning("%s: %d link(s) to folders not followed (%s%s); pass them as inputs to include "
                               "their images.", path, len(linked), linked[0], ", ..." if len(linked) > 1 else "")
            # Said, not passed over in silence: the run would look complete without that subfolder's images.
            errors.extend({"file": str(sub), "faces": [], "error": f"{sub}: cannot list this folder "
                           f"({err.strerror or err}); its images were not read. Check its permissions."}
                          for sub, err in unlisted)
            if not images:
                errors.append({"file": str(path), "faces": [], "error": error})
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

    A background thread reads the files and finds and crops their faces, up to a batch ahead; the classifier's
    `streams` others prepare whole batches of crops and run the model on them; this one writes the records. Decoded
    photos are dropped once cropped, unless they are still to be annotated (then batches are smaller, and one at a
    time goes to the model).
    """
    max_pending = min(batch_size, 4) if annotate else batch_size
    # Whole batches at once only where there are several batches: a single one is split across the threads.
    streams = 1 if annotate or len(files) <= max_pending else predictor.classifier.streams

    def load(path: Path) -> tuple[dict, list[Box], list, float, LoadedImage | None]:
        # (record, boxes, crops, scale to file pixels, the decoded photo only while it is to be annotated)
        record = {"file": str(path), "faces": [], "error": None}
        if predictor.detector is None and not annotate and (gray := read_plain_gray(path, max_megapixels)) is not None:
            # A face crop (--no_detect): its pixels without Pillow's per-file overhead, which outweighed the model.
            return record, *predictor.locate(gray), 1.0, None
        try:
            image = read_image(path, max_megapixels)
            boxes, crops = predictor.locate(image.gray)
        except ImageReadError as err:
            record["error"] = str(err)
            return record, [], [], 1.0, None
        return record, boxes, crops, image.scale, image if annotate else None

    def load_chunk(paths: list[Path]) -> tuple[list, Exception | None]:
        # Files are read a few at a time: a task per file cost more in hand-offs between threads than reading a
        # face crop. The reader failing (not a bad file: those are records) ends the chunk; what it read comes out.
        loaded = []
        try:
            for path in paths:
                loaded.append(load(path))
        except Exception as err:
            return loaded, err
        return loaded, None

    def batches() -> Iterator[list]:
        pending: list[tuple[dict, list[Box], list, float, LoadedImage | None]] = []
        crops = 0
        # Photos kept for annotation are large: read only one ahead of those.
        chunk = 1 if annotate else max(1, max_pending // READ_CHUNKS)
        depth = 1 if annotate else max(1, max_pending // chunk)
        try:
            for loaded, error in read_ahead(load_chunk, chunks(files, chunk), depth=depth):
                for item in loaded:
                    pending.append(item)
                    crops += len(item[2])
                    if len(pending) >= max_pending or crops >= batch_size:
                        yield pending
                        pending, crops = [], 0
                if error is not None:
                    raise error
        except Exception:  # the reader itself failed: the files read before it still get their records
            if pending:
                yield pending
            raise
        if pending:
            yield pending

    def classify(pending: list) -> tuple[list, np.ndarray]:
        # The batch's crops prepared together: faces of one size go through Pillow as one stack.
        faces = [crop for _, _, crops, _, _ in pending for crop in crops]
        return pending, predictor.classify(faces, whole=streams > 1)

    progress = progress_bar(len(files), unit="image", desc="predict") if len(files) > 1 else _NoBar()
    try:
        with closing(batches()) as loaded:
            if predictor.classifier.model is not None and predictor.classifier.device == "cpu" and streams == 1:
                # A PyTorch model on a CPU runs on this thread: run from any other thread it took a third longer, far
                # more than writing the records after it costs (GNU OpenMP's workers then sleep between operations
                # instead of spinning, as with OMP_WAIT_POLICY=PASSIVE, which slows this thread as much).
                classified = map(classify, loaded)
            else:
                # The model runs in threads of its own, `streams` whole batches at once, while this one writes the
                # records of the last: a batch split across threads waits for its slowest part, which the reader's
                # thread slowed.
                classified = read_ahead(classify, loaded, depth=streams, workers=streams, name="fer_hf-model")
            for pending, probabilities in classified:
                faces = predictor.records([box for _, boxes, _, _, _ in pending for box in boxes], probabilities,
                                          [scale for _, boxes, _, scale, _ in pending for _ in boxes])
                start = 0
                for record, boxes, _, _, image in pending:
                    record["faces"] = faces[start: start + len(boxes)]
                    start += len(boxes)
                    if annotate is not None and image is not None:
                        try:
                            annotate.write_image(image, record["faces"])
                        except (OSError, ValueError) as err:  # disk full, a folder removed meanwhile, a bad name
                            # The faces stay in the record: only the drawing is lost, and the error says so.
                            record["error"] = f"{record['file']}: faces found, but the annotated image could not " \
                                              f"be written ({err})."
                    yield record
                progress.update(len(pending))
    finally:
        progress.close()


# ----------------------------------------------------------------------------------------------------- video


def _video_frames(path: Path) -> int:
    """The frame count a written video's container declares (0 where OpenCV cannot open it)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()


def predict_video(
    predictor: FacePredictor, path: str, *, frame_step: int = 1, annotate: AnnotationTarget | None = None
) -> dict:
    """`{"file", "frames": [{"frame", "time", "faces"}], "frames_per_second", "video_fps", "error"}`."""
    import cv2

    record: dict = {"file": str(path), "frames": [], "frames_per_second": None, "video_fps": None, "error": None}
    if Path(path).is_dir():
        record["error"] = f"{path}: a folder, not a video file; pass its images as inputs (without --video)."
        return record
    if not Path(path).is_file():
        record["error"] = f"{path}: no such video file; check the path."
        return record
    if Path(path).stat().st_size == 0:
        record["error"] = f"{path}: the file is empty (0 bytes); copy or download it again."
        return record
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        record["error"] = (f"{path}: OpenCV cannot open this video; convert it to H.264 MP4 (e.g. "
                           f"`ffmpeg -i {path} -c:v libx264 out.mp4`).")
        return record
    video_fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = target = partial = None
    written = 0
    faces: list[dict] = []
    index = classified = 0
    start = time.perf_counter()
    progress = progress_bar(total, unit="frame", desc=Path(path).name)
    finished = False
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
                    target = annotate.path_for(str(path), ".mp4")
                    partial = partial_name(target)
                    try:
                        writer = video_writer(partial, video_fps, bgr.shape[1], bgr.shape[0], name=target)
                    except OSError as err:  # the frames are still classified; the record says what was not written
                        partial.unlink(missing_ok=True)  # some OpenCV backends create the file before failing
                        record["error"] = f"{path}: frames classified, but {err}"
                        annotate = None
                if writer is not None:
                    # Skipped frames keep the last classified faces, so the boxes do not flicker.
                    writer.write(draw_faces(bgr, faces))  # drawn on the BGR frame: green is green in either order
                    written += 1
            index += 1
            progress.update(1)
        finished = True
    finally:
        progress.close()
        capture.release()
        if writer is not None:
            writer.release()
            # OpenCV's writer reports no failure (a full disk leaves a file no player opens): the file is checked
            # whole, then takes the target's name; a run broken off leaves none.
            whole = finished and _video_frames(partial) == written
            if whole:
                try:
                    os.replace(partial, target)
                except OSError as err:  # the target became a folder meanwhile, ...
                    whole = False
                    record["error"] = (f"{path}: frames classified, but the annotated video could not be named "
                                       f"{target} ({err.strerror or err}).")
            if not whole:
                partial.unlink(missing_ok=True)
                if finished and not record["error"]:
                    record["error"] = (f"{path}: frames classified, but the annotated video {target} could not be "
                                       "written whole (is the disk full?); nothing was left there.")
    elapsed = time.perf_counter() - start
    if index == 0:
        record["error"] = f"{path}: no frame could be read; the file is empty, truncated or not a video."
        return record
    record["frames_per_second"] = round(classified / elapsed, 2) if elapsed > 0 else None
    record["video_fps"] = round(video_fps, 3)
    return record
