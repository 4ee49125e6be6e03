"""Run a W&B sweep file without a W&B server: each trial is the sweep's own command, run in its own folder.

    DIR/sweep.json          the sweep file, extra arguments and seed this folder belongs to
    DIR/results.jsonl       one line per trial: parameters, status (finished / failed / running), the metric
    DIR/trial-000/          the trial's output_dir (a `fer_hf.train` run folder, see `fer_hf.run_dir`)
    DIR/trial-000/train.log its stdout and stderr
    DIR/results.md, .png    the ranked table and the figure (written by `python -m fer_hf.sweep`)

`results.jsonl` is rewritten atomically after every change, so an interrupted sweep resumes where it stopped: finished
trials are kept, a trial left `running` is run again from scratch.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fer_hf.config import parse_args
from fer_hf.run_dir import checkpoints, exclusive, read_results, read_trainer_state, write_atomic
from fer_hf.sweep.search import Observation, Planner
from fer_hf.sweep.spec import SweepConfigError, SweepSpec, base_recipe, build_command, local_metric, train_argv

logger = logging.getLogger(__name__)

EXTRA_METRICS = ("eval_accuracy", "eval_loss", "eval_f1")  # kept in results.jsonl beside the sweep metric
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b")


@dataclass
class TrialRecord:
    """One line of results.jsonl; `status` is running (until it ends or the sweep stops), finished or failed."""

    index: int
    params: dict[str, Any]
    status: str = "running"
    metric: str = ""
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: str = ""
    log: str = ""
    command: str = ""
    returncode: int | None = None
    error: str | None = None
    started: str | None = None
    duration_s: float | None = None

    @property
    def name(self) -> str:
        return f"trial-{self.index:03d}"


class SweepFolder:
    """DIR: its identity (sweep.json) and results.jsonl."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.results_path = self.directory / "results.jsonl"
        self.identity_path = self.directory / "sweep.json"

    def trial_dir(self, record: TrialRecord) -> Path:
        return self.directory / record.name

    def claim(self, identity: dict[str, Any]) -> None:
        """Mark DIR as this sweep's; refuse a folder that holds another sweep's results."""
        if not self.identity_path.is_file():
            write_atomic(self.identity_path, json.dumps(identity, indent=2) + "\n")
            return
        recorded = json.loads(self.identity_path.read_text())
        if changed := [key for key in ("config", "extra_args", "sweep_seed") if recorded.get(key) != identity[key]]:
            raise SweepConfigError(str(self.directory), [
                f"holds the results of a different sweep ({', '.join(changed)} changed since "
                f"{recorded.get('sweep_file')} was run here); pass another --output_dir, or delete the folder to "
                f"start over"])

    def load(self) -> dict[int, TrialRecord]:
        lines = self.results_path.read_text().splitlines() if self.results_path.is_file() else []
        records: dict[int, TrialRecord] = {}
        for number, line in enumerate(lines, start=1):
            try:
                if line.strip():  # keys that are not fields (`trial`, the name) are left out
                    data = json.loads(line)
                    record = TrialRecord(**{key: data[key] for key in TrialRecord.__dataclass_fields__ if key in data})
                    records[record.index] = record
            except (ValueError, TypeError) as error:
                raise SweepConfigError(str(self.results_path), [f"line {number} is not a trial record: {error}"]) \
                    from error
        return records

    def save(self, records: dict[int, TrialRecord]) -> None:
        lines = (json.dumps({"trial": records[index].name, **asdict(records[index])}) for index in sorted(records))
        write_atomic(self.results_path, "".join(line + "\n" for line in lines))


def trial_command(spec: SweepSpec, params: dict[str, Any], trial_dir: Path, extra_args: Sequence[str]) -> list[str]:
    """The sweep's command for `params`, then the extra arguments (for argparse the later flag wins)."""
    swept = "output_dir" in params  # the sweep's folder for W&B runs; a local trial has its own
    command = build_command(spec, {**params, "output_dir": str(trial_dir)} if swept else params)
    return [*command, *extra_args, *([] if swept else ["--output_dir", str(trial_dir)])]


def check_trial_arguments(spec: SweepSpec, trials: Iterable[dict[str, Any]], extra_args: Sequence[str]) -> None:
    """Parse what `fer_hf.train` would receive for each trial's parameters with its own parser, the one check of the
    sweep's parameters and values; raise `SweepConfigError`, naming the sweep file, with the parser's message."""
    recipe = base_recipe(spec)
    if recipe and not Path(recipe).is_file():
        raise SweepConfigError(spec.source, [
            f"command: --config {recipe} does not exist relative to {Path.cwd()}; run the sweep from the repository "
            f"root, where the W&B agent runs it too"])
    for params in trials:
        argv = [*train_argv(spec, params), *extra_args, "--output_dir", "unused"]
        try:
            with contextlib.redirect_stderr(io.StringIO()) as stderr:
                parse_args(argv)
        except (SystemExit, ValueError, FileNotFoundError) as error:  # argparse prints its message, then exits
            printed = stderr.getvalue().strip().splitlines()
            message = printed[-1].split("error: ", 1)[-1] if printed else str(error)
            raise SweepConfigError(spec.source, [f"fer_hf.train rejects `{shlex.join(argv)}`: {message} (see "
                                                 f"`python -m fer_hf.train --help`)"]) from error


