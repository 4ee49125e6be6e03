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
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fer_hf.config import parse_args
from fer_hf.run_dir import OutputDirError, checkpoints, exclusive, read_results, read_trainer_state, write_atomic
from fer_hf.sweep.search import Observation, Planner
from fer_hf.sweep.spec import SweepConfigError, SweepSpec, base_recipe, build_command, local_metric, train_argv

logger = logging.getLogger(__name__)

EXTRA_METRICS = ("eval_accuracy", "eval_loss", "eval_f1")  # kept in results.jsonl beside the sweep metric


@dataclass
class TrialRecord:
    """One line of results.jsonl; `status` is running (until it ends, or if the sweep was stopped), finished or
    failed."""

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

    def to_json(self) -> str:
        return json.dumps({"trial": self.name, **asdict(self)})

    @classmethod
    def from_json(cls, line: str) -> TrialRecord:
        data = json.loads(line)
        data.pop("trial", None)
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


class SweepFolder:
    """DIR: its lock, its identity (sweep.json) and results.jsonl."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.results_path = self.directory / "results.jsonl"
        self.identity_path = self.directory / "sweep.json"

    def trial_dir(self, record: TrialRecord) -> Path:
        return self.directory / record.name

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold DIR for this process: two runners on one folder would run the same trials."""
        try:
            with exclusive(self.directory, "python -m fer_hf.sweep"):
                yield
        except OutputDirError as error:
            raise SweepConfigError(str(self.directory), [f"{error}"]) from error

    def claim(self, identity: dict[str, Any]) -> None:
        """Mark DIR as this sweep's; refuse a folder that holds another sweep's results."""
        if self.identity_path.is_file():
            recorded = json.loads(self.identity_path.read_text())
            changed = [key for key in ("config", "extra_args", "sweep_seed") if recorded.get(key) != identity[key]]
            if changed:
                raise SweepConfigError(str(self.directory), [
                    f"holds the results of a different sweep ({', '.join(changed)} changed since "
                    f"{recorded.get('sweep_file')} was run here); pass another --output_dir, or delete the folder to "
                    f"start over"])
        else:
            write_atomic(self.identity_path, json.dumps(identity, indent=2) + "\n")

    def load(self) -> dict[int, TrialRecord]:
        if not self.results_path.is_file():
            return {}
        records: dict[int, TrialRecord] = {}
        for number, line in enumerate(self.results_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = TrialRecord.from_json(line)
            except (ValueError, TypeError) as error:
                raise SweepConfigError(str(self.results_path), [f"line {number} is not a trial record: {error}"]) \
                    from error
            records[record.index] = record
        return records

    def save(self, records: dict[int, TrialRecord]) -> None:
        write_atomic(self.results_path, "".join(records[index].to_json() + "\n" for index in sorted(records)))


def effective_cap(spec: SweepSpec, max_runs: int | None, grid_size: int | None) -> int:
    caps = [cap for cap in (spec.run_cap, max_runs, grid_size) if cap is not None]
    if not caps:
        raise SweepConfigError(spec.source, [
            f"run_cap: a {spec.method} sweep never ends by itself; set run_cap in the file or pass --max_runs N"])
    return min(caps)


def check_extra_args(spec: SweepSpec, extra_args: Sequence[str]) -> None:
    """Extra arguments may override the sweep's constants (a smoke test), never what it searches."""
    given = {token[2:].split("=", 1)[0] for token in extra_args if token.startswith("--")}
    clashes = sorted(given & set(spec.searched))
    if clashes:
        raise SweepConfigError(spec.source, [
            f"parameters.{name}: searched by the sweep; an extra --{name} would override every trial's value"
            for name in clashes])


def trial_command(spec: SweepSpec, params: dict[str, Any], trial_dir: Path, extra_args: Sequence[str]) -> list[str]:
    """The sweep's command for `params`, then the extra arguments (for argparse the later flag wins)."""
    if "output_dir" in params:  # the sweep's folder for W&B runs; a local trial has its own
        params = {**params, "output_dir": str(trial_dir)}
    command = build_command(spec, params)
    tail = [] if "output_dir" in params else ["--output_dir", str(trial_dir)]
    return [*command, *extra_args, *tail]


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
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parse_args(argv)
        except (SystemExit, ValueError, FileNotFoundError) as error:  # argparse prints its message, then exits
            printed = stderr.getvalue().strip().splitlines()
            message = printed[-1].split("error: ", 1)[-1] if printed else str(error)
            raise SweepConfigError(spec.source, [f"fer_hf.train rejects `{shlex.join(argv)}`: {message} (see "
                                                 f"`python -m fer_hf.train --help`)"]) from error


def _every_value(spec: SweepSpec, first: dict[str, Any]) -> list[dict[str, Any]]:
    """`first`, then `first` with each other listed value of a parameter in turn: every `values` entry a trial may
    get, whatever the method and --max_runs (a random or bayes trial's sampled number is parsed when proposed)."""
    return [first] + [{**first, name: value} for name, parameter in spec.parameters.items()
                      for value in parameter.spec.get("values", []) if value != first[name]]


def metric_value(run_dir: str | os.PathLike, name: str) -> float | None:
    """The value W&B's run summary would hold for `name`, read from a finished run's output_dir (None if absent)."""
    source, key = local_metric(name)
    if source == "results":
        value = read_results(run_dir).get(key)
    else:
        history = read_trainer_state(run_dir).get("log_history", [])
        value = next((entry[key] for entry in reversed(history) if key in entry), None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b")


def _log_error(path: Path) -> str:
    """The log's last exception line (not accelerate's CalledProcessError about its child), else its last line."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if _EXCEPTION_LINE.match(line) and "CalledProcessError" not in line]
    return (errors or lines or [""])[-1][:500]


def _trial_environment(spec: SweepSpec, record: TrialRecord, trial_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # A local trial is no W&B sweep run (train.py would otherwise nest output_dir under a run id).
    env.pop("WANDB_SWEEP_ID", None)
    # No W&B account needed: runs that report to wandb write offline folders (`wandb sync` uploads them later).
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_DIR", str(trial_dir))
    env.setdefault("WANDB_PROJECT", str(spec.config.get("project") or "fer_hf"))
    env.setdefault("WANDB_RUN_GROUP", spec.name)
    env.setdefault("WANDB_NAME", f"{spec.name}-{record.name}")
    return env


def run_trial(spec: SweepSpec, folder: SweepFolder, record: TrialRecord, extra_args: Sequence[str],
              on_start=None, keep_checkpoints: bool = False) -> TrialRecord:
    """Run one trial to the end and fill in its status, metric and log; a crash is recorded, never raised."""
    trial_dir = folder.trial_dir(record)
    if trial_dir.exists():
        shutil.rmtree(trial_dir)  # what an interrupted or failed attempt left behind
    trial_dir.mkdir(parents=True)
    command = trial_command(spec, record.params, trial_dir, extra_args)
    log_path = trial_dir / "train.log"
    record.status, record.value, record.metrics, record.error, record.returncode = "running", None, {}, None, None
    record.metric = spec.metric
    record.output_dir, record.log, record.command = str(trial_dir), str(log_path), shlex.join(command)
    record.started = datetime.datetime.now().isoformat(timespec="seconds")
    if on_start:
        on_start(record)
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {record.command}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=_trial_environment(spec, record, trial_dir))
        try:
            record.returncode = process.wait()
        except BaseException:
            # Ctrl-C reaches the trial too (same process group); give it a moment to stop, then make sure.
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            record.duration_s = round(time.monotonic() - start, 1)
            raise
    record.duration_s = round(time.monotonic() - start, 1)
    value = metric_value(trial_dir, spec.metric)
    if record.returncode == 0 and value is not None:
        record.status = "finished"
        if math.isnan(value):  # a diverged run finishes with a NaN loss; JSON has no NaN, the table says why
            record.error = f"{spec.metric} is NaN (the run diverged)"
        else:
            record.value = value
        summary = read_results(trial_dir)
        record.metrics = {key: summary[key] for key in EXTRA_METRICS if key in summary}
        if not keep_checkpoints:
            # The chosen model is saved in the trial folder itself; checkpoints only serve to resume a trial, which
            # the runner never does, and would take ~100 MB a trial (13 GB for the 130 bayes runs at ResNet-18).
            for checkpoint in checkpoints(trial_dir):
                shutil.rmtree(checkpoint, ignore_errors=True)
    else:
        record.status = "failed"
        record.error = (f"exit status {record.returncode}: {_log_error(log_path)}" if record.returncode
                        else f"finished without {spec.metric} in {trial_dir}")
    return record


def observations(records: dict[int, TrialRecord], before: int) -> list[Observation]:
    return [Observation(r.params, r.value if r.status == "finished" else None)
            for index, r in sorted(records.items()) if index < before and r.status in ("finished", "failed")]


def _plan(spec: SweepSpec, extra_args: Sequence[str], max_runs: int | None, sweep_seed: int) -> tuple[Planner, int]:
    """The planner and the number of trials, once every argument the first trials get has parsed."""
    check_extra_args(spec, extra_args)
    planner = Planner(spec, sweep_seed)
    cap = effective_cap(spec, max_runs, planner.grid_size)
    # Every listed value parses before the first trial starts, and so does every command of a grid (known ahead).
    trials = [*(planner.grid or [])[:cap], *_every_value(spec, planner.params(0))]
    check_trial_arguments(spec, {json.dumps(params, sort_keys=True): params for params in trials}.values(), extra_args)
    return planner, cap


def planned_commands(spec: SweepSpec, output_dir: str | os.PathLike, extra_args: Sequence[str], *,
                     max_runs: int | None = None, sweep_seed: int = 0) -> list[list[str]]:
    """The commands a run would launch, without running anything (bayes: as proposed before any result)."""
    planner, cap = _plan(spec, extra_args, max_runs, sweep_seed)
    folder = SweepFolder(output_dir)
    records = [TrialRecord(index, planner.params(index)) for index in range(cap)]
    return [trial_command(spec, record.params, folder.trial_dir(record), extra_args) for record in records]


def run_sweep(
    spec: SweepSpec,
    output_dir: str | os.PathLike,
    extra_args: Sequence[str] = (),
    *,
    max_runs: int | None = None,
    sweep_seed: int = 0,
    retry_failed: bool = False,
    keep_checkpoints: bool = False,
) -> list[TrialRecord]:
    """Run (or resume) the sweep in `output_dir`; return every trial's record, in trial order."""
    extra_args = list(extra_args)
    planner, cap = _plan(spec, extra_args, max_runs, sweep_seed)
    if spec.config.get("early_terminate"):
        logger.warning("early_terminate (hyperband) needs W&B's controller; the local runner runs every trial to the "
                       "end.")
    folder = SweepFolder(output_dir)
    with folder.locked():
        folder.claim({"sweep_file": spec.source, "config": json.loads(json.dumps(spec.config)),
                      "extra_args": extra_args, "sweep_seed": None if planner.grid is not None else sweep_seed})
        records = folder.load()
        skipped = sum(r.status == "finished" or (r.status == "failed" and not retry_failed) for r in records.values())
        if skipped:
            logger.info("%s: %d trial(s) already done, kept (rerun failed ones with --retry_failed).",
                        folder.directory, skipped)

        attempted: set[int] = set()  # each trial runs at most once per invocation

        def pending() -> TrialRecord | None:
            redo = [r for r in records.values() if r.index not in attempted
                    and (r.status == "running" or (retry_failed and r.status == "failed"))]
            if redo:
                return min(redo, key=lambda r: r.index)
            reached = [r for r in records.values() if r.status == "finished" and spec.reached_target(r.value)]
            if reached:
                logger.info("%s reached the target %s=%s: no new trials.", reached[0].name, spec.metric, spec.target)
                return None
            index = next((i for i in range(cap) if i not in records), None)
            if index is None:
                return None
            params = planner.params(index, observations(records, index))
            if planner.grid is None:
                check_trial_arguments(spec, [params], extra_args)
            return TrialRecord(index, params)

        while (record := pending()) is not None:
            attempt = "rerun" if record.index in records else "start"
            shown = " ".join(f"{name}={record.params[name]}" for name in spec.searched)
            logger.info("[%d/%d] %s %s: %s", record.index + 1, cap, attempt, record.name, shown or "(no searched "
                        "parameters)")
            records[record.index] = record
            attempted.add(record.index)
            run_trial(spec, folder, record, extra_args, on_start=lambda _: folder.save(records),
                      keep_checkpoints=keep_checkpoints)
            folder.save(records)
            if record.status == "finished":
                logger.info("    %s finished: %s (%.0f s)", record.name,
                            record.error or f"{spec.metric} = {record.value:.6g}", record.duration_s)
            else:
                logger.warning("    %s FAILED (%s); log: %s", record.name, record.error, record.log)
    return [records[index] for index in sorted(records)]

