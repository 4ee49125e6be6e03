"""Property-based tests (hypothesis) of the readers against the files people really have.

Every hostile input ends in a clear message naming the file (and the line, where there is one), or is dropped and
counted where the user asked for that; never a traceback from deep inside a library, never a silent drop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import center_inside, require_module
from fer_hf.data import load
from fer_hf.data.load import FerDataError, decode_faces
from fer_hf.labels import USAGE_TO_SPLIT

NUM_PIXELS = load.NUM_PIXELS
USAGES = tuple(USAGE_TO_SPLIT)
# One defect per bad row; each makes exactly that row unusable.
DEFECTS = (
    "short", "long", "over_255", "negative", "float", "nan", "empty_pixels", "double_space_letters",
    "label_out_of_range", "label_text", "unknown_usage", "extra_column", "missing_column", "non_utf8",
)
skimage_data = require_module("skimage.data", "sample photos: pip install -e .[dev]")
HOSTILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Row:
    label: int
    pixels: np.ndarray
    usage: str
    defect: str | None

    def fields(self, rng: np.random.Generator) -> dict[str, bytes]:
        values = [str(v) for v in self.pixels]
        label, usage = str(self.label), self.usage
        position = int(rng.integers(NUM_PIXELS))
        if self.defect == "short":
            del values[position]
        elif self.defect == "long":
            values.insert(position, "7")
        elif self.defect == "over_255":
            values[position] = str(int(rng.integers(256, 100_000)))
        elif self.defect == "negative":
            values[position] = str(-int(rng.integers(1, 300)))
        elif self.defect == "float":
            values[position] = f"{rng.uniform(0, 255):.2f}"
        elif self.defect == "nan":
            values[position] = str(rng.choice(["nan", "NaN", "inf", "-"]))
        elif self.defect == "empty_pixels":
            values = []
        elif self.defect == "double_space_letters":
            values[position] = "x"
        elif self.defect == "label_out_of_range":
            label = str(rng.choice([-1, 7, 8, 42]))
        elif self.defect == "label_text":
            label = str(rng.choice(["x", "nan", "3.0", "", "happy"]))
        elif self.defect == "unknown_usage":
            usage = str(rng.choice(["Validation", "", "training", "Test", "PrivateTest2"]))
        pixels = " ".join(values).encode()
        if self.defect == "non_utf8":
            pixels = pixels[:10] + b"\xff\xfe" + pixels[10:]
        return {"emotion": label.encode(), "pixels": pixels, "Usage": usage.encode()}


@st.composite
def csv_files(draw):
    rows = []
    for _ in range(draw(st.integers(0, 9))):
        defect = draw(st.one_of(st.none(), st.none(), st.sampled_from(DEFECTS)))
        seed = draw(st.integers(0, 2**32 - 1))
        pixels = np.random.default_rng(seed).integers(0, 256, NUM_PIXELS).astype(np.uint8)
        # 0, 9, 99 and 255: one-, two- and three-digit values at both ends of the range
        pixels[:4] = (0, 9, 99, 255)
        rows.append(Row(draw(st.integers(0, 6)), pixels, draw(st.sampled_from(USAGES)), defect))
    layout = draw(st.fixed_dictionaries({
        "columns": st.permutations(["emotion", "pixels", "Usage"]),
        "bom": st.booleans(), "crlf": st.booleans(), "quote": st.booleans(),
        "blank_lines_at_end": st.integers(0, 2), "final_newline": st.booleans(), "seed": st.integers(0, 2**16),
    }))
    return rows, layout


def write_csv(path: Path, rows: list[Row], layout: dict) -> list[int]:
    """Write the file; return each row's 1-based line number (the header is line 1)."""
    rng = np.random.default_rng(layout["seed"])
    newline = b"\r\n" if layout["crlf"] else b"\n"
    columns = layout["columns"]
    lines = [",".join(columns).encode()]
    for row in rows:
        fields = row.fields(rng)
        items = [b'"' + fields[c] + b'"' if layout["quote"] else fields[c] for c in columns]
        if row.defect == "extra_column":
            items.append(b"extra")
        elif row.defect == "missing_column":
            items.pop(int(rng.integers(len(items))))
        lines.append(b",".join(items))
    text = newline.join(lines) + newline * layout["blank_lines_at_end"]
    if layout["final_newline"]:
        text += newline
    path.write_bytes((b"\xef\xbb\xbf" if layout["bom"] else b"") + text)
    return list(range(2, len(rows) + 2))


