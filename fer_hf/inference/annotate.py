"""Drawing the predicted faces: boxes and labels on photos and video frames, and where the annotated files go."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from fer_hf.inference.images import LoadedImage

VIDEO_SUFFIXES = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
WRITABLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def draw_faces(rgb: np.ndarray, faces: list[dict], scale: float = 1.0, numbered: bool = False) -> np.ndarray:
    """A copy of `rgb` with each face's box and top label (boxes given in file pixels, drawn at 1/`scale`); with
    `numbered`, the label starts with the face's number (1, 2, ...) so that a page can refer to it."""
    import cv2

    canvas = np.ascontiguousarray(rgb.copy())
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1200)
    for number, face in enumerate(faces, start=1):
        x, y, w, h = (round(v / scale) for v in face["box"])
        text = f"{number}: " * numbered + f"{face['label']} {face['scores'][face['label']]:.2f}"
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 220, 0), thickness)
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = max(0, y - th - baseline - 2)
        cv2.rectangle(canvas, (x, top), (x + tw + 2, top + th + baseline + 2), (0, 220, 0), -1)
        cv2.putText(canvas, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return canvas


class AnnotationTarget:
    """Where annotated images go: one named file (a single input) or a folder (names kept, clashes numbered). No
    annotated file is written over an input, and each is written whole or not at all (into a temporary file in the
    same folder, then renamed), so a full disk leaves no truncated image behind."""

    def __init__(self, target: str, single_input: bool, inputs: Iterable[str | os.PathLike] = (),
                 video: bool = False):
        """`inputs`: the files to be read (never written over); `video`: the single input is a video."""
        self.target = Path(target)
        self.is_file = self.target.suffix.lower() in WRITABLE_SUFFIXES | set(VIDEO_SUFFIXES)
        self._inputs = {_same_file_key(path) for path in inputs}
        self._inputs.discard(None)
        if self.is_file and not single_input:
            raise ValueError(f"--annotate {target}: a file name takes one input; give a folder for several inputs.")
        if not self.is_file and self.target.suffix and not self.target.is_dir():
            # `out.tif` or `out.xyz` would otherwise become a folder of that name, which is not what was asked.
            raise ValueError(
                f"--annotate {target}: fer_hf writes annotated images as {', '.join(sorted(WRITABLE_SUFFIXES))} and "
                f"videos as {', '.join(sorted(VIDEO_SUFFIXES))}; name a file with one of those, or a folder (to "
                "write into a folder whose name has a dot, create it first)."
            )
        if self.is_file:
            wanted = VIDEO_SUFFIXES if video else WRITABLE_SUFFIXES
            if self.target.suffix.lower() not in wanted:
                # Checked before any work: a video written as one JPEG frame, or a photo as .mp4, is not an annotation.
                raise ValueError(f"--annotate {target}: the input is {'a video' if video else 'an image'}; name a "
                                 f"{', '.join(sorted(wanted))} file.")
            if self.target.is_dir():
                raise ValueError(f"--annotate {target}: an existing folder, not a file name; name a new file, or "
                                 "give the folder without a suffix-like name.")
            if _same_file_key(self.target) in self._inputs:
                raise ValueError(f"--annotate {target}: that is the input itself, which it would overwrite; name "
                                 "another file.")
        elif self.target.exists() and not self.target.is_dir():
            raise ValueError(f"--annotate {target}: an existing file, not a folder; give a folder, or a new file name "
                             f"ending in one of {', '.join(sorted(WRITABLE_SUFFIXES | set(VIDEO_SUFFIXES)))}.")
        folder = self.target.parent if self.is_file else self.target
        folder.mkdir(parents=True, exist_ok=True)
        try:  # a probe, before any image is read: as root, os.access says yes to folders that refuse writes
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as err:
            raise OSError(f"--annotate {target}: cannot write into {folder} ({err.strerror or err}).") from None
        self._used: set[Path] = set()

    def path_for(self, source: str, default_suffix: str) -> Path:
        if self.is_file:
            return self.target
        source_path = Path(source)
        suffix = source_path.suffix.lower() if source_path.suffix.lower() in WRITABLE_SUFFIXES else default_suffix
        candidate = self.target / f"{source_path.stem}_annotated{suffix}"
        counter = 1
        while candidate in self._used or _same_file_key(candidate) in self._inputs:
            counter += 1
            candidate = self.target / f"{source_path.stem}_annotated_{counter}{suffix}"
        self._used.add(candidate)
        return candidate

    def write_image(self, image: LoadedImage, faces: list[dict]) -> Path:
        from PIL import Image

        path = self.path_for(image.path, ".png")
        annotated = Image.fromarray(draw_faces(image.rgb, faces, image.scale))
        with whole_file(path) as partial:
            annotated.save(partial, format=Image.registered_extensions()[path.suffix.lower()])
        return path


def _same_file_key(path: str | os.PathLike) -> tuple[int, int] | str | None:
    """What tells two names of one file apart from two files: (device, inode) where it exists, else the absolute
    path (a file still to be written); None for a name that cannot be looked at."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return os.path.abspath(path)
    except (OSError, ValueError):
        return None
    return found.st_dev, found.st_ino


def partial_name(path: Path) -> Path:
    """Where `path` is written before it is whole: beside it, hidden, the suffix kept (writers pick the format by
    it), the process in the name so that runs into one folder do not meet."""
    return path.with_name(f".{path.stem}.{os.getpid()}.fer_hf-partial{path.suffix}")


@contextlib.contextmanager
def whole_file(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` (same suffix, so writers pick the format) that becomes `path` only when the
    block ends without an error; otherwise it is removed."""
    partial = partial_name(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def video_writer(path: Path, fps: float, width: int, height: int, name: Path | None = None):
    """OpenCV's writer of `path` (the format from its suffix); `name`: the file it stands for, in messages."""
    import cv2

    fourcc = VIDEO_SUFFIXES.get(path.suffix.lower(), "mp4v")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"the annotated video {name or path} could not be opened for writing by OpenCV (its "
                      f"{path.suffix} writer, or the folder); try a .mp4 or .avi file name elsewhere.")
    return writer
