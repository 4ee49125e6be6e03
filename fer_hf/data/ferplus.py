"""FER+ votes (microsoft/FERPlus): ten annotators re-labelled every FER-2013 image; where they disagree with the
original label tells how noisy FER-2013's labels are.

The votes are read from FER+'s `fer2013new.csv` (its rows are fer2013.csv's rows, in order) or from a `fer2013.npz`
archive that carries them (`ferplus_votes`), and are returned per split in the order `load_fer2013` gives that split.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fer_hf.data.load import FerDataError
from fer_hf.labels import FERPLUS_COLUMNS, FERPLUS_TO_LABEL, LABEL_NAMES, USAGE_TO_SPLIT

FERPLUS_CSV = "fer2013new.csv"
TIE = "tie"            # two or more FER+ classes share the most votes
NO_VOTES = "no votes"  # the row has no FER+ annotation (FER+ dropped it, or the archive could not place it)


def read_ferplus_votes(source: str | os.PathLike) -> dict[str, np.ndarray]:
    """{split: int (n, 10) votes in FERPLUS_COLUMNS order}; a row without votes is all -1.

    `source`: FER+'s `fer2013new.csv`, a `fer2013.npz` archive with `ferplus_votes`, or a folder holding either.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        found = [path / name for name in (FERPLUS_CSV, "fer2013.npz") if (path / name).is_file()]
        if not found:
            raise FerDataError(f"{path}: holds neither {FERPLUS_CSV} nor fer2013.npz; FER+ votes come from "
                               "https://github.com/microsoft/FERPlus (fer2013new.csv).")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; FER+ votes come from https://github.com/microsoft/FERPlus "
                                f"({FERPLUS_CSV}, rows in fer2013.csv's order).")
    votes, usage = _read_npz(path) if path.suffix.lower() == ".npz" else _read_csv(path)
    return {split: votes[usage == name] for name, split in USAGE_TO_SPLIT.items()}


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        if "ferplus_votes" not in archive.files or "usage" not in archive.files:
            raise FerDataError(f"{path}: archive has no 'ferplus_votes' (has {sorted(archive.files)}); give FER+'s "
                               f"{FERPLUS_CSV} instead.")
        columns = tuple(archive["ferplus_columns"]) if "ferplus_columns" in archive.files else FERPLUS_COLUMNS
        if columns != FERPLUS_COLUMNS:
            raise FerDataError(f"{path}: ferplus_columns are {list(columns)}, expected {list(FERPLUS_COLUMNS)}.")
        return archive["ferplus_votes"].astype(np.int64), archive["usage"]


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in ("Usage", *FERPLUS_COLUMNS) if name not in header]
        if missing:
            raise FerDataError(f"{path}: not FER+'s {FERPLUS_CSV} (columns {missing} missing; has {header}).")
        usage_at, vote_at = header.index("Usage"), [header.index(name) for name in FERPLUS_COLUMNS]
        usage, votes = [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                usage.append(row[usage_at].strip())
                votes.append([int(row[i] or 0) for i in vote_at])
            except (IndexError, ValueError) as err:
                raise FerDataError(f"{path}: line {line}: not a FER+ row ({err}).") from err
    votes = np.array(votes, dtype=np.int64).reshape(-1, len(FERPLUS_COLUMNS))
    votes[votes.sum(axis=1) == 0] = -1  # FER+ left these images without any vote
    return votes, np.array(usage)


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """The FER+ column with the most votes per row, `tie` where several share it, `no votes` for unannotated rows."""
    votes = np.asarray(votes)
    top = votes.max(axis=1, keepdims=True)
    names = np.array(FERPLUS_COLUMNS, dtype=object)[votes.argmax(axis=1)]
    names[(votes == top).sum(axis=1) > 1] = TIE
    names[votes.min(axis=1) < 0] = NO_VOTES
    return names


def label_agreement(labels: np.ndarray, votes: np.ndarray) -> pd.DataFrame:
    """Counts of original FER-2013 label (rows) x FER+ majority (columns, FER-2013 names where one exists)."""
    majority = pd.Categorical(
        [FERPLUS_TO_LABEL.get(name, name) for name in ferplus_majority(votes)],
        categories=[*LABEL_NAMES, *(c for c in FERPLUS_COLUMNS if c not in FERPLUS_TO_LABEL), TIE, NO_VOTES],
    )
    original = pd.Categorical([LABEL_NAMES[i] for i in labels], categories=LABEL_NAMES)
    return pd.crosstab(pd.Series(original, name="FER-2013 label"), pd.Series(majority, name="FER+ majority"),
                       dropna=False)
