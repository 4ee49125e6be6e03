"""The benchmark scripts keep running (smoke mode, in this process) and their host-sync counter counts right."""

from __future__ import annotations

import dataclasses
import importlib
import json
import warnings
from pathlib import Path

import numpy as np
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


def test_predict_phases_stubs_take_their_part_away(tmp_path, monkeypatch, capsys):
    """--stub_read never opens a file (40 files that are not images still give 40 faces and exit status 0, where
    predict reports each as an error); --stub_prepare hands the model inputs of the real shape without resizing;
    both are undone afterwards."""
    import fer_hf.inference.predictor as predictor

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    phases = importlib.import_module("predict_phases")
    for i in range(40):
        (tmp_path / f"{i:02d}.png").write_bytes(b"not a png")
    reader = predictor.read_plain_gray
    assert phases.main([str(tmp_path), "--batch_size", "8", "--stub_model"])["exit_status"] == 1
    shapes = []
    monkeypatch.setattr(predictor, "prepared_logits",
                        lambda classifier, prepared, *args: shapes.append(prepared.shape) or np.zeros(
                            (len(prepared), 1, len(classifier.label_names)), np.float32))
    result = phases.main([str(tmp_path), "--batch_size", "8", "--stub_read", "--stub_prepare"])
    assert result["files"] == 40 and result["exit_status"] == 0
    assert result["stub_read"] and result["stub_prepare"] and not result["stub_model"]
    assert sum(shape[0] for shape in shapes) == 40 and {shape[1:] for shape in shapes} == {(96, 96, 1)}
    assert predictor.read_plain_gray is reader
    capsys.readouterr()


