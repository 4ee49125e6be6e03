"""fer_hf.predict on real photographs that ship with scikit-image (a face: the astronaut; no face: coffee, a cat),
in the forms users send them, plus the ways input goes wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import center_inside, require_module
from fer_hf.inference.faces import HaarFaceDetector
from fer_hf.inference.images import ImageReadError, read_image
from fer_hf.labels import LABEL_NAMES
from fer_hf.predict import main

skimage_data = require_module("skimage.data", "sample photos: pip install -e .[dev]")

@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut) -> Path:
    """A folder as users have them: one face in many encodings, photos without faces, and junk."""
    root = tmp_path_factory.mktemp("photos")
    upright = Image.fromarray(astronaut)
    upright.save(root / "astronaut.jpg", quality=92)
    upright.save(root / "astronaut.webp", quality=90)
    upright.save(root / "astronaut.bmp")
    upright.save(root / "astronaut.gif")  # palette, 256 colours
    gray = np.asarray(upright.convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "astronaut_gray16.png")  # 16-bit grayscale PNG
    rgba = np.dstack([astronaut, np.full(gray.shape, 255, np.uint8)])
    rgba[:40, :, :] = 0  # a transparent band whose colour is black underneath
    Image.fromarray(rgba).save(root / "astronaut_rgba.png")
    # A phone photo: the pixels stored sideways, the EXIF Orientation tag (6: rotate 90 clockwise) makes it upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(astronaut).copy()).save(root / "phone_exif_rotated.jpg", exif=exif.tobytes())
    (root / "sub").mkdir()
    Image.fromarray(skimage_data.coffee()).save(root / "sub" / "coffee.png")
    Image.fromarray(skimage_data.chelsea()).save(root / "sub" / "cat.jpg")
    (root / "notes.txt").write_text("not an image, and not a .jpg either: skipped silently")
    (root / "empty.jpg").write_bytes(b"")
    data = (root / "astronaut.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "fake.png").write_text("this is text with an image suffix")
    return root


def test_detector_finds_the_real_face_and_none_where_there_is_none(astronaut):
    detector = HaarFaceDetector()
    boxes = detector.detect(np.asarray(Image.fromarray(astronaut).convert("L")))
    assert len(boxes) == 1 and center_inside(boxes[0])
    for name in ("coffee", "chelsea", "rocket", "brick"):
        image = getattr(skimage_data, name)()
        gray = image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L"))
        assert detector.detect(gray) == [], name


def test_predict_folder_json_with_every_kind_of_input(trained_run, photos, tmp_path, capsys):
    annotated = tmp_path / "annotated"
    missing = photos / "does_not_exist.jpg"
    status = main([str(photos), str(missing), "--model", str(trained_run), "--json", "--annotate", str(annotated),
                   "--batch_size", "4"])
    records = json.loads(capsys.readouterr().out)
    by_name = {Path(r["file"]).name: r for r in records}
    assert status == 1  # some inputs failed; the rest were processed
    assert "notes.txt" not in by_name  # a non-image file in a folder is skipped, not an error
    assert all(set(r) == {"file", "faces", "error"} for r in records)

    faces = ["astronaut.jpg", "astronaut.webp", "astronaut.bmp", "astronaut.gif", "astronaut_gray16.png",
             "astronaut_rgba.png", "phone_exif_rotated.jpg"]
    for name in faces:
        record = by_name[name]
        assert record["error"] is None, record
        assert len(record["faces"]) == 1, record
        face = record["faces"][0]
        assert center_inside(face["box"]), (name, face["box"])  # EXIF rotation respected: upright coordinates
        assert face["label"] in LABEL_NAMES
        assert list(face["scores"]) == list(LABEL_NAMES)
        assert sum(face["scores"].values()) == pytest.approx(1, abs=1e-3)
        assert face["label"] == max(face["scores"], key=face["scores"].get)
    for name in ("coffee.png", "cat.jpg"):
        assert by_name[name]["faces"] == [] and by_name[name]["error"] is None  # no face is a result, not an error

    errors = {name: by_name[name]["error"] for name in ("empty.jpg", "truncated.jpg", "fake.png", missing.name)}
    assert "empty" in errors["empty.jpg"] and "truncated" in errors["truncated.jpg"]
    assert "not an image" in errors["fake.png"] and "no such file" in errors[missing.name]
    for name, error in errors.items():
        assert name in error  # each message names its file

    written = sorted(p.name for p in annotated.iterdir())
    assert len(written) == len(faces) + 2  # the face images plus coffee and cat, annotated or not
    boxed = np.asarray(Image.open(annotated / "astronaut_annotated.bmp").convert("RGB")).astype(int)
    assert np.abs(boxed - np.asarray(Image.open(photos / "astronaut.bmp").convert("RGB")).astype(int)).max() > 100


def test_predict_prints_a_readable_report(trained_run, photos, capsys):
    status = main([str(photos / "astronaut.jpg"), str(photos / "sub" / "coffee.png"), str(photos / "empty.jpg"),
                   "--model", str(trained_run)])
    out, err = capsys.readouterr()
    assert status == 1
    assert "astronaut.jpg: 1 face" in out and "face 1 at [x, y, w, h] = [" in out
    assert "coffee.png: no face found" in out and "--no_detect" in out
    assert "empty.jpg" in err and "error" in err


def test_no_detect_classifies_fer_crops_like_the_pipeline(trained_run, fer2013, tmp_path, capsys):
    from transformers import pipeline

    faces = [fer2013["test"][i]["image"] for i in range(3)]
    for i, face in enumerate(faces):
        face.save(tmp_path / f"face{i}.png")
    assert main([str(tmp_path), "--model", str(trained_run), "--no_detect", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    classifier = pipeline("image-classification", model=str(trained_run))
    for record, face in zip(records, faces, strict=True):
        (found,) = record["faces"]
        assert found["box"] == [0, 0, 48, 48]
        expected = {r["label"]: r["score"] for r in classifier(face, top_k=len(LABEL_NAMES))}
        for label, score in found["scores"].items():
            assert score == pytest.approx(expected[label], abs=2e-4)  # same preprocessing as training and pipeline


def test_huge_images_are_reduced_or_refused_with_bounded_memory(tmp_path, astronaut):
    big = Image.fromarray(astronaut).resize((3072, 3072), Image.Resampling.BILINEAR)
    big.save(tmp_path / "big.jpg", quality=80)
    loaded = read_image(tmp_path / "big.jpg", max_megapixels=3)  # 9.4 MP: decoded at 1/2 by libjpeg
    assert loaded.original_size == (3072, 3072) and loaded.rgb.shape == (1536, 1536, 3)
    (box,) = HaarFaceDetector().detect(loaded.gray)
    assert center_inside([v * loaded.scale for v in box], scale=6.0)  # reported in the file's pixels
    big.resize((2048, 2048)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match=r"big\.png: 2048x2048 pixels .* over the 3 MP limit"):
        read_image(tmp_path / "big.png", max_megapixels=3)


def test_video_frames_fps_and_annotated_video(trained_run, tmp_path, astronaut, capsys):
    import cv2

    source = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    frame = cv2.cvtColor(cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    for shift in range(5):
        writer.write(np.roll(frame, 2 * shift, axis=1))
    writer.release()
    out = tmp_path / "clip_annotated.avi"
    assert main(["--video", str(source), "--model", str(trained_run), "--json", "--annotate", str(out)]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["error"] is None and len(record["frames"]) == 5
    assert all(len(f["faces"]) == 1 for f in record["frames"])
    assert record["frames_per_second"] > 0 and record["video_fps"] == pytest.approx(10)
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()

    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("text")
    assert main(["--video", str(not_a_video), "--model", str(trained_run), "--json"]) == 1
    (record,) = json.loads(capsys.readouterr().out)
    assert "notes.mp4" in record["error"]
