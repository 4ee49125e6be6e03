"""Runs that can be reproduced, outputs that are never half-written, output folders that are checked and held.

The kill tests kill real processes at random moments and then read every file they left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_TRAIN_ARGS
from fer_hf.run_dir import (
    LOCK_FILE,
    RUN_INFO_FILE,
    OutputDirError,
    check_writable,
    exclusive,
    replace_folder,
    run_info,
    write_atomic,
)
from fer_hf.train import main as train

# Kills of a real training run in the suite; FER_HF_KILLS=20 for the full loop the closing note reports.
KILLS = int(os.environ.get("FER_HF_KILLS", "4"))
TIMING_KEYS = ("runtime", "per_second", "total_flos")


def test_write_atomic_and_replace_folder_leave_old_or_new(tmp_path):
    path = write_atomic(tmp_path / "metrics.json", '{"a": 1}')
    write_atomic(path, b'{"a": 2}')
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no partial file left beside it

    target = tmp_path / "model"
    for version in ("1", "2"):
        partial = tmp_path / "model.partial"
        partial.mkdir()
        (partial / "weights").write_text(version)
        replace_folder(partial, target)
    assert (target / "weights").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model"]


_WRITER = """
import sys
from fer_hf.run_dir import write_atomic
print("ready", flush=True)
i = 0
while True:  # rewrite the file with ever new, large content until killed
    i += 1
    write_atomic(sys.argv[1], (str(i) + "\\n") * 2_000_000)
