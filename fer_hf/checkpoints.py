"""Which Trainer checkpoint a run resumes from.

`--resume_from_checkpoint PATH` names one; `last` (or `true`) takes the newest complete `checkpoint-*` in output_dir.
The Trainer writes `trainer_state.json` last, so a run killed while saving leaves a folder without it; `last` skips
such folders (with a warning) instead of failing on them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
LATEST = frozenset({"last", "latest", "true"})
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointError(ValueError):
    """`--resume_from_checkpoint` names nothing the Trainer can resume from."""


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / TRAINER_STATE).is_file()


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
            logger.warning("%s has no %s (the run stopped while saving it); resuming from an earlier checkpoint.",
                           checkpoint, TRAINER_STATE)
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
            f"--resume_from_checkpoint {value}: no {TRAINER_STATE} in it, so it is not a complete Trainer checkpoint "
            "(a run killed while saving leaves such a folder)."
            + (f" Complete ones beside it: {', '.join(complete)}." if complete else "")
        )
    return str(path)
