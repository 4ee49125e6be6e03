"""Load FER-2013 from any of its usual forms into one `datasets.DatasetDict`.

Every source ends up with the splits `train` (Training), `validation` (PublicTest) and `test` (PrivateTest) and the
features of `fer_hf.labels.fer_features()`. Sources are told apart by what the argument is:

1. the Kaggle `fer2013.csv` (columns emotion, pixels, Usage);
2. the Kaggle image-folder layout (`train/<class>/*.jpg`, `test/<class>/*.jpg`);
3. the numpy archive `fer2013.npz` (the file, or the folder that holds it);
4. a Hub dataset id, through `datasets.load_dataset`;
5. `synthetic`: procedurally drawn faces (`fer_hf.data.synthetic`).

A CSV, archive or folder is parsed once and kept in the datasets cache, keyed by the source's path, inode, size,
modification time and change time, so later loads memory-map Arrow files instead of parsing again.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, config, load_dataset, load_from_disk
from PIL import Image, UnidentifiedImageError

from fer_hf.labels import IMAGE_SIZE, IMAGE_SUFFIXES, LABEL_NAMES, SPLIT_TO_USAGE, SPLITS, USAGE_TO_SPLIT, fer_features

logger = logging.getLogger(__name__)

NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
CSV_COLUMNS = ("emotion", "pixels", "Usage")
PGM_HEADER = f"P5\n{IMAGE_SIZE} {IMAGE_SIZE}\n255\n".encode()  # binary greyscale; the pixels follow as raw bytes
# Bump when parsing changes, so stale cache entries are never reused.
CACHE_VERSION = "1"
# What the `test` split of a Kaggle image folder holds when its test/ file names carry no PublicTest_/PrivateTest_
# prefix: all of test/, PublicTest and PrivateTest mixed. Kept as the split's `info.description`, so that it survives
# the cache and an evaluation can say what it measured.
MIXED_TEST_SPLIT = "test/ (all of it: no PublicTest_/PrivateTest_ names)"


class FerDataError(ValueError):
    """Bad input data: the message names the file and the row or item, and says how to fix it."""


def load_fer2013(
    source: str = "synthetic",
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    skip_bad_rows: bool = False,
    synthetic_train_size: int = 3000,
    synthetic_eval_size: int = 600,
    cache_dir: str | os.PathLike | None = None,
    splits: Iterable[str] = SPLITS,
) -> DatasetDict:
    """Load FER-2013 (or the synthetic stand-in) with splits train / validation / test.

    Args:
        source: a path to `fer2013.csv`, `fer2013.npz`, a folder holding either, a Kaggle image folder, a Hub
            dataset id, or `synthetic`.
        validation_fraction: share of train held out (seeded, stratified) where the source has no validation split.
        seed: seed of that hold-out and of the synthetic faces.
        skip_bad_rows: skip malformed CSV rows / unreadable images (their count is logged) instead of raising.
        synthetic_train_size: training images drawn for `synthetic`.
        synthetic_eval_size: validation and test images (each) drawn for `synthetic`.
        cache_dir: where parsed CSVs and folders are cached; the datasets cache by default.
        splits: the splits the caller needs. A fer2013.csv or .npz without rows for one of them is an error; one
            without rows for another split loads without that split (evaluating PrivateTest needs no Training rows).
            Image folders, Hub datasets and `synthetic` always give all three.
    """
    splits = tuple(splits)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected some of {SPLITS}.")
    if source == "synthetic":
        return _load_synthetic(synthetic_train_size, synthetic_eval_size, seed)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".csv":
            dataset = _cached(path, "csv", skip_bad_rows, cache_dir, lambda: _parse_csv(path, skip_bad_rows, splits))
        elif path.suffix.lower() == ".npz":
            dataset = _cached(path, "npz", skip_bad_rows, cache_dir,
                              lambda: _from_arrays(*_read_npz(path), source=path, splits=splits))
        else:
            raise FerDataError(
                f"{path}: unsupported file type {path.suffix!r}; give fer2013.csv, fer2013.npz, a folder."
            )
        # The cache keeps whatever splits the file has, whoever parsed it first: check this caller's needs again.
        _check_splits(dataset, splits, path)
        return dataset
    if path.is_dir():
        for name in ("fer2013.npz", "fer2013.csv"):
            if (path / name).is_file():
                return load_fer2013(str(path / name), validation_fraction=validation_fraction, seed=seed,
                                    skip_bad_rows=skip_bad_rows, cache_dir=cache_dir, splits=splits)
        if (path / "train").is_dir():
            key = f"folder-{validation_fraction}-{seed}"
            dataset = _cached(path, key, skip_bad_rows, cache_dir,
                              lambda: _parse_folder(path, validation_fraction, seed, skip_bad_rows))
            if dataset["test"].info.description == MIXED_TEST_SPLIT:  # warned on every load, cached or not
                logger.warning(
                    "%s: the test split is %s, %d images: in the Kaggle layout PublicTest and PrivateTest mixed, not "
                    "FER-2013's test split (PrivateTest alone). Name the files PublicTest_*/PrivateTest_* to split "
                    "them.", path, MIXED_TEST_SPLIT, len(dataset["test"]),
                )
            return dataset
        raise FerDataError(
            f"{path}: folder has neither fer2013.csv, fer2013.npz nor a train/ subfolder "
            "(expected the Kaggle layout train/<class>/*.jpg and test/<class>/*.jpg)."
        )
    if _looks_like_path(source):
        raise FileNotFoundError(f"{source}: no such file or folder (expected fer2013.csv, fer2013.npz or a folder).")
    return _load_hub(source, validation_fraction, seed)


# ----------------------------------------------------------------------------------------------------- sources


def _load_synthetic(train_size: int, eval_size: int, seed: int) -> DatasetDict:
    from fer_hf.data.synthetic import make_faces

    # Distinct seeds per split so no face is shared between train and the evaluation splits.
    sizes = {"train": train_size, "validation": eval_size, "test": eval_size}
    parts = {}
    for offset, (split, size) in enumerate(sizes.items()):
        pixels, labels = make_faces(size, seed=seed * 3 + offset)
        parts[split] = (pixels, labels)
    return DatasetDict({split: _to_dataset(p, y) for split, (p, y) in parts.items()})


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FerDataError(f"{path}: not a readable numpy archive ({err}).") from err
    with archive:
        missing = {"pixels", "labels", "usage"} - set(archive.files)
        if missing:
            raise FerDataError(f"{path}: archive lacks the arrays {sorted(missing)} (has {sorted(archive.files)}).")
        pixels, labels, usage = archive["pixels"], archive["labels"].astype(np.int64), archive["usage"]
    if pixels.ndim != 3 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or pixels.dtype != np.uint8:
        raise FerDataError(f"{path}: 'pixels' must be uint8 (N,48,48), got {pixels.dtype} {pixels.shape}.")
    _check_labels(labels, path)
    unknown = set(np.unique(usage)) - set(USAGE_TO_SPLIT)
    if unknown:
        raise FerDataError(f"{path}: unknown usage values {sorted(unknown)}; expected {sorted(USAGE_TO_SPLIT)}.")
    return pixels, labels, usage


def _parse_csv(path: Path, skip_bad_rows: bool, splits: Iterable[str] = SPLITS) -> DatasetDict:
    if path.stat().st_size == 0:
        raise FerDataError(f"{path}: the file is empty; expected fer2013.csv with columns {', '.join(CSV_COLUMNS)}.")
    arrays = _read_csv_fast(path)
    if arrays is not None:
        return _from_arrays(*arrays, source=path, splits=splits)
    # Anything the byte-level reader does not vouch for (a BOM, CRLF, quotes, odd spacing, bad rows...) is read here
    # row by row, so that every problem is found and named by its line in the file.
    rows, bad = _read_csv_rows(path)
    pixels = _parse_pixel_strings([row[1] for row in rows])
    if pixels is None:  # the fast path found a malformed row somewhere: find each one and say what is wrong
        pixels = np.zeros((len(rows), NUM_PIXELS), np.uint8)
        for i, (line, text, _, _) in enumerate(rows):
            value, problem = _parse_one_pixel_string(text)
            if problem:
                bad.setdefault(line, problem)
            else:
                pixels[i] = value
    labels = np.full(len(rows), -1, np.int64)
    usage = np.array([row[3].strip() for row in rows], dtype=object)
    for i, (line, _, emotion, _) in enumerate(rows):
        try:
            labels[i] = int(emotion)
        except ValueError:
            pass
        if not 0 <= labels[i] < len(LABEL_NAMES):
            bad.setdefault(line, f"emotion {emotion!r} is not an integer label in 0-{len(LABEL_NAMES) - 1}")
        if usage[i] not in USAGE_TO_SPLIT:
            bad.setdefault(line, f"Usage {usage[i]!r} is not one of {', '.join(USAGE_TO_SPLIT)}")

    if bad:
        first = sorted(bad)[:5]
        described = "; ".join(f"line {line}: {bad[line]}" for line in first)
        if not skip_bad_rows:
            raise FerDataError(
                f"{path}: {len(bad)} malformed row(s) — {described}"
                f"{' …' if len(bad) > len(first) else ''}. Fix the file, or pass --skip_bad_rows to drop such rows."
            )
        logger.warning("%s: skipped %d malformed row(s) — %s", path, len(bad), described)
        keep = np.array([row[0] not in bad for row in rows], dtype=bool)
        pixels, labels, usage = pixels[keep], labels[keep], usage[keep]
    return _from_arrays(pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels, usage.astype(str), source=path,
                        splits=splits)


def _read_csv_rows(path: Path) -> tuple[list[tuple[int, str, str, str]], dict[int, str]]:
    """The data rows of a CSV as (file line, pixels, emotion, Usage), and {line: problem} for rows whose number of
    fields is wrong; blank lines are skipped. Lines are 1-based (the header is line 1), as an editor shows them."""
    # utf-8-sig drops a byte-order mark; undecodable bytes become U+FFFD, so the row that holds them is named as bad.
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as file:
        reader = csv.reader(file)
        try:
            header = [name.strip() for name in next(reader, [])]
            if not any(header):
                raise FerDataError(f"{path}: the file has no header; expected {','.join(CSV_COLUMNS)}.")
            missing = [name for name in CSV_COLUMNS if name not in header]
            if missing:
                raise FerDataError(f"{path}: missing column(s) {missing}; found {header}. The Kaggle fer2013.csv has "
                                   f"the header {','.join(CSV_COLUMNS)}.")
            where = [header.index(name) for name in ("pixels", "emotion", "Usage")]
            rows, bad = [], {}
            line = reader.line_num + 1
            for fields in reader:
                if any(field.strip() for field in fields):
                    if len(fields) != len(header):
                        bad[line] = f"{len(fields)} field(s), expected {len(header)} ({','.join(header)})"
                    else:
                        rows.append((line, *(fields[i] for i in where)))
                line = reader.line_num + 1  # a quoted field may span lines: the next record starts after them
        except csv.Error as err:  # e.g. an unclosed quote that swallows the rest of the file
            raise FerDataError(f"{path}: line {line}: not readable as CSV ({err}).") from err
    if not rows and not bad:
        raise FerDataError(f"{path}: the CSV has a header but no rows.")
    return rows, bad


def _parse_pixel_strings(texts: list[str], rows_per_block: int = 2048) -> np.ndarray | None:
    """Parse all pixel strings, vectorised block by block; None if any row is malformed (then parse row by row)."""
    pixels = np.empty((len(texts), NUM_PIXELS), np.uint8)
    # Blocks keep the temporaries (joined text, int64 values) to a few tens of MB instead of several GB.
    for first in range(0, len(texts), rows_per_block):
        block = _parse_pixel_block(texts[first:first + rows_per_block])
        if block is None:
            return None
        pixels[first:first + len(block)] = block
    return pixels


def _parse_pixel_block(texts: list[str]) -> np.ndarray | None:
    joined = "\n".join(text.strip() for text in texts)
    raw = np.frombuffer(joined.encode("ascii", errors="replace"), dtype=np.uint8)
    # Count single spaces per row from the bytes: cheap, and any odd spacing sends the row to the careful path.
    row_starts = np.concatenate([[0], np.flatnonzero(raw == ord("\n")) + 1])
    if raw.size == 0 or row_starts[-1] >= raw.size:  # an empty last row (reduceat would index past the end)
        return None
    spaces = np.add.reduceat((raw == ord(" ")).astype(np.int32), row_starts)
    if len(row_starts) != len(texts) or np.any(spaces != NUM_PIXELS - 1):
        return None
    if np.any((raw != ord(" ")) & (raw != ord("\n")) & ((raw < ord("0")) | (raw > ord("9")))):
        return None  # a sign, a decimal point or a letter somewhere
    values = np.fromstring(joined, dtype=np.int64, sep=" ")  # text mode; numpy's fastest integer parser
    if values.size != len(texts) * NUM_PIXELS or values.max(initial=0) > 255:
        return None
    return values.astype(np.uint8).reshape(len(texts), NUM_PIXELS)


def _read_csv_fast(path: Path, block_bytes: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Read a well-formed Kaggle fer2013.csv straight from its bytes; None for anything else.

    pandas would hold every 8 KB pixel string as a Python object (several GB for the 301 MB file); here the file is
    read in blocks of whole lines and each block is checked and parsed with a few array passes (blocks of about
    1 MB stay in the CPU cache). Only the exact layout `emotion,pixels,Usage` with a one-digit label, 2304
    single-space-separated integers and a known Usage is accepted; any other file goes to the row-by-row reader,
    which names what is wrong.
    """
    with path.open("rb") as file:
        header = file.readline().decode("utf-8", errors="replace")
        if [name.strip() for name in header.split(",")] != list(CSV_COLUMNS):
            return None
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        tail = b""
        while True:
            chunk = file.read(block_bytes)
            data = tail + chunk
            if chunk:  # keep a partial last line for the next block
                cut = data.rfind(b"\n") + 1
                data, tail = data[:cut], data[cut:]
            elif data and not data.endswith(b"\n"):
                data += b"\n"
            if data:
                part = _parse_csv_block(np.frombuffer(data, np.uint8))
                if part is None:
                    return None
                parts.append(part)
            if not chunk:
                break
    if not parts:
        return None
    pixels, labels, usage = (np.concatenate(column) for column in zip(*parts, strict=True))
    return pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels, np.asarray(list(USAGE_TO_SPLIT))[usage]