@pytest.fixture
def ablation(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("ablation")


def test_each_ablation_row_changes_only_what_its_flags_name(ablation):
    from fer_hf.config import parse_args

    def parsed(flags):
        groups = parse_args(["--config", str(ablation.CONFIG), *flags])
        return {field.name: getattr(value := getattr(group, field.name), "value", value)
                for group in groups for field in dataclasses.fields(group)}

    base = parsed(ablation.ROWS[ablation.BASE])
    assert base["model_ema"] and base["label_smoothing_factor"] == 0.1 and base["pretrained"]
    assert base["image_size"] == 48 and base["num_train_epochs"] == 8 and base["eval_split"] == "validation"
    for row, flags in ablation.ROWS.items():
        if row == ablation.BASE:
            continue
        named = {flag.removeprefix("--") for flag in flags if flag.startswith("--")}
        changed = {key for key, value in parsed(flags).items() if value != base[key]}
        assert changed and changed <= named, (row, changed, named)  # one ingredient, nothing else moved


def test_ablation_runner_skips_finished_rows_resumes_stopped_ones_and_stops_on_a_failure(ablation, tmp_path,
                                                                                          monkeypatch, capsys):
    (tmp_path / f"{ablation.PREFIX}base" / "checkpoint-800").mkdir(parents=True)  # finished, never copied
    for name in ("all_results.json", "trainer_state.json", "model.safetensors"):
        (tmp_path / f"{ablation.PREFIX}base" / name).write_text("{}")
    (tmp_path / f"{ablation.PREFIX}mixup" / "checkpoint-449").mkdir(parents=True)
    results = tmp_path / "committed"
    (results / "layer_decay").mkdir(parents=True)  # committed by an earlier session: its outputs/ folder is gone
    (results / "layer_decay" / "all_results.json").write_text("{}")
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        output_dir = Path(command[command.index("--output_dir") + 1])
        for name in ("all_results.json", "trainer_state.json", "model.safetensors"):
            (output_dir / name).write_text("{}")
        (output_dir / "checkpoint-800").mkdir(exist_ok=True)
        return type("Done", (), {"returncode": 3 if "--seed" in command else 0})()

    monkeypatch.setattr(ablation.subprocess, "run", fake_run)
    rows = ["base", "mixup", "layer_decay", "no_ema", "seed43", "scratch"]
    assert ablation.main([*rows, "--output_root", str(tmp_path), "--results_root", str(results),
                          "--dataset", "fer.csv"]) == 3
    assert len(commands) == 3  # base and layer_decay were done; scratch never started after seed43 failed
    mixup, no_ema, seed43 = commands
    assert mixup[-2:] == ["--resume_from_checkpoint", "last"] and "--mixup_alpha" in mixup
    assert "--resume_from_checkpoint" not in no_ema and no_ema[no_ema.index("--model_ema") + 1] == "false"
    assert seed43[seed43.index("--output_dir") + 1] == str(tmp_path / f"{ablation.PREFIX}seed43")
    assert mixup[mixup.index("--config") + 1] == "configs/ablation_lite0_48px.yaml"  # no local path in args.yaml
    assert ablation.RESULT_FILES[-1] == "all_results.json"  # the 'done' mark is copied last
    out = capsys.readouterr().out
    assert "base: done" in out and "layer_decay: done" in out
    # finished rows' small files are committed, never a checkpoint or the weights; the failed row's are not
    for row in ("base", "mixup", "no_ema"):
        assert sorted(path.name for path in (results / row).iterdir()) == ["all_results.json", "trainer_state.json"]
    assert not (results / "seed43").exists()
    with pytest.raises(SystemExit):
        ablation.main(["no_such_row"])


def test_ablation_table_gives_each_row_its_one_change_and_its_difference_to_the_base_row(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    table = importlib.import_module("accuracy_table")

    def run(name, accuracies, **args):
        folder = tmp_path / name
        folder.mkdir()
        valid, test = accuracies
        (folder / "args.yaml").write_text(json.dumps({"seed": 42, "model_ema": True, "num_train_epochs": 8,
                                                      "output_dir": f"outputs/{name}", **args}))
        (folder / "all_results.json").write_text(json.dumps({"eval_accuracy": valid, "test_accuracy": test,
                                                             "test_f1": 0.6, "test_paper_f1": 0.61,
                                                             "train_runtime": 1500}))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 800, "epoch": 8.0,
                                                               "best_global_step": 600}))

    run("base", (0.6500, 0.6600))
    run("no_ema", (0.6425, 0.6612), model_ema=False)
    run("seed43", (0.6510, 0.6580), seed=43)
    (tmp_path / "stopped").mkdir()  # a row still training: no all_results.json, no line
    lines = table.ablation_table(tmp_path).splitlines()
    assert len(lines) == 2 + 3 and lines[2].startswith("| `base` | — (the base recipe) | 65.00 | +0.00 |")
    no_ema = lines[3].split(" | ")
    assert no_ema[1:6] == ["`model_ema` True → False", "64.25", "-0.75", "**66.12**", "+0.12"]
    assert no_ema[8:] == ["6 of 8", "25 min |"]
    assert "`seed` 42 → 43" in lines[4] and "output_dir" not in lines[4]


def test_accuracy_table_names_the_run_a_further_fine_tune_started_from(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    table = importlib.import_module("accuracy_table")
    results = {"eval_accuracy": 0.69, "test_accuracy": 0.70, "test_f1": 0.68, "test_paper_f1": 0.685,
               "train_runtime": 1200}
    state = {"global_step": 2245, "epoch": 5.0, "best_global_step": 1347}
    for name, pretrained, start in [("imagenet", True, None), ("scratch", False, None),
                                    ("further", True, {"path": "fer_hf/default_model",
                                                       "run": {"output_dir": "outputs/cpu_lite0_80px_ema_distill"}})]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "args.yaml").write_text(json.dumps({"pretrained": pretrained, "image_size": 80,
                                                      "num_train_epochs": 5}))
        (folder / "all_results.json").write_text(json.dumps(results))
        (folder / "trainer_state.json").write_text(json.dumps(state))
        if start:
            (folder / "run_info.json").write_text(json.dumps({"start": start}))
    rows = {name: table.row(tmp_path / name) for name in ("imagenet", "scratch", "further")}
    assert [rows[name][1] for name in rows] == ["ImageNet", "random", "`cpu_lite0_80px_ema_distill`"]
    assert rows["further"][3:6] == ("5 (3)", "69.00", "**70.00**") and rows["further"][9] == "-0.16"


