"""Find faces in photos (or video frames) and classify their expression with a saved model.

    python -m fer_hf.predict photo.jpg holiday/ --model outputs/paper_resnet50
    python -m fer_hf.predict holiday/ --model outputs/paper_resnet50 --json --annotate annotated/
    python -m fer_hf.predict face_48x48.png --model DIR --no_detect
    python -m fer_hf.predict --video clip.mp4 --model DIR --annotate clip_annotated.mp4
    python -m fer_hf.predict photo.jpg --onnx model.onnx

Each face is found with OpenCV's Haar cascade (shipped in the opencv-python-headless wheel, see
`fer_hf.inference.faces`), cropped with a margin, turned into a 48x48 grayscale image like FER-2013's and classified
with the training's evaluation transform. A file that cannot be read gets an error naming it; the others are still
processed. The exit status is 1 when any input had an error or the output could not be written (a reader that went
away, `| head`, ends the run quietly), 2 when the model or the --annotate target could not be used or standard
output is closed, else 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

from fer_hf import cli
from fer_hf.inference.annotate import AnnotationTarget
from fer_hf.inference.classifier import (
    BACKEND_HELP,
    THREADS_HELP,
    TTA_MODES,
    check_backend_options,
    load_classifier,
)
from fer_hf.inference.faces import MIN_FACE_SIZE, SCALE_FACTOR
from fer_hf.inference.images import DEFAULT_MAX_MEGAPIXELS
from fer_hf.inference.predictor import NO_FACE, FacePredictor, expand_inputs, predict_images, predict_video

logger = logging.getLogger(__name__)

MAX_MARGIN = 1.0


@dataclass
class PredictArguments:
    model: str | None = field(
        default=None,
        metadata={"help": "Saved model folder; default: the model shipped with fer_hf. Optional with --onnx (the "
                  "export embeds the config)."},
    )
    onnx: str | None = field(default=None, metadata={"help": "Run this exported .onnx with ONNX Runtime instead."})
    json: bool = field(default=False, metadata={"help": "Print one JSON list (an object per input, a line each, "
                                                "written as they come) instead of text."})
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
    scale_factor: float = field(
        default=SCALE_FACTOR,
        metadata={"help": "Detector pyramid step (OpenCV scaleFactor): 1.2 detects in about 60%% of the time, with "
                  "slightly different boxes."},
    )
    max_megapixels: float = field(
        default=DEFAULT_MAX_MEGAPIXELS,
        metadata={"help": "Larger images are decoded reduced (JPEG) or refused (other formats), bounding memory."},
    )
    tta: str = field(default="none", metadata={"help": "Test-time augmentation per face: none, hflip, tencrop."})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu; default cuda when available."})
    backend: str = field(default="auto", metadata={"help": BACKEND_HELP})
    threads: int | None = field(default=None, metadata={"help": THREADS_HELP})

    def __post_init__(self):
        if self.tta not in TTA_MODES:
            raise ValueError(f"--tta must be one of {TTA_MODES}, got {self.tta!r}.")
        check_backend_options(self.backend, self.threads)
        if self.frame_step < 1 or self.batch_size < 1:
            raise ValueError("--frame_step and --batch_size must be at least 1.")
        if not 0 <= self.margin <= MAX_MARGIN:
            # Below 0 the crop cuts into the face (and at -0.5 it is empty); far above 1 it is mostly background.
            raise ValueError(f"--margin must be between 0 and {MAX_MARGIN} (a share of the face's size), "
                             f"got {self.margin}.")
        if not math.isfinite(self.scale_factor) or not math.isfinite(self.max_megapixels):
            raise ValueError("--scale_factor and --max_megapixels take finite numbers (for no practical size limit, "
                             "give e.g. --max_megapixels 1000).")
        if not self.scale_factor > 1:
            raise ValueError(f"--scale_factor must be above 1 (each detector scale that much larger than the last), "
                             f"got {self.scale_factor}.")
        if self.min_neighbors < 0 or self.min_face_size < 1:
            raise ValueError("--min_neighbors must be at least 0 and --min_face_size at least 1.")
        if not self.max_megapixels > 0:
            raise ValueError(f"--max_megapixels must be above 0, got {self.max_megapixels}.")


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


def write_line(text: str, file) -> None:
    """`text` printed without breaking a progress bar on the terminal (tqdm's write, once tqdm is in use: it is
    imported only where a bar shows)."""
    tqdm_auto = sys.modules.get("tqdm.auto")
    if tqdm_auto is None:
        print(text, file=file)
    else:
        tqdm_auto.tqdm.write(text, file=file)


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser("fer_hf.predict", __doc__, PredictArguments)
    parser.add_argument("inputs", nargs="*", help="Image files and/or folders of images.")
    args, extra = cli.parse(parser, argv)
    cli.setup_logging(fer_hf_level=logging.WARNING)
    if not extra.inputs and args.video is None:
        parser.error("give image files or folders, or --video FILE.")

    if sys.stdout is None:  # started with standard output closed (`>&-`): every result would be lost unsaid
        if sys.stderr is not None:
            print("fer_hf.predict: standard output is closed; nowhere to write the results.", file=sys.stderr)
        return 2

    files, folder_errors = expand_inputs(extra.inputs)
    failed, last = False, None  # last: --json's newest record, printed once the next shows whether a comma follows
    closed = False  # --json's list closed

    def write(text: str, stream) -> None:
        try:
            write_line(text, file=stream)
        except OSError as err:  # a reader that went away (`| head`), a full disk or device behind the stream
            raise _OutputLost(stream, err) from err

    def emit(record: dict) -> None:
        # --json streams one list, a record per line: json's C encoder (an indented dump runs its pure-Python one,
        # 0.2 ms a record, a tenth of the model's time on a folder of crops), and nothing held for a large folder.
        nonlocal failed, last
        failed |= bool(record["error"])
        if not args.json:
            if record["error"] and (record.get("faces") or record.get("frames")):
                # found, but their annotated image or video could not be written: the results, then why
                write(format_record({**record, "error": None}), sys.stdout)
            write(format_record(record), sys.stderr if record["error"] else sys.stdout)
            return
        write("[" if last is None else last + ",", sys.stdout)
        last = "  " + json.dumps(record)

    def finish() -> None:
        # Closed even when the run breaks off (not a bad file: those are records, but a model that cannot be loaded,
        # a failing model, memory, Ctrl-C): the records so far stay readable JSON; the traceback or message and the
        # exit status say the run did not finish. Flushed here, where a failing write can still be said.
        nonlocal closed
        if args.json and not closed:
            closed = True
            write("[]" if last is None else f"{last}\n]", sys.stdout)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError as err:
                raise _OutputLost(stream, err) from err

    try:
        try:
            classifier = load_classifier(args.model, onnx_path=args.onnx, device=args.device, backend=args.backend,
                                         threads=args.threads)
            annotate = None
            if args.annotate:
                videos = [args.video] if args.video is not None else []
                annotate = AnnotationTarget(args.annotate, single_input=len(files) + len(videos) == 1,
                                            inputs=[*files, *videos], video=bool(videos) and not files)
        except cli.INPUT_ERRORS as err:  # the model folder / ONNX file / --annotate target; each message says why
            print(f"fer_hf.predict: {err}", file=sys.stderr)
            return 2
        predictor = FacePredictor(classifier, detect=not args.no_detect, margin=args.margin,
                                  min_neighbors=args.min_neighbors, min_face_size=args.min_face_size,
                                  scale_factor=args.scale_factor, tta=args.tta)
        for record in folder_errors:
            emit(record)
        for record in predict_images(predictor, files, batch_size=args.batch_size,
                                     max_megapixels=args.max_megapixels, annotate=annotate):
            emit(record)
        if args.video is not None:
            emit(predict_video(predictor, args.video, frame_step=args.frame_step, annotate=annotate))
        finish()
    except _OutputLost as lost:
        lost.settle()
        return 1
    finally:
        if not closed:  # the run broke off before `finish`: close the list if the stream still takes it
            try:
                finish()
            except _OutputLost as lost:
                lost.settle(quiet=True)
    return 1 if failed else 0


class _OutputLost(Exception):
    """Standard output or error refused a write."""

    def __init__(self, stream, error: OSError):
        super().__init__(error)
        self.stream, self.error = stream, error

    def settle(self, quiet: bool = False) -> None:
        """Say what was lost (on standard error, where it still takes writes; nothing for a reader that went away),
        and point the failed stream at /dev/null, so that the interpreter's last flush at exit does not fail and
        print again. Only the process's own streams are redirected, not a notebook's."""
        if not quiet and not isinstance(self.error, BrokenPipeError) and self.stream is not sys.stderr:
            try:
                print(f"fer_hf.predict: could not write the results to standard output ({self.error}).",
                      file=sys.stderr)
            except OSError:
                pass
        if self.stream is sys.__stdout__ or self.stream is sys.__stderr__:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(devnull, self.stream.fileno())
                finally:
                    os.close(devnull)
            except (OSError, ValueError):
                pass


if __name__ == "__main__":
    cli.exit_now(main(sys.argv[1:]))
