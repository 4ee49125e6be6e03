"""Every command in the README's shell blocks runs as written, offline, in a folder laid out as a user's would be
(fer2013.csv, photo.jpg, ...), with small settings appended to trainings; its Python blocks run too. A command the
test cannot run is listed in NOT_RUN with the reason, and a README command missing from both fails the test.

`python -m fer_hf.X ...` and `accelerate launch -m fer_hf.X ...` (one process: accelerate runs the module in place)
run as `runpy` would run them from the command line, in this process, so that the suite pays the imports once; the
entry modules' own subprocess behaviour (exit codes, messages) is tested in their test files."""

from __future__ import annotations

import csv
import json
import logging
import re
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require_fer2013
from fer_hf.labels import LABEL_NAMES

README = REPO / "README.md"
NOT_RUN = {shlex.join(shlex.split(command)): why for command, why in {
    'pip install -e ".[dev]"': "the install this test suite runs in",
    "pytest": "the suite this test is part of",
    "python -m fer_hf.app": "a server that runs until stopped; tests/test_app.py starts it and drives it in Chromium",
}.items()}
# Appended to every training: a few dozen faces, one epoch, FER's 48 px.
SMALL_TRAINING = ["--max_train_samples", "48", "--max_eval_samples", "32", "--num_train_epochs", "1",
                  "--image_size", "48", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
                  "--warmup_steps", "0", "--logging_steps", "1", "--save_total_limit", "1",
                  "--synthetic_train_size", "64", "--synthetic_eval_size", "32"]
# Trainings that start from Hub weights: offline they must stop with a message that says so, and no traceback.
NEEDS_HUB = ("configs/paper_resnet50.yaml", "configs/paper_resnet18.yaml")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def readme_commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


COMMANDS = readme_commands()
RUN = [command for command in COMMANDS if command not in NOT_RUN]


def test_readme_commands_are_found_and_the_not_run_list_is_current():
    assert len(RUN) >= 15, RUN
    assert set(NOT_RUN) <= set(COMMANDS), f"NOT_RUN lists commands the README lacks: {set(NOT_RUN) - set(COMMANDS)}"


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """What a user has beside a clone: a small real fer2013.csv, photos, face crops, a video."""
    import cv2
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("user")
    for name in ("configs", "fer_hf"):  # the README's paths are relative to the clone
        (folder / name).symlink_to(REPO / name)
    archive = np.load(require_fer2013())
    pixels, labels, usage = archive["pixels"], archive["labels"], archive["usage"]
    rng = np.random.default_rng(0)
    rows = []
    for split, per_class in (("Training", 12), ("PublicTest", 5), ("PrivateTest", 5)):
        for label in range(7):
            picked = rng.choice(np.flatnonzero((usage == split) & (labels == label)), per_class, replace=False)
            rows += [(label, " ".join(map(str, pixels[i].ravel())), split) for i in picked]
    with open(folder / "fer2013.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)

    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut).save(folder / "photo.jpg")
    (folder / "holiday").mkdir()
    Image.fromarray(astronaut).save(folder / "holiday" / "astronaut.png")
    Image.fromarray(skimage.data.coffee()).save(folder / "holiday" / "coffee.jpg")
    (folder / "face_crops").mkdir()
    for i in np.flatnonzero(usage == "PrivateTest")[:4]:
        Image.fromarray(pixels[i]).save(folder / "face_crops" / f"face_{i}.png")
    Image.fromarray(pixels[np.flatnonzero((usage == "PrivateTest") & (labels == 3))[0]]).save(folder / "face.jpg")
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (256, 256))
    frame = cv2.cvtColor(cv2.resize(astronaut, (256, 256)), cv2.COLOR_RGB2BGR)
    for _ in range(5):
        writer.write(frame)
    writer.release()
    return folder


def _run(command: str, folder: Path, monkeypatch, capsys, caplog) -> tuple[int, str, str]:
    """(exit status, stdout, stderr + log) of `python -m MODULE ARGS` run in `folder`."""
    words = shlex.split(command)
    assert words[0] in ("python", "accelerate") and "-m" in words, f"no rule to run {command!r}"
    module, args = words[words.index("-m") + 1], words[words.index("-m") + 2:]
    if module == "fer_hf.train":
        args += SMALL_TRAINING
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [module, *args])
    monkeypatch.delitem(sys.modules, module, raising=False)  # run as a fresh __main__, as `python -m` would
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}.items():
        monkeypatch.setenv(name, value)
    # The entry module's logging.basicConfig adds a handler on this test's captured stderr; drop it afterwards, or
    # the next command would log into a closed stream.
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    capsys.readouterr()
    # Libraries' own handlers (transformers, datasets, huggingface_hub, torch) keep the sys.stderr of the moment they
    # were made (transformers its flush method too): made during an earlier command, that is an earlier test's
    # captured stream, closed since, and their next warning fails with a traceback. Aim those at this test's.
    for logger in [logging.root, *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if getattr(getattr(handler, "stream", None), "closed", False):
                monkeypatch.setattr(handler, "stream", sys.stderr)
            if getattr(getattr(handler.__dict__.get("flush"), "__self__", None), "closed", False):
                monkeypatch.setattr(handler, "flush", sys.stderr.flush)
    status = 0
    with caplog.at_level(logging.INFO):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out = capsys.readouterr()
    return status, out.out, out.err + caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN, ids=[command[:70] for command in RUN])
def test_readme_command_runs_as_written(command, user_folder, monkeypatch, capsys, caplog):
    status, stdout, stderr = _run(command, user_folder, monkeypatch, capsys, caplog)
    output = stdout + stderr
    assert "Traceback" not in output, f"{command}\n{output[-4000:]}"
    if any(config in command for config in NEEDS_HUB) and status != 0:
        assert "The Hub may be unreachable (offline?)" in stderr, output[-2000:]
        return
    assert status == 0, f"{command} exited {status}\n{output[-4000:]}"
    if "--json" in command:
        records = json.loads(stdout)
        assert {Path(r["file"]).name for r in records} >= {"photo.jpg", "astronaut.png", "coffee.jpg"}
        assert all(r["faces"] for r in records if "coffee" not in r["file"])
    for word in shlex.split(command):  # what a command promises to write is there
        if word.endswith((".onnx", "_annotated.mp4")) or word == "annotated/":
            assert (user_folder / word).exists(), f"{command} did not write {word}"


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(_blocks("python"))))
def test_readme_python_block_runs(number, user_folder, monkeypatch):
    *body, last = _blocks("python")[number].strip().splitlines()
    if "outputs/quickstart" in "".join(body) and not (user_folder / "outputs/quickstart/config.json").is_file():
        pytest.fail("the README's quickstart command should have written outputs/quickstart before this block")
    monkeypatch.chdir(user_folder)
    namespace: dict = {}
    exec(compile("\n".join(body), "README.md", "exec"), namespace)
    predictions = eval(compile(last.split("#")[0], "README.md", "eval"), namespace)  # the block's last expression
    assert predictions and all(p["label"] in LABEL_NAMES and 0 <= p["score"] <= 1 for p in predictions), predictions