@pytest.fixture
def ensemble_search(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("ensemble_search")


def test_ensemble_search_averages_probabilities_and_breaks_ties_towards_fewer_members(ensemble_search):
    import numpy as np

    labels = np.array([0, 0, 1, 1])
    sure, unsure = 0.9, 0.6
    # a: right on the first three (unsure on the fourth); b: right on the last three; c: right on all four, barely on
    # face 0.
    a = np.array([[sure, 1 - sure], [sure, 1 - sure], [1 - sure, sure], [unsure, 1 - unsure]])
    b = np.array([[1 - unsure, unsure], [unsure, 1 - unsure], [1 - sure, sure], [1 - sure, sure]])
    c = np.array([[0.51, 0.49], [sure, 1 - sure], [1 - sure, sure], [1 - sure, sure]])
    probabilities = {("a", "none"): a, ("b", "none"): b, ("c", "none"): c,
                     ("a", "tencrop"): b, ("b", "tencrop"): a, ("c", "tencrop"): 1 - c}
    ranked = ensemble_search.rank_configurations(probabilities, labels, max_members=2)
    assert len(ranked) == 2 * (3 + 3)
    # Four right: c alone, a + b (averaged: 0.65/0.35 on face 0, right), a + c, b + c (0.455 on face 0: wrong).
    assert [(row["models"], row["tta"]) for row in ranked[:3]] == [
        (["c"], "none"), (["a", "b"], "none"), (["a", "c"], "none")]
    assert ranked[0]["accuracy"] == 1.0 and ranked[3]["correct"] == 4 and ranked[3]["tta"] == "tencrop"
    by_config = {(tuple(row["models"]), row["tta"]): row["correct"] for row in ranked}
    assert by_config[(("b", "c"), "none")] == 3 and by_config[(("c",), "tencrop")] == 0
    assert ensemble_search.rank_configurations(probabilities, labels, max_members=1)[0]["models"] == ["c"]


@pytest.mark.slow
def test_ensemble_search_chooses_on_validation_and_reuses_each_models_probabilities(ensemble_search, trained_run,
                                                                                    tmp_path, monkeypatch, capsys):
    """Two real models on synthetic faces: the search never loads the test split, writes what `evaluate` must run,
    and a second search reads both models' probabilities back instead of running them again, but not for other
    images."""
    from fer_hf.model_files import DEFAULT_MODEL_DIR

    loaded_splits = []
    real_load = ensemble_search.load_fer2013
    monkeypatch.setattr(ensemble_search, "load_fer2013",
                        lambda *a, **k: loaded_splits.append(k["splits"]) or real_load(*a, **k))
    argv = ["--dataset", "synthetic", "--models", str(trained_run), str(DEFAULT_MODEL_DIR), "--max_samples", "24",
            "--output_dir", str(tmp_path)]
    result = ensemble_search.main(argv)
    assert loaded_splits == [("validation",)] and result["images"] == 24 and result["configurations"] == 2 * 3
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["chosen"] == saved["ranked"][0] and saved["chosen"]["correct"] == max(
        row["correct"] for row in saved["ranked"])
    assert saved["test_command"].startswith("python -m fer_hf.evaluate --model ")
    assert "--split test" in saved["test_command"] and saved["test_command"] in capsys.readouterr().out

    monkeypatch.setattr(ensemble_search, "load_classifier", lambda *a, **k: pytest.fail("computed again"))
    again = ensemble_search.main(argv)
    assert again["ranked"] == result["ranked"]
    with pytest.raises(pytest.fail.Exception, match="computed again"):  # other images: nothing to read back
        ensemble_search.main([*argv[:-4], "--max_samples", "20", "--output_dir", str(tmp_path)])
