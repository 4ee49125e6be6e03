"""Drawing the predicted faces: boxes and labels on photos and video frames, and where the annotated files go."""

from __future__ import annotations

import tempfile
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
    """Where annotated images go: one named file (a single input) or a folder (names kept, clashes numbered)."""

    def __init__(self, target: str, single_input: bool):
        self.target = Path(target)
        self.is_file = self.target.suffix.lower() in WRITABLE_SUFFIXES | set(VIDEO_SUFFIXES)
        if self.is_file and not single_input:
            raise ValueError(f"--annotate {target}: a file name takes one input; give a folder for several inputs.")
        if not self.is_file and self.target.suffix and not self.target.is_dir():
            # `out.tif` or `out.xyz` would otherwise become a folder of that name, which is not what was asked.
            raise ValueError(
                f"--annotate {target}: fer_hf writes annotated images as {', '.join(sorted(WRITABLE_SUFFIXES))} and "
                f"videos as {', '.join(sorted(VIDEO_SUFFIXES))}; name a file with one of those, or a folder (to "
                "write into a folder whose name has a dot, create it first)."
            )
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


def video_writer(path: Path, fps: float, width: int, height: int):
    import cv2

    fourcc = VIDEO_SUFFIXES.get(path.suffix.lower(), "mp4v")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"--annotate {path}: OpenCV cannot write this video format; use a .mp4 or .avi file name.")
    return writer
