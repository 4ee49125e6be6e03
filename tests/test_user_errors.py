"""What a new user gets wrong or runs into with `fer_hf.predict` and the Python API, answered with the result or a
message that names the fix, never a traceback (found by trying the commands from a fresh clone)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_module
from fer_hf import cli
from fer_hf.inference import annotate as annotate_module
from fer_hf.inference.annotate import AnnotationTarget
from fer_hf.predict import PredictArguments, main

skimage_data = require_module("skimage.data", "sample photos: pip install -e .[dev]")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("crop") / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)).save(path)
    return path


def test_bool_flags_may_come_before_the_inputs(crop, capsys):
    # `--json photo.jpg` read the file name as the flag's value ("Truthy value expected") and stopped.
    assert main(["--json", "--no_detect", str(crop)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [record["file"] for record in records] == [str(crop)] and records[0]["faces"]
    assert main(["--no_detect", "--json", "false", str(crop)]) == 0  # an explicit value still counts as one
    assert capsys.readouterr().out.startswith(f"{crop}: 1 face")
    parser = cli.make_parser("fer_hf.predict", None, PredictArguments)
    assert "--json [true|false]" in parser.format_help()  # not `--json [JSON]`, which reads as a file name


@pytest.mark.parametrize("flag, value, message", [
    ("--margin", "-1", "--margin must be between 0 and 1"),
    ("--margin", "nan", "--margin must be between 0 and 1"),
    ("--scale_factor", "1.0", "--scale_factor must be above 1"),
    ("--max_megapixels", "0", "--max_megapixels must be above 0"),
    ("--min_face_size", "0", "--min_face_size at least 1"),
])
def test_out_of_range_options_are_usage_errors(photo, flag, value, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([str(photo), flag, value])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_device_this_machine_lacks_is_named_not_a_torch_traceback():
    import torch

    from fer_hf.inference.classifier import checked_device

    with pytest.raises(ValueError, match="--device tpu: not a device torch knows"):
        checked_device("tpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=rf"--device cuda:{gpus}: (no CUDA GPU is usable here|this machine has)"):
        checked_device(f"cuda:{gpus}")
    assert checked_device("cpu") == torch.device("cpu")


def test_annotate_target_is_checked_before_any_image_is_read(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"--annotate .*out\.xyz: fer_hf writes annotated images as"):
        AnnotationTarget(str(tmp_path / "out.xyz"), single_input=True)
    assert not (tmp_path / "out.xyz").exists()  # it used to become a folder of that name
    (tmp_path / "results.v2").mkdir()
    assert not AnnotationTarget(str(tmp_path / "results.v2"), single_input=False).is_file  # an existing folder

    def refused(*args, **kwargs):  # as a read-only folder answers a user that is not root
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(annotate_module.tempfile, "TemporaryFile", refused)
    with pytest.raises(OSError, match=r"--annotate .*x\.png: cannot write into .* \(Permission denied\)"):
        AnnotationTarget(str(tmp_path / "locked" / "x.png"), single_input=True)


def test_an_annotated_image_that_cannot_be_written_keeps_its_faces(photo, tmp_path, monkeypatch, capsys):
    def disk_full(self, image, faces):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AnnotationTarget, "write_image", disk_full)
    assert main([str(photo), "--json", "--annotate", str(tmp_path / "out")]) == 1
    [record] = json.loads(capsys.readouterr().out)
    assert record["faces"] and record["faces"][0]["label"]  # the prediction is not lost with the drawing
    assert "faces found, but the annotated image could not be written" in record["error"]
    assert "No space left on device" in record["error"]
    assert main([str(photo), "--annotate", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr()
    assert printed.out.startswith(f"{photo}: 1 face") and "could not be written" in printed.err


def test_a_subfolder_that_cannot_be_listed_is_reported(photo, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    (folder / "locked").mkdir(parents=True)
    Image.open(photo).save(folder / "a.png")
    Image.open(photo).save(folder / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(path):  # root reads a chmod-000 folder anyway: refuse it as a user's permissions would
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert main([str(folder), "--json"]) == 1  # it exited 0 with only a.png, as if the folder were complete
    records = {Path(record["file"]).name: record for record in json.loads(capsys.readouterr().out)}
    assert records["a.png"]["faces"] and "b.png" not in records
    assert "cannot list this folder (Permission denied); its images were not read" in records["locked"]["error"]


def test_a_folder_given_as_a_video_is_named_as_a_folder(tmp_path, capsys):
    assert main(["--video", str(tmp_path)]) == 1
    assert "a folder, not a video file" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "F01", "RGBA", "LA", "P"])
def test_faces_of_any_pillow_mode_score_as_their_8_bit_gray_pixels(mode):
    # (Transparent pixels convert as timm's transform converts them, checked in test_preprocess; these are opaque.)
    from fer_hf.inference.classifier import load_classifier

    gray = np.random.default_rng(1).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    faces = [Image.fromarray(face) for face in gray]
    as_mode = {
        "I;16": lambda f: Image.fromarray(np.asarray(f).astype(np.uint16) * 257),  # 16-bit: 0-65535
        "I": lambda f: Image.fromarray(np.asarray(f).astype(np.int32)),
        "F": lambda f: Image.fromarray(np.asarray(f).astype(np.float32)),  # float in 0-255
        "F01": lambda f: Image.fromarray(np.asarray(f).astype(np.float32) / 255),  # float in 0-1
        "RGBA": lambda f: f.convert("RGBA"),
        "LA": lambda f: f.convert("LA"),
        "P": lambda f: f.convert("P"),
    }[mode]
    classifier = load_classifier()
    # Pillow's convert clipped 16-bit faces to white and read 0-1 floats as black: scored as noise before.
    np.testing.assert_array_equal(classifier.predict([as_mode(face) for face in faces]), classifier.predict(faces))


def test_an_imagenet_weights_folder_is_named_as_such_not_as_a_none_model(tmp_path):
    from fer_hf.model_files import ModelFolderError, read_model_config

    # What `python -m fer_hf.weights` (timm's save_for_hf) writes: no model_type, an ImageNet head.
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "tf_efficientnet_lite0", "num_classes": 1000}))
    with pytest.raises(ModelFolderError, match="tf_efficientnet_lite0 with its ImageNet head, not a FER model; "
                                               "fine-tune it first"):
        read_model_config(tmp_path)