def read_back(dataset) -> dict[str, tuple[np.ndarray, list[int]]]:
    return {split: (decode_faces(part).reshape(len(part), -1), list(part["label"])) for split, part in dataset.items()}


def expected_splits(rows: list[Row]) -> dict[str, tuple[np.ndarray, list[int]]]:
    return {split: (np.array([r.pixels for r in rows if r.usage == usage], np.uint8).reshape(-1, NUM_PIXELS),
                    [r.label for r in rows if r.usage == usage])
            for usage, split in USAGE_TO_SPLIT.items()}


@HOSTILE
@given(csv_files(), st.booleans())
def test_csv_loads_exactly_the_good_rows_or_names_the_first_bad_line(case, skip_bad_rows):
    rows, layout = case
    good = [row for row in rows if row.defect is None]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fer2013.csv"
        lines = write_csv(path, rows, layout)
        bad_lines = [line for line, row in zip(lines, rows, strict=True) if row.defect is not None]
        usable = good if skip_bad_rows or not bad_lines else []
        complete = {row.usage for row in usable} == set(USAGES)
        if bad_lines and not skip_bad_rows or not complete:
            with pytest.raises(FerDataError) as error:
                load._parse_csv(path, skip_bad_rows)
            message = str(error.value)
            assert str(path) in message
            if bad_lines and not skip_bad_rows:
                assert f"{len(bad_lines)} malformed row(s) — line {bad_lines[0]}: " in message, message
            elif not rows:
                assert "header but no rows" in message
            else:
                assert "no rows with Usage" in message
            return
        logger = logging.getLogger("fer_hf.data.load")
        with _captured(logger) as records:
            got = read_back(load._parse_csv(path, skip_bad_rows))
    want = expected_splits(good)
    for split in want:
        assert np.array_equal(got[split][0], want[split][0]), split
        assert got[split][1] == want[split][1], split
    if bad_lines:
        assert any(f"skipped {len(bad_lines)} malformed row(s) — line {bad_lines[0]}:" in r for r in records)


