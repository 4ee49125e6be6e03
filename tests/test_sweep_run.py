"""End to end: the local runner on real (tiny) training runs, and what a W&B offline run records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fer_hf.sweep.__main__ import main as sweep_main
from fer_hf.sweep.runner import SweepFolder

REPO = Path(__file__).resolve().parents[1]

# Tiny trials: random-init ResNet-18 at 32 px, two steps, no checkpoints; the sweep varies only lr and wd.
TINY_TRIAL = [
    "--model_name_or_path", "resnet18", "--pretrained", "false", "--dataset", "synthetic",
    "--synthetic_train_size", "48", "--synthetic_eval_size", "16", "--image_size", "32", "--max_steps", "2",
    "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16", "--eval_strategy", "no",
    "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true",
    "--dataloader_num_workers", "0",
]


@pytest.mark.slow
def test_local_runner_runs_a_grid_ranks_plots_and_resumes(tmp_path, capsys):
    sweep_file = tmp_path / "grid2x2.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "grid2x2",
        "program": "fer_hf/train.py",
        "method": "grid",
        "metric": {"name": "eval/loss", "goal": "minimize"},
        "parameters": {"learning_rate": {"values": [0.001, 1.0]}, "weight_decay": {"values": [0.0, 0.5]}},
        "command": ["${env}", "${interpreter}", "-m", "fer_hf.train", "--config",
                    str(REPO / "configs" / "quickstart.yaml"), "${args}"],
    }))
    out = tmp_path / "sweep"
    argv = [str(sweep_file), "--output_dir", str(out), *TINY_TRIAL]

    # the first run is killed (the runner and its trial, as a closed terminal would) while its third trial runs
    process = subprocess.Popen([sys.executable, "-m", "fer_hf.sweep", *argv], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = SweepFolder(out)
    deadline = time.monotonic() + 600
    while not ((records := folder.load()).get(2) and records[2].status == "running"
               and (out / "trial-002" / "train.log").is_file()):
        assert process.poll() is None and time.monotonic() < deadline, "the sweep ended before it was killed"
        time.sleep(0.2)
    time.sleep(1.0)  # the trial is training now
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    records = folder.load()
    assert [r.status for r in records.values()] == ["finished", "finished", "running"]
    (out / "trial-002" / "partial.txt").write_text("what the killed trial left")
    kept = {name: (out / name / "train.log").stat().st_mtime_ns for name in ("trial-000", "trial-001")}
    capsys.readouterr()

    ranked = sweep_main(argv)
    printed = capsys.readouterr().out
    assert {name: (out / name / "train.log").stat().st_mtime_ns for name in kept} == kept  # not run again
    assert not (out / "trial-002" / "partial.txt").exists()

    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(line["trial"], line["status"]) for line in lines] == [(f"trial-00{i}", "finished") for i in range(4)]
    assert {(line["params"]["learning_rate"], line["params"]["weight_decay"]) for line in lines} == {
        (0.001, 0.0), (0.001, 0.5), (1.0, 0.0), (1.0, 0.5)}
    for line in lines:  # each value is the trial's own all_results.json eval_loss
        results = json.loads((Path(line["output_dir"]) / "all_results.json").read_text())
        assert line["value"] == pytest.approx(results["eval_loss"])
        assert yaml.safe_load((Path(line["output_dir"]) / "args.yaml").read_text())["learning_rate"] == \
            line["params"]["learning_rate"]

    values = [r.value for r in ranked]
    assert values == sorted(values)  # best (lowest eval/loss) first
    rows = [row for row in printed.splitlines() if row.startswith("| ") and "trial-" in row]
    assert [row.split("|")[2].strip() for row in rows] == [r.name for r in ranked]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2", "3", "4"]
    assert f"{ranked[0].value:.4f}" in rows[0]
    assert (out / "results.md").read_text().count("trial-") == 4
    assert (out / "results.png").stat().st_size > 10_000
