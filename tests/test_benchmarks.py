"""The benchmark scripts keep running (smoke mode, in this process) and their host-sync counter counts right."""

from __future__ import annotations

import importlib
import json
import warnings

import pytest
import torch

from conftest import REPO
from fer_hf.data.load import load_fer2013


@pytest.fixture
def throughput(monkeypatch):
    """benchmarks/throughput.py, a script rather than a package module, imported from its folder."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("throughput")


@pytest.mark.slow
def test_throughput_benchmark_smoke(tmp_path, capsys, throughput):
    out = tmp_path / "result.json"
    result = throughput.main(["--smoke", "--loading", "--also", "device", "--json", str(out)])
    assert json.loads(out.read_text()).keys() == result.keys()
    for key in ("train_efficiency", "train_speedup_vs_baseline", "eval_efficiency", "eval_speedup_vs_baseline"):
        assert result[key] > 0, key
    for phase in ("train", "eval"):
        assert {"model_alone", "fer_hf", "baseline", "also:device"} <= set(result[phase])
        assert all(row["median"] > 0 for row in result[phase].values())
    assert {"machine", "versions", "command", "config"} <= set(result)
    assert result["loading"]["first"]["rows"] == {"train": 512, "validation": 48, "test": 48}
    assert result["loading"]["cached"]["seconds"] >= 0
    printed = capsys.readouterr().out
    assert "efficiency" in printed and "(c) baseline" in printed


def test_sync_counter_counts_each_step_of_its_window_once(monkeypatch, throughput):
    # CUDA's sync debug mode is faked: the device transform "syncs" once per step while the mode is "warn", as a
    # `.item()` in the training step would; the counter must see exactly one per counted step.
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


def test_predict_phases_times_a_folder_run_in_order(tmp_path, monkeypatch, capsys):
    """benchmarks/predict_phases.py on 40 crops, with the shipped model and with the stub: the phases come in order,
    every file is counted, and predict itself is left as it was."""
    import numpy as np
    from PIL import Image

    import fer_hf.predict

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    phases = importlib.import_module("predict_phases")
    for i in range(40):
        Image.fromarray(np.full((48, 48), 6 * i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    original = fer_hf.predict.load_classifier
    for extra in ([], ["--stub_model"]):
        result = phases.main([str(tmp_path), "--batch_size", "8", *extra])
        order = ["imported_s", "listed_s", "loaded_s", "first_run_start_s", "first_run_end_s", "end_s"]
        assert [result[key] for key in order] == sorted(result[key] for key in order), result
        assert result["files"] == 40 and result["exit_status"] == 0 and result["cpu_s"] > 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result
    assert fer_hf.predict.load_classifier is original