class _captured:
    """The formatted warnings of `logger` while the block runs (caplog does not reset between hypothesis examples)."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.records = logger, []

    def __enter__(self) -> list[str]:
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = lambda record: self.records.append(record.getMessage())
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)


@HOSTILE
@given(st.binary(max_size=400))
def test_any_bytes_as_a_csv_load_or_fail_with_a_message_naming_the_file(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fer2013.csv"
        path.write_bytes(b"emotion,pixels,Usage\n" + data)
        for skip_bad_rows in (False, True):
            with pytest.raises(FerDataError, match=str(path)):  # 400 bytes can never hold all three splits
                load._parse_csv(path, skip_bad_rows)
        path.write_bytes(data)
        if data:
            with pytest.raises(FerDataError, match=str(path)):
                load._parse_csv(path, False)


# ---- photos for predict, evaluate and the demo ----------------------------------------------------------------

# Pillow mode -> the formats that can hold it
MODES = {
    "L": ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"), "RGB": ("PNG", "JPEG", "WEBP", "BMP", "TIFF"),
    "RGBA": ("PNG", "WEBP", "TIFF"), "LA": ("PNG",), "P": ("PNG", "GIF", "BMP", "TIFF"), "1": ("PNG", "BMP", "TIFF"),
    "CMYK": ("JPEG", "TIFF"), "I;16": ("PNG", "TIFF"), "I": ("TIFF",), "F": ("TIFF",),
}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


@st.composite
def photo_files(draw):
    mode = draw(st.sampled_from(sorted(MODES)))
    return {
        "mode": mode, "format": draw(st.sampled_from(MODES[mode])),
        "size": (draw(st.integers(1, 160)), draw(st.integers(1, 160))), "seed": draw(st.integers(0, 2**16)),
        "orientation": draw(st.integers(1, 8)), "transparency": draw(st.booleans()),
        # None: the file as written; else cut to this fraction of its bytes, or these bytes overwritten with junk
        "damage": draw(st.one_of(st.none(), st.tuples(st.sampled_from(["cut", "junk"]), st.floats(0, 1)))),
    }


def write_photo(path: Path, case: dict) -> Path:
    from PIL import Image

    rng = np.random.default_rng(case["seed"])
    width, height = case["size"]
    mode = case["mode"]
    if mode in ("I;16", "I", "F"):
        top = {"I;16": 65535, "I": 2**20, "F": 1000}[mode]
        image = Image.fromarray(rng.integers(0, top, (height, width)).astype(
            {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))  # uint16 -> I;16, int32 -> I, float32 -> F
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    options = {}
    if mode == "P" and case["transparency"]:
        options["transparency"] = 0
    if case["format"] in ("JPEG", "PNG", "WEBP", "TIFF") and case["orientation"] != 1:
        exif = Image.Exif()
        exif[0x0112] = case["orientation"]
        options["exif"] = exif.tobytes()
    path = path.with_suffix(SUFFIX[case["format"]])
    image.save(path, format=case["format"], **options)
    if case["damage"]:
        kind, fraction = case["damage"]
        data = bytearray(path.read_bytes())
        at = int(fraction * len(data))
        if kind == "cut":
            data = data[:at]
        else:
            data[at:at + 16] = rng.integers(0, 256, min(16, len(data) - at), dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    return path


@HOSTILE
@given(photo_files())
def test_any_photo_reads_as_upright_rgb_or_fails_naming_the_file(case):
    from fer_hf.inference.images import WORKING_SIDE, ImageReadError, read_image, read_plain_gray

    with tempfile.TemporaryDirectory() as folder:
        path = write_photo(Path(folder) / "photo", case)
        plain = read_plain_gray(path)  # predict --no_detect's fast reader: the same pixels, or it leaves the file
        try:
            loaded = read_image(path)
            assert plain is None or np.array_equal(plain, loaded.gray)
        except ImageReadError as error:
            assert plain is None, "the fast reader took a file read_image refuses"
            assert str(path) in str(error)
            if case["damage"] is None:  # only the TIFFs Pillow cannot turn upright
                assert case["format"] == "TIFF" and case["orientation"] >= 5 and "scrambled" in str(error), error
            return
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.ndim == 3 and loaded.rgb.shape[2] == 3
    assert max(loaded.rgb.shape[:2]) <= WORKING_SIDE
    if case["damage"] is None:
        width, height = case["size"]
        rotated = case["orientation"] in (5, 6, 7, 8) and case["format"] in ("JPEG", "PNG", "WEBP", "TIFF")
        assert loaded.original_size == ((height, width) if rotated else (width, height))
        assert loaded.rgb.shape[:2] == loaded.original_size[::-1]


def test_the_fast_crop_reader_leaves_every_file_with_more_than_pixels_to_read_image(tmp_path):
    from PIL import Image, PngImagePlugin

    from fer_hf.inference.images import read_image, read_plain_gray

    face = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40), dtype=np.uint8))
    face.save(tmp_path / "plain.png")
    assert np.array_equal(read_plain_gray(tmp_path / "plain.png"), read_image(tmp_path / "plain.png").gray)
    # ImageMagick writes EXIF into a text chunk; Pillow reads the orientation there and turns the face.
    exif = Image.Exif()
    exif[0x0112] = 6
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", "exif\n" + f"{len(exif.tobytes()):8d}\n" + exif.tobytes().hex())
    face.save(tmp_path / "text.png", pnginfo=text)
    assert read_plain_gray(tmp_path / "text.png") is None
    # A header claiming 20000 x 20000 is refused before anything is decoded (read_image then names the limit).
    data = bytearray((tmp_path / "plain.png").read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") * 2
    (tmp_path / "huge.png").write_bytes(bytes(data))
    assert read_plain_gray(tmp_path / "huge.png") is None
    assert read_plain_gray(tmp_path / "plain.png", max_megapixels=0.001) is None
    # Over the byte limit (judged by the file's size before reading), a folder: left to read_image as well.
    size = (tmp_path / "plain.png").stat().st_size
    assert read_plain_gray(tmp_path / "plain.png", max_bytes=size) is not None
    assert read_plain_gray(tmp_path / "plain.png", max_bytes=size - 1) is None
    assert read_plain_gray(tmp_path) is None


# What ImageOps.exif_transpose does for each EXIF orientation; the file stores the inverse of it.
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}
_INVERSE = {**_TRANSPOSE, 6: "ROTATE_90", 8: "ROTATE_270"}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_puts_the_box_on_the_face(orientation, tmp_path):
    from PIL import Image

    from fer_hf.inference.faces import HaarFaceDetector
    from fer_hf.inference.images import read_image
    upright = Image.fromarray(skimage_data.astronaut())
    stored = upright if orientation == 1 else upright.transpose(getattr(Image.Transpose, _INVERSE[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "phone.jpg", quality=92, exif=exif.tobytes())
    loaded = read_image(tmp_path / "phone.jpg")
    (box,) = HaarFaceDetector().detect(loaded.gray)
    assert center_inside([v * loaded.scale for v in box]), (orientation, box)


def _png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG whose header says width x height: what a decompression bomb looks like before decoding."""
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bombs_are_refused_with_our_message(tmp_path):
    from fer_hf.inference.images import ImageReadError, read_image

    # Over our 50 MP limit (Pillow would only warn), and over Pillow's own bomb limit (it would raise its error).
    for width, height, message in ((10_000, 10_000, "over the 50 MP limit"), (60_000, 60_000, "")):
        path = _png_header_claiming(tmp_path / f"bomb_{width}.png", width, height)
        with pytest.raises(ImageReadError, match=rf"(?i)bomb_{width}\.png: .*{message}.*downscale"):
            read_image(path)