def metric_value(run_dir: str | os.PathLike, name: str) -> float | None:
    """The value W&B's run summary would hold for `name`, read from a finished run's output_dir (None if absent)."""
    source, key = local_metric(name)
    history = [read_results(run_dir)] if source == "results" else read_trainer_state(run_dir).get("log_history", [])
    value = next((entry[key] for entry in reversed(history) if key in entry), None)  # the last logged
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _process_tree(process: subprocess.Popen) -> list:
    """The trial's process and every process under it, as psutil (accelerate's dependency) finds them now."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:  # already gone
        return []


def _signal_all(processes: list, sig: int) -> None:
    import psutil

    for found in processes:
        try:
            found.send_signal(sig)
        except psutil.Error:  # gone meanwhile
            pass


def run_trial(spec: SweepSpec, folder: SweepFolder, record: TrialRecord, extra_args: Sequence[str],
              on_start: Callable[[TrialRecord], Any], keep_checkpoints: bool = False) -> TrialRecord:
    """Run a new record's trial to the end and fill in its status, metric and log; a crash is recorded, not raised."""
    trial_dir = folder.trial_dir(record)
    shutil.rmtree(trial_dir, ignore_errors=True)  # what an interrupted or failed attempt left behind
    trial_dir.mkdir(parents=True)
    command = trial_command(spec, record.params, trial_dir, extra_args)
    record.metric, record.output_dir, record.log = spec.metric, str(trial_dir), str(trial_dir / "train.log")
    record.command, record.started = shlex.join(command), datetime.datetime.now().isoformat(timespec="seconds")
    # No W&B account needed: runs that report to wandb write offline folders (`wandb sync` uploads them later).
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(trial_dir), "WANDB_RUN_GROUP": spec.name,
           "WANDB_PROJECT": spec.config.get("project") or "fer_hf", "WANDB_NAME": f"{spec.name}-{record.name}",
           **os.environ}
    env.pop("WANDB_SWEEP_ID", None)  # a local trial is no W&B sweep run (train.py would nest output_dir under its id)
    on_start(record)  # results.jsonl shows it running
    start = time.monotonic()
    Path(record.log).write_text(f"$ {record.command}\n")
    with open(record.log, "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            record.returncode = process.wait()
        except BaseException:
            # Ctrl-C reaches the whole trial (same process group), a SIGTERM to the sweep alone does not: the trial,
            # `accelerate launch` and the training it starts, is asked to stop as Ctrl-C asks, given a moment, then
            # made sure of (killing the launcher alone left the training running).
            tree = _process_tree(process)
            _signal_all(tree, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            _signal_all(tree, signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
            process.wait()
            raise
    record.duration_s = round(time.monotonic() - start, 1)
    value = metric_value(trial_dir, spec.metric)
    if record.returncode != 0 or value is None:
        # The log's last exception line (not accelerate's CalledProcessError about its child), else its last line;
        # nothing if the trial removed its own folder.
        log = Path(record.log).read_text(errors="replace") if Path(record.log).is_file() else ""
        lines = [line.strip() for line in log.splitlines() if line.strip()]
        errors = [line for line in lines if _EXCEPTION_LINE.match(line) and "CalledProcessError" not in line]
        record.status = "failed"
        record.error = (f"exit status {record.returncode}: {(errors or lines or [''])[-1][:500]}" if record.returncode
                        else f"finished without {spec.metric} in {trial_dir}")
        return record
    # A diverged run finishes with a NaN loss; JSON has no NaN, the table says why.
    record.status, record.value = "finished", None if math.isnan(value) else value
    record.error = f"{spec.metric} is NaN (the run diverged)" if math.isnan(value) else None
    summary = read_results(trial_dir)
    record.metrics = {key: summary[key] for key in EXTRA_METRICS if key in summary}
    if not keep_checkpoints:
        # The chosen model is saved in the trial folder itself; checkpoints only serve to resume a trial, which the
        # runner never does, and would take ~100 MB a trial (13 GB for the 130 bayes runs at ResNet-18).
        for checkpoint in checkpoints(trial_dir):
            shutil.rmtree(checkpoint, ignore_errors=True)
    return record


def _plan(spec: SweepSpec, extra_args: Sequence[str], max_runs: int | None, sweep_seed: int) -> tuple[Planner, int]:
    """The planner and the number of trials, once every argument the first trials get has parsed."""
    # Extra arguments may override the sweep's constants (a smoke test), never what it searches.
    given = {token[2:].split("=", 1)[0] for token in extra_args if token.startswith("--")}
    if clashes := sorted(given & set(spec.searched)):
        raise SweepConfigError(spec.source, [
            f"parameters.{name}: searched by the sweep; an extra --{name} would override every trial's value"
            for name in clashes])
    planner = Planner(spec, sweep_seed)
    grid_size = None if planner.grid is None else len(planner.grid)
    if not (caps := [cap for cap in (spec.run_cap, max_runs, grid_size) if cap is not None]):
        raise SweepConfigError(spec.source, [
            f"run_cap: a {spec.method} sweep never ends by itself; set run_cap in the file or pass --max_runs N"])
    # Every command of a grid (known ahead) parses before the first trial starts, and so does every `values` entry a
    # random or bayes trial may get (its sampled numbers are parsed when proposed).
    first = planner.params(0)
    trials = [*(planner.grid or [])[:min(caps)], first]
    trials += [{**first, name: value} for name, p in spec.parameters.items()
               for value in p.spec.get("values", []) if value != first[name]]
    check_trial_arguments(spec, {json.dumps(params, sort_keys=True): params for params in trials}.values(), extra_args)
    return planner, min(caps)


def planned_commands(spec: SweepSpec, output_dir: str | os.PathLike, extra_args: Sequence[str], *,
                     max_runs: int | None = None, sweep_seed: int = 0) -> list[list[str]]:
    """The commands a run would launch, without running anything (bayes: as proposed before any result)."""
    planner, cap = _plan(spec, extra_args, max_runs, sweep_seed)
    records = [TrialRecord(index, planner.params(index)) for index in range(cap)]
    return [trial_command(spec, r.params, SweepFolder(output_dir).trial_dir(r), extra_args) for r in records]


def run_sweep(spec: SweepSpec, output_dir: str | os.PathLike, extra_args: Sequence[str] = (), *,
              max_runs: int | None = None, sweep_seed: int = 0, retry_failed: bool = False,
              keep_checkpoints: bool = False) -> list[TrialRecord]:
    """Run (or resume) the sweep in `output_dir`; return every trial's record, in trial order."""
    extra_args = list(extra_args)
    planner, cap = _plan(spec, extra_args, max_runs, sweep_seed)
    if spec.config.get("early_terminate"):
        logger.warning("early_terminate needs W&B's controller; the local runner runs every trial to the end.")
    folder = SweepFolder(output_dir)
    with exclusive(folder.directory, "python -m fer_hf.sweep"):  # two runners on one folder would run the same trials
        folder.claim({"sweep_file": spec.source, "config": json.loads(json.dumps(spec.config)),
                      "extra_args": extra_args, "sweep_seed": None if planner.grid is not None else sweep_seed})
        records = folder.load()
        # Trials a stopped sweep left running (and failed ones, with --retry_failed) first, then new ones.
        redo = [i for i in sorted(records) if records[i].status == "running"
                or retry_failed and records[i].status == "failed"]
        if skipped := len(records) - len(redo):
            logger.info("%s: %d trial(s) already done, kept (rerun failed ones with --retry_failed).",
                        folder.directory, skipped)
        for index in [*redo, *(i for i in range(cap) if i not in records)]:
            if index in redo:
                params = records[index].params
            elif reached := [r for r in records.values() if r.status == "finished" and spec.reached_target(r.value)]:
                logger.info("%s reached the target %s=%s: no new trials.", reached[0].name, spec.metric, spec.target)
                break
            else:
                history = [Observation(r.params, r.value) for i, r in sorted(records.items())
                           if i < index and r.status != "running"]
                params = planner.params(index, history)
                if planner.grid is None:
                    check_trial_arguments(spec, [params], extra_args)
            records[index] = record = TrialRecord(index, params)
            shown = " ".join(f"{name}={params[name]}" for name in spec.searched) or "(no searched parameters)"
            logger.info("[%d/%d] %s %s: %s", index + 1, cap, "rerun" if index in redo else "start", record.name, shown)
            run_trial(spec, folder, record, extra_args, on_start=lambda _: folder.save(records),
                      keep_checkpoints=keep_checkpoints)
            folder.save(records)
            if record.status == "finished":
                logger.info("    %s finished: %s (%.0f s)", record.name,
                            record.error or f"{spec.metric} = {record.value:.6g}", record.duration_s)
            else:
                logger.warning("    %s FAILED (%s); log: %s", record.name, record.error, record.log)
    return [records[index] for index in sorted(records)]
