"""The benchmark scripts keep running (smoke mode), and the fast CSV reader they time agrees with the careful one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_hf import data
from fer_hf.data import decode_faces, load_fer2013
from fer_hf.labels import USAGE_TO_SPLIT
from fer_hf.synthetic import make_faces

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from loading import write_csv  # noqa: E402

USAGES = np.array(["Training"] * 30 + ["PublicTest"] * 10 + ["PrivateTest"] * 10)


@pytest.fixture(scope="module")
def faces():
    pixels, labels = make_faces(len(USAGES), seed=11)
    pixels[0, 0, :4] = [0, 9, 10, 255]  # one, two and three digits, and both ends of the range
    return pixels, labels


def loaded(source: Path, cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    dataset = load_fer2013(str(source), cache_dir=cache)
    return {split: (decode_faces(part), np.asarray(part["label"])) for split, part in dataset.items()}


def expected(faces) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    pixels, labels = faces
    return {split: (pixels[USAGES == usage], labels[USAGES == usage]) for usage, split in USAGE_TO_SPLIT.items()}


def assert_same(got, want):
    assert got.keys() == want.keys()
    for split in want:
        assert np.array_equal(got[split][0], want[split][0]), split
        assert np.array_equal(got[split][1], want[split][1]), split


def test_fast_csv_reader_reads_the_kaggle_layout(tmp_path, faces):
    path = write_csv(*faces, USAGES, tmp_path / "fer2013.csv")
    pixels, labels, usage = data._read_csv_fast(path)
    assert np.array_equal(pixels, faces[0]) and np.array_equal(labels, faces[1]) and np.array_equal(usage, USAGES)
    # Blocks shorter than a line, and blocks that end mid-line, read the same.
    for block_bytes in (1000, 20_000):
        small = data._read_csv_fast(path, block_bytes=block_bytes)
        assert all(np.array_equal(a, b) for a, b in zip(small, (pixels, labels, usage), strict=True))
    assert_same(loaded(path, tmp_path / "cache"), expected(faces))


def test_fast_and_careful_csv_readers_agree(tmp_path, faces, monkeypatch):
    path = write_csv(*faces, USAGES, tmp_path / "fer2013.csv")
    fast = loaded(path, tmp_path / "fast")
    monkeypatch.setattr(data, "_read_csv_fast", lambda *args, **kwargs: None)
    assert_same(loaded(path, tmp_path / "careful"), fast)


@pytest.mark.parametrize("variant", ["crlf", "quoted", "spaced_header", "no_final_newline", "trailing_space"])
def test_other_csv_layouts_go_to_the_careful_reader(tmp_path, faces, variant):
    text = write_csv(*faces, USAGES, tmp_path / "base.csv").read_text()
    lines = text.splitlines()
    if variant == "crlf":
        text = "\r\n".join(lines) + "\r\n"
    elif variant == "quoted":
        text = "\n".join([lines[0], *(f'{x.split(",")[0]},"{x.split(",")[1]}",{x.split(",")[2]}' for x in lines[1:])])
    elif variant == "spaced_header":
        text = text.replace("emotion,pixels,Usage", "emotion, pixels, Usage", 1)
    elif variant == "no_final_newline":
        text = text.rstrip("\n")
    elif variant == "trailing_space":
        text = text.replace(",Training\n", " ,Training\n")
    path = tmp_path / "fer2013.csv"
    path.write_text(text)
    fast = data._read_csv_fast(path)
    if variant in ("spaced_header", "no_final_newline"):
        assert fast is not None  # still the plain layout
    else:
        assert fast is None
    assert_same(loaded(path, tmp_path / "cache"), expected(faces))


def test_fast_csv_reader_leaves_bad_rows_to_the_careful_reader(tmp_path, faces):
    path = write_csv(*faces, USAGES, tmp_path / "fer2013.csv")
    lines = path.read_text().splitlines()
    label, pixels, usage = lines[3].split(",")
    values = pixels.split(" ")
    values[5] = "1000"
    lines[3] = f"{label},{' '.join(values)},{usage}"
    path.write_text("\n".join(lines) + "\n")
    assert data._read_csv_fast(path) is None
    with pytest.raises(data.FerDataError, match=r"line 4: pixels has a value outside 0-255"):
        load_fer2013(str(path), cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_throughput_benchmark_smoke(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--smoke", "--loading", "--also", "device",
         "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    for key in ("train_efficiency", "train_speedup_vs_baseline", "eval_efficiency", "eval_speedup_vs_baseline"):
        assert result[key] > 0, key
    for phase in ("train", "eval"):
        assert {"model_alone", "fer_hf", "baseline", "also:device"} <= set(result[phase])
        assert all(row["median"] > 0 for row in result[phase].values())
    assert {"machine", "versions", "command", "config"} <= set(result)
    assert result["loading"]["first"]["rows"] == {"train": 512, "validation": 48, "test": 48}
    assert result["loading"]["cached"]["seconds"] >= 0
    assert "efficiency" in done.stdout and "(c) baseline" in done.stdout


def test_sync_counter_counts_each_step_of_its_window_once(monkeypatch):
    # CUDA's sync debug mode is faked: the device transform "syncs" once per step while the mode is "warn", as a
    # `.item()` in the training step would; the counter must see exactly one per counted step.
    import throughput

    from fer_hf.modeling import build_model, image_processor_for

    modes: list[str] = []
    monkeypatch.setattr(throughput.torch.cuda, "set_sync_debug_mode", modes.append)
    args = throughput.parse_args(["--smoke", "--device", "cpu"])
    args.warmup, args.steps = 2, 9
    dataset = load_fer2013("synthetic", synthetic_train_size=96, synthetic_eval_size=16)
    model = build_model("resnet18", pretrained=False, image_size=32, crop_pct=1.0)
    feed = throughput.fer_hf_feed(args, dataset, image_processor_for(model.config), torch.device("cpu"), "device")
    transform = feed.device_transform

    def syncing_transform(batch):
        if modes and modes[-1] == "warn":
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        return transform(batch)

    feed.device_transform = syncing_transform
    found = throughput.host_syncs(args, model, feed, torch.device("cpu"), steps=5)
    assert modes == ["warn", "default"]
    assert found["steps"] == 5 and found["per_step"] == 1.0
    assert list(found["sources"].values()) == [5] and "test_benchmarks.py" in next(iter(found["sources"]))