def test_first_page_of_multipage_tiff_and_first_frame_of_animated_gif(tmp_path):
    from PIL import Image

    from fer_hf.inference.images import read_image

    pages = [Image.new("RGB", (40, 30), colour) for colour in ((200, 10, 10), (10, 200, 10), (10, 10, 200))]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    pages[0].save(tmp_path / "animated.gif", save_all=True, append_images=pages[1:], duration=100, loop=0)
    for name in ("pages.tif", "animated.gif"):
        rgb = read_image(tmp_path / name).rgb
        assert rgb.shape == (30, 40, 3)
        assert rgb[..., 0].mean() > 150 and rgb[..., 1].mean() < 60, name  # the first page, red


def test_folder_with_link_loop_broken_link_and_junk_lists_every_image_once(tmp_path):
    from PIL import Image

    from fer_hf.inference.images import ImageReadError, list_images, read_image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "face.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)  # a folder link back up: following it would never end
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "self.jpg").symlink_to(tmp_path / "self.jpg")
    (tmp_path / "notes.txt").write_text("skipped")
    linked = []
    images, skipped = list_images(tmp_path, linked=linked)
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a/face.png", "gone.jpg", "self.jpg"]
    assert skipped == 1 and linked == [tmp_path / "a" / "loop"]
    with pytest.raises(ImageReadError, match=r"gone.jpg: a symbolic link to .*which does not exist"):
        read_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageReadError, match=r"self.jpg: a loop of symbolic links"):
        read_image(tmp_path / "self.jpg")



def test_folder_listing_matches_path_rglob_on_a_random_tree(tmp_path):
    """The listing (one scandir per folder) against the plain definition on a tree of nested and hidden folders,
    links to folders, broken links, a FIFO and names of every case and suffix: the same files, in the same order,
    and the same count of skipped ones."""
    import os
    import random
    from pathlib import Path

    from fer_hf.inference.images import list_images
    from fer_hf.labels import IMAGE_SUFFIXES

    def reference(folder):
        images, skipped = [], 0
        for path in sorted(Path(folder).rglob("*"), key=lambda path: path.parts):
            if any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            if path.is_dir() or not (path.is_file() or path.is_symlink()):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
            else:
                skipped += 1
        return images, skipped

    rng = random.Random(0)
    folders = [tmp_path]
    for i in range(300):
        parent, kind = rng.choice(folders), rng.random()
        name = rng.choice(["a", "B", ".h", "x y", "é", "a.b"]) + str(i) + rng.choice(["", ".png", ".JPG", ".txt", "."])
        if kind < 0.2:
            (parent / name).mkdir()
            folders.append(parent / name)
        elif kind < 0.25:
            (parent / name).symlink_to(rng.choice(folders))
        elif kind < 0.3:
            (parent / name).symlink_to(parent / "missing")
        elif kind < 0.32:
            os.mkfifo(parent / name)
        else:
            (parent / name).write_bytes(b"x")
    images, skipped = list_images(tmp_path)
    assert (images, skipped) == reference(tmp_path)
    assert len(images) > 20 and skipped > 20