"""


def test_a_file_written_atomically_is_whole_whenever_the_writer_is_killed(tmp_path):
    path = tmp_path / "results.json"
    rng = random.Random(0)
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"  # imported: from here on, kills land mid-write
        time.sleep(rng.uniform(0.05, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if path.exists():
            lines = path.read_text().splitlines()
            assert len(lines) == 2_000_000 and len(set(lines)) == 1, "half-written file"
    assert path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name != path.name and not p.name.endswith(".partial")]


def _complete(path: Path) -> str | None:
    """Why `path` is not a complete file of its kind (None when it is)."""
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except ValueError as error:
            return f"half-written JSON ({error})"
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        except Exception as error:  # noqa: BLE001 - any failure to read is the finding
            return f"unreadable safetensors ({error})"
    elif path.suffix == ".png":
        from PIL import Image

        try:
            with Image.open(path) as image:
                image.load()
        except Exception as error:  # noqa: BLE001
            return f"unreadable PNG ({error})"
    return None


@pytest.mark.slow
def test_killing_a_real_training_run_at_random_moments_leaves_no_half_written_file(tmp_path):
    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "fer_hf.train", *TINY_TRAIN_ARGS, "--output_dir", str(output_dir),
               "--save_strategy", "steps", "--save_steps", "5", "--eval_strategy", "steps", "--eval_steps", "5",
               "--save_total_limit", "2", "--synthetic_train_size", "320", "--num_train_epochs", "2"]
    rng = random.Random(1)
    found, moments = [], []
    for _ in range(KILLS):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        moment = rng.uniform(6.0, 20.0)  # after the imports (~6 s here), while it trains, saves and evaluates
        try:
            process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            moments.append(round(moment, 1))
        for path in sorted(p for p in output_dir.rglob("*") if p.is_file() and ".saving-" not in str(p)):
            if problem := _complete(path):
                found.append(f"killed at {moment:.1f} s: {path.relative_to(output_dir)}: {problem}")
    assert moments, "every run finished before its kill; the moments are too late"
    assert not found, found
    # The next run still starts: the lock died with the killed process.
    with exclusive(output_dir, "test"):
        pass


def test_a_second_training_into_the_same_output_dir_is_refused(tmp_path):
    output_dir = tmp_path / "run"
    with exclusive(output_dir, "fer_hf.train"):
        with pytest.raises(OutputDirError, match=r"run: fer_hf.train \(pid \d+\) is already writing here"):
            train([*TINY_TRAIN_ARGS, "--output_dir", str(output_dir)])
    assert not (output_dir / RUN_INFO_FILE).exists()  # refused before writing anything


def test_an_unwritable_or_full_output_dir_is_reported_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputDirError, match=r"a_file/run: cannot write here"):
        check_writable(blocker / "run")
    with pytest.raises(OutputDirError, match=r"a_file/run: cannot write here"):  # what train meets first
        train([*TINY_TRAIN_ARGS, "--output_dir", str(blocker / "run")])

    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=5 * 2**20))
    started = []
    monkeypatch.setattr("fer_hf.trainer.FerTrainer.train", lambda *a, **k: started.append(1))
    with pytest.raises(OutputDirError, match=r"run: 5 MiB free, but the run's checkpoints and model need about"):
        train([*TINY_TRAIN_ARGS, "--output_dir", str(tmp_path / "run")])
    assert not started


def test_the_run_folder_records_what_reproducing_it_needs(trained_run, tmp_path):
    info = json.loads((trained_run / RUN_INFO_FILE).read_text())
    assert info["command"][:3] == ["python", "-m", "fer_hf.train"] and "--output_dir" in info["command"]
    assert all(info["libraries"][name] for name in ("torch", "timm", "transformers", "datasets", "fer_hf"))
    assert info["data"] == {"source": "synthetic"}
    assert (info["git_commit"] is None) == (not (Path(__file__).parents[1] / ".git").exists())
    with exclusive(trained_run, "test"):  # the finished run released its folder
        assert (trained_run / LOCK_FILE).read_text().startswith("test (pid ")

    data = tmp_path / "fer2013.csv"
    data.write_bytes(b"emotion,pixels,Usage\n" * 1000)
    recorded = run_info(["x"], str(data))["data"]
    assert recorded["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest() and recorded["bytes"] == 21_000


@pytest.mark.slow
def test_same_seed_same_data_gives_identical_results_with_full_determinism(tmp_path):
    """Two CPU runs with --full_determinism: every metric identical (timings aside)."""
    args = [*TINY_TRAIN_ARGS, "--full_determinism", "true", "--num_train_epochs", "2",
            "--synthetic_train_size", "320"]
    runs = []
    for name in ("a", "b"):
        train([*args, "--output_dir", str(tmp_path / name)])
        results = json.loads((tmp_path / name / "all_results.json").read_text())
        runs.append({k: v for k, v in results.items() if not any(t in k for t in TIMING_KEYS)})
    assert runs[0] == runs[1]
    assert len(runs[0]) > 10  # eval_*, test_* and train_loss all compared


def test_replace_folder_replaces_only_an_earlier_version_of_the_same_output(tmp_path):
    from fer_hf.run_dir import OutputExistsError, check_replaceable, replace_folder

    def written(name, files):
        folder = tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        return folder

    target = written("out", {"config.json": "old", "model.safetensors": "old"})
    check_replaceable(target, "config.json")  # an earlier output: fine
    replace_folder(written("out.partial", {"config.json": "new", "model.safetensors": "new", "README.md": "new"}),
                   target)
    assert {p.name: p.read_text() for p in target.iterdir()} == {"config.json": "new", "model.safetensors": "new",
                                                                 "README.md": "new"}
    (target / "notes.txt").write_text("the user's")  # now it holds something the command does not write
    with pytest.raises(OutputExistsError, match=r"holds .*notes\.txt, which this command did not write"):
        replace_folder(written("out.partial", {"config.json": "newer"}), target)
    assert (target / "notes.txt").read_text() == "the user's" and (target / "config.json").read_text() == "new"
    assert not (tmp_path / "out.partial").exists()

    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "config.json")
    check_replaceable(tmp_path / "absent", "config.json")
    with pytest.raises(OutputExistsError, match="no config.json"):
        check_replaceable(written("home", {"thesis.tex": "years"}), "config.json")
    (tmp_path / "a_file").write_text("x")
    for check in (lambda: check_replaceable(tmp_path / "a_file", "config.json"),
                  lambda: replace_folder(written("f.partial", {"config.json": "new"}), tmp_path / "a_file")):
        with pytest.raises(OutputExistsError, match="is a file"):
            check()
    assert (tmp_path / "a_file").read_text() == "x"