def _parse_csv_block(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Whole lines `d,p p ... p,Usage\\n` as bytes -> (pixels (n,2304) uint8, labels, usage codes); None if any line
    departs from that layout."""
    line_ends = np.flatnonzero(raw == ord("\n"))
    n = len(line_ends)
    starts = np.concatenate([[0], line_ends[:-1] + 1])
    commas = np.flatnonzero(raw == ord(","))
    if n == 0 or len(commas) != 2 * n:
        return None
    comma1, comma2 = commas[0::2], commas[1::2]
    if np.any(comma1 != starts + 1) or np.any(comma2 >= line_ends):  # one-character label, two commas per line
        return None
    labels = raw[starts].astype(np.int64) - ord("0")
    if np.any((labels < 0) | (labels >= len(LABEL_NAMES))):
        return None
    usage = np.full(n, -1)
    usage_length = line_ends - comma2 - 1
    for code, name in enumerate(USAGE_TO_SPLIT):
        rows = np.flatnonzero(usage_length == len(name))
        field = raw[comma2[rows, None] + 1 + np.arange(len(name))]
        usage[rows[np.all(field == np.frombuffer(name.encode(), np.uint8), axis=1)]] = code
    if np.any(usage < 0):  # a CR, spaces or an unknown name
        return None

    digit = (raw - np.uint8(ord("0"))) < 10  # uint8 wraps, so this is '0' <= byte <= '9'
    space = raw == ord(" ")
    # Every byte of a line is a digit, a space, or one of its 3 + len(Usage) others (2 commas, Usage, newline) ...
    others = np.add.reduceat((~(digit | space)).view(np.uint8), starts, dtype=np.int64)
    spaces = np.add.reduceat(space.view(np.uint8), starts, dtype=np.int64)
    if np.any(others != usage_length + 3) or np.any(spaces != NUM_PIXELS - 1):
        return None
    # ... and the line holds 1 + 2304 runs of digits (label, pixels): with 2303 spaces, the first pixel right after
    # the first comma and the last right before the second, every pixel is separated by exactly one space.
    run_ends = np.flatnonzero(digit[:-1] & ~digit[1:])  # the last digit of each run (a block ends with a newline)
    if len(run_ends) != n * (NUM_PIXELS + 1):
        return None
    run_ends = run_ends.reshape(n, NUM_PIXELS + 1)[:, 1:]
    if np.any(raw[comma1 + 1] == ord(" ")) or np.any(run_ends[:, -1] != comma2 - 1):
        return None
    if np.any(digit[3:] & digit[2:-1] & digit[1:-2] & digit[:-3]):  # a number of four or more digits
        return None
    value = raw - np.uint8(ord("0"))
    pixels = value[run_ends].astype(np.int16)
    tens = digit[run_ends - 1]
    pixels += tens * (value[run_ends - 1] * np.int16(10))
    pixels += (tens & digit[run_ends - 2]) * (value[run_ends - 2] * np.int16(100))
    if pixels.max() > 255:
        return None
    return pixels.astype(np.uint8), labels, usage


def _parse_one_pixel_string(text: str) -> tuple[np.ndarray | None, str | None]:
    tokens = text.split()
    if len(tokens) != NUM_PIXELS:
        return None, f"pixels has {len(tokens)} values, expected {NUM_PIXELS} (48x48) space-separated integers"
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        return None, f"pixels has a non-integer value {bad!r}"
    if values.min() < 0 or values.max() > 255:
        return None, f"pixels has a value outside 0-255 ({values.min()}..{values.max()})"
    return values.astype(np.uint8), None


def _parse_folder(root: Path, validation_fraction: float, seed: int, skip_bad_rows: bool) -> DatasetDict:
    """The Kaggle image-folder layout: train/<class>/*.jpg and test/<class>/*.jpg (optionally validation/)."""
    arrays: dict[str, tuple[list[np.ndarray], list[int]]] = {split: ([], []) for split in SPLITS}
    skipped: list[str] = []
    test_has_usage_prefixes = True
    for top in ("train", "validation", "val", "test"):
        folder = root / top
        if not folder.is_dir():
            continue
        for file, label in _labelled_files(folder):
            image = _read_image(file, skip_bad_rows)
            if image is None:
                skipped.append(str(file))
                continue
            if top == "train":
                split = "train"
            elif top in ("validation", "val"):
                split = "validation"
            elif file.name.startswith("PublicTest"):
                split = "validation"
            elif file.name.startswith("PrivateTest"):
                split = "test"
            else:
                test_has_usage_prefixes = False
                split = "test"
            arrays[split][0].append(image)
            arrays[split][1].append(label)
    if skipped:
        logger.warning("%s: skipped %d unreadable image(s), e.g. %s", root, len(skipped), skipped[:3])
    if not arrays["train"][0]:
        raise FerDataError(f"{root}/train: no images found in train/<class>/ (classes: {', '.join(LABEL_NAMES)}).")
    has_validation_folder = any((root / name).is_dir() for name in ("validation", "val"))
    if not test_has_usage_prefixes and arrays["validation"][0] and not has_validation_folder:
        # Mixed naming: only some test files carry PublicTest_/PrivateTest_; treat the whole test/ folder as test.
        arrays["test"][0].extend(arrays["validation"][0])
        arrays["test"][1].extend(arrays["validation"][1])
        arrays["validation"] = ([], [])
    splits = {s: _to_dataset(np.stack(p), np.array(y, np.int64)) for s, (p, y) in arrays.items() if p}
    if not test_has_usage_prefixes and not has_validation_folder and "test" in splits:
        splits["test"].info.description = MIXED_TEST_SPLIT
    if "validation" not in splits:
        why = ("no validation/ folder, and no PublicTest_ files in test/" if test_has_usage_prefixes else
               "no validation/ folder, and test/ file names do not start with PublicTest_/PrivateTest_")
        source = f"{root} ({why})"
        splits["train"], splits["validation"] = _hold_out(splits["train"], validation_fraction, seed, source)
    if "test" not in splits:
        raise FerDataError(f"{root}/test: no images found in test/<class>/.")
    return DatasetDict({s: splits[s] for s in SPLITS})


def _labelled_files(folder: Path) -> Iterable[tuple[Path, int]]:
    names = {name: i for i, name in enumerate(LABEL_NAMES)}
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = names.get(class_dir.name.lower())
        if label is None:
            raise FerDataError(
                f"{class_dir}: unknown class folder {class_dir.name!r}; expected one of {', '.join(LABEL_NAMES)}."
            )
        for file in sorted(class_dir.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                yield file, label


def _read_image(file: Path, skip_bad_rows: bool) -> np.ndarray | None:
    try:
        with Image.open(file) as image:
            image.load()
            gray = image.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if skip_bad_rows:
            return None
        raise FerDataError(
            f"{file}: not a readable image ({err}). Remove it, or pass --skip_bad_rows to skip unreadable files."
        ) from err
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(gray, dtype=np.uint8)


def _load_hub(dataset_id: str, validation_fraction: float, seed: int) -> DatasetDict:
    try:
        raw = load_dataset(dataset_id)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError…)
        raise ConnectionError(
            f"Could not load the Hub dataset {dataset_id!r}: {type(err).__name__}: {err}. Without network access, "
            "give a local fer2013.csv, fer2013.npz or Kaggle image folder instead (or `synthetic`)."
        ) from err
    return _normalise_hub(raw, dataset_id, validation_fraction, seed)


def _normalise_hub(raw: DatasetDict, dataset_id: str, validation_fraction: float, seed: int) -> DatasetDict:
    """Map a Hub copy of FER-2013 onto our splits, column names and label order."""
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    first = next(iter(raw.values()))
    image_col = next((c for c, f in first.features.items() if isinstance(f, ImageFeature)), None)
    label_col = next((c for c, f in first.features.items() if isinstance(f, ClassLabel)), None)
    if image_col is None or label_col is None:
        raise FerDataError(f"{dataset_id}: needs an Image column and a ClassLabel column; has {first.features}.")
    hub_names = [n.lower() for n in first.features[label_col].names]
    if sorted(hub_names) != sorted(LABEL_NAMES):
        raise FerDataError(f"{dataset_id}: label names {hub_names} are not FER-2013's {list(LABEL_NAMES)}.")
    remap = np.array([LABEL_NAMES.index(n) for n in hub_names])
    aliases = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "publictest": "validation", "test": "test", "privatetest": "test"}
    splits = {}
    for name, part in raw.items():
        target = aliases.get(name.lower())
        if target is None:
            logger.warning("%s: ignoring split %r", dataset_id, name)
            continue
        part = part.select_columns([image_col, label_col]).rename_columns({image_col: "image", label_col: "label"})
        part = part.map(lambda b: {"label": remap[np.asarray(b["label"])].tolist()}, batched=True,
                        features=fer_features())
        splits[target] = part
    if "train" not in splits or "test" not in splits:
        raise FerDataError(f"{dataset_id}: needs train and test splits, has {list(raw)}.")
    if "validation" not in splits:
        splits["train"], splits["validation"] = _hold_out(splits["train"], validation_fraction, seed, dataset_id)
    return DatasetDict({s: splits[s] for s in SPLITS})


# ----------------------------------------------------------------------------------------------------- helpers


def _from_arrays(
    pixels: np.ndarray, labels: np.ndarray, usage: np.ndarray, source: Path, splits: Iterable[str] = SPLITS
) -> DatasetDict:
    """The rows of each Usage as its split; a split without rows is left out, an error if it is one of `splits`."""
    found = {split: np.flatnonzero(usage == usage_name) for usage_name, split in USAGE_TO_SPLIT.items()}
    dataset = DatasetDict({split: _to_dataset(pixels[rows], labels[rows]) for split, rows in found.items()
                           if len(rows)})
    _check_splits(dataset, splits, source)
    if not dataset:  # only where the caller asked for no split in particular
        raise FerDataError(f"{source}: no rows to load (Usage {', '.join(USAGE_TO_SPLIT)}).")
    return dataset


def _check_splits(dataset: DatasetDict, splits: Iterable[str], source: Path) -> None:
    missing = [split for split in splits if split not in dataset]
    if missing:
        usages = ", ".join(repr(SPLIT_TO_USAGE[split]) for split in missing)
        held = f"only {', '.join(SPLIT_TO_USAGE[split] for split in dataset)} rows" if dataset else "no usable rows"
        raise FerDataError(f"{source}: no rows with Usage {usages} ({', '.join(missing)} split"
                           f"{'s' if len(missing) > 1 else ''}), which is needed here; the file holds {held}. Give "
                           f"the full fer2013.csv / fer2013.npz.")


def _to_dataset(pixels: np.ndarray, labels: np.ndarray) -> Dataset:
    """Store (N,48,48) uint8 faces in a datasets `Image` column as binary PGM (P5): lossless, PIL-readable, and
    written and decoded several times faster than PNG (the bytes are the pixels behind a 13-byte header)."""
    import pyarrow as pa

    faces = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(len(pixels), -1)
    # One Arrow buffer of header + pixels per face, instead of 36k Python bytes objects: a fraction of the time and
    # memory, and the same column `datasets` would build from {"bytes": ..., "path": None} dicts.
    records = np.empty((len(faces), len(PGM_HEADER) + faces.shape[1]), np.uint8)
    records[:, : len(PGM_HEADER)] = np.frombuffer(PGM_HEADER, np.uint8)
    records[:, len(PGM_HEADER):] = faces
    offsets = np.arange(len(faces) + 1, dtype=np.int32) * records.shape[1]
    image_bytes = pa.Array.from_buffers(pa.binary(), len(faces), [None, pa.py_buffer(offsets), pa.py_buffer(records)])
    image = pa.StructArray.from_arrays([image_bytes, pa.nulls(len(faces), pa.string())], names=["bytes", "path"])
    return Dataset.from_dict({"image": image, "label": labels.astype(np.int64)}, features=fer_features())


def decode_faces(dataset: Dataset) -> np.ndarray:
    """All faces of `dataset` as one uint8 array (N, H, W), for pipelines that work on whole batches.

    The PGM bytes written by this module are sliced straight out of the Arrow column (no per-image decoding);
    other encodings (a Hub copy's PNG or JPEG) are decoded once with PIL. Every face must have the same size.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.select_columns(["image"]).with_format("arrow")[:]  # honours select()/shuffle() index maps
    column = table.column("image").combine_chunks() if len(table) else None
    if column is not None and column.null_count == 0:
        image_bytes = pc.struct_field(column, "bytes")
        _, offset_buffer, data_buffer = image_bytes.buffers()
        offset_type = np.int64 if pa.types.is_large_binary(image_bytes.type) else np.int32
        offsets = np.frombuffer(offset_buffer, offset_type)[image_bytes.offset:][: len(image_bytes) + 1]
        width = len(PGM_HEADER) + NUM_PIXELS
        if image_bytes.null_count == 0 and np.all(np.diff(offsets) == width):
            data = np.frombuffer(data_buffer, np.uint8)[offsets[0]:offsets[-1]].reshape(-1, width)
            if np.all(data[:, : len(PGM_HEADER)] == np.frombuffer(PGM_HEADER, np.uint8)):
                return data[:, len(PGM_HEADER):].reshape(-1, IMAGE_SIZE, IMAGE_SIZE).copy()
    faces = [np.asarray(image.convert("L")) for image in dataset["image"]]
    sizes = {face.shape for face in faces}
    if len(sizes) > 1:
        raise FerDataError(
            f"faces come in {len(sizes)} sizes ({sorted(sizes)[:3]}...); the batch pipeline needs one size. "
            "Use --augment_on per_sample, which resizes each image on its own."
        )
    return np.stack(faces) if faces else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def _hold_out(train: Dataset, fraction: float, seed: int, source: str) -> tuple[Dataset, Dataset]:
    """A seeded validation hold-out of train, stratified by label wherever every class has two or more images."""
    if len(train) < 2:
        raise FerDataError(f"{source}: {len(train)} training image(s), too few to hold out a validation split from; "
                           "add images, or a validation split (a validation/ folder, PublicTest rows or files).")
    counts = np.bincount(train["label"], minlength=len(LABEL_NAMES))
    held_out = math.ceil(fraction * len(train))
    # Stratifying needs two images of every class, and room for every class present on both sides of the split.
    present = int((counts > 0).sum())
    stratify = counts.min() >= 2 and held_out >= present and len(train) - held_out >= present
    logger.warning(
        "%s: no validation split; holding out a seeded%s %.0f%% of train (seed %d) as validation.",
        source, ", stratified" if stratify else " (not stratified: too few images of some class)", 100 * fraction,
        seed,
    )
    held = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label" if stratify else None)
    return held["train"], held["test"]


def _check_labels(labels: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= len(LABEL_NAMES)))
    if len(bad):
        raise FerDataError(f"{path}: item {bad[0]} has label {labels[bad[0]]}, outside 0-{len(LABEL_NAMES) - 1}.")


def _looks_like_path(source: str) -> bool:
    # A Hub id is `name` or `owner/name` without a file suffix; anything else that does not exist is a missing path.
    is_hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", source) is not None
    return not is_hub_id or Path(source).suffix.lower() in {".csv", ".npz", *IMAGE_SUFFIXES}


def _cached(source: Path, kind: str, skip_bad_rows: bool, cache_dir, build) -> DatasetDict:
    """Parse `source` once; later calls load the Arrow copy from the datasets cache (memory-mapped, seconds)."""
    stat = source.stat()
    stats = [stat, *(p.stat() for p in source.rglob("*"))] if source.is_dir() else [stat]  # any image of a folder
    newest_mtime = max(s.st_mtime_ns for s in stats)
    # A rewrite that keeps the size and restores the mtime (`cp -p`, `rsync -t`, os.utime) still moves the change time,
    # which userspace cannot set; the inode tells a file replaced by another apart. Cheaper than hashing folders.
    newest_ctime = max(s.st_ctime_ns for s in stats)
    key = (f"{CACHE_VERSION}|{kind}|{source.resolve()}|{stat.st_ino}|{stat.st_size}|{newest_mtime}|{newest_ctime}|"
           f"{skip_bad_rows}")
    root = Path(cache_dir or config.HF_DATASETS_CACHE) / "fer_hf"
    target = root / f"{kind.split('-')[0]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (target / "dataset_dict.json").is_file():
        logger.info("Loading %s from the cache %s", source, target)
        return load_from_disk(str(target))
    logger.info("Parsing %s (once; cached at %s)", source, target)
    dataset = build()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    dataset.save_to_disk(str(tmp))
    try:
        tmp.rename(target)  # atomic: a crash mid-write never leaves a half-written cache entry in place
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(target))