def test_an_unreadable_folder_is_named_and_an_unreadable_subfolder_passed_over(tmp_path, monkeypatch):
    """(Permissions cannot be taken from root, which runs CI: scandir is made to refuse, as it does for others.)"""
    import os

    from fer_hf.inference.images import list_images
    from fer_hf.inference.predictor import expand_inputs

    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "hidden.png").write_bytes(b"x")
    (tmp_path / "face.png").write_bytes(b"x")
    scandir, refused = os.scandir, set()

    def refusing(path):
        if os.path.basename(os.fspath(path)) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    refused.add("locked")
    assert list_images(tmp_path) == ([tmp_path / "face.png"], 0)
    files, errors = expand_inputs([str(tmp_path / "locked")])
    assert files == [] and len(errors) == 1
    assert errors[0]["error"] == (f"{tmp_path / 'locked'}: cannot list this folder (Permission denied); check its "
                                  "permissions.")


_PEAK_SCRIPT = """
import os, sys, threading, time
import cv2  # imported by predict before any photo is read; its own ~100 MB is not the photo's
from fer_hf.inference.images import read_image
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
before, peak, done = rss(), [0], threading.Event()
def sample():  # the peak resident memory while reading (ru_maxrss would include the imports' own peak)
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
sampler = threading.Thread(target=sample)
sampler.start()
loaded = read_image(sys.argv[1])
done.set()
sampler.join()
print(*loaded.original_size, loaded.rgb.shape[1], loaded.rgb.shape[0], (max(peak[0], rss()) - before) // 2**20)
"""


