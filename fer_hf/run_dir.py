"""Everything about a run folder (a training `output_dir`): its file names, its checkpoints, and the readers of what
`fer_hf.train` writes there. Every other module reads a run folder through this one.

Resuming: `--resume_from_checkpoint PATH` names a checkpoint; `last` (or `true`) takes the newest complete
`checkpoint-*` in output_dir. The Trainer writes `trainer_state.json` last, so a run killed while saving leaves a
folder without it; `last` skips such folders (with a warning) instead of failing on them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from fer_hf.hashing import file_sha256, weights_sha256

logger = logging.getLogger(__name__)

# What a finished run folder holds (written by fer_hf.train through the Trainer).
TRAINER_STATE = "trainer_state.json"
ALL_RESULTS = "all_results.json"
ARGS_FILE = "args.yaml"
# A checkpoint's raw (not averaged) weights when training with an EMA; its model.safetensors holds the EMA weights.
TRAINING_WEIGHTS_FILE = "training_weights.safetensors"
TEACHER_FILE = "teacher_probs.safetensors"  # --distill_from: the teachers' probabilities on the training images
SPLIT_RESULTS = ("train_results.json", "eval_results.json", "test_results.json")
RUN_INFO_FILE = "run_info.json"  # what reproducing the run needs: versions, data checksum, git commit, command
LOCK_FILE = ".lock"
ACCURACY_FIGURE = "accuracy_curve.png"
LOSS_FIGURE = "loss_curve.png"
LATEST = frozenset({"last", "latest", "true"})
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointError(ValueError):
    """`--resume_from_checkpoint` names nothing the Trainer can resume from."""


class OutputDirError(OSError):
    """An output folder that cannot take a run: held by another process, not writable, or too full."""


# ---- writing without ever leaving half a file ----------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` beside `path`, flush it to disk, then rename it over `path`: a kill at any moment leaves the
    previous file or the new one, never half of one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def share_like_other_files(folder: str | os.PathLike, pattern: str = "*.safetensors") -> None:
    """Give the files of `folder` matching `pattern` the mode every other written file gets (0666 less the umask):
    safetensors writes its files owner-only (0600), so a model saved for a team, or shipped, could not be read by
    anyone else."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).glob(pattern):
        path.chmod(0o666 & ~umask)


class OutputExistsError(FileExistsError):
    """An output folder that holds something the command did not write, so replacing it would destroy it."""


def _refuse_a_file(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target}: is a file; give a folder name for the output.")


def check_replaceable(target: str | os.PathLike, marker: str) -> None:
    """Before any work: refuse a `target` that replacing would destroy -- a file, or a non-empty folder without
    `marker`, the file every output of this command holds (a mistyped `--output_dir outputs` or `~` stops here)."""
    target = Path(target)
    _refuse_a_file(target)
    if target.is_dir() and any(target.iterdir()) and not (target / marker).is_file():
        raise OutputExistsError(f"{target}: a folder with other contents (no {marker}); this command replaces only "
                                "a folder it wrote before. Give a new or empty folder.")


def replace_folder(partial: str | os.PathLike, target: str | os.PathLike, ours: Iterable[str] = ()) -> Path:
    """Move a completely written folder `partial` to `target`, replacing what was there. A kill at any moment
    leaves the previous `target`, the new one, or (between the two renames) none with the old one at `target.old`.

    Only an earlier version of the same output is replaced: a `target` holding any name `partial` does not (a
    user's notes, checkpoints, a run's results) is refused with OutputExistsError and `partial` removed, so nothing
    of the user's is deleted. `ours`: names the command writes when it has them (an earlier version may hold one
    this one lacks)."""
    partial, target = Path(partial), Path(target)
    try:
        _refuse_a_file(target)
    except OutputExistsError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.is_dir():
        foreign = sorted({p.name for p in target.iterdir()} - {p.name for p in partial.iterdir()} - set(ours))
        if foreign:
            shutil.rmtree(partial, ignore_errors=True)
            raise OutputExistsError(
                f"{target}: holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which this command "
                "did not write; it replaces only a folder it wrote before. Give a new or empty folder."
            )
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike, holder: str) -> Iterator[Path]:
    """Hold `directory` for this process while the block runs: an advisory lock on DIR/.lock, released when the block
    ends or the process dies, even by a kill. A folder that cannot take a file fails here (`check_writable`), and a
    second `holder` started on the same folder gets `OutputDirError` instead of interleaving its files."""
    directory = Path(directory)
    check_writable(directory)
    with open(directory / LOCK_FILE, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock; the user keeps to one process per folder
            pass
        except OSError as error:
            handle.seek(0)
            other = handle.read().strip() or "another process"
            raise OutputDirError(f"{directory}: {other} is already writing here; wait for it to finish, or pick "
                                 f"another output folder.") from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"{holder} (pid {os.getpid()})")
        handle.flush()
        yield directory


