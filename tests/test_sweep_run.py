"""End to end: the local runner on real (tiny) training runs, and what a W&B offline run records."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fer_hf import sweep
from fer_hf.sweep_runner import SweepFolder, TrialRecord
from fer_hf.sweep_spec import metric_value

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

    # the first run stops after two trials; a third was running when it was killed
    sweep.main([*argv, "--max_runs", "2"])
    folder = SweepFolder(out)
    records = folder.load()
    assert [r.status for r in records.values()] == ["finished", "finished"]
    records[2] = TrialRecord(2, {"learning_rate": 1.0, "weight_decay": 0.0}, status="running")
    folder.save(records)
    (out / "trial-002").mkdir()
    (out / "trial-002" / "partial.txt").write_text("left by the killed run")
    kept = {name: (out / name / "train.log").stat().st_mtime_ns for name in ("trial-000", "trial-001")}
    capsys.readouterr()

    ranked = sweep.main(argv)
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


def _wandb_records(path: Path) -> list:
    """Records of a `.wandb` file: a LevelDB-style log (7-byte header, 32 KiB blocks) of protobuf `Record`s.

    wandb dropped its Python reader for these files (the Go core writes them), so the test reads the format itself.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header, position = 32768, 7, 7  # the file opens with b":W&B", a 2-byte magic and a 1-byte version
    records, pending = [], b""
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + header])
        chunk = data[position + header:position + header + length]
        position += header + length
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.mark.slow
def test_wandb_offline_run_of_two_processes_is_one_run_with_the_sweep_metric(tmp_path):
    # Two processes as a multi-GPU `accelerate launch` starts them (torch.distributed.run), on CPU with gloo.
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "fer_hf-tests",
           "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_SWEEP_ID", None)
    output_dir = tmp_path / "run"
    args = [*TINY_TRIAL, "--report_to=wandb", "--eval_strategy=steps", "--eval_steps=1", "--save_strategy=steps",
            "--save_steps=1", "--save_total_limit=1", "--load_best_model_at_end=True", "--metric_for_best_model=loss",
            "--logging_steps=1", "--per_device_train_batch_size=8", "--ddp_backend=gloo",
            "--output_dir", str(output_dir)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fer_hf.train", *args]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(2 * 8 * 2 / 48)  # 2 processes trained

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # only the main process logs: one W&B run
    history: dict[str, list[float]] = {}
    for record in _wandb_records(next(runs[0].glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))

    # the key every sweep file optimizes is what the Trainer logs, and its last value (the run summary W&B's
    # sweep reads) is the restored best checkpoint's: the value the local runner reads from all_results.json
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["metric"]["name"] in history, path.name
    assert len(history["eval/loss"]) == 3  # after each of the 2 steps, then the final evaluation
    assert history["eval/loss"][-1] == pytest.approx(min(history["eval/loss"][:-1]))
    assert metric_value(output_dir, "eval/loss") == pytest.approx(history["eval/loss"][-1])
    assert {"eval/accuracy", "test/accuracy", "train/loss", "train/learning_rate"} <= set(history)