@pytest.mark.slow
def test_a_10000_by_10000_photo_is_read_in_bounded_memory(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    path = tmp_path / "huge.jpg"
    image = Image.linear_gradient("L").resize((10_000, 10_000)).convert("RGB")
    image.save(path, quality=70)
    del image
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    width, height, kept_width, kept_height, peak_mb = map(int, out.stdout.split())
    assert (width, height) == (10_000, 10_000) and max(kept_width, kept_height) <= 4096
    # Decoded whole, the RGB pixels alone would be 286 MiB (and a copy or two more on the way to the array);
    # libjpeg's 1/2-scale decode keeps them at 72 MiB. Measured here: about +240 MiB in all.
    print(f"peak memory reading a 10000x10000 JPEG: +{peak_mb} MiB")
    assert peak_mb < 10_000 * 10_000 * 3 / 2**20, peak_mb


# ---- model folders -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory) -> Path:
    import shutil

    from fer_hf.model_files import DEFAULT_MODEL_DIR

    return Path(shutil.copytree(DEFAULT_MODEL_DIR, tmp_path_factory.mktemp("models") / "good"))


def _broken_copy(good: Path, name: str, change) -> Path:
    import shutil

    folder = Path(shutil.copytree(good, good.parent / name))
    change(folder)
    return folder


def _edit_config(**changes):
    import json

    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
    return change


class _Payload:
    def __reduce__(self):  # what a malicious pickle does: call something on load
        import os

        return (os.system, ("echo pwned > /tmp/fer_hf_pwned",))


def _pickle_with_code(folder: Path) -> None:
    import torch

    (folder / "model.safetensors").unlink()
    torch.save({"payload": _Payload()}, folder / "pytorch_model.bin")


def _bin_only(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


MODEL_FOLDER_CASES = {
    "no weights": (lambda f: (f / "model.safetensors").unlink(), "no weights"),
    "empty weights": (lambda f: (f / "model.safetensors").write_bytes(b""), "truncated or corrupt"),
    "no config": (lambda f: (f / "config.json").unlink(), "no config.json"),
    "config not JSON": (lambda f: (f / "config.json").write_text("{half a fi"), "not valid JSON"),
    "another library's model": (lambda f: (f / "config.json").write_text('{"model_type": "bert"}'),
                                "holds a 'bert' model"),
    "another timm architecture": (_edit_config(architecture="resnet18"), "do not fit its config.json"),
    "eight labels": (_edit_config(label_names=[f"c{i}" for i in range(8)], num_classes=8), "its labels are"),
    "head of eight": (_edit_config(num_classes=8), "its labels are"),
    "labels reordered": (_edit_config(label_names=["happy", "angry", "disgust", "fear", "sad", "surprise",
                                                   "neutral"]), "in that order"),
    "pickle that runs code": (_pickle_with_code, "do not fit its config.json (UnpicklingError"),
}


@pytest.mark.parametrize("case", MODEL_FOLDER_CASES)
def test_broken_model_folders_are_refused_naming_the_folder(shipped_copy, case):
    from fer_hf.inference.classifier import load_classifier
    from fer_hf.modeling import ModelFolderError

    change, message = MODEL_FOLDER_CASES[case]
    folder = _broken_copy(shipped_copy, case.replace(" ", "_"), change)
    Path("/tmp/fer_hf_pwned").unlink(missing_ok=True)
    with pytest.raises(ModelFolderError) as error:
        load_classifier(folder, device="cpu")
    assert str(folder) in str(error.value) and message in str(error.value), str(error.value)
    assert not Path("/tmp/fer_hf_pwned").exists()


def test_a_folder_with_only_pytorch_model_bin_loads_safely_and_predicts_the_same(shipped_copy):
    import torch

    from fer_hf.inference.classifier import load_classifier

    folder = _broken_copy(shipped_copy, "bin_only", _bin_only)
    pixels = torch.randn(2, 3, 80, 80).numpy()
    # PyTorch: where the pickle is read (weights_only); `auto` would first export the new folder to ONNX (15 s).
    assert np.allclose(load_classifier(folder, device="cpu", backend="pytorch").logits(pixels),
                       load_classifier(shipped_copy, device="cpu", backend="pytorch").logits(pixels), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.floats(0, 1, exclude_max=True))
def test_a_weights_file_cut_anywhere_is_named_as_truncated(shipped_copy, fraction):
    from fer_hf.modeling import ModelFolderError, load_saved_model

    data = (shipped_copy / "model.safetensors").read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name in ("config.json",):
            (folder / name).write_bytes((shipped_copy / name).read_bytes())
        (folder / "model.safetensors").write_bytes(data[: int(fraction * len(data))])
        with pytest.raises(ModelFolderError, match=r"model\.safetensors: truncated or corrupt"):
            load_saved_model(folder)


# ---- recipes and flags -----------------------------------------------------------------------------------------

_YAML_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@contextlib.contextmanager
def _yaml_file(data, name: str):
    """`data` as a YAML file in a fresh temporary folder (hypothesis examples cannot share pytest's tmp_path)."""
    import yaml

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_text(yaml.safe_dump(data))
        yield path


@st.composite
def recipes(draw):
    from fer_hf.config import argument_names

    names = sorted(argument_names())
    recipe = {draw(st.sampled_from(names)): draw(_YAML_VALUES) for _ in range(draw(st.integers(1, 4)))}
    if draw(st.booleans()):  # a real value of a real argument, next to the hostile ones
        recipe[draw(st.sampled_from(["learning_rate", "num_train_epochs", "image_size", "optim"]))] = draw(
            st.sampled_from([0.001, 3, 64, "adamw_torch"]))
    if draw(st.integers(0, 5)) == 0:
        recipe[draw(st.text(min_size=1, max_size=10))] = 1  # a key that is (almost surely) no argument
    return recipe


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes())
def test_any_recipe_parses_or_is_refused_with_a_message(recipe):
    import io

    from fer_hf.config import argument_names, parse_args

    with _yaml_file(recipe, "recipe.yaml") as path:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parse_args(["--config", str(path), "--output_dir", str(path.parent), "--report_to", "none"])
        except SystemExit as exit:  # argparse: usage and `error: <what is wrong>` on stderr, status 2
            assert exit.code == 2 and "error: " in stderr.getvalue(), stderr.getvalue()
        except (ValueError, OSError) as error:  # ours and TrainingArguments' own checks (OSError: a config file
            unknown = set(recipe) - argument_names()  # argument such as --accelerator_config that does not exist)
            assert str(error), recipe
            if unknown:
                assert "recipe.yaml: unknown argument(s)" in str(error)


def test_contradictory_options_are_refused_before_the_first_step(tmp_path):
    from fer_hf.config import parse_args

    base = ["--output_dir", str(tmp_path), "--report_to", "none", "--load_best_model_at_end", "true"]
    with pytest.raises(ValueError, match="load_best_model_at_end requires the save and eval strategy to match"):
        parse_args([*base, "--eval_strategy", "epoch", "--save_strategy", "steps"])
    with pytest.raises(ValueError, match="saving steps to be a round multiple of the evaluation steps"):
        parse_args([*base, "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "3",
                    "--save_steps", "5"])
    with pytest.raises(ValueError, match="--eval_split test"):
        parse_args([*base, "--eval_strategy", "epoch", "--save_strategy", "epoch", "--eval_split", "test"])


def test_a_null_for_an_argument_that_takes_no_null_is_refused_naming_it(tmp_path):
    """Found by the recipe property: `crop_scale_min: null` reached a comparison with None in __post_init__."""
    from fer_hf.config import parse_args

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("crop_scale_min: null\nlayer_decay: null\nlearning_rate: null\n")
    with pytest.raises(ValueError, match=r"recipe.yaml: crop_scale_min, learning_rate: null is not a value"):
        parse_args(["--config", str(recipe), "--output_dir", str(tmp_path)])
    recipe.write_text("layer_decay: null\nmax_grad_norm: 1.0\n")  # layer_decay takes None (off)
    *_, training = parse_args(["--config", str(recipe), "--output_dir", str(tmp_path), "--report_to", "none"])
    assert training.max_grad_norm == 1.0


def test_a_dict_that_does_not_fit_a_nested_config_is_a_message(tmp_path):
    """Found by the recipe property (seed 44): `accelerator_config: {"": 0}` raised transformers' TypeError."""
    from fer_hf.config import parse_args

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("accelerator_config: {'': 0}\n")
    with pytest.raises(ValueError, match=r"recipe.yaml: an argument's value does not fit its type \(.*unexpected"):
        parse_args(["--config", str(recipe), "--output_dir", str(tmp_path)])


def test_max_steps_with_epochs_is_said_before_the_first_step(tmp_path, caplog):
    from fer_hf.config import parse_args

    base = ["--output_dir", str(tmp_path), "--report_to", "none"]
    *_, training = parse_args([*base, "--num_train_epochs", "12", "--max_steps", "20"])
    assert training.max_steps == 20  # transformers' rule: the step cap wins
    assert "--max_steps 20 overrides num_train_epochs 12" in caplog.text
    caplog.clear()
    parse_args([*base, "--max_steps", "20"])
    parse_args([*base, "--num_train_epochs", "2"])
    assert "overrides" not in caplog.text


@st.composite
def sweep_files(draw):
    """W&B sweep configurations: a valid one over real arguments, then none to three hostile changes (unknown or
    mistyped parameters, every kind of YAML value and W&B distribution, a wrong method, metric or cap, a stray
    key)."""
    from fer_hf.config import argument_names

    valid = {
        "learning_rate": st.one_of(
            st.fixed_dictionaries({"values": st.lists(st.sampled_from([1e-4, 1e-3, 0.01]), min_size=1, max_size=3)}),
            st.fixed_dictionaries({"distribution": st.just("log_uniform_values"), "min": st.just(1e-5),
                                   "max": st.just(1e-2)})),
        "seed": st.fixed_dictionaries({"values": st.lists(st.integers(0, 99), min_size=1, max_size=2)}),
        "optim": st.fixed_dictionaries({"values": st.just(["adamw_torch", "adafactor"])}),
        "weight_decay": st.fixed_dictionaries({"distribution": st.just("uniform"), "min": st.just(0.0),
                                               "max": st.floats(0.01, 0.1)}),
    }
    names = draw(st.lists(st.sampled_from(sorted(valid)), min_size=1, max_size=3, unique=True))
    config = {"program": "fer_hf/train.py", "command": ["accelerate", "launch", "-m", "fer_hf.train", "${args}"],
              "method": draw(st.sampled_from(["grid", "random", "bayes"])),
              "metric": {"name": "eval/accuracy", "goal": "maximize"}, "run_cap": 2,
              "parameters": {name: draw(valid[name]) for name in names}}
    hostile_spec = st.one_of(
        _YAML_VALUES,
        st.fixed_dictionaries({"values": st.lists(_YAML_VALUES, min_size=1, max_size=2)}),
        st.fixed_dictionaries({"distribution": st.sampled_from(["uniform", "int_uniform", "normal", "categorical",
                                                                "nope"]),
                               "min": st.one_of(st.integers(-2, 2), st.floats(0, 1)),
                               "max": st.one_of(st.integers(0, 9), st.floats(0, 1))}),
    )
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(["parameter", "unknown", "method", "metric", "run_cap", "stray", "command"]))
        if change == "parameter":
            config["parameters"][draw(st.sampled_from(sorted(argument_names())))] = draw(hostile_spec)
        elif change == "unknown":
            config["parameters"][draw(st.sampled_from(["lr", "epochs", "nonsense_flag"]))] = {"values": [1]}
        elif change == "method":
            config["method"] = draw(st.sampled_from(["hyperband", 7, None]))
        elif change == "metric":
            config["metric"] = draw(st.sampled_from([None, {"name": "test/accuracy"}, {"name": "acc"},
                                                     {"name": "eval/loss", "goal": "up"}]))
        elif change == "run_cap":
            config["run_cap"] = draw(st.sampled_from([0, -1, "3", None]))
        elif change == "command":
            config["command"] = draw(st.sampled_from([["python", "-m", "fer_hf.evaluate", "${args}"], "train",
                                                      ["accelerate", "launch", "-m", "fer_hf.train"]]))
        else:
            config[draw(st.sampled_from(["early_terminate", "scheduler", "stray"]))] = draw(_YAML_VALUES)
    return config


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweep_files())
def test_any_sweep_file_plans_its_trials_or_is_refused_naming_the_file(config):
    """`fer_hf.sweep --dry_run` (what runs before any trial): every planned trial parses with the train parser, or
    the file is refused with a message that names it; never a traceback from deeper down."""
    import io

    from fer_hf.config import parse_args
    from fer_hf.sweep.__main__ import main as sweep_main

    with _yaml_file(config, "sweep.yaml") as path:
        stdout = io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout):
                sweep_main([str(path), "--dry_run", "--output_dir", str(path.parent / "out"), "--max_runs", "2"])
        except (ValueError, OSError) as error:  # SweepConfigError is a ValueError
            assert str(path) in str(error), error
            event("refused naming the file")
            return
        commands = [line.split() for line in stdout.getvalue().splitlines() if line.startswith("accelerate")]
        assert commands, stdout.getvalue()
        event("planned")
        for command in commands:
            parse_args(command[command.index("fer_hf.train") + 1:])  # what each trial will parse, unchanged


def test_an_unreadable_file_in_a_folder_is_named_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    """chmod 000 where the tests do not run as root; as root (CI) nothing is unreadable, so opening the file (Pillow's
    open and the crop reader's os.open alike) raises the PermissionError the kernel would give."""
    import builtins
    import json

    from PIL import Image

    from fer_hf import predict

    folder = tmp_path / "faces"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("L", (48, 48), 120).save(folder / name)
    locked = folder / "b.png"
    if os.geteuid() != 0:
        locked.chmod(0)
    else:
        original = builtins.open

        def open_refusing(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return original(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_refusing)
        os_open = os.open

        def os_open_refusing(path, *args, **kwargs):  # the crop reader opens with os.open
            if isinstance(path, (str, os.PathLike)) and Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return os_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open_refusing)
    assert predict.main([str(folder), "--no_detect", "--json"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert [r["error"] is None for r in records] == [True, False, True]
    assert records[1]["error"] == f"{locked}: permission denied; make the file readable (chmod) or copy it."