# What a card needs of a saved folder that a run fine-tunes further: where that folder's own run began.
START_ARGS = ("output_dir", "model_name_or_path", "pretrained", "image_size", "num_train_epochs", "distill_from")


def start_info(model_name_or_path: str) -> dict[str, Any] | None:
    """A run that starts from a saved model folder (not a Hub id nor a `pypi:` name), or distils from one: the
    folder, its weights' SHA-256 (the folder may change later: `fer_hf/default_model` does at each release), what its
    run started from (its `args.yaml`) and, where its `run_info.json` has one, that run's own start. None for any
    other name.
    A record that cannot be read is left out with a warning: it describes the start, it must not stop the run."""
    folder = Path(model_name_or_path).expanduser()
    if not folder.is_dir():
        return None
    info: dict[str, Any] = {"path": model_name_or_path, "weights_sha256": weights_sha256(folder)}
    earlier = _readable_record(folder / ARGS_FILE)
    if earlier:
        info["run"] = {key: earlier.get(key) for key in START_ARGS}
    earlier_start = _readable_record(folder / RUN_INFO_FILE).get("start")
    if isinstance(earlier_start, dict):  # that run itself fine-tuned a saved folder: the chain back to its start
        info["start"] = earlier_start
    return info


def _readable_record(path: Path) -> dict[str, Any]:
    """A YAML or JSON record (JSON is YAML) as a mapping; {} where absent, unreadable or not a mapping."""
    try:
        record = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError, yaml.YAMLError) as err:
        logger.warning("%s: unreadable (%s); the run's record of its start leaves it out.", path, err)
        return {}
    if not isinstance(record, dict):
        logger.warning("%s: not a mapping; the run's record of its start leaves it out.", path)
        return {}
    return record


def run_info(command: list[str], dataset: str) -> dict[str, Any]:
    """What reproducing a run needs beyond its arguments (args.yaml): the command, library versions, the git commit
    of fer_hf when it runs from a checkout, and the data's SHA-256 (a file's bytes; a folder's listing of names and
    sizes)."""
    import hashlib
    import platform
    import subprocess
    from importlib import metadata

    libraries = {}
    for name in ("fer_hf", "torch", "torchvision", "timm", "transformers", "accelerate", "datasets", "numpy",
                 "pillow", "safetensors"):
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = None
    package = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=package,
                                    capture_output=True, text=True, timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        commit = dirty = None
    source = Path(dataset).expanduser()
    digest = hashlib.sha256()
    if source.is_file():
        data = {"source": dataset, "sha256": file_sha256(source), "bytes": source.stat().st_size}
    elif source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(source).as_posix()}\t{path.stat().st_size}\n".encode())
        data = {"source": dataset, "listing_sha256": digest.hexdigest()}
    else:  # `synthetic` or a Hub id: the name (and, for the Hub, its revision in the datasets cache) says it
        data = {"source": dataset}
    return {"command": list(command), "python": platform.python_version(), "platform": platform.platform(),
            "libraries": libraries, "git_commit": commit, "git_dirty": dirty, "data": data}


def check_writable(directory: str | os.PathLike, needed_bytes: int = 0) -> None:
    """Raise `OutputDirError` now, before hours of training, if `directory` cannot take a file or has less than
    `needed_bytes` free."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write_test.{os.getpid()}"  # per process: the ranks of one run check at once
        write_atomic(probe, b"ok")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(f"{directory}: cannot write here ({error.strerror or error}); pick another "
                             f"--output_dir.") from error
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OutputDirError(f"{directory}: {free / 2**20:.0f} MiB free, but the run's checkpoints and model need "
                             f"about {needed_bytes / 2**20:.0f} MiB; free some space or pick another --output_dir.")


def confusion_file(split: str, suffix: str = "json") -> str:
    return f"confusion_matrix_{split}.{suffix}"


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file's object, or {} where the file is absent."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def read_args(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The merged arguments the run was started with (`args.yaml`), or {} where there is none."""
    path = Path(run_dir) / ARGS_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def read_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(run_dir) / ALL_RESULTS)


def find_trainer_state(run_dir: str | os.PathLike) -> Path:
    """`run_dir/trainer_state.json`, else the newest checkpoint's (a run stopped before `save_state`)."""
    run_dir = Path(run_dir)
    if (run_dir / TRAINER_STATE).is_file():
        return run_dir / TRAINER_STATE
    for checkpoint in checkpoints(run_dir):
        if is_complete(checkpoint):
            return checkpoint / TRAINER_STATE
    raise FileNotFoundError(
        f"{run_dir}: no {TRAINER_STATE} here or in a checkpoint-* folder; give the output_dir of `fer_hf.train`."
    )


def read_trainer_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's `trainer_state.json` (or the newest checkpoint's), or {} where there is none."""
    try:
        return read_json(find_trainer_state(run_dir))
    except FileNotFoundError:
        return {}


def step_of(checkpoint: str | os.PathLike) -> int | None:
    """The step in a `checkpoint-<step>` path, or None."""
    match = _CHECKPOINT.match(Path(str(checkpoint).rstrip("/")).name)
    return int(match.group(1)) if match else None


def agent_run_output_dir(output_dir: str, environ: Mapping[str, str] | None = None) -> str:
    """Under a W&B sweep agent every run gets the same command line; give each run its own `output_dir/<run id>`."""
    environ = os.environ if environ is None else environ
    run_id = environ.get("WANDB_RUN_ID") if environ.get("WANDB_SWEEP_ID") else None
    if not run_id or Path(output_dir).name == run_id:
        return output_dir
    return str(Path(output_dir) / run_id)


def is_complete(checkpoint: Path) -> bool:
    """Trainer's state readable, and nothing in the folder left empty or half-saved by a kill (the Trainer writes
    most checkpoint files in place: a run killed while saving over an earlier run's checkpoint leaves a 0-byte
    optimizer.pt beside a whole trainer_state.json)."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        entries = list(checkpoint.iterdir())
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict):
        return False
    return not any(entry.name.startswith(".saving-") or (entry.is_file() and entry.stat().st_size == 0)
                   for entry in entries)


def check_run_folder(directory: str | os.PathLike) -> None:
    """Refuse an --output_dir where a run would write over files that are not a run's (its model card README.md,
    config.json, ...): a non-empty folder with neither a run record nor checkpoints, and anything inside the
    installed fer_hf package (the shipped model)."""
    directory = Path(directory).expanduser()
    package = Path(__file__).resolve().parent
    resolved = directory.resolve()
    if resolved == package or package in resolved.parents:
        raise OutputDirError(f"{directory}: inside the fer_hf package (the model it ships lives there); train into "
                             "a folder of your own.")
    if not directory.is_dir() or (directory / RUN_INFO_FILE).is_file() or checkpoints(directory):
        return
    # Logs are left alone by a run (the sweep runner starts each trial's train.log before the run).
    foreign = sorted(entry.name for entry in directory.iterdir()
                     if not entry.name.startswith(".") and entry.suffix != ".log")
    if foreign:
        raise OutputDirError(f"{directory}: holds files fer_hf.train did not write ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}), which a run would write over (README.md, "
                             "config.json, the figures); pick a new or empty folder.")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders of a run, newest (highest step) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [path for _, path in sorted(found, reverse=True)]


def resolve_resume_checkpoint(value: str | None, output_dir: str | Path) -> str | None:
    """The checkpoint folder to pass to `Trainer.train(resume_from_checkpoint=...)`, or None to start afresh."""
    if value is None or value.strip().lower() in ("", "false", "none"):
        return None
    if value.strip().lower() in LATEST:
        found = checkpoints(output_dir)
        for checkpoint in found:
            if is_complete(checkpoint):
                return str(checkpoint)
            logger.warning("%s is incomplete (no readable %s, or a file left empty: the run stopped while saving "
                           "it); resuming from an earlier checkpoint.", checkpoint, TRAINER_STATE)
        raise CheckpointError(
            f"--resume_from_checkpoint {value}: no complete {PREFIX_CHECKPOINT_DIR}-* folder in {output_dir}"
            + (f" (incomplete: {', '.join(p.name for p in found)})" if found else "")
            + ". Drop the flag to start afresh, or check --output_dir."
        )
    path = Path(value)
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {value}: no such folder.")
    if not is_complete(path):
        complete = [p.name for p in checkpoints(path.parent) if is_complete(p)]
        raise CheckpointError(
            f"--resume_from_checkpoint {value}: not a complete Trainer checkpoint (no readable {TRAINER_STATE}, or a "
            "file left empty: a run killed while saving leaves such a folder)."
            + (f" Complete ones beside it: {', '.join(complete)}." if complete else "")
        )
    return str(path)
